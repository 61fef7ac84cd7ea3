// Package flannel runs flannel in-process on a berth node: the kube subnet
// manager (the node's podCIDR, allocated by the controller-manager from
// --cluster-cidr, is its subnet; leases live in Node annotations), the VXLAN
// or host-gw backend, flannel's iptables masquerade and forward rules, and
// the CNI configuration containerd reads (bridge + host-local on the node's
// podCIDR, portmap, bandwidth). The flannel CNI meta-plugin is not used:
// berth knows the podCIDR and writes what that plugin would have delegated.
//
// Flannel's packages are used as a library; its main package is not
// importable, so the start-up sequence of flanneld's main is reproduced here
// in a few calls.
//
// This package is agent-side: it must not import pkg/server, pkg/control or
// pkg/datastore.
package flannel

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/flannel-io/flannel/pkg/backend"
	"github.com/flannel-io/flannel/pkg/ip"
	"github.com/flannel-io/flannel/pkg/ipmatch"
	"github.com/flannel-io/flannel/pkg/lease"
	"github.com/flannel-io/flannel/pkg/subnet"
	"github.com/flannel-io/flannel/pkg/subnet/kube"
	"github.com/flannel-io/flannel/pkg/trafficmngr/iptables"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/klog/v2"

	// Backends register themselves in init.
	_ "github.com/flannel-io/flannel/pkg/backend/hostgw"
	_ "github.com/flannel-io/flannel/pkg/backend/vxlan"
)

// Backends accepted by --flannel-backend.
const (
	BackendVXLAN  = "vxlan"
	BackendHostGW = "host-gw"
	// BackendNone: berth runs no flannel and writes no CNI configuration;
	// the user installs a CNI.
	BackendNone = "none"
)

// File and device names. flannel.1 is the VXLAN device for VNI 1 (flannel
// names it flannel.<VNI>); cni0 is the bridge of the conflist.
const (
	NetConfFile      = "net-conf.json"
	SubnetFile       = "subnet.env"
	ConflistFile     = "10-flannel.conflist"
	VXLANDevice      = "flannel.1"
	BridgeDevice     = "cni0"
	annotationPrefix = "flannel.alpha.coreos.com"
	// resyncSeconds is how often flannel re-checks its iptables rules
	// (flanneld's default).
	resyncSeconds = 5
	// waitLogInterval spaces out the "waiting for podCIDR" log lines.
	waitLogInterval = 10 * time.Second
)

// Config is what a node's flannel needs. Every path is explicit, so several
// nodes (one network namespace each) can share a host.
type Config struct {
	NodeName string
	// Kubeconfig holds credentials allowed to get, list and watch all
	// nodes and to patch nodes/status. A kubelet's own credentials are not
	// enough: the Node authorizer lets a node read only its own Node, and
	// flannel's informer lists and watches every node (their leases).
	Kubeconfig  string
	ClusterCIDR string // e.g. 10.42.0.0/16 (IPv4 only for now)
	Backend     string // "vxlan" (default), "host-gw", "none"
	// Iface is --flannel-iface: an interface name or an address on it.
	// Empty: the interface holding NodeIP, else that of the default route.
	Iface  string
	NodeIP string
	// ConfDir holds net-conf.json and subnet.env (<data-dir>/agent/etc/flannel).
	ConfDir string
	// CNIConfDir is where containerd reads CNI configs; 10-flannel.conflist
	// is written there.
	CNIConfDir string
	// CNIDataDir is host-local's IPAM state (per node, not /var/lib/cni).
	CNIDataDir string
}

// backend returns the normalised backend name.
func (c Config) backend() string {
	b := strings.ToLower(strings.TrimSpace(c.Backend))
	if b == "" {
		return BackendVXLAN
	}
	return b
}

