package launcher

import (
	"bytes"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/berth-io/berth/pkg/data"
	"github.com/berth-io/berth/pkg/data/payload"
	"github.com/berth-io/berth/pkg/data/store"
)

const testEnv = "BERTH_LAUNCHER_TEST"

// child is what the inner program reports.
type child struct {
	Args   []string
	Exe    string
	Foo    string
	Beside string
}

// TestMain lets the test binary play both parts of a release binary when
// testEnv is set: run from an unpacked payload (…/bin/ beside sha256sums)
// it is the inner program and reports how it was started; anywhere else it
// is the launcher.
func TestMain(m *testing.M) {
	if os.Getenv(testEnv) == "1" {
		exe, _ := os.Executable()
		if _, err := os.Stat(filepath.Join(filepath.Dir(filepath.Dir(exe)), payload.SumsName)); err != nil {
			Main()
		}
		beside, err := data.Beside()
		if err != nil {
			beside = "error: " + err.Error()
		}
		json.NewEncoder(os.Stdout).Encode(child{Args: os.Args, Exe: exe, Foo: os.Getenv("LAUNCHER_TEST_FOO"), Beside: beside})
		os.Exit(0)
	}
	os.Exit(m.Run())
}

func TestTrailer(t *testing.T) {
	var out bytes.Buffer
	tr, err := Write(&out, strings.NewReader("LAUNCHER"), strings.NewReader("PAYLOAD!!"), "berth-agent")
	if err != nil {
		t.Fatal(err)
	}
	if tr.Offset != 8 || tr.Size != 9 || tr.Exec != "berth-agent" {
		t.Fatalf("trailer %+v", tr)
	}
	b := out.Bytes()
	if len(b) != 8+9+TrailerSize {
		t.Fatalf("file is %d bytes", len(b))
	}
	got, err := ReadTrailer(bytes.NewReader(b), int64(len(b)))
	if err != nil || got != tr {
		t.Fatalf("ReadTrailer = %+v, %v; want %+v", got, err, tr)
	}

	// A truncated download, an extra byte, no trailer at all.
	cut := append(bytes.Clone(b[:5]), b[len(b)-TrailerSize:]...)
	if _, err := ReadTrailer(bytes.NewReader(cut), int64(len(cut))); err == nil || !strings.Contains(err.Error(), "truncated") {
		t.Errorf("truncated payload: %v", err)
	}
	if _, err := ReadTrailer(bytes.NewReader(b[:len(b)-1]), int64(len(b)-1)); err == nil {
		t.Error("a file missing its last byte was accepted")
	}
	if _, err := ReadTrailer(strings.NewReader("short"), 5); err == nil {
		t.Error("a short file was accepted")
	}
	for _, name := range []string{"", "../berth", "a/b", ".hidden", strings.Repeat("x", 65)} {
		if _, err := (Trailer{Offset: 1, Size: 1, Hash: tr.Hash, Exec: name}).MarshalBinary(); err == nil {
			t.Errorf("program name %q accepted", name)
		}
	}
}

