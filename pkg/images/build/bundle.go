package build

import (
	"archive/tar"
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/klauspost/compress/zstd"
)

// manifestName is the docker-archive index entry.
const manifestName = "manifest.json"

// WriteBundle writes several images, keyed by tag reference, as one
// docker-archive tar (the format of `docker save a b c`) compressed with
// zstd, to file: an air-gap bundle berth's image importer reads in one go.
// Layers the images share are stored once.
//
// window is the zstd window in bytes (a power of two). A decoder must hold
// one window in memory, so it bounds what unpacking the bundle costs.
//
// The bundle is reproducible: go-containerregistry writes the images in map
// order, so the entries are put in name order (they are named by digest)
// with manifest.json last, and the encoder runs on one goroutine. Like
// WriteTarball, the file is replaced atomically and only when its contents
// change; it reports whether it wrote the file.
func WriteBundle(file string, images map[string]v1.Image, window int) (changed bool, err error) {
	refs := make(map[name.Reference]v1.Image, len(images))
	for ref, img := range images {
		tag, err := name.NewTag(ref, name.StrictValidation)
		if err != nil {
			return false, fmt.Errorf("image reference %q: %w", ref, err)
		}
		refs[tag] = img
	}
	var raw bytes.Buffer
	if err := tarball.MultiRefWrite(refs, &raw); err != nil {
		return false, fmt.Errorf("writing image bundle: %w", err)
	}
	data, err := sortTar(raw.Bytes())
	if err != nil {
		return false, fmt.Errorf("ordering image bundle: %w", err)
	}
	// Compressing at the best level takes seconds; decompressing the old
	// bundle to compare takes a fraction of that.
	if old, err := zstdSHA256(file, window); err == nil && old == sha256.Sum256(data) {
		return false, nil
	}

	tmp, err := os.CreateTemp(filepath.Dir(file), "."+filepath.Base(file)+".*")
	if err != nil {
		return false, fmt.Errorf("writing image bundle: %w", err)
	}
	defer os.Remove(tmp.Name()) // a no-op once renamed
	if err := compress(tmp, data, window); err != nil {
		tmp.Close()
		return false, fmt.Errorf("writing image bundle %s: %w", tmp.Name(), err)
	}
	if err := tmp.Close(); err != nil {
		return false, fmt.Errorf("writing image bundle %s: %w", tmp.Name(), err)
	}
	if err := os.Chmod(tmp.Name(), 0o644); err != nil {
		return false, fmt.Errorf("writing image bundle: %w", err)
	}
	if err := os.Rename(tmp.Name(), file); err != nil {
		return false, fmt.Errorf("writing image bundle: %w", err)
	}
	return true, nil
}

func compress(w io.Writer, data []byte, window int) error {
	zw, err := zstd.NewWriter(w,
		// The layers are gzip already, so zstd gains little on them; the
		// best level costs a few seconds once per change.
		zstd.WithEncoderLevel(zstd.SpeedBestCompression),
		zstd.WithWindowSize(window),
		// One goroutine: the output must not depend on scheduling.
		zstd.WithEncoderConcurrency(1))
	if err != nil {
		return fmt.Errorf("zstd encoder: %w", err)
	}
	if _, err := zw.Write(data); err != nil {
		zw.Close()
		return fmt.Errorf("compressing: %w", err)
	}
	if err := zw.Close(); err != nil {
		return fmt.Errorf("closing zstd stream: %w", err)
	}
	return nil
}

// zstdSHA256 returns the sha256 of file's decompressed contents.
func zstdSHA256(file string, window int) ([sha256.Size]byte, error) {
	var sum [sha256.Size]byte
	f, err := os.Open(file)
	if err != nil {
		return sum, err
	}
	defer f.Close()
	zr, err := zstd.NewReader(f, zstd.WithDecoderMaxWindow(uint64(window)), zstd.WithDecoderConcurrency(1))
	if err != nil {
		return sum, err
	}
	defer zr.Close()
	h := sha256.New()
	if _, err := io.Copy(h, zr); err != nil {
		return sum, err
	}
	copy(sum[:], h.Sum(nil))
	return sum, nil
}

// sortTar rewrites a tar of regular files in name order with manifest.json
// last, where docker-archive writers put it. Entries are named by digest, so
// a name seen twice (go-containerregistry writes the config of two equal
// image values twice) is kept once.
func sortTar(data []byte) ([]byte, error) {
	type entry struct {
		hdr  *tar.Header
		data []byte
	}
	var entries []entry
	tr := tar.NewReader(bytes.NewReader(data))
	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, err
		}
		if hdr.Typeflag != tar.TypeReg {
			return nil, fmt.Errorf("entry %q: not a regular file", hdr.Name)
		}
		b, err := io.ReadAll(tr)
		if err != nil {
			return nil, fmt.Errorf("entry %q: %w", hdr.Name, err)
		}
		entries = append(entries, entry{hdr, b})
	}
	slices.SortStableFunc(entries, func(a, b entry) int {
		switch {
		case a.hdr.Name == b.hdr.Name:
			return 0
		case a.hdr.Name == manifestName:
			return 1
		case b.hdr.Name == manifestName:
			return -1
		case a.hdr.Name < b.hdr.Name:
			return -1
		}
		return 1
	})
	var out bytes.Buffer
	out.Grow(len(data))
	tw := tar.NewWriter(&out)
	for i, e := range entries {
		if i > 0 && entries[i-1].hdr.Name == e.hdr.Name {
			if !bytes.Equal(entries[i-1].data, e.data) {
				return nil, fmt.Errorf("entry %q: written twice with different contents", e.hdr.Name)
			}
			continue
		}
		if err := tw.WriteHeader(e.hdr); err != nil {
			return nil, fmt.Errorf("entry %q: %w", e.hdr.Name, err)
		}
		if _, err := tw.Write(e.data); err != nil {
			return nil, fmt.Errorf("entry %q: %w", e.hdr.Name, err)
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return out.Bytes(), nil
}