// Validate checks the configuration, naming the flag behind each field.
func (c Config) Validate() error {
	var errs []error
	switch c.backend() {
	case BackendVXLAN, BackendHostGW:
	case BackendNone:
		return nil
	default:
		return fmt.Errorf("--flannel-backend %q is not supported (choose vxlan, host-gw or none)", c.Backend)
	}
	if c.NodeName == "" {
		errs = append(errs, errors.New("flannel: node name is empty"))
	}
	if c.Kubeconfig == "" {
		errs = append(errs, errors.New("flannel: kubeconfig path is empty"))
	}
	if ipnet, err := parseIPv4CIDR(c.ClusterCIDR); err != nil {
		errs = append(errs, fmt.Errorf("--cluster-cidr %q: %w", c.ClusterCIDR, err))
	} else if ones, _ := ipnet.Mask.Size(); ones > 28 {
		// flannel's own limit: a /28 is the smallest network it splits.
		errs = append(errs, fmt.Errorf("--cluster-cidr %s is too small for flannel (at most /28)", c.ClusterCIDR))
	}
	if c.NodeIP != "" && net.ParseIP(c.NodeIP).To4() == nil {
		errs = append(errs, fmt.Errorf("--node-ip %q is not an IPv4 address", c.NodeIP))
	}
	for _, d := range []struct{ name, dir string }{
		{"flannel conf dir", c.ConfDir}, {"CNI conf dir", c.CNIConfDir}, {"CNI data dir", c.CNIDataDir},
	} {
		if d.dir == "" {
			errs = append(errs, fmt.Errorf("flannel: %s is empty", d.name))
		}
	}
	return errors.Join(errs...)
}

func parseIPv4CIDR(s string) (*net.IPNet, error) {
	_, ipnet, err := net.ParseCIDR(s)
	if err != nil {
		return nil, fmt.Errorf("not a CIDR: %w", err)
	}
	if ipnet.IP.To4() == nil {
		return nil, errors.New("not an IPv4 CIDR (IPv6 is not supported by berth's flannel yet)")
	}
	return ipnet, nil
}

// Flannel is the node's flannel component. It implements component.Component
// and component.Failer.
type Flannel struct {
	Config Config

	cancel   context.CancelFunc
	wg       sync.WaitGroup // our goroutines
	libWG    sync.WaitGroup // handed to flannel's RegisterNetwork
	ready    chan struct{}  // closed when setup ended; setupErr tells how
	setupErr error
	failed   chan error
	stopOnce sync.Once
	stopping chan struct{}

	// Set before ready is closed, read-only afterwards.
	podCIDR string
	mtu     int
}

// New returns a Flannel for cfg.
func New(cfg Config) *Flannel { return &Flannel{Config: cfg} }

func (f *Flannel) Name() string { return "flannel" }

// Prepare validates the configuration and writes net-conf.json, which the
// kube subnet manager reads at Start.
func (f *Flannel) Prepare(context.Context) error {
	if err := f.Config.Validate(); err != nil {
		return err
	}
	if f.Config.backend() == BackendNone {
		klog.Infof("flannel: --flannel-backend=none: berth runs no flannel and writes no CNI configuration; install a CNI yourself")
		return nil
	}
	data, err := netConfJSON(f.Config.ClusterCIDR, f.Config.backend())
	if err != nil {
		return err
	}
	if err := os.MkdirAll(f.Config.ConfDir, 0o755); err != nil {
		return fmt.Errorf("flannel: create %s: %w", f.Config.ConfDir, err)
	}
	path := filepath.Join(f.Config.ConfDir, NetConfFile)
	if err := writeFileAtomic(path, data, 0o644); err != nil {
		return fmt.Errorf("flannel: write %s: %w", path, err)
	}
	return nil
}

// Start launches flannel in the background: it waits for the node's
// podCIDR, sets up the backend, the iptables rules, subnet.env and the CNI
// conflist (then Ready returns), and runs the backend until Stop.
func (f *Flannel) Start(context.Context) error {
	f.ready = make(chan struct{})
	f.failed = make(chan error, 1)
	f.stopping = make(chan struct{})
	if f.Config.backend() == BackendNone {
		close(f.ready)
		return nil
	}
	// Detached from the start context: flannel lives until Stop.
	ctx, cancel := context.WithCancel(context.Background())
	f.cancel = cancel
	f.wg.Go(func() { f.run(ctx) })
	return nil
}

