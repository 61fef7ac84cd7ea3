// Package store keeps unpacked payloads (see pkg/data/payload) under
// <data-dir>/data, one directory per payload sha256, as k3s does. Both the
// helper binaries a berth binary embeds (pkg/data) and the release launcher's
// payload (cmd/berth-launcher: berth itself plus the helpers) are installed
// through it. It imports no logging and nothing of Kubernetes, so the
// launcher stays small.
//
// Layout under <data-dir>/data:
//
//	.lock                 flock held while unpacking
//	<sha256>/bin/…        the binaries (0755)
//	<sha256>/sha256sums   their checksums
//	<sha256>/.installed   written last: the directory is complete
//	current -> <sha256>   the running version's directory
//	previous -> <sha256>  the one before an upgrade
package store

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/berth-io/berth/pkg/atomicfile"
	"github.com/berth-io/berth/pkg/data/payload"
)

const (
	// MarkerName is written after the directory is renamed into place; a
	// directory without it is an interrupted install and is redone.
	MarkerName = ".installed"
	// LockName is the flock file in <data-dir>/data.
	LockName   = ".lock"
	currentLn  = "current"
	previousLn = "previous"
)

// ErrNoPayload means there is no payload to install.
var ErrNoPayload = errors.New("no payload")

// Source is a payload and the sha256 the build recorded for it.
type Source struct {
	// Hash is the sha256 (lower-case hex) of the compressed payload; it
	// names the directory.
	Hash string
	// Open returns the compressed payload from its first byte.
	Open func() (io.ReadCloser, error)
}

// Ensure makes sure src is unpacked into <dataDir>/data/<hash> and that
// data/current points at it, and returns that directory. When it is already
// complete it returns at once, without opening the payload (unpacked is
// false); otherwise it unpacks under an flock, verifies the payload's sha256
// and every file's, and only then moves the directory into place and points
// data/current at it (the old target becomes data/previous). Concurrent
// callers, in this process or others, unpack once.
func Ensure(dataDir string, src Source) (dir string, unpacked bool, err error) {
	if src.Hash == "" {
		return "", false, ErrNoPayload
	}
	if len(src.Hash) != sha256.Size*2 || strings.Trim(src.Hash, "0123456789abcdef") != "" {
		return "", false, fmt.Errorf("payload checksum %q is not a sha256", src.Hash)
	}
	root := filepath.Join(dataDir, "data")
	dir = filepath.Join(root, src.Hash)

	if Complete(dir) {
		if target, _ := os.Readlink(filepath.Join(root, currentLn)); target == src.Hash {
			return dir, false, nil // the usual start: nothing to do
		}
	}

	if err := os.MkdirAll(root, 0o755); err != nil {
		return "", false, fmt.Errorf("creating %s: %w", root, err)
	}
	unlock, err := lock(filepath.Join(root, LockName))
	if err != nil {
		return "", false, err
	}
	defer unlock()

	// Another process may have finished while this one waited for the lock.
	if !Complete(dir) {
		if err := install(root, src); err != nil {
			return "", false, err
		}
		unpacked = true
	}
	if err := setCurrent(root, src.Hash); err != nil {
		return "", false, err
	}
	return dir, unpacked, nil
}

// Complete reports whether dir holds a finished install: the marker, and
// every file sha256sums lists (a file deleted by hand forces a reinstall).
// It only stats files; contents were checked when they were unpacked.
func Complete(dir string) bool {
	_, err := Files(dir)
	return err == nil
}

// Files returns the files a finished install in dir holds (sha256sums'
// names, e.g. "bin/runc"), or an error saying why dir is not one.
func Files(dir string) (map[string]string, error) {
	if _, err := os.Stat(filepath.Join(dir, MarkerName)); err != nil {
		return nil, err
	}
	b, err := os.ReadFile(filepath.Join(dir, payload.SumsName))
	if err != nil {
		return nil, err
	}
	sums, err := payload.ParseSums(b)
	if err != nil {
		return nil, err
	}
	if len(sums) == 0 {
		return nil, fmt.Errorf("%s lists no files", filepath.Join(dir, payload.SumsName))
	}
	for name := range sums {
		p := filepath.Join(dir, filepath.FromSlash(name))
		st, err := os.Stat(p)
		if err != nil {
			return nil, err
		}
		if !st.Mode().IsRegular() {
			return nil, fmt.Errorf("%s is not a regular file", p)
		}
	}
	return sums, nil
}

// install unpacks src into <root>/<hash>-tmp, checks it, and renames it to
// <root>/<hash>; the marker is written last. Nothing is left behind on error.
func install(root string, src Source) (err error) {
	dir := filepath.Join(root, src.Hash)
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

	r, err := src.Open()
	if err != nil {
		return fmt.Errorf("opening payload: %w", err)
	}
	defer r.Close()
	h := sha256.New()
	tee := io.TeeReader(r, h)
	if err := payload.Unpack(tee, tmp); err != nil {
		return fmt.Errorf("unpacking payload %s: %w", src.Hash, err)
	}
	// Hash what the decoder did not need to read too, so the checksum
	// covers the whole payload.
	if _, err := io.Copy(io.Discard, tee); err != nil {
		return fmt.Errorf("reading payload: %w", err)
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != src.Hash {
		return fmt.Errorf("payload has sha256 %s but was built as %s", got, src.Hash)
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
	return atomicfile.Write(filepath.Join(dir, MarkerName), []byte(src.Hash+"\n"), 0o644)
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
// that is unpacking into the same data dir.
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
