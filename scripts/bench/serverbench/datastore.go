package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes"

	"github.com/berth-io/berth/test/dbtest"
)

// datastoreBackend is one storage backend the datastore section compares,
// all with the same client and workload in the same run. To add one, append
// it in datastoreBackends: its server flags, and optionally a setup that
// starts what it needs and returns more flags and its cleanup.
type datastoreBackend struct {
	name string
	args []string
	// setup starts what the backend needs (a database) and returns more
	// server flags (its endpoint) and its cleanup.
	setup func(root string) (args []string, cleanup func(), err error)
}

// externalDB is a backend on a real database server from Debian's
// packages (test/dbtest, installed by `make deps`), started on loopback for
// the run and removed after.
func externalDB(name string, start func(password string) (*dbtest.DB, error)) datastoreBackend {
	return datastoreBackend{name: name, setup: func(string) ([]string, func(), error) {
		db, err := start("bench-" + name)
		if err != nil {
			return nil, nil, err
		}
		return []string{"--datastore-endpoint", db.Endpoint("berth")}, db.Stop, nil
	}}
}

func datastoreBackends() []datastoreBackend {
	return []datastoreBackend{
		{name: "sqlite-full", args: []string{"--sqlite-synchronous", "FULL"}},
		{name: "etcd-embedded", args: []string{"--cluster-init",
			"--etcd-client-port", strconv.Itoa(*basePort + 4), "--etcd-peer-port", strconv.Itoa(*basePort + 5),
			"--etcd-disable-snapshots"}},
		externalDB("postgres", dbtest.StartPostgres),
		externalDB("mariadb", dbtest.StartMariaDB),
	}
}

// benchDatastore: ConfigMap create throughput and latency (p50/p99) with 1
// and N writers, and the latency from a create call to the watch event
// (p50/p99), for each backend.
func benchDatastore(root string) error {
	ws := strings.Split(*workers, ",")
	for _, b := range datastoreBackends() {
		if err := benchBackend(root, b, ws); err != nil {
			return fmt.Errorf("%s: %w", b.name, err)
		}
	}
	return nil
}

func benchBackend(root string, b datastoreBackend, ws []string) error {
	args := b.args
	if b.setup != nil {
		extra, cleanup, err := b.setup(root)
		if errors.Is(err, dbtest.ErrMissing) {
			fmt.Printf("datastore %-14s skipped: %v\n", b.name, err)
			return nil
		}
		if err != nil {
			return err
		}
		defer cleanup()
		args = append(append([]string(nil), args...), extra...)
	}
	dir := filepath.Join(root, "datastore-"+b.name)
	os.RemoveAll(dir)
	t0 := time.Now()
	p, err := start(dir, args...)
	if err != nil {
		return err
	}
	defer p.stop()
	if _, err := waitReady(p, t0); err != nil {
		return err
	}
	cs, err := adminClient(dir, 100000)
	if err != nil {
		return err
	}
	for _, w := range ws {
		n, _ := strconv.Atoi(w)
		rate, lat, err := timedCreates(cs, "d"+w, *creates, n)
		if err != nil {
			return err
		}
		fmt.Printf("datastore %-14s %2d writer(s): %6.0f ConfigMap creates/s, latency p50 %6.1f ms, p99 %6.1f ms (%d creates)\n",
			b.name, n, rate, ms(pct(lat, 50)), ms(pct(lat, 99)), *creates)
	}
	lat, err := watchLatency(cs, *watchEvents)
	if err != nil {
		return err
	}
	fmt.Printf("datastore %-14s watch event latency (create call → ADDED event): p50 %6.1f ms, p99 %6.1f ms (%d events)\n",
		b.name, ms(pct(lat, 50)), ms(pct(lat, 99)), len(lat))
	return nil
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

func pct(ds []time.Duration, p int) time.Duration {
	s := append([]time.Duration(nil), ds...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	i := (len(s)*p+99)/100 - 1
	if i < 0 {
		i = 0
	}
	return s[i]
}

// timedCreates is createConfigMaps with every call's latency recorded.
func timedCreates(cs kubernetes.Interface, prefix string, total, workers int) (float64, []time.Duration, error) {
	var next atomic.Int64
	var firstErr atomic.Value
	var mu sync.Mutex
	lat := make([]time.Duration, 0, total)
	var wg sync.WaitGroup
	data := map[string]string{"k": strings.Repeat("x", 512)}
	t0 := time.Now()
	for w := 0; w < workers; w++ {
		wg.Go(func() {
			for {
				i := next.Add(1)
				if i > int64(total) {
					return
				}
				c0 := time.Now()
				_, err := cs.CoreV1().ConfigMaps("default").Create(context.Background(), &corev1.ConfigMap{
					ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("%s-%d", prefix, i)}, Data: data}, metav1.CreateOptions{})
				if err != nil {
					firstErr.CompareAndSwap(nil, err)
					return
				}
				d := time.Since(c0)
				mu.Lock()
				lat = append(lat, d)
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	if err, _ := firstErr.Load().(error); err != nil {
		return 0, nil, err
	}
	return float64(total) / time.Since(t0).Seconds(), lat, nil
}

// watchLatency creates n ConfigMaps one after another in a fresh namespace
// while a watch on that namespace runs, and returns for each the time from
// the start of its create call to its ADDED event.
func watchLatency(cs kubernetes.Interface, n int) ([]time.Duration, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	ns := "watch-bench"
	if _, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
		return nil, err
	}
	list, err := cs.CoreV1().ConfigMaps(ns).List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, err
	}
	w, err := cs.CoreV1().ConfigMaps(ns).Watch(ctx, metav1.ListOptions{ResourceVersion: list.ResourceVersion})
	if err != nil {
		return nil, err
	}
	defer w.Stop()
	var mu sync.Mutex
	sent := map[string]time.Time{}
	var lat []time.Duration
	done := make(chan error, 1)
	go func() {
		for ev := range w.ResultChan() {
			now := time.Now()
			cm, ok := ev.Object.(*corev1.ConfigMap)
			if ev.Type != watch.Added || !ok || !strings.HasPrefix(cm.Name, "w-") {
				continue
			}
			mu.Lock()
			if t, ok := sent[cm.Name]; ok {
				lat = append(lat, now.Sub(t))
			}
			got := len(lat)
			mu.Unlock()
			if got == n {
				done <- nil
				return
			}
		}
		done <- fmt.Errorf("watch ended after %d of %d events", len(lat), n)
	}()
	for i := range n {
		name := fmt.Sprintf("w-%d", i)
		mu.Lock()
		sent[name] = time.Now()
		mu.Unlock()
		if _, err := cs.CoreV1().ConfigMaps(ns).Create(ctx, &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{}); err != nil {
			return nil, err
		}
	}
	select {
	case err := <-done:
		if err != nil {
			return nil, err
		}
	case <-ctx.Done():
		return nil, fmt.Errorf("watch: %w", ctx.Err())
	}
	mu.Lock()
	defer mu.Unlock()
	return lat, nil
}
