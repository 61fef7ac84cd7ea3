package multinode

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"
)

const echoserver = "berth.local/echoserver:1.0"

// TestJoin: a server and two agents (berth-agent, one joined with the
// server token, one with a bootstrap token) in their own network
// namespaces form one cluster; pod traffic crosses flannel VXLAN between
// them; the apiserver reaches the agents' kubelets only through the
// tunnel; identities survive restarts.
func TestJoin(t *testing.T) {
	c := NewCluster(t)
	srv := c.StartServer(t)
	cs := c.WaitNodeReady(t, srv, 3*time.Minute, time.Time{})
	kc, err := c.Kubeconfig()
	if err != nil {
		t.Fatal(err)
	}
	serverToken, err := c.Token()
	if err != nil {
		t.Fatal(err)
	}
	bootstrapToken := strings.TrimSpace(berth(t, "token", "create", "--kubeconfig", kc, "-d", srv.DataDir, "--ttl", "1h", "--description", "mn-agent2"))
	if !strings.HasPrefix(bootstrapToken, "K10") {
		t.Fatalf("berth token create printed %q", bootstrapToken)
	}

	a1 := c.AddNode(t, "mn-agent1")
	a2 := c.AddNode(t, "mn-agent2")
	startAgent(t, c, a1, serverToken)
	startAgent(t, c, a2, bootstrapToken)
	c.WaitNodeReady(t, a1, 3*time.Minute, time.Time{})
	c.WaitNodeReady(t, a2, 3*time.Minute, time.Time{})

	ctx := context.Background()
	ns := "mn-join"
	if _, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	labels := map[string]string{"app": "echo"}
	for _, n := range []*Node{a1, a2} {
		if _, err := cs.CoreV1().Pods(ns).Create(ctx, echoPod("echo-"+n.Name, n.Name, labels), metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := cs.CoreV1().Pods(ns).Create(ctx, bbPod("client", a1.Name, "echo client-on-agent1; sleep 3600"), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	echo1 := waitPod(t, cs, ns, "echo-"+a1.Name, 2*time.Minute, podRunning)
	echo2 := waitPod(t, cs, ns, "echo-"+a2.Name, 2*time.Minute, podRunning)
	waitPod(t, cs, ns, "client", 2*time.Minute, podRunning)

	t.Run("pods on different nodes talk over VXLAN", func(t *testing.T) {
		for _, p := range []*corev1.Pod{echo1, echo2} {
			out := kubectlUntil(t, kc, p.Name, "exec", "-n", ns, "client", "--", "wget", "-qO-", "http://"+p.Status.PodIP+":8080/hostname")
			if strings.TrimSpace(out) != p.Name {
				t.Errorf("pod %s (%s) answered %q", p.Name, p.Status.PodIP, out)
			}
		}
		// The traffic to agent2's pod left agent1 through flannel.1.
		out, err := a1.Exec(ctx, "ip", "-d", "link", "show", "flannel.1")
		if err != nil || !strings.Contains(out, "vxlan id 1") {
			t.Errorf("no VXLAN device on %s: %v\n%s", a1.Name, err, out)
		}
	})

	t.Run("ClusterIP Service balances across both agents", func(t *testing.T) {
		svc, err := cs.CoreV1().Services(ns).Create(ctx, &corev1.Service{
			ObjectMeta: metav1.ObjectMeta{Name: "echo"},
			Spec:       corev1.ServiceSpec{Selector: labels, Ports: []corev1.ServicePort{{Port: 80, TargetPort: intstr.FromInt32(8080)}}},
		}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		script := fmt.Sprintf("for i in $(seq 40); do wget -qO- http://%s/hostname; echo; done", svc.Spec.ClusterIP)
		seen := map[string]int{}
		deadline := time.Now().Add(90 * time.Second)
		for len(seen) < 2 && time.Now().Before(deadline) {
			out, _ := kubectl(kc, "exec", "-n", ns, "client", "--", "sh", "-c", script)
			for _, line := range strings.Fields(out) {
				if strings.HasPrefix(line, "echo-") {
					seen[line]++
				}
			}
			if len(seen) < 2 {
				time.Sleep(time.Second)
			}
		}
		if seen[echo1.Name] == 0 || seen[echo2.Name] == 0 {
			t.Errorf("Service %s answered from %v; want both %s and %s", svc.Spec.ClusterIP, seen, echo1.Name, echo2.Name)
		}
	})

	t.Run("logs, exec and port-forward through the tunnel", func(t *testing.T) {
		// Cut the apiserver's direct path to the agents' kubelets.
		for _, a := range []*Node{a1, a2} {
			rule := []string{"OUTPUT", "-p", "tcp", "-d", a.IP, "--dport", "10250", "-j", "REJECT", "-m", "comment", "--comment", "berth-mn-tunnel-test"}
			if out, err := srv.Exec(ctx, append([]string{"iptables", "-I"}, rule...)...); err != nil {
				t.Fatalf("iptables: %v %s", err, out)
			}
			t.Cleanup(func() { _, _ = srv.Exec(context.Background(), append([]string{"iptables", "-D"}, rule...)...) })
			// The rule works: the server's namespace cannot reach the kubelet.
			if out, err := srv.Exec(ctx, "curl", "-sk", "--max-time", "5", "https://"+a.IP+":10250/healthz"); err == nil {
				t.Fatalf("the server still reaches %s:10250 directly: %s", a.IP, out)
			}
		}
		if out := kubectlUntil(t, kc, "client-on-agent1", "logs", "-n", ns, "client"); !strings.Contains(out, "client-on-agent1") {
			t.Errorf("logs: %q", out)
		}
		if out := kubectlUntil(t, kc, "exec-ok", "exec", "-n", ns, "client", "--", "echo", "exec-ok"); !strings.Contains(out, "exec-ok") {
			t.Errorf("exec: %q", out)
		}
		port := freePort(t)
		pf := exec.Command(berthBin, "kubectl", "--kubeconfig", kc, "port-forward", "-n", ns, "pod/"+echo2.Name, strconv.Itoa(port)+":8080")
		pf.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
		stdout, _ := pf.StdoutPipe()
		pf.Stderr = pf.Stdout
		if err := pf.Start(); err != nil {
			t.Fatal(err)
		}
		defer func() { _ = syscall.Kill(-pf.Process.Pid, syscall.SIGKILL); _ = pf.Wait() }()
		ready := make(chan string, 1)
		go func() {
			sc := bufio.NewScanner(stdout)
			var all []string
			for sc.Scan() {
				all = append(all, sc.Text())
				if strings.Contains(sc.Text(), "Forwarding from") {
					ready <- ""
				}
			}
			ready <- strings.Join(all, "\n")
		}()
		select {
		case out := <-ready:
			if out != "" {
				t.Fatalf("port-forward ended: %s", out)
			}
		case <-time.After(30 * time.Second):
			t.Fatal("port-forward did not start")
		}
		body := httpGet(t, fmt.Sprintf("http://127.0.0.1:%d/hostname", port))
		if strings.TrimSpace(body) != echo2.Name {
			t.Errorf("port-forward answered %q, want %s", body, echo2.Name)
		}
	})

	t.Run("agents listen only on the kubelet port and VXLAN", func(t *testing.T) {
		for _, a := range []*Node{a1, a2} {
			out, err := a.Exec(ctx, "ss", "-Hltnu")
			if err != nil {
				t.Fatalf("ss: %v", err)
			}
			for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
				f := strings.Fields(line)
				if len(f) < 5 {
					continue
				}
				proto, local := f[0], f[4]
				host, port, _ := net.SplitHostPort(local)
				if ip := net.ParseIP(strings.Trim(host, "[]")); ip != nil && ip.IsLoopback() {
					continue
				}
				if (proto == "tcp" && port == "10250") || (proto == "udp" && port == "8472") {
					continue
				}
				t.Errorf("%s listens on %s %s", a.Name, proto, local)
			}
		}
	})

	t.Run("agent restart rejoins with the same identity", func(t *testing.T) {
		before, err := cs.CoreV1().Nodes().Get(ctx, a1.Name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		password := readNodeFile(t, a1, "/etc/berth/node/password")
		t0 := time.Now()
		if err := a1.Restart(); err != nil {
			t.Fatal(err)
		}
		c.WaitNodeReady(t, a1, 3*time.Minute, t0)
		after, err := cs.CoreV1().Nodes().Get(ctx, a1.Name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if after.UID != before.UID {
			t.Errorf("node %s was re-created (uid %s → %s)", a1.Name, before.UID, after.UID)
		}
		if got := readNodeFile(t, a1, "/etc/berth/node/password"); got != password {
			t.Errorf("node password changed across a restart")
		}
		// The running pod was adopted, not restarted.
		p, err := cs.CoreV1().Pods(ns).Get(ctx, "client", metav1.GetOptions{})
		if err != nil || p.Status.ContainerStatuses[0].RestartCount != 0 {
			t.Errorf("client pod after agent restart: %v %+v", err, p.Status.ContainerStatuses)
		}
	})

	t.Run("server restart: agents reconnect by themselves", func(t *testing.T) {
		t0 := time.Now()
		if err := srv.Restart(); err != nil {
			t.Fatal(err)
		}
		c.WaitNodeReady(t, srv, 3*time.Minute, t0)
		// The agents' kubelets renew their leases through the load balancer
		// again (their Ready condition is only re-reported every 5 minutes).
		for _, a := range []*Node{a1, a2} {
			waitLeaseRenewed(t, cs, a.Name, t0)
			c.WaitNodeReady(t, a, time.Minute, time.Time{})
		}
		// The tunnels are back (the direct path is still cut, if the
		// subtest above ran).
		if out := kubectlUntil(t, kc, "client-on-agent1", "logs", "-n", ns, "client"); !strings.Contains(out, "client-on-agent1") {
			t.Errorf("logs after server restart: %q", out)
		}
	})

	t.Run("a deleted bootstrap token no longer joins", func(t *testing.T) {
		berth(t, "token", "delete", "--kubeconfig", kc, bootstrapToken)
		dir := t.TempDir()
		if err := os.WriteFile(filepath.Join(dir, "none.yaml"), nil, 0o600); err != nil {
			t.Fatal(err)
		}
		out, err := exec.Command(berthAgentBin, "agent", "--config", filepath.Join(dir, "none.yaml"),
			"--server", c.ServerURL(), "--token", bootstrapToken, "-d", filepath.Join(dir, "data"),
			"--node-name", "mn-latecomer", "--node-ip", "10.99.0.1",
			"--node-password-file", filepath.Join(dir, "password")).CombinedOutput()
		if err == nil || !strings.Contains(string(out), "does not exist") {
			t.Errorf("join with a deleted bootstrap token: %v\n%s", err, out)
		}
		// agent2, joined with it, keeps its node identity (its certificate).
		if !a2.Running() {
			t.Errorf("agent2 stopped: %s", a2.ExitState())
		}
	})
}

func startAgent(t *testing.T, c *Cluster, n *Node, tok string) {
	t.Helper()
	args := append([]string{"agent", "--server", c.ServerURL(), "--token", tok}, n.NodeArgs()...)
	if err := n.StartBinary(berthAgentBin, args...); err != nil {
		t.Fatal(err)
	}
}

func echoPod(name, node string, labels map[string]string) *corev1.Pod {
	zero := int64(0)
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels},
		Spec: corev1.PodSpec{
			NodeName:                      node,
			TerminationGracePeriodSeconds: &zero,
			Containers: []corev1.Container{{
				Name: "main", Image: echoserver, ImagePullPolicy: corev1.PullNever,
				Ports: []corev1.ContainerPort{{ContainerPort: 8080}},
				ReadinessProbe: &corev1.Probe{
					ProbeHandler:  corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: "/healthz", Port: intstr.FromInt32(8080)}},
					PeriodSeconds: 1,
				},
			}},
		},
	}
}

// berth runs a berth command that must succeed and returns its stdout.
func berth(t *testing.T, args ...string) string {
	t.Helper()
	cmd := exec.Command(berthBin, args...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("berth %s: %v\n%s%s", args[0], err, out, stderr.String())
	}
	return string(out)
}

func kubectl(kc string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, berthBin, append([]string{"kubectl", "--kubeconfig", kc}, args...)...).CombinedOutput()
	return string(out), err
}

