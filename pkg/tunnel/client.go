package tunnel

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"os"
	"slices"
	"time"

	"github.com/gorilla/websocket"
	"github.com/rancher/remotedialer"
	"k8s.io/klog/v2"

	"github.com/berth-io/berth/pkg/component"
	"github.com/berth-io/berth/pkg/join"
)

// Client is an agent's end: it keeps a websocket open to the server and
// lets the server dial only the kubelet (10250) and CRI streaming (10010)
// ports of this node's own addresses.
type Client struct {
	// URL is wss://HOST:PORT<ConnectPath>, normally through the agent's
	// load balancer.
	URL string
	// CAFile verifies the server; CertFile/KeyFile are the kubelet client
	// certificate that identifies this node.
	CAFile, CertFile, KeyFile string
	// Addresses the server may dial (the node IPs; loopback is implied).
	Addresses []string

	runner *component.Runner
}

var allowedPorts = []string{"10250", "10010"}

func (c *Client) Name() string                  { return "tunnel" }
func (c *Client) Prepare(context.Context) error { return nil }

func (c *Client) Start(ctx context.Context) error {
	caPEM, err := os.ReadFile(c.CAFile)
	if err != nil {
		return fmt.Errorf("tunnel: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		return fmt.Errorf("tunnel: no certificate in %s", c.CAFile)
	}
	dialer := &websocket.Dialer{
		HandshakeTimeout: 10 * time.Second,
		TLSClientConfig: &tls.Config{
			RootCAs:    pool,
			MinVersion: tls.VersionTLS12,
			// Reloaded at each connect, so a renewed certificate is used.
			GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
				cert, err := tls.LoadX509KeyPair(c.CertFile, c.KeyFile)
				return &cert, err
			},
		},
	}
	c.runner = component.NewRunner(c.Name(), func(ctx context.Context) error {
		delay := time.Second
		for {
			t0 := time.Now()
			err := remotedialer.ConnectToProxy(ctx, c.URL, nil, c.allow, dialer, nil)
			if ctx.Err() != nil {
				return nil
			}
			if time.Since(t0) > time.Minute {
				delay = time.Second // it was up for a while: reconnect quickly
			}
			klog.Warningf("tunnel to %s closed (%v); reconnecting in %s", c.URL, err, delay)
			select {
			case <-ctx.Done():
				return nil
			case <-time.After(delay):
			}
			delay = min(2*delay, 15*time.Second)
		}
	})
	return c.runner.Start(ctx)
}

func (c *Client) Ready(context.Context) error { return nil }

func (c *Client) Stop(ctx context.Context) error {
	if c.runner == nil {
		return nil
	}
	return c.runner.Stop(ctx)
}

// allow limits what the server may open through this node.
func (c *Client) allow(proto, address string) bool {
	if proto != "tcp" {
		return false
	}
	host, port, err := net.SplitHostPort(address)
	if err != nil || !slices.Contains(allowedPorts, port) {
		return false
	}
	ip := net.ParseIP(host)
	if ip != nil && ip.IsLoopback() {
		return true
	}
	return slices.Contains(c.Addresses, host)
}

// URL returns the websocket URL for a server host:port.
func URL(hostPort string) string { return "wss://" + hostPort + join.ConnectPath }