// Ready returns once the node's lease is known and the CNI conflist is
// written, or with the error that ended the setup.
func (f *Flannel) Ready(ctx context.Context) error {
	select {
	case <-f.ready:
		return f.setupErr
	case <-ctx.Done():
		return fmt.Errorf("flannel not ready: %w", ctx.Err())
	}
}

// Failed reports a setup failure or a backend that stopped on its own.
func (f *Flannel) Failed() <-chan error { return f.failed }

// PodCIDR is the node's pod subnet, known once Ready returned.
func (f *Flannel) PodCIDR() string { return f.podCIDR }

// MTU is the pods' MTU (the backend's), known once Ready returned.
func (f *Flannel) MTU() int { return f.mtu }

// Stop ends flannel and waits for it. flannel.1, cni0 and the iptables
// rules stay, so running pods keep their network across a berth restart;
// Cleanup removes them.
func (f *Flannel) Stop(ctx context.Context) error {
	if f.cancel == nil {
		return nil
	}
	f.stopOnce.Do(func() { close(f.stopping) })
	f.cancel()
	done := make(chan struct{})
	go func() {
		f.wg.Wait()
		f.libWG.Wait()
		close(done)
	}()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("flannel did not stop within the timeout: %w", ctx.Err())
	}
}

func (f *Flannel) fail(err error) {
	select {
	case <-f.stopping:
		return // an exit caused by Stop is not a failure
	default:
	}
	select {
	case f.failed <- err:
	default:
	}
}

func (f *Flannel) run(ctx context.Context) {
	sm, bn, err := f.setup(ctx)
	if err != nil {
		f.setupErr = err
		close(f.ready)
		f.fail(err)
		return
	}
	close(f.ready)

	var bwg sync.WaitGroup
	bwg.Go(func() { bn.Run(ctx) })
	// Sets NetworkUnavailable=false on the node, as flanneld does.
	if err := sm.CompleteLease(ctx, bn.Lease(), &f.libWG); err != nil && ctx.Err() == nil {
		klog.Warningf("flannel: could not mark node %s's network available: %v", f.Config.NodeName, err)
	}
	bwg.Wait()
	if ctx.Err() == nil {
		f.fail(errors.New("flannel backend stopped unexpectedly"))
	}
}

// setup follows flanneld's main: subnet manager, network config, external
// interface, backend network, traffic rules, subnet file; then berth's own
// CNI conflist.
func (f *Flannel) setup(ctx context.Context) (subnet.Manager, backend.Network, error) {
	cfg := f.Config
	// Wait for the podCIDR before flannel's node informer starts, so its
	// first list already carries it (flannel's AcquireLease gives up at
	// once on a cached node without podCIDR).
	if _, err := waitForPodCIDR(ctx, cfg); err != nil {
		return nil, nil, err
	}
	// Only now touch the host: nothing changes for a node that never gets
	// this far.
	if err := ensureSysctls(); err != nil {
		return nil, nil, err
	}

	// The kube subnet manager learns its node name only from NODE_NAME (or
	// the pod it runs in). That is process state, read once inside
	// NewSubnetManager; berth runs one node per process.
	if err := os.Setenv("NODE_NAME", cfg.NodeName); err != nil {
		return nil, nil, fmt.Errorf("flannel: set NODE_NAME: %w", err)
	}
	netConf := filepath.Join(cfg.ConfDir, NetConfFile)
	sm, err := kube.NewSubnetManager(ctx, "", cfg.Kubeconfig, annotationPrefix, netConf, true)
	if err != nil {
		return nil, nil, fmt.Errorf("flannel: kube subnet manager (needs list/watch on nodes): %w", err)
	}
	config, err := sm.GetNetworkConfig(ctx)
	if err != nil {
		return nil, nil, fmt.Errorf("flannel: network config: %w", err)
	}

	extIface, err := f.lookupExtIface(ctx, sm)
	if err != nil {
		return nil, nil, err
	}

	be, err := backend.NewManager(ctx, sm, extIface).GetBackend(config.BackendType)
	if err != nil {
		return nil, nil, fmt.Errorf("flannel: backend %s: %w", config.BackendType, err)
	}
	bn, err := be.RegisterNetwork(ctx, &f.libWG, config)
	if err != nil {
		return nil, nil, fmt.Errorf("flannel: register %s network: %w", config.BackendType, err)
	}
	lease := bn.Lease()

	subnetPath := filepath.Join(cfg.ConfDir, SubnetFile)
	if err := setupTraffic(ctx, config, lease, subnetPath); err != nil {
		return nil, nil, err
	}
	// FLANNEL_IPMASQ=true: flannel masquerades, so the bridge must not.
	if err := sm.HandleSubnetFile(subnetPath, config, true, lease.Subnet, lease.IPv6Subnet, bn.MTU()); err != nil {
		return nil, nil, fmt.Errorf("flannel: write %s: %w", subnetPath, err)
	}

	podCIDR := lease.Subnet.String()
	data, err := conflistJSON(podCIDR, config.Network.String(), bn.MTU(), cfg.CNIDataDir)
	if err != nil {
		return nil, nil, err
	}
	if err := os.MkdirAll(cfg.CNIConfDir, 0o755); err != nil {
		return nil, nil, fmt.Errorf("flannel: create %s: %w", cfg.CNIConfDir, err)
	}
	conflist := filepath.Join(cfg.CNIConfDir, ConflistFile)
	if err := writeFileAtomic(conflist, data, 0o644); err != nil {
		return nil, nil, fmt.Errorf("flannel: write %s: %w", conflist, err)
	}
	f.podCIDR, f.mtu = podCIDR, bn.MTU()
	klog.Infof("flannel: %s network up on %s (%s), node %s podCIDR %s, MTU %d; wrote %s",
		config.BackendType, extIface.IfaceName, extIface.ExtAddr, cfg.NodeName, podCIDR, bn.MTU(), conflist)
	return sm, bn, nil
}

