// Package install tests install.sh, berth-killall.sh and berth-uninstall.sh
// on this host, as root: downloads from a loopback HTTP server, the
// air-gapped path, refusals, the systemd unit (checked with systemd-analyze;
// there is no systemd as PID 1 here, so the test runs the unit's ExecStart
// itself), and that uninstalling leaves nothing of berth behind.
package install

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/berth-io/berth/test/testutil"
)

var (
	root string
	// rel is the release directory under test: `make release-<arch>`'s
	// dist/artifacts (BERTH_RELEASE_DIR), as users download it.
	rel releaseDir
)

// releaseDir is the host architecture's files of a release directory.
type releaseDir struct {
	dir, berth, agent, sums, airgap string
}

func TestMain(m *testing.M) {
	if os.Geteuid() != 0 {
		fmt.Fprintln(os.Stderr, "install tests need root; skipping")
		os.Exit(0)
	}
	root, _ = filepath.Abs("../../..")
	r, err := findRelease(root)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	rel = r
	os.Exit(m.Run())
}

// findRelease returns BERTH_RELEASE_DIR, or builds this architecture's
// release (`make release-<arch>`) and returns dist/artifacts.
func findRelease(root string) (releaseDir, error) {
	dir := os.Getenv("BERTH_RELEASE_DIR")
	if dir == "" {
		cmd := exec.Command("make", "-C", root, "release-"+runtime.GOARCH)
		cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
		if err := cmd.Run(); err != nil {
			return releaseDir{}, fmt.Errorf("make release-%s: %w", runtime.GOARCH, err)
		}
		dir = filepath.Join(root, "dist", "artifacts")
	}
	suffix := map[string]string{"amd64": "", "arm64": "-arm64", "arm": "-armhf"}[runtime.GOARCH]
	r := releaseDir{
		dir:    dir,
		berth:  filepath.Join(dir, "berth"+suffix),
		agent:  filepath.Join(dir, "berth-agent"+suffix),
		sums:   filepath.Join(dir, "sha256sum-"+runtime.GOARCH+".txt"),
		airgap: filepath.Join(dir, "berth-airgap-images-"+runtime.GOARCH+".tar.zst"),
	}
	for _, f := range []string{r.berth, r.agent, r.sums, r.airgap} {
		if _, err := os.Stat(f); err != nil {
			return r, fmt.Errorf("release directory %s: %w (run make release-%s)", dir, err, runtime.GOARCH)
		}
	}
	return r, nil
}

// The paths berth owns on a host; uninstall must leave none of them.
var hostPaths = []string{"/var/lib/berth", "/etc/berth", "/run/berth", "/run/flannel", "/var/lib/kubelet", "/var/lib/cni"}

// requireCleanHost refuses to run over a real installation: the test
// installs to the default data paths and its uninstall removes them.
func requireCleanHost(t *testing.T) {
	t.Helper()
	if _, err := os.Stat("/var/lib/berth"); err == nil {
		t.Fatal("/var/lib/berth exists: this test installs berth on the host and uninstalls it; run it on a host without berth (sudo berth-uninstall.sh, or remove /var/lib/berth)")
	}
	if out, _ := exec.Command("pgrep", "-f", "berth (server|agent)").Output(); len(out) > 0 {
		t.Fatalf("berth is running on this host (pids %s): stop it first", strings.Fields(string(out)))
	}
}

// release is a loopback HTTP server for a copy of the release directory
// (links to its files: a test may replace one with a corrupt copy).
type release struct {
	dir string
	url string
}

func newRelease(t *testing.T) *release {
	t.Helper()
	r := &release{dir: t.TempDir()}
	for _, f := range []string{rel.berth, rel.agent, rel.sums, rel.airgap} {
		if err := os.Symlink(f, filepath.Join(r.dir, filepath.Base(f))); err != nil {
			t.Fatal(err)
		}
	}
	srv := httptest.NewServer(http.FileServer(http.Dir(r.dir)))
	t.Cleanup(srv.Close)
	r.url = srv.URL
	return r
}

