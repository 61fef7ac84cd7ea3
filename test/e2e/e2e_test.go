package e2e

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/berth-io/berth/test/testutil"
)

const (
	busybox    = "berth.local/busybox:1.36"
	echoserver = "berth.local/echoserver:1.0"
	podTimeout = 2 * time.Minute
)

// TestE2E runs the scenarios in a fixed order on the shared cluster; the
// restart scenario is last because it stops and starts berth.
func TestE2E(t *testing.T) {
	requireCluster(t)
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("berth log (last 80 lines):\n%s", clu.logTail(80))
		}
	})
	for _, tc := range []struct {
		name string
		fn   func(*testing.T)
	}{
		{"NodeReadyAndImages", testNodeReadyAndImages},
		{"PodLogsExec", testPodLogsExec},
		{"PodToPod", testPodToPod},
		{"ClusterIPService", testClusterIPService},
		{"NodePortFromHost", testNodePortFromHost},
		{"HostPathVolume", testHostPathVolume},
		{"KilledContainerRestarts", testKilledContainerRestarts},
		{"PodDeleteRemovesNetwork", testPodDeleteRemovesNetwork},
		{"DroppedTarballImported", testDroppedTarballImported},
		{"AbsentImage", testAbsentImage},
		{"RestartKeepsPods", testRestartKeepsPods},
	} {
		t.Run(tc.name, tc.fn)
	}
}

// 1.
func testNodeReadyAndImages(t *testing.T) {
	c := requireCluster(t)
	ctx := context.Background()
	nodes, err := c.cs.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(nodes.Items) != 1 {
		t.Fatalf("want 1 node, got %d", len(nodes.Items))
	}
	n := nodes.Items[0]
	if err := c.nodeReady(ctx, time.Time{}); err != nil {
		t.Fatal(err)
	}
	if _, ok := n.Labels["node-role.kubernetes.io/control-plane"]; !ok {
		t.Errorf("node %s has no node-role.kubernetes.io/control-plane label: %v", n.Name, n.Labels)
	}
	out := ctr(t, "-n", "k8s.io", "images", "ls", "-q")
	if !strings.Contains(out, busybox) {
		t.Errorf("ctr images ls does not list %s:\n%s", busybox, out)
	}
}

// 2.
func testPodLogsExec(t *testing.T) {
	c := requireCluster(t)
	ns := newNamespace(t)
	runPod(t, ns, bbPod("hello", "echo hello-e2e; sleep 3600"))
	waitFor(t, 30*time.Second, "logs to contain hello-e2e", func() error {
		out, err := kubectl("-n", ns, "logs", "hello")
		if !strings.Contains(out, "hello-e2e") {
			return fmt.Errorf("logs: %v %q", err, out)
		}
		return nil
	})
	out, err := kubectl("-n", ns, "exec", "hello", "--", "ls", "/")
	if err != nil || !strings.Contains(out, "bin") || !strings.Contains(out, "proc") {
		t.Fatalf("exec ls /: %v\n%s", err, out)
	}
	_ = c
}

// 3.
func testPodToPod(t *testing.T) {
	ns := newNamespace(t)
	srv := runPod(t, ns, echoPod("echo", nil))
	runPod(t, ns, bbPod("client", "sleep 3600"))
	url := fmt.Sprintf("http://%s:8080/", srv.Status.PodIP)
	out := execUntil(t, ns, "client", "echo", "wget", "-q", "-O", "-", url)
	t.Logf("%s → %s", url, strings.TrimSpace(out))
}

