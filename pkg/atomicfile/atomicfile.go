// Package atomicfile writes files so that readers, and the file system
// after a power cut, see either the old or the new content, never a
// truncated file: berth's keys, configs, caches and markers all go through it.
package atomicfile

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"syscall"
)

// Write replaces path with data, with mode perm from the first byte on.
func Write(path string, data []byte, perm os.FileMode) error {
	return WriteAll(File{Path: path, Data: data, Perm: perm})
}

// File is one file of a WriteAll batch.
type File struct {
	Path string
	Data []byte
	Perm os.FileMode
}

// WriteAll writes every file to a temporary file in its directory and
// fsyncs it; only once all are staged does it rename them into place, in
// order, and fsync the directories. Staging everything before the first rename keeps the window in
// which a crash leaves a key and certificate out of step down to a few
// renames, and costs one directory fsync per batch instead of one per file.
func WriteAll(files ...File) (err error) {
	tmps := make([]string, len(files))
	defer func() {
		if err != nil {
			for _, tmp := range tmps {
				if tmp != "" {
					os.Remove(tmp) // already renamed ones are gone; that is fine
				}
			}
		}
	}()
	// Stage concurrently: the fsyncs dominate and overlap well.
	errs := make([]error, len(files))
	var wg sync.WaitGroup
	for i, f := range files {
		wg.Go(func() {
			tmps[i], errs[i] = writeTemp(f)
			if errs[i] != nil {
				errs[i] = fmt.Errorf("write %s: %w", f.Path, errs[i])
			}
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return err
	}
	dirs := map[string]bool{}
	for i, f := range files {
		if err := os.Rename(tmps[i], f.Path); err != nil {
			return fmt.Errorf("write %s: %w", f.Path, err)
		}
		dirs[filepath.Dir(f.Path)] = true
	}
	for dir := range dirs {
		if err := SyncDir(dir); err != nil {
			return err
		}
	}
	return nil
}

func writeTemp(fd File) (tmp string, err error) {
	f, err := os.CreateTemp(filepath.Dir(fd.Path), "."+filepath.Base(fd.Path)+".tmp-*")
	if err != nil {
		return "", err
	}
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(f.Name())
		}
	}()
	// Set the final mode before any byte is written so that private key
	// material is never readable by others, whatever the umask.
	if err := f.Chmod(fd.Perm); err != nil {
		return "", err
	}
	if _, err := f.Write(fd.Data); err != nil {
		return "", err
	}
	if err := f.Sync(); err != nil {
		return "", err
	}
	if err := f.Close(); err != nil {
		return "", err
	}
	return f.Name(), nil
}

// SyncDir makes renames and new entries in dir durable.
func SyncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("sync directory %s: %w", dir, err)
	}
	defer d.Close()
	// Some file systems (certain FUSE and network mounts) cannot fsync a
	// directory; the rename is still atomic there, only its durability is up
	// to the file system.
	if err := d.Sync(); err != nil && !errors.Is(err, syscall.EINVAL) && !errors.Is(err, syscall.ENOTSUP) {
		return fmt.Errorf("sync directory %s: %w", dir, err)
	}
	return nil
}