// waitForPodCIDR polls the node until the controller-manager has assigned
// its podCIDR, logging what it waits for.
func waitForPodCIDR(ctx context.Context, cfg Config) (string, error) {
	rc, err := clientcmd.BuildConfigFromFlags("", cfg.Kubeconfig)
	if err != nil {
		return "", fmt.Errorf("flannel: load kubeconfig %s: %w", cfg.Kubeconfig, err)
	}
	cs, err := kubernetes.NewForConfig(rc)
	if err != nil {
		return "", fmt.Errorf("flannel: client: %w", err)
	}
	_, cluster, _ := net.ParseCIDR(cfg.ClusterCIDR) // validated in Prepare
	var lastWhat string
	var lastLog time.Time
	for {
		var what string
		node, err := cs.CoreV1().Nodes().Get(ctx, cfg.NodeName, metav1.GetOptions{})
		switch {
		case err == nil:
			if cidr := ipv4PodCIDR(node.Spec.PodCIDR, node.Spec.PodCIDRs); cidr != "" {
				_, pod, err := net.ParseCIDR(cidr)
				if err != nil {
					return "", fmt.Errorf("flannel: node %s has an invalid podCIDR %q: %w", cfg.NodeName, cidr, err)
				}
				podOnes, _ := pod.Mask.Size()
				clusterOnes, _ := cluster.Mask.Size()
				if !cluster.Contains(pod.IP) || podOnes < clusterOnes {
					return "", fmt.Errorf("flannel: node %s's podCIDR %s is not inside --cluster-cidr %s: the server and this agent disagree on --cluster-cidr", cfg.NodeName, cidr, cfg.ClusterCIDR)
				}
				klog.Infof("flannel: node %s has podCIDR %s", cfg.NodeName, cidr)
				return cidr, nil
			}
			what = fmt.Sprintf("the controller-manager to assign node %s a podCIDR from --cluster-cidr %s", cfg.NodeName, cfg.ClusterCIDR)
		case apierrors.IsNotFound(err):
			what = fmt.Sprintf("node %s to be registered (by its kubelet)", cfg.NodeName)
		default:
			what = fmt.Sprintf("node %s from the API server (%v)", cfg.NodeName, err)
		}
		if what != lastWhat || time.Since(lastLog) >= waitLogInterval {
			klog.Infof("flannel: waiting for %s", what)
			lastWhat, lastLog = what, time.Now()
		}
		select {
		case <-ctx.Done():
			return "", fmt.Errorf("flannel: stopped while waiting for %s: %w", what, ctx.Err())
		case <-time.After(time.Second):
		}
	}
}

