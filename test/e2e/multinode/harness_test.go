package multinode

// The multi-node harness: a Cluster is a bridge in the root network
// namespace plus Nodes; a Node is a network namespace joined to the bridge
// by a veth, a private mount namespace (kept alive by a small holder
// process, so the node keeps its mounts across berth restarts as a real host
// does), a kubelet cgroup root, a data dir, and a berth process started in
// those namespaces with arbitrary arguments.
//
// A server and an agent (once `agent` joins):
//
//	c := NewCluster(t)
//	srv := c.StartServer(t)
//	c.WaitNodeReady(t, srv, 3*time.Minute, time.Time{})
//	tok, err := c.Token()
//	a := c.AddNode(t, "mn-agent1") // 10.99.0.11, netns berth-mn-agent1
//	err = a.StartBinary(berthAgentBin, append([]string{"agent",
//		"--server", c.ServerURL(), "--token", tok}, a.NodeArgs()...)...)
//	cs := c.WaitNodeReady(t, a, 3*time.Minute, time.Time{})
//	out, err := a.Exec(ctx, "iptables-save") // the node's own rules
//
// Teardown is automatic (t.Cleanup; TestMain on interrupts and before the
// binary's -timeout) and checked: TestMain fails the run when anything of
// ours is left on the host.

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/berth-io/berth/test/testutil"
)

const (
	runDirPrefix     = "berth-mn-run-"       // <tmp>/berth-mn-run-*: one per test run
	sysctlRecord     = "sysctls.orig"        // in the run dir: global tunables before the run
	mountpointRecord = "created-mountpoints" // in the run dir: host dirs the harness created

	bridgeName   = "bmn0"
	bridgeCIDR   = "10.99.0.1/24"
	gatewayIP    = "10.99.0.1"
	subnetPrefix = "10.99.0."
	firstHostNum = 10 // node i gets 10.99.0.(10+i)

	netnsPrefix  = "berth-mn-" // network namespaces berth-mn-<short>
	linkPrefix   = "bmn"       // bmn0 and the host ends bmn-<short>
	cgroupPrefix = "berth-mn-" // kubelet cgroup roots /berth-mn-<short>
	iptComment   = "berth-mn-harness"

	// ServerName is the server node's name; its address is 10.99.0.10.
	ServerName = "mn-server"
	// NodeIface is the node's interface inside its network namespace.
	NodeIface = "eth0"
	// APIPort is the server's public port (inside its namespace).
	APIPort = 6443

	stopGrace = 30 * time.Second
)

// privateDirs are the host-wide paths every node gets its own copy of,
// bind-mounted inside its mount namespace from <node dir>/root/<path>:
// containerd's state and socket, flannel's subnet file, pod netns pins,
// the kubelet root, CNI state, pod and container logs, and /etc/berth (the
// default config file and the node password dir). See multinode.md for what
// breaks when each is shared.
var privateDirs = []string{
	"/run/berth",
	"/run/containerd",
	"/run/flannel",
	"/run/netns",
	"/var/lib/kubelet",
	"/var/lib/cni",
	"/var/log/pods",
	"/var/log/containers",
	"/etc/berth",
}

// ---------------------------------------------------------------------------
// Cluster

// Cluster is the bridge bmn0 and the nodes on it. Only one exists at a time
// (addresses and names are fixed); it is torn down by the test's cleanup,
// or by TestMain on an interrupt or near the test binary's timeout.
type Cluster struct {
	// Dir holds the nodes' dirs (data, logs, private mounts); removed at the end.
	Dir string
	// ExtraImages are more image tarballs (the air-gap bundle) every node
	// added from now on gets in its images dir.
	ExtraImages []string

	mu        sync.Mutex
	nodes     []*Node
	next      int
	rules     [][]string // iptables rules added in the root namespace
	closeOnce sync.Once
}

var (
	clustersMu sync.Mutex
	clusters   = map[*Cluster]bool{}

	leaksMu sync.Mutex
	leaks   []string

	mountpointsOnce sync.Once
	mountpointsErr  error
)

// NewCluster creates the bridge and its forwarding rules; nodes are added
// with AddNode or StartServer. Everything is removed when the test ends.
func NewCluster(t *testing.T) *Cluster {
	t.Helper()
	if skipReason != "" {
		t.Skip(skipReason)
	}
	if linkExists(bridgeName) {
		t.Fatalf("bridge %s already exists: another cluster of this harness is running", bridgeName)
	}
	dir, err := os.MkdirTemp(runDir, "cluster-")
	if err != nil {
		t.Fatal(err)
	}
	c := &Cluster{Dir: dir}
	clustersMu.Lock()
	clusters[c] = true
	clustersMu.Unlock()
	t.Cleanup(func() {
		c.close(t.Logf, t.Failed())
	})
	mountpointsOnce.Do(func() { mountpointsErr = ensureMountpoints() })
	if mountpointsErr != nil {
		t.Fatal(mountpointsErr)
	}
	for _, args := range [][]string{
		{"ip", "link", "add", bridgeName, "type", "bridge"},
		{"ip", "addr", "add", bridgeCIDR, "dev", bridgeName},
		{"ip", "link", "set", bridgeName, "up"},
	} {
		if err := run(args...); err != nil {
			t.Fatal(err)
		}
	}
	// Bridged traffic passes the root namespace's FORWARD chain
	// (bridge-nf-call-iptables); a DROP policy or someone's earlier DROP
	// rule would cut the nodes off from each other. Inserted first.
	for _, dir := range []string{"-i", "-o"} {
		spec := []string{"FORWARD", dir, bridgeName, "-m", "comment", "--comment", iptComment, "-j", "ACCEPT"}
		if err := run(append([]string{"iptables", "-w", "-I"}, spec...)...); err != nil {
			t.Fatal(err)
		}
		c.mu.Lock()
		c.rules = append(c.rules, spec)
		c.mu.Unlock()
	}
	return c
}

