package datastore

import (
	"context"
	"strconv"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"k8s.io/klog/v2"
)

// nudgeInterval is how often a server on a shared SQL database writes its
// nudge key (see nudge). The apiserver waits up to 3 s for its watch cache
// to catch up before it fails a consistent read, so this stays well below.
const nudgeInterval = 2 * time.Second

// NudgeKeyPrefix holds one small key per server (its node name), rewritten
// every nudgeInterval on a shared PostgreSQL or MySQL datastore.
const NudgeKeyPrefix = "/berth/kine-nudge/"

// sharesSQL tells whether the endpoint is a PostgreSQL or MySQL database,
// which several servers may share through their own kine.
func (k *Kine) sharesSQL() bool {
	for _, p := range []string{"postgres://", "postgresql://", "mysql://"} {
		if strings.HasPrefix(k.Endpoint, p) {
			return true
		}
	}
	return false
}

// nudge works around a kine (v0.17) race on a database several servers
// share. kine answers the apiserver's watch-progress requests with a
// revision it keeps in memory; a write through this kine sets it ahead of
// kine's poll loop, and when the poll loop then passes that revision inside
// one batch (another server wrote meanwhile) it stops updating it until the
// next write through this kine. The apiserver's watch caches then wait for
// progress that never comes ("Too large resource version"), and a server
// that is starting, which writes nothing until those caches are ready, never
// becomes ready. Any write through this kine moves the revision to the
// database's latest again, so the server keeps writing one small key.
func (k *Kine) nudge(ctx context.Context) {
	c, err := k.Client()
	if err != nil {
		klog.ErrorS(err, "kine revision nudge disabled")
		return
	}
	defer c.Close()
	key := NudgeKeyPrefix + k.NodeName
	t := time.NewTicker(nudgeInterval)
	defer t.Stop()
	failing := false
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		err := touch(ctx, c, key)
		switch {
		case err != nil && ctx.Err() == nil && !failing:
			klog.InfoS("kine revision nudge failed; retrying", "err", err)
			failing = true
		case err == nil && failing:
			klog.InfoS("kine revision nudge works again")
			failing = false
		}
	}
}

// touch rewrites key with the transactions kine implements (create if
// absent, else update on the read revision).
func touch(ctx context.Context, kv clientv3.KV, key string) error {
	ctx, cancel := context.WithTimeout(ctx, nudgeInterval)
	defer cancel()
	resp, err := kv.Get(ctx, key)
	if err != nil {
		return err
	}
	val := strconv.FormatInt(time.Now().Unix(), 10)
	if len(resp.Kvs) == 0 {
		_, err = kv.Txn(ctx).
			If(clientv3.Compare(clientv3.ModRevision(key), "=", 0)).
			Then(clientv3.OpPut(key, val)).
			Commit()
		return err
	}
	_, err = kv.Txn(ctx).
		If(clientv3.Compare(clientv3.ModRevision(key), "=", resp.Kvs[0].ModRevision)).
		Then(clientv3.OpPut(key, val)).
		Else(clientv3.OpGet(key)).
		Commit()
	return err
}
