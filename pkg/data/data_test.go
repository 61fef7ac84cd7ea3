package data

import (
	"archive/tar"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/klauspost/compress/zstd"

	"github.com/berth-io/berth/pkg/data/payload"
	"github.com/berth-io/berth/pkg/data/store"
)

// makePayload packs files (name → content) with payload.Write, as the build
// does, and returns a source for it that counts how often it is opened.
func makePayload(t *testing.T, files map[string]string) (store.Source, []byte, *atomic.Int32) {
	t.Helper()
	dir := t.TempDir()
	for name, content := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	var buf bytes.Buffer
	if err := payload.Write(&buf, dir); err != nil {
		t.Fatalf("payload.Write: %v", err)
	}
	return sourceOf(buf.Bytes())
}

func sourceOf(b []byte) (store.Source, []byte, *atomic.Int32) {
	sum := sha256.Sum256(b)
	opens := new(atomic.Int32)
	return store.Source{
		Hash: hex.EncodeToString(sum[:]),
		Open: func() (io.ReadCloser, error) {
			opens.Add(1)
			return io.NopCloser(bytes.NewReader(b)), nil
		},
	}, b, opens
}

// rawPayload builds a tar.zst by hand, for payloads payload.Write would
// never produce.
func rawPayload(t *testing.T, entries []tar.Header, contents []string) []byte {
	t.Helper()
	var buf bytes.Buffer
	zw, err := zstd.NewWriter(&buf)
	if err != nil {
		t.Fatal(err)
	}
	tw := tar.NewWriter(zw)
	for i, h := range entries {
		h.Size = int64(len(contents[i]))
		if h.Typeflag == 0 {
			h.Typeflag = tar.TypeReg
		}
		h.Mode = 0o755
		if err := tw.WriteHeader(&h); err != nil {
			t.Fatal(err)
		}
		if _, err := tw.Write([]byte(contents[i])); err != nil {
			t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func sumOf(s string) string {
	h := sha256.Sum256([]byte(s))
	return hex.EncodeToString(h[:])
}

var helpers = map[string]string{
	"runc":       "#!/bin/sh\necho runc\n",
	"containerd": strings.Repeat("containerd ", 1000),
	"bridge":     "bridge plugin",
}

func TestExtractUnpacksAndVerifies(t *testing.T) {
	src, _, opens := makePayload(t, helpers)
	dataDir := t.TempDir()

	binDir, err := extract(dataDir, src)
	if err != nil {
		t.Fatalf("extract: %v", err)
	}
	want := filepath.Join(dataDir, "data", src.Hash, "bin")
	if binDir != want {
		t.Fatalf("binDir = %s, want %s", binDir, want)
	}
	for name, content := range helpers {
		p := filepath.Join(binDir, name)
		b, err := os.ReadFile(p)
		if err != nil || string(b) != content {
			t.Errorf("%s: content %q, err %v", name, b, err)
		}
		st, _ := os.Stat(p)
		if st.Mode().Perm() != 0o755 {
			t.Errorf("%s: mode %v, want 0755", name, st.Mode().Perm())
		}
	}
	if target, _ := os.Readlink(filepath.Join(dataDir, "data", "current")); target != src.Hash {
		t.Errorf("current -> %q, want %q", target, src.Hash)
	}
	if _, err := os.Lstat(filepath.Join(dataDir, "data", "previous")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("previous exists after a first install: %v", err)
	}
	if _, err := os.Stat(filepath.Join(dataDir, "data", src.Hash+"-tmp")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("temporary directory left behind: %v", err)
	}

	// Fast path: complete directory, current in place → payload not opened.
	before := opens.Load()
	if again, err := extract(dataDir, src); err != nil || again != binDir {
		t.Fatalf("second extract = %s, %v", again, err)
	}
	if opens.Load() != before {
		t.Error("second extract opened the payload; want the fast path")
	}
}

func TestExtractRedoesIncompleteInstall(t *testing.T) {
	src, _, opens := makePayload(t, helpers)
	dataDir := t.TempDir()
	binDir, err := extract(dataDir, src)
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Dir(binDir)

	for _, damage := range []struct {
		name string
		do   func() error
	}{
		{"marker missing", func() error { return os.Remove(filepath.Join(dir, store.MarkerName)) }},
		{"binary deleted", func() error { return os.Remove(filepath.Join(binDir, "runc")) }},
		{"leftover tmp dir", func() error {
			if err := os.Remove(filepath.Join(dir, store.MarkerName)); err != nil {
				return err
			}
			return os.MkdirAll(filepath.Join(dir+"-tmp", "bin", "junk"), 0o755)
		}},
	} {
		if err := damage.do(); err != nil {
			t.Fatal(err)
		}
		before := opens.Load()
		if _, err := extract(dataDir, src); err != nil {
			t.Fatalf("%s: extract: %v", damage.name, err)
		}
		if opens.Load() == before {
			t.Errorf("%s: payload not unpacked again", damage.name)
		}
		if b, err := os.ReadFile(filepath.Join(binDir, "runc")); err != nil || string(b) != helpers["runc"] {
			t.Errorf("%s: runc after reinstall: %q, %v", damage.name, b, err)
		}
		if _, err := os.Stat(dir + "-tmp"); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("%s: tmp dir still there", damage.name)
		}
	}
}

func TestExtractUpgradeKeepsPrevious(t *testing.T) {
	oldSrc, _, _ := makePayload(t, helpers)
	newSrc, _, _ := makePayload(t, map[string]string{"runc": "runc v2", "containerd": "containerd v2"})
	dataDir := t.TempDir()
	root := filepath.Join(dataDir, "data")

	if _, err := extract(dataDir, oldSrc); err != nil {
		t.Fatal(err)
	}
	if _, err := extract(dataDir, newSrc); err != nil {
		t.Fatal(err)
	}
	cur, _ := os.Readlink(filepath.Join(root, "current"))
	prev, _ := os.Readlink(filepath.Join(root, "previous"))
	if cur != newSrc.Hash || prev != oldSrc.Hash {
		t.Fatalf("after upgrade current -> %s, previous -> %s; want %s, %s", cur, prev, newSrc.Hash, oldSrc.Hash)
	}
	// Going back to the old binary reuses its complete directory.
	if bin, err := extract(dataDir, oldSrc); err != nil || bin != filepath.Join(root, oldSrc.Hash, "bin") {
		t.Fatalf("downgrade: %s, %v", bin, err)
	}
	cur, _ = os.Readlink(filepath.Join(root, "current"))
	prev, _ = os.Readlink(filepath.Join(root, "previous"))
	if cur != oldSrc.Hash || prev != newSrc.Hash {
		t.Fatalf("after downgrade current -> %s, previous -> %s", cur, prev)
	}
}

func TestExtractConcurrent(t *testing.T) {
	src, _, opens := makePayload(t, helpers)
	dataDir := t.TempDir()

	const n = 4
	var wg sync.WaitGroup
	dirs := make([]string, n)
	errs := make([]error, n)
	for i := range n {
		wg.Go(func() { dirs[i], errs[i] = extract(dataDir, src) })
	}
	wg.Wait()
	for i := range n {
		if errs[i] != nil {
			t.Fatalf("extract %d: %v", i, errs[i])
		}
		if dirs[i] != dirs[0] {
			t.Fatalf("extract %d returned %s, extract 0 %s", i, dirs[i], dirs[0])
		}
	}
	// The flock serialises them: exactly one unpacks, the rest find it done.
	if got := opens.Load(); got != 1 {
		t.Errorf("payload unpacked %d times, want 1", got)
	}
	if b, err := os.ReadFile(filepath.Join(dirs[0], "containerd")); err != nil || string(b) != helpers["containerd"] {
		t.Errorf("containerd: %v", err)
	}
}

// assertNothingInstalled checks a failed extract left no directory and no
// current link behind.
func assertNothingInstalled(t *testing.T, dataDir string) {
	t.Helper()
	entries, err := os.ReadDir(filepath.Join(dataDir, "data"))
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if e.Name() != store.LockName {
			t.Errorf("left behind after a failed extract: data/%s", e.Name())
		}
	}
}

func TestExtractCorruptPayload(t *testing.T) {
	_, good, _ := makePayload(t, helpers)

	flipped := bytes.Clone(good)
	flipped[len(flipped)/2] ^= 0xff
	srcFlipped, _, _ := sourceOf(flipped)
	// The build recorded the good payload's sum, then the bytes changed.
	srcFlipped.Hash = sumOf(string(good))

	srcTruncated, _, _ := sourceOf(good[:len(good)/2])

	wrongSum := rawPayload(t,
		[]tar.Header{{Name: "bin/runc"}, {Name: "bin/containerd"}, {Name: payload.SumsName}},
		[]string{"runc", "tampered", fmt.Sprintf("%s  bin/runc\n%s  bin/containerd\n", sumOf("runc"), sumOf("containerd"))})
	srcWrongSum, _, _ := sourceOf(wrongSum)

	unlisted := rawPayload(t,
		[]tar.Header{{Name: "bin/runc"}, {Name: "bin/extra"}, {Name: payload.SumsName}},
		[]string{"runc", "extra", sumOf("runc") + "  bin/runc\n"})
	srcUnlisted, _, _ := sourceOf(unlisted)

	missing := rawPayload(t,
		[]tar.Header{{Name: "bin/runc"}, {Name: payload.SumsName}},
		[]string{"runc", sumOf("runc") + "  bin/runc\n" + sumOf("x") + "  bin/crictl\n"})
	srcMissing, _, _ := sourceOf(missing)

	noSums := rawPayload(t, []tar.Header{{Name: "bin/runc"}}, []string{"runc"})
	srcNoSums, _, _ := sourceOf(noSums)

	escape := rawPayload(t,
		[]tar.Header{{Name: "bin/../../evil"}, {Name: payload.SumsName}},
		[]string{"x", sumOf("x") + "  bin/../../evil\n"})
	srcEscape, _, _ := sourceOf(escape)

	link := rawPayload(t,
		[]tar.Header{{Name: "bin/runc", Typeflag: tar.TypeSymlink, Linkname: "/bin/sh"}},
		[]string{""})
	srcLink, _, _ := sourceOf(link)

	for _, tc := range []struct {
		name string
		src  store.Source
		want string
	}{
		{"flipped byte", srcFlipped, ""}, // zstd or the payload sha256 catches it
		{"truncated", srcTruncated, "reading payload"},
		{"file does not match its sum", srcWrongSum, "payload entry bin/containerd: sha256"},
		{"file not in sums", srcUnlisted, "bin/extra is not listed"},
		{"listed file missing", srcMissing, "lists bin/crictl but the payload has no such entry"},
		{"no sums", srcNoSums, "no sha256sums entry"},
		{"path escape", srcEscape, `"bin/../../evil" is not`},
		{"symlink", srcLink, "not a regular file"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dataDir := t.TempDir()
			_, err := extract(dataDir, tc.src)
			if err == nil {
				t.Fatal("extract succeeded on a corrupt payload")
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %q does not mention %q", err, tc.want)
			}
			t.Log(err)
			assertNothingInstalled(t, dataDir)
		})
	}
}

