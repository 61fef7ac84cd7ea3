package multinode

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/berth-io/berth/pkg/loadbalancer"
	"github.com/berth-io/berth/test/dbtest"
)

// TestHAExternalDatastore: two servers (control plane only) on one real
// PostgreSQL, started with the same token and no --server; an agent joined
// to the first learns the second from the kubernetes Service's endpoints,
// and when the first server stops it stays Ready through the second. The
// deploy and NodeHosts controllers run on one server at a time (the Lease
// kube-system/berth), and move when their server stops.
func TestHAExternalDatastore(t *testing.T) {
	c := NewCluster(t)
	db, err := dbtest.StartPostgresOn(gatewayIP, "ha-db-pw-3e9d")
	if errors.Is(err, dbtest.ErrMissing) && !dbtest.Required() {
		t.Skipf("%v", err) // `make deps` installs it; the Makefile requires it
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(db.Stop)
	const tok = "ha-cluster-token-8c1f"
	shared := []string{"--datastore-endpoint", db.Endpoint("berth"), "--token", tok, "--disable-agent"}

	s1 := c.StartServer(t, shared...)
	cs1 := waitServer(t, c, s1, 3*time.Minute)
	s2 := c.AddNode(t, "mn-server2")
	args := append([]string{"server"}, s2.NodeArgs()...)
	args = append(args, "--advertise-address", s2.IP, "--write-kubeconfig", s2.Kubeconfig,
		"--disable", "coredns,local-storage,metrics-server")
	if err := s2.Start(append(args, shared...)...); err != nil {
		t.Fatal(err)
	}
	cs2 := waitServer(t, c, s2, 3*time.Minute)
	ctx := context.Background()

	addr1, addr2 := s1.IP+":6443", s2.IP+":6443"
	waitUntil(t, time.Minute, "both servers in the kubernetes endpoints", func() error {
		got, err := endpointAddrs(ctx, cs2)
		if err == nil && !slices.Equal(got, sorted(addr1, addr2)) {
			err = fmt.Errorf("endpoints %v", got)
		}
		return err
	})
	holder := func(cs kubernetes.Interface) (string, error) {
		l, err := cs.CoordinationV1().Leases("kube-system").Get(ctx, "berth", metav1.GetOptions{})
		if err != nil {
			return "", err
		}
		if l.Spec.HolderIdentity == nil || *l.Spec.HolderIdentity == "" {
			return "", errors.New("no holder")
		}
		return *l.Spec.HolderIdentity, nil
	}
	var first string
	waitUntil(t, time.Minute, "a leader for the deploy and NodeHosts controllers", func() (err error) {
		first, err = holder(cs1)
		return err
	})
	leaders := 0
	for _, n := range []*Node{s1, s2} {
		if strings.Contains(n.LogTail(2000), "berth: this server") {
			leaders++
		}
	}
	if leaders != 1 {
		t.Errorf("%d servers say they lead; want exactly 1", leaders)
	}

	tokFile, err := os.ReadFile(filepath.Join(s1.DataDir, "server", "token"))
	if err != nil {
		t.Fatal(err)
	}
	a := c.AddNode(t, "mn-agent1")
	startAgent(t, c, a, strings.TrimSpace(string(tokFile)))
	c.WaitNodeReady(t, a, 3*time.Minute, time.Time{})
	lbState := filepath.Join(a.DataDir, "agent", "etc", "berth-agent-load-balancer.json")
	waitUntil(t, time.Minute, "the agent's load balancer to know both servers", func() error {
		servers, err := loadbalancer.Load(lbState)
		if err == nil && !(slices.Contains(servers, addr1) && slices.Contains(servers, addr2)) {
			err = fmt.Errorf("servers %v", servers)
		}
		return err
	})

	// Server 1 goes away; the agent must keep reporting through server 2.
	if code, err := s1.Stop(stopGrace); err != nil || code != 0 {
		t.Fatalf("stop %s: exit %d, %v", s1.Name, code, err)
	}
	stopped := time.Now()
	// The kubelet's heartbeat is its Lease (node status itself is posted
	// only on change or every 5 minutes): renewals after the stop went
	// through server 2.
	renewedAfter := func(t0 time.Time) error { return leaseRenewedAfter(ctx, cs2, a.Name, t0) }
	waitUntil(t, 2*time.Minute, "the agent's node lease renewed through server 2", func() error { return renewedAfter(stopped) })
	if !strings.Contains(a.LogTail(3000), "load balancer: switched to server "+addr2) {
		t.Errorf("the agent's log does not say it switched to %s", addr2)
	}
	waitUntil(t, time.Minute, "server 1 to leave the kubernetes endpoints", func() error {
		got, err := endpointAddrs(ctx, cs2)
		if err == nil && !slices.Equal(got, []string{addr2}) {
			err = fmt.Errorf("endpoints %v", got)
		}
		return err
	})
	if first != "" && strings.HasPrefix(first, s1.Name+"_") {
		waitUntil(t, time.Minute, "server 2 to take over the singleton controllers", func() error {
			h, err := holder(cs2)
			if err == nil && !strings.HasPrefix(h, s2.Name+"_") {
				err = fmt.Errorf("holder %s", h)
			}
			return err
		})
	}
	// Past the node monitor's grace period (40 s) the node is still Ready:
	// the heartbeats kept coming, not one lucky renewal.
	grace := stopped.Add(45 * time.Second)
	waitUntil(t, 3*time.Minute, "node lease renewals past the grace period", func() error { return renewedAfter(grace) })
	if err := nodeReady(ctx, cs2, a.Name, time.Time{}); err != nil {
		t.Errorf("agent after server 1 stopped: %v", err)
	}
}

// waitServer waits until n's admin kubeconfig exists and /readyz answers
// through its public address, and returns a client for it.
func waitServer(t *testing.T, c *Cluster, n *Node, timeout time.Duration) kubernetes.Interface {
	t.Helper()
	var cs kubernetes.Interface
	waitUntil(t, timeout, "server "+n.Name+" ready", func() error {
		if !n.Running() {
			t.Fatalf("berth on %s exited (%s)\n%s", n.Name, n.ExitState(), n.LogTail(60))
		}
		cfg, err := clientcmd.BuildConfigFromFlags("", n.Kubeconfig)
		if err != nil {
			return err
		}
		cfg.Host = "https://" + n.IP + ":6443"
		cfg.Timeout = 20 * time.Second
		cfg.WarningHandler = rest.NoWarnings{} // v1 Endpoints is deprecated

		cl, err := kubernetes.NewForConfig(cfg)
		if err != nil {
			return err
		}
		body, err := cl.Discovery().RESTClient().Get().AbsPath("/readyz").DoRaw(context.Background())
		if err != nil || string(body) != "ok" {
			return fmt.Errorf("readyz: %v %s", err, body)
		}
		cs = cl
		return nil
	})
	return cs
}

func endpointAddrs(ctx context.Context, cs kubernetes.Interface) ([]string, error) {
	ep, err := cs.CoreV1().Endpoints("default").Get(ctx, "kubernetes", metav1.GetOptions{})
	if err != nil {
		return nil, err
	}
	var out []string
	for _, s := range ep.Subsets {
		for _, p := range s.Ports {
			for _, a := range s.Addresses {
				out = append(out, fmt.Sprintf("%s:%d", a.IP, p.Port))
			}
		}
	}
	slices.Sort(out)
	return out, nil
}

func sorted(s ...string) []string { slices.Sort(s); return s }

// waitUntil retries f every second until it returns nil, failing the test
// with its last error after timeout.
func waitUntil(t *testing.T, timeout time.Duration, what string, f func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := f()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("waiting for %s: %v", what, err)
		}
		time.Sleep(time.Second)
	}
}
