package integration

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/berth-io/berth/pkg/etcd"
	"github.com/berth-io/berth/pkg/pki"
)

// TestEtcdServerJoin: a second server given --server and the server token
// of an etcd-backed server joins its etcd as a learner, is promoted, and
// sees the first server's writes; a third server with the second's node
// name is refused and the member list is unchanged.
func TestEtcdServerJoin(t *testing.T) {
	s1, c1 := newEtcdServer(t, "--node-name", "srv-a")
	s1.start()
	cs1 := s1.waitReady(120 * time.Second)
	url := "https://127.0.0.1:" + strconv.Itoa(s1.httpsPort)
	tok, err := os.ReadFile(filepath.Join(s1.dataDir, "server", "token"))
	if err != nil {
		t.Fatal(err)
	}
	joiner := func(name string) *server {
		return newServer(t, "--disable", "coredns,local-storage,metrics-server", "--node-name", name,
			"--server", url, "--token", strings.TrimSpace(string(tok)),
			"--etcd-client-port", strconv.Itoa(freePort(t)), "--etcd-peer-port", strconv.Itoa(freePort(t)))
	}
	s2 := joiner("srv-b")
	s2.start()
	cs2 := s2.waitReady(180 * time.Second)
	if !strings.Contains(s2.out.String(), "promoted to a voting member") {
		t.Errorf("the joining server did not log its promotion")
	}

	ctx := context.Background()
	members, err := etcd.Members(ctx, pki.EtcdFilesIn(filepath.Join(s1.dataDir, "server", "tls")), fmt.Sprintf("https://127.0.0.1:%d", c1))
	if err != nil {
		t.Fatal(err)
	}
	if len(members) != 2 || members[0].Learner || members[1].Learner {
		t.Fatalf("etcd members after the join: %+v, want 2 voting", members)
	}
	cm := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "from-a"}, Data: map[string]string{"k": "v"}}
	if _, err := cs1.CoreV1().ConfigMaps("default").Create(ctx, cm, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "server b sees server a's ConfigMap", func() error {
		_, err := cs2.CoreV1().ConfigMaps("default").Get(ctx, "from-a", metav1.GetOptions{})
		return err
	})

	s3 := joiner("srv-b")
	code, out := runBerth(t, 3*time.Minute, s3.argsWithConfig()...)
	if code == 0 || !strings.Contains(out, `a server named "srv-b" is already a member`) {
		t.Errorf("a second server named srv-b: exit %d, want a duplicate-name refusal:\n%s", code, tail(out, 10))
	}
	members, err = etcd.Members(ctx, pki.EtcdFilesIn(filepath.Join(s1.dataDir, "server", "tls")), fmt.Sprintf("https://127.0.0.1:%d", c1))
	if err != nil || len(members) != 2 {
		t.Errorf("members after the refused join: %+v (%v), want the same 2", members, err)
	}
}
