// Package registries reads /etc/berth/registries.yaml (k3s's format:
// mirrors with endpoints and rewrites, per-registry auth and TLS) and turns
// it into what containerd understands: hosts.toml files under its certs.d
// directory, credentials for its CRI config, and, for mirrors with
// rewrites (upstream containerd has none), a loopback proxy that rewrites
// repository names on the way to the mirror.
package registries

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"os"
	"regexp"
	"sort"
	"strings"

	"sigs.k8s.io/yaml"
)

// DefaultFile is where berth looks unless --private-registry says otherwise.
const DefaultFile = "/etc/berth/registries.yaml"

// Registry is the parsed file.
type Registry struct {
	Mirrors map[string]Mirror         `json:"mirrors,omitempty"`
	Configs map[string]RegistryConfig `json:"configs,omitempty"`
}

// Mirror lists where to pull a registry's images from, in order; the
// registry itself stays the last resort.
type Mirror struct {
	Endpoints []string `json:"endpoint,omitempty"`
	// Rewrites maps a regular expression on the repository name to its
	// replacement ($1 …), applied when pulling from this mirror's endpoints.
	Rewrites map[string]string `json:"rewrite,omitempty"`
}

// RegistryConfig is how to talk to one registry host (a mirror endpoint's
// host or the registry itself).
type RegistryConfig struct {
	Auth *AuthConfig `json:"auth,omitempty"`
	TLS  *TLSConfig  `json:"tls,omitempty"`
}

// AuthConfig holds credentials, as Docker's config.json does.
type AuthConfig struct {
	Username      string `json:"username,omitempty"`
	Password      string `json:"password,omitempty"`
	Auth          string `json:"auth,omitempty"`
	IdentityToken string `json:"identitytoken,omitempty"`
}

// TLSConfig is the client side of TLS to one registry host.
type TLSConfig struct {
	CAFile             string `json:"ca_file,omitempty"`
	CertFile           string `json:"cert_file,omitempty"`
	KeyFile            string `json:"key_file,omitempty"`
	InsecureSkipVerify bool   `json:"insecure_skip_verify,omitempty"`
}

// Load reads and checks path. A missing file is an empty configuration;
// anything wrong with it (a key berth does not know, a bad endpoint or
// pattern, a certificate file that cannot be read) is an error naming the
// file and the key.
func Load(path string) (*Registry, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return &Registry{}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	r, err := Parse(b)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return r, nil
}

// Parse checks and parses the file's content.
func Parse(b []byte) (*Registry, error) {
	j, err := yaml.YAMLToJSON(b)
	if err != nil {
		return nil, fmt.Errorf("not valid YAML: %w", err)
	}
	var doc any
	if err := json.Unmarshal(j, &doc); err != nil {
		return nil, fmt.Errorf("not valid YAML: %w", err)
	}
	if err := checkKeys(doc, schema, ""); err != nil {
		return nil, err
	}
	var r Registry
	if err := yaml.UnmarshalStrict(b, &r); err != nil {
		return nil, fmt.Errorf("wrong type of value: %w", err)
	}
	if err := r.validate(); err != nil {
		return nil, err
	}
	return &r, nil
}

// schema lists the keys berth knows; "*" stands for a registry host.
var schema = map[string]any{
	"mirrors": map[string]any{"*": map[string]any{"endpoint": nil, "rewrite": nil}},
	"configs": map[string]any{"*": map[string]any{
		"auth": map[string]any{"username": nil, "password": nil, "auth": nil, "identitytoken": nil},
		"tls":  map[string]any{"ca_file": nil, "cert_file": nil, "key_file": nil, "insecure_skip_verify": nil},
	}},
}

// checkKeys reports the first key (in sorted order) the schema does not
// know, with its full path, so that a typo is found without guessing.
func checkKeys(doc any, s map[string]any, at string) error {
	m, ok := doc.(map[string]any)
	if !ok {
		if doc == nil {
			return nil
		}
		return fmt.Errorf("%s: want a map of keys, got %s", orTop(at), describe(doc))
	}
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		sub, known := s[k]
		if !known {
			sub, known = s["*"]
		}
		if !known {
			return fmt.Errorf("unknown key %s (known keys%s: %s)", join(at, k), inWhere(at), strings.Join(knownKeys(s), ", "))
		}
		if next, ok := sub.(map[string]any); ok {
			if err := checkKeys(m[k], next, join(at, k)); err != nil {
				return err
			}
		}
	}
	return nil
}

