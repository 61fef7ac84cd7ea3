package server

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/validation"
	"k8s.io/client-go/kubernetes"
	"k8s.io/klog/v2"

	"github.com/berth-io/berth/pkg/atomicfile"
	"github.com/berth-io/berth/pkg/control"
	"github.com/berth-io/berth/pkg/join"
	"github.com/berth-io/berth/pkg/pki"
	"github.com/berth-io/berth/pkg/token"
	"github.com/berth-io/berth/pkg/tunnel"
)

// joinHandler serves the join endpoints (pkg/join is the agent's side).
type joinHandler struct {
	cfg      *Config
	token    token.Token
	clientCA *pki.CA
	serverCA *pki.CA
	client   func() (kubernetes.Interface, error)
}

func (s *Server) newJoinHandler(client func() (kubernetes.Interface, error)) (*joinHandler, error) {
	clientCA, err := pki.LoadCA(s.files.ClientCA.Cert, s.files.ClientCA.Key)
	if err != nil {
		return nil, err
	}
	serverCA, err := pki.LoadCA(s.files.ServerCA.Cert, s.files.ServerCA.Key)
	if err != nil {
		return nil, err
	}
	return &joinHandler{cfg: s.cfg, token: s.token, clientCA: clientCA, serverCA: serverCA, client: client}, nil
}

// routes returns the endpoints keyed by ServeMux pattern.
func (j *joinHandler) routes() map[string]http.Handler {
	return map[string]http.Handler{
		"GET " + join.ConfigPath:            j.authenticated(j.config),
		"POST " + join.CertsPath + "{kind}": j.authenticated(j.sign),
		"GET " + join.ServerBootstrapPath:   http.HandlerFunc(j.serverBootstrap),
	}
}

// caller is who an authenticated join request comes from.
type caller struct {
	// node is set when the request carried a kubelet client certificate:
	// such a caller may only act for that node.
	node string
	desc string
}

type joinError struct {
	code int
	msg  string
}

func (e *joinError) Error() string { return e.msg }

func httpError(w http.ResponseWriter, err error) {
	var je *joinError
	if errors.As(err, &je) {
		http.Error(w, je.msg, je.code)
		return
	}
	klog.Warningf("join: %v", err)
	http.Error(w, err.Error(), http.StatusServiceUnavailable)
}

// authenticated admits a request with a node's client certificate or the
// cluster token (basic auth: node or server, and the token's password) or a
// bootstrap token (basic auth: its id and secret).
func (j *joinHandler) authenticated(h func(http.ResponseWriter, *http.Request, caller)) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, err := j.authenticate(r)
		if err != nil {
			klog.Infof("join: refused %s %s from %s: %v", r.Method, r.URL.Path, r.RemoteAddr, err)
			httpError(w, err)
			return
		}
		h(w, r, c)
	})
}

// A bootstrap token is <id>.<secret>, sent as basic auth user and password.
var (
	bootstrapID     = regexp.MustCompile(`^[a-z0-9]{6}$`)
	bootstrapSecret = regexp.MustCompile(`^[a-z0-9]{16}$`)
)

func (j *joinHandler) authenticate(r *http.Request) (caller, error) {
	if node, ok := tunnel.NodeIdentity(r.TLS); ok {
		return caller{node: node, desc: "node " + node}, nil
	}
	user, pass, ok := r.BasicAuth()
	if !ok {
		return caller{}, &joinError{http.StatusUnauthorized, "no credentials: join with --token (the server's <data-dir>/server/node-token, or `berth token create`)"}
	}
	if (user == "node" || user == "server") && subtle.ConstantTimeCompare([]byte(pass), []byte(j.token.Password)) == 1 {
		return caller{desc: "token user " + user}, nil
	}
	// A server token that looks like a bootstrap token arrives split in two.
	if subtle.ConstantTimeCompare([]byte(user+"."+pass), []byte(j.token.Password)) == 1 {
		return caller{desc: "server token"}, nil
	}
	if bootstrapID.MatchString(user) && bootstrapSecret.MatchString(pass) {
		cs, err := j.client()
		if err != nil {
			return caller{}, err
		}
		ctx, cancel := context.WithTimeout(r.Context(), 10*time.Second)
		defer cancel()
		if err := token.ValidateBootstrap(ctx, cs, user, pass, time.Now()); err != nil {
			for _, rejected := range []error{token.ErrBootstrapNotFound, token.ErrBootstrapExpired,
				token.ErrBootstrapWrongSecret, token.ErrBootstrapNotForAuth, token.ErrBootstrapInvalid} {
				if errors.Is(err, rejected) {
					return caller{}, &joinError{http.StatusUnauthorized, "token rejected: " + err.Error()}
				}
			}
			// The apiserver did not answer: the agent retries.
			return caller{}, fmt.Errorf("check bootstrap token %s: %w", user, err)
		}
		return caller{desc: "bootstrap token " + user}, nil
	}
	return caller{}, &joinError{http.StatusUnauthorized, "token rejected: it does not match this cluster's token (see the server's <data-dir>/server/node-token) and is not a valid bootstrap token"}
}

