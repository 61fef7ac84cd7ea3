package flannel

// Integration test: a real berth server (bin/berth), a Node object whose
// podCIDR the controller-manager assigns, and the Flannel component running
// in a network namespace of its own, reached from the root namespace by a
// veth. The component runs in a re-executed copy of this test binary
// (`ip netns exec NS <test binary>` with BERTH_FLANNEL_HELPER set), because
// Go threads and setns(2) mix badly. Everything created — namespaces,
// links, iptables rules (they live inside the namespaces), processes — is
// removed at cleanup, also when the test fails.

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/containernetworking/cni/libcni"
	authenticationv1 "k8s.io/api/authentication/v1"
	authorizationv1 "k8s.io/api/authorization/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
	"k8s.io/klog/v2"
)

const (
	helperEnv    = "BERTH_FLANNEL_HELPER"
	helperConfig = "BERTH_FLANNEL_CONFIG"
	clusterCIDR  = "10.42.0.0/16"
	annoPrefix   = annotationPrefix + "/"
)

func TestMain(m *testing.M) {
	if mode := os.Getenv(helperEnv); mode != "" {
		os.Exit(runHelper(mode))
	}
	os.Exit(m.Run())
}

// runHelper is the re-executed binary inside a network namespace.
func runHelper(mode string) int {
	var cfg Config
	if err := json.Unmarshal([]byte(os.Getenv(helperConfig)), &cfg); err != nil && mode != "dial" {
		fmt.Fprintf(os.Stderr, "helper: bad %s: %v\n", helperConfig, err)
		return 2
	}
	switch mode {
	case "run":
		return helperRun(cfg)
	case "cleanup":
		if err := Cleanup(cfg); err != nil {
			fmt.Fprintf(os.Stderr, "cleanup: %v\n", err)
			return 1
		}
		return 0
	case "cni":
		return helperCNI()
	case "dial":
		c, err := net.DialTimeout("tcp", os.Getenv("BERTH_FLANNEL_DIAL"), 5*time.Second)
		if err != nil {
			fmt.Fprintf(os.Stderr, "dial: %v\n", err)
			return 1
		}
		fmt.Printf("CONNECTED %s -> %s\n", c.LocalAddr(), c.RemoteAddr())
		c.Close()
		return 0
	}
	fmt.Fprintf(os.Stderr, "helper: unknown mode %q\n", mode)
	return 2
}

// helperRun runs the component until SIGTERM, like the agent would.
func helperRun(cfg Config) int {
	defer klog.Flush()
	sig, stopSig := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stopSig()
	f := New(cfg)
	ctx, cancel := context.WithTimeout(sig, 2*time.Minute)
	defer cancel()
	if err := f.Prepare(ctx); err != nil {
		fmt.Fprintf(os.Stderr, "prepare: %v\n", err)
		return 1
	}
	if err := f.Start(ctx); err != nil {
		fmt.Fprintf(os.Stderr, "start: %v\n", err)
		return 1
	}
	stop := func() int {
		sctx, scancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer scancel()
		if err := f.Stop(sctx); err != nil {
			fmt.Fprintf(os.Stderr, "stop: %v\n", err)
			return 1
		}
		fmt.Println("STOPPED")
		return 0
	}
	if err := f.Ready(ctx); err != nil {
		fmt.Fprintf(os.Stderr, "ready: %v\n", err)
		stop()
		return 1
	}
	fmt.Printf("READY podCIDR=%s mtu=%d\n", f.PodCIDR(), f.MTU())
	select {
	case <-sig.Done():
		return stop()
	case err := <-f.Failed():
		fmt.Fprintf(os.Stderr, "failed: %v\n", err)
		stop()
		return 1
	}
}

// helperCNI runs the conflist's plugins through libcni, as containerd would.
func helperCNI() int {
	list, err := libcni.ConfListFromFile(os.Getenv("BERTH_FLANNEL_CONFLIST"))
	if err != nil {
		fmt.Fprintf(os.Stderr, "conflist: %v\n", err)
		return 1
	}
	cni := libcni.NewCNIConfigWithCacheDir([]string{os.Getenv("BERTH_FLANNEL_CNI_PATH")}, os.Getenv("BERTH_FLANNEL_CNI_CACHE"), nil)
	rt := &libcni.RuntimeConf{ContainerID: "flannel-test-pod", NetNS: os.Getenv("BERTH_FLANNEL_NETNS"), IfName: "eth0"}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if os.Getenv("BERTH_FLANNEL_CNI_OP") == "del" {
		if err := cni.DelNetworkList(ctx, list, rt); err != nil {
			fmt.Fprintf(os.Stderr, "cni del: %v\n", err)
			return 1
		}
		return 0
	}
	res, err := cni.AddNetworkList(ctx, list, rt)
	if err != nil {
		fmt.Fprintf(os.Stderr, "cni add: %v\n", err)
		return 1
	}
	fmt.Println(res)
	return 0
}