func TestDataDir(t *testing.T) {
	dir := t.TempDir()
	cfg := filepath.Join(dir, "config.yaml")
	if err := os.WriteFile(cfg, []byte("data-dir: /from/file\ntoken: x\nnode-label:\n  - a=b\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(cfg+".d-missing", nil, 0o600); err != nil {
		t.Fatal(err)
	}
	dropCfg := filepath.Join(dir, "main.yaml")
	if err := os.WriteFile(dropCfg, []byte("data-dir: /from/main # comment\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(dropCfg+".d", 0o755); err != nil {
		t.Fatal(err)
	}
	for name, content := range map[string]string{
		"10-a.yaml": "token: x\ndata-dir: '/from a'\n",
		"20-b.yml":  "data-dir: \"/from drop-in\"  # the last one wins\n",
		"30-c.txt":  "data-dir: /not yaml\n",
		"15-d.yaml": "nested:\n  data-dir: /nested\n",
	} {
		if err := os.WriteFile(filepath.Join(dropCfg+".d", name), []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	bad := filepath.Join(dir, "bad.yaml")
	if err := os.WriteFile(bad, []byte("data-dir: [unclosed\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	const def = "/default"
	for _, tc := range []struct {
		name string
		argv []string
		env  []string
		want string
	}{
		{"no args", []string{"berth"}, nil, def},
		{"version", []string{"berth", "--version"}, nil, def},
		{"env", []string{"berth", "--version"}, []string{"BERTH_DATA_DIR=/env"}, "/env"},
		{"server -d", []string{"berth", "server", "-d", "/flag"}, []string{"BERTH_DATA_DIR=/env"}, "/flag"},
		{"server -dX", []string{"berth", "server", "-d/flag"}, nil, "/flag"},
		{"server --data-dir=", []string{"berth", "server", "--data-dir=/flag"}, nil, "/flag"},
		{"unknown flags around", []string{"berth", "server", "--token", "K10x", "--disable-agent", "--data-dir", "/flag", "--node-label", "a=b"}, nil, "/flag"},
		{"global -v first", []string{"berth", "-v", "2", "agent", "-d", "/flag"}, nil, "/flag"},
		{"server env", []string{"berth", "server"}, []string{"BERTH_DATA_DIR=/env"}, "/env"},
		{"server config file", []string{"berth", "server", "-c", cfg}, nil, "/from/file"},
		{"agent BERTH_CONFIG_FILE", []string{"berth", "agent"}, []string{"BERTH_CONFIG_FILE=" + cfg}, "/from/file"},
		{"env beats file", []string{"berth", "server", "--config=" + cfg}, []string{"BERTH_DATA_DIR=/env"}, "/env"},
		{"flag beats file", []string{"berth", "server", "--config", cfg, "-d", "/flag"}, nil, "/flag"},
		{"bad config file", []string{"berth", "server", "-c", bad}, []string{"BERTH_DATA_DIR=/env"}, "/env"},
		{"not a plain scalar", []string{"berth", "server", "-c", bad}, nil, def},
		{"quoted, commented, drop-in wins", []string{"berth", "agent", "-c", dropCfg}, nil, "/from drop-in"},
		{"missing config file", []string{"berth", "server", "-c", filepath.Join(dir, "none.yaml")}, nil, def},
		{"check-config takes -d, not files", []string{"berth", "check-config", "-d", "/flag"}, []string{"BERTH_CONFIG_FILE=" + cfg}, "/flag"},
		{"check-config ignores files", []string{"berth", "check-config"}, []string{"BERTH_CONFIG_FILE=" + cfg}, def},
		{"kubectl args are kubectl's", []string{"berth", "kubectl", "exec", "p", "--", "ls", "-d", "/tmp"}, nil, def},
		{"kubectl link", []string{"/usr/local/bin/kubectl", "server", "-d", "/tmp"}, nil, def},
		{"crictl link honours env", []string{"crictl", "ps"}, []string{"BERTH_DATA_DIR=/env"}, "/env"},
		{"after --", []string{"berth", "--", "server", "-d", "/flag"}, nil, def},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := DataDir(tc.argv[0], tc.argv[1:], tc.env, def); got != tc.want {
				t.Errorf("DataDir(%q, env %q) = %q, want %q", tc.argv, tc.env, got, tc.want)
			}
		})
	}
}

// release builds a release binary from this test binary (launcher and
// inner program at once, see TestMain) and returns its path and trailer.
func release(t *testing.T) (string, Trailer) {
	t.Helper()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	pl := t.TempDir()
	copyFile(t, self, filepath.Join(pl, "berth"))
	if err := os.WriteFile(filepath.Join(pl, "runc"), []byte("not really runc"), 0o755); err != nil {
		t.Fatal(err)
	}
	var compressed bytes.Buffer
	if err := payload.Write(&compressed, pl); err != nil {
		t.Fatal(err)
	}
	launcher, err := os.Open(self)
	if err != nil {
		t.Fatal(err)
	}
	defer launcher.Close()
	out := filepath.Join(t.TempDir(), "berth-release")
	f, err := os.OpenFile(out, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o755)
	if err != nil {
		t.Fatal(err)
	}
	tr, err := Write(f, launcher, &compressed, "berth")
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	return out, tr
}

func copyFile(t *testing.T, src, dst string) {
	t.Helper()
	b, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dst, b, 0o755); err != nil {
		t.Fatal(err)
	}
}

func run(t *testing.T, path string, args []string, dataDir string) (child, string, error) {
	t.Helper()
	cmd := exec.Command(path, args...)
	cmd.Env = append(os.Environ(), testEnv+"=1", "BERTH_DATA_DIR="+dataDir, "LAUNCHER_TEST_FOO=bar")
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	var c child
	if err == nil {
		if jerr := json.Unmarshal(stdout.Bytes(), &c); jerr != nil {
			t.Fatalf("inner program's output %q: %v", stdout.String(), jerr)
		}
	}
	return c, stderr.String(), err
}

func TestLaunch(t *testing.T) {
	rel, tr := release(t)
	dataDir := t.TempDir()
	// A kubectl link to the release binary: argv[0] must reach berth.
	link := filepath.Join(t.TempDir(), "kubectl")
	if err := os.Symlink(rel, link); err != nil {
		t.Fatal(err)
	}
	c, stderr, err := run(t, link, []string{"get", "pods", "-A"}, dataDir)
	if err != nil {
		t.Fatalf("first run: %v\n%s", err, stderr)
	}
	dir := filepath.Join(dataDir, "data", tr.Hash)
	bin := filepath.Join(dir, "bin")
	if want := []string{link, "get", "pods", "-A"}; strings.Join(c.Args, " ") != strings.Join(want, " ") {
		t.Errorf("inner argv %q, want %q", c.Args, want)
	}
	if c.Exe != filepath.Join(bin, "berth") {
		t.Errorf("inner program runs from %s, want %s/berth", c.Exe, bin)
	}
	if c.Foo != "bar" {
		t.Errorf("environment not passed on: LAUNCHER_TEST_FOO=%q", c.Foo)
	}
	if c.Beside != bin {
		t.Errorf("data.Beside() in the inner program = %q, want %s", c.Beside, bin)
	}
	if cur, _ := os.Readlink(filepath.Join(dataDir, "data", "current")); cur != tr.Hash {
		t.Errorf("current -> %q, want %s", cur, tr.Hash)
	}
	marker, err := os.Stat(filepath.Join(dir, store.MarkerName))
	if err != nil {
		t.Fatal(err)
	}

	// Second run: nothing unpacked again.
	if _, stderr, err := run(t, rel, []string{"--version"}, dataDir); err != nil {
		t.Fatalf("second run: %v\n%s", err, stderr)
	}
	again, err := os.Stat(filepath.Join(dir, store.MarkerName))
	if err != nil || !os.SameFile(marker, again) || !again.ModTime().Equal(marker.ModTime()) {
		t.Errorf("second run rewrote the install (%v)", err)
	}

	// A helper deleted by hand is restored.
	if err := os.Remove(filepath.Join(bin, "runc")); err != nil {
		t.Fatal(err)
	}
	if _, stderr, err := run(t, rel, nil, dataDir); err != nil {
		t.Fatalf("run after deleting runc: %v\n%s", err, stderr)
	}
	if _, err := os.Stat(filepath.Join(bin, "runc")); err != nil {
		t.Errorf("runc not restored: %v", err)
	}
}

func TestLaunchConcurrentFirstRuns(t *testing.T) {
	rel, tr := release(t)
	dataDir := t.TempDir()
	const n = 6
	var wg sync.WaitGroup
	errs := make([]error, n)
	outs := make([]string, n)
	for i := range n {
		wg.Go(func() { _, outs[i], errs[i] = run(t, rel, []string{"agent"}, dataDir) })
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Errorf("run %d: %v\n%s", i, err, outs[i])
		}
	}
	entries, err := os.ReadDir(filepath.Join(dataDir, "data"))
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	want := []string{store.LockName, tr.Hash, "current"}
	slices.Sort(names)
	slices.Sort(want)
	if !slices.Equal(names, want) {
		t.Errorf("data/ holds %q, want %q", names, want)
	}
}

func TestLaunchRefusesCorruptPayload(t *testing.T) {
	rel, tr := release(t)
	b, err := os.ReadFile(rel)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name   string
		mangle func([]byte) []byte
		want   string
	}{
		{"flipped byte", func(b []byte) []byte {
			b = bytes.Clone(b)
			b[tr.Offset+tr.Size/2] ^= 0x55
			return b
		}, "damaged"},
		{"truncated", func(b []byte) []byte {
			return append(bytes.Clone(b[:tr.Offset+tr.Size/2]), b[len(b)-TrailerSize:]...)
		}, "truncated or altered: the release binary is damaged"},
		{"no trailer", func(b []byte) []byte { return bytes.Clone(b[:tr.Offset]) }, "launcher without berth"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			bad := filepath.Join(t.TempDir(), "berth")
			if err := os.WriteFile(bad, tc.mangle(b), 0o755); err != nil {
				t.Fatal(err)
			}
			dataDir := t.TempDir()
			_, stderr, err := run(t, bad, []string{"--version"}, dataDir)
			var exit *exec.ExitError
			if !errors.As(err, &exit) || exit.ExitCode() != 1 {
				t.Fatalf("err = %v, want exit status 1\n%s", err, stderr)
			}
			if !strings.Contains(stderr, tc.want) {
				t.Errorf("stderr %q does not mention %q", stderr, tc.want)
			}
			t.Log(strings.TrimSpace(stderr))
			entries, _ := os.ReadDir(filepath.Join(dataDir, "data"))
			for _, e := range entries {
				if e.Name() != store.LockName {
					t.Errorf("left behind: data/%s", e.Name())
				}
			}
		})
	}
}

