// Package integration starts the real berth binary (built once, by the
// Makefile or by TestMain) against real SQLite in temporary data dirs.
package integration

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
)

// berthBin is the binary under test.
var berthBin string

func TestMain(m *testing.M) {
	berthBin = os.Getenv("BERTH_BIN")
	if berthBin == "" {
		// Build once for the whole package, never per test.
		root, err := filepath.Abs("../..")
		if err == nil {
			cmd := exec.Command("make", "-C", root, "build")
			cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
			err = cmd.Run()
		}
		if err != nil {
			fmt.Fprintf(os.Stderr, "build berth: %v\n", err)
			os.Exit(1)
		}
		berthBin = filepath.Join(root, "bin", "berth")
	}
	os.Exit(m.Run())
}

// freePort returns a TCP port nothing listens on right now.
func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// syncBuffer collects a process's output safely while it runs.
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

// server is one berth server process on free ports.
type server struct {
	t          *testing.T
	dataDir    string
	kubeconfig string
	httpsPort  int
	apiPort    int
	extra      []string
	// configYAML is written to the server's own config file, so tests never
	// read /etc/berth/config.yaml.
	configYAML string
	// env is added to the server's environment (BERTH_* variables).
	env []string
	// hostname, if set, runs the server in its own UTS namespace with this
	// host name: servers sharing a datastore must differ in it, as on real
	// hosts (each apiserver keeps an identity Lease named after its host).
	hostname string

	cmd     *exec.Cmd
	out     *syncBuffer
	done    chan struct{}
	exitErr error
}

func newServer(t *testing.T, extra ...string) *server {
	dir := t.TempDir()
	return &server{
		t:          t,
		dataDir:    filepath.Join(dir, "data"),
		kubeconfig: filepath.Join(dir, "admin.yaml"),
		httpsPort:  freePort(t),
		apiPort:    freePort(t),
		extra:      extra,
	}
}

// args are the flags every test server gets: its own data dir and ports,
// so tests never touch /var/lib/berth, /etc/berth or the default ports.
func (s *server) args() []string {
	return append([]string{
		"server", "--disable-agent",
		"--config", s.configPath(),
		"--data-dir", s.dataDir,
		"--write-kubeconfig", s.kubeconfig,
		"--https-listen-port", strconv.Itoa(s.httpsPort),
		"--apiserver-port", strconv.Itoa(s.apiPort),
		"--kube-scheduler-arg", "secure-port=" + strconv.Itoa(freePort(s.t)),
		"--kube-controller-manager-arg", "secure-port=" + strconv.Itoa(freePort(s.t)),
	}, s.extra...)
}

func (s *server) configPath() string { return filepath.Join(filepath.Dir(s.dataDir), "config.yaml") }

// start launches the server; it is killed at test cleanup if still running.
func (s *server) start() {
	s.t.Helper()
	if err := os.WriteFile(s.configPath(), []byte(s.configYAML), 0o600); err != nil {
		s.t.Fatal(err)
	}
	s.startArgs(s.args()...)
}

// startArgs launches berth with args, killed at test cleanup if still running.
func (s *server) startArgs(args ...string) {
	s.t.Helper()
	s.cmd = exec.Command(berthBin, args...)
	if s.hostname != "" {
		// unshare and sh exec: berth keeps the pid.
		s.cmd = exec.Command("unshare", append([]string{"--uts", "--", "sh", "-c", `hostname "$0" && exec "$@"`, s.hostname, berthBin}, args...)...)
	}
	s.out = &syncBuffer{}
	s.cmd.Stdout, s.cmd.Stderr = s.out, s.out
	s.cmd.Env = append(cleanEnv(), s.env...)
	// Own process group, and killed if the test binary dies.
	s.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := s.cmd.Start(); err != nil {
		s.t.Fatalf("start berth: %v", err)
	}
	s.done = make(chan struct{})
	go func() {
		s.exitErr = s.cmd.Wait()
		close(s.done)
	}()
	s.t.Cleanup(func() {
		select {
		case <-s.done:
		default:
			_ = syscall.Kill(-s.cmd.Process.Pid, syscall.SIGKILL)
			<-s.done
		}
		if s.t.Failed() {
			s.t.Logf("berth output (last 60 lines):\n%s", tail(s.out.String(), 60))
			// The whole output, for a failure the tail does not explain.
			if dir := os.Getenv("BERTH_TEST_LOGDIR"); dir != "" {
				f, err := os.CreateTemp(dir, strings.ReplaceAll(s.t.Name(), "/", "_")+"-*.log")
				if err == nil {
					_, _ = f.WriteString(s.out.String())
					f.Close()
					s.t.Logf("berth output: %s", f.Name())
				}
			}
		}
	})
}

// waitReady waits until the admin kubeconfig exists and /readyz answers ok
// through the public port.
func (s *server) waitReady(timeout time.Duration) kubernetes.Interface {
	s.t.Helper()
	deadline := time.Now().Add(timeout)
	var last error
	for time.Now().Before(deadline) {
		select {
		case <-s.done:
			s.t.Fatalf("berth exited before ready: %v\n%s", s.exitErr, tail(s.out.String(), 40))
		default:
		}
		if _, err := os.Stat(s.kubeconfig); err == nil {
			cs, err := s.client()
			if err != nil {
				s.t.Fatal(err)
			}
			body, err := cs.Discovery().RESTClient().Get().AbsPath("/readyz").DoRaw(context.Background())
			if err == nil && string(body) == "ok" {
				return cs
			}
			last = fmt.Errorf("readyz: %v %s", err, body)
		}
		time.Sleep(100 * time.Millisecond)
	}
	s.t.Fatalf("berth not ready within %s: %v", timeout, last)
	return nil
}

func (s *server) client() (kubernetes.Interface, error) {
	cfg, err := clientcmd.BuildConfigFromFlags("", s.kubeconfig)
	if err != nil {
		return nil, err
	}
	return kubernetes.NewForConfig(cfg)
}

// stop sends SIGTERM and waits up to timeout for the exit.
func (s *server) stop(timeout time.Duration) (exitCode int, took time.Duration) {
	s.t.Helper()
	t0 := time.Now()
	if err := s.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		s.t.Fatalf("signal: %v", err)
	}
	select {
	case <-s.done:
	case <-time.After(timeout):
		s.t.Fatalf("berth did not exit within %s of SIGTERM", timeout)
	}
	return s.cmd.ProcessState.ExitCode(), time.Since(t0)
}

// runBerth runs berth to completion (bounded by timeout) and returns its
// exit code and combined output.
func runBerth(t *testing.T, timeout time.Duration, args ...string) (int, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, berthBin, args...)
	cmd.Env = cleanEnv()
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	out, err := cmd.CombinedOutput()
	if ctx.Err() != nil {
		t.Fatalf("berth %s did not finish within %s:\n%s", strings.Join(args, " "), timeout, tail(string(out), 40))
	}
	if err != nil && cmd.ProcessState == nil {
		t.Fatalf("run berth: %v", err)
	}
	return cmd.ProcessState.ExitCode(), string(out)
}

// cleanEnv drops BERTH_* variables so the developer's environment cannot
// change what a test exercises.
func cleanEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "BERTH_") && !strings.HasPrefix(kv, "KUBECONFIG=") {
			env = append(env, kv)
		}
	}
	return env
}

func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