func TestFlannelInNetns(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: creates network namespaces, veths, VXLAN devices and iptables rules")
	}
	if testing.Short() {
		t.Skip("-short: starts a berth server")
	}
	for _, tool := range []string{"ip", "iptables", "iptables-restore"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s not found (make deps installs it)", tool)
		}
	}
	bin := berthBinary(t)
	// One node namespace per backend, so a failure in one cannot leave
	// devices the other trips over.
	vx := newTestNet(t, 0)
	hg := newTestNet(t, 1)
	srv := startServer(t, bin, vx.hostIP, hg.hostIP)
	admin := srv.waitReady(t, 90*time.Second)
	kubeconfig := flannelKubeconfig(t, admin, srv)

	t.Run("vxlan", func(t *testing.T) {
		testVXLAN(t, admin, vx, withServer(t, kubeconfig, vx.hostIP, srv.httpsPort), srv.httpsPort)
	})
	t.Run("host-gw", func(t *testing.T) { testHostGW(t, admin, hg, withServer(t, kubeconfig, hg.hostIP, srv.httpsPort)) })
}

// withServer copies a kubeconfig, pointing it at the server's address as
// seen from a node namespace.
func withServer(t *testing.T, kubeconfig, hostIP string, port int) string {
	t.Helper()
	kc, err := clientcmd.LoadFromFile(kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range kc.Clusters {
		c.Server = fmt.Sprintf("https://%s:%d", hostIP, port)
	}
	path := filepath.Join(t.TempDir(), "flannel.kubeconfig")
	if err := clientcmd.WriteToFile(*kc, path); err != nil {
		t.Fatal(err)
	}
	return path
}

func testVXLAN(t *testing.T, admin kubernetes.Interface, tn *testNet, kubeconfig string, httpsPort int) {
	const nodeName = "flannel-test-vxlan"
	podCIDR := createNode(t, admin, nodeName)
	checkNodeAuthorizer(t, admin, nodeName)

	dir := t.TempDir()
	cfg := Config{
		NodeName: nodeName, Kubeconfig: kubeconfig, ClusterCIDR: clusterCIDR,
		Iface: tn.nsVeth, NodeIP: tn.nsIP,
		ConfDir:    filepath.Join(dir, "agent/etc/flannel"),
		CNIConfDir: filepath.Join(dir, "agent/etc/cni/net.d"),
		CNIDataDir: filepath.Join(dir, "agent/cni/networks"),
	}
	h := startHelper(t, tn.ns, "run", cfg)
	h.waitFor(t, "READY", 2*time.Minute)

	// flannel.1: VNI 1, MTU = uplink - 50, bound to the node IP, /32 of
	// the subnet's first address.
	link := ipLink(t, tn.ns, VXLANDevice)
	if link.MTU != 1450 || link.LinkInfo.InfoKind != "vxlan" || link.LinkInfo.InfoData.ID != 1 || link.LinkInfo.InfoData.Local != tn.nsIP {
		t.Errorf("flannel.1 = mtu %d kind %s vni %d local %s; want 1450 vxlan 1 %s",
			link.MTU, link.LinkInfo.InfoKind, link.LinkInfo.InfoData.ID, link.LinkInfo.InfoData.Local, tn.nsIP)
	}
	podNet, _ := netip(podCIDR)
	if addrs := ipAddrs(t, tn.ns, VXLANDevice); len(addrs) != 1 || addrs[0] != podNet+"/32" {
		t.Errorf("flannel.1 addresses %v, want [%s/32]", addrs, podNet)
	}

	// The node's flannel annotations (the lease) and condition.
	node, err := admin.CoreV1().Nodes().Get(context.Background(), nodeName, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	a := node.Annotations
	if a[annoPrefix+"backend-type"] != "vxlan" || a[annoPrefix+"public-ip"] != tn.nsIP || a[annoPrefix+"kube-subnet-manager"] != "true" {
		t.Errorf("node annotations: %v", a)
	}
	var bd struct {
		VNI     int
		VtepMAC string
	}
	if err := json.Unmarshal([]byte(a[annoPrefix+"backend-data"]), &bd); err != nil || bd.VNI != 1 || bd.VtepMAC != link.Address {
		t.Errorf("backend-data %q (%v); want VNI 1, VtepMAC %s", a[annoPrefix+"backend-data"], err, link.Address)
	}
	waitNetworkAvailable(t, admin, nodeName)

	checkFiles(t, cfg, podCIDR, 1450)
	checkRules(t, tn.ns)
	if v := nsRun(t, tn.ns, "cat", "/proc/sys/net/ipv4/ip_forward"); strings.TrimSpace(v) != "1" {
		t.Errorf("ip_forward in the node namespace = %q", v)
	}

	// A pod through the conflist's plugins: address in the podCIDR, and its
	// default route, forwarding and masquerade reach the root namespace.
	checkPodNetwork(t, tn, cfg, podCIDR, httpsPort)

	// A normal stop leaves flannel.1 (and rules) for running pods.
	h.stop(t)
	if got := ipLink(t, tn.ns, VXLANDevice); got.Address != link.Address {
		t.Errorf("flannel.1 changed across stop: %s -> %s", link.Address, got.Address)
	}
	checkRules(t, tn.ns)

	// A restart adopts the device, keeps its MAC (read back from the node).
	h = startHelper(t, tn.ns, "run", cfg)
	h.waitFor(t, "READY", 2*time.Minute)
	if got := ipLink(t, tn.ns, VXLANDevice); got.Address != link.Address {
		t.Errorf("flannel.1 MAC changed across restart: %s -> %s", link.Address, got.Address)
	}
	h.stop(t)

	runCleanup(t, tn.ns, cfg)
}

func testHostGW(t *testing.T, admin kubernetes.Interface, tn *testNet, kubeconfig string) {
	const nodeName = "flannel-test-hostgw"
	dir := t.TempDir()
	// No --flannel-iface: the interface holding the node IP.
	cfg := Config{
		NodeName: nodeName, Kubeconfig: kubeconfig, ClusterCIDR: clusterCIDR, Backend: BackendHostGW,
		NodeIP:     tn.nsIP,
		ConfDir:    filepath.Join(dir, "flannel"),
		CNIConfDir: filepath.Join(dir, "net.d"),
		CNIDataDir: filepath.Join(dir, "networks"),
	}
	// Started before its Node exists, as before the kubelet registers it:
	// flannel says what it waits for, then proceeds.
	h := startHelper(t, tn.ns, "run", cfg)
	h.waitForLog(t, "waiting for node "+nodeName+" to be registered", time.Minute)
	podCIDR := createNode(t, admin, nodeName)
	h.waitFor(t, "READY", 2*time.Minute)
	node, err := admin.CoreV1().Nodes().Get(context.Background(), nodeName, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if a := node.Annotations; a[annoPrefix+"backend-type"] != "host-gw" || a[annoPrefix+"public-ip"] != tn.nsIP {
		t.Errorf("node annotations: %v", a)
	}
	if _, err := exec.Command("ip", "-n", tn.ns, "link", "show", VXLANDevice).CombinedOutput(); err == nil {
		t.Errorf("host-gw created %s", VXLANDevice)
	}
	checkFiles(t, cfg, podCIDR, 1500) // host-gw: the uplink's MTU
	checkRules(t, tn.ns)
	h.stop(t)
	runCleanup(t, tn.ns, cfg)
}

// --- checks ---

func checkFiles(t *testing.T, cfg Config, podCIDR string, mtu int) {
	t.Helper()
	env, err := os.ReadFile(filepath.Join(cfg.ConfDir, SubnetFile))
	if err != nil {
		t.Fatal(err)
	}
	first, _ := netip(podCIDR)
	ones := podCIDR[strings.Index(podCIDR, "/"):]
	ipnet := net.ParseIP(first).To4()
	ipnet[3]++
	want := fmt.Sprintf("FLANNEL_NETWORK=%s\nFLANNEL_SUBNET=%s%s\nFLANNEL_MTU=%d\nFLANNEL_IPMASQ=true\n", clusterCIDR, ipnet, ones, mtu)
	if string(env) != want {
		t.Errorf("subnet.env:\n%s\nwant:\n%s", env, want)
	}
	data, err := os.ReadFile(filepath.Join(cfg.CNIConfDir, ConflistFile))
	if err != nil {
		t.Fatal(err)
	}
	var cl struct {
		Plugins []struct {
			Type string
			MTU  int
			IPAM struct {
				DataDir string
				Ranges  [][]struct{ Subnet string }
			}
		}
	}
	if err := json.Unmarshal(data, &cl); err != nil {
		t.Fatalf("conflist: %v\n%s", err, data)
	}
	if len(cl.Plugins) != 3 || cl.Plugins[0].MTU != mtu || cl.Plugins[0].IPAM.DataDir != cfg.CNIDataDir ||
		len(cl.Plugins[0].IPAM.Ranges) != 1 || cl.Plugins[0].IPAM.Ranges[0][0].Subnet != podCIDR {
		t.Errorf("conflist does not carry podCIDR %s, MTU %d, dataDir %s:\n%s", podCIDR, mtu, cfg.CNIDataDir, data)
	}
}

func checkRules(t *testing.T, ns string) {
	t.Helper()
	for _, c := range []struct{ table, chain, want string }{
		{"nat", "POSTROUTING", "-j FLANNEL-POSTRTG"},
		{"nat", "FLANNEL-POSTRTG", "-s " + clusterCIDR},
		{"nat", "FLANNEL-POSTRTG", "MASQUERADE"},
		{"filter", "FORWARD", "-j FLANNEL-FWD"},
		{"filter", "FLANNEL-FWD", "-s " + clusterCIDR},
	} {
		out := nsRun(t, ns, "iptables", "-t", c.table, "-S", c.chain)
		if !strings.Contains(out, c.want) {
			t.Errorf("%s/%s lacks %q:\n%s", c.table, c.chain, c.want, out)
		}
	}
}

func checkPodNetwork(t *testing.T, tn *testNet, cfg Config, podCIDR string, httpsPort int) {
	t.Helper()
	plugins := cniPlugins(t)
	podNS := tn.ns + "p"
	mustRun(t, "ip", "netns", "add", podNS)
	t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", podNS).Run() })
	cniEnv := []string{
		"BERTH_FLANNEL_CNI_PATH=" + plugins,
		"BERTH_FLANNEL_CONFLIST=" + filepath.Join(cfg.CNIConfDir, ConflistFile),
		"BERTH_FLANNEL_NETNS=/run/netns/" + podNS,
		"BERTH_FLANNEL_CNI_CACHE=" + t.TempDir(),
	}
	if out, err := helperOnce(tn.ns, "cni", cfg, append(cniEnv, "BERTH_FLANNEL_CNI_OP=add")...); err != nil {
		t.Fatalf("CNI ADD with the conflist failed: %v\n%s", err, out)
	}
	// On failure: release the address and the namespace (both harmless
	// when the test already did).
	t.Cleanup(func() { _, _ = helperOnce(tn.ns, "cni", cfg, append(cniEnv, "BERTH_FLANNEL_CNI_OP=del")...) })

	_, podNet, _ := net.ParseCIDR(podCIDR)
	addrs := ipAddrs(t, podNS, "eth0")
	if len(addrs) != 1 {
		t.Fatalf("pod eth0 addresses %v", addrs)
	}
	podIP, _, _ := net.ParseCIDR(addrs[0])
	if !podNet.Contains(podIP) {
		t.Errorf("pod IP %s not in podCIDR %s", podIP, podCIDR)
	}
	gw := net.ParseIP(podNet.IP.String()).To4()
	gw[3]++
	if routes := nsRun(t, podNS, "ip", "route", "show", "default"); !strings.Contains(routes, "via "+gw.String()) {
		t.Errorf("pod default route %q, want via %s", routes, gw)
	}
	if mtu := ipLink(t, podNS, "eth0").MTU; mtu != 1450 {
		t.Errorf("pod eth0 MTU %d, want 1450", mtu)
	}
	if br := ipAddrs(t, tn.ns, BridgeDevice); len(br) != 1 || !strings.HasPrefix(br[0], gw.String()+"/") {
		t.Errorf("cni0 addresses %v, want the gateway %s", br, gw)
	}
	// Pod -> the root namespace's veth address (outside the cluster CIDR):
	// default route, forwarding in the node namespace and flannel's
	// masquerade (the root namespace has no route back to the podCIDR).
	out, err := helperOnce(podNS, "dial", cfg, fmt.Sprintf("BERTH_FLANNEL_DIAL=%s:%d", tn.hostIP, httpsPort))
	if err != nil {
		t.Errorf("pod cannot reach %s:%d: %v\n%s", tn.hostIP, httpsPort, err, out)
	}

	// host-local keeps its state in CNIDataDir/<network name>.
	lease := filepath.Join(cfg.CNIDataDir, "cbr0", podIP.String())
	if _, err := os.Stat(lease); err != nil {
		t.Errorf("host-local state not in CNIDataDir: %v", err)
	}
	if out, err := helperOnce(tn.ns, "cni", cfg, append(cniEnv, "BERTH_FLANNEL_CNI_OP=del")...); err != nil {
		t.Errorf("CNI DEL: %v\n%s", err, out)
	}
	if _, err := os.Stat(lease); err == nil {
		t.Errorf("CNI DEL left %s", lease)
	}
	mustRun(t, "ip", "netns", "del", podNS)
}

func runCleanup(t *testing.T, ns string, cfg Config) {
	t.Helper()
	if out, err := helperOnce(ns, "cleanup", cfg); err != nil {
		t.Fatalf("Cleanup: %v\n%s", err, out)
	}
	links := nsRun(t, ns, "ip", "-o", "link", "show")
	for _, dev := range []string{VXLANDevice, BridgeDevice} {
		if strings.Contains(links, " "+dev+":") {
			t.Errorf("%s still exists after Cleanup", dev)
		}
	}
	for _, table := range []string{"nat", "filter"} {
		if out := nsRun(t, ns, "iptables", "-t", table, "-S"); strings.Contains(out, "FLANNEL") || strings.Contains(out, "flanneld") {
			t.Errorf("%s table still has flannel rules:\n%s", table, out)
		}
	}
	for _, p := range []string{filepath.Join(cfg.ConfDir, SubnetFile), filepath.Join(cfg.CNIConfDir, ConflistFile)} {
		if _, err := os.Stat(p); err == nil {
			t.Errorf("%s still exists after Cleanup", p)
		}
	}
}

// checkNodeAuthorizer records why flannel cannot run on the kubelet's own
// credentials: the Node authorizer lets a node read only its own Node
// object, but flannel's informer lists and watches all nodes.
func checkNodeAuthorizer(t *testing.T, admin kubernetes.Interface, nodeName string) {
	t.Helper()
	for _, c := range []struct {
		verb, name, sub string
		allowed         bool
	}{
		{"get", nodeName, "", true},
		{"patch", nodeName, "status", true},
		{"list", "", "", false},
		{"watch", "", "", false},
	} {
		sar, err := admin.AuthorizationV1().SubjectAccessReviews().Create(context.Background(), &authorizationv1.SubjectAccessReview{
			Spec: authorizationv1.SubjectAccessReviewSpec{
				User:   "system:node:" + nodeName,
				Groups: []string{"system:nodes", "system:authenticated"},
				ResourceAttributes: &authorizationv1.ResourceAttributes{
					Verb: c.verb, Resource: "nodes", Name: c.name, Subresource: c.sub,
				},
			},
		}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if sar.Status.Allowed != c.allowed {
			t.Errorf("system:node:%s %s nodes/%s %s: allowed=%v, expected %v (%s)", nodeName, c.verb, c.sub, c.name, sar.Status.Allowed, c.allowed, sar.Status.Reason)
		}
	}
}

func waitNetworkAvailable(t *testing.T, admin kubernetes.Interface, nodeName string) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		node, err := admin.CoreV1().Nodes().Get(context.Background(), nodeName, metav1.GetOptions{})
		if err == nil {
			for _, c := range node.Status.Conditions {
				if c.Type == corev1.NodeNetworkUnavailable && c.Status == corev1.ConditionFalse && c.Reason == "FlannelIsUp" {
					return
				}
			}
		}
		time.Sleep(200 * time.Millisecond)
	}
	t.Errorf("node %s never got NetworkUnavailable=False (FlannelIsUp)", nodeName)
}

// --- the API side ---

func createNode(t *testing.T, admin kubernetes.Interface, name string) string {
	t.Helper()
	ctx := context.Background()
	if _, err := admin.CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create node: %v", err)
	}
	// Gone with the subtest, so no later node sees its lease.
	t.Cleanup(func() { _ = admin.CoreV1().Nodes().Delete(context.Background(), name, metav1.DeleteOptions{}) })
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		n, err := admin.CoreV1().Nodes().Get(ctx, name, metav1.GetOptions{})
		if err == nil && n.Spec.PodCIDR != "" {
			return n.Spec.PodCIDR
		}
		time.Sleep(200 * time.Millisecond)
	}
	t.Fatalf("controller-manager did not assign node %s a podCIDR", name)
	return ""
}

