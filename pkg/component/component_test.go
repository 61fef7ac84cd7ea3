package component

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"
)

// recorder logs lifecycle calls in order across components.
type recorder struct {
	mu  sync.Mutex
	log []string
}

func (r *recorder) add(s string) {
	r.mu.Lock()
	r.log = append(r.log, s)
	r.mu.Unlock()
}

func (r *recorder) String() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return strings.Join(r.log, " ")
}

type fake struct {
	name              string
	rec               *recorder
	prepareErr, start error
	readyErr          error
	failAfterStart    error
	failed            chan error
}

func (f *fake) Name() string { return f.name }
func (f *fake) Prepare(context.Context) error {
	f.rec.add("prepare:" + f.name)
	return f.prepareErr
}
func (f *fake) Start(context.Context) error {
	f.rec.add("start:" + f.name)
	if f.failAfterStart != nil {
		go func() { f.failed <- f.failAfterStart }()
	}
	return f.start
}
func (f *fake) Ready(ctx context.Context) error {
	if f.readyErr == errBlock {
		<-ctx.Done()
		return ctx.Err()
	}
	f.rec.add("ready:" + f.name)
	return f.readyErr
}
func (f *fake) Stop(context.Context) error { f.rec.add("stop:" + f.name); return nil }
func (f *fake) Failed() <-chan error       { return f.failed }

var errBlock = errors.New("block")

func newFake(name string, rec *recorder) *fake {
	return &fake{name: name, rec: rec, failed: make(chan error, 1)}
}

func TestManagerOrder(t *testing.T) {
	rec := &recorder{}
	m := NewManager()
	m.Add(newFake("a", rec), newFake("b", rec), newFake("c", rec))
	if err := m.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := m.Stop(time.Second); err != nil {
		t.Fatal(err)
	}
	want := "prepare:a prepare:b prepare:c start:a ready:a start:b ready:b start:c ready:c stop:c stop:b stop:a"
	if got := rec.String(); got != want {
		t.Errorf("got  %s\nwant %s", got, want)
	}
}

func TestManagerPrepareErrorStartsNothing(t *testing.T) {
	rec := &recorder{}
	b := newFake("b", rec)
	b.prepareErr = errors.New("bad flag")
	m := NewManager()
	m.Add(newFake("a", rec), b, newFake("c", rec))
	err := m.Start(context.Background())
	if err == nil || !strings.Contains(err.Error(), "prepare b: bad flag") {
		t.Fatalf("error %v does not name the component", err)
	}
	if got := rec.String(); strings.Contains(got, "start:") {
		t.Errorf("something started after a failed prepare: %s", got)
	}
}

func TestManagerReadyErrorStopsStartedInReverse(t *testing.T) {
	rec := &recorder{}
	c := newFake("c", rec)
	c.readyErr = errors.New("no answer")
	m := NewManager()
	m.Add(newFake("a", rec), newFake("b", rec), c)
	err := m.Start(context.Background())
	if err == nil || !strings.Contains(err.Error(), "wait for c: no answer") {
		t.Fatalf("error %v", err)
	}
	if got := rec.String(); !strings.HasSuffix(got, "stop:c stop:b stop:a") {
		t.Errorf("not stopped in reverse: %s", got)
	}
}

func TestManagerFailureWhileWaitingNamesTheComponent(t *testing.T) {
	rec := &recorder{}
	a := newFake("datastore", rec)
	a.failAfterStart = errors.New("disk gone")
	b := newFake("apiserver", rec)
	b.readyErr = errBlock // would wait forever without the failure
	m := NewManager()
	m.Add(a, b)
	err := m.Start(context.Background())
	if err == nil || !strings.Contains(err.Error(), "component datastore failed: disk gone") {
		t.Fatalf("error %v", err)
	}
}

func TestManagerRuntimeFailure(t *testing.T) {
	m := NewManager()
	r := NewRunner("scheduler", func(ctx context.Context) error { return errors.New("lost") })
	m.Add(r)
	if err := m.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-m.Failed():
		if !strings.Contains(err.Error(), "component scheduler failed: lost") {
			t.Errorf("error %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no failure reported")
	}
}

func TestRunnerStopIsNotAFailure(t *testing.T) {
	r := NewRunner("x", func(ctx context.Context) error {
		<-ctx.Done()
		return errors.New("finished without leader elect") // as the scheduler does
	})
	if err := r.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := r.Stop(ctx); err != nil {
		t.Fatalf("stop: %v", err)
	}
	select {
	case err := <-r.Failed():
		t.Fatalf("a requested stop was reported as failure: %v", err)
	default:
	}
}

func TestRunnerStopTimeout(t *testing.T) {
	block := make(chan struct{})
	defer close(block)
	r := NewRunner("stuck", func(context.Context) error { <-block; return nil })
	_ = r.Start(context.Background())
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if err := r.Stop(ctx); err == nil {
		t.Fatal("a component that does not stop must be reported")
	}
}

func TestManagerServe(t *testing.T) {
	// A failing component ends Serve with its error and stops the others.
	m := NewManager()
	stopped := make(chan struct{})
	m.Add(NewRunner("steady", func(ctx context.Context) error { <-ctx.Done(); close(stopped); return nil }),
		NewRunner("flaky", func(context.Context) error { return errors.New("lost") }))
	if err := m.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := m.Serve(context.Background(), "test", 5*time.Second); err == nil || !strings.Contains(err.Error(), "flaky") {
		t.Errorf("Serve returned %v, want the flaky component's failure", err)
	}
	select {
	case <-stopped:
	default:
		t.Error("the steady component was not stopped")
	}

	// A cancelled context is a clean stop.
	m = NewManager()
	m.Add(NewRunner("steady", func(ctx context.Context) error { <-ctx.Done(); return nil }))
	if err := m.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := m.Serve(ctx, "test", 5*time.Second); err != nil {
		t.Errorf("Serve after cancel: %v", err)
	}
}
