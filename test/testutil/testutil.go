// Package testutil holds the small helpers the end-to-end test packages
// share (test/e2e, test/e2e/multinode). It is test support only: nothing in
// berth imports it.
package testutil

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"time"
)

// CleanEnv is the environment without BERTH_*, KUBECONFIG and CONTAINERD_*
// variables, so the developer's environment cannot change what a test
// exercises.
func CleanEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "BERTH_") && !strings.HasPrefix(kv, "KUBECONFIG=") && !strings.HasPrefix(kv, "CONTAINERD_") {
			env = append(env, kv)
		}
	}
	return env
}

// CopyFile copies src to dst.
func CopyFile(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.Create(dst)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

// SplitRule splits an iptables-save rule into arguments, keeping quoted
// strings (comments) together, so the rule can be deleted with -D.
func SplitRule(s string) []string {
	var args []string
	var cur strings.Builder
	inQuote, have := false, false
	for i := 0; i < len(s); i++ {
		ch := s[i]
		switch {
		case ch == '\\' && inQuote && i+1 < len(s):
			i++
			cur.WriteByte(s[i])
		case ch == '"':
			inQuote, have = !inQuote, true
		case ch == ' ' && !inQuote:
			if have {
				args = append(args, cur.String())
				cur.Reset()
				have = false
			}
		default:
			cur.WriteByte(ch)
			have = true
		}
	}
	if have {
		args = append(args, cur.String())
	}
	return args
}

// Guard runs a test binary's host cleanup exactly once: when the tests
// return, on SIGINT/SIGTERM/SIGHUP (then the binary exits 2), and 90 s
// before the binary's own -timeout, which panics in a timer goroutine and
// skips every defer (then it exits 3).
type Guard struct {
	once    sync.Once
	ok      bool
	cleanup func() bool
	logf    func(string, ...any)
	timer   *time.Timer
}

// NewGuard arms the guard; cleanup reports whether the host is clean.
func NewGuard(logf func(string, ...any), cleanup func() bool) *Guard {
	g := &Guard{cleanup: cleanup, logf: logf}
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP)
	go func() {
		s := <-sigs
		logf("got %v, cleaning up", s)
		g.Finish()
		os.Exit(2)
	}()
	if f := flag.Lookup("test.timeout"); f != nil {
		if d, err := time.ParseDuration(f.Value.String()); err == nil && d > 2*time.Minute {
			g.timer = time.AfterFunc(d-90*time.Second, func() {
				logf("test timeout is near, cleaning up")
				g.Finish()
				os.Exit(3)
			})
		}
	}
	return g
}

// Finish runs the cleanup once and returns whether the host is clean.
func (g *Guard) Finish() bool {
	g.once.Do(func() { g.ok = g.cleanup() })
	return g.ok
}

// Done is deferred by the function running the tests: it cleans up (also
// on a panic, which it re-raises) and turns a passing run that left the
// host dirty into a failure.
func (g *Guard) Done(code *int) {
	if g.timer != nil {
		g.timer.Stop()
	}
	if r := recover(); r != nil {
		g.Finish()
		panic(r)
	}
	if !g.Finish() && *code == 0 {
		*code = 1
	}
}

// ErrKilled: the process ignored SIGTERM for the whole timeout.
var ErrKilled = errors.New("did not exit after SIGTERM; killed")

// StopProcess sends SIGTERM to cmd (started in its own process group;
// done is closed when it was waited for) and returns its exit code; after
// timeout it kills the group and returns ErrKilled.
func StopProcess(cmd *exec.Cmd, done <-chan struct{}, timeout time.Duration) (int, error) {
	select {
	case <-done:
		return cmd.ProcessState.ExitCode(), nil
	default:
	}
	_ = cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-done:
		return cmd.ProcessState.ExitCode(), nil
	case <-time.After(timeout):
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		<-done
		return -1, fmt.Errorf("%w within %s", ErrKilled, timeout)
	}
}

// Artifacts are what the end-to-end tests run: the berth binaries and the
// image tarballs `make images` wrote.
type Artifacts struct {
	Berth, BerthAgent, Images string
	// Airgap is the add-ons' image bundle (`make airgap`).
	Airgap string
}

// Build returns the artifacts named by BERTH_BIN, BERTH_AGENT_BIN,
// BERTH_IMAGES and BERTH_AIRGAP (the Makefile sets them, having built once),
// or runs `make build images airgap` in root and uses its outputs.
func Build(root string) (Artifacts, error) {
	a := Artifacts{Berth: os.Getenv("BERTH_BIN"), BerthAgent: os.Getenv("BERTH_AGENT_BIN"),
		Images: os.Getenv("BERTH_IMAGES"), Airgap: os.Getenv("BERTH_AIRGAP")}
	if a.Berth == "" {
		cmd := exec.Command("make", "-C", root, "build", "images", "airgap")
		cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
		if err := cmd.Run(); err != nil {
			return a, fmt.Errorf("build berth and images: %w", err)
		}
		a.Berth = filepath.Join(root, "bin", "berth")
	}
	if abs, err := filepath.Abs(a.Berth); err == nil {
		a.Berth = abs
	}
	if a.BerthAgent == "" {
		a.BerthAgent = filepath.Join(filepath.Dir(a.Berth), "berth-agent")
	}
	if a.Images == "" {
		a.Images = filepath.Join(root, "dist", "images")
	}
	if a.Airgap == "" {
		a.Airgap = filepath.Join(root, "dist", "artifacts", "berth-airgap-images-"+runtime.GOARCH+".tar.zst")
	}
	return a, nil
}
