package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

var airgap = flag.String("airgap", "dist/artifacts/berth-airgap-images-amd64.tar.zst", "the add-ons' image bundle (make airgap)")

// benchAddons measures server start → CoreDNS available with the add-ons
// from the air-gap bundle (new data dir each run, in a network namespace),
// the bundle's size, and, after the add-ons are available and a minute
// idle, the add-on pods' memory and the whole node's.
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
		if err := waitAddonsAvailable(cs); err != nil {
			return err
		}
		time.Sleep(*idle)
		if err := reportAddonMemory(cs, n); err != nil {
			return err
		}
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

// addonDeployments are the packaged add-ons berth deploys into kube-system.
var addonDeployments = []string{"coredns", "local-path-provisioner", "metrics-server"}

// waitAddonsAvailable waits until every add-on has an available replica, so
// the idle time that follows is the same for all of them.
func waitAddonsAvailable(cs kubernetes.Interface) error {
	for _, name := range addonDeployments {
		for deadline := time.Now().Add(3 * time.Minute); ; time.Sleep(200 * time.Millisecond) {
			d, err := cs.AppsV1().Deployments("kube-system").Get(context.Background(), name, metav1.GetOptions{})
			if err == nil && d.Status.AvailableReplicas > 0 {
				break
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("add-on %s not available within 3 minutes", name)
			}
		}
	}
	return nil
}

// podProc is a process in one of the node's pods.
type podProc struct {
	procInfo
	podUID string // from the pod's cgroup name
}

// podProcesses finds the processes of every pod under the node's kubelet
// cgroup root, pause containers included; a process belongs to the pod
// whose pod<UID> cgroup holds it (cgroupfs layout:
// <root>/kubepods[/<qos>]/pod<UID>/<container>).
func podProcesses(cgroupRoot string) []podProc {
	var out []podProc
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		cg, err := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", pid))
		if err != nil {
			continue
		}
		var uid string
		for _, line := range strings.Split(string(cg), "\n") {
			f := strings.SplitN(line, ":", 3)
			if len(f) != 3 || !strings.HasPrefix(f[2], cgroupRoot+"/kubepods/") {
				continue
			}
			for _, seg := range strings.Split(f[2], "/") {
				if u, ok := strings.CutPrefix(seg, "pod"); ok {
					uid = u
				}
			}
		}
		if uid == "" {
			continue
		}
		comm, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
		out = append(out, podProc{procInfo{pid, strings.TrimSpace(string(comm))}, uid})
	}
	return out
}

// memUse is what the bench reports of a set of processes, in KiB.
type memUse struct{ rss, pss, pssAnon, pssFile, ws int }

func (m *memUse) add(o memUse) {
	m.rss += o.rss
	m.pss += o.pss
	m.pssAnon += o.pssAnon
	m.pssFile += o.pssFile
	m.ws += o.ws
}

func procMem(pid int) (memUse, error) {
	m, err := smaps(pid)
	if err != nil {
		return memUse{}, err
	}
	return memUse{rss: m["Rss"], pss: m["Pss"], pssAnon: m["Pss_Anon"], pssFile: m["Pss_File"]}, nil
}

func inMiB(kib int) float64 { return float64(kib) / 1024 }
func inMB(kib int) float64  { return float64(kib) * 1024 / 1e6 }