// closeAllClusters tears down every cluster still up (interrupt, timeout).
func closeAllClusters() {
	clustersMu.Lock()
	var cs []*Cluster
	for c := range clusters {
		cs = append(cs, c)
	}
	clustersMu.Unlock()
	logf := func(format string, a ...any) { fmt.Fprintf(os.Stderr, "multinode: "+format+"\n", a...) }
	for _, c := range cs {
		c.close(logf, true)
	}
}

func teardownLeaks() []string {
	leaksMu.Lock()
	defer leaksMu.Unlock()
	return append([]string(nil), leaks...)
}

func recordLeak(format string, a ...any) {
	leaksMu.Lock()
	leaks = append(leaks, fmt.Sprintf(format, a...))
	leaksMu.Unlock()
}

// close tears the nodes down (in parallel), then the bridge and the rules,
// and removes the cluster's dir. With printLogs each node's log tail is
// printed first (the test failed).
func (c *Cluster) close(logf func(string, ...any), printLogs bool) {
	c.closeOnce.Do(func() {
		c.mu.Lock()
		nodes := append([]*Node(nil), c.nodes...)
		rules := c.rules
		c.mu.Unlock()
		if printLogs {
			for _, n := range nodes {
				logf("node %s: berth log (last 80 lines):\n%s", n.Name, n.LogTail(80))
			}
		}
		var wg sync.WaitGroup
		for _, n := range nodes {
			wg.Add(1)
			go func() {
				defer wg.Done()
				problems := n.teardown(logf)
				for _, p := range problems {
					logf("node %s teardown: %s", n.Name, p)
					recordLeak("node %s: %s", n.Name, p)
				}
				if len(problems) > 0 && !printLogs {
					logf("node %s: berth log (last 40 lines):\n%s", n.Name, n.LogTail(40))
				}
			}()
		}
		wg.Wait()
		if linkExists(bridgeName) {
			if err := run("ip", "link", "del", bridgeName); err != nil {
				logf("%v", err)
			}
		}
		for _, spec := range rules {
			if err := run(append([]string{"iptables", "-w", "-D"}, spec...)...); err != nil {
				logf("%v", err)
			}
		}
		if err := os.RemoveAll(c.Dir); err != nil {
			logf("remove %s: %v", c.Dir, err)
		}
		clustersMu.Lock()
		delete(clusters, c)
		clustersMu.Unlock()
	})
}

// Nodes returns the nodes added so far, in order.
func (c *Cluster) Nodes() []*Node {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]*Node(nil), c.nodes...)
}

// Server returns the node named ServerName, or nil.
func (c *Cluster) Server() *Node {
	for _, n := range c.Nodes() {
		if n.Name == ServerName {
			return n
		}
	}
	return nil
}

// ServerURL is the server's public URL as the other nodes (and the root
// namespace) reach it.
func (c *Cluster) ServerURL() string {
	return fmt.Sprintf("https://%s%d:%d", subnetPrefix, firstHostNum, APIPort)
}

// StartServer adds the node mn-server (10.99.0.10) and starts `berth
// server` on it with the per-node flags, --advertise-address and an admin
// kubeconfig in the node's dir, then extra. It does not wait for Ready.
func (c *Cluster) StartServer(t *testing.T, extra ...string) *Node {
	t.Helper()
	if len(c.Nodes()) != 0 {
		t.Fatal("StartServer must add the first node (the server's address is 10.99.0.10)")
	}
	n := c.AddNode(t, ServerName)
	args := append([]string{"server"}, n.NodeArgs()...)
	args = append(args, "--advertise-address", n.IP, "--write-kubeconfig", n.Kubeconfig)
	// Only the test images are in the nodes' images dirs; the packaged
	// add-ons need the air-gap bundle (see TestAddons, which passes its own
	// --disable, empty, to enable them).
	if !slices.Contains(extra, "--disable") {
		args = append(args, "--disable", "coredns,local-storage,metrics-server")
	}
	args = append(args, extra...)
	if err := n.Start(args...); err != nil {
		t.Fatalf("start %s: %v\n%s", n.Name, err, n.LogTail(40))
	}
	return n
}

// Token returns the server's join token (<data-dir>/server/token).
func (c *Cluster) Token() (string, error) {
	s := c.Server()
	if s == nil {
		return "", errors.New("no server node")
	}
	b, err := os.ReadFile(filepath.Join(s.DataDir, "server", "token"))
	return strings.TrimSpace(string(b)), err
}

