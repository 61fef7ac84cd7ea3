// Command mkrelease writes a release binary (see pkg/launcher): the
// launcher, then berth (or berth-agent) and the helper binaries as one
// payload tar (pkg/data/payload) compressed by the zstd command, then the
// trailer. Run by mk/release.mk:
//
//	go run ./hack/mkrelease -launcher build/release/arm64/berth-launcher -exec berth \
//	  -o dist/artifacts/berth-arm64 build/release/arm64/berth build/release/arm64/helpers/bin/*
//
// The zstd command (Debian's zstd) compresses better than the Go encoder
// (zstd -19 --long=25 on berth's payload: ~13% smaller than
// SpeedBestCompression). Its window must not exceed payload.WindowSize, the
// most the launcher's decoder accepts: mkrelease decodes the result with
// that limit and compares it with the tar before writing anything.
//
// A release binary whose inputs (files, launcher, zstd options) are
// unchanged is not rebuilt: <out>.inputs records their sha256s.
package main

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/klauspost/compress/zstd"

	"github.com/berth-io/berth/pkg/data/payload"
	"github.com/berth-io/berth/pkg/launcher"
)

func main() {
	launcherPath := flag.String("launcher", "", "the launcher executable (cmd/berth-launcher, built for the target)")
	execName := flag.String("exec", "berth", "the payload file the launcher runs")
	out := flag.String("o", "", "release binary to write")
	zstdArgs := flag.String("zstd", "-19 --long=25", "zstd command options (level and window)")
	work := flag.String("work", "", "directory for the temporary tar and the inputs record (default: beside -o)")
	flag.Parse()
	if *launcherPath == "" || *out == "" || flag.NArg() == 0 {
		fmt.Fprintln(os.Stderr, "usage: mkrelease -launcher FILE -exec NAME -o OUT [-zstd OPTIONS] [-work DIR] FILE...")
		os.Exit(2)
	}
	if *work == "" {
		*work = filepath.Dir(*out)
	}
	if err := run(*launcherPath, *execName, *out, *work, strings.Fields(*zstdArgs), flag.Args()); err != nil {
		fmt.Fprintln(os.Stderr, "mkrelease:", err)
		os.Exit(1)
	}
}

func run(launcherPath, execName, out, workDir string, zstdArgs, files []string) error {
	start := time.Now()
	found := false
	for _, f := range files {
		found = found || filepath.Base(f) == execName
	}
	if !found {
		return fmt.Errorf("none of the files is %s, the program to run", execName)
	}
	sort.Strings(files)

	inputs, raw, err := describeInputs(launcherPath, zstdArgs, files)
	if err != nil {
		return err
	}
	record := filepath.Join(workDir, filepath.Base(out)+".inputs")
	if old, err := os.ReadFile(record); err == nil && bytes.Equal(old, inputs) {
		if _, err := os.Stat(out); err == nil {
			return report(out, launcherPath, raw, len(files), zstdArgs, "unchanged", start)
		}
	}

	for _, d := range []string{filepath.Dir(out), workDir} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return err
		}
	}
	// The tar and its compressed form go to the work directory; the
	// release binary is written beside its final name and renamed.
	work, err := os.MkdirTemp(workDir, ".mkrelease-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(work)
	os.Remove(record) // a stale record must not outlive a failed build

	tarPath := filepath.Join(work, "payload.tar")
	tarSum, err := writeTar(tarPath, files)
	if err != nil {
		return err
	}
	zstPath := tarPath + ".zst"
	args := append([]string{"-q", "-f", "-T0"}, zstdArgs...)
	args = append(args, "-o", zstPath, tarPath)
	cmd := exec.Command("zstd", args...)
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("zstd %s: %w (make deps installs zstd)", strings.Join(args, " "), err)
	}
	if err := os.Remove(tarPath); err != nil {
		return err
	}
	if err := checkDecodes(zstPath, tarSum); err != nil {
		return err
	}

	l, err := os.Open(launcherPath)
	if err != nil {
		return err
	}
	defer l.Close()
	z, err := os.Open(zstPath)
	if err != nil {
		return err
	}
	defer z.Close()
	tmp := out + ".tmp"
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o755)
	if err != nil {
		return err
	}
	_, err = launcher.Write(f, l, z, execName)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Chmod(tmp, 0o755) // whatever the umask
	}
	if err == nil {
		err = os.Rename(tmp, out)
	}
	if err != nil {
		os.Remove(tmp)
		return err
	}
	if err := os.WriteFile(record, inputs, 0o644); err != nil {
		return err
	}
	return report(out, launcherPath, raw, len(files), zstdArgs, "written", start)
}

