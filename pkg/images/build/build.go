// Package build makes container images from plain files, with no registry
// and no container engine, and writes them as docker-archive tarballs (the
// single-file format of `docker save`), which containerd's `ctr images
// import` and its Go client's Import both accept.
//
// Everything is reproducible: entries are sorted, owned by root and dated
// 1970-01-01, and the image's creation time is the same epoch, so the same
// inputs always give the same image digest.
//
// It is build-time tooling (cmd/berth-images); berth itself never links it.
package build

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// epoch is the time of every file and of the image itself.
var epoch = time.Unix(0, 0).UTC()

// Entry is one file, directory or symlink of a layer.
type Entry struct {
	Path   string      // absolute path in the image, e.g. "/bin/sh"
	Mode   fs.FileMode // permissions plus fs.ModeDir, fs.ModeSymlink, fs.ModeSticky, …
	Data   []byte      // contents of a regular file (when Source is empty)
	Source string      // host file whose contents a regular file gets
	Link   string      // target of a symlink
	// Xattrs are extended attributes (e.g. security.capability), written as
	// PAX SCHILY.xattr records, which containerd sets when it unpacks.
	Xattrs map[string]string
}

// File is a regular file with the given contents.
func File(p string, mode fs.FileMode, data []byte) Entry {
	return Entry{Path: p, Mode: mode.Perm(), Data: data}
}

// HostFile is a regular file whose contents are read from the host file src.
func HostFile(p string, mode fs.FileMode, src string) Entry {
	return Entry{Path: p, Mode: mode.Perm(), Source: src}
}

// Dir is a directory; mode may carry fs.ModeSticky (e.g. /tmp, 01777).
func Dir(p string, mode fs.FileMode) Entry {
	return Entry{Path: p, Mode: fs.ModeDir | mode&(fs.ModePerm|fs.ModeSticky|fs.ModeSetgid)}
}

// Symlink is a symbolic link at p pointing to target.
func Symlink(p, target string) Entry {
	return Entry{Path: p, Mode: fs.ModeSymlink | 0o777, Link: target}
}

// Linux capability numbers (linux/capability.h) for FileCapabilities.
const (
	CapNetBindService = 10
)

// FileCapabilities returns the security.capability attribute `setcap
// cap_…=+ep` writes: the capabilities permitted and effective when the file
// is executed. A non-root process gets them only if they are also in its
// bounding set (a pod's securityContext capabilities.add), and with
// no_new_privs only if it already holds them, which is what an image running
// as non-root that binds a port below 1024 needs.
func FileCapabilities(caps ...uint) map[string]string {
	// struct vfs_cap_data, revision 2: magic_etc, then {permitted,
	// inheritable} for capabilities 0-31 and 32-63, all little-endian.
	const revision2, effective = 0x02000000, 0x000001
	var permitted uint64
	for _, c := range caps {
		permitted |= 1 << c
	}
	b := make([]byte, 20)
	binary.LittleEndian.PutUint32(b[0:], revision2|effective)
	binary.LittleEndian.PutUint32(b[4:], uint32(permitted))
	binary.LittleEndian.PutUint32(b[12:], uint32(permitted>>32))
	return map[string]string{"security.capability": string(b)}
}

// Layer builds an uncompressed tar of the entries (sorted, parent
// directories added as 0755 where missing) and returns it as a gzip layer.
func Layer(entries []Entry) (v1.Layer, error) {
	return CachedLayer("", entries)
}

// CachedLayer is Layer keeping the gzip layer in cacheDir (none if empty),
// named by the uncompressed tar's sha256: compressing tens of MiB at the
// best level takes seconds, hashing the tar to find it again a fraction of
// one. A cached layer is used only if it decompresses to that tar's digest.
func CachedLayer(cacheDir string, entries []Entry) (v1.Layer, error) {
	data, err := layerTar(entries)
	if err != nil {
		return nil, err
	}
	return cachedTarLayer(cacheDir, data)
}

// CachedTarLayer is CachedLayer for a layer that is already a tar file
// (e.g. a Debian root file system from mmdebstrap), taken as it is.
func CachedTarLayer(cacheDir, tarFile string) (v1.Layer, error) {
	data, err := os.ReadFile(tarFile)
	if err != nil {
		return nil, fmt.Errorf("reading layer: %w", err)
	}
	return cachedTarLayer(cacheDir, data)
}

