package leader

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/berth-io/berth/pkg/component"
)

// failing fails its start, counting the attempts.
type failing struct{ starts *atomic.Int32 }

func (f failing) Name() string                  { return "failing" }
func (f failing) Prepare(context.Context) error { return nil }
func (f failing) Start(context.Context) error   { f.starts.Add(1); return errors.New("boom") }
func (f failing) Ready(context.Context) error   { return nil }
func (f failing) Stop(context.Context) error    { return nil }

// A leader whose components fail gives its term up and campaigns again,
// rather than holding the lease with nothing running.
func TestFailedTermIsGivenUp(t *testing.T) {
	cs := fake.NewSimpleClientset()
	var starts atomic.Int32
	e := &Elected{
		Lease:    "test",
		Identity: "a",
		Client:   func() (kubernetes.Interface, error) { return cs, nil },
		New:      func() []component.Component { return []component.Component{failing{&starts}} },
	}
	if err := e.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	defer func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := e.Stop(ctx); err != nil {
			t.Error(err)
		}
	}()
	// Hang detection only: a second term comes after RetryPeriod.
	for deadline := time.Now().Add(time.Minute); starts.Load() < 2; time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("components started %d time(s); the failed term was not given up", starts.Load())
		}
	}
}
