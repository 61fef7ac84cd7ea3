// Package launcher is the small program a release binary starts with
// (cmd/berth-launcher). The real berth (or berth-agent) binary and the
// helper binaries it runs (containerd, runc, CNI plugins, crictl) follow
// it in the same file as one zstd-compressed payload (see trailer.go). On
// the first run of a version the launcher unpacks that payload once, with
// checksums and atomically (pkg/data/store), into
// <data-dir>/data/<sha256>/bin; every run then execs bin/berth there with
// the same argv — argv[0] included, so kubectl, ctr and crictl links keep
// working — and the same environment. berth finds its helpers beside
// itself (pkg/data.Beside).
//
// The payload's zstd window is at most payload.WindowSize (32 MiB, as k3s's
// zstd --long=25; make release uses zstd -19 --long=25), so decoding needs
// about that much memory, once per version and briefly: the launcher then
// execs berth.
//
// It links only the standard library, the zstd decoder and berth's payload
// and store packages: no Kubernetes, no logging, no YAML.
package launcher

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"github.com/berth-io/berth/pkg/data/payload"
	"github.com/berth-io/berth/pkg/data/store"
	"github.com/berth-io/berth/pkg/defaults"
)

// selfExe is the running executable; under qemu-user too, which emulates it.
const selfExe = "/proc/self/exe"

// Main runs the launcher and never returns.
func Main() {
	err := Run(os.Args, os.Environ())
	fmt.Fprintf(os.Stderr, "berth: %v\n", err)
	os.Exit(1)
}

// Run unpacks the payload of the running executable if needed and execs
// the program in it. It returns only on failure.
func Run(argv, environ []string) error {
	f, err := os.Open(selfExe)
	if err != nil {
		return fmt.Errorf("opening own executable: %w", err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return fmt.Errorf("reading own executable: %w", err)
	}
	t, err := ReadTrailer(f, st.Size())
	if errors.Is(err, ErrNoTrailer) {
		return fmt.Errorf("this is the berth launcher without berth: %w (make release appends it)", err)
	}
	if err != nil {
		return fmt.Errorf("%w: the release binary is damaged; download it again and check its sha256sum", err)
	}
	dataDir := DataDir(argv[0], argv[1:], environ, defaults.DataDir())
	exe, err := Unpack(f, t, dataDir)
	if err != nil {
		return err
	}
	f.Close()
	err = syscall.Exec(exe, argv, environ)
	if errors.Is(err, syscall.EACCES) {
		err = fmt.Errorf("%w (is %s on a noexec file system? set --data-dir or BERTH_DATA_DIR to another place)", err, dataDir)
	}
	return fmt.Errorf("running %s: %w", exe, err)
}

// Unpack makes sure the payload t describes in f is unpacked into
// <dataDir>/data/<sha256> and returns the path of the program to run.
func Unpack(f io.ReaderAt, t Trailer, dataDir string) (string, error) {
	src := store.Source{
		Hash: t.Hash,
		Open: func() (io.ReadCloser, error) {
			// The decoder reads in small pieces; one read per MiB instead.
			r := bufio.NewReaderSize(io.NewSectionReader(f, t.Offset, t.Size), 1<<20)
			return io.NopCloser(r), nil
		},
	}
	start := time.Now()
	dir, unpacked, err := store.Ensure(dataDir, src)
	if err != nil {
		hint := "the release binary is damaged: download it again and check its sha256sum"
		if pe := (*fs.PathError)(nil); errors.As(err, &pe) {
			hint = "set --data-dir or BERTH_DATA_DIR to a writable directory with room for it"
		}
		return "", fmt.Errorf("unpacking into %s: %w (%s)", filepath.Join(dataDir, "data"), err, hint)
	}
	if unpacked && isTerminal(os.Stderr) {
		fmt.Fprintf(os.Stderr, "berth: unpacked into %s in %s (once per version)\n", dir, time.Since(start).Round(time.Millisecond))
	}
	exe := filepath.Join(dir, payload.BinDir, t.Exec)
	if _, err := os.Stat(exe); err != nil {
		return "", fmt.Errorf("the payload has no %s/%s: %w", payload.BinDir, t.Exec, err)
	}
	return exe, nil
}

func isTerminal(f *os.File) bool {
	st, err := f.Stat()
	return err == nil && st.Mode()&os.ModeCharDevice != 0
}
