package flannel

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	goiptables "github.com/coreos/go-iptables/iptables"
	"github.com/vishvananda/netlink"
)

// jump is a chain flannel's iptables traffic manager creates (target) and
// the rule in a built-in chain that jumps to it.
type jump struct {
	table, chain, target string
	rule                 []string
}

// flannelJumps lists them as flannel v0.28 writes them.
func flannelJumps() []jump {
	return []jump{
		{"nat", "POSTROUTING", "FLANNEL-POSTRTG", []string{"-m", "comment", "--comment", "flanneld masq", "-j", "FLANNEL-POSTRTG"}},
		{"filter", "FORWARD", "FLANNEL-FWD", []string{"-m", "comment", "--comment", "flanneld forward", "-j", "FLANNEL-FWD"}},
	}
}

// checkChains verifies that flannel's IPv4 chains exist after set-up.
func checkChains() error {
	ipt, err := goiptables.New()
	if err != nil {
		return fmt.Errorf("flannel: iptables: %w", err)
	}
	for _, j := range flannelJumps() {
		ok, err := ipt.ChainExists(j.table, j.target)
		if err != nil {
			return fmt.Errorf("flannel: check iptables chain %s/%s: %w", j.table, j.target, err)
		}
		if !ok {
			return fmt.Errorf("flannel: iptables chain %s/%s was not created (see flannel's log lines above)", j.table, j.target)
		}
	}
	return nil
}

// Cleanup removes what flannel and the conflist leave on a node after a
// normal stop: the flannel.1 (and flannel-v6.1) VXLAN device, the cni0
// bridge, flannel's iptables chains and the rules jumping to them, and the
// generated subnet.env and conflist. It is for berth-killall and tests: run
// it in the node's network namespace, after the node's pods are gone.
// Host-local's IPAM state (cfg.CNIDataDir) and host-gw routes on the uplink
// are left alone.
func Cleanup(cfg Config) error {
	var errs []error
	for _, name := range []string{VXLANDevice, "flannel-v6.1", BridgeDevice} {
		link, err := netlink.LinkByName(name)
		if err != nil {
			var nf netlink.LinkNotFoundError
			if !errors.As(err, &nf) {
				errs = append(errs, fmt.Errorf("flannel cleanup: look up %s: %w", name, err))
			}
			continue
		}
		if err := netlink.LinkDel(link); err != nil {
			errs = append(errs, fmt.Errorf("flannel cleanup: delete %s: %w", name, err))
		}
	}

	errs = append(errs, cleanupIPTables(goiptables.ProtocolIPv4))
	// ip6tables may be missing on IPv4-only hosts; flannel then never
	// created IPv6 rules.
	if _, err := goiptables.NewWithProtocol(goiptables.ProtocolIPv6); err == nil {
		errs = append(errs, cleanupIPTables(goiptables.ProtocolIPv6))
	}

	for _, p := range []string{
		pathIn(cfg.ConfDir, SubnetFile),
		pathIn(cfg.CNIConfDir, ConflistFile),
	} {
		if p == "" {
			continue
		}
		if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
			errs = append(errs, fmt.Errorf("flannel cleanup: %w", err))
		}
	}
	return errors.Join(errs...)
}

func pathIn(dir, name string) string {
	if dir == "" {
		return ""
	}
	return filepath.Join(dir, name)
}

func cleanupIPTables(proto goiptables.Protocol) error {
	ipt, err := goiptables.NewWithProtocol(proto)
	if err != nil {
		return fmt.Errorf("flannel cleanup: iptables: %w", err)
	}
	var errs []error
	for _, j := range flannelJumps() {
		ok, err := ipt.ChainExists(j.table, j.target)
		if err != nil {
			errs = append(errs, fmt.Errorf("flannel cleanup: %s/%s: %w", j.table, j.target, err))
			continue
		}
		if !ok {
			// Without the chain no rule can jump to it.
			continue
		}
		// Loop: an interrupted restore can leave a jump twice; bounded so a
		// rule that refuses to go cannot spin forever.
		for range 8 {
			exists, err := ipt.Exists(j.table, j.chain, j.rule...)
			if err != nil {
				errs = append(errs, fmt.Errorf("flannel cleanup: check %s/%s jump: %w", j.table, j.chain, err))
				break
			}
			if !exists {
				break
			}
			if err := ipt.Delete(j.table, j.chain, j.rule...); err != nil {
				errs = append(errs, fmt.Errorf("flannel cleanup: delete %s/%s jump: %w", j.table, j.chain, err))
				break
			}
		}
		if err := ipt.ClearAndDeleteChain(j.table, j.target); err != nil {
			errs = append(errs, fmt.Errorf("flannel cleanup: delete chain %s/%s: %w", j.table, j.target, err))
		}
	}
	return errors.Join(errs...)
}
