package build

import (
	"archive/tar"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// tarEntry is what a test needs of one layer entry.
type tarEntry struct {
	hdr  *tar.Header
	data string
}

func readLayerTar(t *testing.T, r io.Reader) (map[string]tarEntry, []string) {
	t.Helper()
	got := map[string]tarEntry{}
	var order []string
	tr := tar.NewReader(r)
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			return got, order
		}
		if err != nil {
			t.Fatalf("reading layer: %v", err)
		}
		b, err := io.ReadAll(tr)
		if err != nil {
			t.Fatalf("reading %s: %v", hdr.Name, err)
		}
		got[hdr.Name] = tarEntry{hdr, string(b)}
		order = append(order, hdr.Name)
	}
}

func buildSample(t *testing.T) (string, string) {
	t.Helper()
	src := filepath.Join(t.TempDir(), "hello")
	if err := os.WriteFile(src, []byte("#!/bin/sh\necho hello\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	layer, err := Layer([]Entry{
		HostFile("/usr/bin/hello", 0o755, src),
		Symlink("/bin/hi", "../usr/bin/hello"),
		Dir("/tmp", 0o777|fs.ModeSticky),
		File("/etc/passwd", 0o644, []byte("root:x:0:0:root:/root:/bin/sh\n")),
	})
	if err != nil {
		t.Fatal(err)
	}
	img, err := Image(Config{
		Entrypoint:   []string{"/usr/bin/hello"},
		Cmd:          []string{"arg"},
		Env:          []string{"GREETING=hi"},
		User:         "65532:65532",
		ExposedPorts: []string{"8080/tcp"},
		Labels:       map[string]string{"k": "v"},
	}, layer)
	if err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(t.TempDir(), "hello.tar")
	const ref = "berth.local/hello:1.0"
	changed, err := WriteTarball(out, ref, img)
	if err != nil || !changed {
		t.Fatalf("WriteTarball = %v, %v; want true, nil", changed, err)
	}
	return out, ref
}

func TestImageRoundTrip(t *testing.T) {
	out, ref := buildSample(t)
	tag, err := name.NewTag(ref)
	if err != nil {
		t.Fatal(err)
	}
	img, err := tarball.ImageFromPath(out, &tag)
	if err != nil {
		t.Fatalf("reading back %s: %v", out, err)
	}

	// The docker-archive manifest names the image by its tag.
	m, err := tarball.LoadManifest(func() (io.ReadCloser, error) { return os.Open(out) })
	if err != nil {
		t.Fatal(err)
	}
	if len(m) != 1 || !slices.Equal(m[0].RepoTags, []string{ref}) {
		t.Errorf("manifest.json = %+v; want one image tagged %s", m, ref)
	}

	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	c := cf.Config
	if cf.OS != "linux" || cf.Architecture != runtime.GOARCH {
		t.Errorf("platform = %s/%s; want linux/%s", cf.OS, cf.Architecture, runtime.GOARCH)
	}
	if cf.Created.Unix() != 0 {
		t.Errorf("created = %v; want the Unix epoch", cf.Created)
	}
	if !slices.Equal(c.Entrypoint, []string{"/usr/bin/hello"}) || !slices.Equal(c.Cmd, []string{"arg"}) {
		t.Errorf("entrypoint/cmd = %q %q", c.Entrypoint, c.Cmd)
	}
	if !slices.Equal(c.Env, []string{DefaultPath, "GREETING=hi"}) {
		t.Errorf("env = %q", c.Env)
	}
	if _, ok := c.ExposedPorts["8080/tcp"]; !ok || c.User != "65532:65532" || c.Labels["k"] != "v" {
		t.Errorf("config = %+v", c)
	}

	layers, err := img.Layers()
	if err != nil || len(layers) != 1 {
		t.Fatalf("layers = %d, %v; want 1", len(layers), err)
	}
	if len(cf.RootFS.DiffIDs) != 1 {
		t.Errorf("rootfs diff IDs = %v", cf.RootFS.DiffIDs)
	}
	rc, err := layers[0].Uncompressed()
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	got, order := readLayerTar(t, rc)

	want := []string{"bin/", "bin/hi", "etc/", "etc/passwd", "tmp/", "usr/", "usr/bin/", "usr/bin/hello"}
	if !slices.Equal(order, want) {
		t.Errorf("layer entries = %q; want %q", order, want)
	}
	check := func(name string, typ byte, mode int64) tarEntry {
		t.Helper()
		e, ok := got[name]
		if !ok {
			t.Fatalf("layer has no %s", name)
		}
		if e.hdr.Typeflag != typ || e.hdr.Mode != mode {
			t.Errorf("%s: type %c mode %o; want %c %o", name, e.hdr.Typeflag, e.hdr.Mode, typ, mode)
		}
		if e.hdr.Uid != 0 || e.hdr.Gid != 0 || e.hdr.ModTime.Unix() != 0 {
			t.Errorf("%s: uid %d gid %d mtime %v; want root and the epoch", name, e.hdr.Uid, e.hdr.Gid, e.hdr.ModTime)
		}
		return e
	}
	if e := check("usr/bin/hello", tar.TypeReg, 0o755); e.data != "#!/bin/sh\necho hello\n" {
		t.Errorf("usr/bin/hello = %q", e.data)
	}
	if e := check("bin/hi", tar.TypeSymlink, 0o777); e.hdr.Linkname != "../usr/bin/hello" {
		t.Errorf("bin/hi -> %q", e.hdr.Linkname)
	}
	check("tmp/", tar.TypeDir, 0o1777)
	check("usr/", tar.TypeDir, 0o755) // added parent
	if e := check("etc/passwd", tar.TypeReg, 0o644); !strings.HasPrefix(e.data, "root:x:0:0:") {
		t.Errorf("etc/passwd = %q", e.data)
	}

	// The compressed blob in the tarball is gzip and matches its digest.
	mt, err := layers[0].MediaType()
	if err != nil || !strings.Contains(string(mt), "gzip") {
		t.Errorf("layer media type = %q, %v; want gzip", mt, err)
	}
	raw, err := img.RawManifest()
	if err != nil {
		t.Fatal(err)
	}
	var man struct {
		Layers []struct{ Digest string }
	}
	if err := json.Unmarshal(raw, &man); err != nil || len(man.Layers) != 1 {
		t.Fatalf("manifest %s: %v", raw, err)
	}
	d, _ := layers[0].Digest()
	if man.Layers[0].Digest != d.String() {
		t.Errorf("manifest layer digest %s; layer %s", man.Layers[0].Digest, d)
	}
}

