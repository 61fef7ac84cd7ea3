// Package images imports air-gap image tarballs into containerd, the way an
// air-gapped user delivers images: drop a tarball into <data-dir>/agent/images.
package images

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/platforms"
	"github.com/fsnotify/fsnotify"
	"github.com/klauspost/compress/zstd"
	"k8s.io/klog/v2"

	"github.com/berth-io/berth/pkg/atomicfile"
)

// Labels the CRI plugin reads: "managed" makes the image visible to the
// kubelet, "pinned" keeps image garbage collection away from it.
const (
	criImageLabel  = "io.cri-containerd.image"
	criPinnedLabel = "io.cri-containerd.pinned"
	namespace      = "k8s.io"
	snapshotter    = "overlayfs"
	cacheFileName  = ".cache.json"
	// zstdWindow bounds the decoder's memory on small devices.
	zstdWindow = 64 << 20
)

// Importer imports the tarballs in Dir into the containerd at Socket.
type Importer struct {
	Dir    string
	Socket string

	mu    sync.Mutex
	cache map[string]cacheEntry
}

type cacheEntry struct {
	Size    int64     `json:"size"`
	ModTime time.Time `json:"modTime"`
	SHA256  string    `json:"sha256"`
	Images  []string  `json:"images"`
}

// IsTarball tells whether name is a file the importer reads.
func IsTarball(name string) bool {
	for _, ext := range []string{".tar", ".tar.gz", ".tgz", ".tar.zst", ".tar.zstd"} {
		if strings.HasSuffix(name, ext) {
			return true
		}
	}
	return false
}

func (im *Importer) cachePath() string { return filepath.Join(im.Dir, cacheFileName) }

func (im *Importer) loadCache() {
	im.cache = map[string]cacheEntry{}
	b, err := os.ReadFile(im.cachePath())
	if err == nil {
		_ = json.Unmarshal(b, &im.cache)
	}
}

func (im *Importer) saveCache() {
	b, _ := json.MarshalIndent(im.cache, "", "  ")
	if err := atomicfile.Write(im.cachePath(), b, 0o600); err != nil {
		klog.Warningf("save image import cache: %v", err)
	}
}

// ImportAll imports every tarball in Dir that changed since it was last
// imported. A bad tarball is logged with its name and reason; the others
// still import. It returns the number imported and the failures.
func (im *Importer) ImportAll(ctx context.Context) (imported int, failed []error) {
	im.mu.Lock()
	defer im.mu.Unlock()
	if im.cache == nil {
		im.loadCache()
	}
	entries, err := os.ReadDir(im.Dir)
	if err != nil {
		if !errors.Is(err, os.ErrNotExist) {
			failed = append(failed, err)
		}
		return 0, failed
	}
	var names []string
	for _, e := range entries {
		if !e.IsDir() && IsTarball(e.Name()) {
			names = append(names, e.Name())
		}
	}
	sort.Strings(names)
	if len(names) == 0 {
		return 0, nil
	}
	cli, err := client.New(im.Socket, client.WithDefaultNamespace(namespace), client.WithTimeout(10*time.Second))
	if err != nil {
		return 0, []error{fmt.Errorf("connect to containerd: %w", err)}
	}
	defer cli.Close()
	for _, n := range names {
		did, err := im.importFile(ctx, cli, filepath.Join(im.Dir, n))
		if err != nil {
			err = fmt.Errorf("import %s: %w", n, err)
			klog.Errorf("air-gap images: %v (other tarballs are still imported)", err)
			failed = append(failed, err)
			continue
		}
		if did {
			imported++
		}
	}
	im.saveCache()
	return imported, failed
}

