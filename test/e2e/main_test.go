// Package e2e runs end-to-end tests against ONE real single-node berth
// cluster (server plus its own node) started once in TestMain and shared by
// every test. The node uses host-wide paths and ports (kubelet 10250,
// /run/berth/containerd, /var/lib/kubelet), so only one may run at a time,
// and everything it leaves on the host is removed at the end — also when a
// test fails, panics, times out or the run is interrupted.
package e2e

import (
	"bufio"
	"context"
	"flag"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/berth-io/berth/pkg/flannel"

	"github.com/berth-io/berth/test/testutil"
)

const (
	containerdSock = "/run/berth/containerd/containerd.sock"
	// testLabel marks every namespace a test creates, so cleanup finds them.
	testLabel = "berth-e2e"
)

var (
	berthBin   string
	imagesDir  string // the built image tarballs (BERTH_IMAGES)
	skipReason string // set when the suite cannot run here
	clu        *cluster
)

// cluster is the one berth server (with its node) all tests share.
type cluster struct {
	dir        string // the run's temporary dir
	dataDir    string
	kubeconfig string
	args       []string
	logPath    string

	mu   sync.Mutex
	cmd  *exec.Cmd
	done chan struct{}
	log  *os.File

	cs kubernetes.Interface
}

func TestMain(m *testing.M) {
	flag.Parse()
	if os.Geteuid() != 0 {
		skipReason = "e2e tests need root (they run a real node: containerd, kubelet, iptables, CNI); skipping"
		fmt.Fprintln(os.Stderr, skipReason)
		os.Exit(m.Run())
	}
	root, _ := filepath.Abs("../..")
	a, err := testutil.Build(root)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	berthBin, imagesDir = a.Berth, a.Images
	os.Exit(run(m))
}

func run(m *testing.M) (code int) {
	g := testutil.NewGuard(func(format string, a ...any) { fmt.Fprintf(os.Stderr, "e2e: "+format+"\n", a...) }, teardown)
	defer g.Done(&code)

	var err error
	clu, err = startCluster()
	if err != nil {
		fmt.Fprintf(os.Stderr, "e2e: start cluster: %v\n", err)
		if clu != nil {
			fmt.Fprintf(os.Stderr, "berth log (tail):\n%s\n", clu.logTail(80))
		}
		return 1
	}
	return m.Run()
}

// requireCluster skips when the suite cannot run and returns the cluster.
func requireCluster(t *testing.T) *cluster {
	t.Helper()
	if skipReason != "" {
		t.Skip(skipReason)
	}
	if clu == nil || clu.cs == nil {
		t.Fatal("no cluster")
	}
	return clu
}

func freePort() int {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

func startCluster() (*cluster, error) {
	dir, err := os.MkdirTemp("", "berth-e2e-")
	if err != nil {
		return nil, err
	}
	c := &cluster{
		dir:        dir,
		dataDir:    filepath.Join(dir, "data"),
		kubeconfig: filepath.Join(dir, "admin.yaml"),
		logPath:    filepath.Join(dir, "berth.log"),
	}
	clu = c // so teardown finds the dir even if start fails
	cfg := filepath.Join(dir, "config.yaml")
	if err := os.WriteFile(cfg, nil, 0o600); err != nil {
		return c, err
	}
	imgDst := filepath.Join(c.dataDir, "agent", "images")
	if err := os.MkdirAll(imgDst, 0o755); err != nil {
		return c, err
	}
	tars, _ := filepath.Glob(filepath.Join(imagesDir, "*.tar"))
	if len(tars) == 0 {
		return c, fmt.Errorf("no image tarballs in %s (run make images)", imagesDir)
	}
	for _, src := range tars {
		if err := testutil.CopyFile(src, filepath.Join(imgDst, filepath.Base(src))); err != nil {
			return c, err
		}
	}
	c.args = []string{
		"server",
		"--config", cfg,
		"-d", c.dataDir,
		"--write-kubeconfig", c.kubeconfig,
		"--https-listen-port", strconv.Itoa(freePort()),
		"--apiserver-port", strconv.Itoa(freePort()),
		"--kube-scheduler-arg", "secure-port=" + strconv.Itoa(freePort()),
		"--kube-controller-manager-arg", "secure-port=" + strconv.Itoa(freePort()),
		// These tests bring only the test images; the add-ons' images come
		// with the air-gap bundle (their own e2e).
		"--disable", "coredns,local-storage,metrics-server",
	}
	if err := c.start(); err != nil {
		return c, err
	}
	if err := c.waitNodeReady(3*time.Minute, time.Time{}); err != nil {
		return c, err
	}
	return c, nil
}

// start launches berth in its own process group, killed if we die.
func (c *cluster) start() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	f, err := os.OpenFile(c.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	fmt.Fprintf(f, "\n===== e2e: starting berth %s =====\n", time.Now().Format(time.RFC3339))
	cmd := exec.Command(berthBin, c.args...)
	cmd.Stdout, cmd.Stderr = f, f
	cmd.Env = testutil.CleanEnv()
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		f.Close()
		return fmt.Errorf("start berth: %w", err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); f.Close(); close(done) }()
	c.cmd, c.done, c.log = cmd, done, f
	return nil
}

