// Package multinode runs several berth nodes on one host: each node is a
// real berth process in its own network namespace (on a bridge in the root
// namespace) and its own private mount namespace, with its own kubelet
// cgroup root. See harness_test.go for the harness and
// /work/shared/reference/multinode.md for why each piece is there.
//
// Everything the harness creates carries a berth-mn / bmn name (netns
// berth-mn-*, links bmn*, cgroups /berth-mn-*, iptables rules commented
// berth-mn-harness, temporary dirs berth-mn-run-*), and only such things are
// ever touched: other berth nodes may run on the same host at the same time
// in other namespaces. TestMain sweeps leftovers of an earlier crashed run
// before and after the tests and fails the run if anything is left at the
// end.
package multinode

import (
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/berth-io/berth/test/testutil"
)

var (
	berthBin string
	// berthAgentBin is the agent-only binary: BERTH_AGENT_BIN, else
	// berth-agent beside berthBin (make build builds both).
	berthAgentBin string
	imagesDir     string // the built image tarballs (BERTH_IMAGES)
	airgapBundle  string // the add-ons' image bundle (BERTH_AIRGAP)
	skipReason    string // set when the suite cannot run here
	runDir        string // this run's temporary dir, <tmp>/berth-mn-run-*

	// sysctlsAtStart are the global kernel tunables the kubelet changes,
	// as they were before the run; restored at the end.
	sysctlsAtStart map[string]string
)

// Global tunables the kubelet sets (not per network namespace).
var globalSysctls = []string{"kernel/panic", "kernel/panic_on_oops", "vm/overcommit_memory"}

func TestMain(m *testing.M) {
	flag.Parse()
	if os.Geteuid() != 0 {
		skipReason = "multi-node tests need root (network and mount namespaces, cgroups, iptables, real nodes); skipping"
		fmt.Fprintln(os.Stderr, skipReason)
		os.Exit(m.Run())
	}
	for _, tool := range []string{"ip", "nsenter", "unshare", "iptables", "iptables-save", "mount", "umount", "awk", "sleep"} {
		if _, err := exec.LookPath(tool); err != nil {
			fmt.Fprintf(os.Stderr, "multinode: %s not found: %v\n", tool, err)
			os.Exit(1)
		}
	}
	root, _ := filepath.Abs("../../..")
	a, err := testutil.Build(root)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	berthBin, berthAgentBin, imagesDir, airgapBundle = a.Berth, a.BerthAgent, a.Images, a.Airgap
	os.Exit(runTests(m))
}

func runTests(m *testing.M) (code int) {
	// One run of this package at a time on a host: the bridge, the node
	// addresses and the sweep are host-wide. An abstract socket is released
	// by the kernel when we die, so a crashed run never leaves a stale lock.
	lock, err := net.Listen("unix", "@berth-mn-harness.lock")
	if err != nil {
		fmt.Fprintf(os.Stderr, "multinode: another run of this package is active on this host (%v)\n", err)
		return 1
	}
	defer lock.Close()

	logf := func(format string, a ...any) { fmt.Fprintf(os.Stderr, "multinode: "+format+"\n", a...) }
	sweep(logf, true)

	runDir, err = os.MkdirTemp("", runDirPrefix)
	if err != nil {
		logf("%v", err)
		return 1
	}
	sysctlsAtStart = readSysctls()
	if err := writeSysctlRecord(filepath.Join(runDir, sysctlRecord), sysctlsAtStart); err != nil {
		logf("%v", err)
		return 1
	}

	g := testutil.NewGuard(logf, func() bool {
		closeAllClusters()
		sweep(logf, false)
		restoreSysctls(logf, sysctlsAtStart)
		_ = os.RemoveAll(runDir)
		return verifyHostClean(logf)
	})
	defer g.Done(&code)
	return m.Run()
}