// flannelKubeconfig makes a ServiceAccount bound to exactly the permissions
// flannel uses, and a kubeconfig with its token.
func flannelKubeconfig(t *testing.T, admin kubernetes.Interface, srv *server) string {
	t.Helper()
	ctx := context.Background()
	const name, ns = "berth-flannel-test", "kube-system"
	role := &rbacv1.ClusterRole{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Rules: []rbacv1.PolicyRule{
			{APIGroups: []string{""}, Resources: []string{"nodes"}, Verbs: []string{"get", "list", "watch"}},
			{APIGroups: []string{""}, Resources: []string{"nodes/status"}, Verbs: []string{"patch"}},
		},
	}
	if _, err := admin.RbacV1().ClusterRoles().Create(ctx, role, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := admin.CoreV1().ServiceAccounts(ns).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	binding := &rbacv1.ClusterRoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		RoleRef:    rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "ClusterRole", Name: name},
		Subjects:   []rbacv1.Subject{{Kind: "ServiceAccount", Name: name, Namespace: ns}},
	}
	if _, err := admin.RbacV1().ClusterRoleBindings().Create(ctx, binding, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	exp := int64(3600)
	tok, err := admin.CoreV1().ServiceAccounts(ns).CreateToken(ctx, name, &authenticationv1.TokenRequest{
		Spec: authenticationv1.TokenRequestSpec{ExpirationSeconds: &exp},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	adminCfg, err := clientcmd.LoadFromFile(srv.kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	var ca []byte
	for _, c := range adminCfg.Clusters {
		ca = c.CertificateAuthorityData
	}
	kc := clientcmdapi.NewConfig()
	kc.Clusters["berth"] = &clientcmdapi.Cluster{
		Server:                   fmt.Sprintf("https://127.0.0.1:%d", srv.httpsPort), // see withServer
		CertificateAuthorityData: ca,
	}
	kc.AuthInfos["flannel"] = &clientcmdapi.AuthInfo{Token: tok.Status.Token}
	kc.Contexts["default"] = &clientcmdapi.Context{Cluster: "berth", AuthInfo: "flannel"}
	kc.CurrentContext = "default"
	path := filepath.Join(t.TempDir(), "flannel.kubeconfig")
	if err := clientcmd.WriteToFile(*kc, path); err != nil {
		t.Fatal(err)
	}
	return path
}

// --- the berth server ---

type server struct {
	kubeconfig string
	httpsPort  int
	cmd        *exec.Cmd
	out        *syncBuffer
	done       chan struct{}
	exitErr    error
}

// berthBinary reuses bin/berth; it builds it only when it is missing (a
// build takes minutes).
func berthBinary(t *testing.T) string {
	t.Helper()
	if b := os.Getenv("BERTH_BIN"); b != "" {
		return b
	}
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(root, "bin", "berth")
	if _, err := os.Stat(bin); err == nil {
		return bin
	}
	cmd := exec.Command("make", "-C", root, "build")
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("build berth: %v", err)
	}
	return bin
}

func startServer(t *testing.T, bin string, sans ...string) *server {
	t.Helper()
	dir := t.TempDir()
	s := &server{kubeconfig: filepath.Join(dir, "admin.yaml"), httpsPort: freePort(t), out: &syncBuffer{}}
	s.cmd = exec.Command(bin, "server", "--disable-agent", "--config", "/dev/null",
		"-d", filepath.Join(dir, "data"), "--write-kubeconfig", s.kubeconfig,
		"--https-listen-port", strconv.Itoa(s.httpsPort), "--apiserver-port", strconv.Itoa(freePort(t)),
		"--kube-scheduler-arg", "secure-port="+strconv.Itoa(freePort(t)),
		"--kube-controller-manager-arg", "secure-port="+strconv.Itoa(freePort(t)),
		"--cluster-cidr", clusterCIDR)
	for _, san := range sans {
		s.cmd.Args = append(s.cmd.Args, "--tls-san", san)
	}
	s.cmd.Stdout, s.cmd.Stderr = s.out, s.out
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "BERTH_") && !strings.HasPrefix(kv, "KUBECONFIG=") {
			env = append(env, kv)
		}
	}
	s.cmd.Env = env
	s.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := s.cmd.Start(); err != nil {
		t.Fatalf("start berth: %v", err)
	}
	s.done = make(chan struct{})
	go func() { s.exitErr = s.cmd.Wait(); close(s.done) }()
	t.Cleanup(func() {
		select {
		case <-s.done:
		default:
			_ = syscall.Kill(-s.cmd.Process.Pid, syscall.SIGKILL)
			<-s.done
		}
		if t.Failed() {
			t.Logf("berth server output (tail):\n%s", tail(s.out.String(), 40))
		}
	})
	return s
}

