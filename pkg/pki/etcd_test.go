package pki

import (
	"crypto/x509"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"
)

func TestEnsureEtcd(t *testing.T) {
	dir := t.TempDir()
	now := time.Now()
	cfg := EtcdConfig{TLSDir: dir, NodeName: "Node-A", IPs: []net.IP{net.ParseIP("192.0.2.7")}, Now: func() time.Time { return now }}
	f, err := EnsureEtcd(cfg)
	if err != nil {
		t.Fatal(err)
	}
	before := takeSnapshot(t, filepath.Join(dir, "etcd"))
	for _, p := range []Pair{f.ServerCA, f.PeerCA, f.Server, f.Client, f.Peer} {
		fi, err := os.Stat(p.Key)
		if err != nil || fi.Mode().Perm() != keyMode {
			t.Errorf("%s: %v mode %v, want 0600", p.Key, err, fi.Mode().Perm())
		}
	}
	verify := func(leaf, ca string, usage x509.ExtKeyUsage, name string) {
		t.Helper()
		pool := x509.NewCertPool()
		pool.AddCert(readCert(t, ca))
		if _, err := readCert(t, leaf).Verify(x509.VerifyOptions{Roots: pool, KeyUsages: []x509.ExtKeyUsage{usage}, DNSName: name, CurrentTime: now}); err != nil {
			t.Errorf("%s for %v %q: %v", leaf, usage, name, err)
		}
	}
	verify(f.Server.Cert, f.ServerCA.Cert, x509.ExtKeyUsageServerAuth, "localhost")
	verify(f.Server.Cert, f.ServerCA.Cert, x509.ExtKeyUsageServerAuth, "192.0.2.7")
	verify(f.Client.Cert, f.ServerCA.Cert, x509.ExtKeyUsageClientAuth, "")
	verify(f.Peer.Cert, f.PeerCA.Cert, x509.ExtKeyUsageServerAuth, "node-a")
	verify(f.Peer.Cert, f.PeerCA.Cert, x509.ExtKeyUsageClientAuth, "")
	// A Kubernetes CA must not be able to stand in: separate CAs.
	if string(readCert(t, f.ServerCA.Cert).Raw) == string(readCert(t, f.PeerCA.Cert).Raw) {
		t.Errorf("server and peer CA are the same")
	}

	if _, err := EnsureEtcd(cfg); err != nil {
		t.Fatal(err)
	}
	if c := changed(before, takeSnapshot(t, filepath.Join(dir, "etcd"))); len(c) != 0 {
		t.Errorf("second EnsureEtcd changed %v", c)
	}
	cfg.IPs = append(cfg.IPs, net.ParseIP("192.0.2.8"))
	if _, err := EnsureEtcd(cfg); err != nil {
		t.Fatal(err)
	}
	c := changed(before, takeSnapshot(t, filepath.Join(dir, "etcd")))
	for _, p := range c {
		if base := filepath.Base(p); base != "server-client.crt" && base != "server-client.key" && base != "peer-server-client.crt" && base != "peer-server-client.key" {
			t.Errorf("a new node IP changed %s", p)
		}
	}
	if len(c) != 4 {
		t.Errorf("a new node IP changed %v, want the serving and peer pairs", c)
	}
}