func TestExtractWrongPayloadHash(t *testing.T) {
	src, _, _ := makePayload(t, helpers)
	src.Hash = sumOf("something else")
	dataDir := t.TempDir()
	_, err := extract(dataDir, src)
	if err == nil || !strings.Contains(err.Error(), "but was built as "+src.Hash) {
		t.Fatalf("err = %v, want a payload checksum mismatch", err)
	}
	assertNothingInstalled(t, dataDir)
}

func TestExtractFailureKeepsCurrent(t *testing.T) {
	good, _, _ := makePayload(t, helpers)
	dataDir := t.TempDir()
	if _, err := extract(dataDir, good); err != nil {
		t.Fatal(err)
	}
	bad, _, _ := sourceOf([]byte("not zstd at all"))
	if _, err := extract(dataDir, bad); err == nil {
		t.Fatal("extract of garbage succeeded")
	}
	if cur, _ := os.Readlink(filepath.Join(dataDir, "data", "current")); cur != good.Hash {
		t.Errorf("current -> %s after a failed upgrade, want the old %s", cur, good.Hash)
	}
	if _, err := os.Stat(filepath.Join(dataDir, "data", bad.Hash)); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("failed payload's directory exists: %v", err)
	}
}

func TestExtractNoPayload(t *testing.T) {
	_, err := extract(t.TempDir(), store.Source{})
	if !errors.Is(err, ErrNoPayload) {
		t.Fatalf("err = %v, want ErrNoPayload", err)
	}
	if !strings.Contains(err.Error(), "build with make build") {
		t.Errorf("error %q does not say how to fix it", err)
	}
}