func (s *server) waitReady(t *testing.T, timeout time.Duration) kubernetes.Interface {
	t.Helper()
	deadline := time.Now().Add(timeout)
	var last error
	for time.Now().Before(deadline) {
		select {
		case <-s.done:
			t.Fatalf("berth exited before ready: %v\n%s", s.exitErr, tail(s.out.String(), 40))
		default:
		}
		if _, err := os.Stat(s.kubeconfig); err == nil {
			rc, err := clientcmd.BuildConfigFromFlags("", s.kubeconfig)
			if err != nil {
				t.Fatal(err)
			}
			cs, err := kubernetes.NewForConfig(rc)
			if err != nil {
				t.Fatal(err)
			}
			body, err := cs.Discovery().RESTClient().Get().AbsPath("/readyz").DoRaw(context.Background())
			if err == nil && string(body) == "ok" {
				return cs
			}
			last = fmt.Errorf("readyz: %v %s", err, body)
		}
		time.Sleep(200 * time.Millisecond)
	}
	t.Fatalf("berth not ready within %s: %v", timeout, last)
	return nil
}

func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// --- namespaces and helpers ---

// testNet is a node network namespace joined to the root namespace by a
// veth pair on a free 10.99.N.0/24.
type testNet struct {
	ns, hostVeth, nsVeth, hostIP, nsIP string
}

