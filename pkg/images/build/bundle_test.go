package build

import (
	"archive/tar"
	"bytes"
	"io"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/klauspost/compress/zstd"
)

func sampleImage(t *testing.T, entrypoint string, entries ...Entry) v1.Image {
	t.Helper()
	layer, err := Layer(entries)
	if err != nil {
		t.Fatal(err)
	}
	img, err := Image(Config{Entrypoint: []string{entrypoint}}, layer)
	if err != nil {
		t.Fatal(err)
	}
	return img
}

func TestWriteBundle(t *testing.T) {
	shared := File("/shared", 0o644, []byte("same layer in two images"))
	images := map[string]v1.Image{
		"berth.local/a:1":   sampleImage(t, "/a", File("/a", 0o755, []byte("a"))),
		"berth.local/b:2.0": sampleImage(t, "/shared", shared),
		"berth.local/c:v3":  sampleImage(t, "/shared", shared), // the same image as b
	}
	const window = 1 << 20
	dir := t.TempDir()
	file := filepath.Join(dir, "bundle.tar.zst")
	for i, want := range []bool{true, false} {
		changed, err := WriteBundle(file, images, window)
		if err != nil || changed != want {
			t.Fatalf("write %d: changed = %v, %v; want %v", i, changed, err, want)
		}
	}
	if left, _ := filepath.Glob(filepath.Join(dir, ".*")); len(left) != 0 {
		t.Errorf("temporary files left behind: %q", left)
	}
	first, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	// Reproducible although go-containerregistry writes in map order.
	for range 3 {
		other := filepath.Join(t.TempDir(), "bundle.tar.zst")
		if _, err := WriteBundle(other, images, window); err != nil {
			t.Fatal(err)
		}
		if b, _ := os.ReadFile(other); !bytes.Equal(b, first) {
			t.Fatal("two bundles of the same images differ")
		}
	}

	// A decoder limited to the window reads it.
	zr, err := zstd.NewReader(bytes.NewReader(first), zstd.WithDecoderMaxWindow(window))
	if err != nil {
		t.Fatal(err)
	}
	defer zr.Close()
	data, err := io.ReadAll(zr)
	if err != nil {
		t.Fatalf("decompressing with a %d-byte window: %v", window, err)
	}
	var names []string
	tr := tar.NewReader(bytes.NewReader(data))
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		names = append(names, hdr.Name)
	}
	// Two configs and two layers (b and c are equal images), then the index.
	if len(names) != 5 || names[4] != manifestName || !slices.IsSorted(names[:4]) {
		t.Errorf("bundle entries %q; want 4 sorted blobs, then %s", names, manifestName)
	}

	opener := func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(data)), nil }
	for ref, want := range images {
		tag, err := name.NewTag(ref)
		if err != nil {
			t.Fatal(err)
		}
		img, err := tarball.Image(opener, &tag)
		if err != nil {
			t.Fatalf("%s: %v", ref, err)
		}
		got, err := img.Digest()
		if err != nil {
			t.Fatal(err)
		}
		if w, _ := want.Digest(); got != w {
			t.Errorf("%s: digest %s; want %s", ref, got, w)
		}
	}

	// A different set of images replaces the file.
	delete(images, "berth.local/c:v3")
	if changed, err := WriteBundle(file, images, window); err != nil || !changed {
		t.Errorf("after dropping an image: changed = %v, %v; want true", changed, err)
	}
}

func TestWriteBundleBadRef(t *testing.T) {
	img := sampleImage(t, "/x", File("/x", 0o755, nil))
	file := filepath.Join(t.TempDir(), "bundle.tar.zst")
	if _, err := WriteBundle(file, map[string]v1.Image{"berth.local/x": img}, 1<<20); err == nil {
		t.Error("WriteBundle accepted a reference without a tag")
	}
	if _, err := os.Stat(file); err == nil {
		t.Error("WriteBundle wrote a bundle for a bad reference")
	}
}

// FileCapabilities gives the bytes `setcap cap_net_bind_service=+ep` writes,
// and Layer carries them as the PAX record containerd turns into the xattr.
func TestFileCapabilities(t *testing.T) {
	want := "\x01\x00\x00\x02" + "\x00\x04\x00\x00" + "\x00\x00\x00\x00" + "\x00\x00\x00\x00" + "\x00\x00\x00\x00"
	caps := FileCapabilities(CapNetBindService)
	if got := caps["security.capability"]; got != want || len(caps) != 1 {
		t.Fatalf("FileCapabilities = %q; want security.capability %q", caps, want)
	}
	e := File("/bin/x", 0o755, []byte("x"))
	e.Xattrs = caps
	layer, err := Layer([]Entry{e})
	if err != nil {
		t.Fatal(err)
	}
	rc, err := layer.Uncompressed()
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	got, _ := readLayerTar(t, rc)
	if v := got["bin/x"].hdr.PAXRecords["SCHILY.xattr.security.capability"]; v != want {
		t.Errorf("bin/x capability record %q; want %q", v, want)
	}
}

func TestCachedLayer(t *testing.T) {
	dir := t.TempDir()
	entries := []Entry{File("/x", 0o644, bytes.Repeat([]byte("x"), 1000))}
	fresh, err := CachedLayer(dir, entries)
	if err != nil {
		t.Fatal(err)
	}
	cached, _ := filepath.Glob(filepath.Join(dir, "sha256-*.tar.gz"))
	if len(cached) != 1 {
		t.Fatalf("cache holds %q; want one layer", cached)
	}
	again, err := CachedLayer(dir, entries)
	if err != nil {
		t.Fatal(err)
	}
	d1, _ := fresh.Digest()
	d2, _ := again.Digest()
	if d1 != d2 {
		t.Errorf("cached layer digest %s; fresh %s", d2, d1)
	}
	// A damaged cache entry is replaced, not used.
	if err := os.WriteFile(cached[0], []byte("not gzip"), 0o644); err != nil {
		t.Fatal(err)
	}
	repaired, err := CachedLayer(dir, entries)
	if err != nil {
		t.Fatal(err)
	}
	if d3, _ := repaired.Digest(); d3 != d1 {
		t.Errorf("layer after a damaged cache entry: digest %s; want %s", d3, d1)
	}
	if b, _ := os.ReadFile(cached[0]); string(b) == "not gzip" {
		t.Error("damaged cache entry was left in place")
	}
}