// describeInputs lists the sha256 of every input and the zstd options, and
// sums the files' sizes.
func describeInputs(launcherPath string, zstdArgs, files []string) ([]byte, int64, error) {
	var b bytes.Buffer
	fmt.Fprintf(&b, "zstd %s\n", strings.Join(zstdArgs, " "))
	var raw int64
	for i, p := range append([]string{launcherPath}, files...) {
		sum, size, err := hashFile(p)
		if err != nil {
			return nil, 0, err
		}
		if i > 0 {
			raw += size
		}
		fmt.Fprintf(&b, "%s  %s\n", sum, filepath.Base(p))
	}
	return b.Bytes(), raw, nil
}

func hashFile(p string) (string, int64, error) {
	f, err := os.Open(p)
	if err != nil {
		return "", 0, err
	}
	defer f.Close()
	h := sha256.New()
	n, err := io.Copy(h, f)
	if err != nil {
		return "", 0, fmt.Errorf("reading %s: %w", p, err)
	}
	return hex.EncodeToString(h.Sum(nil)), n, nil
}

func writeTar(p string, files []string) (string, error) {
	f, err := os.Create(p)
	if err != nil {
		return "", err
	}
	h := sha256.New()
	if err := payload.WriteTar(io.MultiWriter(f, h), files); err != nil {
		f.Close()
		return "", err
	}
	if err := f.Close(); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// checkDecodes decodes the compressed payload as the launcher will (same
// window limit) and compares the result with the tar.
func checkDecodes(zstPath, tarSum string) error {
	f, err := os.Open(zstPath)
	if err != nil {
		return err
	}
	defer f.Close()
	zr, err := zstd.NewReader(f, zstd.WithDecoderMaxWindow(payload.WindowSize), zstd.WithDecoderLowmem(true),
		zstd.WithDecoderConcurrency(1))
	if err != nil {
		return err
	}
	defer zr.Close()
	h := sha256.New()
	if _, err := io.Copy(h, zr); err != nil {
		if errors.Is(err, zstd.ErrWindowSizeExceeded) {
			return fmt.Errorf("the zstd options give a window above the launcher's %d MiB: %w", payload.WindowSize>>20, err)
		}
		return fmt.Errorf("decoding the compressed payload: %w", err)
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != tarSum {
		return fmt.Errorf("the compressed payload decodes to sha256 %s, not the tar's %s", got, tarSum)
	}
	return nil
}

func report(out, launcherPath string, raw int64, n int, zstdArgs []string, state string, start time.Time) error {
	st, err := os.Stat(out)
	if err != nil {
		return err
	}
	lst, err := os.Stat(launcherPath)
	if err != nil {
		return err
	}
	const mib = 1 << 20
	fmt.Printf("%-40s %6.2f MiB shipped (launcher %.2f MiB + payload %.2f MiB); unpacks to %.2f MiB in %d files; zstd %s; %s in %s\n",
		out, float64(st.Size())/mib, float64(lst.Size())/mib, float64(st.Size()-lst.Size()-launcher.TrailerSize)/mib,
		float64(raw)/mib, n, strings.Join(zstdArgs, " "), state, time.Since(start).Round(100*time.Millisecond))
	return nil
}
