package etcd

import (
	"archive/zip"
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/robfig/cron/v3"
	"k8s.io/klog/v2"

	"github.com/berth-io/berth/pkg/atomicfile"
	"github.com/berth-io/berth/pkg/pki"
)

// Snapshot file conventions (k3s's): <name>-<node>-<unix time>[.zip], plus
// berth's checksum file <file>.sha256 ("<hex>  <file>\n", sha256sum's
// format, so `sha256sum -c` verifies it too).
const (
	ChecksumSuffix = ".sha256"
	zipSuffix      = ".zip"
	partSuffix     = ".part"
	// ScheduledName prefixes the scheduled snapshots.
	ScheduledName = "etcd-snapshot"
	// OnDemandName prefixes `berth etcd-snapshot save` without --name.
	OnDemandName = "on-demand"
)

// DefaultSnapshotDir is <server-dir>/db/snapshots.
func DefaultSnapshotDir(serverDir string) string { return filepath.Join(serverDir, "db", "snapshots") }

// Snapshots saves etcd snapshots into Dir.
type Snapshots struct {
	Dir      string
	NodeName string
	Compress bool
	TLS      *pki.EtcdFiles
	// Endpoint is the member's client URL; a snapshot is one member's
	// point-in-time state, so exactly one endpoint.
	Endpoint string
	now      func() time.Time
}

// SnapshotInfo describes one snapshot file.
type SnapshotInfo struct {
	Name       string    `json:"name"`
	Location   string    `json:"location"`
	Size       int64     `json:"size"`
	CreatedAt  time.Time `json:"createdAt"`
	SHA256     string    `json:"sha256,omitempty"`
	Compressed bool      `json:"compressed"`
}

// validName: a snapshot name becomes part of a file name.
func validName(name string) error {
	if name == "" || strings.ContainsAny(name, "/\\\x00") || name == "." || name == ".." || strings.HasPrefix(name, ".") {
		return fmt.Errorf("snapshot name %q: want a plain file name (no '/', not starting with '.')", name)
	}
	return nil
}

// Save streams a snapshot from etcd into Dir and writes its checksum file.
// On any failure (a full or unwritable dir, etcd unreachable) the partial
// file is removed and the error says why; etcd itself is not affected.
func (s *Snapshots) Save(ctx context.Context, name string) (*SnapshotInfo, error) {
	if err := validName(name); err != nil {
		return nil, err
	}
	now := time.Now
	if s.now != nil {
		now = s.now
	}
	base := fmt.Sprintf("%s-%s-%d", name, s.NodeName, now().Unix())
	if s.Compress {
		base += zipSuffix
	}
	info, err := s.save(ctx, base)
	if err != nil {
		return nil, fmt.Errorf("etcd snapshot %s in %s failed (the cluster is not affected): %w", base, s.Dir, err)
	}
	return info, nil
}

