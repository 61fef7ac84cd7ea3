// Command serverbench measures a berth server on this machine: start-up to
// /readyz (new and existing data dir), idle memory, binary size, kine
// write throughput with SQLite synchronous=FULL against NORMAL, and the
// datastores compared (SQLite FULL, embedded etcd): create throughput and
// latency, watch event latency.
//
// It starts the real binary on its own ports and data dirs and stops every
// process it started, also when it fails.
package main

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"flag"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

var (
	bin         = flag.String("bin", "bin/berth", "berth binary")
	runs        = flag.Int("runs", 5, "cold starts per case")
	idle        = flag.Duration("idle", 60*time.Second, "idle time before reading memory")
	creates     = flag.Int("creates", 1000, "ConfigMaps per throughput run")
	workers     = flag.String("workers", "1,16", "concurrent writers per throughput run")
	only        = flag.String("only", "", "comma list of sections: size,start,memory,writes,datastore,node,pods,agent,addons")
	basePort    = flag.Int("port", 26443, "first of six ports to use (the last two: etcd client and peer)")
	watchEvents = flag.Int("watch-events", 300, "ConfigMaps created one at a time for the watch latency (datastore section)")
	keepFiles   = flag.Bool("keep", false, "keep the temporary data dirs")
)

type proc struct {
	cmd  *exec.Cmd
	dir  string
	done chan struct{}
}

func (p *proc) stop() {
	if p == nil || p.cmd.Process == nil {
		return
	}
	select {
	case <-p.done:
		return
	default:
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(15 * time.Second):
		_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
		<-p.done
	}
}

func start(dataDir string, extra ...string) (*proc, error) {
	return startWith(dataDir, true, extra...)
}

// startWith starts a server, with or without its own node.
// noAddons disables every packaged add-on.
const noAddons = "coredns,local-storage,metrics-server"

func startWith(dataDir string, disableAgent bool, extra ...string) (*proc, error) {
	args := []string{"server", "--config", "/dev/null", "-d", dataDir,
		"--write-kubeconfig", filepath.Join(dataDir, "admin.yaml"),
		"--https-listen-port", strconv.Itoa(*basePort), "--apiserver-port", strconv.Itoa(*basePort + 1),
		"--kube-scheduler-arg", "secure-port=" + strconv.Itoa(*basePort+2),
		"--kube-controller-manager-arg", "secure-port=" + strconv.Itoa(*basePort+3),
		// The figures so far are of berth itself; the add-ons get their own.
		"--disable", noAddons}
	if disableAgent {
		args = append(args, "--disable-agent")
	}
	cmd := exec.Command(*bin, append(args, extra...)...)
	logf, err := os.OpenFile(filepath.Join(filepath.Dir(dataDir), filepath.Base(dataDir)+".log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, err
	}
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	p := &proc{cmd: cmd, dir: dataDir, done: make(chan struct{})}
	go func() { _ = cmd.Wait(); logf.Close(); close(p.done) }()
	return p, nil
}

// waitReady polls /readyz on the public port with the admin certificate
// (read as soon as the PKI exists) and returns the time since t0.
func waitReady(p *proc, t0 time.Time) (time.Duration, error) {
	tlsDir := filepath.Join(p.dir, "server", "tls")
	var client *http.Client
	deadline := time.Now().Add(120 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case <-p.done:
			return 0, fmt.Errorf("berth exited; see %s.log", p.dir)
		default:
		}
		if client == nil {
			cert, err1 := tls.LoadX509KeyPair(filepath.Join(tlsDir, "client-admin.crt"), filepath.Join(tlsDir, "client-admin.key"))
			ca, err2 := os.ReadFile(filepath.Join(tlsDir, "server-ca.crt"))
			if err1 == nil && err2 == nil {
				pool := x509.NewCertPool()
				pool.AppendCertsFromPEM(ca)
				client = &http.Client{Timeout: time.Second, Transport: &http.Transport{
					TLSClientConfig: &tls.Config{RootCAs: pool, Certificates: []tls.Certificate{cert}}}}
			}
		}
		if client != nil {
			resp, err := client.Get(fmt.Sprintf("https://127.0.0.1:%d/readyz", *basePort))
			if err == nil {
				resp.Body.Close()
				if resp.StatusCode == 200 {
					return time.Since(t0), nil
				}
			}
		}
		time.Sleep(10 * time.Millisecond)
	}
	return 0, fmt.Errorf("not ready after 120s")
}