// RESTConfig is the server's admin kubeconfig with the server URL rewritten
// from the node's loopback to ServerURL (the serving certificate has the
// advertise address as a SAN). It fails until the server wrote the file
// (once it is ready).
func (c *Cluster) RESTConfig() (*rest.Config, error) {
	path, err := c.Kubeconfig()
	if err != nil {
		return nil, err
	}
	cfg, err := clientcmd.BuildConfigFromFlags("", path)
	if err != nil {
		return nil, err
	}
	cfg.Timeout = 20 * time.Second
	return cfg, nil
}

// Kubeconfig writes (once the server has written its own) an admin
// kubeconfig usable from the root namespace, e.g. for `berth kubectl
// --kubeconfig`, and returns its path.
func (c *Cluster) Kubeconfig() (string, error) {
	s := c.Server()
	if s == nil {
		return "", errors.New("no server node")
	}
	cfg, err := clientcmd.LoadFromFile(s.Kubeconfig)
	if err != nil {
		return "", err
	}
	for _, cl := range cfg.Clusters {
		cl.Server = c.ServerURL()
	}
	out := filepath.Join(c.Dir, "admin-from-root-ns.yaml")
	if err := clientcmd.WriteToFile(*cfg, out); err != nil {
		return "", err
	}
	return out, nil
}

// Client returns a clientset for the server, from the root namespace.
func (c *Cluster) Client() (kubernetes.Interface, error) {
	cfg, err := c.RESTConfig()
	if err != nil {
		return nil, err
	}
	return kubernetes.NewForConfig(cfg)
}

// WaitNodeReady waits until node n is Ready (with after set: with a Ready
// heartbeat later than after, e.g. from a kubelet started after it). It fails the
// test at once, with the log, when n's or the server's berth exits. It
// returns the clientset it used.
func (c *Cluster) WaitNodeReady(t *testing.T, n *Node, timeout time.Duration, after time.Time) kubernetes.Interface {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	var cs kubernetes.Interface
	var last error
	for ctx.Err() == nil {
		for _, m := range []*Node{c.Server(), n} {
			if m != nil && !m.Running() {
				t.Fatalf("berth on %s exited (%s)\n%s", m.Name, m.ExitState(), m.LogTail(60))
			}
		}
		if cs == nil {
			cs, last = c.Client()
		}
		if cs != nil {
			last = nodeReady(ctx, cs, n.Name, after)
			if last == nil {
				return cs
			}
		}
		sleep(ctx, time.Second)
	}
	t.Fatalf("node %s not Ready within %s: %v\n%s", n.Name, timeout, last, n.LogTail(60))
	return nil
}

func nodeReady(ctx context.Context, cs kubernetes.Interface, name string, after time.Time) error {
	node, err := cs.CoreV1().Nodes().Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return err
	}
	for _, cond := range node.Status.Conditions {
		if cond.Type != corev1.NodeReady {
			continue
		}
		if cond.Status != corev1.ConditionTrue {
			return fmt.Errorf("Ready=%s: %s", cond.Status, cond.Message)
		}
		// Heartbeats have whole seconds: one after `after` is from a
		// kubelet that ran after it.
		if !after.IsZero() && !cond.LastHeartbeatTime.Time.After(after) {
			return fmt.Errorf("Ready heartbeat %s is from before %s", cond.LastHeartbeatTime, after.Format(time.RFC3339))
		}
		return nil
	}
	return errors.New("no Ready condition")
}

// ---------------------------------------------------------------------------
// Node

// Node is one berth node: its namespaces, cgroups, dirs and berth process.
type Node struct {
	Name       string // node name (--node-name), e.g. mn-agent1; <short> is it without "mn-"
	IP         string // 10.99.0.(10+i) on NodeIface
	NetNS      string // berth-mn-<short>, in /run/netns
	HostVeth   string // bmn-<short>: the veth's root-namespace end, on bmn0
	CgroupRoot string // /berth-mn-<short> in every cgroup hierarchy (kubelet cgroup-root)
	Dir        string // everything of the node: data, root/ (its private dirs), log
	DataDir    string // -d
	LogPath    string // berth's stdout and stderr (and the mount holder's)
	Kubeconfig string // --write-kubeconfig for a server (loopback URL; see Cluster.Kubeconfig)

	c *Cluster

	mu         sync.Mutex
	bin        string
	args       []string
	cmd        *exec.Cmd
	done       chan struct{}
	holder     *exec.Cmd
	holderDone chan struct{}
	mntNS      string   // "mnt:[inode]" of the node's mount namespace
	mntFD      *os.File // keeps that namespace (and its inode number) ours until teardown
	tornDown   bool
}

