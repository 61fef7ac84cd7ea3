package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/utils/ptr"
)

var imagesDir = os.Getenv("BERTH_IMAGES")

// startNode starts a server with its own node (no --disable-agent) and the
// air-gap images in place.
func startNode(dataDir string) (*proc, error) {
	if imagesDir == "" {
		return nil, fmt.Errorf("set BERTH_IMAGES to the directory `make images` wrote")
	}
	dst := filepath.Join(dataDir, "agent", "images")
	if err := os.MkdirAll(dst, 0o700); err != nil {
		return nil, err
	}
	tars, _ := filepath.Glob(filepath.Join(imagesDir, "*.tar"))
	for _, t := range tars {
		b, err := os.ReadFile(t)
		if err != nil {
			return nil, err
		}
		if err := os.WriteFile(filepath.Join(dst, filepath.Base(t)), b, 0o600); err != nil {
			return nil, err
		}
	}
	return startWith(dataDir, false)
}

// adminClient waits for the server's admin kubeconfig in dataDir (written
// once every component is ready, a moment after /readyz first answers) and
// returns a client with the given rate limit.
func adminClient(dataDir string, qps float32) (kubernetes.Interface, error) {
	kc := filepath.Join(dataDir, "admin.yaml")
	for i := 0; i < 600; i++ {
		if _, err := os.Stat(kc); err == nil {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	cfg, err := clientcmd.BuildConfigFromFlags("", kc)
	if err != nil {
		return nil, err
	}
	cfg.QPS, cfg.Burst = qps, int(qps)
	return kubernetes.NewForConfig(cfg)
}

func nodeClient(dataDir string) (kubernetes.Interface, error) { return adminClient(dataDir, 1000) }

// waitNodeReady returns the time from t0 until a node is Ready.
func waitNodeReady(p *proc, t0 time.Time) (time.Duration, error) {
	cs, err := nodeClient(p.dir)
	if err != nil {
		return 0, err
	}
	deadline := time.Now().Add(3 * time.Minute)
	for time.Now().Before(deadline) {
		select {
		case <-p.done:
			return 0, fmt.Errorf("berth exited; see %s.log", p.dir)
		default:
		}
		nodes, err := cs.CoreV1().Nodes().List(context.Background(), metav1.ListOptions{})
		if err == nil {
			for _, n := range nodes.Items {
				for _, c := range n.Status.Conditions {
					if c.Type == corev1.NodeReady && c.Status == corev1.ConditionTrue {
						return time.Since(t0), nil
					}
				}
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	return 0, fmt.Errorf("node not Ready within 3 minutes")
}

func benchNode(root string) error {
	dir := filepath.Join(root, "node")
	fresh, err := timeStarts(dir, true, startNode, waitNodeReady)
	if err != nil {
		return err
	}
	restart, err := timeStarts(dir, false, func(d string) (*proc, error) { return startWith(d, false) }, waitNodeReady)
	if err != nil {
		return err
	}
	fmt.Printf("start → node Ready, new data dir:  median %.2f s  (runs: %s)  target ≤ 4.5 s\n", median(fresh).Seconds(), fmtDurs(fresh))
	fmt.Printf("start → node Ready, restart:       median %.2f s  (runs: %s)  target ≤ 3 s\n", median(restart).Seconds(), fmtDurs(restart))
	return nil
}

// benchPods measures creation → Running for 30 busybox pods, then idle
// memory of berth, containerd and the shims, and berth's idle CPU.
func benchPods(root string) error {
	dir := filepath.Join(root, "pods")
	os.RemoveAll(dir)
	t0 := time.Now()
	p, err := startNode(dir)
	if err != nil {
		return err
	}
	defer p.stop()
	if _, err := waitNodeReady(p, t0); err != nil {
		return err
	}
	cs, err := nodeClient(dir)
	if err != nil {
		return err
	}
	ctx := context.Background()
	ns := "bench"
	if _, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
		return err
	}
	defer func() {
		_ = cs.CoreV1().Namespaces().Delete(ctx, ns, metav1.DeleteOptions{GracePeriodSeconds: ptr.To[int64](0)})
		for i := 0; i < 600; i++ {
			pods, err := cs.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{})
			if err == nil && len(pods.Items) == 0 {
				return
			}
			time.Sleep(100 * time.Millisecond)
		}
	}()
	// The default service account must exist before pods can be created.
	for i := 0; i < 300; i++ {
		if _, err := cs.CoreV1().ServiceAccounts(ns).Get(ctx, "default", metav1.GetOptions{}); err == nil {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	const n = 30
	created := map[string]time.Time{}
	for i := 0; i < n; i++ {
		name := fmt.Sprintf("p%02d", i)
		created[name] = time.Now()
		if err := createSleeper(ctx, cs, ns, name); err != nil {
			return err
		}
	}
	running := map[string]time.Duration{}
	deadline := time.Now().Add(5 * time.Minute)
	for len(running) < n && time.Now().Before(deadline) {
		pods, err := cs.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{})
		if err == nil {
			for _, pod := range pods.Items {
				if _, ok := running[pod.Name]; ok || pod.Status.Phase != corev1.PodRunning {
					continue
				}
				running[pod.Name] = time.Since(created[pod.Name])
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	if len(running) < n {
		return fmt.Errorf("only %d of %d pods Running after 5 minutes", len(running), n)
	}
	var ds []time.Duration
	for _, d := range running {
		ds = append(ds, d)
	}
	sort.Slice(ds, func(i, j int) bool { return ds[i] < ds[j] })
	p99 := ds[(len(ds)*99+99)/100-1]
	fmt.Printf("pod start (30 busybox pods, created back to back, creation → Running): p50 %.2f s, p99 %.2f s  targets p50 ≤ 0.5 s, p99 ≤ 2 s\n",
		ds[len(ds)/2].Seconds(), p99.Seconds())

	// One at a time: the latency of a single pod on an otherwise quiet node.
	var seq []time.Duration
	for i := 0; i < n; i++ {
		name := fmt.Sprintf("s%02d", i)
		t0 := time.Now()
		if err := createSleeper(ctx, cs, ns, name); err != nil {
			return err
		}
		for time.Since(t0) < time.Minute {
			pod, err := cs.CoreV1().Pods(ns).Get(ctx, name, metav1.GetOptions{})
			if err == nil && pod.Status.Phase == corev1.PodRunning {
				seq = append(seq, time.Since(t0))
				break
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	if len(seq) == n {
		sort.Slice(seq, func(i, j int) bool { return seq[i] < seq[j] })
		fmt.Printf("pod start (30 busybox pods, one at a time, creation → Running): p50 %.2f s, p99 %.2f s\n",
			seq[len(seq)/2].Seconds(), seq[(len(seq)*99+99)/100-1].Seconds())
	}

	// Idle: delete the pods, then measure the node's own processes.
	_ = cs.CoreV1().Pods(ns).DeleteCollection(ctx, metav1.DeleteOptions{GracePeriodSeconds: ptr.To[int64](0)}, metav1.ListOptions{})
	for i := 0; i < 600; i++ {
		pods, err := cs.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{})
		if err == nil && len(pods.Items) == 0 {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	time.Sleep(*idle - 60*time.Second/2)
	pid := p.cmd.Process.Pid
	c0, _ := cpuTicks(pid)
	time.Sleep(60 * time.Second / 2)
	c1, _ := cpuTicks(pid)
	var totalPss int
	for _, pr := range nodeProcesses(pid, dir) {
		m, err := smaps(pr.pid)
		if err != nil {
			continue
		}
		totalPss += m["Pss"]
		fmt.Printf("  idle %-24s pid %-7d RSS %4.0f MiB  PSS %4.0f MiB\n", pr.name, pr.pid, float64(m["Rss"])/1024, float64(m["Pss"])/1024)
	}
	fmt.Printf("node after %s idle (no pods): berth + containerd + shims PSS %.0f MiB (%.0f MB)  target ≤ 350 MB\n", idle.String(), float64(totalPss)/1024, float64(totalPss)*1024/1e6)
	fmt.Printf("berth idle CPU over 30 s: %.2f %% of a core  target ≤ 1.5 %%\n", float64(c1-c0)/100/30*100)
	return nil
}

type procInfo struct {
	pid  int
	name string
}

// nodeProcesses finds berth, its containerd and the shims started from the
// node's data dir (matched by path, never by name alone).
func nodeProcesses(berthPID int, dataDir string) []procInfo {
	out := []procInfo{{berthPID, "berth"}}
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == berthPID {
			continue
		}
		cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		if err != nil {
			continue
		}
		args := strings.Split(strings.TrimRight(string(cmdline), "\x00"), "\x00")
		if len(args) == 0 || !strings.HasPrefix(args[0], dataDir) {
			continue
		}
		out = append(out, procInfo{pid, filepath.Base(args[0])})
	}
	return out
}

// createSleeper creates a busybox pod from the preloaded image that sleeps.
func createSleeper(ctx context.Context, cs kubernetes.Interface, ns, name string) error {
	_, err := cs.CoreV1().Pods(ns).Create(ctx, &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: corev1.PodSpec{
			TerminationGracePeriodSeconds: ptr.To[int64](0),
			Containers: []corev1.Container{{Name: "c", Image: "berth.local/busybox:1.36",
				ImagePullPolicy: corev1.PullNever, Command: []string{"sleep", "3600"}}},
		},
	}, metav1.CreateOptions{})
	return err
}
