// Package tunnel lets the apiserver reach kubelets on agents that accept no
// inbound connection from it: each agent keeps an outbound websocket to the
// supervisor (rancher/remotedialer), and the apiserver's egress selector
// sends its "cluster" connections as HTTP CONNECT over a unix socket to this
// package, which dials through the tunnel of the node owning the target
// address, or directly when no tunnel serves it (the server's own node,
// pods, services).
package tunnel

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/rancher/remotedialer"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	listersv1 "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/klog/v2"
)

// Server is the supervisor's end of the tunnels, and the component serving
// the apiserver's egress socket.
type Server struct {
	// SocketPath is the egress unix socket (0600, root only).
	SocketPath string
	// Client watches Nodes to map addresses to node names.
	Client func() (kubernetes.Interface, error)

	rd       *remotedialer.Server
	listener net.Listener
	nodes    listersv1.NodeLister
	synced   cache.InformerSynced
	stop     chan struct{}
	wg       sync.WaitGroup
}

// NewServer returns a tunnel server; Handler serves the agents' websockets.
func NewServer(socketPath string, client func() (kubernetes.Interface, error)) *Server {
	s := &Server{SocketPath: socketPath, Client: client}
	s.rd = remotedialer.New(nodeAuthorizer, remotedialer.DefaultErrorWriter)
	return s
}

// Handler serves ConnectPath: only a kubelet client certificate
// (system:node:<name> in system:nodes) opens a tunnel, keyed by node name.
func (s *Server) Handler() http.Handler { return s.rd }

func nodeAuthorizer(r *http.Request) (string, bool, error) {
	name, ok := NodeIdentity(r.TLS)
	return name, ok, nil
}

// NodeIdentity returns the node name of a verified kubelet client
// certificate.
func NodeIdentity(state *tls.ConnectionState) (string, bool) {
	if state == nil || len(state.VerifiedChains) == 0 || len(state.VerifiedChains[0]) == 0 {
		return "", false
	}
	leaf := state.VerifiedChains[0][0]
	name, ok := strings.CutPrefix(leaf.Subject.CommonName, "system:node:")
	if !ok || name == "" || !slices.Contains(leaf.Subject.Organization, "system:nodes") {
		return "", false
	}
	return name, true
}

func (s *Server) Name() string { return "tunnel" }

// Prepare binds the egress socket before the apiserver starts.
func (s *Server) Prepare(context.Context) error {
	if err := os.Remove(s.SocketPath); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove stale egress socket: %w", err)
	}
	l, err := net.Listen("unix", s.SocketPath)
	if err != nil {
		return fmt.Errorf("egress socket %s: %w", s.SocketPath, err)
	}
	if err := os.Chmod(s.SocketPath, 0o600); err != nil {
		l.Close()
		return fmt.Errorf("egress socket: %w", err)
	}
	s.listener = l
	return nil
}

func (s *Server) Start(ctx context.Context) error {
	cs, err := s.Client()
	if err != nil {
		return fmt.Errorf("tunnel client: %w", err)
	}
	s.stop = make(chan struct{})
	f := informers.NewSharedInformerFactory(cs, 0)
	s.nodes = f.Core().V1().Nodes().Lister()
	s.synced = f.Core().V1().Nodes().Informer().HasSynced
	f.Start(s.stop)
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		s.serve()
	}()
	go func() {
		<-s.stop
		f.Shutdown()
	}()
	return nil
}

func (s *Server) Ready(ctx context.Context) error {
	if !cache.WaitForCacheSync(ctx.Done(), s.synced) {
		return fmt.Errorf("tunnel: node cache not synced: %w", ctx.Err())
	}
	return nil
}

func (s *Server) Stop(context.Context) error {
	if s.stop != nil {
		close(s.stop)
	}
	if s.listener != nil {
		s.listener.Close()
	}
	s.wg.Wait()
	return nil
}

func (s *Server) serve() {
	for {
		conn, err := s.listener.Accept()
		if err != nil {
			return // closed by Stop
		}
		go s.handle(conn)
	}
}

// handle answers one HTTP CONNECT from the apiserver and splices the
// connection to the target.
func (s *Server) handle(conn net.Conn) {
	defer conn.Close()
	_ = conn.SetReadDeadline(time.Now().Add(30 * time.Second))
	br := bufio.NewReader(conn)
	req, err := http.ReadRequest(br)
	if err != nil {
		klog.V(2).Infof("egress: read request: %v", err)
		return
	}
	if req.Method != http.MethodConnect {
		fmt.Fprintf(conn, "HTTP/1.1 405 Method Not Allowed\r\n\r\n")
		return
	}
	_ = conn.SetReadDeadline(time.Time{})
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	target, via, err := s.dial(ctx, req.Host)
	cancel()
	if err != nil {
		klog.V(2).Infof("egress: dial %s %s: %v", req.Host, via, err)
		fmt.Fprintf(conn, "HTTP/1.1 502 Bad Gateway\r\nContent-Type: text/plain\r\n\r\ndial %s %s: %v", req.Host, via, err)
		return
	}
	defer target.Close()
	klog.V(4).Infof("egress: %s %s", req.Host, via)
	if _, err := io.WriteString(conn, "HTTP/1.1 200 Connection established\r\n\r\n"); err != nil {
		return
	}
	splice(conn, br, target)
}

// dial reaches addr through the tunnel of the node that has this address,
// or directly.
func (s *Server) dial(ctx context.Context, addr string) (net.Conn, string, error) {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, "", err
	}
	if node := s.nodeWithAddress(host); node != "" && s.rd.HasSession(node) {
		c, err := s.rd.Dialer(node)(ctx, "tcp", addr)
		return c, "through the tunnel of node " + node, err
	}
	c, err := (&net.Dialer{}).DialContext(ctx, "tcp", addr)
	return c, "directly", err
}

func (s *Server) nodeWithAddress(host string) string {
	if s.nodes == nil {
		return ""
	}
	nodes, err := s.nodes.List(labels.Everything())
	if err != nil {
		return ""
	}
	for _, n := range nodes {
		for _, a := range n.Status.Addresses {
			if a.Address == host && (a.Type == corev1.NodeInternalIP || a.Type == corev1.NodeExternalIP || a.Type == corev1.NodeHostName) {
				return n.Name
			}
		}
	}
	return ""
}

// splice copies both ways until either side closes; src's buffered bytes
// go first.
func splice(a net.Conn, aReader io.Reader, b net.Conn) {
	done := make(chan struct{}, 2)
	go func() { _, _ = io.Copy(b, aReader); closeWrite(b); done <- struct{}{} }()
	go func() { _, _ = io.Copy(a, b); closeWrite(a); done <- struct{}{} }()
	<-done
	<-done
}

func closeWrite(c net.Conn) {
	if cw, ok := c.(interface{ CloseWrite() error }); ok {
		_ = cw.CloseWrite()
		return
	}
	_ = c.Close()
}
