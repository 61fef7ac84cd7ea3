package pki

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"k8s.io/klog/v2"
)

var testStart = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

func testConfig(dir string, now time.Time) Config {
	return Config{
		Dir:           dir,
		ClusterDomain: "cluster.local",
		ServiceIP:     net.ParseIP("10.43.0.1"),
		// Duplicates on purpose: the serving cert must list each name once.
		IPs:  []net.IP{net.ParseIP("192.168.1.10"), net.ParseIP("127.0.0.1"), net.ParseIP("fd00::10")},
		SANs: []string{"berth.example.com", "10.43.0.1", "203.0.113.7", "Berth.Example.com", "localhost", "[fd00::20]"},
		Now:  func() time.Time { return now },
	}
}

// allPaths lists every file Ensure maintains, keyed by base name.
func allPaths(f *Files) map[string]string {
	m := map[string]string{}
	for _, p := range []Pair{f.ServerCA, f.ClientCA, f.RequestHeaderCA, f.Serving, f.Admin,
		f.ControllerManager, f.Scheduler, f.KubeletClient, f.AuthProxy} {
		m[filepath.Base(p.Cert)] = p.Cert
		m[filepath.Base(p.Key)] = p.Key
	}
	m[filepath.Base(f.ServiceAccountKey)] = f.ServiceAccountKey
	m[filepath.Base(f.ServiceAccountPub)] = f.ServiceAccountPub
	return m
}

type snapshot map[string]struct {
	data  []byte
	mtime time.Time
}

func takeSnapshot(t *testing.T, dir string) snapshot {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	s := snapshot{}
	for _, e := range entries {
		p := filepath.Join(dir, e.Name())
		data, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		fi, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		s[e.Name()] = struct {
			data  []byte
			mtime time.Time
		}{data, fi.ModTime()}
	}
	return s
}

// ageFiles moves every mtime into the past so that a rewrite is detectable
// even when it happens within the file system's timestamp granularity.
func ageFiles(t *testing.T, dir string) {
	t.Helper()
	old := time.Now().Add(-48 * time.Hour).Truncate(time.Second)
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if err := os.Chtimes(filepath.Join(dir, e.Name()), old, old); err != nil {
			t.Fatal(err)
		}
	}
}

// changed returns the names of files whose content or mtime differ.
func changed(before, after snapshot) []string {
	var out []string
	for name, a := range after {
		b, ok := before[name]
		if !ok || !bytes.Equal(a.data, b.data) || !a.mtime.Equal(b.mtime) {
			out = append(out, name)
		}
	}
	for name := range before {
		if _, ok := after[name]; !ok {
			out = append(out, name+" (deleted)")
		}
	}
	slices.Sort(out)
	return out
}

func readCert(t *testing.T, path string) *x509.Certificate {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	c, err := parseCertPEM(data)
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	return c
}

func mustEnsure(t *testing.T, cfg Config) *Files {
	t.Helper()
	f, err := Ensure(cfg)
	if err != nil {
		t.Fatalf("Ensure: %v", err)
	}
	return f
}

