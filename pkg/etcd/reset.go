package etcd

import (
	"archive/zip"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"go.etcd.io/etcd/etcdutl/v3/snapshot"
	"k8s.io/klog/v2"

	"github.com/berth-io/berth/pkg/atomicfile"
)

// restoreRevisionBump is added to etcd's revision on restore, with the
// restored revision marked compacted (etcd's advice for Kubernetes): the
// apiserver's and its clients' cached resourceVersions are then older than
// anything etcd serves, so watches relist instead of silently missing
// changes made after the snapshot.
const restoreRevisionBump = 1_000_000_000

// ResetFlag is <server-dir>/db/reset-flag: written after a reset, so a
// server restarted with --cluster-reset still set (a systemd unit that was
// not edited) refuses instead of resetting again and again.
func ResetFlag(serverDir string) string { return filepath.Join(serverDir, "db", "reset-flag") }

// Reset re-forms a one-member cluster from this server's etcd data, first
// restoring restorePath into a new data dir when it is given. It starts
// etcd, proves it answers, stops it and returns; the caller exits.
func Reset(ctx context.Context, cfg Config, restorePath string) error {
	if _, err := os.Stat(ResetFlag(cfg.ServerDir)); err == nil {
		return fmt.Errorf("a cluster reset was already done (%s exists): remove --cluster-reset (and --cluster-reset-restore-path) and start the server normally; to reset again, delete %s first",
			ResetFlag(cfg.ServerDir), ResetFlag(cfg.ServerDir))
	}
	if restorePath != "" {
		if err := Restore(cfg, restorePath); err != nil {
			return err
		}
	} else if !IsMember(cfg.ServerDir) {
		return fmt.Errorf("--cluster-reset: %s holds no etcd member data to reset (give --cluster-reset-restore-path to restore a snapshot)", cfg.DBDir())
	}
	cfg.ForceNewCluster = true
	e := &ETCD{Config: cfg}
	if err := e.Prepare(ctx); err != nil {
		return err
	}
	if err := e.Start(ctx); err != nil {
		return err
	}
	rctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	err := e.Ready(rctx)
	cancel()
	sctx, scancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer scancel()
	if serr := e.Stop(sctx); err == nil {
		err = serr
	}
	if err != nil {
		return fmt.Errorf("etcd after reset: %w", err)
	}
	return atomicfile.Write(ResetFlag(cfg.ServerDir), []byte(time.Now().UTC().Format(time.RFC3339)+"\n"), 0o600)
}

// ClearResetFlag is called by a normal start: the reset is over.
func ClearResetFlag(serverDir string) {
	if err := os.Remove(ResetFlag(serverDir)); err == nil {
		klog.Infof("cluster reset completed earlier; removed %s", ResetFlag(serverDir))
	}
}

// Restore replaces the member's data dir with the snapshot at path, after
// checking the snapshot's checksum file. The old data dir is kept renamed;
// on any failure it is put back, so nothing has changed.
func Restore(cfg Config, path string) error {
	abs, err := filepath.Abs(path)
	if err != nil {
		return err
	}
	fi, err := os.Stat(abs)
	if err != nil {
		return fmt.Errorf("--cluster-reset-restore-path: %w", err)
	}
	if !fi.Mode().IsRegular() {
		return fmt.Errorf("--cluster-reset-restore-path %s is not a file", abs)
	}
	if err := VerifyChecksum(abs); errors.Is(err, ErrNoChecksum) {
		// A snapshot copied without its .sha256 can still be restored:
		// etcd verifies the sha256 it appends to every snapshot itself.
		klog.Warningf("%v; relying on etcd's own integrity hash inside the snapshot", err)
	} else if err != nil {
		return fmt.Errorf("refusing to restore, nothing was changed: %w", err)
	}
	name, err := cfg.MemberName()
	if err != nil {
		return err
	}
	dbDir := cfg.DBDir()
	work := filepath.Dir(dbDir)
	src := abs
	if strings.HasSuffix(abs, zipSuffix) {
		if src, err = unzipSnapshot(abs, work); err != nil {
			return fmt.Errorf("refusing to restore, nothing was changed: %w", err)
		}
		defer os.Remove(src)
	}

	old := fmt.Sprintf("%s-old-%d", dbDir, time.Now().Unix())
	if err := os.Rename(dbDir, old); err != nil {
		return fmt.Errorf("keep the current etcd data aside: %w", err)
	}
	lg := Logger(cfg.Debug)
	err = snapshot.NewV3(lg).Restore(snapshot.RestoreConfig{
		SnapshotPath:        src,
		Name:                name,
		OutputDataDir:       dbDir,
		PeerURLs:            []string{cfg.PeerURL()},
		InitialCluster:      name + "=" + cfg.PeerURL(),
		InitialClusterToken: "etcd-cluster",
		RevisionBump:        restoreRevisionBump,
		MarkCompacted:       true,
	})
	if err == nil {
		err = atomicfile.Write(cfg.nameFile(), []byte(name+"\n"), 0o600)
	}
	if err != nil {
		// Put everything back as it was.
		if rerr := os.RemoveAll(dbDir); rerr != nil {
			return fmt.Errorf("restore %s failed: %w; and removing the partial %s failed: %v (the old data is in %s)", abs, err, dbDir, rerr, old)
		}
		if rerr := os.Rename(old, dbDir); rerr != nil {
			return fmt.Errorf("restore %s failed: %w; the old data is in %s (move it back to %s): %v", abs, err, old, dbDir, rerr)
		}
		return fmt.Errorf("restore %s failed, nothing was changed: %w", abs, err)
	}
	klog.Infof("restored etcd snapshot %s into %s; the previous data is kept in %s", abs, dbDir, old)
	return nil
}

// unzipSnapshot extracts a compressed snapshot's single file into dir.
func unzipSnapshot(path, dir string) (string, error) {
	zr, err := zip.OpenReader(path)
	if err != nil {
		return "", fmt.Errorf("open compressed snapshot %s: %w", path, err)
	}
	defer zr.Close()
	if len(zr.File) != 1 {
		return "", fmt.Errorf("compressed snapshot %s holds %d files, want 1", path, len(zr.File))
	}
	r, err := zr.File[0].Open()
	if err != nil {
		return "", err
	}
	defer r.Close()
	out, err := os.CreateTemp(dir, ".restore-*")
	if err != nil {
		return "", err
	}
	if _, err := io.Copy(out, r); err != nil {
		out.Close()
		os.Remove(out.Name())
		return "", fmt.Errorf("decompress %s: %w", path, err)
	}
	if err := out.Close(); err != nil {
		os.Remove(out.Name())
		return "", err
	}
	return out.Name(), nil
}
