// Package payload defines the archive of helper binaries berth embeds: a
// reproducible tar (entries sorted by name, mtime 0, uid/gid 0) holding
// bin/<name> for every helper plus a sha256sums file, compressed with zstd.
// The build (hack/mkpayload) writes it with Write; pkg/data unpacks it with
// Unpack. Keeping both halves here keeps the format in one place.
package payload

import (
	"archive/tar"
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/klauspost/compress/zstd"

	"github.com/berth-io/berth/pkg/atomicfile"
)

const (
	// SumsName is the archive entry listing "<sha256>  bin/<name>" per file.
	SumsName = "sha256sums"
	// BinDir is the archive directory holding the binaries.
	BinDir = "bin"

	// WindowSize is the zstd window the encoder uses and the most the
	// decoder accepts. The decoder must hold one window in memory, so this
	// bounds unpacking memory on small devices: 32 MiB is k3s's cap
	// (zstd --long=25) for its payload and air-gap images. A window this
	// large lets zstd match code the Go binaries share (runtime, grpc,
	// containerd packages) across files.
	WindowSize = 32 << 20

	// maxSumsSize bounds how much of a sha256sums entry is read.
	maxSumsSize = 64 << 10
)

// Write packs every regular file in dir as bin/<name> plus a sha256sums
// entry into a zstd-compressed tar on w. The output depends only on the
// files' names and contents.
func Write(w io.Writer, dir string) error {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return fmt.Errorf("reading %s: %w", dir, err)
	}
	var files []string
	for _, e := range entries {
		if !e.Type().IsRegular() || strings.HasSuffix(e.Name(), ".new") {
			continue // skip directories and half-written build outputs
		}
		files = append(files, filepath.Join(dir, e.Name()))
	}
	if len(files) == 0 {
		return fmt.Errorf("no files in %s", dir)
	}
	zw, err := zstd.NewWriter(w,
		zstd.WithEncoderLevel(zstd.SpeedBestCompression),
		zstd.WithWindowSize(WindowSize),
		// One goroutine: the output must not depend on scheduling.
		zstd.WithEncoderConcurrency(1))
	if err != nil {
		return fmt.Errorf("zstd encoder: %w", err)
	}
	if err := WriteTar(zw, files); err != nil {
		return err
	}
	if err := zw.Close(); err != nil {
		return fmt.Errorf("closing zstd stream: %w", err)
	}
	return nil
}

// WriteTar writes the uncompressed payload tar of files to w: each file as
// bin/<its base name>, sorted by name, then the sha256sums entry. The
// output depends only on the files' names and contents. Compressing it is
// the caller's part: Write uses the zstd package, the release build
// (hack/mkrelease) the zstd command, which compresses further; Unpack
// reads either as long as the window is at most WindowSize.
func WriteTar(w io.Writer, files []string) error {
	byName := make(map[string]string, len(files))
	var names []string
	for _, f := range files {
		n := filepath.Base(f)
		if n == "" || n == "." || n == ".." || strings.HasPrefix(n, ".") {
			return fmt.Errorf("cannot pack %s: bad entry name", f)
		}
		if other, dup := byName[n]; dup {
			return fmt.Errorf("cannot pack %s and %s: both would be %s/%s", other, f, BinDir, n)
		}
		byName[n] = f
		names = append(names, n)
	}
	if len(names) == 0 {
		return errors.New("no files to pack")
	}
	sort.Strings(names)

	var sums bytes.Buffer
	sizes := make(map[string]int64, len(names))
	for _, n := range names {
		sum, size, err := hashFile(byName[n])
		if err != nil {
			return err
		}
		sizes[n] = size
		fmt.Fprintf(&sums, "%s  %s/%s\n", sum, BinDir, n)
	}

	tw := tar.NewWriter(w)
	// Sorted by entry name: every bin/… sorts before sha256sums.
	for _, n := range names {
		if err := addFile(tw, byName[n], BinDir+"/"+n, sizes[n]); err != nil {
			return err
		}
	}
	if err := tw.WriteHeader(header(SumsName, int64(sums.Len()), 0o644)); err != nil {
		return fmt.Errorf("writing %s: %w", SumsName, err)
	}
	if _, err := tw.Write(sums.Bytes()); err != nil {
		return fmt.Errorf("writing %s: %w", SumsName, err)
	}
	if err := tw.Close(); err != nil {
		return fmt.Errorf("closing tar: %w", err)
	}
	return nil
}