// ipv4PodCIDR picks the IPv4 entry of a node's podCIDRs.
func ipv4PodCIDR(podCIDR string, podCIDRs []string) string {
	for _, c := range append([]string{podCIDR}, podCIDRs...) {
		if ip, _, err := net.ParseCIDR(c); err == nil && ip.To4() != nil {
			return c
		}
	}
	return ""
}

// lookupExtIface picks the interface VXLAN packets (or host-gw routes) use:
// --flannel-iface, else the interface holding the node IP, else that of the
// default route. A public IP stored on the node
// (flannel.alpha.coreos.com/node-public-ip) wins, as in flanneld.
func (f *Flannel) lookupExtIface(ctx context.Context, sm subnet.Manager) (*backend.ExternalInterface, error) {
	cfg := f.Config
	stack, err := ipmatch.GetIPFamily(true, false)
	if err != nil {
		return nil, fmt.Errorf("flannel: %w", err)
	}
	publicIP, _ := sm.GetStoredPublicIP(ctx)
	opts := ipmatch.PublicIPOpts{PublicIP: publicIP}
	var ext *backend.ExternalInterface
	switch {
	case cfg.Iface != "":
		ext, err = ipmatch.LookupExtIface(cfg.Iface, "", "", stack, opts)
		if err == nil && cfg.NodeIP != "" {
			// An interface may carry several addresses: use the node IP
			// when it is one of them rather than the first address.
			nodeIP := net.ParseIP(cfg.NodeIP)
			if holdsIP(ext.Iface, nodeIP) {
				ext.IfaceAddr = nodeIP
				if publicIP == "" {
					ext.ExtAddr = nodeIP
				}
			}
		}
	case cfg.NodeIP != "":
		ext, err = ipmatch.LookupExtIface(cfg.NodeIP, "", "", stack, opts)
	default:
		ext, err = ipmatch.LookupExtIface("", "", "", stack, opts)
	}
	if err != nil {
		what := "the default route's interface"
		switch {
		case cfg.Iface != "":
			what = "--flannel-iface " + cfg.Iface
		case cfg.NodeIP != "":
			what = "the interface holding node IP " + cfg.NodeIP
		}
		return nil, fmt.Errorf("flannel: cannot use %s: %w", what, err)
	}
	return ext, nil
}

func holdsIP(iface *net.Interface, want net.IP) bool {
	addrs, err := iface.Addrs()
	if err != nil {
		return false
	}
	for _, a := range addrs {
		if ipn, ok := a.(*net.IPNet); ok && ipn.IP.Equal(want) {
			return true
		}
	}
	return false
}

// setupTraffic installs flannel's masquerade and forward rules with its
// iptables traffic manager, which re-checks them every resyncSeconds until
// ctx ends. Rules for a previous network or subnet (read from the old
// subnet.env) are removed first, as flanneld does.
func setupTraffic(ctx context.Context, config *subnet.Config, l *lease.Lease, subnetPath string) error {
	prevNetwork, prevSubnet := readSubnetFile(subnetPath)
	tm := &iptables.IPTablesManager{}
	if err := tm.Init(ctx); err != nil {
		return fmt.Errorf("flannel: iptables: %w", err)
	}
	if err := tm.SetupAndEnsureMasqRules(ctx,
		config.Network, prevSubnet, prevNetwork,
		ip.IP6Net{}, ip.IP6Net{}, ip.IP6Net{},
		l, resyncSeconds, false); err != nil {
		return fmt.Errorf("flannel: masquerade rules: %w", err)
	}
	tm.SetupAndEnsureForwardRules(ctx, config.Network, ip.IP6Net{}, resyncSeconds)
	// The traffic manager only logs most failures (no iptables binary, a
	// failed iptables-restore): check that its chains are really there.
	return checkChains()
}
