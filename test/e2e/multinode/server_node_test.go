package multinode

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

const busybox = "berth.local/busybox:1.36"

// TestHarnessServerNode proves the harness with one berth node: a server in
// its own network and mount namespaces and cgroup root becomes Ready, is
// reachable from another node's namespace, runs a pod, and keeps it across
// a restart.
func TestHarnessServerNode(t *testing.T) {
	c := NewCluster(t)
	t0 := time.Now()
	srv := c.StartServer(t)
	cs := c.WaitNodeReady(t, srv, 3*time.Minute, time.Time{})
	t.Logf("node %s Ready %s after berth started", srv.Name, time.Since(t0).Round(100*time.Millisecond))

	ctx := context.Background()
	node, err := cs.CoreV1().Nodes().Get(ctx, srv.Name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if ip := internalIP(node); ip != srv.IP {
		t.Errorf("node %s InternalIP %q, want %s", srv.Name, ip, srv.IP)
	}

	// The public port is in the node's network namespace, on its address.
	out, err := srv.Exec(ctx, "ss", "-Hltn", "sport", "=", fmt.Sprint(APIPort))
	if err != nil || !strings.Contains(out, fmt.Sprint(APIPort)) {
		t.Errorf("nothing listens on :%d in %s: %v\n%s", APIPort, srv.NetNS, err, out)
	}
	out, err = srv.Exec(ctx, "ip", "-4", "-o", "addr", "show", "dev", NodeIface)
	if err != nil || !strings.Contains(out, srv.IP+"/24") {
		t.Errorf("%s in %s: %v\n%s", NodeIface, srv.NetNS, err, out)
	}
	// containerd's socket exists only in the node's mount namespace.
	if _, err := srv.Exec(ctx, "test", "-S", "/run/berth/containerd/containerd.sock"); err != nil {
		t.Errorf("containerd socket not in the node's mount namespace: %v", err)
	}

	// A second node's namespace (no berth on it yet) reaches the server's
	// public port across the bridge, and the serving certificate is valid
	// for the advertise address.
	peer := c.AddNode(t, "mn-agent1")
	ca := filepath.Join(srv.DataDir, "server", "tls", "server-ca.crt")
	out, err = peer.Exec(ctx, "curl", "-sS", "--max-time", "10", "--cacert", ca, c.ServerURL()+"/ping")
	if err != nil || strings.TrimSpace(out) != "pong" {
		t.Errorf("GET %s/ping from %s: %v %q", c.ServerURL(), peer.NetNS, err, out)
	}

	ns := "mn-harness"
	if _, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := cs.CoreV1().Pods(ns).Create(ctx, bbPod("bb", "", "echo hello-multinode; sleep 3600"), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	pod := waitPod(t, cs, ns, "bb", 2*time.Minute, podRunning)
	t.Logf("pod %s/%s Running on %s with IP %s", ns, pod.Name, pod.Spec.NodeName, pod.Status.PodIP)
	if pod.Spec.NodeName != srv.Name {
		t.Errorf("pod scheduled to %q, want %s", pod.Spec.NodeName, srv.Name)
	}
	cid := pod.Status.ContainerStatuses[0].ContainerID
	// The pod runs under the node's own kubelet cgroup root.
	if pids := cgroupPIDs(srv.CgroupRoot); len(pids) == 0 {
		t.Errorf("no processes under cgroup %s", srv.CgroupRoot)
	}
	// The sandbox's netns pin is in the node's own /run/netns.
	if pins, _ := filepath.Glob(filepath.Join(srv.Dir, "root", "run", "netns", "cni-*")); len(pins) == 0 {
		t.Errorf("no cni-* netns pin in the node's private /run/netns")
	}
	// None of the node's mounts propagated to the host.
	if mountinfoHas(os.Getpid(), "/"+runDirPrefix) {
		t.Errorf("a mount of the node shows in the test's (the host's) mount namespace")
	}

	// Restart: berth re-enters the same namespaces; the pod survives with
	// the same container.
	before := time.Now()
	if err := srv.Restart(); err != nil {
		t.Fatalf("restart: %v\n%s", err, srv.LogTail(40))
	}
	cs = c.WaitNodeReady(t, srv, 3*time.Minute, time.Now())
	t.Logf("node %s Ready again %s after the restart began", srv.Name, time.Since(before).Round(100*time.Millisecond))
	pod = waitPod(t, cs, ns, "bb", 2*time.Minute, podRunning)
	if got := pod.Status.ContainerStatuses[0]; got.ContainerID != cid || got.RestartCount != 0 {
		t.Errorf("after restart: container %s (restarts %d), want %s (0)", got.ContainerID, got.RestartCount, cid)
	}
}

// bbPod is a busybox pod running script; node "" leaves it to the scheduler.
func bbPod(name, node, script string) *corev1.Pod {
	zero := int64(0)
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: corev1.PodSpec{
			NodeName:                      node,
			TerminationGracePeriodSeconds: &zero,
			Containers: []corev1.Container{{
				Name: "main", Image: busybox, ImagePullPolicy: corev1.PullNever,
				Command: []string{"sh", "-c", script},
			}},
		},
	}
}

func podRunning(p *corev1.Pod) error {
	if p.Status.Phase != corev1.PodRunning {
		return fmt.Errorf("phase %s %+v", p.Status.Phase, p.Status.ContainerStatuses)
	}
	for _, cond := range p.Status.Conditions {
		if cond.Type == corev1.PodReady && cond.Status == corev1.ConditionTrue {
			return nil
		}
	}
	return fmt.Errorf("not Ready: %+v", p.Status.ContainerStatuses)
}

// waitPod polls the pod until ok accepts it; the timeout only guards hangs.
func waitPod(t *testing.T, cs kubernetes.Interface, ns, name string, timeout time.Duration, ok func(*corev1.Pod) error) *corev1.Pod {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	var last error
	for ctx.Err() == nil {
		p, err := cs.CoreV1().Pods(ns).Get(ctx, name, metav1.GetOptions{})
		if err == nil {
			if err = ok(p); err == nil {
				return p
			}
		}
		last = err
		sleep(ctx, time.Second)
	}
	t.Fatalf("pod %s/%s: %v", ns, name, last)
	return nil
}

func internalIP(n *corev1.Node) string {
	for _, a := range n.Status.Addresses {
		if a.Type == corev1.NodeInternalIP {
			return a.Address
		}
	}
	return ""
}
