// Package supervisor runs berth's own TLS listener on the public API port
// (6443). It answers berth's endpoints itself (/cacerts, /ping, and later the
// join endpoints) and forwards everything else to the apiserver on loopback.
//
// Forwarding uses the apiserver's authenticating-proxy support (request-header
// authentication) instead of a patched in-process handler: the supervisor
// verifies a client certificate against the client CA, passes the identity in
// X-Remote-User/X-Remote-Group over a connection authenticated with the
// request-header CA's proxy certificate, and passes bearer tokens through
// untouched for the apiserver to check. Anonymous requests stay anonymous and
// are refused by the apiserver (anonymous auth is off).
package supervisor

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"strings"
	"time"

	"k8s.io/klog/v2"

	"github.com/berth-io/berth/pkg/ports"
)

// Supervisor is the component serving the public port.
type Supervisor struct {
	// Address is the public listen address, e.g. 0.0.0.0:6443.
	Address string
	// Backend is the apiserver URL, e.g. https://127.0.0.1:6444.
	Backend string
	// ServerCAFile signs both the serving cert and the apiserver's cert.
	ServerCAFile string
	// ClientCAFile verifies client certificates.
	ClientCAFile string
	// CertFile/KeyFile are the serving certificate for Address.
	CertFile, KeyFile string
	// ProxyCertFile/ProxyKeyFile authenticate the supervisor to the apiserver
	// as an authenticating proxy (request-header CA).
	ProxyCertFile, ProxyKeyFile string
	// Handlers adds berth endpoints, keyed by path pattern (http.ServeMux).
	Handlers map[string]http.Handler

	listener net.Listener
	server   *http.Server
	failed   chan error
}

func (s *Supervisor) Name() string { return "supervisor" }

// Prepare binds the public port early, so a port conflict is reported before
// the datastore and apiserver spend time starting.
func (s *Supervisor) Prepare(context.Context) error {
	l, err := net.Listen("tcp", s.Address)
	if err != nil {
		return ports.InUseError(s.Address, err)
	}
	s.listener = l
	return nil
}

func (s *Supervisor) Start(context.Context) error {
	handler, err := s.handler()
	if err != nil {
		return err
	}
	tlsConfig, err := s.tlsConfig()
	if err != nil {
		return err
	}
	s.failed = make(chan error, 1)
	s.server = &http.Server{
		Handler:           handler,
		TLSConfig:         tlsConfig,
		ReadHeaderTimeout: 30 * time.Second,
		ErrorLog:          nil,
	}
	go func() {
		err := s.server.ServeTLS(s.listener, "", "")
		if !errors.Is(err, http.ErrServerClosed) {
			s.failed <- err
		}
	}()
	return nil
}

func (s *Supervisor) Ready(context.Context) error { return nil }

func (s *Supervisor) Failed() <-chan error { return s.failed }

func (s *Supervisor) Stop(ctx context.Context) error {
	if s.server == nil {
		if s.listener != nil {
			return s.listener.Close()
		}
		return nil
	}
	// Watches never finish on their own: close rather than drain for long.
	sctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	if err := s.server.Shutdown(sctx); err != nil {
		return s.server.Close()
	}
	return nil
}

func (s *Supervisor) tlsConfig() (*tls.Config, error) {
	cert, err := tls.LoadX509KeyPair(s.CertFile, s.KeyFile)
	if err != nil {
		return nil, fmt.Errorf("load serving certificate: %w", err)
	}
	clientCAs, err := loadPool(s.ClientCAFile)
	if err != nil {
		return nil, err
	}
	return &tls.Config{
		Certificates: []tls.Certificate{cert},
		ClientCAs:    clientCAs,
		// Certificates are optional: tokens and the unauthenticated
		// endpoints (/cacerts, /ping) must work without one.
		ClientAuth: tls.VerifyClientCertIfGiven,
		MinVersion: tls.VersionTLS12,
		NextProtos: []string{"h2", "http/1.1"},
	}, nil
}