func cachedTarLayer(cacheDir string, data []byte) (v1.Layer, error) {
	if cacheDir == "" {
		return compressLayer(data)
	}
	diffID := v1.Hash{Algorithm: "sha256", Hex: fmt.Sprintf("%x", sha256.Sum256(data))}
	file := filepath.Join(cacheDir, "sha256-"+diffID.Hex+".tar.gz")
	if gz, err := os.ReadFile(file); err == nil {
		layer, err := tarball.LayerFromOpener(
			func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(gz)), nil })
		if err == nil {
			if d, err := layer.DiffID(); err == nil && d == diffID {
				return layer, nil
			}
		}
		// Corrupt or truncated: make it again.
	}
	layer, err := compressLayer(data)
	if err != nil {
		return nil, err
	}
	if err := cacheLayer(file, layer); err != nil {
		return nil, err
	}
	return layer, nil
}

// cacheLayer writes layer's compressed blob to file atomically.
func cacheLayer(file string, layer v1.Layer) error {
	if err := os.MkdirAll(filepath.Dir(file), 0o755); err != nil {
		return fmt.Errorf("creating layer cache: %w", err)
	}
	rc, err := layer.Compressed()
	if err != nil {
		return fmt.Errorf("caching layer: %w", err)
	}
	defer rc.Close()
	tmp, err := os.CreateTemp(filepath.Dir(file), "."+filepath.Base(file)+".*")
	if err != nil {
		return fmt.Errorf("caching layer: %w", err)
	}
	defer os.Remove(tmp.Name()) // a no-op once renamed
	if _, err := io.Copy(tmp, rc); err != nil {
		tmp.Close()
		return fmt.Errorf("caching layer in %s: %w", tmp.Name(), err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("caching layer in %s: %w", tmp.Name(), err)
	}
	if err := os.Rename(tmp.Name(), file); err != nil {
		return fmt.Errorf("caching layer: %w", err)
	}
	return nil
}

// layerTar is the uncompressed tar Layer compresses.
func layerTar(entries []Entry) ([]byte, error) {
	byPath := map[string]Entry{}
	for _, e := range entries {
		p := path.Clean(e.Path)
		if !path.IsAbs(e.Path) || p == "/" {
			return nil, fmt.Errorf("layer entry %q: need an absolute path below /", e.Path)
		}
		if _, dup := byPath[p]; dup {
			return nil, fmt.Errorf("layer entry %q: listed twice", p)
		}
		e.Path = p
		byPath[p] = e
	}
	// Runtimes create missing parents themselves, but with modes of their
	// choosing; listing them keeps the layer self-describing.
	for p := range byPath {
		for d := path.Dir(p); d != "/"; d = path.Dir(d) {
			if e, ok := byPath[d]; ok {
				if !e.Mode.IsDir() {
					return nil, fmt.Errorf("layer entry %q: parent %q is not a directory", p, d)
				}
				continue
			}
			byPath[d] = Dir(d, 0o755)
		}
	}
	paths := make([]string, 0, len(byPath))
	for p := range byPath {
		paths = append(paths, p)
	}
	// Lexical order puts every directory before what it holds.
	slices.Sort(paths)

	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, p := range paths {
		if err := writeEntry(tw, byPath[p]); err != nil {
			return nil, fmt.Errorf("layer entry %q: %w", p, err)
		}
	}
	if err := tw.Close(); err != nil {
		return nil, fmt.Errorf("closing layer tar: %w", err)
	}
	return buf.Bytes(), nil
}

func compressLayer(data []byte) (v1.Layer, error) {
	layer, err := tarball.LayerFromOpener(
		func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(data)), nil },
		// Images are built once and carried to air-gapped hosts: favour size.
		tarball.WithCompressionLevel(gzip.BestCompression),
		tarball.WithCompressedCaching,
	)
	if err != nil {
		return nil, fmt.Errorf("making layer: %w", err)
	}
	return layer, nil
}

func writeEntry(tw *tar.Writer, e Entry) error {
	hdr := &tar.Header{
		Name:    strings.TrimPrefix(e.Path, "/"),
		Mode:    tarMode(e.Mode),
		ModTime: epoch,
		Uname:   "root",
		Gname:   "root",
	}
	if len(e.Xattrs) > 0 {
		hdr.Format = tar.FormatPAX
		hdr.PAXRecords = map[string]string{}
		for k, v := range e.Xattrs {
			hdr.PAXRecords["SCHILY.xattr."+k] = v
		}
	}
	var data []byte
	switch {
	case e.Mode.IsDir():
		hdr.Typeflag, hdr.Name = tar.TypeDir, hdr.Name+"/"
	case e.Mode&fs.ModeSymlink != 0:
		if e.Link == "" {
			return errors.New("symlink without a target")
		}
		hdr.Typeflag, hdr.Linkname = tar.TypeSymlink, e.Link
	case e.Mode.IsRegular():
		data = e.Data
		if e.Source != "" {
			var err error
			if data, err = os.ReadFile(e.Source); err != nil {
				return fmt.Errorf("reading source: %w", err)
			}
		}
		hdr.Typeflag, hdr.Size = tar.TypeReg, int64(len(data))
	default:
		return fmt.Errorf("unsupported file mode %v", e.Mode)
	}
	if err := tw.WriteHeader(hdr); err != nil {
		return err
	}
	_, err := tw.Write(data)
	return err
}