func (j *joinHandler) config(w http.ResponseWriter, r *http.Request, _ caller) {
	cfg := j.cfg
	servers := []string{net.JoinHostPort(cfg.advertiseIP.String(), strconv.Itoa(cfg.HTTPSListenPort))}
	// Every live server, so the agent's load balancer can fail over.
	if cs, err := j.client(); err == nil {
		ctx, cancel := context.WithTimeout(r.Context(), 5*time.Second)
		if live, err := control.LiveServers(ctx, cs, time.Now()); err == nil {
			servers = append(servers, live...)
		}
		cancel()
	}
	out := join.ClusterConfig{
		ClusterCIDR:      cfg.ClusterCIDR,
		ServiceCIDR:      cfg.ServiceCIDR,
		ClusterDNS:       cfg.ClusterDNS,
		ClusterDomain:    cfg.ClusterDomain,
		FlannelBackend:   cfg.FlannelBackend,
		DisableKubeProxy: cfg.DisableKubeProxy,
		ServerCA:         string(j.serverCA.CertPEM),
		ClientCA:         string(j.clientCA.CertPEM),
		Servers:          slices.Compact(servers),
	}
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(out)
}

func (j *joinHandler) sign(w http.ResponseWriter, r *http.Request, c caller) {
	crt, err := j.signRequest(r, c)
	if err != nil {
		httpError(w, err)
		return
	}
	w.Header().Set("Content-Type", "application/x-pem-file")
	_, _ = w.Write(crt)
}

func (j *joinHandler) signRequest(r *http.Request, c caller) ([]byte, error) {
	kind := join.CertKind(r.PathValue("kind"))
	node := r.Header.Get(join.NodeNameHeader)
	if errs := validation.IsDNS1123Subdomain(node); node == "" || len(errs) > 0 {
		return nil, &joinError{http.StatusBadRequest, fmt.Sprintf("node name %q is not a valid Kubernetes name: %s", node, strings.Join(errs, "; "))}
	}
	if c.node != "" && c.node != node {
		return nil, &joinError{http.StatusForbidden, fmt.Sprintf("node %s may not ask for certificates of node %s", c.node, node)}
	}
	var ips []net.IP
	for _, s := range strings.Split(r.Header.Get(join.NodeIPHeader), ",") {
		if s = strings.TrimSpace(s); s == "" {
			continue
		}
		ip := net.ParseIP(s)
		if ip == nil {
			return nil, &joinError{http.StatusBadRequest, fmt.Sprintf("node IP %q is not an IP address", s)}
		}
		ips = append(ips, ip)
	}
	var spec pki.LeafSpec
	ca := j.clientCA
	switch kind {
	case join.KubeletClient:
		spec = pki.LeafSpec{CommonName: "system:node:" + node, Organization: []string{"system:nodes"}, Client: true}
	case join.KubeletServing:
		ca = j.serverCA
		spec = pki.LeafSpec{CommonName: node, DNSNames: []string{node, "localhost"},
			IPs: append([]net.IP{net.ParseIP("127.0.0.1"), net.ParseIP("::1")}, ips...), Server: true}
	case join.KubeProxyClient:
		spec = pki.LeafSpec{CommonName: "system:kube-proxy", Client: true}
	case join.ControllerClient:
		spec = pki.LeafSpec{CommonName: control.ControllerUser, Client: true}
	default:
		return nil, &joinError{http.StatusNotFound, fmt.Sprintf("unknown certificate kind %q", kind)}
	}
	body, err := io.ReadAll(io.LimitReader(r.Body, 64<<10))
	if err != nil {
		return nil, fmt.Errorf("read certificate request: %w", err)
	}
	csr, err := pki.ParseCSR(body)
	if err != nil {
		return nil, &joinError{http.StatusBadRequest, err.Error()}
	}
	if err := j.checkNodePassword(r.Context(), node, r.Header.Get(join.NodePasswordHeader)); err != nil {
		return nil, err
	}
	_, crt, err := ca.Sign(spec, csr.PublicKey, time.Now())
	if err != nil {
		return nil, fmt.Errorf("sign %s for %s: %w", kind, node, err)
	}
	klog.V(2).Infof("join: signed %s for node %s (%s)", kind, node, c.desc)
	return crt, nil
}