func loadPool(path string) (*x509.CertPool, error) {
	pem, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read CA %s: %w", path, err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("no certificate in %s", path)
	}
	return pool, nil
}

func (s *Supervisor) handler() (http.Handler, error) {
	caPEM, err := os.ReadFile(s.ServerCAFile)
	if err != nil {
		return nil, fmt.Errorf("read server CA: %w", err)
	}
	proxy, err := s.apiserverProxy()
	if err != nil {
		return nil, err
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /cacerts", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain")
		_, _ = w.Write(caPEM)
	})
	mux.HandleFunc("GET /ping", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain")
		_, _ = w.Write([]byte("pong"))
	})
	for pattern, h := range s.Handlers {
		mux.Handle(pattern, h)
	}
	mux.Handle("/", proxy)
	return mux, nil
}

// Identity headers the apiserver trusts from the authenticating proxy. Any
// copy sent by a client is removed before forwarding.
const (
	userHeader       = "X-Remote-User"
	groupHeader      = "X-Remote-Group"
	extraHeaderPrefx = "X-Remote-Extra-"
)

func (s *Supervisor) apiserverProxy() (http.Handler, error) {
	target, err := url.Parse(s.Backend)
	if err != nil {
		return nil, fmt.Errorf("apiserver URL: %w", err)
	}
	rootCAs, err := loadPool(s.ServerCAFile)
	if err != nil {
		return nil, err
	}
	proxyCert, err := tls.LoadX509KeyPair(s.ProxyCertFile, s.ProxyKeyFile)
	if err != nil {
		return nil, fmt.Errorf("load proxy client certificate: %w", err)
	}
	transport := &http.Transport{
		Proxy:       nil, // loopback; never through HTTP_PROXY
		DialContext: (&net.Dialer{Timeout: 10 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		TLSClientConfig: &tls.Config{
			RootCAs:      rootCAs,
			Certificates: []tls.Certificate{proxyCert},
			MinVersion:   tls.VersionTLS12,
			// HTTP/1.1 to the backend so protocol upgrades (exec, attach,
			// port-forward) pass through the reverse proxy.
			NextProtos: []string{"http/1.1"},
		},
		MaxIdleConnsPerHost: 64,
		IdleConnTimeout:     90 * time.Second,
	}
	return &httputil.ReverseProxy{
		Rewrite: func(r *httputil.ProxyRequest) {
			r.SetURL(target)
			r.Out.Host = r.In.Host
			setIdentity(r.Out, r.In.TLS)
		},
		Transport:     transport,
		FlushInterval: -1, // stream watches as they come
		ErrorHandler: func(w http.ResponseWriter, r *http.Request, err error) {
			if !errors.Is(err, context.Canceled) {
				klog.V(2).Infof("supervisor: %s %s: %v", r.Method, r.URL.Path, err)
			}
			http.Error(w, "apiserver not available", http.StatusServiceUnavailable)
		},
	}, nil
}

// setIdentity replaces any client-sent identity headers with the identity of
// a verified client certificate, if there is one.
func setIdentity(out *http.Request, state *tls.ConnectionState) {
	for name := range out.Header {
		if strings.HasPrefix(http.CanonicalHeaderKey(name), extraHeaderPrefx) {
			out.Header.Del(name)
		}
	}
	out.Header.Del(userHeader)
	out.Header.Del(groupHeader)
	if state == nil || len(state.VerifiedChains) == 0 || len(state.VerifiedChains[0]) == 0 {
		return
	}
	leaf := state.VerifiedChains[0][0]
	if leaf.Subject.CommonName == "" {
		return
	}
	out.Header.Set(userHeader, leaf.Subject.CommonName)
	for _, o := range leaf.Subject.Organization {
		out.Header.Add(groupHeader, o)
	}
}