// AddNode creates node name's network namespace, veth, cgroups, dirs (with
// the image tarballs in <data-dir>/agent/images) and mount namespace. Start
// runs berth on it.
func (c *Cluster) AddNode(t *testing.T, name string) *Node {
	t.Helper()
	short := strings.TrimPrefix(name, "mn-")
	if name == "" || strings.ContainsAny(name, " /'\"") || len(linkPrefix+"-"+short) > 15 {
		t.Fatalf("bad node name %q (the host veth %s-%s must fit 15 characters)", name, linkPrefix, short)
	}
	c.mu.Lock()
	for _, m := range c.nodes {
		if m.Name == name || strings.TrimPrefix(m.Name, "mn-") == short {
			c.mu.Unlock()
			t.Fatalf("node %s exists", name)
		}
	}
	i := c.next
	c.next++
	n := &Node{
		Name:       name,
		IP:         fmt.Sprintf("%s%d", subnetPrefix, firstHostNum+i),
		NetNS:      netnsPrefix + short,
		HostVeth:   linkPrefix + "-" + short,
		CgroupRoot: "/" + cgroupPrefix + short,
		Dir:        filepath.Join(c.Dir, name),
		c:          c,
	}
	n.DataDir = filepath.Join(n.Dir, "data")
	n.LogPath = filepath.Join(n.Dir, "berth.log")
	n.Kubeconfig = filepath.Join(n.Dir, "admin.yaml")
	// Registered before anything exists, so the cleanup finds partial set-ups.
	c.nodes = append(c.nodes, n)
	c.mu.Unlock()

	if err := n.setup(); err != nil {
		t.Fatalf("set up node %s: %v\n%s", name, err, n.LogTail(20))
	}
	return n
}

func (n *Node) setup() error {
	imgDst := filepath.Join(n.DataDir, "agent", "images")
	if err := os.MkdirAll(imgDst, 0o755); err != nil {
		return err
	}
	tars, _ := filepath.Glob(filepath.Join(imagesDir, "*.tar"))
	if len(tars) == 0 {
		return fmt.Errorf("no image tarballs in %s (run make images)", imagesDir)
	}
	for _, src := range append(tars, n.c.ExtraImages...) {
		if err := testutil.CopyFile(src, filepath.Join(imgDst, filepath.Base(src))); err != nil {
			return err
		}
	}
	for _, d := range privateDirs {
		if err := os.MkdirAll(filepath.Join(n.Dir, "root", d), 0o755); err != nil {
			return err
		}
	}

	// Network: a namespace joined to bmn0 by a veth whose node end is eth0.
	ns := n.NetNS
	for _, args := range [][]string{
		{"ip", "netns", "add", ns},
		{"ip", "link", "add", n.HostVeth, "type", "veth", "peer", "name", NodeIface, "netns", ns},
		{"ip", "link", "set", n.HostVeth, "master", bridgeName, "up"},
		{"ip", "-n", ns, "addr", "add", n.IP + "/24", "dev", NodeIface},
		{"ip", "-n", ns, "link", "set", NodeIface, "up"},
		{"ip", "-n", ns, "link", "set", "lo", "up"},
		{"ip", "-n", ns, "route", "add", "default", "via", gatewayIP},
	} {
		if err := run(args...); err != nil {
			return err
		}
	}

	if err := createCgroup(n.CgroupRoot); err != nil {
		return err
	}
	return n.startHolder()
}

// startHolder creates the node's mount namespace: private propagation
// (nothing leaks to or from the host), then / made rshared again for the
// node's own mounts (pods with HostToContainer propagation need a shared
// mount), the node's private dirs bound over the host-wide paths, and a
// process that keeps the namespace alive until teardown. berth enters it
// on every start, so the node keeps its mounts across berth restarts.
func (n *Node) startHolder() error {
	var sb strings.Builder
	sb.WriteString("set -e\n")
	// Drop this namespace's copies of whatever the host (or another node)
	// has mounted at or under the paths, so the node neither sees nor pins
	// them (e.g. other nodes' netns pins in /run/netns); the namespace is
	// still private here, so the host is untouched.
	sb.WriteString(`umount_under() {
	awk -v d="$1" '$5 == d || index($5, d "/") == 1 { print $5 }' /proc/self/mountinfo | sort -r |
	while read -r m; do umount -l "$m" || true; done
}
`)
	for _, d := range privateDirs {
		fmt.Fprintf(&sb, "umount_under %s\n", shellQuote(d))
	}
	sb.WriteString("mount --make-rshared /\n")
	for _, d := range privateDirs {
		src := filepath.Join(n.Dir, "root", d)
		// Each bind gets its own peer group (not /'s): mounts under it do
		// not show up a second time under the node dir.
		fmt.Fprintf(&sb, "mount --bind %s %s\nmount --make-private %s\nmount --make-rshared %s\n",
			shellQuote(src), shellQuote(d), shellQuote(d), shellQuote(d))
	}
	sb.WriteString("echo ready\nexec sleep infinity </dev/null >/dev/null 2>&1\n")

	logf, err := os.OpenFile(n.LogPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	defer logf.Close()
	fmt.Fprintf(logf, "===== multinode: creating the mount namespace of %s %s =====\n", n.Name, time.Now().Format(time.RFC3339))
	cmd := exec.Command("nsenter", "--net="+netnsPath(n.NetNS), "--",
		"unshare", "--mount", "--propagation", "private", "--",
		"/bin/sh", "-c", sb.String())
	cmd.Stderr = logf
	cmd.Env = testutil.CleanEnv()
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	out, err := cmd.StdoutPipe()
	if err != nil {
		return err
	}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start the mount namespace holder: %w", err)
	}
	done := make(chan struct{})
	n.mu.Lock()
	n.holder, n.holderDone = cmd, done
	n.mu.Unlock()
	ready := make(chan error, 1)
	go func() {
		line, err := bufio.NewReader(out).ReadString('\n')
		if err == nil && line != "ready\n" {
			err = fmt.Errorf("unexpected output %q", line)
		}
		ready <- err
		_, _ = io.Copy(io.Discard, out)
		_ = cmd.Wait()
		close(done)
	}()
	select {
	case err := <-ready:
		if err != nil {
			<-done
			return fmt.Errorf("mount namespace set-up failed (%s): %v", cmd.ProcessState, err)
		}
	case <-time.After(30 * time.Second):
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		return errors.New("mount namespace set-up did not finish within 30s")
	}

	// Record the namespace and keep it open: never accept an empty or
	// host-equal id (a harness that did once killed unrelated processes).
	pid := cmd.Process.Pid
	id := nsID(pid, "mnt")
	if id == "" || id == nsID(os.Getpid(), "mnt") {
		return fmt.Errorf("holder %d: mount namespace %q is empty or the host's", pid, id)
	}
	fd, err := os.Open(fmt.Sprintf("/proc/%d/ns/mnt", pid))
	if err != nil {
		return err
	}
	// The fd must name the namespace we checked (the pid could have died
	// and been reused in between).
	if got, _ := os.Readlink(fmt.Sprintf("/proc/self/fd/%d", fd.Fd())); got != id {
		fd.Close()
		return fmt.Errorf("holder %d: namespace changed under us (%q, then %q)", pid, id, got)
	}
	if net := nsID(pid, "net"); net == "" || net != netnsFileID(n.NetNS) {
		fd.Close()
		return fmt.Errorf("holder %d is in network namespace %q, not %s", pid, net, n.NetNS)
	}
	n.mu.Lock()
	n.mntNS, n.mntFD = id, fd
	n.mu.Unlock()
	return nil
}

