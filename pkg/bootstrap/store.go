package bootstrap

import (
	"context"
	"errors"
	"fmt"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// KeyPrefix is where sealed bootstrap data lives in the datastore, one key
// per token (k3s: /bootstrap/<hash>).
const KeyPrefix = "/berth/bootstrap/"

// ErrOtherToken: the datastore holds bootstrap data, but none for this token.
var ErrOtherToken = errors.New("the datastore already holds the bootstrap data of a cluster with a different token: " +
	"start this server with that cluster's token (<data-dir>/server/token on one of its servers), " +
	"or point it at another datastore")

// ErrExists: Save lost a race, another server stored its data first.
var ErrExists = errors.New("another server stored bootstrap data for this token at the same time")

// Load returns the bootstrap data stored for password, or (nil, nil) when
// the datastore holds none at all. Data under another token's key is
// ErrOtherToken; data under this token's key that does not decrypt is
// ErrWrongToken.
func Load(ctx context.Context, kv clientv3.KV, password string) (*Data, error) {
	key, err := keyName(password)
	if err != nil {
		return nil, err
	}
	resp, err := kv.Get(ctx, key)
	if err != nil {
		return nil, fmt.Errorf("read bootstrap data from the datastore: %w", err)
	}
	if len(resp.Kvs) == 0 {
		others, err := kv.Get(ctx, KeyPrefix, clientv3.WithPrefix(), clientv3.WithCountOnly())
		if err != nil {
			return nil, fmt.Errorf("read bootstrap data from the datastore: %w", err)
		}
		if others.Count > 0 {
			return nil, ErrOtherToken
		}
		return nil, nil
	}
	plain, err := Open(resp.Kvs[0].Value, password)
	if err != nil {
		return nil, err
	}
	return Unmarshal(plain)
}

// Save seals d with password and stores it if the key is still free
// (create-only, the compare kine supports: mod revision 0), so two servers starting together cannot overwrite each
// other: the loser gets ErrExists.
func Save(ctx context.Context, kv clientv3.KV, password string, d *Data) error {
	key, err := keyName(password)
	if err != nil {
		return err
	}
	plain, err := d.Marshal()
	if err != nil {
		return err
	}
	sealed, err := Seal(plain, password)
	if err != nil {
		return err
	}
	resp, err := kv.Txn(ctx).
		If(clientv3.Compare(clientv3.ModRevision(key), "=", 0)).
		Then(clientv3.OpPut(key, string(sealed))).
		Commit()
	if err != nil {
		return fmt.Errorf("store bootstrap data in the datastore: %w", err)
	}
	if !resp.Succeeded {
		return ErrExists
	}
	return nil
}

// Count returns how many tokens' bootstrap data the datastore holds.
func Count(ctx context.Context, kv clientv3.KV) (int64, error) {
	resp, err := kv.Get(ctx, KeyPrefix, clientv3.WithPrefix(), clientv3.WithCountOnly())
	if err != nil {
		return 0, fmt.Errorf("read bootstrap data from the datastore: %w", err)
	}
	return resp.Count, nil
}

// Delete removes the data stored for password (after it was re-sealed
// with a rotated token).
func Delete(ctx context.Context, kv clientv3.KV, password string) error {
	key, err := keyName(password)
	if err != nil {
		return err
	}
	// kine implements deletes only as a transaction on the key's revision
	// (what the apiserver sends), so that is what this sends too.
	resp, err := kv.Get(ctx, key)
	if err != nil {
		return fmt.Errorf("delete bootstrap data from the datastore: %w", err)
	}
	if len(resp.Kvs) == 0 {
		return nil
	}
	rev := resp.Kvs[0].ModRevision
	if _, err := kv.Txn(ctx).
		If(clientv3.Compare(clientv3.ModRevision(key), "=", rev)).
		Then(clientv3.OpDelete(key)).
		Else(clientv3.OpGet(key)).
		Commit(); err != nil {
		return fmt.Errorf("delete bootstrap data from the datastore: %w", err)
	}
	return nil
}
