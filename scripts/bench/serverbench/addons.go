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

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

var airgap = flag.String("airgap", "dist/artifacts/berth-airgap-images-amd64.tar.zst", "the add-ons' image bundle (make airgap)")

// benchAddons measures server start → CoreDNS available with the add-ons
// from the air-gap bundle (new data dir each run, in a network namespace),
// the bundle's size, and the add-on pods' memory after a minute idle.
func benchAddons(root string) error {
	fi, err := os.Stat(*airgap)
	if err != nil {
		return fmt.Errorf("air-gap bundle: %w (run make airgap)", err)
	}
	fmt.Printf("air-gap bundle %s: %d bytes (%.1f MiB)\n", filepath.Base(*airgap), fi.Size(), float64(fi.Size())/(1<<20))
	dir := filepath.Join(root, "addons")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	if err := netnsScript(dir, "bridge"); err != nil {
		return err
	}
	defer netnsScript(dir, "bridge-down") //nolint:errcheck
	const runs = 5
	var times []time.Duration
	for i := 1; i <= runs; i++ {
		n := &netnsNode{dir: dir, name: "addons" + strconv.Itoa(i), idx: 20 + i}
		if err := n.up(); err != nil {
			return err
		}
		if err := exec.Command("cp", *airgap, filepath.Join(n.dataDir(), "agent", "images")).Run(); err != nil {
			n.down() //nolint:errcheck
			return err
		}
		kc := filepath.Join(dir, n.name+".yaml")
		t0 := time.Now()
		if err := n.start(*bin, "server", "-d", n.dataDir(), "--node-name", n.name, "--node-ip", n.ip(),
			"--advertise-address", n.ip(), "--flannel-iface", "eth0", "--kubelet-arg=cgroup-root=/bb-"+n.name,
			"--write-kubeconfig", kc); err != nil {
			n.down() //nolint:errcheck
			return err
		}
		cs, err := netnsClient(kc, n.ip())
		if err == nil {
			var d time.Duration
			d, err = waitCoreDNS(cs, t0)
			times = append(times, d)
		}
		if err != nil {
			n.down() //nolint:errcheck
			return fmt.Errorf("run %d: %w (log: %s)", i, err, filepath.Join(dir, n.name, "log"))
		}
		if i < runs {
			_ = n.down()
			continue
		}
		defer n.down() //nolint:errcheck
		fmt.Printf("server start → CoreDNS available, new data dir: median %.2f s  (runs: %s)  target ≤ 25 s\n", median(times).Seconds(), fmtDurs(times))
		time.Sleep(*idle)
		var total, totalWS int
		for _, p := range addonProcesses("/bb-" + n.name) {
			m, err := smaps(p.pid)
			if err != nil {
				continue
			}
			ws := workingSetKiB(p.pid)
			total += m["Rss"]
			totalWS += ws
			fmt.Printf("  %-26s pid %-7d RSS %6.1f MiB  PSS %6.1f MiB  container working set %6.1f MiB\n",
				p.name, p.pid, float64(m["Rss"])/1024, float64(m["Pss"])/1024, float64(ws)/1024)
		}
		fmt.Printf("add-on pods after %s idle: RSS %.0f MiB (%.0f MB) together; working set (what kubectl top shows) %.0f MiB  target ≤ 100 MB\n",
			idle.String(), float64(total)/1024, float64(total)*1024/1e6, float64(totalWS)/1024)
	}
	return nil
}

func waitCoreDNS(cs kubernetes.Interface, t0 time.Time) (time.Duration, error) {
	for deadline := time.Now().Add(3 * time.Minute); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		d, err := cs.AppsV1().Deployments("kube-system").Get(context.Background(), "coredns", metav1.GetOptions{})
		if err == nil && d.Status.AvailableReplicas > 0 {
			return time.Since(t0), nil
		}
	}
	return 0, fmt.Errorf("CoreDNS not available within 3 minutes")
}

// addonProcesses finds the add-ons' container processes under the node's
// kubelet cgroup root (pause containers excluded).
func addonProcesses(cgroupRoot string) []procInfo {
	var out []procInfo
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		cg, err := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", pid))
		if err != nil || !strings.Contains(string(cg), ":"+cgroupRoot+"/kubepods") {
			continue
		}
		comm, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
		name := strings.TrimSpace(string(comm))
		if name == "pause" {
			continue
		}
		out = append(out, procInfo{pid, name})
	}
	return out
}

// workingSetKiB is the container's memory working set as the kubelet
// reports it: cgroup v1 usage minus inactive file pages.
func workingSetKiB(pid int) int {
	cg, err := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", pid))
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(cg), "\n") {
		f := strings.SplitN(line, ":", 3)
		if len(f) != 3 || !strings.Contains(","+f[1]+",", ",memory,") {
			continue
		}
		dir := filepath.Join("/sys/fs/cgroup/memory", f[2])
		usage, _ := os.ReadFile(filepath.Join(dir, "memory.usage_in_bytes"))
		u, _ := strconv.Atoi(strings.TrimSpace(string(usage)))
		stat, _ := os.ReadFile(filepath.Join(dir, "memory.stat"))
		for _, l := range strings.Split(string(stat), "\n") {
			if v, ok := strings.CutPrefix(l, "total_inactive_file "); ok {
				in, _ := strconv.Atoi(v)
				u -= in
			}
		}
		return max(u, 0) / 1024
	}
	return 0
}