// NodeArgs are the per-node berth flags: data dir, node name and IP,
// flannel interface, kubelet cgroup root. Both `server` and (presumably)
// `agent` take them.
func (n *Node) NodeArgs() []string {
	return []string{
		"-d", n.DataDir,
		"--node-name", n.Name,
		"--node-ip", n.IP,
		"--flannel-iface", NodeIface,
		"--kubelet-arg=cgroup-root=" + n.CgroupRoot,
	}
}

// MountNS is the node's mount namespace id ("mnt:[inode]").
func (n *Node) MountNS() string {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.mntNS
}

// nsenterArgs enter the node's network and mount namespaces. The mount
// namespace is named through our own open fd, never through a pid that
// could be reused.
func (n *Node) nsenterArgs() ([]string, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.mntFD == nil || n.tornDown {
		return nil, fmt.Errorf("node %s has no mount namespace (torn down?)", n.Name)
	}
	return []string{
		"--net=" + netnsPath(n.NetNS),
		fmt.Sprintf("--mount=/proc/%d/fd/%d", os.Getpid(), n.mntFD.Fd()),
	}, nil
}

// Start runs bin/berth with args (everything after the binary name, e.g.
// "server", … plus NodeArgs()) in the node's namespaces; see StartBinary.
func (n *Node) Start(args ...string) error { return n.StartBinary(berthBin, args...) }

