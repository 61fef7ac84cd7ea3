package integration

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/berth-io/berth/pkg/datastore"
	"github.com/berth-io/berth/pkg/etcd"
	"github.com/berth-io/berth/pkg/pki"
)

// newEtcdServer is a test server on embedded etcd with its own free etcd
// ports, so tests never touch 2379/2380. No add-ons: without a node the
// metrics APIService stays unavailable, which keeps namespaces Terminating.
func newEtcdServer(t *testing.T, extra ...string) (*server, int) {
	client := freePort(t)
	s := newServer(t, append([]string{"--cluster-init", "--disable", "coredns,local-storage,metrics-server",
		"--etcd-client-port", strconv.Itoa(client), "--etcd-peer-port", strconv.Itoa(freePort(t))}, extra...)...)
	return s, client
}

// etcdKeys reads every key under "/" (with its value) from the server's
// etcd, as the apiserver sees them, through the data dir's client cert.
func etcdKeys(t *testing.T, s *server, clientPort int) map[string][]byte {
	t.Helper()
	files := pki.EtcdFilesIn(filepath.Join(s.dataDir, "server", "tls"))
	c, err := etcd.NewClient(context.Background(), files, fmt.Sprintf("https://127.0.0.1:%d", clientPort))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	return getAll(t, c)
}

func getAll(t *testing.T, c *clientv3.Client) map[string][]byte {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	resp, err := c.Get(ctx, "/", clientv3.WithPrefix())
	if err != nil {
		t.Fatalf("read keys: %v", err)
	}
	out := map[string][]byte{}
	for _, kv := range resp.Kvs {
		out[string(kv.Key)] = kv.Value
	}
	return out
}

