package etcd

import (
	"context"
	"errors"
	"fmt"
	"net"
	"path/filepath"
	"testing"
	"time"

	"github.com/berth-io/berth/pkg/pki"
)

// TestJoinLearner: a second member joins as a learner, is promoted once in
// sync, and sees the first member's writes; a third with the second's node
// name is refused.
func TestJoinLearner(t *testing.T) {
	dir := t.TempDir()
	// One PKI for all members, as the bootstrap data gives a joining server.
	files, err := pki.EnsureEtcd(pki.EtcdConfig{TLSDir: filepath.Join(dir, "tls")})
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	member := func(node string) Config {
		n++
		return Config{ServerDir: filepath.Join(dir, fmt.Sprint(n)), NodeName: node, NodeIP: net.IPv4(127, 0, 0, 1),
			ClientPort: freePort(t), PeerPort: freePort(t), TLS: files}
	}
	a := member("a")
	startMember(t, a)
	ctx := context.Background()
	ca, err := NewClient(ctx, files, a.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	defer ca.Close()
	if _, err := ca.Put(ctx, "/k", "from-a"); err != nil {
		t.Fatal(err)
	}

	b := member("b")
	b.JoinURLs = []string{a.ClientURL()}
	eb := startMember(t, b) // Ready includes the promotion
	list, err := ca.MemberList(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(list.Members) != 2 {
		t.Fatalf("members: %v", list.Members)
	}
	for _, m := range list.Members {
		if m.IsLearner {
			t.Errorf("member %s still a learner after Ready", m.Name)
		}
	}
	if eb.etcd.Server.IsLearner() {
		t.Errorf("b reports itself a learner")
	}
	cb, err := NewClient(ctx, files, b.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	defer cb.Close()
	resp, err := cb.Get(ctx, "/k")
	if err != nil || len(resp.Kvs) != 1 || string(resp.Kvs[0].Value) != "from-a" {
		t.Errorf("b reads /k = %v, %v", resp, err)
	}

	dup := member("b")
	dup.JoinURLs = []string{a.ClientURL()}
	e := &ETCD{Config: dup}
	sctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	err = e.Start(sctx)
	var de *DuplicateMemberError
	if !errors.As(err, &de) {
		t.Fatalf("a second server named b: %v, want a duplicate-member refusal", err)
	}
	if list, _ := ca.MemberList(ctx); len(list.Members) != 2 {
		t.Errorf("the refused join changed the member list: %v", list.Members)
	}
}
