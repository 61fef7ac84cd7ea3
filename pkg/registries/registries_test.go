package registries

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"io"
	"log"
	"math/big"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/core/remotes/docker"
	"github.com/containerd/containerd/v2/core/remotes/docker/config"
	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	toml "github.com/pelletier/go-toml/v2"

	"github.com/berth-io/berth/pkg/containerd"
)

// writeCA writes a self-signed CA certificate and returns its path.
func writeCA(t *testing.T, dir string) string {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test-ca"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(dir, "ca.crt")
	if err := os.WriteFile(p, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestParseBadInput(t *testing.T) {
	dir := t.TempDir()
	ca := writeCA(t, dir)
	notPEM := filepath.Join(dir, "not.pem")
	os.WriteFile(notPEM, []byte("hello"), 0o644)
	for _, tc := range []struct{ name, yaml, want string }{
		{"top-level typo", "mirors:\n  docker.io:\n    endpoint: [https://m]\n", `unknown key mirors (known keys: configs, mirrors)`},
		{"mirror typo", "mirrors:\n  docker.io:\n    endpoints: [https://m]\n", `unknown key mirrors."docker.io".endpoints (known keys in mirrors."docker.io": endpoint, rewrite)`},
		{"tls typo", "configs:\n  m:5000:\n    tls:\n      ca: /x\n", `unknown key configs."m:5000".tls.ca (known keys in configs."m:5000".tls: ca_file, cert_file, insecure_skip_verify, key_file)`},
		{"endpoint not a list", "mirrors:\n  docker.io:\n    endpoint: https://m\n", "wrong type of value"},
		{"mirror not a map", "mirrors:\n  docker.io: https://m\n", `mirrors."docker.io": want a map of keys, got a string`},
		{"bad endpoint", "mirrors:\n  docker.io:\n    endpoint: [\"ftp://m\"]\n", `mirrors."docker.io".endpoint[0]: "ftp://m" is not an endpoint URL`},
		{"bad rewrite", "mirrors:\n  docker.io:\n    endpoint: [https://m]\n    rewrite:\n      \"^(lib\": x\n", `mirrors."docker.io".rewrite "^(lib": not a regular expression`},
		{"host with scheme", "configs:\n  https://m:\n    tls: {insecure_skip_verify: true}\n", `is not a registry host`},
		{"missing ca", "configs:\n  m:\n    tls:\n      ca_file: " + dir + "/nope.crt\n", `configs.m.tls: ca_file: open ` + dir + `/nope.crt: no such file or directory`},
		{"unreadable ca", "configs:\n  m:\n    tls:\n      ca_file: " + dir + "\n", `configs.m.tls: ca_file: read ` + dir + `: is a directory`},
		{"ca not pem", "configs:\n  m:\n    tls:\n      ca_file: " + notPEM + "\n", `ca_file ` + notPEM + `: no PEM certificate in it`},
		{"cert without key", "configs:\n  m:\n    tls:\n      ca_file: " + ca + "\n      cert_file: " + ca + "\n", "cert_file and key_file go together"},
		{"bad auth", "configs:\n  m:\n    auth:\n      auth: nope\n", `configs.m.auth.auth: want base64 of "user:password"`},
		{"not yaml", "mirrors: [\n", "not valid YAML"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse([]byte(tc.yaml))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Parse error %v, want it to contain %q", err, tc.want)
			}
		})
	}
	// Load names the file.
	p := filepath.Join(dir, "registries.yaml")
	os.WriteFile(p, []byte("mirors: {}\n"), 0o600)
	if _, err := Load(p); err == nil || !strings.HasPrefix(err.Error(), p+": ") {
		t.Errorf("Load error %v does not start with the file name", err)
	}
	if r, err := Load(filepath.Join(dir, "absent.yaml")); err != nil || len(r.Mirrors)+len(r.Configs) != 0 {
		t.Errorf("missing file: %v %+v, want empty configuration", err, r)
	}
}

