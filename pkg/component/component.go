// Package component gives every embedded piece of berth the same small
// lifecycle (Prepare, Start, Ready, Stop) and one Manager that runs a role's
// components in dependency order and stops them in reverse.
package component

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"k8s.io/klog/v2"

	"github.com/berth-io/berth/pkg/sdnotify"
)

// Component is one embedded part of berth (datastore, apiserver, kubelet, …).
type Component interface {
	// Name identifies the component in logs and errors.
	Name() string
	// Prepare does the work that must succeed before anything starts
	// (validating input, writing config files). It must not block.
	Prepare(ctx context.Context) error
	// Start launches the component and returns; long-running work goes to
	// goroutines that end when ctx is cancelled or Stop is called.
	Start(ctx context.Context) error
	// Ready blocks until the component serves, or ctx ends.
	Ready(ctx context.Context) error
	// Stop ends the component and waits for it, within ctx.
	Stop(ctx context.Context) error
}

// Failer is implemented by components whose work can end on its own after
// Start: a value on the channel (nil or not) means the component has died.
type Failer interface {
	Failed() <-chan error
}

// Manager owns a role's components.
type Manager struct {
	components []Component
	started    []Component
	// ReadyTimeout bounds each component's Ready wait.
	ReadyTimeout time.Duration
	// Notify is told READY=1 when Serve begins and STOPPING=1 when it ends
	// (sdnotify.Take, before any component starts).
	Notify sdnotify.Socket

	mu     sync.Mutex
	failed chan error
}

// NewManager returns an empty manager.
func NewManager() *Manager {
	return &Manager{ReadyTimeout: 5 * time.Minute, failed: make(chan error, 1)}
}

// Add appends c; components start in the order they are added.
func (m *Manager) Add(c ...Component) { m.components = append(m.components, c...) }

// Components returns the managed components in start order.
func (m *Manager) Components() []Component { return append([]Component(nil), m.components...) }

// Start prepares every component, then starts each in order and waits for
// it to be ready before starting the next. On error the components already
// started are stopped again, in reverse.
func (m *Manager) Start(ctx context.Context) error {
	for _, c := range m.components {
		if err := c.Prepare(ctx); err != nil {
			return fmt.Errorf("prepare %s: %w", c.Name(), err)
		}
	}
	for _, c := range m.components {
		t0 := time.Now()
		if err := c.Start(ctx); err != nil {
			m.stopStarted()
			return fmt.Errorf("start %s: %w", c.Name(), err)
		}
		m.started = append(m.started, c)
		m.watch(c)
		if err := m.ready(ctx, c); err != nil {
			m.stopStarted()
			return err
		}
		klog.V(1).Infof("component %s ready in %s", c.Name(), time.Since(t0).Round(time.Millisecond))
	}
	return nil
}

// ready waits for c, but gives up early when a started component dies, so a
// broken dependency is reported instead of a timeout.
func (m *Manager) ready(ctx context.Context, c Component) error {
	rctx, cancel := context.WithTimeout(ctx, m.ReadyTimeout)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- c.Ready(rctx) }()
	select {
	case err := <-done:
		if err != nil {
			return fmt.Errorf("wait for %s: %w", c.Name(), err)
		}
		return nil
	case err := <-m.failed:
		cancel()
		<-done
		return err
	}
}

func (m *Manager) watch(c Component) {
	f, ok := c.(Failer)
	if !ok {
		return
	}
	go func() {
		err := <-f.Failed()
		if err == nil {
			err = errors.New("exited")
		}
		select {
		case m.failed <- fmt.Errorf("component %s failed: %w", c.Name(), err):
		default: // the first failure is the one reported
		}
	}()
}

// Failed delivers the first runtime failure of any started component.
func (m *Manager) Failed() <-chan error { return m.failed }

// Stop stops the started components in reverse order, each within timeout,
// and joins their errors.
func (m *Manager) Stop(timeout time.Duration) error {
	var errs []error
	for i := len(m.started) - 1; i >= 0; i-- {
		c := m.started[i]
		ctx, cancel := context.WithTimeout(context.Background(), timeout)
		t0 := time.Now()
		if err := c.Stop(ctx); err != nil {
			errs = append(errs, fmt.Errorf("stop %s: %w", c.Name(), err))
		}
		cancel()
		klog.V(1).Infof("component %s stopped in %s", c.Name(), time.Since(t0).Round(time.Millisecond))
	}
	m.started = nil
	return errors.Join(errs...)
}

// Serve waits until ctx ends (a clean stop: nil) or a component fails (its
// error), then stops every component. A component that does not stop
// within stopTimeout is abandoned: the process is about to exit.
func (m *Manager) Serve(ctx context.Context, what string, stopTimeout time.Duration) error {
	// Under systemd (Type=notify) the unit becomes active only now, so
	// `systemctl start` returns when the node really runs.
	if err := m.Notify.Send("READY=1"); err != nil {
		klog.Warning(err)
	}
	var runErr error
	select {
	case <-ctx.Done():
		klog.Infof("stopping %s", what)
	case runErr = <-m.Failed():
		klog.Errorf("%v; stopping %s", runErr, what)
	}
	_ = m.Notify.Send("STOPPING=1")
	if err := m.Stop(stopTimeout); err != nil {
		klog.Warningf("while stopping: %v", err)
	}
	return runErr
}

func (m *Manager) stopStarted() {
	if err := m.Stop(30 * time.Second); err != nil {
		klog.Errorf("stopping after a failed start: %v", err)
	}
}

// Runner adapts a blocking run function (an upstream component's Run) to the
// Component lifecycle: Start runs it in a goroutine under a cancellable
// context, Stop cancels that context and waits for the function to return.
type Runner struct {
	name string
	run  func(ctx context.Context) error

	cancel context.CancelFunc
	done   chan struct{}
	err    error
	failed chan error
	// stopping is closed by Stop, so an exit caused by Stop is not a failure.
	stopping chan struct{}
}

// NewRunner makes a Runner named name around run.
func NewRunner(name string, run func(ctx context.Context) error) *Runner {
	return &Runner{name: name, run: run, failed: make(chan error, 1), stopping: make(chan struct{})}
}

func (r *Runner) Name() string { return r.name }

func (r *Runner) Prepare(context.Context) error { return nil }

func (r *Runner) Start(context.Context) error {
	// The run context is detached from the start context on purpose: the
	// component lives until Stop, not until start-up ends.
	ctx, cancel := context.WithCancel(context.Background())
	r.cancel = cancel
	r.done = make(chan struct{})
	go func() {
		defer close(r.done)
		r.err = r.run(ctx)
		select {
		case <-r.stopping:
		default:
			err := r.err
			if err == nil {
				err = errors.New("exited unexpectedly")
			}
			r.failed <- err
		}
	}()
	return nil
}

func (r *Runner) Ready(context.Context) error { return nil }

func (r *Runner) Failed() <-chan error { return r.failed }

// Done is closed when the run function has returned.
func (r *Runner) Done() <-chan struct{} { return r.done }

func (r *Runner) Stop(ctx context.Context) error {
	if r.cancel == nil {
		return nil
	}
	close(r.stopping)
	r.cancel()
	select {
	case <-r.done:
		// Upstream Run functions return odd errors once cancelled (the
		// scheduler: "finished without leader elect"); a stop we asked for
		// is a clean stop.
		if r.err != nil && !errors.Is(r.err, context.Canceled) {
			klog.V(2).Infof("%s returned after stop: %v", r.name, r.err)
		}
		return nil
	case <-ctx.Done():
		return fmt.Errorf("did not stop within the timeout: %w", ctx.Err())
	}
}