func newTestNet(t *testing.T, index int) *testNet {
	t.Helper()
	pid := os.Getpid()*2 + index
	existing, _ := exec.Command("ip", "netns", "list").Output()
	var tn *testNet
	for i := range 100 {
		n := 20 + (pid+i)%200
		cand := &testNet{
			ns:       fmt.Sprintf("bfl%d", pid%100000+i),
			hostVeth: fmt.Sprintf("bfl%dh", pid%100000+i),
			nsVeth:   fmt.Sprintf("bfl%dn", pid%100000+i),
			hostIP:   fmt.Sprintf("10.99.%d.1", n),
			nsIP:     fmt.Sprintf("10.99.%d.2", n),
		}
		used, _ := exec.Command("ip", "-4", "-o", "addr", "show", "to", fmt.Sprintf("10.99.%d.0/24", n)).Output()
		_, linkErr := net.InterfaceByName(cand.hostVeth)
		if len(bytes.TrimSpace(used)) == 0 && linkErr != nil && !bytes.Contains(existing, []byte(cand.ns+" ")) && !bytes.Contains(existing, []byte(cand.ns+"\n")) {
			tn = cand
			break
		}
	}
	if tn == nil {
		t.Fatal("no free 10.99.N.0/24 and namespace name")
	}
	mustRun(t, "ip", "netns", "add", tn.ns)
	// Registered first, so it runs after every helper in the namespace is
	// gone (cleanups run last-in first-out); deleting the namespace
	// removes its devices, the veth peer and its iptables rules.
	t.Cleanup(func() {
		if out, err := exec.Command("ip", "netns", "del", tn.ns).CombinedOutput(); err != nil {
			t.Errorf("delete netns %s: %v %s", tn.ns, err, out)
		}
		_ = exec.Command("ip", "link", "del", tn.hostVeth).Run() // normally gone with its peer
		deadline := time.Now().Add(10 * time.Second)
		for {
			list, _ := exec.Command("ip", "netns", "list").Output()
			_, linkErr := net.InterfaceByName(tn.hostVeth)
			leftNS := bytes.Contains(list, []byte(tn.ns+" ")) || bytes.Contains(list, []byte(tn.ns+"\n"))
			if !leftNS && linkErr != nil {
				return
			}
			if time.Now().After(deadline) {
				t.Errorf("left over after cleanup: netns %s=%v, veth %s=%v", tn.ns, leftNS, tn.hostVeth, linkErr == nil)
				return
			}
			time.Sleep(100 * time.Millisecond)
		}
	})
	mustRun(t, "ip", "link", "add", tn.hostVeth, "type", "veth", "peer", "name", tn.nsVeth, "netns", tn.ns)
	mustRun(t, "ip", "addr", "add", tn.hostIP+"/24", "dev", tn.hostVeth)
	mustRun(t, "ip", "link", "set", tn.hostVeth, "up")
	mustRun(t, "ip", "-n", tn.ns, "addr", "add", tn.nsIP+"/24", "dev", tn.nsVeth)
	mustRun(t, "ip", "-n", tn.ns, "link", "set", tn.nsVeth, "up")
	mustRun(t, "ip", "-n", tn.ns, "link", "set", "lo", "up")
	return tn
}

