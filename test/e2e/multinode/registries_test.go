package multinode

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"io"
	"log"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// TestPrivateRegistry: an agent node pulls through /etc/berth/registries.yaml
// from a private registry (TLS with its own CA, basic auth) that is not
// the image's registry: a docker.io image through a mirror with a rewrite
// (berth's loopback proxy), and an image of another registry name through
// a plain mirror. A broken edit of the file, followed by a restart, leaves
// the node pulling with its last good configuration.
func TestPrivateRegistry(t *testing.T) {
	c := NewCluster(t)
	reg := startTestRegistry(t, c.Dir)
	src, err := tarball.ImageFromPath(filepath.Join(imagesDir, "busybox-1.36-amd64.tar"), ptr(mustTag(t, busybox)))
	if err != nil {
		t.Fatal(err)
	}
	for _, tag := range []string{"1", "2"} {
		reg.push(t, "mirrored/hello:"+tag, src)
	}

	srv := c.StartServer(t)
	cs := c.WaitNodeReady(t, srv, 3*time.Minute, time.Time{})
	tok, err := c.Token()
	if err != nil {
		t.Fatal(err)
	}
	agent := c.AddNode(t, "mn-agent1")
	// The node's private /etc/berth, so the default --private-registry path.
	regFile := filepath.Join(agent.Dir, "root", "etc", "berth", "registries.yaml")
	good := fmt.Sprintf(`mirrors:
  docker.io:
    endpoint: ["https://%[1]s"]
    rewrite:
      "^library/(.*)": "mirrored/$1"
  registry.berth.test:
    endpoint: ["https://%[1]s"]
configs:
  "%[1]s":
    auth: {username: %[2]s, password: %[3]q}
    tls: {ca_file: %[4]s}
`, reg.host, reg.user, reg.pass, reg.caFile)
	if err := os.WriteFile(regFile, []byte(good), 0o600); err != nil {
		t.Fatal(err)
	}
	startAgent(t, c, agent, tok)
	c.WaitNodeReady(t, agent, 3*time.Minute, time.Time{})

	ctx := context.Background()
	ns := "mn-registries"
	if _, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	pull := func(t *testing.T, pod, image, wantPath string) {
		t.Helper()
		p := bbPod(pod, agent.Name, "sleep 3600")
		p.Spec.Containers[0].Image = image
		p.Spec.Containers[0].ImagePullPolicy = corev1.PullAlways
		if _, err := cs.CoreV1().Pods(ns).Create(ctx, p, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		waitPod(t, cs, ns, pod, 2*time.Minute, podRunning)
		if !reg.served(wantPath) {
			t.Errorf("the registry never served %s; it saw %v", wantPath, reg.paths())
		}
	}

	t.Run("docker.io through a rewriting mirror", func(t *testing.T) {
		pull(t, "rewritten", "docker.io/library/hello:1", "/v2/mirrored/hello/manifests/1")
	})
	t.Run("another registry through a mirror", func(t *testing.T) {
		pull(t, "mirrored", "registry.berth.test/mirrored/hello:1", "/v2/mirrored/hello/manifests/1")
		if reg.unauthorized() == 0 {
			t.Error("the registry never challenged: credentials were not exercised")
		}
	})

	t.Run("a broken edit keeps the last good configuration", func(t *testing.T) {
		// The mirror without rewrites must be byte-for-byte the same; the
		// rewriting one gets a new loopback proxy port at every start.
		certsDir := filepath.Join(agent.DataDir, "agent", "etc", "containerd", "certs.d")
		read := func() (plain, rewritten string) {
			a, err := os.ReadFile(filepath.Join(certsDir, "registry.berth.test", "hosts.toml"))
			if err != nil {
				t.Fatal(err)
			}
			b, err := os.ReadFile(filepath.Join(certsDir, "docker.io", "hosts.toml"))
			if err != nil {
				t.Fatal(err)
			}
			return string(a), regexp.MustCompile(`127\.0\.0\.1:\d+`).ReplaceAllString(string(b), "127.0.0.1:PORT")
		}
		plainBefore, rewrittenBefore := read()
		bad := strings.Replace(good, "endpoint:", "endpoints:", 1)
		if err := os.WriteFile(regFile, []byte(bad), 0o600); err != nil {
			t.Fatal(err)
		}
		restarted := time.Now()
		if err := agent.Restart(); err != nil {
			t.Fatal(err)
		}
		c.WaitNodeReady(t, agent, 3*time.Minute, restarted)
		if log := agent.LogTail(400); !strings.Contains(log, "/etc/berth/registries.yaml: unknown key mirrors.\"docker.io\".endpoints") {
			t.Errorf("the agent's log does not name the file and the bad key:\n%s", log)
		}
		if plain, rewritten := read(); plain != plainBefore || rewritten != rewrittenBefore {
			t.Errorf("hosts.toml changed after a broken edit:\n%s\n%s", plain, rewritten)
		}
		// A fresh pull still goes through the rewrite and the credentials.
		pull(t, "after-bad-edit", "docker.io/library/hello:2", "/v2/mirrored/hello/manifests/2")
	})
}

// testRegistry is go-containerregistry's registry behind TLS (a CA of its
// own) and basic auth, on the cluster bridge's host address.
type testRegistry struct {
	host, user, pass, caFile string
	clientTLS                *tls.Config

	mu     sync.Mutex
	seen   []string
	denied int
	srv    *http.Server
}

func startTestRegistry(t *testing.T, dir string) *testRegistry {
	t.Helper()
	r := &testRegistry{user: "puller", pass: `pa"ss:word`}
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	caTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "berth-test-registry-ca"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	caCert, _ := x509.ParseCertificate(caDER)
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	leafDER, err := x509.CreateCertificate(rand.Reader, &x509.Certificate{
		SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: gatewayIP},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IPAddresses: []net.IP{net.ParseIP(gatewayIP)}, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		KeyUsage: x509.KeyUsageDigitalSignature,
	}, caCert, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	r.caFile = filepath.Join(dir, "registry-ca.crt")
	if err := os.WriteFile(r.caFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER}), 0o644); err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(caCert)
	r.clientTLS = &tls.Config{RootCAs: pool}

	ln, err := net.Listen("tcp", net.JoinHostPort(gatewayIP, "0"))
	if err != nil {
		t.Fatal(err)
	}
	r.host = ln.Addr().String()
	inner := registry.New(registry.Logger(log.New(io.Discard, "", 0)))
	r.srv = &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
			u, p, ok := req.BasicAuth()
			r.mu.Lock()
			if !ok || u != r.user || p != r.pass {
				r.denied++
				r.mu.Unlock()
				w.Header().Set("WWW-Authenticate", `Basic realm="berth-test"`)
				http.Error(w, "unauthorized", http.StatusUnauthorized)
				return
			}
			r.seen = append(r.seen, req.URL.Path)
			r.mu.Unlock()
			inner.ServeHTTP(w, req)
		}),
		TLSConfig: &tls.Config{Certificates: []tls.Certificate{{Certificate: [][]byte{leafDER}, PrivateKey: key}}},
	}
	go func() { _ = r.srv.ServeTLS(ln, "", "") }()
	t.Cleanup(func() { _ = r.srv.Close() })
	return r
}

func (r *testRegistry) push(t *testing.T, repoTag string, img v1.Image) {
	t.Helper()
	ref, err := name.ParseReference(r.host + "/" + repoTag)
	if err != nil {
		t.Fatal(err)
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.TLSClientConfig = r.clientTLS
	if err := remote.Write(ref, img, remote.WithAuth(&authn.Basic{Username: r.user, Password: r.pass}), remote.WithTransport(tr)); err != nil {
		t.Fatalf("push %s: %v", ref, err)
	}
}

func (r *testRegistry) served(path string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, p := range r.seen {
		if p == path {
			return true
		}
	}
	return false
}

func (r *testRegistry) paths() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.seen...)
}

func (r *testRegistry) unauthorized() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.denied
}

func mustTag(t *testing.T, s string) name.Tag {
	t.Helper()
	tag, err := name.NewTag(s)
	if err != nil {
		t.Fatal(err)
	}
	return tag
}

func ptr[T any](v T) *T { return &v }