// Node passwords: each agent makes a random password once and the server
// keeps a salted hash of it in the Secret <node>.node-password.berth, so a
// second machine cannot take over a node's name. Deleting the Node frees
// the name.
const nodePasswordNamespace = metav1.NamespaceSystem

func nodePasswordSecret(node string) string { return node + ".node-password.berth" }

func (j *joinHandler) checkNodePassword(ctx context.Context, node, password string) error {
	if len(password) < 16 {
		return &joinError{http.StatusBadRequest, "no node password sent (berth agents keep one in /etc/berth/node/password)"}
	}
	cs, err := j.client()
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	secrets := cs.CoreV1().Secrets(nodePasswordNamespace)
	name := nodePasswordSecret(node)
	sec, err := secrets.Get(ctx, name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		_, err = secrets.Create(ctx, &corev1.Secret{
			ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: nodePasswordNamespace},
			Type:       "berth.io/node-password",
			Data:       map[string][]byte{"hash": []byte(hashPassword(password))},
		}, metav1.CreateOptions{})
		if apierrors.IsAlreadyExists(err) {
			return fmt.Errorf("node password for %s: created concurrently, retry", node)
		}
		if err != nil {
			return fmt.Errorf("store node password for %s: %w", node, err)
		}
		klog.Infof("join: node %s registered its node password", node)
		return nil
	}
	if err != nil {
		return fmt.Errorf("read node password of %s: %w", node, err)
	}
	if verifyPassword(string(sec.Data["hash"]), password) {
		return nil
	}
	if _, err := cs.CoreV1().Nodes().Get(ctx, node, metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		if err != nil {
			return fmt.Errorf("check node %s: %w", node, err)
		}
		return &joinError{http.StatusForbidden, fmt.Sprintf(
			"node password rejected: a node named %q already exists and this machine's /etc/berth/node/password does not match it (duplicate hostname?). Use another --node-name, add --with-node-id, or delete the old node (berth kubectl delete node %s) to reuse the name", node, node)}
	}
	// The Node is gone: its name is free again.
	sec.Data = map[string][]byte{"hash": []byte(hashPassword(password))}
	if _, err := secrets.Update(ctx, sec, metav1.UpdateOptions{}); err != nil {
		return fmt.Errorf("update node password of %s: %w", node, err)
	}
	klog.Infof("join: node name %s reused by a new machine (its Node was deleted)", node)
	return nil
}

// hashPassword returns sha256$<salt>$<hash>. The password is 16 random
// bytes, so a fast salted hash suffices (no dictionary to slow down).
func hashPassword(password string) string {
	salt := make([]byte, 16)
	_, _ = rand.Read(salt)
	sum := sha256.Sum256(append(salt, password...))
	return "sha256$" + hex.EncodeToString(salt) + "$" + hex.EncodeToString(sum[:])
}

func verifyPassword(stored, password string) bool {
	parts := strings.Split(stored, "$")
	if len(parts) != 3 || parts[0] != "sha256" {
		return false
	}
	salt, err1 := hex.DecodeString(parts[1])
	want, err2 := hex.DecodeString(parts[2])
	if err1 != nil || err2 != nil {
		return false
	}
	sum := sha256.Sum256(append(salt, password...))
	return subtle.ConstantTimeCompare(sum[:], want) == 1
}

// writeEgressConfig points the apiserver's "cluster" egress (kubelets, pods,
// services) at the tunnel server's unix socket.
func writeEgressConfig(serverDir, socket string) (string, error) {
	path := filepath.Join(serverDir, "etc", "egress-selector-config.yaml")
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return "", fmt.Errorf("egress selector config: %w", err)
	}
	cfg := fmt.Sprintf(`apiVersion: apiserver.k8s.io/v1beta1
kind: EgressSelectorConfiguration
egressSelections:
- name: cluster
  connection:
    proxyProtocol: HTTPConnect
    transport:
      uds:
        udsName: %s
`, socket)
	if err := atomicfile.Write(path, []byte(cfg), 0o600); err != nil {
		return "", fmt.Errorf("egress selector config: %w", err)
	}
	return path, nil
}