func (s *Snapshots) save(ctx context.Context, base string) (_ *SnapshotInfo, err error) {
	if err := os.MkdirAll(s.Dir, 0o700); err != nil {
		return nil, err
	}
	final := filepath.Join(s.Dir, base)
	if _, err := os.Lstat(final); err == nil {
		return nil, fmt.Errorf("%s exists", final)
	}
	part := filepath.Join(s.Dir, "."+base+partSuffix)
	f, err := os.OpenFile(part, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return nil, err
	}
	defer func() {
		if f != nil {
			f.Close()
		}
		if err != nil {
			os.Remove(part)
		}
	}()

	c, err := NewClient(ctx, s.TLS, s.Endpoint)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	rc, err := c.Snapshot(ctx)
	if err != nil {
		return nil, fmt.Errorf("request snapshot from %s: %w", s.Endpoint, err)
	}
	defer rc.Close()

	h := sha256.New()
	bw := bufio.NewWriterSize(io.MultiWriter(f, h), 1<<20)
	if s.Compress {
		zw := zip.NewWriter(bw)
		w, err := zw.CreateHeader(&zip.FileHeader{Name: strings.TrimSuffix(base, zipSuffix), Method: zip.Deflate, Modified: time.Now()})
		if err != nil {
			return nil, err
		}
		if _, err := io.Copy(w, rc); err != nil {
			return nil, fmt.Errorf("write snapshot: %w", err)
		}
		if err := zw.Close(); err != nil {
			return nil, fmt.Errorf("write snapshot: %w", err)
		}
	} else if _, err := io.Copy(bw, rc); err != nil {
		return nil, fmt.Errorf("write snapshot: %w", err)
	}
	if err := bw.Flush(); err != nil {
		return nil, fmt.Errorf("write snapshot: %w", err)
	}
	if err := f.Sync(); err != nil {
		return nil, fmt.Errorf("write snapshot: %w", err)
	}
	size, _ := f.Seek(0, io.SeekCurrent)
	if err := f.Close(); err != nil {
		f = nil
		return nil, fmt.Errorf("write snapshot: %w", err)
	}
	f = nil
	sum := hex.EncodeToString(h.Sum(nil))
	// The checksum first: a snapshot file never exists without it.
	if err := atomicfile.Write(final+ChecksumSuffix, []byte(sum+"  "+base+"\n"), 0o600); err != nil {
		return nil, fmt.Errorf("write checksum: %w", err)
	}
	if err := os.Rename(part, final); err != nil {
		os.Remove(final + ChecksumSuffix)
		return nil, err
	}
	if err := atomicfile.SyncDir(s.Dir); err != nil {
		return nil, err
	}
	st, err := os.Stat(final)
	if err != nil {
		return nil, err
	}
	return &SnapshotInfo{Name: base, Location: final, Size: size, CreatedAt: st.ModTime().UTC(), SHA256: sum, Compressed: s.Compress}, nil
}

// List returns the snapshots in dir, oldest first.
func List(dir string) ([]SnapshotInfo, error) {
	ents, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("list snapshots in %s: %w", dir, err)
	}
	var out []SnapshotInfo
	for _, e := range ents {
		n := e.Name()
		if !e.Type().IsRegular() || strings.HasPrefix(n, ".") || strings.HasSuffix(n, ChecksumSuffix) {
			continue
		}
		fi, err := e.Info()
		if err != nil {
			continue // removed meanwhile
		}
		info := SnapshotInfo{Name: n, Location: filepath.Join(dir, n), Size: fi.Size(), CreatedAt: created(n, fi.ModTime()), Compressed: strings.HasSuffix(n, zipSuffix)}
		if sum, err := readChecksum(info.Location); err == nil {
			info.SHA256 = sum
		}
		out = append(out, info)
	}
	slices.SortFunc(out, func(a, b SnapshotInfo) int {
		if c := a.CreatedAt.Compare(b.CreatedAt); c != 0 {
			return c
		}
		return strings.Compare(a.Name, b.Name)
	})
	return out, nil
}

// created reads the unix time at the end of a snapshot name, else mtime.
func created(name string, mtime time.Time) time.Time {
	n := strings.TrimSuffix(name, zipSuffix)
	if i := strings.LastIndexByte(n, '-'); i >= 0 {
		if ts, err := strconv.ParseInt(n[i+1:], 10, 64); err == nil && ts > 1e9 {
			return time.Unix(ts, 0).UTC()
		}
	}
	return mtime.UTC()
}

// readChecksum returns the hex sha256 recorded beside path.
func readChecksum(path string) (string, error) {
	b, err := os.ReadFile(path + ChecksumSuffix)
	if err != nil {
		return "", err
	}
	sum, _, _ := strings.Cut(strings.TrimSpace(string(b)), " ")
	if len(sum) != sha256.Size*2 {
		return "", fmt.Errorf("%s%s does not hold a sha256", path, ChecksumSuffix)
	}
	return strings.ToLower(sum), nil
}

// ErrNoChecksum: the snapshot has no checksum file beside it.
var ErrNoChecksum = errors.New("no checksum file")

// VerifyChecksum compares path's sha256 with its checksum file.
func VerifyChecksum(path string) error {
	want, err := readChecksum(path)
	if errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("%s: %w %s%s", path, ErrNoChecksum, path, ChecksumSuffix)
	}
	if err != nil {
		return err
	}
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return fmt.Errorf("read %s: %w", path, err)
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != want {
		return fmt.Errorf("snapshot %s is damaged or altered: its sha256 is %s but %s%s records %s", path, got, path, ChecksumSuffix, want)
	}
	return nil
}

