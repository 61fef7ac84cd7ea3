package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
)

var agentBin = flag.String("agent-bin", "bin/berth-agent", "the agent-only binary")

// netnsNode drives scripts/bench/netns-node.sh: one node per network
// namespace on the bbbr0 bridge.
type netnsNode struct {
	dir, name string
	idx       int
}

func (n *netnsNode) ip() string { return "10.97.0." + strconv.Itoa(n.idx) }

func netnsScript(dir string, args ...string) error {
	cmd := exec.Command("scripts/bench/netns-node.sh", args...)
	cmd.Env = append(os.Environ(), "BENCH_NETNS_DIR="+dir)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("netns-node.sh %s: %v: %s", strings.Join(args, " "), err, out)
	}
	return nil
}

func (n *netnsNode) up() error {
	_ = netnsScript(n.dir, "down", n.name) // leftovers of an interrupted run
	if err := netnsScript(n.dir, "up", n.name, strconv.Itoa(n.idx)); err != nil {
		return err
	}
	dst := filepath.Join(n.dir, n.name, "data", "agent", "images")
	if err := os.MkdirAll(dst, 0o700); err != nil {
		return err
	}
	tars, _ := filepath.Glob(filepath.Join(imagesDir, "*.tar"))
	for _, t := range tars {
		if err := exec.Command("cp", t, dst).Run(); err != nil {
			return err
		}
	}
	return nil
}

func (n *netnsNode) start(args ...string) error {
	return netnsScript(n.dir, append([]string{"start", n.name}, args...)...)
}
func (n *netnsNode) stop() error { return netnsScript(n.dir, "stop", n.name) }
func (n *netnsNode) down() error { return netnsScript(n.dir, "down", n.name) }
func (n *netnsNode) dataDir() string {
	return filepath.Join(n.dir, n.name, "data")
}
func (n *netnsNode) pid() int {
	b, _ := os.ReadFile(filepath.Join(n.dir, n.name, "pid"))
	p, _ := strconv.Atoi(strings.TrimSpace(string(b)))
	return p
}

// benchAgent measures an agent joining a running server (start → Ready,
// new data dir each time) and an idle agent's memory and CPU.
func benchAgent(root string) error {
	if imagesDir == "" {
		return fmt.Errorf("set BERTH_IMAGES to the directory `make images` wrote")
	}
	dir := filepath.Join(root, "agent")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	if err := netnsScript(dir, "bridge"); err != nil {
		return err
	}
	defer netnsScript(dir, "bridge-down") //nolint:errcheck
	srv := &netnsNode{dir: dir, name: "server", idx: 10}
	if err := srv.up(); err != nil {
		return err
	}
	defer srv.down() //nolint:errcheck
	kc := filepath.Join(dir, "admin.yaml")
	if err := srv.start(*bin, "server", "-d", srv.dataDir(), "--node-name", "bench-server",
		"--node-ip", srv.ip(), "--advertise-address", srv.ip(), "--flannel-iface", "eth0",
		"--kubelet-arg=cgroup-root=/bb-server", "--write-kubeconfig", kc, "--disable", noAddons); err != nil {
		return err
	}
	cs, err := netnsClient(kc, srv.ip())
	if err != nil {
		return err
	}
	if _, err := waitNamedNodeReady(cs, "bench-server", time.Now()); err != nil {
		return fmt.Errorf("server node: %w", err)
	}
	tokenBytes, err := os.ReadFile(filepath.Join(srv.dataDir(), "server", "token"))
	if err != nil {
		return err
	}
	tok := strings.TrimSpace(string(tokenBytes))

	const runs = 5
	var times []time.Duration
	var ag *netnsNode
	for i := 1; i <= runs; i++ {
		ag = &netnsNode{dir: dir, name: "agent" + strconv.Itoa(i), idx: 10 + i}
		if err := ag.up(); err != nil {
			return err
		}
		name := "bench-agent-" + strconv.Itoa(i)
		t0 := time.Now()
		if err := ag.start(*agentBin, "agent", "--server", "https://"+srv.ip()+":6443", "--token", tok,
			"-d", ag.dataDir(), "--node-name", name, "--node-ip", ag.ip(), "--flannel-iface", "eth0",
			"--kubelet-arg=cgroup-root=/bb-"+ag.name); err != nil {
			ag.down() //nolint:errcheck
			return err
		}
		d, err := waitNamedNodeReady(cs, name, t0)
		if err != nil {
			ag.down() //nolint:errcheck
			return fmt.Errorf("agent %d: %w (log: %s)", i, err, filepath.Join(dir, ag.name, "log"))
		}
		times = append(times, d)
		if i < runs {
			_ = ag.down()
			_ = cs.CoreV1().Nodes().Delete(context.Background(), name, metav1.DeleteOptions{})
		}
	}
	defer ag.down() //nolint:errcheck
	fmt.Printf("agent start → node Ready against a running server, new data dir: median %.2f s  (runs: %s)\n", median(times).Seconds(), fmtDurs(times))

	time.Sleep(*idle - 30*time.Second)
	pid := ag.pid()
	c0, _ := cpuTicks(pid)
	time.Sleep(30 * time.Second)
	c1, _ := cpuTicks(pid)
	var totalRss, totalPss int
	for _, p := range nodeProcesses(pid, ag.dataDir()) {
		m, err := smaps(p.pid)
		if err != nil {
			continue
		}
		totalRss += m["Rss"]
		totalPss += m["Pss"]
		fmt.Printf("  %-26s pid %-7d RSS %6.1f MiB  PSS %6.1f MiB\n", p.name, p.pid, float64(m["Rss"])/1024, float64(m["Pss"])/1024)
	}
	fmt.Printf("agent after %s idle (no pods): berth-agent + containerd RSS %.0f MiB, PSS %.0f MiB (%.0f MB)  target ≤ 150 MB PSS\n",
		idle.String(), float64(totalRss)/1024, float64(totalPss)/1024, float64(totalPss)*1024/1e6)
	fmt.Printf("agent idle CPU over 30 s: %.2f %% of a core\n", float64(c1-c0)/100/30*100)
	return nil
}

// netnsClient reads the server's admin kubeconfig and points it at the
// server's namespace address (the file names the server's own loopback).
func netnsClient(kc, ip string) (kubernetes.Interface, error) {
	for i := 0; i < 1200; i++ {
		if _, err := os.Stat(kc); err == nil {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	cfg, err := clientcmd.BuildConfigFromFlags("https://"+ip+":6443", kc)
	if err != nil {
		return nil, err
	}
	cfg.QPS, cfg.Burst = 1000, 1000
	return kubernetes.NewForConfig(cfg)
}

func waitNamedNodeReady(cs kubernetes.Interface, name string, t0 time.Time) (time.Duration, error) {
	deadline := time.Now().Add(3 * time.Minute)
	for time.Now().Before(deadline) {
		n, err := cs.CoreV1().Nodes().Get(context.Background(), name, metav1.GetOptions{})
		if err == nil {
			for _, c := range n.Status.Conditions {
				if c.Type == corev1.NodeReady && c.Status == corev1.ConditionTrue {
					return time.Since(t0), nil
				}
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	return 0, fmt.Errorf("node %s not Ready within 3 minutes", name)
}
