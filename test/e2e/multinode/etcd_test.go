package multinode

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/berth-io/berth/pkg/loadbalancer"
)

// clientOf is an admin clientset for server n, reached from the root
// namespace at its own address (its serving certificate names it).
func clientOf(t *testing.T, n *Node) kubernetes.Interface {
	t.Helper()
	deadline := time.Now().Add(3 * time.Minute)
	for {
		kc, err := clientcmd.LoadFromFile(n.Kubeconfig)
		if err == nil {
			for _, cl := range kc.Clusters {
				cl.Server = fmt.Sprintf("https://%s:%d", n.IP, APIPort)
			}
			rc, err := clientcmd.NewDefaultClientConfig(*kc, nil).ClientConfig()
			if err != nil {
				t.Fatal(err)
			}
			rc.Timeout = 20 * time.Second
			cs, err := kubernetes.NewForConfig(rc)
			if err != nil {
				t.Fatal(err)
			}
			return cs
		}
		if !n.Running() {
			t.Fatalf("berth on %s exited (%s)\n%s", n.Name, n.ExitState(), n.LogTail(60))
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s wrote no kubeconfig: %v\n%s", n.Name, err, n.LogTail(40))
		}
		time.Sleep(time.Second)
	}
}

// startEtcdServer starts `berth server` (control plane only: the test is
// about the datastore) on a new node, joining join unless it is empty.
func startEtcdServer(t *testing.T, c *Cluster, name, join, tok string) *Node {
	t.Helper()
	var n *Node
	args := []string{"--disable-agent", "--disable", "coredns,local-storage,metrics-server"}
	if join == "" {
		n = c.StartServer(t, append(args, "--cluster-init")...)
	} else {
		n = c.AddNode(t, name)
		a := append([]string{"server"}, n.NodeArgs()...)
		a = append(a, "--advertise-address", n.IP, "--write-kubeconfig", n.Kubeconfig, "--server", join, "--token", tok)
		if err := n.Start(append(a, args...)...); err != nil {
			t.Fatalf("start %s: %v\n%s", n.Name, err, n.LogTail(40))
		}
	}
	return n
}

// stopServer stops a server gracefully. Exit 0, or 1 when it held the
// controller-manager's lease: upstream kube-controller-manager exits 1 when
// it stops leading, also on a clean stop, unless the alpha gate
// ControllerManagerReleaseLeaderElectionLockOnExit (1.36) is on.
func stopServer(t *testing.T, n *Node) {
	t.Helper()
	code, err := n.Stop(stopGrace)
	if err != nil {
		t.Fatalf("stop %s: %v", n.Name, err)
	}
	if code == 1 && strings.Contains(n.LogTail(20), "leaderelection lost/stopped") {
		t.Logf("%s led the controller-manager and exited 1 as upstream's does", n.Name)
		return
	}
	if code != 0 {
		t.Fatalf("stop %s: exit %d\n%s", n.Name, code, n.LogTail(30))
	}
}

// putCM creates a ConfigMap. Retried after a timeout, the create may find
// its first attempt committed: that counts as written.
func putCM(ctx context.Context, cs kubernetes.Interface, name string) error {
	_, err := cs.CoreV1().ConfigMaps("default").Create(ctx, &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{})
	if apierrors.IsAlreadyExists(err) {
		return nil
	}
	return err
}

// seesAll waits until every clientset reads every named ConfigMap.
func seesAll(t *testing.T, what string, clients map[string]kubernetes.Interface, names ...string) {
	t.Helper()
	ctx := context.Background()
	deadline := time.Now().Add(2 * time.Minute)
	for {
		var missing []string
		for srv, cs := range clients {
			for _, n := range names {
				if _, err := cs.CoreV1().ConfigMaps("default").Get(ctx, n, metav1.GetOptions{}); err != nil {
					missing = append(missing, srv+":"+n)
				}
			}
		}
		if len(missing) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not visible: %v", what, missing)
		}
		time.Sleep(500 * time.Millisecond)
	}
}

