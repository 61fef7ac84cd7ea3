package etcd

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/berth-io/berth/pkg/pki"
)

func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// startMember runs a real embedded etcd member on loopback and free ports.
func startMember(t *testing.T, cfg Config) *ETCD {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	e := &ETCD{Config: cfg}
	if err := e.Prepare(ctx); err != nil {
		t.Fatal(err)
	}
	if err := e.Start(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = e.Stop(context.Background()) })
	if err := e.Ready(ctx); err != nil {
		t.Fatal(err)
	}
	return e
}

func stopMember(t *testing.T, e *ETCD) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := e.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	e.etcd = nil
}

// TestSnapshotScheduleRestore: a scheduled run saves and prunes, and a
// snapshot restored into the member brings back the state it holds, with
// the revision moved forward (so clients' cached revisions stay older).
func TestSnapshotScheduleRestore(t *testing.T) {
	dir := t.TempDir()
	serverDir := filepath.Join(dir, "server")
	files, err := pki.EnsureEtcd(pki.EtcdConfig{TLSDir: filepath.Join(serverDir, "tls"), NodeName: "n1"})
	if err != nil {
		t.Fatal(err)
	}
	cfg := Config{ServerDir: serverDir, NodeName: "n1", NodeIP: net.IPv4(127, 0, 0, 1),
		ClientPort: freePort(t), PeerPort: freePort(t), TLS: files}
	e := startMember(t, cfg)
	ctx := context.Background()
	c, err := NewClient(ctx, files, cfg.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Put(ctx, "/k", "before"); err != nil {
		t.Fatal(err)
	}

	ts := int64(1_700_000_000)
	snaps := &Snapshots{Dir: filepath.Join(serverDir, "db", "snapshots"), NodeName: "n1", TLS: files, Endpoint: cfg.ClientURL(),
		now: func() time.Time { ts++; return time.Unix(ts, 0) }}
	sched := &Scheduler{Snapshots: snaps, Cron: "0 */12 * * *", Retention: 2}
	for range 3 {
		sched.run()
	}
	list, err := List(snaps.Dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(list) != 2 || list[0].Name != "etcd-snapshot-n1-1700000002" || list[1].Name != "etcd-snapshot-n1-1700000003" {
		t.Fatalf("after 3 scheduled runs with retention 2: %+v", list)
	}
	for _, s := range list {
		if err := VerifyChecksum(s.Location); err != nil {
			t.Errorf("%s: %v", s.Name, err)
		}
	}

	if _, err := c.Put(ctx, "/k", "after"); err != nil {
		t.Fatal(err)
	}
	c.Close()
	stopMember(t, e)
	if err := Restore(cfg, list[1].Location); err != nil {
		t.Fatal(err)
	}
	old, _ := filepath.Glob(filepath.Join(serverDir, "db", "etcd-old-*"))
	if len(old) != 1 {
		t.Errorf("previous data dir not kept: %v", old)
	}

	e = startMember(t, cfg)
	c2, err := NewClient(ctx, files, cfg.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	resp, err := c2.Get(ctx, "/k")
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.Kvs) != 1 || string(resp.Kvs[0].Value) != "before" {
		t.Errorf("after restore /k = %v, want the snapshot's value", resp.Kvs)
	}
	if resp.Header.Revision < restoreRevisionBump {
		t.Errorf("revision %d after restore: not bumped past the snapshot's", resp.Header.Revision)
	}
	name, _ := os.ReadFile(filepath.Join(cfg.DBDir(), "name"))
	if !strings.HasPrefix(string(name), "n1-") {
		t.Errorf("member name file after restore: %q", name)
	}
}
