package flannel

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/flannel-io/flannel/pkg/subnet"
)

func TestConflistJSON(t *testing.T) {
	data, err := conflistJSON("10.42.3.0/24", "10.42.0.0/16", 1450, "/data/agent/cni/networks")
	if err != nil {
		t.Fatal(err)
	}
	var got struct {
		CNIVersion string           `json:"cniVersion"`
		Name       string           `json:"name"`
		Plugins    []map[string]any `json:"plugins"`
	}
	if err := json.Unmarshal(data, &got); err != nil {
		t.Fatalf("conflist is not JSON: %v\n%s", err, data)
	}
	if got.CNIVersion != "1.0.0" || got.Name != "cbr0" {
		t.Errorf("cniVersion/name = %q/%q", got.CNIVersion, got.Name)
	}
	if len(got.Plugins) != 3 {
		t.Fatalf("want 3 plugins, got %d", len(got.Plugins))
	}
	br := got.Plugins[0]
	for k, want := range map[string]any{
		"type": "bridge", "bridge": "cni0", "isGateway": true, "isDefaultGateway": true,
		"ipMasq": false, "hairpinMode": true, "forceAddress": true, "mtu": float64(1450),
	} {
		if br[k] != want {
			t.Errorf("bridge %s = %v, want %v", k, br[k], want)
		}
	}
	ipam, _ := br["ipam"].(map[string]any)
	if ipam["type"] != "host-local" || ipam["dataDir"] != "/data/agent/cni/networks" {
		t.Errorf("ipam = %v", ipam)
	}
	ranges, _ := ipam["ranges"].([]any)
	if len(ranges) != 1 {
		t.Fatalf("ranges = %v", ipam["ranges"])
	}
	set, _ := ranges[0].([]any)
	if len(set) != 1 || set[0].(map[string]any)["subnet"] != "10.42.3.0/24" {
		t.Errorf("range set = %v", ranges[0])
	}
	routes, _ := ipam["routes"].([]any)
	if len(routes) != 1 || routes[0].(map[string]any)["dst"] != "10.42.0.0/16" {
		t.Errorf("routes = %v", ipam["routes"])
	}
	pm := got.Plugins[1]
	if pm["type"] != "portmap" || pm["snat"] != true || pm["capabilities"].(map[string]any)["portMappings"] != true {
		t.Errorf("portmap = %v", pm)
	}
	bw := got.Plugins[2]
	if bw["type"] != "bandwidth" || bw["capabilities"].(map[string]any)["bandwidth"] != true {
		t.Errorf("bandwidth = %v", bw)
	}

	for _, bad := range []struct {
		cidr string
		mtu  int
	}{{"", 1450}, {"10.42.0.0", 1450}, {"fd00::/64", 1450}, {"10.42.0.0/24", 0}} {
		if _, err := conflistJSON(bad.cidr, "10.42.0.0/16", bad.mtu, "/x"); err == nil {
			t.Errorf("conflistJSON(%q, mtu %d) accepted", bad.cidr, bad.mtu)
		}
	}
}

// net-conf.json must parse with flannel's own parser into what berth meant.
func TestNetConfJSON(t *testing.T) {
	for _, be := range []string{BackendVXLAN, BackendHostGW} {
		data, err := netConfJSON("10.42.0.0/16", be)
		if err != nil {
			t.Fatal(err)
		}
		cfg, err := subnet.ParseConfig(string(data))
		if err != nil {
			t.Fatalf("flannel cannot parse %s: %v", data, err)
		}
		if cfg.Network.String() != "10.42.0.0/16" || cfg.BackendType != be || !cfg.EnableIPv4 || cfg.EnableIPv6 || cfg.EnableNFTables {
			t.Errorf("%s: parsed %+v", be, cfg)
		}
		if err := subnet.CheckNetworkConfig(cfg); err != nil {
			t.Errorf("%s: flannel rejects the config: %v", be, err)
		}
		if cfg.SubnetLen != 24 {
			t.Errorf("%s: SubnetLen %d, want 24", be, cfg.SubnetLen)
		}
	}
}

func TestPrepareWritesNetConf(t *testing.T) {
	dir := t.TempDir()
	f := New(Config{
		NodeName: "n1", Kubeconfig: "/k", ClusterCIDR: "10.42.0.0/16", Backend: "host-gw",
		ConfDir: filepath.Join(dir, "flannel"), CNIConfDir: filepath.Join(dir, "cni"), CNIDataDir: filepath.Join(dir, "ipam"),
	})
	if err := f.Prepare(context.Background()); err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(filepath.Join(dir, "flannel", NetConfFile))
	if err != nil {
		t.Fatal(err)
	}
	var nc netConf
	if err := json.Unmarshal(data, &nc); err != nil || nc.Network != "10.42.0.0/16" || nc.Backend.Type != "host-gw" {
		t.Errorf("net-conf.json = %s (%v)", data, err)
	}
}

