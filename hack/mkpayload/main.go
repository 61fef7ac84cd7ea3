// Command mkpayload packs the helper binaries in a directory into the payload
// berth embeds (see pkg/data/payload) and writes the payload's sha256 beside
// it, so berth can name its unpack directory without hashing the payload on
// every start. Run by mk/helpers.mk:
//
//	go run ./hack/mkpayload -o pkg/data/assets/payload.tar.zst -sum pkg/data/assets/payload.sha256 build/helpers/bin
package main

import (
	"crypto/sha256"
	"encoding/hex"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/berth-io/berth/pkg/data/payload"
)

func main() {
	out := flag.String("o", "", "payload file to write")
	sumOut := flag.String("sum", "", "file to write the payload's sha256 (hex) to")
	flag.Parse()
	if *out == "" || *sumOut == "" || flag.NArg() != 1 {
		fmt.Fprintln(os.Stderr, "usage: mkpayload -o PAYLOAD -sum SUMFILE DIR")
		os.Exit(2)
	}
	if err := run(flag.Arg(0), *out, *sumOut); err != nil {
		fmt.Fprintln(os.Stderr, "mkpayload:", err)
		os.Exit(1)
	}
}

func run(dir, out, sumOut string) error {
	start := time.Now()
	// Write beside the target and rename, so an interrupted build never
	// leaves a truncated payload for go:embed to pick up.
	tmp, err := os.CreateTemp(filepath.Dir(out), ".payload-*")
	if err != nil {
		return fmt.Errorf("creating temporary payload: %w", err)
	}
	defer os.Remove(tmp.Name())
	h := sha256.New()
	if err := payload.Write(io.MultiWriter(tmp, h), dir); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("closing %s: %w", tmp.Name(), err)
	}
	sum := hex.EncodeToString(h.Sum(nil))
	// The sum goes first: a payload without its matching sum is caught by
	// berth's check at unpack time, never silently used.
	if err := os.WriteFile(sumOut, []byte(sum+"\n"), 0o644); err != nil {
		return fmt.Errorf("writing %s: %w", sumOut, err)
	}
	if err := os.Chmod(tmp.Name(), 0o644); err != nil {
		return fmt.Errorf("chmod %s: %w", tmp.Name(), err)
	}
	if err := os.Rename(tmp.Name(), out); err != nil {
		return fmt.Errorf("renaming payload to %s: %w", out, err)
	}
	st, err := os.Stat(out)
	if err != nil {
		return fmt.Errorf("stat %s: %w", out, err)
	}
	fmt.Printf("%s: %.1f MB, sha256 %s (%s)\n", out, float64(st.Size())/1e6, sum, time.Since(start).Round(100*time.Millisecond))
	return nil
}
