package integration

import (
	"bytes"
	"crypto/sha256"
	"database/sql"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	_ "github.com/mattn/go-sqlite3"

	"github.com/berth-io/berth/pkg/pki"
)

// Each case starts berth with one bad input and checks that it refuses,
// says what is wrong by name, and leaves the user's files as they were.
func TestBadInput(t *testing.T) {
	type tc struct {
		name  string
		setup func(t *testing.T, s *server) // may change s and its files
		want  []string                      // substrings of the output
		check func(t *testing.T, s *server) // after the run
	}
	cases := []tc{
		{
			name:  "unknown add-on to disable",
			setup: func(t *testing.T, s *server) { s.extra = []string{"--disable", "traefik"} },
			want:  []string{`--disable "traefik": not a packaged add-on`, "coredns, local-storage, metrics-server"},
		},
		{
			name:  "invalid cluster CIDR",
			setup: func(t *testing.T, s *server) { s.extra = []string{"--cluster-cidr", "10.42.0.0/33"} },
			want:  []string{"--cluster-cidr", `"10.42.0.0/33" is not a valid CIDR`},
		},
		{
			name: "overlapping cluster and service CIDRs",
			setup: func(t *testing.T, s *server) {
				s.extra = []string{"--cluster-cidr", "10.42.0.0/16", "--service-cidr", "10.42.128.0/20"}
			},
			want: []string{"--cluster-cidr 10.42.0.0/16 and --service-cidr 10.42.128.0/20 overlap"},
		},
		{
			name:  "bad value in config file",
			setup: func(t *testing.T, s *server) { s.configYAML = "cluster-dns: [a, b]\n" },
			want:  []string{"config.yaml", `key "cluster-dns"`},
		},
		{
			name:  "unknown pass-through apiserver flag",
			setup: func(t *testing.T, s *server) { s.extra = []string{"--kube-apiserver-arg", "no-such-flag=1"} },
			want:  []string{"kube-apiserver arguments", "no-such-flag"},
		},
		{
			name: "public port in use",
			setup: func(t *testing.T, s *server) {
				l := listen(t, s.httpsPort)
				t.Cleanup(func() { l.Close() })
			},
			want: func() []string { return nil }(),
		},
		{
			name: "apiserver port in use",
			setup: func(t *testing.T, s *server) {
				l := listen(t, s.apiPort)
				t.Cleanup(func() { l.Close() })
			},
		},
		{
			name: "data dir not writable",
			setup: func(t *testing.T, s *server) {
				if os.Geteuid() != 0 {
					t.Skip("needs root to mount a read-only file system")
				}
				if err := os.MkdirAll(s.dataDir, 0o700); err != nil {
					t.Fatal(err)
				}
				if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", s.dataDir).CombinedOutput(); err != nil {
					t.Fatalf("mount: %v %s", err, out)
				}
				t.Cleanup(func() { _ = exec.Command("umount", s.dataDir).Run() })
			},
			want: []string{"data dir", "data/server", "read-only file system"},
		},
		{
			name: "database file that is not SQLite",
			setup: func(t *testing.T, s *server) {
				writeFile(t, filepath.Join(s.dataDir, "server", "db", "state.db"), bytes.Repeat([]byte("not a database\n"), 1000))
			},
			want: []string{"state.db is unusable", "not an SQLite database", "has not changed the file"},
		},
		{
			name: "corrupt SQLite database",
			setup: func(t *testing.T, s *server) {
				corruptDatabase(t, filepath.Join(s.dataDir, "server", "db", "state.db"))
			},
			want: []string{"state.db is unusable", "has not changed the file"},
		},
		{
			name: "token file for another cluster CA",
			setup: func(t *testing.T, s *server) {
				makeCA(t, s)
				other := fmt.Sprintf("K10%x::server:secret", sha256.Sum256([]byte("another CA")))
				tf := filepath.Join(filepath.Dir(s.dataDir), "token")
				writeFile(t, tf, []byte(other+"\n"))
				s.extra = []string{"--token-file", tf}
			},
			want: []string{"different cluster CA", "server-ca.crt"},
		},
		{
			name: "stored token whose CA hash does not match",
			setup: func(t *testing.T, s *server) {
				makeCA(t, s)
				writeFile(t, filepath.Join(s.dataDir, "server", "token"),
					[]byte(fmt.Sprintf("K10%x::server:secret\n", sha256.Sum256([]byte("x")))))
			},
			want: []string{"does not match the cluster CA", "refusing to overwrite"},
		},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			s := newServer(t)
			c.setup(t, s)
			if c.want == nil { // port cases: the message names the port
				port := s.httpsPort
				if strings.HasPrefix(c.name, "apiserver") {
					port = s.apiPort
				}
				c.want = []string{fmt.Sprintf("port %d", port), "not available"}
			}
			if err := os.WriteFile(s.configPath(), []byte(s.configYAML), 0o600); err != nil {
				t.Fatal(err)
			}
			before := snapshotFiles(t, filepath.Join(s.dataDir, "server", "db"))
			code, out := runBerth(t, 60*time.Second, s.args()...)
			if code == 0 {
				t.Fatalf("berth exited 0, want a refusal:\n%s", tail(out, 20))
			}
			for _, w := range c.want {
				if !strings.Contains(out, w) {
					t.Errorf("output lacks %q:\n%s", w, tail(out, 15))
				}
			}
			if after := snapshotFiles(t, filepath.Join(s.dataDir, "server", "db")); !equalMaps(before, after) {
				t.Errorf("database files changed: before %v after %v", keys(before), keys(after))
			}
		})
	}
}

