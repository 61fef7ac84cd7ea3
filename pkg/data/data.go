// Package data unpacks the helper binaries embedded in berth (containerd,
// containerd-shim-runc-v2, runc, crictl, CNI plugins) into
// <data-dir>/data/<sha256>/bin, as k3s does with its payload. It is agent
// code: it must not import pkg/server, pkg/control or pkg/datastore.
//
// Layout under <data-dir>/data:
//
//	.lock                 flock held while unpacking
//	<sha256>/bin/…        the binaries (0755)
//	<sha256>/sha256sums   their checksums
//	<sha256>/.installed   written last: the directory is complete
//	current -> <sha256>   the running version's directory
//	previous -> <sha256>  the one before an upgrade
package data

import (
	"crypto/sha256"
	"embed"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"
	"k8s.io/klog/v2"

	"github.com/berth-io/berth/pkg/atomicfile"
	"github.com/berth-io/berth/pkg/data/payload"
)

// assets holds payload.tar.zst and payload.sha256 when the build made them
// (make helpers) and only README.md otherwise, so the package always
// compiles.
//
//go:embed assets
var assets embed.FS

const (
	payloadFile = "assets/payload.tar.zst"
	sumFile     = "assets/payload.sha256"

	// markerName is written after the directory is renamed into place; a
	// directory without it is an interrupted install and is redone.
	markerName = ".installed"
	lockName   = ".lock"
	currentLn  = "current"
	previousLn = "previous"
)

// ErrNoPayload is returned by a binary built without `make helpers`.
var ErrNoPayload = errors.New("this binary was built without its helper binaries; build with make build")

// source is a payload and the sha256 the build recorded for it.
type source struct {
	hash string
	open func() (io.ReadCloser, error)
}

// Extract makes sure the embedded helper binaries are unpacked and returns
// their directory, <dataDir>/data/<sha256>/bin. When that directory is
// already complete it returns at once, without decompressing anything;
// otherwise it unpacks under an flock, verifies every file's sha256, and
// only then moves the directory into place and points data/current at it
// (the old target becomes data/previous).
func Extract(dataDir string) (string, error) {
	src, err := embedded()
	if err != nil {
		return "", err
	}
	return extract(dataDir, src)
}

func embedded() (source, error) {
	b, err := assets.ReadFile(sumFile)
	if errors.Is(err, fs.ErrNotExist) {
		return source{}, ErrNoPayload
	}
	if err != nil {
		return source{}, fmt.Errorf("reading embedded %s: %w", sumFile, err)
	}
	hash := strings.TrimSpace(string(b))
	if _, err := fs.Stat(assets, payloadFile); err != nil {
		return source{}, ErrNoPayload
	}
	return source{
		hash: hash,
		// embed.FS files read straight from the binary's data, no copy.
		open: func() (io.ReadCloser, error) { return assets.Open(payloadFile) },
	}, nil
}

func extract(dataDir string, src source) (string, error) {
	if src.hash == "" {
		return "", ErrNoPayload
	}
	if len(src.hash) != sha256.Size*2 || strings.Trim(src.hash, "0123456789abcdef") != "" {
		return "", fmt.Errorf("embedded payload checksum %q is not a sha256; rebuild with make build", src.hash)
	}
	root := filepath.Join(dataDir, "data")
	dir := filepath.Join(root, src.hash)
	binDir := filepath.Join(dir, payload.BinDir)

	if complete(dir) {
		if target, _ := os.Readlink(filepath.Join(root, currentLn)); target == src.hash {
			return binDir, nil // the usual start: nothing to do
		}
	}

	if err := os.MkdirAll(root, 0o755); err != nil {
		return "", fmt.Errorf("creating %s: %w", root, err)
	}
	unlock, err := lock(filepath.Join(root, lockName))
	if err != nil {
		return "", err
	}
	defer unlock()

	// Another process may have finished while this one waited for the lock.
	if !complete(dir) {
		start := time.Now()
		if err := install(root, src); err != nil {
			return "", err
		}
		klog.Infof("Unpacked helper binaries to %s in %s", binDir, time.Since(start).Round(time.Millisecond))
	}
	if err := setCurrent(root, src.hash); err != nil {
		return "", err
	}
	return binDir, nil
}

