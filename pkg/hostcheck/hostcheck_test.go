package hostcheck

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestRunOnThisHost(t *testing.T) {
	rs := Run(Options{DataDir: t.TempDir()})
	var buf bytes.Buffer
	Print(&buf, rs)
	t.Log("\n" + buf.String())
	for _, want := range []string{"kernel:", "overlay", "cgroups:", "memory controller", "tools:", "iptables", "directories:", "verdict:"} {
		if !strings.Contains(buf.String(), want) {
			t.Errorf("report lacks %q", want)
		}
	}
}

func TestMissingRequiredToolFails(t *testing.T) {
	bin := t.TempDir()
	// A PATH with mount but no iptables.
	if err := os.WriteFile(filepath.Join(bin, "mount"), []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	rs := Run(Options{DataDir: t.TempDir(), Path: bin})
	if !Failed(rs) {
		t.Fatal("no iptables in PATH must fail the check")
	}
	var buf bytes.Buffer
	Print(&buf, rs)
	if !strings.Contains(buf.String(), "[MISSING] iptables") || !strings.Contains(buf.String(), "apt-get install iptables") ||
		!strings.Contains(buf.String(), "verdict: FAIL") {
		t.Errorf("report does not name the missing tool and the fix:\n%s", buf.String())
	}
}

func TestModuleLists(t *testing.T) {
	dir := t.TempDir()
	list := filepath.Join(dir, "modules.dep")
	os.WriteFile(list, []byte("kernel/drivers/net/vxlan/vxlan.ko.xz: kernel/net/ipv4/udp_tunnel.ko.xz\nkernel/net/bridge/br_netfilter.ko: \n"), 0o644)
	if !fileHasModule(list, "vxlan") || !fileHasModule(list, "br_netfilter") || fileHasModule(list, "overlay") {
		t.Error("fileHasModule")
	}
}