func (c *cluster) running() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.cmd == nil {
		return false
	}
	select {
	case <-c.done:
		return false
	default:
		return true
	}
}

// stop sends SIGTERM and waits; after timeout the whole group is killed.
// It returns berth's exit code (-1 if it had to be killed).
func (c *cluster) stop(timeout time.Duration) (int, error) {
	c.mu.Lock()
	cmd, done := c.cmd, c.done
	c.mu.Unlock()
	if cmd == nil {
		return 0, nil
	}
	code, err := testutil.StopProcess(cmd, done, timeout)
	if err != nil {
		return code, fmt.Errorf("berth: %w", err)
	}
	return code, nil
}

func (c *cluster) logTail(n int) string {
	b, _ := os.ReadFile(c.logPath)
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// waitNodeReady waits for a client, /readyz and a Ready node. With after
// set, the Ready condition's heartbeat must be newer (a restarted kubelet).
func (c *cluster) waitNodeReady(timeout time.Duration, after time.Time) error {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	var last error
	for ctx.Err() == nil {
		if !c.running() {
			return fmt.Errorf("berth exited: %s\n%s", c.cmd.ProcessState, c.logTail(60))
		}
		last = c.nodeReady(ctx, after)
		if last == nil {
			return nil
		}
		sleep(ctx, time.Second)
	}
	return fmt.Errorf("node not Ready within %s: %v", timeout, last)
}

func (c *cluster) nodeReady(ctx context.Context, after time.Time) error {
	if _, err := os.Stat(c.kubeconfig); err != nil {
		return err
	}
	if c.cs == nil {
		cfg, err := clientcmd.BuildConfigFromFlags("", c.kubeconfig)
		if err != nil {
			return err
		}
		cfg.Timeout = 20 * time.Second
		cs, err := kubernetes.NewForConfig(cfg)
		if err != nil {
			return err
		}
		c.cs = cs
	}
	body, err := c.cs.Discovery().RESTClient().Get().AbsPath("/readyz").DoRaw(ctx)
	if err != nil || string(body) != "ok" {
		return fmt.Errorf("readyz: %v %s", err, body)
	}
	nodes, err := c.cs.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
	if err != nil {
		return err
	}
	if len(nodes.Items) != 1 {
		return fmt.Errorf("%d nodes", len(nodes.Items))
	}
	for _, cond := range nodes.Items[0].Status.Conditions {
		if cond.Type == corev1.NodeReady {
			if cond.Status != corev1.ConditionTrue {
				return fmt.Errorf("node Ready=%s: %s", cond.Status, cond.Message)
			}
			if !after.IsZero() && cond.LastHeartbeatTime.Time.Before(after.Truncate(time.Second)) {
				return fmt.Errorf("node Ready heartbeat %s is from before the restart", cond.LastHeartbeatTime)
			}
			return nil
		}
	}
	return fmt.Errorf("node has no Ready condition")
}

// ---------------------------------------------------------------------------
// Teardown: everything berth's node leaves on the host.

// teardown deletes the test namespaces while berth runs, stops berth and
// removes processes, mounts, links and iptables chains it left. It reports
// whether the host ended clean.
func teardown() bool {
	c := clu
	if c == nil {
		return true
	}
	logf := func(format string, a ...any) { fmt.Fprintf(os.Stderr, "e2e cleanup: "+format+"\n", a...) }

	if c.running() && c.cs != nil {
		if err := deleteTestNamespaces(c.cs, 3*time.Minute); err != nil {
			logf("%v", err)
		}
	}
	if code, err := c.stop(90 * time.Second); err != nil {
		logf("%v", err)
	} else if c.cmd != nil {
		logf("berth exited with code %d", code)
		if code != 0 {
			logf("berth log (last 40 lines):\n%s", c.logTail(40))
		}
	}

	// containerd (if it outlived berth) and the shims: only processes whose
	// command line names this run's data dir.
	for _, pid := range pidsMatching(c.dataDir) {
		logf("killing leftover process %d: %s", pid, cmdline(pid))
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}
	waitGone(c.dataDir, 10*time.Second)

	unmountUnder(logf, c.dataDir, "/run/berth/containerd", "/var/lib/kubelet")
	// Pod network namespace pins of sandboxes nobody deleted (pods left
	// when berth stopped): only those made during this run.
	for _, pin := range netnsPinsSince() {
		if err := syscall.Unmount(pin, syscall.MNT_DETACH); err != nil {
			logf("unmount %s: %v", pin, err)
		}
		_ = os.Remove(pin)
	}

	for _, l := range []string{"cni0", "flannel.1"} {
		if linkExists(l) {
			if out, err := exec.Command("ip", "link", "del", l).CombinedOutput(); err != nil {
				logf("ip link del %s: %v %s", l, err, out)
			}
		}
	}
	agent := filepath.Join(c.dataDir, "agent")
	if err := flannel.Cleanup(flannel.Config{
		ConfDir:    filepath.Join(agent, "etc", "flannel"),
		CNIConfDir: filepath.Join(agent, "etc", "cni", "net.d"),
		CNIDataDir: filepath.Join(agent, "cni", "networks"),
	}); err != nil {
		logf("flannel cleanup: %v", err)
	}
	for _, bin := range []string{"iptables", "ip6tables"} {
		if err := removeKubeChains(bin); err != nil {
			logf("%v", err)
		}
	}

	// Verify.
	ok := true
	for _, l := range []string{"cni0", "flannel.1"} {
		if linkExists(l) {
			logf("FAIL: link %s still exists", l)
			ok = false
		}
	}
	if pids := pidsMatching(c.dataDir); len(pids) > 0 {
		logf("FAIL: processes still running: %v", pids)
		ok = false
	}
	if pids := pidsOfExe(berthBin); len(pids) > 0 {
		logf("FAIL: berth processes still running: %v", pids)
		ok = false
	}
	if out, _ := exec.Command("iptables-save", "-t", "nat").Output(); strings.Contains(string(out), ":KUBE-SERVICES") {
		logf("FAIL: KUBE-SERVICES chain still in the nat table")
		ok = false
	}
	if pins := netnsPinsSince(); len(pins) > 0 {
		logf("FAIL: pod network namespace pins left in /run/netns: %v", pins)
		ok = false
	}
	if m := mountsUnder(c.dataDir, "/run/berth/containerd", "/var/lib/kubelet"); len(m) > 0 {
		logf("FAIL: still mounted under the data dir, the containerd state dir or the kubelet root: %v", m)
		ok = false
	} else if os.Getenv("BERTH_E2E_KEEP") == "" {
		_ = os.RemoveAll(c.dir)
	}
	if ok {
		logf("host is clean")
	}
	return ok
}

func deleteTestNamespaces(cs kubernetes.Interface, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	sel := metav1.ListOptions{LabelSelector: testLabel}
	nss, err := cs.CoreV1().Namespaces().List(ctx, sel)
	if err != nil {
		return fmt.Errorf("list test namespaces: %w", err)
	}
	// Grace 1, not 0: a graceful delete lets the kubelet stop the pods'
	// containers and sandboxes before their API objects go.
	one := int64(1)
	for _, ns := range nss.Items {
		_ = cs.CoreV1().Pods(ns.Name).DeleteCollection(ctx, metav1.DeleteOptions{GracePeriodSeconds: &one}, metav1.ListOptions{})
		if err := cs.CoreV1().Namespaces().Delete(ctx, ns.Name, metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
			return fmt.Errorf("delete namespace %s: %w", ns.Name, err)
		}
	}
	for ctx.Err() == nil {
		nss, err = cs.CoreV1().Namespaces().List(ctx, sel)
		if err == nil && len(nss.Items) == 0 {
			// The API objects are gone; give the kubelet a little time to
			// remove the sandboxes too (its sandbox GC may take a minute;
			// leftover shims are killed afterwards anyway).
			if pods, err := cs.CoreV1().Pods("").List(ctx, metav1.ListOptions{}); err != nil || len(pods.Items) > 0 {
				return nil
			}
			shimDeadline := time.Now().Add(90 * time.Second)
			for ctx.Err() == nil && len(shimPIDs()) > 0 && time.Now().Before(shimDeadline) {
				sleep(ctx, time.Second)
			}
			if len(shimPIDs()) == 0 {
				return nil
			}
			return fmt.Errorf("container shims %v still running after the test namespaces went", shimPIDs())
		}
		sleep(ctx, time.Second)
	}
	return fmt.Errorf("test namespaces not gone within %s", timeout)
}

// pidsMatching lists processes (not us) whose command line contains s.
func pidsMatching(s string) []int {
	var pids []int
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		if strings.Contains(cmdline(pid), s) {
			pids = append(pids, pid)
		}
	}
	return pids
}

