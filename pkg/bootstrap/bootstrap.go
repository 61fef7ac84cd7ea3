// Package bootstrap is the set of files that make a server a server of its
// cluster — the CAs and keys every server must share — and how they travel:
// read from and written to <data-dir>/server, fetched by a joining server
// over the authenticated join endpoint, or kept in an external datastore
// encrypted with a key derived from the server token (as k3s does), so a
// second server given the same token and datastore finds them.
//
// Private keys of leaves never travel: each server issues its own leaves
// from the shared CAs.
package bootstrap

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/berth-io/berth/pkg/atomicfile"
)

// File is one shared file, by its path relative to <data-dir>/server.
type File struct {
	Path string
	Mode os.FileMode
	// Required files exist on every initialised server (the Kubernetes CAs
	// and the service-account key); optional ones travel when present (the
	// embedded etcd's CAs, the secrets-encryption config).
	Required bool
	// Mutable files follow the cluster: a joining server takes the
	// cluster's copy over its own. An immutable file (a CA, a key) that
	// differs means the data dir belongs to another cluster.
	Mutable bool
}

// Files is what servers of one cluster share. Extend it here; the wire and
// storage formats carry any path.
var Files = []File{
	{Path: "tls/server-ca.crt", Mode: 0o644, Required: true},
	{Path: "tls/server-ca.key", Mode: 0o600, Required: true},
	{Path: "tls/client-ca.crt", Mode: 0o644, Required: true},
	{Path: "tls/client-ca.key", Mode: 0o600, Required: true},
	{Path: "tls/request-header-ca.crt", Mode: 0o644, Required: true},
	{Path: "tls/request-header-ca.key", Mode: 0o600, Required: true},
	{Path: "tls/service.key", Mode: 0o600, Required: true},
	{Path: "tls/service.pub", Mode: 0o644, Required: true},
	// Embedded etcd (pkg/pki EtcdFilesIn).
	{Path: "tls/etcd/server-ca.crt", Mode: 0o644},
	{Path: "tls/etcd/server-ca.key", Mode: 0o600},
	{Path: "tls/etcd/peer-ca.crt", Mode: 0o644},
	{Path: "tls/etcd/peer-ca.key", Mode: 0o600},
	// Secrets encryption at rest (k3s's name): every apiserver must read
	// what the others wrote.
	{Path: "cred/encryption-config.json", Mode: 0o600, Mutable: true},
}

// Version of the serialised form.
const Version = 1

// Data is a cluster's shared files: path (relative, slash-separated) →
// content.
type Data struct {
	Version int               `json:"version"`
	Files   map[string][]byte `json:"files"`
}

// Marshal serialises d.
func (d *Data) Marshal() ([]byte, error) {
	d.Version = Version
	return json.Marshal(d)
}

// Unmarshal parses what Marshal wrote.
func Unmarshal(b []byte) (*Data, error) {
	var d Data
	if err := json.Unmarshal(b, &d); err != nil {
		return nil, fmt.Errorf("bootstrap data: %w", err)
	}
	if d.Version != Version {
		return nil, fmt.Errorf("bootstrap data: version %d, this berth reads version %d", d.Version, Version)
	}
	return &d, nil
}

// Read collects files from serverDir. A missing required file is an error
// (the server is not initialised); missing optional files are skipped.
func Read(serverDir string, files []File) (*Data, error) {
	d := &Data{Version: Version, Files: map[string][]byte{}}
	var missing []string
	for _, f := range files {
		b, err := os.ReadFile(filepath.Join(serverDir, filepath.FromSlash(f.Path)))
		if errors.Is(err, fs.ErrNotExist) {
			if f.Required {
				missing = append(missing, f.Path)
			}
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("bootstrap data: read %w", err)
		}
		d.Files[f.Path] = b
	}
	if len(missing) > 0 {
		return nil, fmt.Errorf("bootstrap data: %s has no %s: the server is not initialised", serverDir, strings.Join(missing, ", "))
	}
	return d, nil
}

// ConflictError says a local file differs from the cluster's: the data dir
// belongs to another cluster (or the CA was replaced).
type ConflictError struct {
	Dir   string
	Paths []string
}

func (e *ConflictError) Error() string {
	return fmt.Sprintf("this server's %s differ from the cluster's (in %s): the data dir belongs to another cluster. "+
		"Nothing was changed. Move %s aside to join this cluster as a new server, or start it with the datastore and token of its own cluster",
		strings.Join(e.Paths, ", "), e.Dir, e.Dir)
}

// Plan returns the files of d that Write would write to serverDir, and a
// *ConflictError if an immutable local file differs from d's copy. Unknown
// paths in d (from a newer server) are an error: berth writes only what
// it knows.
func (d *Data) Plan(serverDir string, files []File) ([]atomicfile.File, error) {
	var (
		out       []atomicfile.File
		conflicts []string
	)
	known := map[string]File{}
	for _, f := range files {
		known[f.Path] = f
	}
	for p := range d.Files {
		if _, ok := known[p]; !ok {
			return nil, fmt.Errorf("bootstrap data holds %q, which this berth does not know (is it older than the cluster's servers?)", p)
		}
	}
	for _, f := range files {
		want, ok := d.Files[f.Path]
		if !ok {
			if f.Required {
				return nil, fmt.Errorf("bootstrap data lacks %s", f.Path)
			}
			continue
		}
		path := filepath.Join(serverDir, filepath.FromSlash(f.Path))
		have, err := os.ReadFile(path)
		switch {
		case err == nil && bytes.Equal(have, want):
			continue
		case err == nil && !f.Mutable:
			conflicts = append(conflicts, f.Path)
			continue
		case err != nil && !errors.Is(err, fs.ErrNotExist):
			return nil, fmt.Errorf("bootstrap data: %w", err)
		}
		out = append(out, atomicfile.File{Path: path, Data: want, Perm: f.Mode})
	}
	if len(conflicts) > 0 {
		slices.Sort(conflicts)
		return nil, &ConflictError{Dir: serverDir, Paths: conflicts}
	}
	return out, nil
}

// Write puts d's files into serverDir: missing ones are created, mutable
// ones replaced; nothing is written if any immutable file conflicts. It
// returns the paths written (relative).
func (d *Data) Write(serverDir string, files []File) ([]string, error) {
	plan, err := d.Plan(serverDir, files)
	if err != nil {
		return nil, err
	}
	var written []string
	for _, f := range plan {
		if err := os.MkdirAll(filepath.Dir(f.Path), 0o700); err != nil {
			return nil, fmt.Errorf("bootstrap data: %w", err)
		}
		rel, _ := filepath.Rel(serverDir, f.Path)
		written = append(written, filepath.ToSlash(rel))
	}
	if len(plan) == 0 {
		return nil, nil
	}
	if err := atomicfile.WriteAll(plan...); err != nil {
		return nil, fmt.Errorf("bootstrap data: %w", err)
	}
	return written, nil
}