// TestRenderedHostsAsContainerdReadsThem renders a configuration and has
// containerd's own hosts.toml loader resolve registries from it.
func TestRenderedHostsAsContainerdReadsThem(t *testing.T) {
	dir := t.TempDir()
	ca := writeCA(t, dir)
	reg, err := Parse([]byte(`
mirrors:
  docker.io:
    endpoint:
      - "https://mirror.example:5000"
      - "mirror2.example/prefix"
      - "http://plain.example:8080"
    rewrite:
      "^library/(.*)": "mirrored/$1"
  "*":
    endpoint: ["https://everything.example"]
configs:
  "mirror.example:5000":
    auth: {username: bob, password: "pa\"ss\\w\tord"}
    tls: {ca_file: ` + ca + `}
  "private.example":
    tls: {insecure_skip_verify: true}
`))
	if err != nil {
		t.Fatal(err)
	}
	// Pretend the first docker.io endpoint has a rewrite proxy.
	out, err := reg.Render(map[string]string{ProxyKey("docker.io", 0): "http://127.0.0.1:40001"})
	if err != nil {
		t.Fatal(err)
	}
	certs := filepath.Join(dir, "certs.d")
	if err := writeHosts(certs, out.Hosts); err != nil {
		t.Fatal(err)
	}
	resolve := config.ConfigureHosts(context.Background(), config.HostOptions{HostDir: config.HostDirFromRoot(certs)})

	type want struct{ scheme, host, path string }
	check := func(registry string, wants []want) []docker.RegistryHost {
		t.Helper()
		hosts, err := resolve(registry)
		if err != nil {
			t.Fatalf("containerd resolving %s: %v", registry, err)
		}
		var got []want
		for _, h := range hosts {
			got = append(got, want{h.Scheme, h.Host, h.Path})
		}
		if len(got) != len(wants) {
			t.Fatalf("%s: containerd's hosts %v, want %v", registry, got, wants)
		}
		for i := range wants {
			if got[i] != wants[i] {
				t.Errorf("%s: host %d is %v, want %v", registry, i, got[i], wants[i])
			}
		}
		return hosts
	}
	hosts := check("docker.io", []want{
		{"http", "127.0.0.1:40001", "/v2"},
		{"https", "mirror2.example", "/prefix/v2"},
		{"http", "plain.example:8080", "/v2"},
		{"https", "registry-1.docker.io", "/v2"},
	})
	if hosts[0].Capabilities.Has(docker.HostCapabilityPush) || !hosts[0].Capabilities.Has(docker.HostCapabilityPull) {
		t.Errorf("mirror capabilities %v, want pull and resolve only", hosts[0].Capabilities)
	}
	check("quay.io", []want{{"https", "everything.example", "/v2"}, {"https", "quay.io", "/v2"}})
	check("private.example", []want{{"https", "private.example", "/v2"}})
	mh := check("mirror.example:5000", []want{{"https", "mirror.example:5000", "/v2"}})
	tr, ok := mh[0].Client.Transport.(*http.Transport)
	if !ok || tr.TLSClientConfig == nil || tr.TLSClientConfig.RootCAs == nil {
		t.Errorf("mirror.example:5000: containerd did not load ca_file %s", ca)
	}

	// Credentials go to the endpoint's host and to its proxy's address.
	for _, h := range []string{"mirror.example:5000", "127.0.0.1:40001"} {
		if a := out.Auth[h]; a.Username != "bob" {
			t.Errorf("auth for %s = %+v, want bob's", h, a)
		}
	}
	// containerd's config.toml carries them, and TOML reads the password
	// back exactly.
	text, err := containerd.Render(&containerd.Config{DataDir: dir, StateDir: dir, RegistryAuth: out.Auth})
	if err != nil {
		t.Fatal(err)
	}
	var doc struct {
		Plugins map[string]struct {
			Registry struct {
				ConfigPath string `toml:"config_path"`
				Configs    map[string]struct {
					Auth struct{ Username, Password string } `toml:"auth"`
				} `toml:"configs"`
			} `toml:"registry"`
		} `toml:"plugins"`
	}
	if err := toml.Unmarshal(text, &doc); err != nil {
		t.Fatalf("containerd config is not TOML: %v\n%s", err, text)
	}
	got := doc.Plugins["io.containerd.cri.v1.images"].Registry.Configs["mirror.example:5000"].Auth
	if got.Username != "bob" || got.Password != "pa\"ss\\w\tord" {
		t.Errorf("config.toml auth for mirror.example:5000 = %+v", got)
	}
}

