package integration

import (
	"bytes"
	"context"
	"crypto/tls"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"go.etcd.io/etcd/client/pkg/v3/transport"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/berth-io/berth/pkg/pki"
)

// TestExternalDatastoreEtcd: --datastore-endpoint http://… is an external
// etcd (a real one, go.etcd.io/etcd/server embedded in the test): kine
// passes it through to the apiserver, the bootstrap data goes into it, and
// a second server with the same token joins from it.
func TestExternalDatastoreEtcd(t *testing.T) {
	t.Run("http", func(t *testing.T) { testExternalEtcd(t, false) })
	// TLS both ways: --datastore-cafile verifies etcd, the client
	// certificate (--datastore-certfile/-keyfile) is required by etcd.
	t.Run("https with client certificates", func(t *testing.T) { testExternalEtcd(t, true) })
}

func testExternalEtcd(t *testing.T, secure bool) {
	cfg := embed.NewConfig()
	cfg.Dir = filepath.Join(t.TempDir(), "etcd")
	scheme := "http"
	var tlsFlags []string
	var clientTLS *tls.Config
	if secure {
		scheme = "https"
		dir := t.TempDir()
		files, err := pki.Ensure(pki.Config{Dir: dir, ServiceIP: net.ParseIP("10.43.0.1")})
		if err != nil {
			t.Fatal(err)
		}
		ca, err := pki.LoadCA(files.ServerCA.Cert, files.ServerCA.Key)
		if err != nil {
			t.Fatal(err)
		}
		srv := pki.Pair{Cert: filepath.Join(dir, "etcd.crt"), Key: filepath.Join(dir, "etcd.key")}
		cli := pki.Pair{Cert: filepath.Join(dir, "cli.crt"), Key: filepath.Join(dir, "cli.key")}
		if err := pki.EnsureLeaf(ca, pki.LeafSpec{CommonName: "etcd", IPs: []net.IP{net.ParseIP("127.0.0.1")}, Server: true, Client: true}, srv, time.Now()); err != nil {
			t.Fatal(err)
		}
		if err := pki.EnsureLeaf(ca, pki.LeafSpec{CommonName: "berth", Client: true}, cli, time.Now()); err != nil {
			t.Fatal(err)
		}
		cfg.ClientTLSInfo = transport.TLSInfo{CertFile: srv.Cert, KeyFile: srv.Key, TrustedCAFile: files.ServerCA.Cert, ClientCertAuth: true}
		tlsFlags = []string{"--datastore-cafile", files.ServerCA.Cert, "--datastore-certfile", cli.Cert, "--datastore-keyfile", cli.Key}
		ti := transport.TLSInfo{CertFile: cli.Cert, KeyFile: cli.Key, TrustedCAFile: files.ServerCA.Cert}
		if clientTLS, err = ti.ClientConfig(); err != nil {
			t.Fatal(err)
		}
	}
	client := url.URL{Scheme: scheme, Host: "127.0.0.1:" + strconv.Itoa(freePort(t))}
	peer := url.URL{Scheme: "http", Host: "127.0.0.1:" + strconv.Itoa(freePort(t))}
	cfg.ListenClientUrls, cfg.AdvertiseClientUrls = []url.URL{client}, []url.URL{client}
	cfg.ListenPeerUrls, cfg.AdvertisePeerUrls = []url.URL{peer}, []url.URL{peer}
	cfg.InitialCluster = cfg.Name + "=" + peer.String()
	cfg.ZapLoggerBuilder = embed.NewZapLoggerBuilder(zap.NewNop())
	e, err := embed.StartEtcd(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.Close)
	select {
	case <-e.Server.ReadyNotify():
	case <-time.After(time.Minute):
		t.Fatal("etcd not ready")
	}

	common := append([]string{"--datastore-endpoint", client.String(), "--token", "etcd-cluster-token",
		"--disable", "coredns,local-storage,metrics-server"}, tlsFlags...)
	s1 := newServer(t, common...)
	s1.hostname = "berth-test-s1"
	s1.start()
	cs1 := s1.waitReady(3 * time.Minute)
	s2 := newServer(t, common...)
	s2.hostname = "berth-test-s2"
	s2.start()
	cs2 := s2.waitReady(3 * time.Minute)
	a, _ := os.ReadFile(filepath.Join(s1.dataDir, "server", "tls", "server-ca.crt"))
	b, _ := os.ReadFile(filepath.Join(s2.dataDir, "server", "tls", "server-ca.crt"))
	if len(a) == 0 || !bytes.Equal(a, b) {
		t.Error("the second server did not take the cluster's CA from etcd")
	}
	ctx := context.Background()
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "via-s1"}}
	if _, err := cs1.CoreV1().Namespaces().Create(ctx, ns, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := cs2.CoreV1().Namespaces().Get(ctx, "via-s1", metav1.GetOptions{}); err != nil {
		t.Errorf("written through s1, read through s2: %v", err)
	}
	// The apiserver's objects are in etcd itself.
	c, err := clientv3.New(clientv3.Config{Endpoints: []string{client.String()}, DialTimeout: 10 * time.Second, Logger: zap.NewNop(), TLS: clientTLS})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for _, key := range []string{"/registry/namespaces/via-s1", "/berth/bootstrap/"} {
		resp, err := c.Get(ctx, key, clientv3.WithPrefix(), clientv3.WithCountOnly())
		if err != nil {
			t.Errorf("%s in the external etcd: %v", key, err)
		} else if resp.Count != 1 {
			t.Errorf("%s in the external etcd: %d keys, want 1", key, resp.Count)
		}
	}
}
