// Package datastore runs the store behind the apiserver: kine in-process on
// SQLite by default, or kine in front of an external database.
package datastore

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/k3s-io/kine/pkg/drivers/generic"
	"github.com/k3s-io/kine/pkg/endpoint"
	kinetls "github.com/k3s-io/kine/pkg/tls"
	sqlite3 "github.com/mattn/go-sqlite3"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

// SQLite synchronous modes berth supports. FULL is the default: with WAL,
// NORMAL can roll back the newest acknowledged writes on a power cut.
const (
	SyncFull   = "FULL"
	SyncNormal = "NORMAL"
)

// Kine is the datastore component: it serves an etcd API on a unix socket.
type Kine struct {
	// Dir is <data-dir>/server; the database lives in Dir/db/state.db.
	Dir string
	// Endpoint is --datastore-endpoint; empty means SQLite in Dir.
	Endpoint string
	// Sync is the SQLite synchronous mode for the default database.
	Sync string
	// CAFile, CertFile and KeyFile are --datastore-cafile/-certfile/
	// -keyfile: TLS to the external database or etcd.
	CAFile, CertFile, KeyFile string
	// NodeName names this server's nudge key on a shared SQL database.
	NodeName string

	cancel  context.CancelFunc
	wg      *sync.WaitGroup
	etcdURL string
}

func (k *Kine) Name() string { return "datastore" }

// SocketPath is where the apiserver finds the etcd API.
func (k *Kine) SocketPath() string { return filepath.Join(k.Dir, "kine.sock") }

// DBPath is the default SQLite database file.
func (k *Kine) DBPath() string { return filepath.Join(k.Dir, "db", "state.db") }

// EtcdServers is the value for the apiserver's --etcd-servers: kine's
// socket, or for an etcd endpoint (kine passes those through) the etcd
// URLs themselves.
func (k *Kine) EtcdServers() string {
	if k.IsEtcd() {
		return k.Endpoint
	}
	return "unix://" + k.SocketPath()
}

// IsEtcd tells whether the endpoint is an external etcd (http:// or
// https://, comma-separated), which kine does not proxy.
func (k *Kine) IsEtcd() bool {
	return strings.HasPrefix(k.Endpoint, "https://") || strings.HasPrefix(k.Endpoint, "http://")
}

// APIServerArgs are the apiserver's storage flags for this datastore.
func (k *Kine) APIServerArgs() map[string]string {
	args := map[string]string{"etcd-servers": k.EtcdServers()}
	if k.IsEtcd() {
		for flag, v := range map[string]string{"etcd-cafile": k.CAFile, "etcd-certfile": k.CertFile, "etcd-keyfile": k.KeyFile} {
			if v != "" {
				args[flag] = v
			}
		}
	}
	return args
}

// Client returns an etcd v3 client of the datastore (kine's socket, or the
// external etcd), for berth's own keys such as the bootstrap data. The
// datastore must have started.
func (k *Kine) Client() (*clientv3.Client, error) {
	cfg := clientv3.Config{
		Endpoints:   strings.Split(k.EtcdServers(), ","),
		DialTimeout: 10 * time.Second,
		Logger:      zap.NewNop(),
	}
	if k.IsEtcd() && (k.CAFile != "" || k.CertFile != "" || k.KeyFile != "") {
		tc, err := k.backendTLS().ClientConfig()
		if err != nil {
			return nil, fmt.Errorf("datastore TLS: %w", err)
		}
		cfg.TLS = tc
	}
	c, err := clientv3.New(cfg)
	if err != nil {
		return nil, fmt.Errorf("connect to the datastore %s: %w", Redact(k.EtcdServers()), err)
	}
	return c, nil
}

func (k *Kine) backendTLS() kinetls.Config {
	return kinetls.Config{CAFile: k.CAFile, CertFile: k.CertFile, KeyFile: k.KeyFile}
}

// IsSQLite tells whether the datastore is an SQLite file kine opens itself;
// only then is leader election pointless (one server, one writer).
func (k *Kine) IsSQLite() bool {
	return k.Endpoint == "" || strings.HasPrefix(k.Endpoint, "sqlite://")
}

func (k *Kine) endpoint() (string, error) {
	if k.Endpoint != "" {
		return k.Endpoint, nil
	}
	mode := strings.ToUpper(k.Sync)
	if mode == "" {
		mode = SyncFull
	}
	if mode != SyncFull && mode != SyncNormal {
		return "", fmt.Errorf("sqlite synchronous mode %q: want FULL or NORMAL", k.Sync)
	}
	q := url.Values{}
	q.Set("_journal_mode", "WAL")
	q.Set("_busy_timeout", "30000")
	q.Set("_synchronous", mode)
	q.Set("_txlock", "immediate")
	q.Set("_stmt_cache_size", "20")
	q.Set("cache", "shared")
	return "sqlite://" + k.DBPath() + "?" + q.Encode(), nil
}

// sqlitePath returns the database file of an sqlite endpoint, or "".
func (k *Kine) sqlitePath() string {
	if k.Endpoint == "" {
		return k.DBPath()
	}
	if rest, ok := strings.CutPrefix(k.Endpoint, "sqlite://"); ok {
		path, _, _ := strings.Cut(rest, "?")
		return path
	}
	return ""
}

func (k *Kine) Prepare(ctx context.Context) error {
	if _, err := k.endpoint(); err != nil {
		return err
	}
	if k.cancel != nil {
		return nil // started early (bootstrap data)
	}
	path := k.sqlitePath()
	if path == "" {
		return k.checkDatabase(ctx)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return fmt.Errorf("create database directory: %w", err)
	}
	return CheckSQLite(path)
}

// sqliteHeader starts every SQLite 3 database file.
const sqliteHeader = "SQLite format 3\x00"