func listen(t *testing.T, port int) net.Listener {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(port))
	if err != nil {
		t.Fatal(err)
	}
	return l
}

func writeFile(t *testing.T, path string, data []byte) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
}

// makeCA creates the server's PKI with berth's own code, as a first start would.
func makeCA(t *testing.T, s *server) {
	t.Helper()
	if _, err := pki.Ensure(pki.Config{
		Dir: filepath.Join(s.dataDir, "server", "tls"), ClusterDomain: "cluster.local",
		ServiceIP: net.ParseIP("10.43.0.1"),
	}); err != nil {
		t.Fatal(err)
	}
}

// corruptDatabase writes a real SQLite database, then overwrites pages in
// its middle, as a failing SD card would.
func corruptDatabase(t *testing.T, path string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		t.Fatal(err)
	}
	db, err := sql.Open("sqlite3", path)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := db.Exec(`CREATE TABLE kv (k INTEGER PRIMARY KEY, v BLOB); CREATE INDEX kv_v ON kv (v)`); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 500; i++ {
		if _, err := db.Exec(`INSERT INTO kv (v) VALUES (?)`, bytes.Repeat([]byte{byte(i)}, 700)); err != nil {
			t.Fatal(err)
		}
	}
	db.Close()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	fi, _ := f.Stat()
	if fi.Size() < 40*4096 {
		t.Fatalf("test database only %d bytes", fi.Size())
	}
	if _, err := f.WriteAt(bytes.Repeat([]byte{0xA5}, 8*4096), 20*4096); err != nil {
		t.Fatal(err)
	}
}

// snapshotFiles maps each file under dir to its content hash.
func snapshotFiles(t *testing.T, dir string) map[string]string {
	t.Helper()
	out := map[string]string{}
	_ = filepath.Walk(dir, func(p string, fi os.FileInfo, err error) error {
		if err != nil || fi.IsDir() {
			return nil
		}
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		out[p] = fmt.Sprintf("%x", sha256.Sum256(b))
		return nil
	})
	return out
}

func equalMaps(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}

func keys(m map[string]string) []string {
	var out []string
	for k := range m {
		out = append(out, filepath.Base(k))
	}
	return out
}