// complete reports whether dir holds a finished install: the marker, and
// every file sha256sums lists (a file deleted by hand forces a reinstall).
// It only stats files; contents were checked when they were unpacked.
func complete(dir string) bool {
	if _, err := os.Stat(filepath.Join(dir, markerName)); err != nil {
		return false
	}
	b, err := os.ReadFile(filepath.Join(dir, payload.SumsName))
	if err != nil {
		return false
	}
	sums, err := payload.ParseSums(b)
	if err != nil || len(sums) == 0 {
		return false
	}
	for name := range sums {
		st, err := os.Stat(filepath.Join(dir, filepath.FromSlash(name)))
		if err != nil || !st.Mode().IsRegular() {
			return false
		}
	}
	return true
}

// install unpacks src into <root>/<hash>-tmp, checks it, and renames it to
// <root>/<hash>; the marker is written last. Nothing is left behind on error.
func install(root string, src source) (err error) {
	dir := filepath.Join(root, src.hash)
	tmp := dir + "-tmp"
	// Leftovers of an interrupted install: a temporary directory, or a
	// renamed one whose marker was never written.
	for _, p := range []string{tmp, dir} {
		if err := os.RemoveAll(p); err != nil {
			return fmt.Errorf("removing incomplete %s: %w", p, err)
		}
	}
	if err := os.Mkdir(tmp, 0o755); err != nil {
		return fmt.Errorf("creating %s: %w", tmp, err)
	}
	defer func() {
		if err != nil {
			os.RemoveAll(tmp)
			os.RemoveAll(dir)
		}
	}()

	r, err := src.open()
	if err != nil {
		return fmt.Errorf("opening embedded payload: %w", err)
	}
	defer r.Close()
	h := sha256.New()
	tee := io.TeeReader(r, h)
	if err := payload.Unpack(tee, tmp); err != nil {
		return fmt.Errorf("unpacking helper binaries (payload %s): %w", src.hash, err)
	}
	// Hash what the decoder did not need to read too, so the checksum
	// covers the whole embedded payload.
	if _, err := io.Copy(io.Discard, tee); err != nil {
		return fmt.Errorf("reading embedded payload: %w", err)
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != src.hash {
		return fmt.Errorf("embedded payload has sha256 %s but was built as %s; rebuild with make build", got, src.hash)
	}
	if err := atomicfile.SyncDir(tmp); err != nil {
		return err
	}
	if err := os.Rename(tmp, dir); err != nil {
		return fmt.Errorf("moving %s into place: %w", tmp, err)
	}
	if err := atomicfile.SyncDir(root); err != nil {
		return err
	}
	// The marker goes last: its presence means the tree is complete.
	return atomicfile.Write(filepath.Join(dir, markerName), []byte(src.hash+"\n"), 0o644)
}

// setCurrent points <root>/current at hash; its old target, if another,
// becomes <root>/previous. Each link is replaced with a rename, so it is
// always either the old or the new one.
func setCurrent(root, hash string) error {
	cur := filepath.Join(root, currentLn)
	old, err := os.Readlink(cur)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("reading %s: %w", cur, err)
	}
	if old == hash {
		return nil
	}
	if old != "" {
		if err := replaceSymlink(old, filepath.Join(root, previousLn)); err != nil {
			return err
		}
	}
	if err := replaceSymlink(hash, cur); err != nil {
		return err
	}
	return atomicfile.SyncDir(root)
}

// replaceSymlink makes link point at target (relative, so the data dir can
// move). Callers hold the lock, so a fixed temporary name is safe.
func replaceSymlink(target, link string) error {
	tmp := link + ".tmp"
	if err := os.Remove(tmp); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("removing %s: %w", tmp, err)
	}
	if err := os.Symlink(target, tmp); err != nil {
		return fmt.Errorf("creating symlink %s: %w", tmp, err)
	}
	if err := os.Rename(tmp, link); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("replacing %s: %w", link, err)
	}
	return nil
}

// lock takes an exclusive flock on p, waiting for any other berth process
// that is unpacking the same data dir.
func lock(p string) (func(), error) {
	f, err := os.OpenFile(p, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("opening lock %s: %w", p, err)
	}
	for {
		err = unix.Flock(int(f.Fd()), unix.LOCK_EX)
		if !errors.Is(err, unix.EINTR) {
			break
		}
	}
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("locking %s: %w", p, err)
	}
	// Closing the file releases the lock.
	return func() { f.Close() }, nil
}