// The same inputs give the same bytes, and an unchanged file is left alone.
func TestReproducible(t *testing.T) {
	a, _ := buildSample(t)
	b, _ := buildSample(t)
	da, err := os.ReadFile(a)
	if err != nil {
		t.Fatal(err)
	}
	db, err := os.ReadFile(b)
	if err != nil {
		t.Fatal(err)
	}
	if string(da) != string(db) {
		t.Fatal("two builds of the same image differ")
	}

	layer, err := Layer([]Entry{File("/x", 0o644, []byte("x"))})
	if err != nil {
		t.Fatal(err)
	}
	img, err := Image(Config{}, layer)
	if err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(t.TempDir(), "x.tar")
	for i, want := range []bool{true, false} {
		changed, err := WriteTarball(out, "berth.local/x:1", img)
		if err != nil || changed != want {
			t.Errorf("write %d: changed = %v, %v; want %v", i, changed, err, want)
		}
	}
	if left, _ := filepath.Glob(filepath.Join(filepath.Dir(out), ".*")); len(left) != 0 {
		t.Errorf("temporary files left behind: %q", left)
	}
}

func TestBadInput(t *testing.T) {
	for _, tc := range []struct {
		name    string
		entries []Entry
	}{
		{"relative", []Entry{File("etc/x", 0o644, nil)}},
		{"root", []Entry{Dir("/", 0o755)}},
		{"duplicate", []Entry{File("/x", 0o644, nil), Symlink("/x", "y")}},
		{"parent is a file", []Entry{File("/x", 0o644, nil), File("/x/y", 0o644, nil)}},
		{"missing source", []Entry{HostFile("/x", 0o644, "/nonexistent/file")}},
		{"empty symlink", []Entry{Symlink("/x", "")}},
	} {
		if _, err := Layer(tc.entries); err == nil {
			t.Errorf("%s: Layer succeeded; want an error", tc.name)
		}
	}
	layer, err := Layer([]Entry{File("/x", 0o644, nil)})
	if err != nil {
		t.Fatal(err)
	}
	img, err := Image(Config{}, layer)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := WriteTarball(filepath.Join(t.TempDir(), "x.tar"), "berth.local/x", img); err == nil {
		t.Error("WriteTarball accepted a reference without a tag")
	}
}

// A tar file taken as a layer keeps its bytes (the diff ID is the file's
// sha256), is cached by it, and a missing file is an error.
func TestCachedTarLayer(t *testing.T) {
	dir := t.TempDir()
	data, err := layerTar([]Entry{File("/etc/os-release", 0o644, []byte("ID=test\n"))})
	if err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(dir, "rootfs.tar")
	if err := os.WriteFile(file, data, 0o600); err != nil {
		t.Fatal(err)
	}
	cache := filepath.Join(dir, "cache")
	want := fmt.Sprintf("sha256:%x", sha256.Sum256(data))
	for i := range 2 { // made, then found in the cache
		layer, err := CachedTarLayer(cache, file)
		if err != nil {
			t.Fatal(err)
		}
		d, err := layer.DiffID()
		if err != nil || d.String() != want {
			t.Fatalf("run %d: diff ID %v, %v; want %s", i, d, err, want)
		}
		if cached, _ := filepath.Glob(filepath.Join(cache, "sha256-*.tar.gz")); len(cached) != 1 {
			t.Fatalf("run %d: cache holds %q, want one layer", i, cached)
		}
	}
	if _, err := CachedTarLayer(cache, filepath.Join(dir, "missing.tar")); err == nil {
		t.Error("a missing tar file gave a layer")
	}
}