func median(ds []time.Duration) time.Duration {
	s := append([]time.Duration(nil), ds...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	return s[len(s)/2]
}

func fmtDurs(ds []time.Duration) string {
	var parts []string
	for _, d := range ds {
		parts = append(parts, fmt.Sprintf("%.2f", d.Seconds()))
	}
	return strings.Join(parts, " ")
}

// timeStarts starts berth *runs times on dir (from a new data dir when
// fresh) and returns how long each took to be ready.
func timeStarts(dir string, fresh bool, startFn func(string) (*proc, error), ready func(*proc, time.Time) (time.Duration, error)) ([]time.Duration, error) {
	var ds []time.Duration
	for i := 0; i < *runs; i++ {
		if fresh {
			os.RemoveAll(dir)
		}
		t0 := time.Now()
		p, err := startFn(dir)
		if err != nil {
			return nil, err
		}
		d, err := ready(p, t0)
		p.stop()
		if err != nil {
			return nil, err
		}
		ds = append(ds, d)
	}
	return ds, nil
}

func benchStart(root string) error {
	dir := filepath.Join(root, "start")
	startFn := func(d string) (*proc, error) { return start(d) }
	fresh, err := timeStarts(dir, true, startFn, waitReady)
	if err != nil {
		return err
	}
	existing, err := timeStarts(dir, false, startFn, waitReady)
	if err != nil {
		return err
	}
	fmt.Printf("start → /readyz 200, new data dir:      median %.2f s  (runs: %s)  target ≤ 3 s\n", median(fresh).Seconds(), fmtDurs(fresh))
	fmt.Printf("start → /readyz 200, existing data dir: median %.2f s  (runs: %s)  target ≤ 2 s\n", median(existing).Seconds(), fmtDurs(existing))
	return nil
}

// smaps returns the Rss and Pss lines of /proc/PID/smaps_rollup in kB.
func smaps(pid int) (map[string]int, error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/smaps_rollup", pid))
	if err != nil {
		return nil, err
	}
	defer f.Close()
	out := map[string]int{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) >= 2 && strings.HasSuffix(fields[0], ":") {
			if v, err := strconv.Atoi(fields[1]); err == nil {
				out[strings.TrimSuffix(fields[0], ":")] = v
			}
		}
	}
	return out, sc.Err()
}

func cpuTicks(pid int) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	s := string(b)
	fields := strings.Fields(s[strings.LastIndex(s, ")")+2:])
	ut, _ := strconv.ParseInt(fields[11], 10, 64)
	st, _ := strconv.ParseInt(fields[12], 10, 64)
	return ut + st, nil
}

func benchMemory(root string) error {
	dir := filepath.Join(root, "memory")
	os.RemoveAll(dir)
	t0 := time.Now()
	p, err := start(dir)
	if err != nil {
		return err
	}
	defer p.stop()
	if _, err := waitReady(p, t0); err != nil {
		return err
	}
	pid := p.cmd.Process.Pid
	time.Sleep(*idle - 60*time.Second/2)
	c0, _ := cpuTicks(pid)
	time.Sleep(60 * time.Second / 2)
	c1, _ := cpuTicks(pid)
	m, err := smaps(pid)
	if err != nil {
		return err
	}
	mb := func(kb int) float64 { return float64(kb) / 1024 }
	dec := func(kb int) float64 { return float64(kb) * 1024 / 1e6 }
	fmt.Printf("server after %s idle: RSS %.0f MiB (%.0f MB), PSS %.0f MiB (%.0f MB; anon %.0f MiB, file %.0f MiB)  targets RSS ≤ 300 MB, PSS ≤ 220 MB\n",
		idle.String(), mb(m["Rss"]), dec(m["Rss"]), mb(m["Pss"]), dec(m["Pss"]), mb(m["Pss_Anon"]), mb(m["Pss_File"]))
	fmt.Printf("server idle CPU over the last 30 s: %.2f %% of a core\n", float64(c1-c0)/100/30*100)
	return nil
}

