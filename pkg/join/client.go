package join

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"

	"k8s.io/klog/v2"

	"github.com/berth-io/berth/pkg/token"
)

// Rejected is a definitive answer: retrying with the same input cannot
// help (wrong token, CA mismatch, node password rejected).
type Rejected struct{ Msg string }

func (e *Rejected) Error() string { return e.Msg }

// IsRejected tells a definitive refusal from a transient failure.
func IsRejected(err error) bool {
	var r *Rejected
	return errors.As(err, &r)
}

// Client talks to one server's join endpoints over TLS pinned to the
// cluster CA.
type Client struct {
	URL   string // https://host:port
	Token token.Token
	// CAPEM is the server CA as served by /cacerts (and pinned by the
	// token's hash).
	CAPEM []byte
	// ClientCert, if set and valid, is presented as the node's identity, so
	// a node that has joined keeps working after its bootstrap token is
	// gone.
	ClientCert *tls.Certificate

	hc *http.Client
}

// Connect fetches the server's CA and checks it against the token's hash
// before any credential is sent. With a bare password the CA cannot be
// verified: berth warns and trusts the first answer.
func Connect(ctx context.Context, serverURL string, tok token.Token) (*Client, error) {
	u, err := url.Parse(serverURL)
	if err != nil || u.Scheme != "https" || u.Host == "" {
		return nil, &Rejected{fmt.Sprintf("--server %q is not an https://HOST:PORT URL", serverURL)}
	}
	hostPort, err := HostPort(serverURL)
	if err != nil {
		return nil, &Rejected{fmt.Sprintf("--server %q: %v", serverURL, err)}
	}
	base := "https://" + hostPort
	// Insecure on purpose: the CA is not known yet. Its hash is checked
	// against the token right after, and nothing secret is sent here.
	insecure := &http.Client{
		Timeout: 10 * time.Second,
		Transport: &http.Transport{
			Proxy:           http.ProxyFromEnvironment,
			TLSClientConfig: &tls.Config{InsecureSkipVerify: true, MinVersion: tls.VersionTLS12}, //nolint:gosec
		},
	}
	caPEM, err := get(ctx, insecure, base+"/cacerts")
	if err != nil {
		return nil, fmt.Errorf("fetch the cluster CA from %s: %w", base, err)
	}
	if tok.CAHash == "" {
		klog.Warningf("the token has no CA hash (K10…::): the server at %s cannot be verified; use the full token from the server's <data-dir>/server/node-token", base)
	} else if got := token.CAHash(caPEM); got != tok.CAHash {
		return nil, &Rejected{fmt.Sprintf("the server's CA does not match the token: %s presents a CA with hash %s, the token expects %s — is --server the right cluster, is the token for this cluster, or is something intercepting the connection? No credential was sent",
			base, got, tok.CAHash)}
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		return nil, &Rejected{fmt.Sprintf("%s/cacerts returned no certificate", base)}
	}
	c := &Client{URL: base, Token: tok, CAPEM: caPEM}
	c.hc = &http.Client{
		Timeout: 30 * time.Second,
		Transport: &http.Transport{
			Proxy: http.ProxyFromEnvironment,
			TLSClientConfig: &tls.Config{
				RootCAs:    pool,
				MinVersion: tls.VersionTLS12,
				GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
					if c.ClientCert == nil {
						return &tls.Certificate{}, nil
					}
					return c.ClientCert, nil
				},
			},
		},
	}
	return c, nil
}

// Config fetches the cluster configuration.
func (c *Client) Config(ctx context.Context) (*ClusterConfig, error) {
	body, err := c.do(ctx, http.MethodGet, ConfigPath, nil, nil)
	if err != nil {
		return nil, err
	}
	var cfg ClusterConfig
	if err := json.Unmarshal(body, &cfg); err != nil {
		return nil, fmt.Errorf("decode cluster config: %w", err)
	}
	return &cfg, nil
}

// Node is who asks for certificates.
type Node struct {
	Name     string
	Password string
	IPs      []string
}

// Sign sends a certificate request and returns the signed certificate PEM.
func (c *Client) Sign(ctx context.Context, kind CertKind, csrPEM []byte, n Node) ([]byte, error) {
	h := http.Header{}
	h.Set(NodeNameHeader, n.Name)
	h.Set(NodePasswordHeader, n.Password)
	h.Set(NodeIPHeader, strings.Join(n.IPs, ","))
	h.Set("Content-Type", "application/x-pem-file")
	return c.do(ctx, http.MethodPost, CertsPath+string(kind), csrPEM, h)
}

// ServerBootstrap fetches the cluster's shared server files (serialised
// pkg/bootstrap data), authenticated as user "server" with the server
// token's password.
func (c *Client) ServerBootstrap(ctx context.Context) ([]byte, error) {
	if c.Token.Bootstrap {
		return nil, &Rejected{"a bootstrap token (berth token create) joins agents only: a server joins with the server token (<data-dir>/server/token on an existing server)"}
	}
	return c.doAs(ctx, "server", http.MethodGet, ServerBootstrapPath, nil, nil)
}

// EtcdMembers fetches the server's embedded etcd member list (JSON),
// authenticated as ServerBootstrap is.
func (c *Client) EtcdMembers(ctx context.Context) ([]byte, error) {
	if c.Token.Bootstrap {
		return nil, &Rejected{"a bootstrap token (berth token create) joins agents only: a server joins with the server token (<data-dir>/server/token on an existing server)"}
	}
	return c.doAs(ctx, "server", http.MethodGet, EtcdMembersPath, nil, nil)
}

func (c *Client) do(ctx context.Context, method, path string, body []byte, h http.Header) ([]byte, error) {
	user := c.Token.User
	if user == "" {
		user = "node"
	}
	return c.doAs(ctx, user, method, path, body, h)
}

func (c *Client) doAs(ctx context.Context, user, method, path string, body []byte, h http.Header) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, method, c.URL+path, bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	for k, v := range h {
		req.Header[k] = v
	}
	req.SetBasicAuth(user, c.Token.Password)
	resp, err := c.hc.Do(req)
	if err != nil {
		return nil, fmt.Errorf("%s %s: %w", method, c.URL+path, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return nil, fmt.Errorf("%s %s: read answer: %w", method, c.URL+path, err)
	}
	switch {
	case resp.StatusCode == http.StatusOK:
		return data, nil
	case resp.StatusCode == http.StatusUnauthorized || resp.StatusCode == http.StatusForbidden ||
		resp.StatusCode == http.StatusBadRequest:
		return nil, &Rejected{fmt.Sprintf("the server refused: %s", strings.TrimSpace(string(data)))}
	default:
		return nil, fmt.Errorf("%s %s: %s: %s", method, c.URL+path, resp.Status, strings.TrimSpace(string(data)))
	}
}

func get(ctx context.Context, hc *http.Client, u string) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, err
	}
	resp, err := hc.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("%s: %s", u, resp.Status)
	}
	return data, nil
}

// HostPort returns host:port of an https URL.
func HostPort(serverURL string) (string, error) {
	u, err := url.Parse(serverURL)
	if err != nil {
		return "", err
	}
	if _, _, err := net.SplitHostPort(u.Host); err != nil {
		return net.JoinHostPort(u.Host, "6443"), nil
	}
	return u.Host, nil
}
