// Package leader runs components that must run once per cluster (the
// deploy controller, the NodeHosts controller) on one server at a time when
// several servers share a datastore: client-go leader election on a Lease,
// as the scheduler and controller-manager do. The leader starts them; a
// server that loses the lease stops them and campaigns again.
package leader

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/leaderelection"
	"k8s.io/client-go/tools/leaderelection/resourcelock"
	"k8s.io/klog/v2"

	"github.com/berth-io/berth/pkg/component"
)

// Timings of the upstream components' defaults.
const (
	LeaseDuration = 15 * time.Second
	RenewDeadline = 10 * time.Second
	RetryPeriod   = 2 * time.Second
)

// Elected is a component that runs the components New makes while this
// server holds the Lease kube-system/<Lease>.
type Elected struct {
	// Lease names the Lease object in kube-system.
	Lease string
	// Identity is this server's name in the Lease (unique per server).
	Identity string
	Client   func() (kubernetes.Interface, error)
	// New makes fresh components each time leadership is won.
	New func() []component.Component

	cancel context.CancelFunc
	done   chan struct{}
}

func (e *Elected) Name() string { return "leader-" + e.Lease }

func (e *Elected) Prepare(ctx context.Context) error {
	// The components' own input checks still fail the start.
	for _, c := range e.New() {
		if err := c.Prepare(ctx); err != nil {
			return fmt.Errorf("%s: %w", c.Name(), err)
		}
	}
	return nil
}

func (e *Elected) Start(context.Context) error {
	cs, err := e.Client()
	if err != nil {
		return err
	}
	lock := &resourcelock.LeaseLock{
		LeaseMeta:  metav1.ObjectMeta{Namespace: metav1.NamespaceSystem, Name: e.Lease},
		Client:     cs.CoordinationV1(),
		LockConfig: resourcelock.ResourceLockConfig{Identity: e.Identity},
	}
	ctx, cancel := context.WithCancel(context.Background())
	e.cancel, e.done = cancel, make(chan struct{})
	go func() {
		defer close(e.done)
		// RunOrDie returns when leadership is lost: campaign again.
		for ctx.Err() == nil {
			term, endTerm := context.WithCancel(ctx)
			leaderelection.RunOrDie(term, leaderelection.LeaderElectionConfig{
				Lock:            lock,
				LeaseDuration:   LeaseDuration,
				RenewDeadline:   RenewDeadline,
				RetryPeriod:     RetryPeriod,
				ReleaseOnCancel: true,
				Name:            e.Lease,
				Callbacks: leaderelection.LeaderCallbacks{
					// A term ends when its components end, failed ones
					// included: the lease is released for another server
					// (or this one, after RetryPeriod) instead of held
					// with nothing running.
					OnStartedLeading: func(lctx context.Context) {
						e.lead(lctx)
						endTerm()
					},
					OnStoppedLeading: func() {},
					OnNewLeader: func(id string) {
						if id != e.Identity {
							klog.Infof("%s: %s leads; this server waits", e.Lease, id)
						}
					},
				},
			})
			endTerm()
			select {
			case <-ctx.Done():
			case <-time.After(RetryPeriod):
			}
		}
	}()
	return nil
}

// lead runs the components until ctx ends (leadership lost or berth
// stopping), then stops them.
func (e *Elected) lead(ctx context.Context) {
	klog.Infof("%s: this server (%s) leads: starting %s", e.Lease, e.Identity, names(e.New()))
	m := component.NewManager()
	m.Add(e.New()...)
	if err := m.Start(ctx); err != nil {
		if ctx.Err() == nil {
			klog.Errorf("%s: %v", e.Lease, err)
		}
		return
	}
	select {
	case <-ctx.Done():
	case err := <-m.Failed():
		klog.Errorf("%s: %v", e.Lease, err)
	}
	if err := m.Stop(5 * time.Second); err != nil {
		klog.Warningf("%s: %v", e.Lease, err)
	}
	klog.Infof("%s: no longer leading", e.Lease)
}

func names(cs []component.Component) string {
	s := ""
	for i, c := range cs {
		if i > 0 {
			s += ", "
		}
		s += c.Name()
	}
	return s
}

// Ready does not wait for leadership: another server may hold it.
func (e *Elected) Ready(context.Context) error { return nil }

func (e *Elected) Stop(ctx context.Context) error {
	if e.cancel == nil {
		return nil
	}
	e.cancel()
	select {
	case <-e.done:
		return nil
	case <-ctx.Done():
		return errors.New("leader election did not stop")
	}
}

// Identity returns a per-process identity: the node name plus the host
// name and pid, so two servers with one node name still differ.
func Identity(node string) string {
	h, _ := os.Hostname()
	return fmt.Sprintf("%s_%s_%d", node, h, os.Getpid())
}
