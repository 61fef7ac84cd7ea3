package containerd

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"github.com/containerd/containerd/v2/client"
	"k8s.io/klog/v2"

	"github.com/berth-io/berth/pkg/atomicfile"
	"github.com/berth-io/berth/pkg/memory"
)

// maxLogSize is when containerd.log is rotated (to .1) at start.
const maxLogSize = 50 << 20

// Containerd is the containerd child-process component. It restarts
// containerd when it dies, and kills it with berth (parent-death signal);
// the shims, and so the pods, outlive both.
type Containerd struct {
	Config *Config

	mu       sync.Mutex
	cmd      *exec.Cmd
	exited   chan struct{}
	stopping bool
	stopCh   chan struct{} // closed by Stop: ends a restart back-off
	done     chan struct{}
}

func (c *Containerd) Name() string { return "containerd" }

// Prepare writes the configuration and creates containerd's directories.
func (c *Containerd) Prepare(context.Context) error {
	cfg := c.Config
	for _, d := range []string{cfg.Root(), cfg.StateDir, cfg.EtcDir(), cfg.CertsDir(), cfg.CNIConfDir} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return fmt.Errorf("create %s: %w", d, err)
		}
	}
	if cfg.RestrictOOMScoreAdj {
		klog.Warning("this process cannot lower oom_score_adj (no CAP_SYS_RESOURCE): containerd restricts container oom_score_adj (restrict_oom_score_adj = true)")
	}
	text, err := Render(cfg)
	if err != nil {
		return err
	}
	return atomicfile.Write(cfg.ConfigPath(), text, 0o600)
}

func (c *Containerd) Start(context.Context) error {
	c.done = make(chan struct{})
	c.stopCh = make(chan struct{})
	if err := c.spawn(); err != nil {
		return err
	}
	go c.supervise()
	return nil
}

func (c *Containerd) spawn() error {
	cfg := c.Config
	if err := rotate(cfg.LogPath()); err != nil {
		klog.Warningf("rotate %s: %v", cfg.LogPath(), err)
	}
	logf, err := os.OpenFile(cfg.LogPath(), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("open containerd log: %w", err)
	}
	cmd := exec.Command(filepath.Join(cfg.BinDir, "containerd"), "--config", cfg.ConfigPath())
	cmd.Stdout, cmd.Stderr = logf, logf
	// The shim and runc are found on PATH; the bundled ones come first.
	cmd.Env = append(os.Environ(), "PATH="+cfg.BinDir+":"+os.Getenv("PATH"))
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return fmt.Errorf("start %s: %w", cmd.Path, err)
	}
	exited := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		logf.Close()
		close(exited)
	}()
	c.mu.Lock()
	c.cmd, c.exited = cmd, exited
	c.mu.Unlock()
	klog.Infof("started containerd (pid %d), log %s", cmd.Process.Pid, cfg.LogPath())
	// Once containerd's start-up (plugins, CRI, image import) is over, hand
	// the pages of its binary that it no longer uses back to the kernel.
	pid := cmd.Process.Pid
	time.AfterFunc(30*time.Second, func() {
		select {
		case <-exited:
			return
		default:
		}
		if _, err := memory.PageOutBinary(pid); err != nil {
			klog.V(2).Infof("containerd memory trim: %v", err)
		}
	})
	return nil
}

// supervise restarts containerd with back-off when it dies on its own.
func (c *Containerd) supervise() {
	defer close(c.done)
	backoff := time.Second
	for {
		c.mu.Lock()
		exited, cmd := c.exited, c.cmd
		c.mu.Unlock()
		<-exited
		c.mu.Lock()
		stopping := c.stopping
		c.mu.Unlock()
		if stopping {
			return
		}
		klog.Errorf("containerd exited (%v); restarting in %s; see %s", cmd.ProcessState, backoff, c.Config.LogPath())
		select {
		case <-c.stopCh:
			return
		case <-time.After(backoff):
		}
		backoff = min(backoff*2, 30*time.Second)
		if err := c.spawn(); err != nil {
			klog.Errorf("restart containerd: %v", err)
		}
	}
}

// Ready waits until containerd serves and its CRI plugin loaded.
func (c *Containerd) Ready(ctx context.Context) error {
	var last error
	for {
		if last = c.probe(ctx); last == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("containerd not ready (%v); see %s: %w", last, c.Config.LogPath(), ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
}

func (c *Containerd) probe(ctx context.Context) error {
	if _, err := os.Stat(c.Config.Socket()); err != nil {
		return err
	}
	cli, err := client.New(c.Config.Socket(), client.WithTimeout(time.Second))
	if err != nil {
		return err
	}
	defer cli.Close()
	if ok, err := cli.IsServing(ctx); err != nil || !ok {
		return fmt.Errorf("not serving: %v", err)
	}
	resp, err := cli.IntrospectionService().Plugins(ctx, `type=="io.containerd.grpc.v1",id=="cri"`)
	if err != nil {
		return err
	}
	for _, p := range resp.Plugins {
		if p.InitErr != nil {
			return fmt.Errorf("CRI plugin failed: %s", p.InitErr.Message)
		}
		return nil
	}
	return errors.New("CRI plugin not loaded")
}

// Stop ends containerd (SIGTERM, then SIGKILL). Pods keep running: their
// shims are not containerd's children.
func (c *Containerd) Stop(ctx context.Context) error {
	c.mu.Lock()
	if !c.stopping && c.stopCh != nil {
		close(c.stopCh)
	}
	c.stopping = true
	cmd, exited := c.cmd, c.exited
	c.mu.Unlock()
	if cmd == nil {
		return nil
	}
	_ = cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-exited:
	case <-ctx.Done():
		_ = cmd.Process.Kill()
		<-exited
	}
	if c.done != nil {
		<-c.done
	}
	return nil
}

func rotate(path string) error {
	fi, err := os.Stat(path)
	if err != nil || fi.Size() < maxLogSize {
		return nil
	}
	return os.Rename(path, path+".1")
}