// 4.
func testClusterIPService(t *testing.T) {
	c := requireCluster(t)
	ns := newNamespace(t)
	runPod(t, ns, echoPod("echo", map[string]string{"app": "echo"}))
	runPod(t, ns, bbPod("client", "sleep 3600"))
	svc, err := c.cs.CoreV1().Services(ns).Create(context.Background(), echoService("echo", corev1.ServiceTypeClusterIP), metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	url := "http://" + svc.Spec.ClusterIP + "/"
	out := execUntil(t, ns, "client", "echo", "wget", "-q", "-O", "-", url)
	t.Logf("%s → %s", url, strings.TrimSpace(out))
}

// 5.
func testNodePortFromHost(t *testing.T) {
	c := requireCluster(t)
	ns := newNamespace(t)
	runPod(t, ns, echoPod("echo", map[string]string{"app": "echo"}))
	svc, err := c.cs.CoreV1().Services(ns).Create(context.Background(), echoService("echo", corev1.ServiceTypeNodePort), metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	nodePort := svc.Spec.Ports[0].NodePort
	ip := nodeInternalIP(t)
	url := fmt.Sprintf("http://%s:%d/", ip, nodePort)
	client := &http.Client{Timeout: 5 * time.Second}
	var body string
	waitFor(t, podTimeout, "NodePort "+url+" to answer", func() error {
		resp, err := client.Get(url)
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		body = string(b)
		if resp.StatusCode != 200 || !strings.Contains(body, "echo") {
			return fmt.Errorf("status %d body %q", resp.StatusCode, body)
		}
		return nil
	})
	t.Logf("%s → %s", url, strings.TrimSpace(body))
}

// 6.
func testHostPathVolume(t *testing.T) {
	c := requireCluster(t)
	ns := newNamespace(t)
	dir := filepath.Join(c.dir, "hostpath")
	pod := bbPod("writer", "echo written-by-pod > /out/file; sleep 3600")
	hpType := corev1.HostPathDirectoryOrCreate
	pod.Spec.Volumes = []corev1.Volume{{Name: "out", VolumeSource: corev1.VolumeSource{
		HostPath: &corev1.HostPathVolumeSource{Path: dir, Type: &hpType}}}}
	pod.Spec.Containers[0].VolumeMounts = []corev1.VolumeMount{{Name: "out", MountPath: "/out"}}
	runPod(t, ns, pod)
	waitFor(t, 30*time.Second, "the pod's file on the host", func() error {
		b, err := os.ReadFile(filepath.Join(dir, "file"))
		if err != nil {
			return err
		}
		if strings.TrimSpace(string(b)) != "written-by-pod" {
			return fmt.Errorf("content %q", b)
		}
		return nil
	})
}

// 7.
func testKilledContainerRestarts(t *testing.T) {
	c := requireCluster(t)
	ns := newNamespace(t)
	p := runPod(t, ns, bbPod("victim", "sleep 3600"))
	id := containerID(t, p)
	pid := taskPID(t, id)
	t.Logf("killing container %s (host pid %d)", id, pid)
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	waitPod(t, ns, "victim", podTimeout, "restarted and Running", func(p *corev1.Pod) error {
		if len(p.Status.ContainerStatuses) == 0 {
			return fmt.Errorf("no container status")
		}
		cs := p.Status.ContainerStatuses[0]
		if cs.RestartCount < 1 || cs.State.Running == nil || p.Status.Phase != corev1.PodRunning {
			return fmt.Errorf("restartCount %d state %+v phase %s", cs.RestartCount, cs.State, p.Status.Phase)
		}
		return nil
	})
	_ = c
}

// 8.
func testPodDeleteRemovesNetwork(t *testing.T) {
	c := requireCluster(t)
	ns := newNamespace(t)
	p := runPod(t, ns, bbPod("gone", "sleep 3600"))
	pid := taskPID(t, containerID(t, p))
	netns := netnsPath(t, pid)
	iflink, err := kubectl("-n", ns, "exec", "gone", "--", "cat", "/sys/class/net/eth0/iflink")
	if err != nil {
		t.Fatalf("read iflink: %v %s", err, iflink)
	}
	peer, err := strconv.Atoi(strings.TrimSpace(iflink))
	if err != nil {
		t.Fatalf("iflink %q: %v", iflink, err)
	}
	veth := linkByIndex(peer)
	before := cni0Veths(t)
	if !strings.Contains(before, veth+"@") || veth == "" {
		t.Fatalf("pod's host veth (ifindex %d, %q) not on cni0:\n%s", peer, veth, before)
	}
	t.Logf("pod netns %s, host veth %s", netns, veth)
	zero := int64(0)
	if err := c.cs.CoreV1().Pods(ns).Delete(context.Background(), "gone", metav1.DeleteOptions{GracePeriodSeconds: &zero}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, podTimeout, "the pod's veth and netns to go", func() error {
		after := cni0Veths(t)
		if strings.Contains(after, veth+"@") {
			return fmt.Errorf("veth %s still on cni0", veth)
		}
		if _, err := os.Stat(netns); err == nil {
			return fmt.Errorf("netns %s still exists", netns)
		}
		if n, m := countLines(after), countLines(before); n >= m {
			return fmt.Errorf("cni0 veth count %d, before %d", n, m)
		}
		return nil
	})
}

// 9.
func testDroppedTarballImported(t *testing.T) {
	c := requireCluster(t)
	ns := newNamespace(t)
	src := filepath.Join(imagesDir, "busybox-1.36-amd64.tar")
	img, err := tarball.ImageFromPath(src, nil)
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(c.dataDir, "agent", "images")
	// A truncated tarball dropped alongside: berth must log it by name and
	// still import the good one, and keep running.
	whole, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	corrupt := filepath.Join(dir, "corrupt-1.tar")
	if err := os.WriteFile(corrupt, whole[:len(whole)/2], 0o600); err != nil {
		t.Fatal(err)
	}
	tmp := filepath.Join(dir, ".dropped.tmp")
	if err := tarball.WriteToFile(tmp, name.MustParseReference("berth.local/dropped:1"), img); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, filepath.Join(dir, "dropped-1.tar")); err != nil {
		t.Fatal(err)
	}
	pod := bbPod("dropped", "sleep 3600")
	pod.Spec.Containers[0].Image = "berth.local/dropped:1"
	if _, err := c.cs.CoreV1().Pods(ns).Create(context.Background(), pod, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitPod(t, ns, "dropped", 60*time.Second, "Running", podRunning)
	if log := c.logTail(400); !strings.Contains(log, "import corrupt-1.tar:") {
		t.Errorf("berth's log does not name the corrupt tarball and its reason:\n%s", log)
	}
	if _, err := os.Stat(corrupt); err != nil {
		t.Errorf("the corrupt tarball must be left as it was: %v", err)
	}
	if err := c.cmd.Process.Signal(syscall.Signal(0)); err != nil {
		t.Errorf("berth is not running after a corrupt tarball: %v", err)
	}
}

// 11.
func testAbsentImage(t *testing.T) {
	c := requireCluster(t)
	ns := newNamespace(t)
	pod := bbPod("absent", "sleep 3600")
	pod.Spec.Containers[0].Image = "berth.local/absent:1"
	pod.Spec.Containers[0].ImagePullPolicy = corev1.PullIfNotPresent
	if _, err := c.cs.CoreV1().Pods(ns).Create(context.Background(), pod, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	var reason, msg string
	waitPod(t, ns, "absent", podTimeout, "ErrImagePull or ImagePullBackOff", func(p *corev1.Pod) error {
		for _, cs := range p.Status.ContainerStatuses {
			if w := cs.State.Waiting; w != nil && (w.Reason == "ErrImagePull" || w.Reason == "ImagePullBackOff") {
				if w.Message == "" {
					return fmt.Errorf("%s without a message", w.Reason)
				}
				reason, msg = w.Reason, w.Message
				return nil
			}
		}
		return fmt.Errorf("container statuses %+v", p.Status.ContainerStatuses)
	})
	t.Logf("%s: %s", reason, msg)
	if !c.running() {
		t.Fatal("berth is no longer running")
	}
	body, err := c.cs.Discovery().RESTClient().Get().AbsPath("/readyz").DoRaw(context.Background())
	if err != nil || string(body) != "ok" {
		t.Fatalf("/readyz: %v %s", err, body)
	}
}

// 10. Last: restarts berth.
func testRestartKeepsPods(t *testing.T) {
	c := requireCluster(t)
	ns := newNamespace(t)
	p := runPod(t, ns, bbPod("survivor", "sleep 3600"))
	id := containerID(t, p)
	restarts := p.Status.ContainerStatuses[0].RestartCount

	code, err := c.stop(2 * time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if code != 0 {
		t.Errorf("berth exited with code %d after SIGTERM; log (last 40 lines):\n%s", code, c.logTail(40))
	}
	restartedAt := time.Now()
	if err := c.start(); err != nil {
		t.Fatal(err)
	}
	if err := c.waitNodeReady(3*time.Minute, restartedAt); err != nil {
		t.Fatal(err)
	}
	got := waitPod(t, ns, "survivor", podTimeout, "Running", podRunning)
	cs := got.Status.ContainerStatuses[0]
	if cs.ContainerID != id {
		t.Errorf("containerID changed across the restart: %s → %s", id, cs.ContainerID)
	}
	if cs.RestartCount != restarts {
		t.Errorf("restartCount changed across the restart: %d → %d", restarts, cs.RestartCount)
	}
}

// ---------------------------------------------------------------------------
// Helpers.

var nsSeq int

// newNamespace creates a labelled namespace for one test; it is deleted
// (without waiting) when the test ends, and waited for at teardown.
func newNamespace(t *testing.T) string {
	t.Helper()
	c := requireCluster(t)
	nsSeq++
	name := fmt.Sprintf("e2e-%d-%s", nsSeq, strings.ToLower(strings.ReplaceAll(filepath.Base(t.Name()), "_", "-")))
	if len(name) > 63 {
		name = name[:63]
	}
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{testLabel: "true"}}}
	if _, err := c.cs.CoreV1().Namespaces().Create(context.Background(), ns, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	// Pods need the default service account before they are admitted.
	waitFor(t, 30*time.Second, "default service account", func() error {
		_, err := c.cs.CoreV1().ServiceAccounts(name).Get(context.Background(), "default", metav1.GetOptions{})
		return err
	})
	t.Cleanup(func() {
		if t.Failed() {
			out, _ := kubectl("-n", name, "get", "pods,svc,events", "-o", "wide")
			t.Logf("namespace %s:\n%s", name, out)
		}
		if !c.running() || t.Name() == "TestE2E/RestartKeepsPods" {
			return
		}
		one := int64(1)
		_ = c.cs.CoreV1().Pods(name).DeleteCollection(context.Background(), metav1.DeleteOptions{GracePeriodSeconds: &one}, metav1.ListOptions{})
		_ = c.cs.CoreV1().Namespaces().Delete(context.Background(), name, metav1.DeleteOptions{})
	})
	return name
}

func bbPod(name, script string) *corev1.Pod {
	zero := int64(0)
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: corev1.PodSpec{
			TerminationGracePeriodSeconds: &zero,
			Containers: []corev1.Container{{
				Name: "main", Image: busybox, ImagePullPolicy: corev1.PullNever,
				Command: []string{"sh", "-c", script},
			}},
		},
	}
}

func echoPod(name string, labels map[string]string) *corev1.Pod {
	zero := int64(0)
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels},
		Spec: corev1.PodSpec{
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

func echoService(name string, typ corev1.ServiceType) *corev1.Service {
	return &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: corev1.ServiceSpec{
			Type:     typ,
			Selector: map[string]string{"app": "echo"},
			Ports:    []corev1.ServicePort{{Port: 80, TargetPort: intstr.FromInt32(8080)}},
		},
	}
}

// runPod creates the pod and waits until it is Running and Ready.
func runPod(t *testing.T, ns string, pod *corev1.Pod) *corev1.Pod {
	t.Helper()
	c := requireCluster(t)
	if _, err := c.cs.CoreV1().Pods(ns).Create(context.Background(), pod, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	return waitPod(t, ns, pod.Name, podTimeout, "Running and Ready", podRunning)
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

func waitPod(t *testing.T, ns, name string, timeout time.Duration, what string, ok func(*corev1.Pod) error) *corev1.Pod {
	t.Helper()
	c := requireCluster(t)
	var pod *corev1.Pod
	waitFor(t, timeout, fmt.Sprintf("pod %s/%s %s", ns, name, what), func() error {
		p, err := c.cs.CoreV1().Pods(ns).Get(context.Background(), name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		pod = p
		return ok(p)
	})
	return pod
}

// waitFor polls fn until it returns nil; the timeout is only a hang guard.
func waitFor(t *testing.T, timeout time.Duration, what string, fn func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := fn()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s: %v", timeout, what, err)
		}
		time.Sleep(500 * time.Millisecond)
	}
}

// execUntil runs a command in the pod until its output contains want.
func execUntil(t *testing.T, ns, pod, want string, cmd ...string) string {
	t.Helper()
	var out string
	waitFor(t, podTimeout, fmt.Sprintf("%v in %s to answer %q", cmd, pod, want), func() error {
		var err error
		out, err = kubectl(append([]string{"-n", ns, "exec", pod, "--"}, cmd...)...)
		if err != nil || !strings.Contains(out, want) {
			return fmt.Errorf("%v: %s", err, out)
		}
		return nil
	})
	return out
}

// kubectl runs `berth kubectl` against the cluster (bounded: exec can hang).
func kubectl(args ...string) (string, error) {
	return runCmd(60*time.Second, berthBin, append([]string{"kubectl", "--kubeconfig", clu.kubeconfig}, args...)...)
}

// ctr runs `berth ctr` against the node's containerd.
func ctr(t *testing.T, args ...string) string {
	t.Helper()
	out, err := runCmd(30*time.Second, berthBin, append([]string{"ctr", "-a", containerdSock}, args...)...)
	if err != nil {
		t.Fatalf("berth ctr %v: %v\n%s", args, err, out)
	}
	return out
}

func runCmd(timeout time.Duration, bin string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Env = testutil.CleanEnv()
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	out, err := cmd.CombinedOutput()
	return string(out), err
}

func containerID(t *testing.T, p *corev1.Pod) string {
	t.Helper()
	if len(p.Status.ContainerStatuses) == 0 {
		t.Fatalf("pod %s has no container status", p.Name)
	}
	id := p.Status.ContainerStatuses[0].ContainerID
	if !strings.HasPrefix(id, "containerd://") {
		t.Fatalf("unexpected containerID %q", id)
	}
	return id
}

// taskPID finds the container's main process on the host via `ctr task ls`.
func taskPID(t *testing.T, containerID string) int {
	t.Helper()
	id := strings.TrimPrefix(containerID, "containerd://")
	out := ctr(t, "-n", "k8s.io", "task", "ls")
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		if len(f) >= 3 && f[0] == id {
			pid, err := strconv.Atoi(f[1])
			if err != nil || pid <= 0 {
				t.Fatalf("task %s: bad pid %q", id, f[1])
			}
			return pid
		}
	}
	t.Fatalf("task %s not in ctr task ls:\n%s", id, out)
	return 0
}

// netnsPath finds the bind-mounted netns file of a process's network
// namespace (the pod sandbox's netns, shared by its containers).
func netnsPath(t *testing.T, pid int) string {
	t.Helper()
	var want syscall.Stat_t
	if err := syscall.Stat(fmt.Sprintf("/proc/%d/ns/net", pid), &want); err != nil {
		t.Fatal(err)
	}
	var seen []string
	for _, dir := range []string{"/var/run/netns", "/run/netns", filepath.Join(clu.dataDir, "agent")} {
		_ = filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
			if err != nil || d.IsDir() {
				return nil
			}
			var st syscall.Stat_t
			if syscall.Stat(p, &st) == nil && st.Ino == want.Ino && st.Dev == want.Dev {
				seen = append(seen, p)
			}
			return nil
		})
		if len(seen) > 0 {
			return seen[0]
		}
	}
	t.Fatalf("no netns file for pid %d's network namespace (inode %d) under /var/run/netns, /run/netns or the agent dir", pid, want.Ino)
	return ""
}