// verifyHostClean reports (and returns false on) anything of ours left on
// the host after the teardown and the sweep.
func verifyHostClean(logf func(string, ...any)) bool {
	ok := true
	fail := func(format string, a ...any) {
		logf("FAIL: "+format, a...)
		ok = false
	}
	// Checked at each node's teardown while its mount namespace was still
	// pinned by us (after that its inode number may be reused).
	for _, leak := range teardownLeaks() {
		fail("%s", leak)
	}
	if ns := ourNetns(); len(ns) > 0 {
		fail("network namespaces left: %v", ns)
	}
	if links := ourLinks(); len(links) > 0 {
		fail("links left: %v", links)
	}
	if cgs := ourCgroups(); len(cgs) > 0 {
		fail("cgroups left: %v", cgs)
	}
	if rules := ourIptablesRules(); len(rules) > 0 {
		fail("iptables rules left: %v", rules)
	}
	if pids := ourProcesses(); len(pids) > 0 {
		var desc []string
		for _, p := range pids {
			desc = append(desc, fmt.Sprintf("%d (%s)", p, cmdline(p)))
		}
		fail("processes left: %s", strings.Join(desc, ", "))
	}
	if dirs, _ := filepath.Glob(filepath.Join(os.TempDir(), runDirPrefix+"*")); len(dirs) > 0 {
		fail("temporary dirs left: %v", dirs)
	}
	for k, want := range sysctlsAtStart {
		if got := readSysctl(k); got != want {
			fail("sysctl %s is %q, was %q before the run", k, got, want)
		}
	}
	if ok {
		logf("host is clean")
	}
	return ok
}

// ---------------------------------------------------------------------------
// The sweep: leftovers of this run or of an earlier crashed one.

// sweep kills our processes and removes our network namespaces, links,
// iptables rules, cgroups, created mount points and run dirs. At start it
// also restores the global sysctls an earlier run recorded but never
// restored.
func sweep(logf func(string, ...any), atStart bool) {
	runDirs, _ := filepath.Glob(filepath.Join(os.TempDir(), runDirPrefix+"*"))
	sort.Slice(runDirs, func(i, j int) bool { return modTime(runDirs[i]).Before(modTime(runDirs[j])) })
	if atStart {
		for _, d := range runDirs {
			if rec, err := readSysctlRecord(filepath.Join(d, sysctlRecord)); err == nil {
				logf("sweep: restoring the sysctls an earlier run (%s) recorded", d)
				restoreSysctls(logf, rec)
				break // the oldest record is the host's own values
			}
		}
	}
	if pids := ourProcesses(); len(pids) > 0 {
		logf("sweep: killing %d processes: %s", len(pids), describeBriefly(pids))
	}
	if left := killUntilGone(ourProcesses, 30*time.Second); len(left) > 0 {
		logf("sweep: processes survive SIGKILL: %s", describePIDs(left))
	}
	for _, ns := range ourNetns() {
		logf("sweep: deleting network namespace %s", ns)
		if err := run("ip", "netns", "del", ns); err != nil {
			logf("sweep: %v", err)
		}
	}
	// Deleting a namespace deletes its veth pair asynchronously.
	waitFor(10*time.Second, func() bool {
		for _, l := range ourLinks() {
			if l != bridgeName {
				return false
			}
		}
		return true
	})
	for _, l := range ourLinks() {
		logf("sweep: deleting link %s", l)
		if err := run("ip", "link", "del", l); err != nil && linkExists(l) {
			logf("sweep: %v", err)
		}
	}
	for _, r := range ourIptablesRules() {
		logf("sweep: deleting iptables rule %s", r)
		args := append([]string{"iptables", "-w", "-t", "filter", "-D"}, testutil.SplitRule(strings.TrimPrefix(r, "-A "))...)
		if err := run(args...); err != nil {
			logf("sweep: %v", err)
		}
	}
	for _, cg := range ourCgroupRoots() {
		logf("sweep: removing cgroup %s", cg)
		if err := removeCgroup(cg, 15*time.Second); err != nil {
			logf("sweep: %v", err)
		}
	}
	for _, d := range runDirs {
		if b, err := os.ReadFile(filepath.Join(d, mountpointRecord)); err == nil {
			created := strings.Fields(string(b))
			for i := len(created) - 1; i >= 0; i-- {
				// rmdir only: a node elsewhere on the host may have put
				// something there since; then it stays.
				if err := syscall.Rmdir(created[i]); err != nil && !errors.Is(err, syscall.ENOENT) {
					logf("sweep: keeping %s (created by the harness): %v", created[i], err)
				}
			}
		}
		if atStart {
			logf("sweep: removing %s", d)
		}
		if err := os.RemoveAll(d); err != nil {
			logf("sweep: %v", err)
		}
	}
}