func fileSHA(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

// installer runs install.sh with env (plus a clean base) and returns its
// exit code and output.
func installer(t *testing.T, env []string, args ...string) (int, string) {
	t.Helper()
	cmd := exec.Command("sh", append([]string{filepath.Join(root, "install.sh")}, args...)...)
	cmd.Env = append(testutil.CleanEnv(), env...)
	out, err := cmd.CombinedOutput()
	code := 0
	if err != nil {
		ee, ok := err.(*exec.ExitError)
		if !ok {
			t.Fatalf("install.sh: %v", err)
		}
		code = ee.ExitCode()
	}
	return code, string(out)
}

// layout is one install's directories (the bin and unit dirs are the
// test's own; data paths are the host's defaults).
type layout struct{ bin, systemd string }

func newLayout(t *testing.T) layout {
	d := t.TempDir()
	return layout{bin: filepath.Join(d, "bin"), systemd: filepath.Join(d, "systemd")}
}

func (l layout) env(extra ...string) []string {
	return append([]string{"INSTALL_BERTH_BIN_DIR=" + l.bin, "INSTALL_BERTH_SYSTEMD_DIR=" + l.systemd}, extra...)
}

// uninstallAtCleanup runs the uninstall script if the test left one.
func uninstallAtCleanup(t *testing.T, l layout) {
	t.Cleanup(func() {
		for _, s := range []string{"berth-uninstall.sh", "berth-agent-uninstall.sh"} {
			p := filepath.Join(l.bin, s)
			if _, err := os.Stat(p); err == nil {
				out, err := exec.Command("sh", p).CombinedOutput()
				if err != nil {
					t.Logf("cleanup %s: %v\n%s", p, err, out)
				}
			}
		}
	})
}

func TestInstallRefusesBadInput(t *testing.T) {
	srv := newRelease(t)
	l := newLayout(t)
	for _, tc := range []struct {
		name string
		env  []string
		want string
	}{
		{"agent without token", []string{"BERTH_URL=https://10.0.0.1:6443"}, "neither BERTH_TOKEN nor BERTH_TOKEN_FILE"},
		{"agent over http", []string{"BERTH_URL=http://10.0.0.1:6443", "BERTH_TOKEN=x"}, "BERTH_URL must be an https:// URL"},
		{"unsupported architecture", []string{"ARCH=mips64"}, "unsupported architecture 'mips64'"},
		{"air gap without the binary", []string{"INSTALL_BERTH_SKIP_DOWNLOAD=true"}, "is missing or not executable"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, out := installer(t, l.env(append(tc.env, "INSTALL_BERTH_ARTIFACT_URL="+srv.url)...))
			if code == 0 || !strings.Contains(out, tc.want) {
				t.Errorf("exit %d, want an error containing %q:\n%s", code, tc.want, out)
			}
			assertNothingInstalled(t, l)
		})
	}

	t.Run("corrupt or truncated download", func(t *testing.T) {
		bin := filepath.Join(srv.dir, filepath.Base(rel.berth))
		good, err := os.ReadFile(bin)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.Remove(bin); err != nil { // the link, not the release's file
			t.Fatal(err)
		}
		defer os.Symlink(rel.berth, bin)
		for name, bad := range map[string][]byte{
			"truncated": good[:len(good)/2],
			"flipped":   append(append([]byte{}, good[:1000]...), append([]byte{good[1000] ^ 0xff}, good[1001:]...)...),
		} {
			if err := os.WriteFile(bin, bad, 0o755); err != nil {
				t.Fatal(err)
			}
			code, out := installer(t, l.env("INSTALL_BERTH_ARTIFACT_URL="+srv.url))
			if code == 0 || !strings.Contains(out, "nothing was installed") || !strings.Contains(out, "sha256") {
				t.Errorf("%s binary: exit %d:\n%s", name, code, out)
			}
			assertNothingInstalled(t, l)
		}
	})
}