// shimPIDs lists this run's containerd shims (one per pod sandbox).
func shimPIDs() []int {
	var pids []int
	for _, pid := range pidsMatching(clu.dataDir) {
		if strings.Contains(cmdline(pid), "containerd-shim") {
			pids = append(pids, pid)
		}
	}
	return pids
}

func pidsOfExe(exe string) []int {
	var pids []int
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if p, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid)); err == nil && p == exe {
			pids = append(pids, pid)
		}
	}
	return pids
}

func cmdline(pid int) string {
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	return strings.TrimSpace(strings.ReplaceAll(string(b), "\x00", " "))
}

func waitGone(s string, timeout time.Duration) {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) && len(pidsMatching(s)) > 0 {
		time.Sleep(200 * time.Millisecond)
	}
}

// mountsUnder lists mount points under any of the prefixes, deepest first.
func mountsUnder(prefixes ...string) []string {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil
	}
	defer f.Close()
	var mps []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 5 {
			continue
		}
		mp := unescapeMount(fields[4])
		for _, p := range prefixes {
			if mp == p || strings.HasPrefix(mp, strings.TrimSuffix(p, "/")+"/") {
				mps = append(mps, mp)
				break
			}
		}
	}
	sort.Slice(mps, func(i, j int) bool { return len(mps[i]) > len(mps[j]) })
	return mps
}