func benchSize() error {
	fi, err := os.Stat(*bin)
	if err != nil {
		return err
	}
	fmt.Printf("binary %s: %d bytes (%.1f MiB, stripped, not compressed)\n", *bin, fi.Size(), float64(fi.Size())/(1<<20))
	return nil
}

func benchWrites(root string) error {
	ws := strings.Split(*workers, ",")
	for _, mode := range []string{"FULL", "NORMAL"} {
		dir := filepath.Join(root, "writes-"+mode)
		os.RemoveAll(dir)
		t0 := time.Now()
		p, err := start(dir, "--sqlite-synchronous", mode)
		if err != nil {
			return err
		}
		if _, err := waitReady(p, t0); err != nil {
			p.stop()
			return err
		}
		cs, err := adminClient(dir, 100000)
		if err != nil {
			p.stop()
			return err
		}
		for _, w := range ws {
			n, _ := strconv.Atoi(w)
			rate, err := createConfigMaps(cs, "w"+w, *creates, n)
			if err != nil {
				p.stop()
				return err
			}
			fmt.Printf("kine writes, synchronous=%-6s %2d writer(s): %6.0f ConfigMap creates/s (%d creates)\n", mode, n, rate, *creates)
		}
		p.stop()
	}
	return nil
}

func createConfigMaps(cs kubernetes.Interface, prefix string, total, workers int) (float64, error) {
	var next atomic.Int64
	var firstErr atomic.Value
	var wg sync.WaitGroup
	data := map[string]string{"k": strings.Repeat("x", 512)}
	t0 := time.Now()
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := next.Add(1)
				if i > int64(total) {
					return
				}
				_, err := cs.CoreV1().ConfigMaps("default").Create(context.Background(), &corev1.ConfigMap{
					ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("%s-%d", prefix, i)}, Data: data}, metav1.CreateOptions{})
				if err != nil {
					firstErr.CompareAndSwap(nil, err)
					return
				}
			}
		}()
	}
	wg.Wait()
	if err, _ := firstErr.Load().(error); err != nil {
		return 0, err
	}
	return float64(total) / time.Since(t0).Seconds(), nil
}

func main() {
	flag.Parse()
	root, err := os.MkdirTemp("", "berth-bench-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	if !*keepFiles {
		defer os.RemoveAll(root)
	}
	want := func(s string) bool { return *only == "" || strings.Contains(","+*only+",", ","+s+",") }
	fmt.Printf("berth server benchmark, %s, %d CPUs; logs in %s\n", time.Now().Format(time.RFC3339), numCPU(), root)
	steps := []struct {
		name string
		fn   func() error
	}{
		{"size", benchSize},
		{"start", func() error { return benchStart(root) }},
		{"memory", func() error { return benchMemory(root) }},
		{"writes", func() error { return benchWrites(root) }},
		{"datastore", func() error { return benchDatastore(root) }},
		{"node", func() error { return benchNode(root) }},
		{"pods", func() error { return benchPods(root) }},
		{"agent", func() error { return benchAgent(root) }},
		{"addons", func() error { return benchAddons(root) }},
	}
	failed := false
	for _, s := range steps {
		if !want(s.name) {
			continue
		}
		if err := s.fn(); err != nil {
			fmt.Fprintf(os.Stderr, "%s: %v\n", s.name, err)
			failed = true
		}
	}
	if failed {
		os.Exit(1)
	}
}

func numCPU() int {
	b, _ := os.ReadFile("/proc/cpuinfo")
	return strings.Count(string(b), "processor\t:")
}
