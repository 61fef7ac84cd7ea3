// Package hostcheck inspects a host for what a berth node needs: kernel
// features, cgroup controllers, user-space tools, writable directories. It
// only reads; `berth check-config` prints its results and the agent uses it
// to refuse early with a message naming what is missing.
package hostcheck

import (
	"bufio"
	"compress/gzip"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// Verdict of one check.
type Verdict string

const (
	OK      Verdict = "ok"
	Warn    Verdict = "warn"
	Missing Verdict = "MISSING"
)

// Result is one line of the report.
type Result struct {
	Group, Name string
	Verdict     Verdict
	Detail      string // what was found
	Fix         string // how to fix it, when not OK
}

// Options says where to look; zero values mean the real host.
type Options struct {
	Root    string // prefix for /proc, /sys, /lib/modules (tests)
	DataDir string
	Path    string // PATH to search for tools; empty means $PATH
}

func (o Options) path(p string) string { return filepath.Join(o.Root, p) }

// Run performs every check.
func Run(o Options) []Result {
	var out []Result
	out = append(out, kernelChecks(o)...)
	out = append(out, cgroupChecks(o)...)
	out = append(out, toolChecks(o)...)
	out = append(out, dirChecks(o)...)
	return out
}

// Failed reports whether any required check is missing.
func Failed(rs []Result) bool {
	for _, r := range rs {
		if r.Verdict == Missing {
			return true
		}
	}
	return false
}

// Print writes the report and a final verdict line.
func Print(w io.Writer, rs []Result) {
	group := ""
	for _, r := range rs {
		if r.Group != group {
			group = r.Group
			fmt.Fprintf(w, "%s:\n", group)
		}
		line := fmt.Sprintf("  [%-7s] %s", r.Verdict, r.Name)
		if r.Detail != "" {
			line += ": " + r.Detail
		}
		if r.Verdict != OK && r.Fix != "" {
			line += " — " + r.Fix
		}
		fmt.Fprintln(w, line)
	}
	missing, warns := 0, 0
	for _, r := range rs {
		switch r.Verdict {
		case Missing:
			missing++
		case Warn:
			warns++
		}
	}
	if missing > 0 {
		fmt.Fprintf(w, "verdict: FAIL — %d required item(s) missing, %d warning(s)\n", missing, warns)
	} else {
		fmt.Fprintf(w, "verdict: PASS — %d warning(s)\n", warns)
	}
}

// kernelFeature reports whether a kernel feature is usable: its /proc
// interface is there, its module is loaded, the kernel config has it built
// in or as a module, or the module is on disk.
func kernelFeature(o Options, f feature) (Verdict, string) {
	if f.procPath != "" {
		if _, err := os.Stat(o.path(f.procPath)); err == nil {
			return OK, "active (" + f.procPath + ")"
		}
	}
	if f.filesystem != "" && fileHasWord(o.path("/proc/filesystems"), f.filesystem) {
		return OK, "active (/proc/filesystems)"
	}
	if _, err := os.Stat(o.path("/sys/module/" + f.module)); err == nil {
		return OK, "loaded"
	}
	var uts unix.Utsname
	if err := unix.Uname(&uts); err != nil {
		return Missing, err.Error()
	}
	rel := unix.ByteSliceToString(uts.Release[:])
	if v := kernelConfig(o, rel, f.config); v == "y" {
		return OK, "built in (CONFIG_" + f.config + "=y)"
	} else if v == "m" {
		return OK, "module (CONFIG_" + f.config + "=m); berth loads it at start"
	}
	modDir := o.path(filepath.Join("/lib/modules", rel))
	if fileHasModule(filepath.Join(modDir, "modules.builtin"), f.module) {
		return OK, "built in"
	}
	if fileHasModule(filepath.Join(modDir, "modules.dep"), f.module) {
		return OK, "loadable; berth loads it at start"
	}
	return Missing, "not active, not loaded, not in the kernel config, not found in " + modDir
}

// kernelConfig returns "y", "m" or "" for CONFIG_<name> from
// /proc/config.gz or /boot/config-<release>.
func kernelConfig(o Options, release, name string) string {
	var r io.Reader
	if f, err := os.Open(o.path("/proc/config.gz")); err == nil {
		defer f.Close()
		if zr, err := gzip.NewReader(f); err == nil {
			r = zr
		}
	}
	if r == nil {
		f, err := os.Open(o.path("/boot/config-" + release))
		if err != nil {
			return ""
		}
		defer f.Close()
		r = f
	}
	sc := bufio.NewScanner(r)
	prefix := "CONFIG_" + name + "="
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), prefix); ok {
			return v
		}
	}
	return ""
}

func fileHasWord(path, word string) bool {
	b, err := os.ReadFile(path)
	if err != nil {
		return false
	}
	for _, line := range strings.Split(string(b), "\n") {
		for _, w := range strings.Fields(line) {
			if w == word {
				return true
			}
		}
	}
	return false
}