// StartBinary runs bin (berthBin, berthAgentBin) with args in the node's
// namespaces, in its own process group, killed if the test dies, output to
// LogPath. It returns once the process is inside the node's mount
// namespace.
func (n *Node) StartBinary(bin string, args ...string) error {
	ns, err := n.nsenterArgs()
	if err != nil {
		return err
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.cmd != nil {
		select {
		case <-n.done:
		default:
			return fmt.Errorf("berth is already running on %s", n.Name)
		}
	}
	f, err := os.OpenFile(n.LogPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	fmt.Fprintf(f, "\n===== multinode: starting berth on %s %s: %s =====\n", n.Name, time.Now().Format(time.RFC3339), strings.Join(args, " "))
	cmd := exec.Command("nsenter", append(append(ns, "--", bin), args...)...)
	cmd.Stdout, cmd.Stderr = f, f
	cmd.Env = testutil.CleanEnv()
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		f.Close()
		return fmt.Errorf("start berth: %w", err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); f.Close(); close(done) }()
	n.bin, n.args, n.cmd, n.done = bin, args, cmd, done

	// nsenter enters the namespaces and execs berth (same pid).
	deadline := time.Now().Add(10 * time.Second)
	for {
		id := nsID(cmd.Process.Pid, "mnt")
		if id != "" && id == n.mntNS {
			return nil
		}
		select {
		case <-done:
			return fmt.Errorf("berth exited at once: %s", cmd.ProcessState)
		default:
		}
		if time.Now().After(deadline) {
			_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
			return fmt.Errorf("berth (pid %d) is in mount namespace %q, not the node's %q", cmd.Process.Pid, id, n.mntNS)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// Running tells whether berth runs on the node.
func (n *Node) Running() bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.cmd == nil {
		return false
	}
	select {
	case <-n.done:
		return false
	default:
		return true
	}
}

// ExitState describes how berth exited ("running" if it did not).
func (n *Node) ExitState() string {
	n.mu.Lock()
	cmd, done := n.cmd, n.done
	n.mu.Unlock()
	if cmd == nil {
		return "not started"
	}
	select {
	case <-done:
		return cmd.ProcessState.String()
	default:
		return "running"
	}
}

// Stop sends berth SIGTERM and waits up to timeout, then kills its process
// group. It returns berth's exit code (-1 if it had to be killed). Pods,
// their shims and the node's namespaces stay (as on a real host).
func (n *Node) Stop(timeout time.Duration) (int, error) {
	n.mu.Lock()
	cmd, done := n.cmd, n.done
	n.mu.Unlock()
	if cmd == nil {
		return 0, nil
	}
	code, err := testutil.StopProcess(cmd, done, timeout)
	if err != nil {
		return code, fmt.Errorf("berth on %s: %w", n.Name, err)
	}
	return code, nil
}

// Restart stops berth gracefully (SIGTERM, 30 s) and starts it again with
// the same binary and arguments, in the same namespaces.
func (n *Node) Restart() error {
	n.mu.Lock()
	bin, args := n.bin, n.args
	n.mu.Unlock()
	if args == nil {
		return fmt.Errorf("berth was never started on %s", n.Name)
	}
	if code, err := n.Stop(stopGrace); err != nil {
		return err
	} else if code != 0 {
		return fmt.Errorf("berth on %s exited with code %d on SIGTERM", n.Name, code)
	}
	return n.StartBinary(bin, args...)
}

// StartAgain starts berth again, after it exited, with the same binary and
// arguments: what a service manager's Restart=always does.
func (n *Node) StartAgain() error {
	n.mu.Lock()
	bin, args := n.bin, n.args
	n.mu.Unlock()
	if args == nil {
		return fmt.Errorf("berth was never started on %s", n.Name)
	}
	if n.Running() {
		return fmt.Errorf("berth on %s still runs", n.Name)
	}
	return n.StartBinary(bin, args...)
}

// Exec runs a command in the node's network and mount namespaces (so
// iptables, ss, ip, crictl and ctr see the node's state) and returns its
// combined output.
func (n *Node) Exec(ctx context.Context, args ...string) (string, error) {
	ns, err := n.nsenterArgs()
	if err != nil {
		return "", err
	}
	cmd := exec.CommandContext(ctx, "nsenter", append(append(ns, "--"), args...)...)
	cmd.Env = testutil.CleanEnv()
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("%s on %s: %w", strings.Join(args, " "), n.Name, err)
	}
	return string(out), nil
}

// LogTail returns the last lines of the node's log.
func (n *Node) LogTail(lines int) string {
	b, _ := os.ReadFile(n.LogPath)
	ls := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(ls) > lines {
		ls = ls[len(ls)-lines:]
	}
	return strings.Join(ls, "\n")
}

// teardown stops berth, kills everything left of the node (containerd,
// shims, pods, the holder: by its mount namespace, its cgroups, its
// network namespace and binaries under its dir), removes its cgroups,
// network namespace and veth. It returns what it could not clean.
func (n *Node) teardown(logf func(string, ...any)) (problems []string) {
	n.mu.Lock()
	if n.tornDown {
		n.mu.Unlock()
		return nil
	}
	n.tornDown = true
	n.mu.Unlock()

	started := n.ExitState() != "not started"
	if code, err := n.Stop(stopGrace); err != nil {
		logf("%v", err)
	} else if started {
		logf("node %s: berth exited with code %d", n.Name, code)
	}

	n.mu.Lock()
	mnt, fd, holderDone := n.mntNS, n.mntFD, n.holderDone
	n.mu.Unlock()
	find := func() []int {
		var pids []int
		if mnt != "" { // still pinned by fd, so the id is still ours
			pids = append(pids, pidsInMountNS(mnt)...)
		}
		pids = append(pids, cgroupPIDs(n.CgroupRoot)...)
		pids = append(pids, netnsPIDs(n.NetNS)...)
		pids = append(pids, pidsWithExeUnder(n.Dir)...)
		return uniq(pids)
	}
	if pids := find(); len(pids) > 0 {
		logf("node %s: killing %d leftover processes: %s", n.Name, len(pids), describeBriefly(pids))
	}
	if left := killUntilGone(find, 30*time.Second); len(left) > 0 {
		problems = append(problems, fmt.Sprintf("processes survive SIGKILL: %s", describePIDs(left)))
	}
	if mnt != "" {
		if left := pidsInMountNS(mnt); len(left) > 0 {
			problems = append(problems, fmt.Sprintf("processes left in mount namespace %s: %s", mnt, describePIDs(left)))
		}
	}
	if holderDone != nil {
		select {
		case <-holderDone:
		case <-time.After(10 * time.Second):
			problems = append(problems, "the mount namespace holder did not exit")
		}
	}
	if err := removeCgroup(n.CgroupRoot, 15*time.Second); err != nil {
		problems = append(problems, err.Error())
	}
	if fileExists(netnsPath(n.NetNS)) {
		if err := run("ip", "netns", "del", n.NetNS); err != nil {
			problems = append(problems, err.Error())
		}
	}
	// The host veth goes with the namespace, which the kernel frees
	// asynchronously once nothing holds it.
	if !waitFor(10*time.Second, func() bool { return !linkExists(n.HostVeth) }) {
		if err := run("ip", "link", "del", n.HostVeth); err != nil {
			problems = append(problems, err.Error())
		}
	}
	if fd != nil {
		_ = fd.Close()
	}
	return problems
}

// ---------------------------------------------------------------------------
// Host resources: namespaces, links, cgroups, rules, processes.

func netnsPath(name string) string { return "/run/netns/" + name }

// nsID is readlink /proc/<pid>/ns/<kind> ("mnt:[4026531841]"), "" if unknown.
func nsID(pid int, kind string) string {
	id, _ := os.Readlink(fmt.Sprintf("/proc/%d/ns/%s", pid, kind))
	return id
}

// netnsFileID is the "net:[inode]" id of a named network namespace.
func netnsFileID(name string) string {
	var st syscall.Stat_t
	if err := syscall.Stat(netnsPath(name), &st); err != nil {
		return ""
	}
	return fmt.Sprintf("net:[%d]", st.Ino)
}

func allPIDs() []int {
	var pids []int
	ents, _ := os.ReadDir("/proc")
	self := os.Getpid()
	for _, e := range ents {
		if pid, err := strconv.Atoi(e.Name()); err == nil && pid > 1 && pid != self {
			pids = append(pids, pid)
		}
	}
	return pids
}

// pidsInMountNS lists processes whose mount namespace is id. An empty id
// or our own never matches.
func pidsInMountNS(id string) []int {
	if id == "" || id == nsID(os.Getpid(), "mnt") {
		return nil
	}
	var pids []int
	for _, pid := range allPIDs() {
		if nsID(pid, "mnt") == id {
			pids = append(pids, pid)
		}
	}
	return pids
}

// netnsPIDs lists processes in a named network namespace (ip netns pids).
func netnsPIDs(name string) []int {
	if !fileExists(netnsPath(name)) {
		return nil
	}
	out, err := exec.Command("ip", "netns", "pids", name).Output()
	if err != nil {
		return nil
	}
	var pids []int
	self := os.Getpid()
	for _, f := range strings.Fields(string(out)) {
		if pid, err := strconv.Atoi(f); err == nil && pid > 1 && pid != self {
			pids = append(pids, pid)
		}
	}
	return pids
}

// pidsWithExeUnder lists processes whose executable lies under dir (the
// node's containerd, shims, runc, CNI plugins are unpacked in its data dir).
func pidsWithExeUnder(dir string) []int {
	return pidsWithExePrefix(strings.TrimSuffix(dir, "/") + "/")
}

// pidsWithExePrefix lists processes whose executable path starts with prefix.
func pidsWithExePrefix(prefix string) []int {
	var pids []int
	for _, pid := range allPIDs() {
		if exe, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid)); err == nil && strings.HasPrefix(exe, prefix) {
			pids = append(pids, pid)
		}
	}
	return pids
}