// sqliteKeys opens a stopped server's SQLite datastore with kine (the real
// one, in this process, on its own socket) and reads every key.
func sqliteKeys(t *testing.T, s *server) map[string][]byte {
	t.Helper()
	// kine's socket goes to a temp dir; the database is the server's file.
	db := filepath.Join(s.dataDir, "server", "db", "state.db")
	k := &datastore.Kine{Dir: t.TempDir(), Endpoint: "sqlite://" + db + "?_journal_mode=WAL&_busy_timeout=30000"}
	ctx := context.Background()
	if err := k.Start(ctx); err != nil {
		t.Fatal(err)
	}
	defer func() {
		sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		_ = k.Stop(sctx)
	}()
	c, err := clientv3.New(clientv3.Config{Endpoints: []string{k.EtcdServers()}, DialTimeout: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	return getAll(t, c)
}

func createConfigMaps(t *testing.T, cs kubernetes.Interface, ns string, n int) {
	t.Helper()
	ctx := context.Background()
	if _, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	for i := range n {
		cm := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("cm-%d", i)}, Data: map[string]string{"i": strconv.Itoa(i)}}
		if _, err := cs.CoreV1().ConfigMaps(ns).Create(ctx, cm, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
}

// TestEtcdMigrateFromSQLite: a server that ran on SQLite, restarted with
// --cluster-init, has every key in etcd (count before = after, values
// equal), keeps the SQLite file renamed, and says where.
func TestEtcdMigrateFromSQLite(t *testing.T) {
	s := newServer(t)
	s.start()
	cs := s.waitReady(90 * time.Second)
	createConfigMaps(t, cs, "migrate-me", 25)
	if code, _ := s.stop(60 * time.Second); code != 0 {
		t.Fatalf("SQLite server exited %d", code)
	}
	before := sqliteKeys(t, s)
	if len(before) < 100 {
		t.Fatalf("only %d keys in SQLite; the server should have written its bootstrap objects", len(before))
	}

	// --cluster-init from the environment and the etcd ports from the
	// config file, as a user's unit and config.yaml would give them.
	client := freePort(t)
	s.env = []string{"BERTH_CLUSTER_INIT=true"}
	s.configYAML = fmt.Sprintf("etcd-client-port: %d\netcd-peer-port: %d\n", client, freePort(t))
	s.start()
	cs = s.waitReady(120 * time.Second)

	m := regexp.MustCompile(`migrated (\d+) keys from SQLite into etcd .*kept, renamed, at (\S+)`).FindStringSubmatch(s.out.String())
	if m == nil {
		t.Fatalf("no migration log line:\n%s", tail(s.out.String(), 40))
	}
	if n, _ := strconv.Atoi(m[1]); n != len(before) {
		t.Errorf("migrated %d keys, SQLite held %d", n, len(before))
	}
	db := filepath.Join(s.dataDir, "server", "db", "state.db")
	if m[2] != db+".migrated" {
		t.Errorf("old database kept at %s, want %s.migrated", m[2], db)
	}
	if _, err := os.Stat(db + ".migrated"); err != nil {
		t.Errorf("old database not kept: %v", err)
	}
	if _, err := os.Stat(db); !os.IsNotExist(err) {
		t.Errorf("%s still in place after migration (err %v)", db, err)
	}

	// Every key is there; keys nothing has rewritten since keep their value.
	after := etcdKeys(t, s, client)
	missing, same := 0, 0
	for k, v := range before {
		got, ok := after[k]
		if !ok {
			missing++
			t.Errorf("key %s not migrated", k)
			continue
		}
		if bytes.Equal(got, v) {
			same++
		}
	}
	if missing == 0 && same < len(before)/2 {
		t.Errorf("only %d of %d values unchanged after migration", same, len(before))
	}
	for i := range 25 {
		k := fmt.Sprintf("/registry/configmaps/migrate-me/cm-%d", i)
		if !bytes.Equal(after[k], before[k]) {
			t.Errorf("%s differs after migration", k)
		}
	}
	cms, err := cs.CoreV1().ConfigMaps("migrate-me").List(context.Background(), metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, cm := range cms.Items {
		if strings.HasPrefix(cm.Name, "cm-") {
			n++
		}
	}
	if n != 25 {
		t.Errorf("%d of the 25 ConfigMaps in migrate-me through the API", n)
	}
	// Leader election is on for etcd (off on SQLite).
	eventually(t, "kube-scheduler leader-election Lease on etcd", func() error {
		_, err := cs.CoordinationV1().Leases("kube-system").Get(context.Background(), "kube-scheduler", metav1.GetOptions{})
		return err
	})
}

// TestEtcdSnapshotRestore: snapshots are saved with size and checksum,
// a full snapshot dir fails cleanly, a tampered snapshot is refused, and a
// restore brings back a deleted namespace.
func TestEtcdSnapshotRestore(t *testing.T) {
	s, client := newEtcdServer(t)
	s.start()
	cs := s.waitReady(120 * time.Second)
	ctx := context.Background()
	createConfigMaps(t, cs, "keep-me", 3)
	// Snapshot commands read the server's config file and flags, as a user's would.
	snap := func(args ...string) (int, string) {
		return runBerth(t, 2*time.Minute, append([]string{"etcd-snapshot", args[0], "--config", s.configPath(),
			"-d", s.dataDir, "--etcd-client-port", strconv.Itoa(client)}, args[1:]...)...)
	}

	code, out := snap("save", "--name", "before")
	if code != 0 {
		t.Fatalf("etcd-snapshot save: exit %d\n%s", code, out)
	}
	path := regexp.MustCompile(`saved snapshot (\S+) `).FindStringSubmatch(out)
	if path == nil {
		t.Fatalf("no snapshot path in %q", out)
	}
	file := path[1]
	if !strings.HasPrefix(filepath.Base(file), "before-") {
		t.Errorf("snapshot name %s does not start with the --name", file)
	}
	if _, err := os.Stat(filepath.Join(filepath.Dir(file), "."+filepath.Base(file)+".part")); err == nil {
		t.Errorf("partial file left beside %s", file)
	}

	t.Run("ls json lists size and sha256", func(t *testing.T) {
		code, out := snap("ls", "-o", "json")
		if code != 0 {
			t.Fatalf("ls: exit %d\n%s", code, out)
		}
		var list []etcd.SnapshotInfo
		if err := json.Unmarshal([]byte(out[strings.Index(out, "["):]), &list); err != nil {
			t.Fatalf("ls -o json: %v\n%s", err, out)
		}
		b, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		sum := sha256.Sum256(b)
		if len(list) != 1 || list[0].Location != file || list[0].Size != int64(len(b)) || list[0].SHA256 != hex.EncodeToString(sum[:]) {
			t.Errorf("ls -o json = %+v, want %s, %d bytes, sha256 %x", list, file, len(b), sum)
		}
	})

	t.Run("full snapshot dir fails cleanly", func(t *testing.T) {
		if os.Geteuid() != 0 {
			t.Skip("needs root to mount a tiny tmpfs")
		}
		dir := t.TempDir()
		if err := syscall.Mount("tmpfs", dir, "tmpfs", 0, "size=64k,mode=0700"); err != nil {
			t.Skipf("mount tmpfs: %v", err)
		}
		t.Cleanup(func() { _ = syscall.Unmount(dir, syscall.MNT_DETACH) })
		code, out := snap("save", "--etcd-snapshot-dir", dir)
		if code == 0 || !strings.Contains(out, "no space left on device") || !strings.Contains(out, "cluster is not affected") {
			t.Errorf("save into a full dir: exit %d, want a failure naming the cause:\n%s", code, out)
		}
		if ents, _ := os.ReadDir(dir); len(ents) != 0 {
			t.Errorf("files left in the full dir: %v", ents)
		}
		if _, err := cs.CoreV1().Namespaces().Get(ctx, "keep-me", metav1.GetOptions{}); err != nil {
			t.Errorf("cluster unusable after a failed snapshot: %v", err)
		}
	})

	// Delete the namespace, and wait until it is really gone.
	if err := cs.CoreV1().Namespaces().Delete(ctx, "keep-me", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "namespace keep-me deleted", func() error {
		_, err := cs.CoreV1().Namespaces().Get(ctx, "keep-me", metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			return nil
		}
		return fmt.Errorf("still there (%v)", err)
	})
	if code, _ := s.stop(60 * time.Second); code != 0 {
		t.Fatalf("server exited %d", code)
	}
	dbDir := filepath.Join(s.dataDir, "server", "db")
	reset := func(extra ...string) (int, string) {
		return runBerth(t, 3*time.Minute, append(s.args(), append([]string{"--cluster-reset"}, extra...)...)...)
	}

	t.Run("tampered snapshot refused", func(t *testing.T) {
		bad := filepath.Join(t.TempDir(), filepath.Base(file))
		b, _ := os.ReadFile(file)
		b[len(b)/2] ^= 0xff
		writeFile(t, bad, b)
		sum, _ := os.ReadFile(file + etcd.ChecksumSuffix)
		writeFile(t, bad+etcd.ChecksumSuffix, sum)
		before := snapshotFiles(t, dbDir)
		code, out := reset("--cluster-reset-restore-path", bad)
		if code == 0 || !strings.Contains(out, "damaged or altered") || !strings.Contains(out, "nothing was changed") {
			t.Errorf("restore of a tampered snapshot: exit %d, want refusal:\n%s", code, tail(out, 10))
		}
		if after := snapshotFiles(t, dbDir); !equalMaps(before, after) {
			t.Errorf("the db dir changed after a refused restore")
		}
	})

	code, out = reset("--cluster-reset-restore-path", file)
	if code != 0 || !strings.Contains(out, "Next steps") || !strings.Contains(out, "Remove --cluster-reset") {
		t.Fatalf("restore: exit %d\n%s", code, tail(out, 20))
	}
	if old, _ := filepath.Glob(filepath.Join(dbDir, "etcd-old-*")); len(old) != 1 {
		t.Errorf("old etcd data not kept aside: %v", old)
	}
	if code, out := reset(); code == 0 || !strings.Contains(out, "already done") {
		t.Errorf("a second --cluster-reset after a reset: exit %d, want a refusal:\n%s", code, tail(out, 5))
	}

	// Started again (still with --cluster-init: a no-op on a member).
	s.start()
	cs = s.waitReady(120 * time.Second)
	if !strings.Contains(s.out.String(), "already an etcd member") {
		t.Errorf("--cluster-init on an existing member did not say it is a no-op")
	}
	if _, err := cs.CoreV1().ConfigMaps("keep-me").Get(ctx, "cm-2", metav1.GetOptions{}); err != nil {
		t.Errorf("namespace keep-me not back after restore: %v", err)
	}
	if _, err := os.Stat(filepath.Join(dbDir, "reset-flag")); !os.IsNotExist(err) {
		t.Errorf("reset-flag not cleared by a normal start (%v)", err)
	}
}