func TestPayloadIsReproducible(t *testing.T) {
	_, a, _ := makePayload(t, helpers)
	_, b, _ := makePayload(t, helpers)
	if !bytes.Equal(a, b) {
		t.Fatal("the same files gave two different payloads")
	}
	zr, err := zstd.NewReader(bytes.NewReader(a))
	if err != nil {
		t.Fatal(err)
	}
	defer zr.Close()
	tr := tar.NewReader(zr)
	var names []string
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if h.ModTime.Unix() != 0 || h.Uid != 0 || h.Gid != 0 || h.Uname != "" {
			t.Errorf("%s: mtime %v uid %d gid %d uname %q", h.Name, h.ModTime, h.Uid, h.Gid, h.Uname)
		}
		names = append(names, h.Name)
	}
	want := "bin/bridge bin/containerd bin/runc sha256sums"
	if got := strings.Join(names, " "); got != want {
		t.Errorf("entries %q, want %q (sorted)", got, want)
	}
}

// TestEmbeddedPayload runs Extract on the real embedded payload when the
// build made one (make helpers), and checks the clear error otherwise.
func TestEmbeddedPayload(t *testing.T) {
	src, err := embedded()
	if errors.Is(err, ErrNoPayload) {
		if _, err := Extract(t.TempDir()); !errors.Is(err, ErrNoPayload) {
			t.Fatalf("Extract without a payload: %v", err)
		}
		t.Skip("no payload embedded (run make helpers)")
	}
	if err != nil {
		t.Fatal(err)
	}
	dataDir := t.TempDir()
	binDir, err := Extract(dataDir)
	if err != nil {
		t.Fatalf("Extract: %v", err)
	}
	if binDir != filepath.Join(dataDir, "data", src.Hash, "bin") {
		t.Errorf("binDir %s", binDir)
	}
	for _, name := range []string{"runc", "containerd", "containerd-shim-runc-v2", "crictl",
		"bridge", "host-local", "loopback", "portmap", "bandwidth"} {
		st, err := os.Stat(filepath.Join(binDir, name))
		if err != nil || st.Mode().Perm() != 0o755 {
			t.Errorf("%s: %v", name, err)
		}
	}
}