// TestRewriteProxy pulls through the proxy from a real registry (go-
// containerregistry's) that holds the image only under the rewritten
// name, over TLS with a private CA and basic auth.
func TestRewriteProxy(t *testing.T) {
	const user, pass = "puller", "s3cret"
	regHandler := registry.New(registry.Logger(log.New(io.Discard, "", 0)))
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if u, p, ok := r.BasicAuth(); !ok || u != user || p != pass {
			w.Header().Set("WWW-Authenticate", `Basic realm="test"`)
			http.Error(w, "unauthorized", http.StatusUnauthorized)
			return
		}
		regHandler.ServeHTTP(w, r)
	}))
	defer srv.Close()
	dir := t.TempDir()
	ca := filepath.Join(dir, "ca.crt")
	os.WriteFile(ca, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw}), 0o644)
	host := strings.TrimPrefix(srv.URL, "https://")
	auth := remote.WithAuth(&authn.Basic{Username: user, Password: pass})

	img, err := random.Image(512, 2)
	if err != nil {
		t.Fatal(err)
	}
	upstreamRef, _ := name.ParseReference(host + "/mirrored/hello:1")
	if err := remote.Write(upstreamRef, img, auth, remote.WithTransport(srv.Client().Transport)); err != nil {
		t.Fatal(err)
	}
	want, _ := img.Digest()

	p, err := NewRewriteProxy(srv.URL, map[string]string{`^library/(.*)`: "mirrored/$1", `^other/.*`: "nowhere"}, &TLSConfig{CAFile: ca})
	if err != nil {
		t.Fatal(err)
	}
	front := httptest.NewServer(p)
	defer front.Close()
	ref, _ := name.ParseReference(strings.TrimPrefix(front.URL, "http://")+"/library/hello:1", name.Insecure)
	got, err := remote.Image(ref, auth)
	if err != nil {
		t.Fatalf("pull %s through the rewrite proxy: %v", ref, err)
	}
	d, err := got.Digest()
	if err != nil || d != want {
		t.Fatalf("digest through proxy %v (%v), want %v", d, err, want)
	}
	if _, err := got.RawConfigFile(); err != nil {
		t.Errorf("blob through proxy: %v", err)
	}
	// Without credentials the registry's challenge reaches the client.
	if _, err := remote.Image(ref); err == nil || !strings.Contains(err.Error(), "401") && !strings.Contains(strings.ToLower(err.Error()), "unauthorized") {
		t.Errorf("pull without credentials: %v, want the registry's 401", err)
	}
	// A name no rule matches passes through unchanged (and is not there).
	ref2, _ := name.ParseReference(strings.TrimPrefix(front.URL, "http://")+"/mirrored/hello:1", name.Insecure)
	if _, err := remote.Image(ref2, auth); err != nil {
		t.Errorf("pull of an unrewritten name: %v", err)
	}
	// Pushing through a mirror is refused.
	req, _ := http.NewRequest(http.MethodPost, front.URL+"/v2/library/hello/blobs/uploads/", nil)
	if resp, err := http.DefaultClient.Do(req); err != nil || resp.StatusCode != http.StatusMethodNotAllowed {
		t.Errorf("POST through the proxy: %v %v, want 405", resp, err)
	}
}

// TestComponentKeepsLastGood: a broken edit leaves containerd's hosts
// files and credentials as they were; removing the file removes berth's
// hosts files but not the user's own.
func TestComponentKeepsLastGood(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "registries.yaml")
	ctrd := &containerd.Config{DataDir: dir, StateDir: dir}
	c := &Component{File: file, Containerd: ctrd}
	good := "mirrors:\n  docker.io:\n    endpoint: [\"https://m.example\"]\nconfigs:\n  m.example:\n    auth: {username: u, password: p}\n"
	os.WriteFile(file, []byte(good), 0o600)
	if err := c.Prepare(context.Background()); err != nil {
		t.Fatal(err)
	}
	hostsFile := filepath.Join(ctrd.CertsDir(), "docker.io", "hosts.toml")
	before, err := os.ReadFile(hostsFile)
	if err != nil || !strings.Contains(string(before), "https://m.example") {
		t.Fatalf("hosts.toml: %v\n%s", err, before)
	}
	if fi, err := os.Stat(c.LastGoodPath()); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("last good copy: %v %v", fi, err)
	}
	userDir := filepath.Join(ctrd.CertsDir(), "mine.example")
	os.MkdirAll(userDir, 0o700)
	os.WriteFile(filepath.Join(userDir, "hosts.toml"), []byte("server = \"https://mine.example\"\n"), 0o600)

	for _, bad := range []string{
		"mirrors:\n  docker.io:\n    endpoints: [\"https://other\"]\n",
		"configs:\n  m.example:\n    tls: {ca_file: " + dir + "/gone.crt}\n",
	} {
		os.WriteFile(file, []byte(bad), 0o600)
		c2 := &Component{File: file, Containerd: &containerd.Config{DataDir: dir, StateDir: dir}}
		if err := c2.Prepare(context.Background()); err != nil {
			t.Fatalf("a bad file must not stop the node: %v", err)
		}
		after, _ := os.ReadFile(hostsFile)
		if string(after) != string(before) {
			t.Errorf("hosts.toml changed after a bad edit:\n%s", after)
		}
		if a := c2.Containerd.RegistryAuth["m.example"]; a.Username != "u" {
			t.Errorf("credentials after a bad edit: %+v, want the last good ones", c2.Containerd.RegistryAuth)
		}
		if b, _ := os.ReadFile(c.LastGoodPath()); string(b) != good {
			t.Errorf("last good copy overwritten by a bad file:\n%s", b)
		}
	}

	os.Remove(file)
	c3 := &Component{File: file, Containerd: &containerd.Config{DataDir: dir, StateDir: dir}}
	if err := c3.Prepare(context.Background()); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Dir(hostsFile)); !os.IsNotExist(err) {
		t.Errorf("berth's hosts dir kept after registries.yaml was removed: %v", err)
	}
	if _, err := os.Stat(filepath.Join(userDir, "hosts.toml")); err != nil {
		t.Errorf("the user's own hosts dir was removed: %v", err)
	}
	if len(c3.Containerd.RegistryAuth) != 0 {
		t.Errorf("credentials kept after the file was removed: %v", c3.Containerd.RegistryAuth)
	}
}