// tarMode turns Go's file mode bits into tar's (c_ISUID 04000, …).
func tarMode(m fs.FileMode) int64 {
	t := int64(m.Perm())
	if m&fs.ModeSetuid != 0 {
		t |= 0o4000
	}
	if m&fs.ModeSetgid != 0 {
		t |= 0o2000
	}
	if m&fs.ModeSticky != 0 {
		t |= 0o1000
	}
	return t
}

// Config is what the image runs and how.
type Config struct {
	Entrypoint   []string
	Cmd          []string
	Env          []string // default: DefaultPath only
	WorkingDir   string
	User         string   // "uid:gid"; empty means root
	ExposedPorts []string // e.g. "8080/tcp"
	Labels       map[string]string
	OS           string // default "linux"
	Architecture string // default runtime.GOARCH
}

// DefaultPath is the PATH every image gets unless Config.Env sets one.
const DefaultPath = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// Image stacks the layers on an empty image and sets its configuration.
func Image(cfg Config, layers ...v1.Layer) (v1.Image, error) {
	img, err := mutate.AppendLayers(empty.Image, layers...)
	if err != nil {
		return nil, fmt.Errorf("appending layers: %w", err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, fmt.Errorf("reading image config: %w", err)
	}
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture = orDefault(cfg.OS, "linux"), orDefault(cfg.Architecture, runtime.GOARCH)
	cf.Created = v1.Time{Time: epoch}
	for i := range cf.History {
		cf.History[i].Created = v1.Time{Time: epoch}
		cf.History[i].CreatedBy = "berth-images"
	}
	env := slices.Clone(cfg.Env)
	if !slices.ContainsFunc(env, func(s string) bool { return strings.HasPrefix(s, "PATH=") }) {
		env = append([]string{DefaultPath}, env...)
	}
	c := v1.Config{
		Entrypoint: cfg.Entrypoint,
		Cmd:        cfg.Cmd,
		Env:        env,
		WorkingDir: cfg.WorkingDir,
		User:       cfg.User,
		Labels:     cfg.Labels,
	}
	if len(cfg.ExposedPorts) > 0 {
		c.ExposedPorts = map[string]struct{}{}
		for _, p := range cfg.ExposedPorts {
			c.ExposedPorts[p] = struct{}{}
		}
	}
	cf.Config = c
	img, err = mutate.ConfigFile(img, cf)
	if err != nil {
		return nil, fmt.Errorf("setting image config: %w", err)
	}
	return img, nil
}

func orDefault(v, def string) string {
	if v == "" {
		return def
	}
	return v
}

// WriteTarball writes img as a docker-archive tarball tagged ref (which must
// name a tag, e.g. "berth.local/pause:3.10") to file. The file is replaced
// atomically, and only when its contents change, so its mtime tells when
// the image last changed. It reports whether it wrote the file.
func WriteTarball(file, ref string, img v1.Image) (changed bool, err error) {
	tag, err := name.NewTag(ref, name.StrictValidation)
	if err != nil {
		return false, fmt.Errorf("image reference %q: %w", ref, err)
	}
	tmp, err := os.CreateTemp(filepath.Dir(file), "."+filepath.Base(file)+".*")
	if err != nil {
		return false, fmt.Errorf("writing image %s: %w", ref, err)
	}
	defer os.Remove(tmp.Name()) // a no-op once renamed
	h := sha256.New()
	if err := tarball.Write(tag, img, io.MultiWriter(tmp, h)); err != nil {
		tmp.Close()
		return false, fmt.Errorf("writing image %s to %s: %w", ref, tmp.Name(), err)
	}
	if err := tmp.Close(); err != nil {
		return false, fmt.Errorf("writing image %s to %s: %w", ref, tmp.Name(), err)
	}
	if old, err := fileSHA256(file); err == nil && bytes.Equal(old, h.Sum(nil)) {
		return false, nil
	}
	if err := os.Chmod(tmp.Name(), 0o644); err != nil {
		return false, fmt.Errorf("writing image %s: %w", ref, err)
	}
	if err := os.Rename(tmp.Name(), file); err != nil {
		return false, fmt.Errorf("writing image %s: %w", ref, err)
	}
	return true, nil
}

func fileSHA256(file string) ([]byte, error) {
	f, err := os.Open(file)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return nil, err
	}
	return h.Sum(nil), nil
}