func join(at, k string) string {
	k = quoteKey(k)
	if at == "" {
		return k
	}
	return at + "." + k
}

func orTop(at string) string {
	if at == "" {
		return "the file"
	}
	return at
}

func inWhere(at string) string {
	if at == "" {
		return ""
	}
	return " in " + at
}

func knownKeys(s map[string]any) []string {
	var ks []string
	for k := range s {
		if k != "*" {
			ks = append(ks, k)
		}
	}
	sort.Strings(ks)
	return ks
}

func describe(v any) string {
	switch v.(type) {
	case string:
		return "a string"
	case []any:
		return "a list"
	case bool:
		return "a boolean"
	case float64:
		return "a number"
	}
	return fmt.Sprintf("%T", v)
}

func (r *Registry) validate() error {
	for _, host := range sortedKeys(r.Mirrors) {
		m := r.Mirrors[host]
		where := "mirrors." + quoteKey(host)
		if err := checkHost(host, true); err != nil {
			return fmt.Errorf("%s: %w", where, err)
		}
		for i, e := range m.Endpoints {
			if _, err := EndpointURL(e); err != nil {
				return fmt.Errorf("%s.endpoint[%d]: %w", where, i, err)
			}
		}
		for _, pat := range sortedKeys(m.Rewrites) {
			if _, err := regexp.Compile(pat); err != nil {
				return fmt.Errorf("%s.rewrite %q: not a regular expression: %w", where, pat, err)
			}
		}
	}
	for _, host := range sortedKeys(r.Configs) {
		c := r.Configs[host]
		where := "configs." + quoteKey(host)
		if err := checkHost(host, false); err != nil {
			return fmt.Errorf("%s: %w", where, err)
		}
		if a := c.Auth; a != nil && a.Auth != "" {
			dec, err := base64.StdEncoding.DecodeString(a.Auth)
			if err != nil || !strings.Contains(string(dec), ":") {
				return fmt.Errorf("%s.auth.auth: want base64 of \"user:password\"", where)
			}
		}
		if t := c.TLS; t != nil {
			if _, err := t.ClientTLS(); err != nil {
				return fmt.Errorf("%s.tls: %w", where, err)
			}
		}
	}
	return nil
}

// checkHost accepts host, host:port or (for mirrors) "*".
func checkHost(host string, wildcard bool) error {
	if host == "*" && wildcard {
		return nil
	}
	u, err := url.Parse("https://" + host)
	if err != nil || u.Host != host || host == "" {
		return fmt.Errorf("%q is not a registry host (want host or host:port, no scheme or path)", host)
	}
	return nil
}

// EndpointURL parses a mirror endpoint; with no scheme it is https.
func EndpointURL(e string) (*url.URL, error) {
	s := e
	if !strings.Contains(s, "://") {
		s = "https://" + s
	}
	u, err := url.Parse(s)
	if err != nil || u.Host == "" || (u.Scheme != "http" && u.Scheme != "https") || u.RawQuery != "" || u.Fragment != "" {
		return nil, fmt.Errorf("%q is not an endpoint URL (want https://host[:port][/path] or http://…)", e)
	}
	u.Path = strings.TrimSuffix(u.Path, "/")
	return u, nil
}

// ClientTLS loads the files t names; each failure names its file.
func (t *TLSConfig) ClientTLS() (*tls.Config, error) {
	c := &tls.Config{InsecureSkipVerify: t.InsecureSkipVerify, MinVersion: tls.VersionTLS12}
	if t.CAFile != "" {
		pem, err := os.ReadFile(t.CAFile)
		if err != nil {
			return nil, fmt.Errorf("ca_file: %w", err)
		}
		pool, err := x509.SystemCertPool()
		if err != nil {
			pool = x509.NewCertPool()
		}
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("ca_file %s: no PEM certificate in it", t.CAFile)
		}
		c.RootCAs = pool
	}
	if (t.CertFile == "") != (t.KeyFile == "") {
		return nil, errors.New("cert_file and key_file go together: set both or neither")
	}
	if t.CertFile != "" {
		pair, err := tls.LoadX509KeyPair(t.CertFile, t.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("cert_file %s / key_file %s: %w", t.CertFile, t.KeyFile, err)
		}
		c.Certificates = []tls.Certificate{pair}
	}
	return c, nil
}

func quoteKey(k string) string {
	if strings.ContainsAny(k, ".:*/") {
		return `"` + k + `"`
	}
	return k
}

func sortedKeys[V any](m map[string]V) []string {
	ks := make([]string, 0, len(m))
	for k := range m {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	return ks
}
