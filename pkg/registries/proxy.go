package registries

import (
	"fmt"
	"net/http"
	"net/http/httputil"
	"net/url"
	"regexp"
	"strings"
	"time"
)

// rewriteRule is one `rewrite` entry of a mirror.
type rewriteRule struct {
	re   *regexp.Regexp
	repl string
}

// RewriteProxy sits between containerd and one mirror endpoint and applies
// the mirror's rewrites to repository names. containerd has no rewrite
// support of its own, so its hosts.toml points at this proxy on loopback.
// Everything else passes through untouched: the registry's auth
// challenges go back to containerd, which fetches tokens itself.
type RewriteProxy struct {
	target *url.URL // the endpoint, its path ending in /v2
	rules  []rewriteRule
	proxy  *httputil.ReverseProxy
}

// v2Path matches the registry API paths that carry a repository name; the
// name is greedy so that a name containing "manifests" still splits at the
// last one.
var v2Path = regexp.MustCompile(`^/v2/(.+)/(manifests/[^/]+|blobs/[^/]+|tags/list|referrers/[^/]+)$`)

// NewRewriteProxy returns a proxy to endpoint applying rewrites. cfg is the
// endpoint host's TLS settings (nil for none).
func NewRewriteProxy(endpoint string, rewrites map[string]string, cfg *TLSConfig) (*RewriteProxy, error) {
	u, err := EndpointURL(endpoint)
	if err != nil {
		return nil, err
	}
	if !strings.HasSuffix(u.Path, "/v2") {
		u.Path += "/v2" // as containerd does for an endpoint with a path
	}
	p := &RewriteProxy{target: u}
	for _, pat := range sortedKeys(rewrites) {
		re, err := regexp.Compile(pat)
		if err != nil {
			return nil, fmt.Errorf("rewrite %q: %w", pat, err)
		}
		p.rules = append(p.rules, rewriteRule{re: re, repl: rewrites[pat]})
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.Proxy = nil // the endpoint is reached as containerd would reach it
	tr.ResponseHeaderTimeout = time.Minute
	if cfg != nil {
		if tr.TLSClientConfig, err = cfg.ClientTLS(); err != nil {
			return nil, err
		}
	}
	p.proxy = &httputil.ReverseProxy{
		Transport: tr,
		Rewrite: func(r *httputil.ProxyRequest) {
			r.Out.URL.Scheme = p.target.Scheme
			r.Out.URL.Host = p.target.Host
			r.Out.URL.Path = p.target.Path + strings.TrimPrefix(p.rewritePath(r.In.URL.Path), "/v2")
			r.Out.URL.RawPath = ""
			r.Out.Host = p.target.Host
		},
		ModifyResponse: func(resp *http.Response) error {
			// A relative redirect would come back to the proxy and be
			// rewritten twice; send containerd to the endpoint instead.
			if loc := resp.Header.Get("Location"); loc != "" {
				if l, err := url.Parse(loc); err == nil && !l.IsAbs() {
					resp.Header.Set("Location", p.target.ResolveReference(l).String())
				}
			}
			return nil
		},
	}
	return p, nil
}

// rewritePath applies the first matching rule (in pattern order) to the
// repository name in path.
func (p *RewriteProxy) rewritePath(path string) string {
	m := v2Path.FindStringSubmatch(path)
	if m == nil {
		return path
	}
	name := m[1]
	for _, r := range p.rules {
		if r.re.MatchString(name) {
			name = r.re.ReplaceAllString(name, r.repl)
			break
		}
	}
	return "/v2/" + name + "/" + m[2]
}

func (p *RewriteProxy) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		// Mirrors are for pulling; hosts.toml gives them pull and resolve only.
		http.Error(w, "berth registry rewrite proxy: pull only", http.StatusMethodNotAllowed)
		return
	}
	p.proxy.ServeHTTP(w, r)
}