func TestLaunchUnwritableDataDir(t *testing.T) {
	rel, _ := release(t)
	file := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(file, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	_, stderr, err := run(t, rel, nil, filepath.Join(file, "sub"))
	if err == nil || !strings.Contains(stderr, "writable directory") {
		t.Fatalf("err %v, stderr %q: want a hint at --data-dir", err, stderr)
	}
	t.Log(strings.TrimSpace(stderr))
}

// TestUnpackReleaseBinary unpacks a real release binary (make release),
// named by BERTH_RELEASE_BINARY, the way the launcher does, and reports the
// time and this process's peak RSS (the decoder's memory plus the test
// binary's own). Any architecture's release binary works: only the payload
// is read.
//
//	BERTH_RELEASE_BINARY=dist/artifacts/berth-arm64 go test -run TestUnpackReleaseBinary -v ./pkg/launcher
func TestUnpackReleaseBinary(t *testing.T) {
	path := os.Getenv("BERTH_RELEASE_BINARY")
	if path == "" {
		t.Skip("BERTH_RELEASE_BINARY not set")
	}
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		t.Fatal(err)
	}
	tr, err := ReadTrailer(f, st.Size())
	if err != nil {
		t.Fatal(err)
	}
	var before syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &before)
	start := time.Now()
	exe, err := Unpack(f, tr, t.TempDir())
	took := time.Since(start)
	if err != nil {
		t.Fatal(err)
	}
	var after syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &after)
	files, err := store.Files(filepath.Dir(filepath.Dir(exe)))
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%s: payload %.2f MiB → %d files in %s; peak RSS %d MiB (%d MiB before unpacking)",
		path, float64(tr.Size)/(1<<20), len(files), took.Round(time.Millisecond), after.Maxrss>>10, before.Maxrss>>10)
}