func assertNothingInstalled(t *testing.T, l layout) {
	t.Helper()
	for _, d := range []string{l.bin, l.systemd} {
		if ents, err := os.ReadDir(d); err == nil && len(ents) > 0 {
			var names []string
			for _, e := range ents {
				names = append(names, e.Name())
			}
			t.Errorf("%s holds %v after a refused install", d, names)
		}
	}
}

// TestInstallServer: install from the loopback server, check every file,
// re-run (nothing changes), run the unit's ExecStart to a working node,
// then uninstall and check that nothing of berth is left.
func TestInstallServer(t *testing.T) {
	requireCleanHost(t)
	pins, _ := filepath.Glob("/run/netns/cni-*")
	srv := newRelease(t)
	l := newLayout(t)
	uninstallAtCleanup(t, l)
	env := l.env(
		"INSTALL_BERTH_ARTIFACT_URL="+srv.url,
		"INSTALL_BERTH_SKIP_START=true",
		"INSTALL_BERTH_SYMLINK=force",
		"INSTALL_BERTH_EXEC=server --disable coredns,local-storage,metrics-server --node-label 'berth.test/label=quoted'",
		`BERTH_TOKEN=s3cret"$x`,
		"HTTPS_PROXY=http://proxy.invalid:3128",
		"NO_PROXY=127.0.0.0/8,10.0.0.0/8,.svc,.cluster.local,"+hostIP(t),
	)
	t0 := time.Now()
	code, out := installer(t, env)
	if code != 0 {
		t.Fatalf("install.sh: exit %d\n%s", code, out)
	}
	t.Logf("install from the loopback server took %s", time.Since(t0).Round(time.Millisecond))

	berthPath := filepath.Join(l.bin, "berth")
	mode(t, berthPath, 0o755)
	if fileSHA(t, berthPath) != fileSHA(t, rel.berth) {
		t.Error("installed binary differs from the release")
	}
	for _, link := range []string{"kubectl", "crictl", "ctr"} {
		if dst, err := os.Readlink(filepath.Join(l.bin, link)); err != nil || dst != "berth" {
			t.Errorf("%s -> %q (%v), want berth", link, dst, err)
		}
	}
	mode(t, filepath.Join(l.bin, "berth-killall.sh"), 0o755)
	mode(t, filepath.Join(l.bin, "berth-uninstall.sh"), 0o755)
	unit := filepath.Join(l.systemd, "berth.service")
	mode(t, unit, 0o644)
	envFile := unit + ".env"
	mode(t, envFile, 0o600)
	envText := read(t, envFile)
	for _, want := range []string{`BERTH_TOKEN="s3cret\"\$x"`, `HTTPS_PROXY="http://proxy.invalid:3128"`} {
		if !strings.Contains(envText, want) {
			t.Errorf("env file lacks %s:\n%s", want, envText)
		}
	}
	if strings.Contains(envText, "INSTALL_BERTH") {
		t.Errorf("env file carries installer variables:\n%s", envText)
	}
	unitText := read(t, unit)
	for _, want := range []string{"Type=notify", "Delegate=yes", "KillMode=process", "Restart=always", "LimitNOFILE=1048576", "EnvironmentFile=-" + envFile} {
		if !strings.Contains(unitText, want) {
			t.Errorf("unit lacks %s:\n%s", want, unitText)
		}
	}
	if out, err := exec.Command("systemd-analyze", "verify", unit).CombinedOutput(); err != nil || strings.TrimSpace(string(out)) != "" {
		t.Errorf("systemd-analyze verify %s: %v\n%s", unit, err, out)
	}
	for _, s := range []string{"berth-killall.sh", "berth-uninstall.sh"} {
		if out, err := exec.Command("shellcheck", "-s", "sh", filepath.Join(l.bin, s)).CombinedOutput(); err != nil {
			t.Errorf("shellcheck %s: %v\n%s", s, err, out)
		}
	}

	// A re-run with nothing changed changes nothing.
	code, out = installer(t, env)
	if code != 0 || !strings.Contains(out, "already this release") || strings.Contains(out, "[INFO]  writing") {
		t.Errorf("re-run: exit %d, want the binary and every file unchanged:\n%s", code, out)
	}

	// What systemd would run. The air-gap bundle gives the node its
	// pause and busybox images, as a user would copy it.
	if err := os.MkdirAll("/var/lib/berth/agent/images", 0o755); err != nil {
		t.Fatal(err)
	}
	if err := testutil.CopyFile(rel.airgap, filepath.Join("/var/lib/berth/agent/images", filepath.Base(rel.airgap))); err != nil {
		t.Fatal(err)
	}
	args := execStart(t, unitText)
	if !strings.Contains(strings.Join(args, "\n")+"\n", "\n--node-label\nberth.test/label=quoted\n") {
		t.Errorf("ExecStart arguments %q: the quoted label is not one argument without its quotes", args)
	}
	cmd := exec.Command(args[0], args[1:]...)
	cmd.Env = append(testutil.CleanEnv(), parseEnvFile(t, envText)...)
	logPath := filepath.Join(t.TempDir(), "berth.log")
	logf, _ := os.Create(logPath)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); logf.Close(); close(done) }()
	t.Cleanup(func() {
		select {
		case <-done:
		default:
			_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
			<-done
		}
		if t.Failed() {
			b, _ := os.ReadFile(logPath)
			t.Logf("berth log tail:\n%s", tail(string(b), 60))
		}
	})
	cs := waitNode(t, "/etc/berth/berth.yaml", done)
	// The release binary is a launcher: it unpacked berth and its helpers
	// into the data dir and runs berth from there.
	for _, f := range []string{"berth", "containerd", "runc"} {
		if _, err := os.Stat(filepath.Join("/var/lib/berth/data/current/bin", f)); err != nil {
			t.Errorf("the launcher's unpacked payload: %v", err)
		}
	}
	ctx := context.Background()
	zero := int64(0)
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "installed", Namespace: "default"},
		Spec: corev1.PodSpec{TerminationGracePeriodSeconds: &zero, Containers: []corev1.Container{{
			Name: "main", Image: "berth.local/busybox:1.36", ImagePullPolicy: corev1.PullNever, Command: []string{"sleep", "3600"},
		}}},
	}
	if _, err := cs.CoreV1().Pods("default").Create(ctx, pod, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := waitFor(2*time.Minute, func() error {
		p, err := cs.CoreV1().Pods("default").Get(ctx, "installed", metav1.GetOptions{})
		if err != nil {
			return err
		}
		if p.Status.Phase != corev1.PodRunning {
			return fmt.Errorf("pod phase %s", p.Status.Phase)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	node, _ := cs.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
	if len(node.Items) != 1 || node.Items[0].Labels["berth.test/label"] != "quoted" {
		t.Errorf("node labels from the unit's quoted argument: %+v", node.Items)
	}

	// Uninstall with the node running: killall stops it and its pods.
	code2, out2 := run(t, filepath.Join(l.bin, "berth-uninstall.sh"))
	if code2 != 0 {
		t.Errorf("berth-uninstall.sh: exit %d\n%s", code2, out2)
	}
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		t.Error("berth still runs 30 s after berth-uninstall.sh")
	}
	assertHostClean(t, l, pins)
}

// TestInstallAirGapped: no HTTP server at all; the binary is copied by
// hand. Also an agent install's unit and env file.
func TestInstallAirGapped(t *testing.T) {
	requireCleanHost(t)
	pins, _ := filepath.Glob("/run/netns/cni-*")
	l := newLayout(t)
	uninstallAtCleanup(t, l)
	if err := os.MkdirAll(l.bin, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := testutil.CopyFile(rel.berth, filepath.Join(l.bin, "berth")); err != nil {
		t.Fatal(err)
	}
	os.Chmod(filepath.Join(l.bin, "berth"), 0o755)
	code, out := installer(t, l.env("INSTALL_BERTH_SKIP_DOWNLOAD=true", "INSTALL_BERTH_ARTIFACT_URL=http://127.0.0.1:1/nothing-here",
		"BERTH_URL=https://10.0.0.1:6443", "BERTH_TOKEN=K10abc::server:def"))
	if code != 0 {
		t.Fatalf("air-gapped agent install: exit %d\n%s", code, out)
	}
	unit := filepath.Join(l.systemd, "berth-agent.service")
	unitText := read(t, unit)
	if args := execStart(t, unitText); len(args) < 2 || args[0] != filepath.Join(l.bin, "berth") || args[1] != "agent" {
		t.Errorf("agent ExecStart %q, want the copied berth with agent", args)
	}
	if out, err := exec.Command("systemd-analyze", "verify", unit).CombinedOutput(); err != nil || strings.TrimSpace(string(out)) != "" {
		t.Errorf("systemd-analyze verify %s: %v\n%s", unit, err, out)
	}
	envText := read(t, unit+".env")
	for _, want := range []string{`BERTH_URL="https://10.0.0.1:6443"`, `BERTH_TOKEN="K10abc::server:def"`} {
		if !strings.Contains(envText, want) {
			t.Errorf("env file lacks %s:\n%s", want, envText)
		}
	}
	code, out = run(t, filepath.Join(l.bin, "berth-agent-uninstall.sh"))
	if code != 0 {
		t.Errorf("uninstall: exit %d\n%s", code, out)
	}
	assertHostClean(t, l, pins)
}

// assertHostClean checks, rather than assumes, that nothing of berth is
// left: files, processes, mounts, interfaces, iptables chains.
func assertHostClean(t *testing.T, l layout, pinsBefore []string) {
	t.Helper()
	for _, p := range hostPaths {
		if _, err := os.Lstat(p); err == nil {
			t.Errorf("%s left behind", p)
		}
	}
	for _, d := range []string{l.bin, l.systemd} {
		ents, _ := os.ReadDir(d)
		for _, e := range ents {
			t.Errorf("%s left in %s", e.Name(), d)
		}
	}
	// Processes running an installed binary or a helper unpacked from it,
	// and shims of berth's containerd.
	pids, _ := filepath.Glob("/proc/[0-9]*")
	for _, p := range pids {
		exe, _ := os.Readlink(p + "/exe")
		cmdline, _ := os.ReadFile(p + "/cmdline")
		if strings.HasPrefix(exe, l.bin+"/") || strings.HasPrefix(exe, "/var/lib/berth/") || strings.Contains(string(cmdline), "/run/berth/containerd") {
			t.Errorf("process left: %s %s", p, strings.ReplaceAll(string(cmdline), "\x00", " "))
		}
	}
	mounts := read(t, "/proc/self/mounts")
	for _, line := range strings.Split(mounts, "\n") {
		f := strings.Fields(line)
		if len(f) > 1 && (strings.Contains(f[1], "/berth") || strings.HasPrefix(f[1], "/var/lib/kubelet") || strings.HasPrefix(f[1], "/run/netns/cni-")) {
			t.Errorf("mount left: %s", line)
		}
	}
	if pins, _ := filepath.Glob("/run/netns/cni-*"); len(pins) > len(pinsBefore) {
		t.Errorf("pod netns pins left: %v (before the test: %v)", pins, pinsBefore)
	}
	for _, link := range []string{"cni0", "flannel.1"} {
		if _, err := os.Stat("/sys/class/net/" + link); err == nil {
			t.Errorf("interface %s left", link)
		}
	}
	for _, tool := range []string{"iptables-save", "ip6tables-save"} {
		out, _ := exec.Command(tool).Output()
		for _, line := range strings.Split(string(out), "\n") {
			if regexp.MustCompile(`^:(KUBE-|CNI-|FLANNEL-)`).MatchString(line) {
				t.Errorf("%s: chain left: %s", tool, line)
			}
		}
	}
}

// execStart returns the unit's ExecStart arguments, unquoted as systemd does
// for the forms install.sh writes ("…" with \" \\ $$ %%).
func execStart(t *testing.T, unit string) []string {
	t.Helper()
	i := strings.Index(unit, "ExecStart=")
	if i < 0 {
		t.Fatalf("no ExecStart in unit:\n%s", unit)
	}
	var text strings.Builder
	sc := bufio.NewScanner(strings.NewReader(unit[i+len("ExecStart="):]))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if strings.HasSuffix(line, `\`) {
			text.WriteString(strings.TrimSuffix(line, `\`) + " ")
			continue
		}
		text.WriteString(line)
		break
	}
	var args []string
	re := regexp.MustCompile(`"((?:[^"\\]|\\.)*)"|(\S+)`)
	for _, m := range re.FindAllStringSubmatch(text.String(), -1) {
		a := m[2]
		if m[2] == "" {
			a = regexp.MustCompile(`\\(.)`).ReplaceAllString(m[1], "$1")
		}
		args = append(args, strings.NewReplacer("$$", "$", "%%", "%").Replace(a))
	}
	return args
}

// parseEnvFile reads KEY="value" lines (\" \\ \$ \` escapes).
func parseEnvFile(t *testing.T, text string) []string {
	var env []string
	for _, line := range strings.Split(strings.TrimSpace(text), "\n") {
		k, v, ok := strings.Cut(line, "=")
		if !ok || len(v) < 2 || v[0] != '"' || v[len(v)-1] != '"' {
			t.Fatalf("env file line %q is not KEY=\"value\"", line)
		}
		env = append(env, k+"="+regexp.MustCompile(`\\(.)`).ReplaceAllString(v[1:len(v)-1], "$1"))
	}
	return env
}

func waitNode(t *testing.T, kubeconfig string, done <-chan struct{}) kubernetes.Interface {
	t.Helper()
	var cs kubernetes.Interface
	err := waitFor(3*time.Minute, func() error {
		select {
		case <-done:
			t.Fatal("berth exited before its node was Ready")
		default:
		}
		cfg, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
		if err != nil {
			return err
		}
		c, err := kubernetes.NewForConfig(cfg)
		if err != nil {
			return err
		}
		nodes, err := c.CoreV1().Nodes().List(context.Background(), metav1.ListOptions{})
		if err != nil {
			return err
		}
		for _, n := range nodes.Items {
			for _, cond := range n.Status.Conditions {
				if cond.Type == corev1.NodeReady && cond.Status == corev1.ConditionTrue {
					cs = c
					return nil
				}
			}
		}
		return fmt.Errorf("no Ready node yet")
	})
	if err != nil {
		t.Fatalf("node from the installed unit: %v", err)
	}
	return cs
}

func waitFor(timeout time.Duration, f func() error) error {
	var err error
	for deadline := time.Now().Add(timeout); time.Now().Before(deadline); time.Sleep(time.Second) {
		if err = f(); err == nil {
			return nil
		}
	}
	return fmt.Errorf("%w (after %s)", err, timeout)
}

func run(t *testing.T, script string) (int, string) {
	t.Helper()
	cmd := exec.Command("sh", script)
	cmd.Env = testutil.CleanEnv()
	out, err := cmd.CombinedOutput()
	if ee, ok := err.(*exec.ExitError); ok {
		return ee.ExitCode(), string(out)
	} else if err != nil {
		t.Fatal(err)
	}
	return 0, string(out)
}

func mode(t *testing.T, path string, want os.FileMode) {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Errorf("%s: %v", path, err)
		return
	}
	if fi.Mode().Perm() != want {
		t.Errorf("%s mode %o, want %o", path, fi.Mode().Perm(), want)
	}
}

func read(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// hostIP is the address berth will pick (the default route's source), so
// NO_PROXY keeps the node's own traffic off the (unreachable) proxy.
func hostIP(t *testing.T) string {
	out, err := exec.Command("ip", "-4", "route", "get", "1.1.1.1").Output()
	if err != nil {
		t.Fatalf("ip route get: %v", err)
	}
	f := strings.Fields(string(out))
	for i := range f {
		if f[i] == "src" && i+1 < len(f) {
			return f[i+1]
		}
	}
	t.Fatalf("no source address in %q", out)
	return ""
}