// pidsWithOurMounts lists processes whose mount namespace (not ours) has a
// mount of, or at, a path under a run dir: the nodes' namespaces and the
// pods started from them (their /etc/hosts and volumes are bound from the
// node's kubelet dir), also after a crash that lost every other record.
func pidsWithOurMounts() []int {
	marker := "/" + runDirPrefix
	self := nsID(os.Getpid(), "mnt")
	verdict := map[string]bool{}
	var pids []int
	for _, pid := range allPIDs() {
		id := nsID(pid, "mnt")
		if id == "" || id == self {
			continue
		}
		ours, seen := verdict[id]
		if !seen {
			ours = mountinfoHas(pid, marker)
			verdict[id] = ours
		}
		if ours {
			pids = append(pids, pid)
		}
	}
	return pids
}

func mountinfoHas(pid int, marker string) bool {
	f, err := os.Open(fmt.Sprintf("/proc/%d/mountinfo", pid))
	if err != nil {
		return false
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) >= 5 && (strings.Contains(fields[3], marker) || strings.Contains(fields[4], marker)) {
			return true
		}
	}
	return false
}

// killUntilGone SIGKILLs what find returns until it returns nothing or the
// timeout passes; it returns the survivors.
func killUntilGone(find func() []int, timeout time.Duration) []int {
	deadline := time.Now().Add(timeout)
	for {
		pids := find()
		if len(pids) == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return pids
		}
		for _, pid := range pids {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func describePIDs(pids []int) string {
	var s []string
	for _, p := range pids {
		s = append(s, fmt.Sprintf("%d (%s)", p, cmdline(p)))
	}
	return strings.Join(s, ", ")
}

// describeBriefly counts processes by command name.
func describeBriefly(pids []int) string {
	count := map[string]int{}
	for _, p := range pids {
		b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", p))
		count[strings.TrimSpace(string(b))]++
	}
	var s []string
	for name, k := range count {
		s = append(s, fmt.Sprintf("%s×%d", name, k))
	}
	sort.Strings(s)
	return strings.Join(s, " ")
}

func cmdline(pid int) string {
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	return strings.TrimSpace(strings.ReplaceAll(string(b), "\x00", " "))
}

func uniq(pids []int) []int {
	seen := map[int]bool{}
	var out []int
	for _, p := range pids {
		if !seen[p] {
			seen[p] = true
			out = append(out, p)
		}
	}
	return out
}

// cgroupHierarchies are the mount points of the cgroup v1 hierarchies and
// the cgroup2 one (hybrid: /sys/fs/cgroup/unified) in our mount namespace.
func cgroupHierarchies() []string {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil
	}
	defer f.Close()
	var mps []string
	seen := map[string]bool{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		// ID parent major:minor root mountpoint options [optional...] - fstype source superoptions
		line := sc.Text()
		i := strings.Index(line, " - ")
		if i < 0 {
			continue
		}
		fields, tail := strings.Fields(line[:i]), strings.Fields(line[i+3:])
		if len(fields) < 5 || len(tail) < 1 || (tail[0] != "cgroup" && tail[0] != "cgroup2") {
			continue
		}
		if mp := fields[4]; strings.HasPrefix(mp, "/sys/fs/cgroup") && !seen[mp] {
			seen[mp] = true
			mps = append(mps, mp)
		}
	}
	sort.Strings(mps)
	return mps
}

// createCgroup creates cgroup root (e.g. /berth-mn-server) in every
// hierarchy; in cpuset it copies the parent's cpus and mems (an empty
// cpuset cannot hold tasks). The kubelet refuses to start without it.
func createCgroup(root string) error {
	hs := cgroupHierarchies()
	if len(hs) == 0 {
		return errors.New("no cgroup hierarchies under /sys/fs/cgroup")
	}
	for _, h := range hs {
		dir := filepath.Join(h, root)
		if err := os.Mkdir(dir, 0o755); err != nil && !errors.Is(err, os.ErrExist) {
			return fmt.Errorf("create cgroup %s: %w", dir, err)
		}
		for _, f := range []string{"cpuset.cpus", "cpuset.mems"} {
			v, err := os.ReadFile(filepath.Join(h, f))
			if err != nil {
				continue // not the cpuset hierarchy
			}
			if err := os.WriteFile(filepath.Join(dir, f), v, 0o644); err != nil {
				return fmt.Errorf("cgroup %s: copy %s: %w", dir, f, err)
			}
		}
	}
	return nil
}

// cgroupDirs lists root and its descendants in every hierarchy, deepest
// first.
func cgroupDirs(root string) []string {
	var dirs []string
	for _, h := range cgroupHierarchies() {
		_ = filepath.WalkDir(filepath.Join(h, root), func(p string, d os.DirEntry, err error) error {
			if err == nil && d.IsDir() {
				dirs = append(dirs, p)
			}
			return nil
		})
	}
	sort.SliceStable(dirs, func(i, j int) bool {
		return strings.Count(dirs[i], "/") > strings.Count(dirs[j], "/")
	})
	return dirs
}

// cgroupPIDs lists the processes in root or below, in any hierarchy.
func cgroupPIDs(root string) []int {
	var pids []int
	self := os.Getpid()
	for _, d := range cgroupDirs(root) {
		b, err := os.ReadFile(filepath.Join(d, "cgroup.procs"))
		if err != nil {
			continue
		}
		for _, f := range strings.Fields(string(b)) {
			if pid, err := strconv.Atoi(f); err == nil && pid > 1 && pid != self {
				pids = append(pids, pid)
			}
		}
	}
	return uniq(pids)
}

// removeCgroup removes root and its descendants, deepest first, retrying
// while the kernel still counts exiting tasks.
func removeCgroup(root string, timeout time.Duration) error {
	var last error
	ok := waitFor(timeout, func() bool {
		last = nil
		for _, d := range cgroupDirs(root) {
			if err := syscall.Rmdir(d); err != nil && !errors.Is(err, syscall.ENOENT) {
				last = fmt.Errorf("rmdir cgroup %s: %w", d, err)
			}
		}
		return last == nil && len(cgroupDirs(root)) == 0
	})
	if !ok {
		if last == nil {
			last = fmt.Errorf("cgroups %v remain", cgroupDirs(root))
		}
		return last
	}
	return nil
}

// ensureMountpoints creates the host-wide paths the nodes bind over, where
// missing, and records what it created so the sweep removes it (also after
// a crash).
func ensureMountpoints() error {
	var created []string
	for _, d := range privateDirs {
		// Create missing components one by one, remembering each.
		p := "/"
		for _, part := range strings.Split(strings.Trim(d, "/"), "/") {
			p = filepath.Join(p, part)
			if _, err := os.Lstat(p); err == nil {
				continue
			}
			if err := os.Mkdir(p, 0o755); err != nil && !errors.Is(err, os.ErrExist) {
				return err
			}
			created = append(created, p)
		}
	}
	if len(created) == 0 {
		return nil
	}
	return os.WriteFile(filepath.Join(runDir, mountpointRecord), []byte(strings.Join(created, "\n")+"\n"), 0o644)
}

// ---------------------------------------------------------------------------
// Small helpers.

// run runs a command, with its output in the error.
func run(args ...string) error {
	out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

func linkExists(name string) bool { return fileExists("/sys/class/net/" + name) }

func fileExists(p string) bool {
	_, err := os.Lstat(p)
	return err == nil
}

func waitFor(timeout time.Duration, ok func() bool) bool {
	deadline := time.Now().Add(timeout)
	for {
		if ok() {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func sleep(ctx context.Context, d time.Duration) {
	select {
	case <-ctx.Done():
	case <-time.After(d):
	}
}

func shellQuote(s string) string { return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'" }
