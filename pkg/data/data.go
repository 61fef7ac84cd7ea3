// Package data provides the helper binaries berth runs as separate
// processes (containerd, containerd-shim-runc-v2, runc, crictl, CNI
// plugins), unpacked into <data-dir>/data/<sha256>/bin (layout: pkg/data/store),
// as k3s does with its payload. It is agent code: it must not import
// pkg/server, pkg/control or pkg/datastore.
//
// A binary gets its helpers one of two ways:
//
//   - embedded (make build): assets/payload.tar.zst is compiled in and
//     unpacked on the first start;
//   - beside it (make release, built with the external_helpers tag): the
//     release launcher (cmd/berth-launcher) has already unpacked berth and
//     the helpers into one <sha256>/bin directory and runs berth from there,
//     so berth uses the directory it runs from.
package data

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	"k8s.io/klog/v2"

	"github.com/berth-io/berth/pkg/data/payload"
	"github.com/berth-io/berth/pkg/data/store"
)

const (
	payloadFile = "assets/payload.tar.zst"
	sumFile     = "assets/payload.sha256"
)

// ErrNoPayload is returned by a binary that has neither embedded helpers
// nor helpers beside it.
var ErrNoPayload = errors.New("this binary was built without its helper binaries; build with make build " +
	"(a release binary runs from the directory its launcher unpacked it into)")

// Extract makes sure the helper binaries are unpacked and returns their
// directory. With an embedded payload that is <dataDir>/data/<sha256>/bin:
// when it is already complete Extract returns at once, without
// decompressing anything; otherwise it unpacks under an flock, verifies
// every file's sha256, and only then moves the directory into place and
// points data/current at it (the old target becomes data/previous). A
// binary without an embedded payload uses the directory it runs from when
// that is a complete unpacked payload holding it (see Beside).
func Extract(dataDir string) (string, error) {
	src, err := embedded()
	if errors.Is(err, ErrNoPayload) {
		if dir, berr := Beside(); berr == nil {
			return dir, nil
		}
	}
	if err != nil {
		return "", err
	}
	return extract(dataDir, src)
}

// Beside returns the directory of the running executable when it is the bin
// directory of a complete unpacked payload that lists the executable itself:
// the release layout, <data-dir>/data/<sha256>/bin/berth beside runc,
// containerd and the rest.
func Beside() (string, error) {
	exe, err := os.Executable()
	if err != nil {
		return "", err
	}
	if exe, err = filepath.EvalSymlinks(exe); err != nil {
		return "", err
	}
	return besideOf(exe)
}

func besideOf(exe string) (string, error) {
	bin := filepath.Dir(exe)
	if filepath.Base(bin) != payload.BinDir {
		return "", fmt.Errorf("%s is not in a %s directory", exe, payload.BinDir)
	}
	files, err := store.Files(filepath.Dir(bin))
	if err != nil {
		return "", fmt.Errorf("%s is not in an unpacked payload: %w", exe, err)
	}
	if _, ok := files[payload.BinDir+"/"+filepath.Base(exe)]; !ok {
		return "", fmt.Errorf("the payload %s does not list %s", filepath.Dir(bin), filepath.Base(exe))
	}
	return bin, nil
}

func embedded() (store.Source, error) {
	b, err := assets.ReadFile(sumFile)
	if errors.Is(err, fs.ErrNotExist) {
		return store.Source{}, ErrNoPayload
	}
	if err != nil {
		return store.Source{}, fmt.Errorf("reading embedded %s: %w", sumFile, err)
	}
	hash := strings.TrimSpace(string(b))
	if _, err := fs.Stat(assets, payloadFile); err != nil {
		return store.Source{}, ErrNoPayload
	}
	return store.Source{
		Hash: hash,
		// embed.FS files read straight from the binary's data, no copy.
		Open: func() (io.ReadCloser, error) { return assets.Open(payloadFile) },
	}, nil
}

func extract(dataDir string, src store.Source) (string, error) {
	if src.Hash == "" {
		return "", ErrNoPayload
	}
	start := time.Now()
	dir, unpacked, err := store.Ensure(dataDir, src)
	if err != nil {
		return "", fmt.Errorf("embedded helper binaries: %w; rebuild with make build", err)
	}
	binDir := filepath.Join(dir, payload.BinDir)
	if unpacked {
		klog.Infof("Unpacked helper binaries to %s in %s", binDir, time.Since(start).Round(time.Millisecond))
	}
	return binDir, nil
}
