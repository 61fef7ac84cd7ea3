package bootstrap

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/berth-io/berth/pkg/datastore"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// TestStoreOnKine saves and loads through a real kine (SQLite) over the
// etcd v3 API, as a server does on an external datastore.
func TestStoreOnKine(t *testing.T) {
	k := &datastore.Kine{Dir: t.TempDir()}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := k.Prepare(ctx); err != nil {
		t.Fatal(err)
	}
	if err := k.Start(ctx); err != nil {
		t.Fatal(err)
	}
	defer k.Stop(context.Background())
	c, err := k.Client()
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()

	if d, err := Load(ctx, c, "tok1"); d != nil || err != nil {
		t.Fatalf("empty datastore: %v %v", d, err)
	}
	d := &Data{Files: map[string][]byte{"tls/server-ca.crt": []byte("CA")}}
	if err := Save(ctx, c, "tok1", d); err != nil {
		t.Fatal(err)
	}
	if err := Save(ctx, c, "tok1", d); !errors.Is(err, ErrExists) {
		t.Errorf("second create-only save: %v", err)
	}
	got, err := Load(ctx, c, "tok1")
	if err != nil || string(got.Files["tls/server-ca.crt"]) != "CA" {
		t.Fatalf("load: %v %v", got, err)
	}
	if _, err := Load(ctx, c, "tok2"); !errors.Is(err, ErrOtherToken) {
		t.Errorf("another token: %v", err)
	}
	// Delete works on kine (which has no plain delete).
	if err := Save(ctx, c, "tok-gone", d); err != nil {
		t.Fatal(err)
	}
	if err := Delete(ctx, c, "tok-gone"); err != nil {
		t.Fatal(err)
	}
	if _, err := Load(ctx, c, "tok-gone"); !errors.Is(err, ErrOtherToken) {
		t.Errorf("after Delete: %v", err)
	}
	if err := Delete(ctx, c, "tok-gone"); err != nil {
		t.Errorf("deleting what is gone: %v", err)
	}
	// The stored value is sealed.
	resp, err := c.Get(ctx, KeyPrefix, clientOpts()...)
	if err != nil || len(resp.Kvs) != 1 {
		t.Fatalf("raw get: %v", err)
	}
	if string(resp.Kvs[0].Value[:len(sealPrefix)]) != sealPrefix {
		t.Errorf("raw value not sealed: %q", resp.Kvs[0].Value[:20])
	}
}

func clientOpts() []clientv3.OpOption { return []clientv3.OpOption{clientv3.WithPrefix()} }