// helper is a re-executed copy of this binary inside a namespace.
type helper struct {
	cmd      *exec.Cmd
	out, err *syncBuffer
	done     chan struct{}
	exitErr  error
}

func helperCmd(ctx context.Context, ns, mode string, cfg Config, env ...string) (*exec.Cmd, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, err
	}
	cfgJSON, err := json.Marshal(cfg)
	if err != nil {
		return nil, err
	}
	cmd := exec.CommandContext(ctx, "ip", "netns", "exec", ns, exe)
	cmd.Env = append(os.Environ(), append([]string{helperEnv + "=" + mode, helperConfig + "=" + string(cfgJSON)}, env...)...)
	// Own process group (killed as one), and killed if the test dies.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	return cmd, nil
}

// helperOnce runs a short helper to completion.
func helperOnce(ns, mode string, cfg Config, env ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd, err := helperCmd(ctx, ns, mode, cfg, env...)
	if err != nil {
		return "", err
	}
	out, err := cmd.CombinedOutput()
	return string(out), err
}

func startHelper(t *testing.T, ns, mode string, cfg Config) *helper {
	t.Helper()
	cmd, err := helperCmd(context.Background(), ns, mode, cfg)
	if err != nil {
		t.Fatal(err)
	}
	h := &helper{cmd: cmd, out: &syncBuffer{}, err: &syncBuffer{}, done: make(chan struct{})}
	cmd.Stdout, cmd.Stderr = h.out, h.err
	if err := cmd.Start(); err != nil {
		t.Fatalf("start helper: %v", err)
	}
	go func() { h.exitErr = cmd.Wait(); close(h.done) }()
	t.Cleanup(func() {
		select {
		case <-h.done:
		default:
			_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
			<-h.done
		}
		if t.Failed() {
			t.Logf("flannel helper log (tail):\n%s", tail(h.err.String(), 60))
		}
	})
	return h
}

