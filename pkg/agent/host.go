package agent

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"

	"k8s.io/klog/v2"

	"github.com/berth-io/berth/pkg/hostcheck"
)

// Host prepares the host for a node: kernel modules, sysctls, and a check
// that refuses early, by name, when something required is missing.
type Host struct {
	DataDir string
}

func (h *Host) Name() string { return "host" }

func (h *Host) Prepare(context.Context) error {
	// Modules are often built in; modprobe is best effort.
	if _, err := exec.LookPath("modprobe"); err == nil {
		for _, m := range []string{"overlay", "br_netfilter", "vxlan", "nf_conntrack"} {
			if out, err := exec.Command("modprobe", m).CombinedOutput(); err != nil {
				klog.V(2).Infof("modprobe %s: %v %s", m, err, strings.TrimSpace(string(out)))
			}
		}
	}
	rs := hostcheck.Run(hostcheck.Options{DataDir: h.DataDir})
	var missing []string
	for _, r := range rs {
		if r.Verdict == hostcheck.Missing {
			missing = append(missing, fmt.Sprintf("%s (%s; %s)", r.Name, r.Detail, r.Fix))
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("this host lacks what a node needs (run `berth check-config` for the full report): %s", strings.Join(missing, "; "))
	}
	for _, s := range []struct{ path, value string }{
		{"/proc/sys/net/ipv4/ip_forward", "1"},
		{"/proc/sys/net/bridge/bridge-nf-call-iptables", "1"},
		{"/proc/sys/net/bridge/bridge-nf-call-ip6tables", "1"},
	} {
		if err := os.WriteFile(s.path, []byte(s.value), 0o644); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("set %s: %w", s.path, err)
		}
	}
	return nil
}

func (h *Host) Start(context.Context) error { return nil }
func (h *Host) Ready(context.Context) error { return nil }
func (h *Host) Stop(context.Context) error  { return nil }