func linkByIndex(idx int) string {
	ents, _ := os.ReadDir("/sys/class/net")
	for _, e := range ents {
		b, err := os.ReadFile(filepath.Join("/sys/class/net", e.Name(), "ifindex"))
		if err == nil && strings.TrimSpace(string(b)) == strconv.Itoa(idx) {
			return e.Name()
		}
	}
	return ""
}

func cni0Veths(t *testing.T) string {
	t.Helper()
	out, err := exec.Command("ip", "-o", "link", "show", "master", "cni0").CombinedOutput()
	if err != nil {
		t.Fatalf("ip link show master cni0: %v %s", err, out)
	}
	return string(out)
}

func countLines(s string) int {
	n := 0
	for _, l := range strings.Split(s, "\n") {
		if strings.TrimSpace(l) != "" {
			n++
		}
	}
	return n
}

func nodeInternalIP(t *testing.T) string {
	t.Helper()
	c := requireCluster(t)
	nodes, err := c.cs.CoreV1().Nodes().List(context.Background(), metav1.ListOptions{})
	if err != nil || len(nodes.Items) == 0 {
		t.Fatalf("list nodes: %v", err)
	}
	for _, a := range nodes.Items[0].Status.Addresses {
		if a.Type == corev1.NodeInternalIP {
			return a.Address
		}
	}
	t.Fatalf("node has no InternalIP: %+v", nodes.Items[0].Status.Addresses)
	return ""
}