// fileHasModule looks for .../name.ko[.xz|.zst|.gz] in a modules list.
func fileHasModule(list, name string) bool {
	f, err := os.Open(list)
	if err != nil {
		return false
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	want := "/" + name + ".ko"
	wantDash := "/" + strings.ReplaceAll(name, "_", "-") + ".ko"
	for sc.Scan() {
		entry, _, _ := strings.Cut(sc.Text(), ":")
		if strings.Contains(entry, want) || strings.Contains(entry, wantDash) {
			return true
		}
	}
	return false
}

// feature is a kernel feature berth needs and the ways to see it.
type feature struct {
	module, config, procPath, filesystem, why string
	required                                  bool
}

func kernelChecks(o Options) []Result {
	var out []Result
	for _, f := range []feature{
		{module: "overlay", config: "OVERLAY_FS", filesystem: "overlay", why: "container image layers (overlayfs snapshotter)", required: true},
		{module: "br_netfilter", config: "BRIDGE_NETFILTER", procPath: "/proc/sys/net/bridge/bridge-nf-call-iptables", why: "Service traffic between pods on one node", required: true},
		{module: "vxlan", config: "VXLAN", why: "the flannel VXLAN pod network between nodes", required: true},
		{module: "nf_conntrack", config: "NF_CONNTRACK", procPath: "/proc/sys/net/netfilter/nf_conntrack_max", why: "Services and NAT", required: true},
		{module: "nf_tables", config: "NF_TABLES", why: "iptables (nft backend) rules for Services", required: false},
	} {
		v, detail := kernelFeature(o, f)
		if v == Missing && !f.required {
			v = Warn
		}
		out = append(out, Result{Group: "kernel", Name: f.module + " (" + f.why + ")", Verdict: v, Detail: detail,
			Fix: "enable CONFIG_" + f.config + " in the kernel, or install the distribution's kernel modules package, then `modprobe " + f.module + "`"})
	}
	if b, err := os.ReadFile(o.path("/proc/sys/net/ipv4/ip_forward")); err == nil && strings.TrimSpace(string(b)) != "1" {
		out = append(out, Result{Group: "kernel", Name: "net.ipv4.ip_forward", Verdict: OK, Detail: "0 now; berth sets it to 1 at start"})
	}
	return out
}

func cgroupChecks(o Options) []Result {
	var out []Result
	var have map[string]bool
	if b, err := os.ReadFile(o.path("/sys/fs/cgroup/cgroup.controllers")); err == nil {
		have = map[string]bool{}
		for _, c := range strings.Fields(string(b)) {
			have[c] = true
		}
		out = append(out, Result{Group: "cgroups", Name: "hierarchy", Verdict: OK, Detail: "cgroup v2 (unified)"})
	} else {
		have = v1Controllers(o)
		out = append(out, Result{Group: "cgroups", Name: "hierarchy", Verdict: Warn,
			Detail: "cgroup v1: deprecated in Kubernetes 1.36; berth sets the kubelet's failCgroupV1: false",
			Fix:    "boot with systemd.unified_cgroup_hierarchy=1 to use cgroup v2"})
	}
	for _, c := range []string{"cpu", "cpuset", "memory", "pids"} {
		r := Result{Group: "cgroups", Name: c + " controller", Verdict: OK}
		if !have[c] {
			r.Verdict, r.Fix = Missing, "enable the "+c+" cgroup controller (kernel config, or cgroup_enable="+c+" on the kernel command line)"
		}
		out = append(out, r)
	}
	return out
}

// v1Controllers reads the enabled controllers from /proc/cgroups.
func v1Controllers(o Options) map[string]bool {
	have := map[string]bool{}
	f, err := os.Open(o.path("/proc/cgroups"))
	if err != nil {
		return have
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) == 4 && fields[3] == "1" {
			have[fields[0]] = true
		}
	}
	return have
}

func lookPath(o Options, name string) (string, bool) {
	if o.Path == "" {
		p, err := exec.LookPath(name)
		return p, err == nil
	}
	for _, dir := range filepath.SplitList(o.Path) {
		p := filepath.Join(dir, name)
		if fi, err := os.Stat(p); err == nil && !fi.IsDir() && fi.Mode()&0o111 != 0 {
			return p, true
		}
	}
	return "", false
}

func toolChecks(o Options) []Result {
	var out []Result
	for _, t := range []struct {
		name, pkg, why string
		required       bool
	}{
		{"iptables", "iptables", "kube-proxy and flannel rules", true},
		{"iptables-save", "iptables", "kube-proxy", true},
		{"iptables-restore", "iptables", "kube-proxy", true},
		{"ip6tables", "iptables", "IPv6 rules", false},
		{"mount", "mount", "volumes", true},
		{"ipset", "ipset", "network policy", false},
		{"conntrack", "conntrack", "clearing stale UDP entries for Services", false},
	} {
		r := Result{Group: "tools", Name: t.name + " (" + t.why + ")", Verdict: OK}
		if p, ok := lookPath(o, t.name); ok {
			r.Detail = p
		} else {
			r.Verdict, r.Detail = Missing, "not found in PATH"
			if !t.required {
				r.Verdict = Warn
			}
			r.Fix = "install it: apt-get install " + t.pkg + " (or your distribution's equivalent)"
		}
		out = append(out, r)
	}
	return out
}

func dirChecks(o Options) []Result {
	var out []Result
	for _, d := range []string{o.DataDir, "/run"} {
		if d == "" {
			continue
		}
		// The first existing ancestor decides whether berth can create it.
		p := d
		for {
			if _, err := os.Stat(p); err == nil || p == "/" {
				break
			}
			p = filepath.Dir(p)
		}
		r := Result{Group: "directories", Name: d + " writable", Verdict: OK}
		if err := unix.Access(p, unix.W_OK); err != nil {
			r.Verdict, r.Detail, r.Fix = Missing, fmt.Sprintf("%s: %v", p, err), "run as root, or choose another --data-dir"
		} else {
			var st unix.Statfs_t
			if unix.Statfs(p, &st) == nil && st.Flags&unix.ST_RDONLY != 0 {
				r.Verdict, r.Detail, r.Fix = Missing, p+" is on a read-only file system", "choose a --data-dir on a writable file system"
			}
		}
		out = append(out, r)
	}
	return out
}