// CheckSQLite refuses a database file that is not SQLite or fails SQLite's
// own consistency check. It never modifies or removes the file: a user's
// cluster state is worth more than a server that starts.
func CheckSQLite(path string) error {
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("open datastore %s: %w", path, err)
	}
	head := make([]byte, len(sqliteHeader))
	n, err := io.ReadFull(f, head)
	f.Close()
	if n == 0 && (err == io.EOF || err == nil) {
		return nil // an empty file is a new database to SQLite
	}
	if err != nil || string(head) != sqliteHeader {
		return &CorruptError{Path: path, Reason: "the file is not an SQLite database"}
	}
	db, err := sql.Open("sqlite3", "file:"+path+"?_busy_timeout=30000")
	if err != nil {
		return fmt.Errorf("open datastore %s: %w", path, err)
	}
	defer db.Close()
	rows, err := db.Query("PRAGMA quick_check")
	if err != nil {
		return &CorruptError{Path: path, Reason: err.Error()}
	}
	defer rows.Close()
	var problems []string
	for rows.Next() {
		var s string
		if err := rows.Scan(&s); err != nil {
			return &CorruptError{Path: path, Reason: err.Error()}
		}
		if s != "ok" {
			problems = append(problems, s)
		}
	}
	if err := rows.Err(); err != nil {
		return &CorruptError{Path: path, Reason: err.Error()}
	}
	if len(problems) > 0 {
		if len(problems) > 3 {
			problems = append(problems[:3], fmt.Sprintf("and %d more", len(problems)-3))
		}
		return &CorruptError{Path: path, Reason: "quick_check: " + strings.Join(problems, "; ")}
	}
	return nil
}

// CorruptError says the datastore cannot be used and what to do about it.
type CorruptError struct{ Path, Reason string }

func (e *CorruptError) Error() string {
	return fmt.Sprintf("datastore %s is unusable (%s); berth has not started and has not changed the file. "+
		"Restore it from a backup, or move it (with any -wal and -shm files) aside to start an empty cluster", e.Path, e.Reason)
}

// Start starts kine. It may be called early (a server loads its bootstrap
// data from an external datastore before its PKI exists); the manager's
// later Start is then a no-op.
func (k *Kine) Start(context.Context) error {
	if k.cancel != nil {
		return nil
	}
	ep, err := k.endpoint()
	if err != nil {
		return err
	}
	// A stale socket from a crash would make the listen fail.
	if err := os.Remove(k.SocketPath()); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove stale socket: %w", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	k.cancel = cancel
	k.wg = &sync.WaitGroup{}
	cfg := endpoint.Config{
		Listener:         "unix://" + k.SocketPath(),
		Endpoint:         ep,
		WaitGroup:        k.wg,
		BackendTLSConfig: k.backendTLS(),
		// kine's own command-line defaults (its Config zero values are
		// not usable). The apiserver drives compaction, as with etcd.
		ConnectionPoolConfig: generic.ConnectionPoolConfig{MaxIdle: 20, MaxIdleTime: 2 * time.Minute},
		NotifyInterval:       5 * time.Second,
		EmulatedETCDVersion:  "3.6.11",
		CompactInterval:      0,
		CompactTimeout:       5 * time.Second,
		CompactMinRetain:     1000,
		CompactBatchSize:     1000,
		PollBatchSize:        500,
		PollInterval:         time.Second,
	}
	etcd, err := endpoint.Listen(ctx, cfg)
	if err != nil {
		cancel()
		return fmt.Errorf("start kine on %s: %w", Redact(ep), scrub(err, ep))
	}
	if len(etcd.Endpoints) > 0 {
		k.etcdURL = etcd.Endpoints[0]
	}
	if k.sharesSQL() {
		k.wg.Add(1)
		go func() {
			defer k.wg.Done()
			k.nudge(ctx)
		}()
	}
	return nil
}

// Ready: Listen returns once the backend is open and the socket listens.
func (k *Kine) Ready(context.Context) error { return nil }

func (k *Kine) Stop(ctx context.Context) error {
	if k.cancel == nil {
		return nil
	}
	k.cancel()
	done := make(chan struct{})
	go func() { k.wg.Wait(); close(done) }()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("kine did not stop: %w", ctx.Err())
	}
}

// Redact hides a password in a datastore URL, so it can be shown. kine's
// MySQL form (mysql://user:pw@tcp(host:3306)/db) is no valid URL for
// net/url, so the user-info part is masked by hand.
func Redact(ep string) string {
	scheme, rest, ok := strings.Cut(ep, "://")
	if !ok {
		return ep
	}
	at := strings.LastIndex(rest, "@")
	if at < 0 {
		return ep
	}
	userinfo := rest[:at]
	if user, _, hasPw := strings.Cut(userinfo, ":"); hasPw {
		return scheme + "://" + user + ":xxxxx" + rest[at:]
	}
	return ep
}

// password returns the password in a datastore URL, or "".
func password(ep string) string {
	_, rest, ok := strings.Cut(ep, "://")
	if !ok {
		return ""
	}
	at := strings.LastIndex(rest, "@")
	if at < 0 {
		return ""
	}
	_, pw, _ := strings.Cut(rest[:at], ":")
	if u, err := url.PathUnescape(pw); err == nil {
		return u
	}
	return pw
}

// scrub removes the endpoint's password from err's text, should a driver
// ever quote it.
func scrub(err error, ep string) error {
	pw := password(ep)
	if err == nil || pw == "" || !strings.Contains(err.Error(), pw) {
		return err
	}
	return errors.New(strings.ReplaceAll(err.Error(), pw, "xxxxx"))
}

// SQLiteVersion reports the linked SQLite library version.
func SQLiteVersion() string {
	v, _, _ := sqlite3.Version()
	return v
}