// importFile imports one tarball unless the cache says it is unchanged.
func (im *Importer) importFile(ctx context.Context, cli *client.Client, path string) (bool, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return false, err
	}
	name := filepath.Base(path)
	if c, ok := im.cache[name]; ok && c.Size == fi.Size() && c.ModTime.Equal(fi.ModTime()) && im.present(ctx, cli, c.Images) {
		klog.V(2).Infof("air-gap images: %s unchanged, skipped", name)
		return false, nil
	}
	t0 := time.Now()
	f, err := os.Open(path)
	if err != nil {
		return false, err
	}
	defer f.Close()
	h := sha256.New()
	r, closeFn, err := decompress(io.TeeReader(f, h))
	if err != nil {
		return false, err
	}
	defer closeFn()
	ctx = namespaces.WithNamespace(ctx, namespace)
	imgs, err := cli.Import(ctx, r,
		client.WithImportPlatform(platforms.Default()),
		client.WithImageLabels(map[string]string{criImageLabel: "managed", criPinnedLabel: "pinned"}),
	)
	if err != nil {
		return false, err
	}
	// Drain so the hash covers the whole file, trailing padding included.
	if _, err := io.Copy(io.Discard, r); err != nil {
		return false, fmt.Errorf("read to end: %w", err)
	}
	var refs []string
	for _, img := range imgs {
		image := client.NewImageWithPlatform(cli, img, platforms.Default())
		if err := image.Unpack(ctx, snapshotter); err != nil {
			return false, fmt.Errorf("unpack %s: %w", img.Name, err)
		}
		refs = append(refs, img.Name)
	}
	if len(refs) == 0 {
		return false, errors.New("no image for this platform in the tarball")
	}
	im.cache[name] = cacheEntry{Size: fi.Size(), ModTime: fi.ModTime(), SHA256: hex.EncodeToString(h.Sum(nil)), Images: refs}
	klog.Infof("air-gap images: imported %s (%s) in %s", name, strings.Join(refs, ", "), time.Since(t0).Round(time.Millisecond))
	return true, nil
}

// present tells whether every image a cached tarball held is still there.
func (im *Importer) present(ctx context.Context, cli *client.Client, refs []string) bool {
	ctx = namespaces.WithNamespace(ctx, namespace)
	for _, ref := range refs {
		if _, err := cli.ImageService().Get(ctx, ref); err != nil {
			return false
		}
	}
	return len(refs) > 0
}

// decompress sniffs gzip and zstd by their magic bytes.
func decompress(r io.Reader) (io.Reader, func(), error) {
	br := bufio.NewReaderSize(r, 64<<10)
	head, err := br.Peek(4)
	if err != nil {
		return nil, nil, fmt.Errorf("read header: %w (empty or truncated file)", err)
	}
	switch {
	case bytes.Equal(head[:2], []byte{0x1f, 0x8b}):
		zr, err := gzip.NewReader(br)
		if err != nil {
			return nil, nil, err
		}
		return zr, func() { zr.Close() }, nil
	case bytes.Equal(head, []byte{0x28, 0xb5, 0x2f, 0xfd}):
		zr, err := zstd.NewReader(br, zstd.WithDecoderMaxWindow(zstdWindow), zstd.WithDecoderConcurrency(1))
		if err != nil {
			return nil, nil, err
		}
		return zr, zr.Close, nil
	}
	return br, func() {}, nil
}

// Watch imports tarballs dropped into Dir while berth runs, until ctx ends.
func (im *Importer) Watch(ctx context.Context) error {
	w, err := fsnotify.NewWatcher()
	if err != nil {
		return err
	}
	if err := os.MkdirAll(im.Dir, 0o700); err != nil {
		w.Close()
		return err
	}
	if err := w.Add(im.Dir); err != nil {
		w.Close()
		return err
	}
	go func() {
		defer w.Close()
		// Copies arrive as many writes: wait until a file has been quiet.
		var timer <-chan time.Time
		for {
			select {
			case <-ctx.Done():
				return
			case ev := <-w.Events:
				if IsTarball(ev.Name) && ev.Op&(fsnotify.Create|fsnotify.Write|fsnotify.Rename) != 0 {
					timer = time.After(time.Second)
				}
			case err := <-w.Errors:
				klog.Warningf("watch %s: %v", im.Dir, err)
			case <-timer:
				timer = nil
				im.ImportAll(ctx)
			}
		}
	}()
	return nil
}

// Component imports the air-gap images before the kubelet starts, then
// watches the directory.
type Component struct {
	Importer *Importer
	cancel   context.CancelFunc
}

func (c *Component) Name() string { return "images" }

func (c *Component) Prepare(context.Context) error {
	return os.MkdirAll(c.Importer.Dir, 0o700)
}

func (c *Component) Start(ctx context.Context) error {
	n, failed := c.Importer.ImportAll(ctx)
	if n > 0 || len(failed) > 0 {
		klog.Infof("air-gap images: %d tarball(s) imported, %d failed", n, len(failed))
	}
	wctx, cancel := context.WithCancel(context.Background())
	c.cancel = cancel
	return c.Importer.Watch(wctx)
}

func (c *Component) Ready(context.Context) error { return nil }

func (c *Component) Stop(context.Context) error {
	if c.cancel != nil {
		c.cancel()
	}
	return nil
}