// ourProcesses: in our network namespaces or cgroups, running a binary
// from a run dir, or in a mount namespace with our mounts.
func ourProcesses() []int {
	var pids []int
	for _, ns := range ourNetns() {
		pids = append(pids, netnsPIDs(ns)...)
	}
	for _, cg := range ourCgroupRoots() {
		pids = append(pids, cgroupPIDs(cg)...)
	}
	pids = append(pids, pidsWithExePrefix(filepath.Join(os.TempDir(), runDirPrefix))...)
	pids = append(pids, pidsWithOurMounts()...)
	return uniq(pids)
}

func ourNetns() []string {
	ents, _ := os.ReadDir("/run/netns")
	var names []string
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), netnsPrefix) {
			names = append(names, e.Name())
		}
	}
	return names
}

// ourLinks lists root-namespace links named bmn*, veths before the bridge.
func ourLinks() []string {
	ents, _ := os.ReadDir("/sys/class/net")
	var links []string
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), linkPrefix) {
			links = append(links, e.Name())
		}
	}
	sort.Slice(links, func(i, j int) bool { return links[i] != bridgeName && links[j] == bridgeName })
	return links
}

// ourCgroupRoots lists /berth-mn-* roots present in any hierarchy.
func ourCgroupRoots() []string {
	seen := map[string]bool{}
	var roots []string
	for _, h := range cgroupHierarchies() {
		ms, _ := filepath.Glob(filepath.Join(h, cgroupPrefix+"*"))
		for _, m := range ms {
			r := "/" + filepath.Base(m)
			if !seen[r] {
				seen[r] = true
				roots = append(roots, r)
			}
		}
	}
	return roots
}

// ourCgroups lists every /berth-mn-* cgroup dir in every hierarchy.
func ourCgroups() []string {
	var dirs []string
	for _, h := range cgroupHierarchies() {
		ms, _ := filepath.Glob(filepath.Join(h, cgroupPrefix+"*"))
		dirs = append(dirs, ms...)
	}
	return dirs
}

// ourIptablesRules lists the root namespace's filter rules carrying our
// comment, in iptables-save form.
func ourIptablesRules() []string {
	out, err := exec.Command("iptables-save", "-t", "filter").Output()
	if err != nil {
		return nil
	}
	var rules []string
	for _, line := range strings.Split(string(out), "\n") {
		if strings.HasPrefix(line, "-A ") && strings.Contains(line, iptComment) {
			rules = append(rules, line)
		}
	}
	return rules
}

func modTime(p string) time.Time {
	st, err := os.Stat(p)
	if err != nil {
		return time.Time{}
	}
	return st.ModTime()
}

// ---------------------------------------------------------------------------
// Global kernel tunables.

func readSysctl(key string) string {
	b, err := os.ReadFile("/proc/sys/" + key)
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(b))
}

func readSysctls() map[string]string {
	m := map[string]string{}
	for _, k := range globalSysctls {
		if v := readSysctl(k); v != "" {
			m[k] = v
		}
	}
	return m
}

func writeSysctlRecord(path string, m map[string]string) error {
	var b strings.Builder
	for _, k := range globalSysctls {
		if v, ok := m[k]; ok {
			fmt.Fprintf(&b, "%s=%s\n", k, v)
		}
	}
	return os.WriteFile(path, []byte(b.String()), 0o644)
}

func readSysctlRecord(path string) (map[string]string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	m := map[string]string{}
	for _, line := range strings.Split(string(b), "\n") {
		if k, v, ok := strings.Cut(line, "="); ok {
			m[k] = v
		}
	}
	return m, nil
}

func restoreSysctls(logf func(string, ...any), m map[string]string) {
	for _, k := range globalSysctls {
		want, ok := m[k]
		if !ok || readSysctl(k) == want {
			continue
		}
		logf("restoring %s to %s (was %s)", strings.ReplaceAll(k, "/", "."), want, readSysctl(k))
		if err := os.WriteFile("/proc/sys/"+k, []byte(want), 0o644); err != nil {
			logf("restore %s: %v", k, err)
		}
	}
}