func header(name string, size int64, mode int64) *tar.Header {
	return &tar.Header{
		Typeflag: tar.TypeReg,
		Name:     name,
		Size:     size,
		Mode:     mode,
		ModTime:  time.Unix(0, 0),
		Format:   tar.FormatUSTAR,
	}
}

func addFile(tw *tar.Writer, src, name string, size int64) error {
	f, err := os.Open(src)
	if err != nil {
		return fmt.Errorf("opening %s: %w", src, err)
	}
	defer f.Close()
	if err := tw.WriteHeader(header(name, size, 0o755)); err != nil {
		return fmt.Errorf("writing %s: %w", name, err)
	}
	// tar refuses to write more than size; a file that shrank since it
	// was hashed fails the count check.
	n, err := io.Copy(tw, f)
	if err != nil {
		return fmt.Errorf("writing %s: %w", name, err)
	}
	if n != size {
		return fmt.Errorf("%s changed while packing (%d bytes, expected %d)", src, n, size)
	}
	return nil
}

func hashFile(p string) (string, int64, error) {
	f, err := os.Open(p)
	if err != nil {
		return "", 0, fmt.Errorf("opening %s: %w", p, err)
	}
	defer f.Close()
	h := sha256.New()
	n, err := io.Copy(h, f)
	if err != nil {
		return "", 0, fmt.Errorf("reading %s: %w", p, err)
	}
	return hex.EncodeToString(h.Sum(nil)), n, nil
}

// Unpack decompresses a payload from r into dst (which must exist and be
// empty): dst/bin/<name> (mode 0755) and dst/sha256sums. Every file is
// fsynced, and every file's sha256 must match sha256sums and vice versa;
// the error names the first entry that does not. On error dst holds
// whatever was written so far; the caller discards it. The zstd window may
// be at most WindowSize.
func Unpack(r io.Reader, dst string) error {
	zr, err := zstd.NewReader(r,
		zstd.WithDecoderMaxWindow(WindowSize),
		// Low memory and a single goroutine: unpacking runs once per
		// upgrade, often on a small device, and is not worth extra RAM.
		zstd.WithDecoderLowmem(true),
		zstd.WithDecoderConcurrency(1))
	if err != nil {
		return fmt.Errorf("zstd decoder: %w", err)
	}
	defer zr.Close()

	if err := os.Mkdir(filepath.Join(dst, BinDir), 0o755); err != nil {
		return fmt.Errorf("creating %s: %w", BinDir, err)
	}
	got := map[string]string{} // entry name → sha256 of its content
	var sums []byte
	tr := tar.NewReader(zr)
	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return fmt.Errorf("reading payload: %w", err)
		}
		if hdr.Typeflag == tar.TypeDir && path.Clean(hdr.Name) == BinDir {
			continue
		}
		if err := checkName(hdr); err != nil {
			return err
		}
		if _, dup := got[hdr.Name]; dup || (hdr.Name == SumsName && sums != nil) {
			return fmt.Errorf("payload entry %s appears twice", hdr.Name)
		}
		if hdr.Name == SumsName {
			if hdr.Size > maxSumsSize {
				return fmt.Errorf("payload entry %s is %d bytes, more than %d", SumsName, hdr.Size, maxSumsSize)
			}
			if sums, err = io.ReadAll(tr); err != nil {
				return fmt.Errorf("reading payload entry %s: %w", SumsName, err)
			}
			if err := writeFile(filepath.Join(dst, SumsName), bytes.NewReader(sums), 0o644); err != nil {
				return err
			}
			continue
		}
		h := sha256.New()
		if err := writeFile(filepath.Join(dst, filepath.FromSlash(hdr.Name)), io.TeeReader(tr, h), 0o755); err != nil {
			return err
		}
		got[hdr.Name] = hex.EncodeToString(h.Sum(nil))
	}
	if sums == nil {
		return fmt.Errorf("payload has no %s entry", SumsName)
	}
	want, err := ParseSums(sums)
	if err != nil {
		return err
	}
	for _, name := range sortedKeys(got) {
		sum := got[name]
		w, ok := want[name]
		if !ok {
			return fmt.Errorf("payload entry %s is not listed in %s", name, SumsName)
		}
		if w != sum {
			return fmt.Errorf("payload entry %s: sha256 %s, %s says %s", name, sum, SumsName, w)
		}
	}
	for _, name := range sortedKeys(want) {
		if _, ok := got[name]; !ok {
			return fmt.Errorf("%s lists %s but the payload has no such entry", SumsName, name)
		}
	}
	return atomicfile.SyncDir(filepath.Join(dst, BinDir))
}