// reportAddonMemory prints the add-on pods' memory (RSS, PSS, cgroup working
// set as kubectl top computes it, and kubectl top itself), then the whole
// node's: berth, containerd, shims and every pod process.
func reportAddonMemory(cs kubernetes.Interface, n *netnsNode) error {
	ctx := context.Background()
	pods, err := cs.CoreV1().Pods("kube-system").List(ctx, metav1.ListOptions{})
	if err != nil {
		return fmt.Errorf("listing kube-system pods: %w", err)
	}
	podName := map[string]string{} // UID → name
	for _, p := range pods.Items {
		podName[string(p.UID)] = p.Name
	}
	top, topErr := kubectlTop(cs)

	procs := podProcesses("/bb-" + n.name)
	byPod := map[string]*memUse{}
	var addons, pause memUse
	var pauseN int
	for _, p := range procs {
		m, err := procMem(p.pid)
		if err != nil {
			continue // exited
		}
		if p.name == "pause" {
			pause.add(m)
			pauseN++
			continue
		}
		// Per container: the cgroup of each process is its container's.
		m.ws = workingSetKiB(p.pid)
		name := podName[p.podUID]
		if name == "" {
			name = "pod " + p.podUID
		}
		if byPod[name] == nil {
			byPod[name] = &memUse{}
		}
		byPod[name].add(m)
		addons.add(m)
	}
	names := make([]string, 0, len(byPod))
	for name := range byPod {
		names = append(names, name)
	}
	sort.Strings(names)
	fmt.Printf("add-on pods after %s idle (containers' processes, pause excluded; working set = memory cgroup usage − inactive file, as the kubelet reports it):\n", idle.String())
	for _, name := range names {
		m := byPod[name]
		t := "  kubectl top n/a"
		if v, ok := top[name]; ok {
			t = fmt.Sprintf("  kubectl top %5.1f MiB", inMiB(v))
		}
		fmt.Printf("  %-46s RSS %5.1f MiB  PSS %5.1f MiB (anon %5.1f, file %5.1f)  working set %5.1f MiB%s\n",
			name, inMiB(m.rss), inMiB(m.pss), inMiB(m.pssAnon), inMiB(m.pssFile), inMiB(m.ws), t)
	}
	if topErr != nil {
		fmt.Printf("  (kubectl top: %v)\n", topErr)
	}
	fmt.Printf("add-on pods together: RSS %.1f MiB (%.0f MB), PSS %.1f MiB (%.0f MB; anon %.1f MiB, file %.1f MiB), working set %.1f MiB (%.0f MB)  target ≤ 100 MB\n",
		inMiB(addons.rss), inMB(addons.rss), inMiB(addons.pss), inMB(addons.pss), inMiB(addons.pssAnon), inMiB(addons.pssFile), inMiB(addons.ws), inMB(addons.ws))

	// The whole node: berth (control plane, kubelet, kube-proxy, flannel in
	// one process), containerd and the shims (found by their data-dir
	// paths), and every process in the node's pods.
	var node, shims memUse
	var shimN int
	fmt.Printf("node after %s idle with the add-ons running:\n", idle.String())
	for _, p := range nodeProcesses(n.pid(), n.dataDir()) {
		m, err := procMem(p.pid)
		if err != nil {
			continue
		}
		node.add(m)
		if strings.HasPrefix(p.name, "containerd-shim") {
			shims.add(m)
			shimN++
			continue
		}
		fmt.Printf("  %-26s RSS %6.1f MiB  PSS %6.1f MiB\n", p.name, inMiB(m.rss), inMiB(m.pss))
	}
	fmt.Printf("  %-26s RSS %6.1f MiB  PSS %6.1f MiB\n", fmt.Sprintf("shims (%d)", shimN), inMiB(shims.rss), inMiB(shims.pss))
	fmt.Printf("  %-26s RSS %6.1f MiB  PSS %6.1f MiB\n", fmt.Sprintf("pause (%d)", pauseN), inMiB(pause.rss), inMiB(pause.pss))
	fmt.Printf("  %-26s RSS %6.1f MiB  PSS %6.1f MiB\n", "add-on containers", inMiB(addons.rss), inMiB(addons.pss))
	node.add(pause)
	node.add(addons)
	fmt.Printf("node total (berth + containerd + shims + pods): RSS %.0f MiB (%.0f MB), PSS %.0f MiB (%.0f MB)\n",
		inMiB(node.rss), inMB(node.rss), inMiB(node.pss), inMB(node.pss))
	return nil
}

// kubectlTop returns the memory metrics-server reports for kube-system's
// pods (what `kubectl top pods` shows), in KiB by pod name.
func kubectlTop(cs kubernetes.Interface) (map[string]int, error) {
	raw, err := cs.Discovery().RESTClient().Get().AbsPath("/apis/metrics.k8s.io/v1beta1/namespaces/kube-system/pods").DoRaw(context.Background())
	if err != nil {
		return nil, fmt.Errorf("metrics API: %w", err)
	}
	var list struct {
		Items []struct {
			Metadata   struct{ Name string }
			Containers []struct {
				Usage map[string]string
			}
		}
	}
	if err := json.Unmarshal(raw, &list); err != nil {
		return nil, fmt.Errorf("metrics API: %w", err)
	}
	out := map[string]int{}
	for _, it := range list.Items {
		for _, c := range it.Containers {
			q, err := resource.ParseQuantity(c.Usage["memory"])
			if err != nil {
				return nil, fmt.Errorf("metrics API: pod %s: %w", it.Metadata.Name, err)
			}
			out[it.Metadata.Name] += int(q.Value() / 1024)
		}
	}
	return out, nil
}
