package join

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"k8s.io/klog/v2"

	"github.com/berth-io/berth/pkg/atomicfile"
	"github.com/berth-io/berth/pkg/pki"
	"github.com/berth-io/berth/pkg/token"
)

// Request is what an agent brings to join.
type Request struct {
	// Servers to try, in order: --server first, then the ones remembered
	// from earlier runs (so a restart works when --server is gone).
	Servers []string // https URLs
	Token   token.Token
	Node    Node
	// CertDir receives <kind>.key (made here, 0600) and <kind>.crt.
	CertDir string
}

// Result is a joined node's view of the cluster.
type Result struct {
	Config   *ClusterConfig
	ServerCA []byte
	ClientCA []byte
	// Server is the URL that answered.
	Server string
}

// Bootstrap joins the cluster: pins the CA, fetches the configuration and
// gets every node certificate signed. It retries with back-off while no
// server answers (saying what it waits for) and returns at once on a
// definitive refusal.
func Bootstrap(ctx context.Context, req Request) (*Result, error) {
	if len(req.Servers) == 0 {
		return nil, &Rejected{"no server to join: set --server (or BERTH_URL)"}
	}
	delay := time.Second
	for attempt := 0; ; attempt++ {
		var errs []string
		for _, srv := range req.Servers {
			res, err := bootstrapOnce(ctx, srv, req)
			if err == nil {
				return res, nil
			}
			if IsRejected(err) || ctx.Err() != nil {
				return nil, err
			}
			errs = append(errs, err.Error())
		}
		klog.Warningf("waiting for a berth server to answer (retry in %s): %s", delay, strings.Join(errs, "; "))
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(delay):
		}
		delay = min(delay*2, 15*time.Second)
	}
}

func bootstrapOnce(ctx context.Context, srv string, req Request) (*Result, error) {
	c, err := Connect(ctx, srv, req.Token)
	if err != nil {
		return nil, err
	}
	// A node that has joined before proves itself with its kubelet client
	// certificate too, so it can restart after its bootstrap token expired
	// — only as the node that certificate names (a renamed node uses the
	// token).
	if cert, err := tls.LoadX509KeyPair(certFile(req.CertDir, KubeletClient), keyFile(req.CertDir, KubeletClient)); err == nil {
		leaf, err := pki.ParseCertPEM(mustRead(certFile(req.CertDir, KubeletClient)))
		if err == nil && time.Now().Before(leaf.NotAfter) && leaf.Subject.CommonName == "system:node:"+req.Node.Name {
			c.ClientCert = &cert
		}
	}
	cfg, err := c.Config(ctx)
	if err != nil && c.ClientCert != nil && !IsRejected(err) && isTLSError(err) {
		// The cluster CA changed under the old certificate: try without.
		c.ClientCert = nil
		cfg, err = c.Config(ctx)
	}
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(req.CertDir, 0o700); err != nil {
		return nil, fmt.Errorf("create %s: %w", req.CertDir, err)
	}
	signed := map[CertKind][]byte{}
	for _, kind := range CertKinds {
		key, err := pki.LoadOrCreateKey(keyFile(req.CertDir, kind))
		if err != nil {
			return nil, err
		}
		csr, err := pki.CSR(key)
		if err != nil {
			return nil, err
		}
		crt, err := c.Sign(ctx, kind, csr, req.Node)
		if err != nil {
			return nil, fmt.Errorf("certificate %s: %w", kind, err)
		}
		if _, err := pki.ParseCertPEM(crt); err != nil {
			return nil, fmt.Errorf("certificate %s from the server: %w", kind, err)
		}
		signed[kind] = crt
	}
	// Written together at the end, so a failed join leaves the previous set.
	for kind, crt := range signed {
		if err := atomicfile.Write(certFile(req.CertDir, kind), crt, 0o644); err != nil {
			return nil, err
		}
	}
	return &Result{Config: cfg, ServerCA: []byte(cfg.ServerCA), ClientCA: []byte(cfg.ClientCA), Server: c.URL}, nil
}

func isTLSError(err error) bool {
	s := err.Error()
	return strings.Contains(s, "tls:") || strings.Contains(s, "certificate")
}

func mustRead(path string) []byte {
	b, _ := os.ReadFile(path)
	return b
}

func certFile(dir string, k CertKind) string { return filepath.Join(dir, string(k)+".crt") }
func keyFile(dir string, k CertKind) string  { return filepath.Join(dir, string(k)+".key") }

// EnsureSecret returns the hex secret stored at path, creating it (nbytes
// random bytes, 0600) on first use: the node password and node id.
func EnsureSecret(path string, nbytes int) (string, error) {
	data, err := os.ReadFile(path)
	if err == nil {
		s := strings.TrimSpace(string(data))
		if s == "" {
			return "", fmt.Errorf("%s is empty: remove it to make a new one (the server then refuses this node name until its Node is deleted)", path)
		}
		return s, nil
	}
	if !errors.Is(err, os.ErrNotExist) {
		return "", fmt.Errorf("read %s: %w", path, err)
	}
	b := make([]byte, nbytes)
	if _, err := rand.Read(b); err != nil {
		return "", err
	}
	s := hex.EncodeToString(b)
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return "", fmt.Errorf("create %s: %w", filepath.Dir(path), err)
	}
	if err := atomicfile.Write(path, []byte(s+"\n"), 0o600); err != nil {
		return "", err
	}
	return s, nil
}