// Backend none writes nothing and is ready at once.
func TestBackendNone(t *testing.T) {
	dir := t.TempDir()
	f := New(Config{Backend: "none", ConfDir: filepath.Join(dir, "flannel"), CNIConfDir: filepath.Join(dir, "cni")})
	ctx := context.Background()
	for _, step := range []func(context.Context) error{f.Prepare, f.Start, f.Ready, f.Stop} {
		if err := step(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 0 {
		t.Errorf("backend none wrote %v", entries)
	}
}

func TestValidate(t *testing.T) {
	good := Config{NodeName: "n", Kubeconfig: "/k", ClusterCIDR: "10.42.0.0/16", ConfDir: "/a", CNIConfDir: "/b", CNIDataDir: "/c"}
	if err := good.Validate(); err != nil {
		t.Fatalf("good config rejected: %v", err)
	}
	for _, tc := range []struct {
		mod  func(*Config)
		want string
	}{
		{func(c *Config) { c.Backend = "wireguard" }, "--flannel-backend"},
		{func(c *Config) { c.ClusterCIDR = "10.42.0.0" }, "--cluster-cidr"},
		{func(c *Config) { c.ClusterCIDR = "fd00::/48" }, "IPv4"},
		{func(c *Config) { c.ClusterCIDR = "10.42.0.0/30" }, "too small"},
		{func(c *Config) { c.NodeIP = "nope" }, "--node-ip"},
		{func(c *Config) { c.NodeName = "" }, "node name"},
		{func(c *Config) { c.CNIDataDir = "" }, "CNI data dir"},
	} {
		c := good
		tc.mod(&c)
		err := c.Validate()
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("want error containing %q, got %v", tc.want, err)
		}
	}
}

func TestReadSubnetFile(t *testing.T) {
	p := filepath.Join(t.TempDir(), SubnetFile)
	if n, s := readSubnetFile(p); !n.Empty() || !s.Empty() {
		t.Errorf("missing file gave %v %v", n, s)
	}
	if err := os.WriteFile(p, []byte("FLANNEL_NETWORK=10.42.0.0/16\nFLANNEL_SUBNET=10.42.7.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	n, s := readSubnetFile(p)
	if n.String() != "10.42.0.0/16" || s.String() != "10.42.7.0/24" {
		t.Errorf("got %v %v", n, s)
	}
}

func TestIPv4PodCIDR(t *testing.T) {
	if got := ipv4PodCIDR("fd00::/64", []string{"fd00::/64", "10.42.1.0/24"}); got != "10.42.1.0/24" {
		t.Errorf("dual-stack: %q", got)
	}
	if got := ipv4PodCIDR("", nil); got != "" {
		t.Errorf("unassigned: %q", got)
	}
}

func testConfig(t *testing.T, kubeconfig string) Config {
	dir := t.TempDir()
	return Config{
		NodeName: "n1", Kubeconfig: kubeconfig, ClusterCIDR: "10.42.0.0/16",
		ConfDir: filepath.Join(dir, "flannel"), CNIConfDir: filepath.Join(dir, "cni"), CNIDataDir: filepath.Join(dir, "ipam"),
	}
}

// A set-up that cannot succeed ends Ready with its error and is reported
// on Failed, before anything on the host is touched.
func TestSetupFailureIsReported(t *testing.T) {
	f := New(testConfig(t, filepath.Join(t.TempDir(), "missing.kubeconfig")))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := f.Prepare(ctx); err != nil {
		t.Fatal(err)
	}
	if err := f.Start(ctx); err != nil {
		t.Fatal(err)
	}
	err := f.Ready(ctx)
	if err == nil || !strings.Contains(err.Error(), "kubeconfig") {
		t.Fatalf("Ready = %v, want the kubeconfig error", err)
	}
	select {
	case ferr := <-f.Failed():
		if ferr == nil {
			t.Error("Failed delivered nil")
		}
	case <-time.After(5 * time.Second):
		t.Error("failure not reported on Failed")
	}
	if err := f.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(f.Config.CNIConfDir, ConflistFile)); err == nil {
		t.Error("conflist written although set-up failed")
	}
}

// Stop while flannel waits for the API server returns promptly and is not
// reported as a failure.
func TestStopWhileWaiting(t *testing.T) {
	kc := filepath.Join(t.TempDir(), "kubeconfig")
	// Nothing listens on port 1.
	if err := os.WriteFile(kc, []byte(`apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: "https://127.0.0.1:1"}}]
users: [{name: u, user: {token: x}}]
contexts: [{name: x, context: {cluster: c, user: u}}]
current-context: x
`), 0o600); err != nil {
		t.Fatal(err)
	}
	f := New(testConfig(t, kc))
	ctx := context.Background()
	if err := f.Prepare(ctx); err != nil {
		t.Fatal(err)
	}
	if err := f.Start(ctx); err != nil {
		t.Fatal(err)
	}
	rctx, cancel := context.WithTimeout(ctx, 1500*time.Millisecond)
	defer cancel()
	if err := f.Ready(rctx); err == nil {
		t.Fatal("Ready without an API server")
	}
	sctx, scancel := context.WithTimeout(ctx, 10*time.Second)
	defer scancel()
	if err := f.Stop(sctx); err != nil {
		t.Fatal(err)
	}
	// Stop must end the waiting setup by cancelling it, not by running
	// into its own deadline.
	if sctx.Err() != nil {
		t.Errorf("Stop returned only when its deadline expired: %v", sctx.Err())
	}
	select {
	case err := <-f.Failed():
		t.Errorf("stop reported as failure: %v", err)
	default:
	}
	if err := f.Ready(ctx); err == nil {
		t.Error("Ready after Stop returned nil")
	}
}