func unescapeMount(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

func unmountUnder(logf func(string, ...any), prefixes ...string) {
	for i := 0; i < 5; i++ {
		mps := mountsUnder(prefixes...)
		if len(mps) == 0 {
			return
		}
		for _, mp := range mps {
			if err := syscall.Unmount(mp, 0); err != nil {
				if err := syscall.Unmount(mp, syscall.MNT_DETACH); err != nil && i == 4 {
					logf("umount %s: %v", mp, err)
				}
			}
		}
	}
}

func linkExists(name string) bool {
	_, err := os.Stat("/sys/class/net/" + name)
	return err == nil
}

// removeKubeChains deletes kube-proxy's and the kubelet's KUBE-* chains:
// first the jumps into them from other chains, then their rules, then the
// chains.
func removeKubeChains(bin string) error {
	if _, err := exec.LookPath(bin); err != nil {
		return nil
	}
	var errs []string
	for _, table := range []string{"nat", "filter", "mangle", "raw"} {
		out, err := exec.Command(bin+"-save", "-t", table).Output()
		if err != nil {
			continue // table or family not available
		}
		var chains []string
		for _, line := range strings.Split(string(out), "\n") {
			switch {
			case strings.HasPrefix(line, ":KUBE-"):
				chains = append(chains, strings.Fields(line[1:])[0])
			case strings.HasPrefix(line, "-A ") && !strings.HasPrefix(line, "-A KUBE-") && strings.Contains(line, "-j KUBE-"):
				args := append([]string{"-w", "-t", table, "-D"}, testutil.SplitRule(line[3:])...)
				if o, err := exec.Command(bin, args...).CombinedOutput(); err != nil {
					errs = append(errs, fmt.Sprintf("%s %v: %v %s", bin, args, err, o))
				}
			}
		}
		for _, ch := range chains {
			_ = exec.Command(bin, "-w", "-t", table, "-F", ch).Run()
		}
		for _, ch := range chains {
			if o, err := exec.Command(bin, "-w", "-t", table, "-X", ch).CombinedOutput(); err != nil {
				errs = append(errs, fmt.Sprintf("%s -t %s -X %s: %v %s", bin, table, ch, err, o))
			}
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("remove KUBE- chains: %s", strings.Join(errs, "; "))
	}
	return nil
}

// ---------------------------------------------------------------------------
// Small helpers.

func sleep(ctx context.Context, d time.Duration) {
	select {
	case <-ctx.Done():
	case <-time.After(d):
	}
}

// runStarted is when this test binary started: pins made since are ours.
var runStarted = time.Now()

// netnsPinsSince lists /run/netns/cni-* files made during this run.
func netnsPinsSince() []string {
	pins, _ := filepath.Glob("/run/netns/cni-*")
	var out []string
	for _, p := range pins {
		if pi, err := os.Stat(p); err == nil && !pi.ModTime().Before(runStarted) {
			out = append(out, p)
		}
	}
	return out
}