func sortedKeys(m map[string]string) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// checkName allows only regular files named sha256sums or bin/<name>, so a
// payload can never write outside its directory.
func checkName(hdr *tar.Header) error {
	if hdr.Typeflag != tar.TypeReg {
		return fmt.Errorf("payload entry %s is not a regular file (type %q)", hdr.Name, hdr.Typeflag)
	}
	if hdr.Name == SumsName {
		return nil
	}
	dir, base := path.Split(hdr.Name)
	if dir != BinDir+"/" || base == "" || base == "." || base == ".." || strings.HasPrefix(base, ".") {
		return fmt.Errorf("payload entry %q is not %s or %s/<name>", hdr.Name, SumsName, BinDir)
	}
	return nil
}

// ParseSums reads sha256sum(1) output ("<hex>  <name>" per line) into a
// map of name → lower-case hex digest.
func ParseSums(b []byte) (map[string]string, error) {
	sums := map[string]string{}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for line := 1; sc.Scan(); line++ {
		text := strings.TrimSpace(sc.Text())
		if text == "" {
			continue
		}
		sum, name, ok := strings.Cut(text, "  ")
		if !ok || len(sum) != sha256.Size*2 || name == "" {
			return nil, fmt.Errorf("%s line %d: want \"<sha256>  <name>\", got %q", SumsName, line, text)
		}
		if _, err := hex.DecodeString(sum); err != nil {
			return nil, fmt.Errorf("%s line %d: bad digest %q", SumsName, line, sum)
		}
		if _, dup := sums[name]; dup {
			return nil, fmt.Errorf("%s line %d: %s listed twice", SumsName, line, name)
		}
		sums[name] = strings.ToLower(sum)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("reading %s: %w", SumsName, err)
	}
	return sums, nil
}

// writeFile creates p (it must not exist), copies r into it and fsyncs it,
// so a power cut after install cannot leave a truncated binary behind a
// completion marker.
func writeFile(p string, r io.Reader, mode os.FileMode) error {
	f, err := os.OpenFile(p, os.O_WRONLY|os.O_CREATE|os.O_EXCL, mode)
	if err != nil {
		return fmt.Errorf("creating %s: %w", p, err)
	}
	if _, err := io.Copy(f, r); err != nil {
		f.Close()
		return fmt.Errorf("unpacking %s: %w", filepath.Base(p), err)
	}
	// The umask may have narrowed the mode; helpers must be executable.
	if err := f.Chmod(mode); err != nil {
		f.Close()
		return fmt.Errorf("chmod %s: %w", p, err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("fsync %s: %w", p, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("closing %s: %w", p, err)
	}
	return nil
}
