package images

import (
	"archive/tar"
	"compress/gzip"
	"context"
	"encoding/json"
	"errors"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/core/images"
	"github.com/containerd/containerd/v2/core/images/archive"
	"github.com/containerd/containerd/v2/plugins/content/local"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// TestAirgapBundle reads the bundle `make airgap` wrote (skipped when there
// is none) the way Importer does — decompress, then containerd's own
// docker-archive import, into a content store in a temporary directory, no
// containerd daemon — and checks every image berth's manifests need is
// there, for this platform, runnable as the manifests expect.
func TestAirgapBundle(t *testing.T) {
	dir := filepath.Join("..", "..", "dist", "artifacts")
	file := filepath.Join(dir, "berth-airgap-images-"+runtime.GOARCH+".tar.zst")
	if _, err := os.Stat(file); errors.Is(err, fs.ErrNotExist) {
		// `make unit` builds the bundle first and says so: there, a
		// missing bundle is a failure, not a skip.
		if os.Getenv("BERTH_AIRGAP_REQUIRED") != "" {
			t.Fatalf("no %s", file)
		}
		t.Skipf("no %s (run make airgap)", file)
	}

	type want struct {
		entrypoint, cmd []string
		user            string
		file            string // the program, in the layer
		fileCaps        bool   // has a security.capability attribute
	}
	wants := map[string]want{
		"berth.local/pause:3.10":   {entrypoint: []string{"/pause"}, user: "65535:65535", file: "pause"},
		"berth.local/busybox:1.36": {cmd: []string{"sh"}, file: "bin/busybox"},
		"berth.local/coredns:1.15.0": {entrypoint: []string{"/coredns"}, user: "65532:65532",
			file: "coredns", fileCaps: true},
		"berth.local/local-path-provisioner:v0.0.30": {entrypoint: []string{"local-path-provisioner"},
			file: "usr/bin/local-path-provisioner"},
		"berth.local/metrics-server:v0.9.0": {entrypoint: []string{"/metrics-server"}, user: "65534:65534",
			file: "metrics-server"},
	}

	list, err := os.ReadFile(filepath.Join(dir, "berth-images.txt"))
	if err != nil {
		t.Fatal(err)
	}
	listed := strings.Fields(string(list))
	slices.Sort(listed)
	wantRefs := make([]string, 0, len(wants))
	for ref := range wants {
		wantRefs = append(wantRefs, ref)
	}
	slices.Sort(wantRefs)
	if !slices.Equal(listed, wantRefs) {
		t.Errorf("berth-images.txt lists %q; want %q", listed, wantRefs)
	}

	f, err := os.Open(file)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	r, closeFn, err := decompress(f)
	if err != nil {
		t.Fatal(err)
	}
	defer closeFn()
	store, err := local.NewStore(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	indexDesc, err := archive.ImportIndex(ctx, store, r)
	if err != nil {
		t.Fatalf("importing %s: %v", file, err)
	}
	var index ocispec.Index
	readJSON(t, ctx, store, indexDesc, &index)

	seen := map[string]bool{}
	for _, md := range index.Manifests {
		ref := md.Annotations[images.AnnotationImageName]
		w, ok := wants[ref]
		if !ok {
			t.Errorf("bundle holds %q, which berth's manifests do not use", ref)
			continue
		}
		seen[ref] = true
		var m ocispec.Manifest
		readJSON(t, ctx, store, md, &m)
		var img ocispec.Image
		readJSON(t, ctx, store, m.Config, &img)
		c := img.Config
		if img.OS != "linux" || img.Architecture != runtime.GOARCH {
			t.Errorf("%s: platform %s/%s", ref, img.OS, img.Architecture)
		}
		if !slices.Equal(c.Entrypoint, w.entrypoint) || !slices.Equal(c.Cmd, w.cmd) || c.User != w.user {
			t.Errorf("%s: entrypoint %q cmd %q user %q; want %q %q %q", ref, c.Entrypoint, c.Cmd, c.User, w.entrypoint, w.cmd, w.user)
		}
		if len(m.Layers) != 1 {
			t.Errorf("%s: %d layers; want 1", ref, len(m.Layers))
			continue
		}
		hdr := findInLayer(t, ctx, store, m.Layers[0], w.file)
		switch {
		case hdr == nil:
			t.Errorf("%s: no %s in its layer", ref, w.file)
		case hdr.Typeflag != tar.TypeReg || hdr.Mode&0o555 != 0o555:
			// Any uid the manifest picks must be able to run it.
			t.Errorf("%s: %s has type %c mode %o; want a file anyone may read and run", ref, w.file, hdr.Typeflag, hdr.Mode)
		case (hdr.PAXRecords["SCHILY.xattr.security.capability"] != "") != w.fileCaps:
			t.Errorf("%s: %s file capabilities %q; want some: %v", ref, w.file, hdr.PAXRecords["SCHILY.xattr.security.capability"], w.fileCaps)
		}
	}
	for ref := range wants {
		if !seen[ref] {
			t.Errorf("bundle lacks %s", ref)
		}
	}
}

func readJSON(t *testing.T, ctx context.Context, store content.Store, desc ocispec.Descriptor, v any) {
	t.Helper()
	b, err := content.ReadBlob(ctx, store, desc)
	if err != nil {
		t.Fatalf("reading %s: %v", desc.Digest, err)
	}
	if err := json.Unmarshal(b, v); err != nil {
		t.Fatalf("parsing %s: %v", desc.Digest, err)
	}
}

// findInLayer returns the header of name in a gzip layer, or nil.
func findInLayer(t *testing.T, ctx context.Context, store content.Store, desc ocispec.Descriptor, name string) *tar.Header {
	t.Helper()
	ra, err := store.ReaderAt(ctx, desc)
	if err != nil {
		t.Fatalf("opening layer %s: %v", desc.Digest, err)
	}
	defer ra.Close()
	zr, err := gzip.NewReader(content.NewReader(ra))
	if err != nil {
		t.Fatalf("layer %s: %v", desc.Digest, err)
	}
	tr := tar.NewReader(zr)
	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			t.Fatalf("layer %s: %v", desc.Digest, err)
		}
		if hdr.Name == name {
			return hdr
		}
	}
}