// TestEtcdThreeServers: three servers on embedded etcd, each in its own
// network namespace on the default etcd ports, and an agent joined to the
// first. Writes on any server are visible on all. With the agent's own
// server stopped, writes go on through the others, the agent stays Ready
// through its load balancer, and the server catches up when it returns.
// With two stopped the last one refuses writes and logs that quorum is lost;
// when one returns, writes work again and the agent reports again.
func TestEtcdThreeServers(t *testing.T) {
	c := NewCluster(t)
	ctx := context.Background()
	s1 := startEtcdServer(t, c, "", "", "")
	cs1 := clientOf(t, s1)
	tok, err := c.Token()
	if err != nil {
		t.Fatal(err)
	}
	s2 := startEtcdServer(t, c, "mn-server2", c.ServerURL(), tok)
	cs2 := clientOf(t, s2)
	s3 := startEtcdServer(t, c, "mn-server3", c.ServerURL(), tok)
	cs3 := clientOf(t, s3)
	all := map[string]kubernetes.Interface{"s1": cs1, "s2": cs2, "s3": cs3}

	for srv, cs := range all {
		name := "written-on-" + srv
		eventually(t, "write on "+srv, func() error { return putCM(ctx, cs, name) })
	}
	seesAll(t, "writes on every server", all, "written-on-s1", "written-on-s2", "written-on-s3")

	a := c.AddNode(t, "mn-agent1")
	startAgent(t, c, a, tok)
	c.WaitNodeReady(t, a, 3*time.Minute, time.Time{})
	lbState := filepath.Join(a.DataDir, "agent", "etc", "berth-agent-load-balancer.json")
	waitUntil(t, 2*time.Minute, "the agent's load balancer to know all three servers", func() error {
		servers, err := loadbalancer.Load(lbState)
		if err == nil && len(servers) != 3 {
			err = fmt.Errorf("servers %v", servers)
		}
		return err
	})

	// One server down — the one the agent joined: the other two keep a
	// majority and the agent fails over to them.
	stopServer(t, s1)
	stopped := time.Now()
	// A write that lands while the two others settle their leader (s1 may
	// have led; etcd hands leadership over as it stops) can time out: the
	// cluster serves writes again once they have one.
	eventually(t, "a write with one of three servers down", func() error { return putCM(ctx, cs2, "while-s1-down") })
	t.Logf("first write with s1 down took %s", time.Since(stopped).Round(time.Millisecond))
	// Past the node monitor's grace period (40 s) the agent is still Ready:
	// its heartbeats (the node Lease) kept coming through s2 or s3.
	waitUntil(t, 3*time.Minute, "agent heartbeats past the grace period with s1 down", func() error {
		return leaseRenewedAfter(ctx, cs2, a.Name, stopped.Add(45*time.Second))
	})
	if err := nodeReady(ctx, cs2, a.Name, time.Time{}); err != nil {
		t.Errorf("agent with s1 down: %v", err)
	}
	if err := s1.Restart(); err != nil {
		t.Fatal(err)
	}
	cs1 = clientOf(t, s1)
	all["s1"] = cs1
	seesAll(t, "s1 caught up", all, "while-s1-down")

	// Two down: no quorum, writes refused.
	mark := len(s1.LogTail(1 << 30))
	for _, n := range []*Node{s2, s3} {
		stopServer(t, n)
	}
	wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	err = putCM(wctx, cs1, "without-quorum")
	cancel()
	if err == nil {
		t.Fatalf("a write with two of three servers down succeeded")
	}
	t.Logf("write without quorum refused: %v", err)
	waitLog(t, s1, mark, 60*time.Second, "quorum lost")

	// One returns: quorum again. Without quorum s1's controller-manager
	// cannot renew its leader lease and exits, as upstream's does, and berth
	// with it (k3s does the same); the service manager restarts it
	// (Restart=always in the installed unit), so the test does too.
	if err := s2.StartAgain(); err != nil {
		t.Fatal(err)
	}
	back := time.Now()
	restarts := 0
	waitUntil(t, 5*time.Minute, "writes after quorum returns", func() error {
		for _, n := range []*Node{s1, s2} {
			if !n.Running() {
				restarts++
				t.Logf("berth on %s exited (%s), restarting it as systemd would", n.Name, n.ExitState())
				if err := n.StartAgain(); err != nil {
					t.Fatal(err)
				}
			}
		}
		if restarts > 10 {
			t.Fatalf("servers keep exiting after quorum returned:\n%s\n%s", s1.LogTail(40), s2.LogTail(40))
		}
		wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		return putCM(wctx, clientOf(t, s1), "after-quorum-returned")
	})
	seesAll(t, "s2 sees the write after recovery", map[string]kubernetes.Interface{"s2": clientOf(t, s2)}, "after-quorum-returned", "while-s1-down")
	waitUntil(t, 3*time.Minute, "agent heartbeats after quorum returned", func() error {
		return leaseRenewedAfter(ctx, clientOf(t, s1), a.Name, back)
	})
	// The Lease is the node's heartbeat; the kubelet rewrites the Ready
	// condition only when it changes or every 5 minutes, so its time is
	// not checked here.
	waitUntil(t, 2*time.Minute, "agent Ready after quorum returned", func() error {
		return nodeReady(ctx, clientOf(t, s1), a.Name, time.Time{})
	})
}

// leaseRenewedAfter checks that node's kubelet renewed its Lease (its
// heartbeat) after t0.
func leaseRenewedAfter(ctx context.Context, cs kubernetes.Interface, node string, t0 time.Time) error {
	l, err := cs.CoordinationV1().Leases("kube-node-lease").Get(ctx, node, metav1.GetOptions{})
	if err != nil {
		return err
	}
	if l.Spec.RenewTime == nil || !l.Spec.RenewTime.After(t0) {
		return fmt.Errorf("node lease of %s last renewed %v, want after %s", node, l.Spec.RenewTime, t0.Format(time.RFC3339Nano))
	}
	return nil
}

// eventually retries fn for up to two minutes.
func eventually(t *testing.T, what string, fn func() error) {
	t.Helper()
	var err error
	for deadline := time.Now().Add(2 * time.Minute); time.Now().Before(deadline); time.Sleep(time.Second) {
		if err = fn(); err == nil {
			return
		}
	}
	t.Fatalf("%s: %v", what, err)
}

// waitLog waits until n's berth log, after its first from bytes,
// contains want.
func waitLog(t *testing.T, n *Node, from int, timeout time.Duration, want string) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !strings.Contains(n.LogTail(1 << 30)[from:], want) {
		if time.Now().After(deadline) {
			t.Fatalf("%s never logged %q:\n%s", n.Name, want, n.LogTail(30))
		}
		time.Sleep(time.Second)
	}
}