// Delete removes the named snapshots (file names in dir) and their
// checksum files. Every name is checked before anything is removed.
func Delete(dir string, names ...string) error {
	for _, n := range names {
		if err := validName(n); err != nil {
			return err
		}
		if strings.HasSuffix(n, ChecksumSuffix) {
			return fmt.Errorf("%s is a checksum file; name the snapshot itself", n)
		}
		if fi, err := os.Stat(filepath.Join(dir, n)); err != nil || !fi.Mode().IsRegular() {
			return fmt.Errorf("no snapshot %s in %s", n, dir)
		}
	}
	for _, n := range names {
		p := filepath.Join(dir, n)
		if err := os.Remove(p); err != nil {
			return fmt.Errorf("delete snapshot: %w", err)
		}
		if err := os.Remove(p + ChecksumSuffix); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("delete snapshot checksum: %w", err)
		}
	}
	return nil
}

// Prune deletes this node's snapshots named <name>-<node>-… beyond the
// newest retention, and returns what it deleted.
func Prune(dir, name, node string, retention int) ([]string, error) {
	if retention < 1 {
		return nil, fmt.Errorf("snapshot retention %d: keep at least 1", retention)
	}
	all, err := List(dir)
	if err != nil {
		return nil, err
	}
	prefix := name + "-" + node + "-"
	var mine []string
	for _, s := range all {
		rest, ok := strings.CutPrefix(s.Name, prefix)
		if !ok {
			continue
		}
		// Only <prefix><unix time>[.zip]: "etcd-snapshot" must not prune a
		// user's "etcd-snapshot-keep-…".
		if _, err := strconv.ParseInt(strings.TrimSuffix(rest, zipSuffix), 10, 64); err == nil {
			mine = append(mine, s.Name)
		}
	}
	if len(mine) <= retention {
		return nil, nil
	}
	doomed := mine[:len(mine)-retention] // List is oldest first
	return doomed, Delete(dir, doomed...)
}

// ParseSchedule parses a standard five-field cron spec (as k3s, robfig/cron).
func ParseSchedule(spec string) (cron.Schedule, error) {
	return cron.ParseStandard(spec)
}

// Scheduler is the component taking scheduled snapshots and pruning them.
type Scheduler struct {
	Snapshots *Snapshots
	Cron      string
	Retention int

	c *cron.Cron
}

func (s *Scheduler) Name() string { return "etcd-snapshots" }

func (s *Scheduler) Prepare(context.Context) error {
	if _, err := ParseSchedule(s.Cron); err != nil {
		return fmt.Errorf("--etcd-snapshot-schedule-cron %q: %w", s.Cron, err)
	}
	return nil
}

func (s *Scheduler) Start(context.Context) error {
	sched, err := ParseSchedule(s.Cron)
	if err != nil {
		return err
	}
	s.c = cron.New()
	s.c.Schedule(sched, cron.FuncJob(s.run))
	s.c.Start()
	klog.Infof("etcd snapshots scheduled (%s) into %s, keeping %d", s.Cron, s.Snapshots.Dir, s.Retention)
	return nil
}

// run takes one scheduled snapshot. A failure is logged as an error and
// the schedule goes on: the cluster itself is unaffected.
func (s *Scheduler) run() {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	info, err := s.Snapshots.Save(ctx, ScheduledName)
	if err != nil {
		klog.Errorf("scheduled %v", err)
		return
	}
	klog.Infof("etcd snapshot %s saved (%d bytes, sha256 %s)", info.Location, info.Size, info.SHA256)
	deleted, err := Prune(s.Snapshots.Dir, ScheduledName, s.Snapshots.NodeName, s.Retention)
	if err != nil {
		klog.Errorf("prune etcd snapshots: %v", err)
	}
	for _, d := range deleted {
		klog.Infof("pruned etcd snapshot %s (retention %d)", d, s.Retention)
	}
}

func (s *Scheduler) Ready(context.Context) error { return nil }

func (s *Scheduler) Stop(ctx context.Context) error {
	if s.c == nil {
		return nil
	}
	select {
	case <-s.c.Stop().Done():
		return nil
	case <-ctx.Done():
		return fmt.Errorf("a scheduled snapshot is still running: %w", ctx.Err())
	}
}
