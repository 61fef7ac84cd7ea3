package flannel

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"strings"

	"github.com/berth-io/berth/pkg/atomicfile"
	"github.com/flannel-io/flannel/pkg/ip"
	"k8s.io/klog/v2"
)

// netConf is flannel's net-conf.json (the fields berth sets).
type netConf struct {
	Network    string
	EnableIPv4 bool
	EnableIPv6 bool
	Backend    netConfBackend
}

type netConfBackend struct {
	Type string
}

func netConfJSON(clusterCIDR, backendType string) ([]byte, error) {
	data, err := json.MarshalIndent(netConf{
		Network:    clusterCIDR,
		EnableIPv4: true,
		Backend:    netConfBackend{Type: backendType},
	}, "", "  ")
	if err != nil {
		return nil, fmt.Errorf("flannel: encode net-conf.json: %w", err)
	}
	return append(data, '\n'), nil
}

// The CNI conflist: what flannel's CNI meta-plugin would hand to bridge and
// host-local given berth's subnet.env (ipMasq off because flannel
// masquerades, isGateway, the node's podCIDR as the only range, a route to
// the cluster CIDR), followed by portmap and bandwidth as in k3s.
//
// The IPAM route is the cluster CIDR, not 0.0.0.0/0: with isDefaultGateway
// the bridge plugin adds the default route itself, and a second, identical
// default route from IPAM makes every ADD fail with "file exists".
type conflist struct {
	CNIVersion string `json:"cniVersion"`
	Name       string `json:"name"`
	Plugins    []any  `json:"plugins"`
}

type bridgePlugin struct {
	Type             string    `json:"type"`
	Bridge           string    `json:"bridge"`
	IsGateway        bool      `json:"isGateway"`
	IsDefaultGateway bool      `json:"isDefaultGateway"`
	IPMasq           bool      `json:"ipMasq"`
	HairpinMode      bool      `json:"hairpinMode"`
	ForceAddress     bool      `json:"forceAddress"`
	MTU              int       `json:"mtu"`
	IPAM             hostLocal `json:"ipam"`
}

type hostLocal struct {
	Type    string        `json:"type"`
	DataDir string        `json:"dataDir"`
	Ranges  [][]ipamRange `json:"ranges"`
	Routes  []ipamRoute   `json:"routes"`
}

type ipamRange struct {
	Subnet string `json:"subnet"`
}

type ipamRoute struct {
	Dst string `json:"dst"`
}

type portmapPlugin struct {
	Type         string          `json:"type"`
	Capabilities map[string]bool `json:"capabilities"`
	SNAT         bool            `json:"snat"`
}

type bandwidthPlugin struct {
	Type         string          `json:"type"`
	Capabilities map[string]bool `json:"capabilities"`
}

// conflistJSON renders 10-flannel.conflist for a node's podCIDR.
func conflistJSON(podCIDR, clusterCIDR string, mtu int, dataDir string) ([]byte, error) {
	if _, err := parseIPv4CIDR(podCIDR); err != nil {
		return nil, fmt.Errorf("flannel: podCIDR %q: %w", podCIDR, err)
	}
	if _, err := parseIPv4CIDR(clusterCIDR); err != nil {
		return nil, fmt.Errorf("flannel: cluster CIDR %q: %w", clusterCIDR, err)
	}
	if mtu <= 0 {
		return nil, fmt.Errorf("flannel: invalid MTU %d", mtu)
	}
	cl := conflist{
		CNIVersion: "1.0.0",
		Name:       "cbr0",
		Plugins: []any{
			bridgePlugin{
				Type:             "bridge",
				Bridge:           BridgeDevice,
				IsGateway:        true,
				IsDefaultGateway: true,
				IPMasq:           false,
				HairpinMode:      true,
				ForceAddress:     true,
				MTU:              mtu,
				IPAM: hostLocal{
					Type:    "host-local",
					DataDir: dataDir,
					Ranges:  [][]ipamRange{{{Subnet: podCIDR}}},
					Routes:  []ipamRoute{{Dst: clusterCIDR}},
				},
			},
			portmapPlugin{Type: "portmap", Capabilities: map[string]bool{"portMappings": true}, SNAT: true},
			bandwidthPlugin{Type: "bandwidth", Capabilities: map[string]bool{"bandwidth": true}},
		},
	}
	data, err := json.MarshalIndent(cl, "", "  ")
	if err != nil {
		return nil, fmt.Errorf("flannel: encode conflist: %w", err)
	}
	return append(data, '\n'), nil
}

// readSubnetFile returns FLANNEL_NETWORK and FLANNEL_SUBNET (as networks)
// from a previous subnet.env; zero values when absent.
func readSubnetFile(path string) (network, subnetNet ip.IP4Net) {
	data, err := os.ReadFile(path)
	if err != nil {
		if !errors.Is(err, fs.ErrNotExist) {
			klog.Warningf("flannel: read previous %s: %v", path, err)
		}
		return
	}
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		key, val, ok := strings.Cut(strings.TrimSpace(sc.Text()), "=")
		if !ok {
			continue
		}
		_, ipnet, err := net.ParseCIDR(strings.TrimSpace(val))
		if err != nil || ipnet.IP.To4() == nil {
			continue
		}
		switch key {
		case "FLANNEL_NETWORK":
			network = ip.FromIPNet(ipnet)
		case "FLANNEL_SUBNET":
			subnetNet = ip.FromIPNet(ipnet)
		}
	}
	return
}

func writeFileAtomic(path string, data []byte, perm os.FileMode) error {
	return atomicfile.Write(path, data, perm)
}

// ensureSysctls turns on what the network flannel builds depends on, in
// this network namespace: IPv4 forwarding (pod traffic is routed between
// cni0, flannel.1 and the uplink) and iptables on bridged traffic (so a
// pod reaching a Service backed by a pod on the same bridge is NATed).
// flanneld itself refuses to start without br_netfilter.
func ensureSysctls() error {
	for _, s := range []struct{ path, hint string }{
		{"/proc/sys/net/ipv4/ip_forward", ""},
		{"/proc/sys/net/bridge/bridge-nf-call-iptables", " (is the br_netfilter module loaded? modprobe br_netfilter)"},
	} {
		cur, err := os.ReadFile(s.path)
		if err != nil {
			return fmt.Errorf("flannel: read %s%s: %w", s.path, s.hint, err)
		}
		if strings.TrimSpace(string(cur)) == "1" {
			continue
		}
		if err := os.WriteFile(s.path, []byte("1"), 0o644); err != nil {
			return fmt.Errorf("flannel: set %s to 1: %w", s.path, err)
		}
		klog.Infof("flannel: set %s to 1", s.path)
	}
	return nil
}