func TestEnsureFresh(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "server", "tls")
	f := mustEnsure(t, testConfig(dir, testStart))

	fi, err := os.Stat(dir)
	if err != nil {
		t.Fatal(err)
	}
	if got := fi.Mode().Perm(); got != 0o700 {
		t.Errorf("dir mode = %#o, want 0700", got)
	}

	want := []string{
		"client-admin.crt", "client-admin.key", "client-auth-proxy.crt", "client-auth-proxy.key",
		"client-ca.crt", "client-ca.key", "client-controller.crt", "client-controller.key",
		"client-kube-apiserver.crt", "client-kube-apiserver.key", "client-scheduler.crt", "client-scheduler.key",
		"request-header-ca.crt", "request-header-ca.key", "server-ca.crt", "server-ca.key",
		"service.key", "service.pub", "serving-kube-apiserver.crt", "serving-kube-apiserver.key",
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, e := range entries {
		got = append(got, e.Name()) // also catches leftover temp files
	}
	if !slices.Equal(got, want) {
		t.Errorf("files in dir:\n got %q\nwant %q", got, want)
	}
	paths := allPaths(f)
	if len(paths) != len(want) {
		t.Errorf("Files lists %d paths, want %d", len(paths), len(want))
	}
	for name, p := range paths {
		if !filepath.IsAbs(p) || filepath.Dir(p) != dir {
			t.Errorf("%s: path %q is not absolute inside %s", name, p, dir)
		}
		fi, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		wantMode := os.FileMode(0o644)
		if strings.HasSuffix(name, ".key") {
			wantMode = 0o600
			data, _ := os.ReadFile(p)
			block, _ := pem.Decode(data)
			if block == nil || block.Type != "EC PRIVATE KEY" {
				t.Errorf("%s: want an EC PRIVATE KEY PEM block", name)
			} else if k, err := x509.ParseECPrivateKey(block.Bytes); err != nil || k.Curve != elliptic.P256() {
				t.Errorf("%s: want a P-256 key (err %v)", name, err)
			}
		}
		if fi.Mode().Perm() != wantMode {
			t.Errorf("%s: mode %#o, want %#o", name, fi.Mode().Perm(), wantMode)
		}
	}

	// CAs.
	pools := map[string]*x509.CertPool{}
	for _, c := range []struct {
		prefix string
		pair   Pair
	}{
		{"berth-server-ca", f.ServerCA},
		{"berth-client-ca", f.ClientCA},
		{"berth-request-header-ca", f.RequestHeaderCA},
	} {
		ca, err := LoadCA(c.pair.Cert, c.pair.Key)
		if err != nil {
			t.Fatal(err)
		}
		cert := ca.Cert
		if wantCN := fmt.Sprintf("%s@%d", c.prefix, testStart.Unix()); cert.Subject.CommonName != wantCN {
			t.Errorf("CA CN %q, want %q", cert.Subject.CommonName, wantCN)
		}
		if !cert.IsCA || cert.KeyUsage != x509.KeyUsageCertSign|x509.KeyUsageDigitalSignature|x509.KeyUsageKeyEncipherment {
			t.Errorf("%s: IsCA %v KeyUsage %v", c.prefix, cert.IsCA, cert.KeyUsage)
		}
		if !cert.NotBefore.Equal(testStart.Add(-time.Hour)) || !cert.NotAfter.Equal(testStart.Add(10*365*24*time.Hour)) {
			t.Errorf("%s: validity %s – %s", c.prefix, cert.NotBefore, cert.NotAfter)
		}
		if cert.CheckSignatureFrom(cert) != nil {
			t.Errorf("%s is not self-signed", c.prefix)
		}
		if cert.SerialNumber.Sign() <= 0 || cert.SerialNumber.BitLen() > 128 {
			t.Errorf("%s: serial %v", c.prefix, cert.SerialNumber)
		}
		pool := x509.NewCertPool()
		pool.AddCert(cert)
		pools[c.pair.Cert] = pool
	}

	// Leaves.
	leaves := []struct {
		pair   Pair
		ca     Pair
		cn     string
		org    []string
		server bool
	}{
		{f.Serving, f.ServerCA, "kube-apiserver", nil, true},
		{f.Admin, f.ClientCA, "system:admin", []string{"system:masters"}, false},
		{f.ControllerManager, f.ClientCA, "system:kube-controller-manager", nil, false},
		{f.Scheduler, f.ClientCA, "system:kube-scheduler", nil, false},
		{f.KubeletClient, f.ClientCA, "system:apiserver", []string{"system:masters"}, false},
		{f.AuthProxy, f.RequestHeaderCA, "system:auth-proxy", nil, false},
	}
	for _, l := range leaves {
		cert := readCert(t, l.pair.Cert)
		name := filepath.Base(l.pair.Cert)
		usage := x509.ExtKeyUsageClientAuth
		if l.server {
			usage = x509.ExtKeyUsageServerAuth
		}
		if _, err := cert.Verify(x509.VerifyOptions{Roots: pools[l.ca.Cert], CurrentTime: testStart, KeyUsages: []x509.ExtKeyUsage{usage}}); err != nil {
			t.Errorf("%s does not verify against %s: %v", name, filepath.Base(l.ca.Cert), err)
		}
		// Cross-check: no leaf verifies against a CA that did not sign it.
		for caPath, pool := range pools {
			if caPath == l.ca.Cert {
				continue
			}
			if _, err := cert.Verify(x509.VerifyOptions{Roots: pool, CurrentTime: testStart, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err == nil {
				t.Errorf("%s unexpectedly verifies against %s", name, filepath.Base(caPath))
			}
		}
		if !slices.Equal(cert.ExtKeyUsage, []x509.ExtKeyUsage{usage}) {
			t.Errorf("%s: ExtKeyUsage %v, want only %v", name, cert.ExtKeyUsage, usage)
		}
		if cert.IsCA {
			t.Errorf("%s is a CA", name)
		}
		if cert.Subject.CommonName != l.cn || !slices.Equal(cert.Subject.Organization, l.org) {
			t.Errorf("%s: subject %v, want CN %q O %q", name, cert.Subject, l.cn, l.org)
		}
		if !cert.NotBefore.Equal(testStart.Add(-time.Hour)) || !cert.NotAfter.Equal(testStart.Add(365*24*time.Hour)) {
			t.Errorf("%s: validity %s – %s", name, cert.NotBefore, cert.NotAfter)
		}
		if cert.SerialNumber.Sign() <= 0 || cert.SerialNumber.BitLen() > 128 {
			t.Errorf("%s: serial %v", name, cert.SerialNumber)
		}
		if !l.server && (len(cert.DNSNames) > 0 || len(cert.IPAddresses) > 0) {
			t.Errorf("%s: client cert has SANs %v %v", name, cert.DNSNames, cert.IPAddresses)
		}
	}

	serving := readCert(t, f.Serving.Cert)
	wantDNS := []string{"berth.example.com", "kubernetes", "kubernetes.default", "kubernetes.default.svc",
		"kubernetes.default.svc.cluster.local", "localhost"}
	gotDNS := slices.Sorted(slices.Values(serving.DNSNames))
	if !slices.Equal(gotDNS, wantDNS) {
		t.Errorf("serving DNS SANs\n got %q\nwant %q", gotDNS, wantDNS)
	}
	wantIPs := []string{"10.43.0.1", "127.0.0.1", "192.168.1.10", "203.0.113.7", "::1", "fd00::10", "fd00::20"}
	gotIPs := slices.Sorted(slices.Values(ipStrings(serving.IPAddresses)))
	if !slices.Equal(gotIPs, wantIPs) {
		t.Errorf("serving IP SANs\n got %q\nwant %q", gotIPs, wantIPs)
	}

	// service.pub is the public half of service.key.
	keyPEM, _ := os.ReadFile(f.ServiceAccountKey)
	key, err := parseKeyPEM(keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	pubPEM, _ := os.ReadFile(f.ServiceAccountPub)
	block, _ := pem.Decode(pubPEM)
	if block == nil || block.Type != "PUBLIC KEY" {
		t.Fatal("service.pub: no PUBLIC KEY block")
	}
	pub, err := x509.ParsePKIXPublicKey(block.Bytes)
	if err != nil || !publicKeysEqual(pub, key.Public()) {
		t.Errorf("service.pub does not match service.key (err %v)", err)
	}
}

func TestEnsureIdempotent(t *testing.T) {
	dir := t.TempDir()
	cfg := testConfig(dir, testStart)
	mustEnsure(t, cfg)
	ageFiles(t, dir)
	before := takeSnapshot(t, dir)

	// A little later, with the SANs listed in another order: nothing to do.
	cfg = testConfig(dir, testStart.Add(30*24*time.Hour))
	slices.Reverse(cfg.SANs)
	slices.Reverse(cfg.IPs)
	mustEnsure(t, cfg)
	if c := changed(before, takeSnapshot(t, dir)); len(c) > 0 {
		t.Errorf("second Ensure changed %q", c)
	}
}

func TestEnsureNewSANReissuesOnlyServing(t *testing.T) {
	dir := t.TempDir()
	cfg := testConfig(dir, testStart)
	f := mustEnsure(t, cfg)
	ageFiles(t, dir)
	before := takeSnapshot(t, dir)

	cfg.SANs = append(cfg.SANs, "api.example.org")
	mustEnsure(t, cfg)
	want := []string{"serving-kube-apiserver.crt", "serving-kube-apiserver.key"}
	if c := changed(before, takeSnapshot(t, dir)); !slices.Equal(c, want) {
		t.Errorf("changed %q, want %q", c, want)
	}
	if !slices.Contains(readCert(t, f.Serving.Cert).DNSNames, "api.example.org") {
		t.Error("new SAN missing from serving cert")
	}
}

func TestEnsureRenewsLeavesNearExpiry(t *testing.T) {
	dir := t.TempDir()
	f := mustEnsure(t, testConfig(dir, testStart))
	ageFiles(t, dir)
	before := takeSnapshot(t, dir)

	later := testStart.Add(250 * 24 * time.Hour) // 115 days before leaf expiry
	mustEnsure(t, testConfig(dir, later))
	got := changed(before, takeSnapshot(t, dir))
	var want []string
	for name := range allPaths(f) {
		if !strings.Contains(name, "-ca.") && !strings.HasPrefix(name, "service.") {
			want = append(want, name)
		}
	}
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Errorf("changed\n got %q\nwant %q", got, want)
	}
	if na := readCert(t, f.Admin.Cert).NotAfter; !na.Equal(later.Add(365 * 24 * time.Hour)) {
		t.Errorf("renewed admin cert NotAfter %s", na)
	}
}

func TestEnsureReissuesBrokenLeaf(t *testing.T) {
	dir := t.TempDir()
	cfg := testConfig(dir, testStart)
	f := mustEnsure(t, cfg)
	if err := os.WriteFile(f.Scheduler.Cert, []byte("garbage"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(f.Admin.Key); err != nil {
		t.Fatal(err)
	}
	// A key from another pair: parses, but does not match the certificate.
	other, _ := os.ReadFile(f.AuthProxy.Key)
	if err := os.WriteFile(f.ControllerManager.Key, other, 0o600); err != nil {
		t.Fatal(err)
	}
	ageFiles(t, dir)
	before := takeSnapshot(t, dir)
	mustEnsure(t, cfg)
	want := []string{"client-admin.crt", "client-admin.key", "client-controller.crt", "client-controller.key",
		"client-scheduler.crt", "client-scheduler.key"}
	if c := changed(before, takeSnapshot(t, dir)); !slices.Equal(c, want) {
		t.Errorf("changed %q, want %q", c, want)
	}
}

func TestEnsureUserReplacedCA(t *testing.T) {
	dir := t.TempDir()
	cfg := testConfig(dir, testStart)
	f := mustEnsure(t, cfg)
	// The user replaces the server CA: both files are gone, so a new CA is
	// created and the serving cert it no longer verifies must be re-issued.
	os.Remove(f.ServerCA.Cert)
	os.Remove(f.ServerCA.Key)
	ageFiles(t, dir)
	before := takeSnapshot(t, dir)
	mustEnsure(t, cfg)
	want := []string{"server-ca.crt", "server-ca.key", "serving-kube-apiserver.crt", "serving-kube-apiserver.key"}
	if c := changed(before, takeSnapshot(t, dir)); !slices.Equal(c, want) {
		t.Errorf("changed %q, want %q", c, want)
	}
	ca, err := LoadCA(f.ServerCA.Cert, f.ServerCA.Key)
	if err != nil {
		t.Fatal(err)
	}
	if err := readCert(t, f.Serving.Cert).CheckSignatureFrom(ca.Cert); err != nil {
		t.Errorf("serving cert not signed by the new CA: %v", err)
	}
}

func TestEnsureMissingCAFile(t *testing.T) {
	for _, missing := range []string{"client-ca.key", "client-ca.crt"} {
		t.Run(missing, func(t *testing.T) {
			dir := t.TempDir()
			cfg := testConfig(dir, testStart)
			mustEnsure(t, cfg)
			path := filepath.Join(dir, missing)
			if err := os.Remove(path); err != nil {
				t.Fatal(err)
			}
			_, err := Ensure(cfg)
			if err == nil {
				t.Fatal("Ensure succeeded with half a CA")
			}
			if !strings.Contains(err.Error(), path) || !strings.Contains(err.Error(), "do not delete CA files") {
				t.Errorf("error %q should name %s and warn about deleting CA files", err, path)
			}
			if _, statErr := os.Stat(path); statErr == nil {
				t.Errorf("%s was recreated", path)
			}
		})
	}
}

func TestEnsureMismatchedCAKey(t *testing.T) {
	dir := t.TempDir()
	cfg := testConfig(dir, testStart)
	f := mustEnsure(t, cfg)
	other, _ := os.ReadFile(f.ClientCA.Key)
	if err := os.WriteFile(f.ServerCA.Key, other, 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := Ensure(cfg)
	if err == nil || !strings.Contains(err.Error(), "does not match") ||
		!strings.Contains(err.Error(), f.ServerCA.Key) || !strings.Contains(err.Error(), f.ServerCA.Cert) {
		t.Errorf("Ensure error = %v, want a key mismatch naming both files", err)
	}
}

func TestEnsureExpiredCA(t *testing.T) {
	dir := t.TempDir()
	f := mustEnsure(t, testConfig(dir, testStart))
	_, err := Ensure(testConfig(dir, testStart.Add(11*365*24*time.Hour)))
	if err == nil || !strings.Contains(err.Error(), "expired") || !strings.Contains(err.Error(), f.ServerCA.Cert) {
		t.Errorf("Ensure error = %v, want an expiry error naming %s", err, f.ServerCA.Cert)
	}
}

func TestEnsureUnwritableDir(t *testing.T) {
	file := filepath.Join(t.TempDir(), "not-a-dir")
	if err := os.WriteFile(file, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(file, "tls")
	_, err := Ensure(testConfig(dir, testStart))
	if err == nil || !strings.Contains(err.Error(), dir) {
		t.Errorf("Ensure error = %v, want one naming %s", err, dir)
	}
}

func TestEnsureTightensModes(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "tls")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	cfg := testConfig(dir, testStart)
	f := mustEnsure(t, cfg)
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(f.Admin.Key, 0o644); err != nil {
		t.Fatal(err)
	}
	mustEnsure(t, cfg)
	for path, want := range map[string]os.FileMode{dir: 0o700, f.Admin.Key: 0o600} {
		fi, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != want {
			t.Errorf("%s: mode %#o, want %#o", path, fi.Mode().Perm(), want)
		}
	}
}

func TestEnsureRequiresServiceIP(t *testing.T) {
	cfg := testConfig(t.TempDir(), testStart)
	cfg.ServiceIP = nil
	if _, err := Ensure(cfg); err == nil {
		t.Error("Ensure accepted a config without ServiceIP")
	}
}

func TestCASign(t *testing.T) {
	dir := t.TempDir()
	f := mustEnsure(t, testConfig(dir, testStart))
	ca, err := LoadCA(f.ServerCA.Cert, f.ServerCA.Key)
	if err != nil {
		t.Fatal(err)
	}
	onDisk, _ := os.ReadFile(f.ServerCA.Cert)
	if !bytes.Equal(ca.CertPEM, onDisk) {
		t.Error("CertPEM differs from the file on disk")
	}
	nodeKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	spec := LeafSpec{
		CommonName:   "system:node:worker-1",
		Organization: []string{"system:nodes"},
		DNSNames:     []string{"worker-1"},
		IPs:          []net.IP{net.ParseIP("192.168.1.20")},
		Client:       true,
		Server:       true,
	}
	now := testStart.Add(time.Hour)
	cert, certPEM, err := ca.Sign(spec, nodeKey.Public(), now)
	if err != nil {
		t.Fatal(err)
	}
	parsed, err := parseCertPEM(certPEM)
	if err != nil || !parsed.Equal(cert) {
		t.Fatalf("PEM does not hold the returned certificate (err %v)", err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(ca.Cert)
	for _, u := range []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth, x509.ExtKeyUsageServerAuth} {
		if _, err := cert.Verify(x509.VerifyOptions{Roots: pool, CurrentTime: now, DNSName: "worker-1", KeyUsages: []x509.ExtKeyUsage{u}}); err != nil {
			t.Errorf("verify for %v: %v", u, err)
		}
	}
	if _, _, err := ca.Sign(spec, nodeKey.Public(), testStart.Add(11*365*24*time.Hour)); err == nil {
		t.Error("Sign with an expired CA succeeded")
	}
	if _, _, err := ca.Sign(LeafSpec{Client: true}, nodeKey.Public(), now); err == nil {
		t.Error("Sign without a common name succeeded")
	}
}

func TestLoadCAOpenSSLStyleKey(t *testing.T) {
	// `openssl ecparam -genkey` puts an EC PARAMETERS block before the key.
	dir := t.TempDir()
	f := mustEnsure(t, testConfig(dir, testStart))
	keyPEM, _ := os.ReadFile(f.ServerCA.Key)
	params := pem.EncodeToMemory(&pem.Block{Type: "EC PARAMETERS", Bytes: []byte{0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07}})
	if err := os.WriteFile(f.ServerCA.Key, append(params, keyPEM...), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadCA(f.ServerCA.Cert, f.ServerCA.Key); err != nil {
		t.Fatal(err)
	}
}

// quietKlog drops klog output for the benchmark: every fresh Ensure logs a
// dozen lines, which would drown the results.
func quietKlog(b *testing.B) {
	klog.LogToStderr(false)
	klog.SetOutput(io.Discard)
	b.Cleanup(func() { klog.LogToStderr(true) })
}

func BenchmarkEnsureFresh(b *testing.B) {
	quietKlog(b)
	base := b.TempDir()
	cfg := testConfig("", testStart)
	i := 0
	for b.Loop() {
		cfg.Dir = filepath.Join(base, fmt.Sprint(i))
		i++
		if _, err := Ensure(cfg); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkEnsureNoop measures the common case: a restart with nothing to do.
func BenchmarkEnsureNoop(b *testing.B) {
	quietKlog(b)
	cfg := testConfig(filepath.Join(b.TempDir(), "tls"), testStart)
	if _, err := Ensure(cfg); err != nil {
		b.Fatal(err)
	}
	for b.Loop() {
		if _, err := Ensure(cfg); err != nil {
			b.Fatal(err)
		}
	}
}