// kubectlUntil retries a kubectl command until its output contains want
// (new pods and fresh tunnels may need a moment); the timeout guards hangs.
func kubectlUntil(t *testing.T, kc, want string, args ...string) string {
	t.Helper()
	return kubectlWithin(t, 90*time.Second, kc, want, args...)
}

// kubectlWithin is kubectlUntil with a bound of its own, for what waits on
// a slower mechanism.
func kubectlWithin(t *testing.T, bound time.Duration, kc, want string, args ...string) string {
	t.Helper()
	var out string
	var err error
	for deadline := time.Now().Add(bound); time.Now().Before(deadline); time.Sleep(time.Second) {
		out, err = kubectl(kc, args...)
		if err == nil && strings.Contains(out, want) {
			return out
		}
	}
	t.Fatalf("kubectl %s: %v\n%s", strings.Join(args, " "), err, out)
	return ""
}

func httpGet(t *testing.T, url string) string {
	t.Helper()
	c := &http.Client{Timeout: 10 * time.Second}
	resp, err := c.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

func freePort(t *testing.T) int {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// readNodeFile reads a file as the node sees it (its mount namespace).
func readNodeFile(t *testing.T, n *Node, path string) string {
	t.Helper()
	out, err := n.Exec(context.Background(), "cat", path)
	if err != nil {
		t.Fatalf("read %s on %s: %v", path, n.Name, err)
	}
	return out
}

// waitLeaseRenewed waits until node's kubelet renewed its Lease after t0.
func waitLeaseRenewed(t *testing.T, cs kubernetes.Interface, node string, t0 time.Time) {
	t.Helper()
	var last string
	for deadline := time.Now().Add(2 * time.Minute); time.Now().Before(deadline); time.Sleep(time.Second) {
		l, err := cs.CoordinationV1().Leases("kube-node-lease").Get(context.Background(), node, metav1.GetOptions{})
		if err == nil && l.Spec.RenewTime != nil && l.Spec.RenewTime.After(t0) {
			return
		}
		last = fmt.Sprint(err)
		if err == nil && l.Spec.RenewTime != nil {
			last = "renewed " + l.Spec.RenewTime.String()
		}
	}
	t.Fatalf("node %s did not renew its lease after %s: %s", node, t0.Format(time.RFC3339), last)
}
