package etcd

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"k8s.io/klog/v2"

	"github.com/berth-io/berth/pkg/datastore"
	"github.com/berth-io/berth/pkg/pki"
)

// migrateBatch is the number of keys read per page and written per etcd
// transaction (etcd's --max-txn-ops default is 128).
const migrateBatch = 100

// Migrate is the component that copies a SQLite datastore (kine) into etcd
// before the apiserver starts, when a server that ran on SQLite is started
// with --cluster-init. The keys and values are copied; revisions are not
// (etcd assigns its own, and the apiserver only needs them to increase).
// The SQLite file is then renamed, never deleted.
type Migrate struct {
	ServerDir string
	TLS       *pki.EtcdFiles
	ClientURL string
}

func (m *Migrate) Name() string { return "sqlite-to-etcd" }

func (m *Migrate) kine() *datastore.Kine { return &datastore.Kine{Dir: m.ServerDir} }

// Prepare refuses a corrupt SQLite file before etcd starts.
func (m *Migrate) Prepare(context.Context) error {
	path := m.kine().DBPath()
	if _, err := os.Stat(path); errors.Is(err, os.ErrNotExist) {
		return nil
	}
	return datastore.CheckSQLite(path)
}

// Start runs the whole migration; the next component (the apiserver) only
// starts once every key is in etcd. An interrupted migration is simply run
// again at the next start: the SQLite file is renamed only at the end, and
// the apiserver has not written to etcd before that.
func (m *Migrate) Start(ctx context.Context) error {
	k := m.kine()
	path := k.DBPath()
	if _, err := os.Stat(path); errors.Is(err, os.ErrNotExist) {
		return nil
	}
	klog.Infof("migrating the SQLite datastore %s into etcd (--cluster-init)", path)
	t0 := time.Now()
	n, err := m.copy(ctx, k)
	if err != nil {
		return fmt.Errorf("migrate %s into etcd (the SQLite file is unchanged; fix the cause and start again): %w", path, err)
	}
	kept, err := keepAside(path)
	if err != nil {
		return err
	}
	klog.Infof("migrated %d keys from SQLite into etcd in %s; the old database is kept, renamed, at %s (berth no longer reads it)",
		n, time.Since(t0).Round(time.Millisecond), kept)
	return nil
}

func (m *Migrate) copy(ctx context.Context, k *datastore.Kine) (int, error) {
	if err := k.Start(ctx); err != nil {
		return 0, err
	}
	defer func() {
		sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := k.Stop(sctx); err != nil {
			klog.Warningf("stop kine after migration: %v", err)
		}
	}()
	src, err := clientv3.New(clientv3.Config{
		Endpoints:   []string{k.EtcdServers()},
		DialTimeout: 10 * time.Second,
		Context:     ctx,
		Logger:      zap.NewNop(),
	})
	if err != nil {
		return 0, fmt.Errorf("connect to kine: %w", err)
	}
	defer src.Close()
	dst, err := NewClient(ctx, m.TLS, m.ClientURL)
	if err != nil {
		return 0, err
	}
	defer dst.Close()

	// Every key the apiserver (and berth) writes starts with "/"; kine's
	// own bookkeeping rows do not.
	const prefix = "/"
	end := clientv3.GetPrefixRangeEnd(prefix)
	key, copied, rev := prefix, 0, int64(0)
	for {
		opts := []clientv3.OpOption{clientv3.WithRange(end), clientv3.WithLimit(migrateBatch)}
		if rev > 0 {
			opts = append(opts, clientv3.WithRev(rev)) // one consistent view
		}
		resp, err := src.Get(ctx, key, opts...)
		if err != nil {
			return copied, fmt.Errorf("read from SQLite after %d keys: %w", copied, err)
		}
		if rev == 0 {
			rev = resp.Header.Revision
		}
		if len(resp.Kvs) > 0 {
			ops := make([]clientv3.Op, 0, len(resp.Kvs))
			for _, kv := range resp.Kvs {
				ops = append(ops, clientv3.OpPut(string(kv.Key), string(kv.Value)))
			}
			if _, err := dst.Txn(ctx).Then(ops...).Commit(); err != nil {
				return copied, fmt.Errorf("write to etcd after %d keys: %w", copied, err)
			}
			copied += len(resp.Kvs)
			key = string(resp.Kvs[len(resp.Kvs)-1].Key) + "\x00"
		}
		if !resp.More || len(resp.Kvs) == 0 {
			break
		}
	}
	// A copy that lost keys must not rename the source away.
	cnt, err := dst.Get(ctx, prefix, clientv3.WithPrefix(), clientv3.WithCountOnly())
	if err != nil {
		return copied, fmt.Errorf("count keys in etcd: %w", err)
	}
	if cnt.Count < int64(copied) {
		return copied, fmt.Errorf("etcd holds %d keys after copying %d", cnt.Count, copied)
	}
	return copied, nil
}

// keepAside renames an SQLite database (and its -wal/-shm files) to
// <path>.migrated (or .migrated-<unix time> if that exists) and returns the
// new name.
func keepAside(path string) (string, error) {
	dst := path + ".migrated"
	if _, err := os.Lstat(dst); err == nil {
		dst = fmt.Sprintf("%s.migrated-%d", path, time.Now().Unix())
	}
	// The main file first: once it is gone the migration is complete (the
	// keys are in etcd); until then a restart runs it again. kine closed
	// the database cleanly, so -wal/-shm are normally gone already.
	if err := os.Rename(path, dst); err != nil {
		return "", fmt.Errorf("keep %s aside: %w", path, err)
	}
	for _, sfx := range []string{"-wal", "-shm"} {
		if _, err := os.Stat(path + sfx); err == nil {
			if err := os.Rename(path+sfx, dst+sfx); err != nil {
				return "", fmt.Errorf("keep %s%s aside: %w", path, sfx, err)
			}
		}
	}
	return dst, nil
}

func (m *Migrate) Ready(context.Context) error { return nil }
func (m *Migrate) Stop(context.Context) error  { return nil }