func (h *helper) waitFor(t *testing.T, word string, timeout time.Duration) {
	t.Helper()
	deadline := time.After(timeout)
	for !strings.Contains(h.out.String(), word) {
		select {
		case <-h.done:
			t.Fatalf("helper exited (%v) before %s:\n%s\n%s", h.exitErr, word, h.out.String(), tail(h.err.String(), 60))
		case <-deadline:
			t.Fatalf("helper not %s within %s:\n%s", word, timeout, tail(h.err.String(), 60))
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func (h *helper) waitForLog(t *testing.T, text string, timeout time.Duration) {
	t.Helper()
	deadline := time.After(timeout)
	for !strings.Contains(h.err.String(), text) {
		select {
		case <-h.done:
			t.Fatalf("helper exited (%v) before logging %q:\n%s", h.exitErr, text, tail(h.err.String(), 60))
		case <-deadline:
			t.Fatalf("helper did not log %q within %s:\n%s", text, timeout, tail(h.err.String(), 60))
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// stop sends SIGTERM and expects a clean exit.
func (h *helper) stop(t *testing.T) {
	t.Helper()
	_ = h.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-h.done:
	case <-time.After(40 * time.Second):
		t.Fatalf("helper did not stop within 40s of SIGTERM:\n%s", tail(h.err.String(), 40))
	}
	if h.exitErr != nil || !strings.Contains(h.out.String(), "STOPPED") {
		t.Errorf("helper stop: %v\n%s\n%s", h.exitErr, h.out.String(), tail(h.err.String(), 40))
	}
}

// cniPlugins returns a directory with bridge, host-local, portmap and
// bandwidth: BERTH_CNI_BIN, build/helpers/bin (make helpers), or a small
// build from berth's module graph.
func cniPlugins(t *testing.T) string {
	t.Helper()
	need := []string{"bridge", "host-local", "portmap", "bandwidth"}
	has := func(dir string) bool {
		for _, p := range need {
			if _, err := os.Stat(filepath.Join(dir, p)); err != nil {
				return false
			}
		}
		return dir != ""
	}
	root, _ := filepath.Abs("../..")
	for _, dir := range []string{os.Getenv("BERTH_CNI_BIN"), filepath.Join(root, "build", "helpers", "bin")} {
		if has(dir) {
			return dir
		}
	}
	dir := t.TempDir()
	goBin, err := exec.LookPath("go")
	if err != nil {
		t.Skip("no CNI plugins (set BERTH_CNI_BIN or run make helpers) and no go to build them")
	}
	args := []string{"build", "-trimpath", "-o", dir + "/"}
	for _, p := range []string{"main/bridge", "ipam/host-local", "meta/portmap", "meta/bandwidth"} {
		args = append(args, "github.com/containernetworking/plugins/plugins/"+p)
	}
	cmd := exec.Command(goBin, args...)
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build CNI plugins: %v\n%s", err, out)
	}
	return dir
}

type ipLinkInfo struct {
	MTU      int    `json:"mtu"`
	Address  string `json:"address"`
	LinkInfo struct {
		InfoKind string `json:"info_kind"`
		InfoData struct {
			ID    int    `json:"id"`
			Local string `json:"local"`
		} `json:"info_data"`
	} `json:"linkinfo"`
}

func ipLink(t *testing.T, ns, dev string) ipLinkInfo {
	t.Helper()
	out := nsRun(t, ns, "ip", "-j", "-d", "link", "show", dev)
	var links []ipLinkInfo
	if err := json.Unmarshal([]byte(out), &links); err != nil || len(links) != 1 {
		t.Fatalf("ip link show %s: %v\n%s", dev, err, out)
	}
	return links[0]
}

// ipAddrs lists dev's IPv4 addresses as CIDRs.
func ipAddrs(t *testing.T, ns, dev string) []string {
	t.Helper()
	out := nsRun(t, ns, "ip", "-j", "-4", "addr", "show", "dev", dev)
	var ifs []struct {
		AddrInfo []struct {
			Local     string `json:"local"`
			Prefixlen int    `json:"prefixlen"`
		} `json:"addr_info"`
	}
	if err := json.Unmarshal([]byte(out), &ifs); err != nil {
		t.Fatalf("ip addr show %s: %v\n%s", dev, err, out)
	}
	var addrs []string
	for _, i := range ifs {
		for _, a := range i.AddrInfo {
			addrs = append(addrs, fmt.Sprintf("%s/%d", a.Local, a.Prefixlen))
		}
	}
	return addrs
}

func nsRun(t *testing.T, ns string, args ...string) string {
	t.Helper()
	out, err := exec.Command("ip", append([]string{"netns", "exec", ns}, args...)...).CombinedOutput()
	if err != nil {
		t.Fatalf("in %s: %s: %v\n%s", ns, strings.Join(args, " "), err, out)
	}
	return string(out)
}

func mustRun(t *testing.T, args ...string) {
	t.Helper()
	if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
		t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

// netip returns the network address of a CIDR.
func netip(cidr string) (string, error) {
	_, n, err := net.ParseCIDR(cidr)
	if err != nil {
		return "", err
	}
	return n.IP.String(), nil
}

type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