// BenchmarkExtractFastPath measures a start with the helpers already
// unpacked: a few stats and a readlink, no decompression.
func BenchmarkExtractFastPath(b *testing.B) {
	src, err := embedded()
	if err != nil {
		b.Skip(err)
	}
	dataDir := b.TempDir()
	if _, err := extract(dataDir, src); err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	for b.Loop() {
		if _, err := extract(dataDir, src); err != nil {
			b.Fatal(err)
		}
	}
}

// TestBeside checks the release layout: a binary inside a complete unpacked
// payload that lists it uses that directory; anything else does not.
func TestBeside(t *testing.T) {
	files := map[string]string{"berth": "berth itself", "runc": "runc", "containerd": "containerd"}
	src, _, _ := makePayload(t, files)
	dataDir := t.TempDir()
	binDir, err := extract(dataDir, src)
	if err != nil {
		t.Fatal(err)
	}
	if got, err := besideOf(filepath.Join(binDir, "berth")); err != nil || got != binDir {
		t.Fatalf("besideOf(berth) = %q, %v; want %s", got, err, binDir)
	}
	// A file sha256sums does not list (a copy put there by hand).
	stray := filepath.Join(binDir, "stray")
	if err := os.WriteFile(stray, nil, 0o755); err != nil {
		t.Fatal(err)
	}
	if _, err := besideOf(stray); err == nil {
		t.Error("besideOf accepted a binary the payload does not list")
	}
	// A helper deleted by hand: the directory is incomplete.
	if err := os.Remove(filepath.Join(binDir, "runc")); err != nil {
		t.Fatal(err)
	}
	if _, err := besideOf(filepath.Join(binDir, "berth")); err == nil {
		t.Error("besideOf accepted an incomplete directory")
	}
	// A binary anywhere else.
	other := filepath.Join(t.TempDir(), "bin", "berth")
	if _, err := besideOf(other); err == nil {
		t.Error("besideOf accepted a directory that is no payload")
	}
}
