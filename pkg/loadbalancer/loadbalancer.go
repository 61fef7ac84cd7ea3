// Package loadbalancer is the agent's client-side load balancer: a TCP
// proxy on loopback (127.0.0.1:6444) in front of the servers' supervisor
// ports. The kubelet, kube-proxy, flannel and the tunnel all talk to it, so
// the server list can change without rewriting their kubeconfigs. It fails
// over rather than balances: it sticks to the server that last answered.
// The list is kept on disk so an agent restarts even when the --server
// address it was first given is gone.
package loadbalancer

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"slices"
	"sync"
	"time"

	"k8s.io/klog/v2"

	"github.com/berth-io/berth/pkg/atomicfile"
	"github.com/berth-io/berth/pkg/ports"
)

// LoadBalancer is a component.
type LoadBalancer struct {
	// Address is the loopback listen address.
	Address string
	// StateFile keeps the server list across restarts.
	StateFile string

	mu       sync.Mutex
	servers  []string // host:port; the default (--server) last
	current  int
	listener net.Listener
	wg       sync.WaitGroup
}

type state struct {
	ServerAddresses []string `json:"ServerAddresses"`
	Default         string   `json:"Default"`
}

// New returns a load balancer for the default server plus any remembered
// ones.
func New(address, stateFile, defaultServer string) *LoadBalancer {
	lb := &LoadBalancer{Address: address, StateFile: stateFile}
	if s, err := Load(stateFile); err == nil {
		lb.servers = s
	}
	lb.SetServers(append(lb.Servers(), defaultServer))
	return lb
}

// Load reads the remembered server list.
func Load(stateFile string) ([]string, error) {
	data, err := os.ReadFile(stateFile)
	if err != nil {
		return nil, err
	}
	var st state
	if err := json.Unmarshal(data, &st); err != nil {
		return nil, fmt.Errorf("%s: %w", stateFile, err)
	}
	return st.ServerAddresses, nil
}

// Servers returns the current list.
func (lb *LoadBalancer) Servers() []string {
	lb.mu.Lock()
	defer lb.mu.Unlock()
	return slices.Clone(lb.servers)
}

// SetServers replaces the list (deduplicated, order kept) and saves it.
func (lb *LoadBalancer) SetServers(servers []string) {
	lb.mu.Lock()
	var cur string
	if len(lb.servers) > 0 {
		cur = lb.servers[lb.current%len(lb.servers)]
	}
	var list []string
	for _, s := range servers {
		if s != "" && !slices.Contains(list, s) {
			list = append(list, s)
		}
	}
	lb.servers, lb.current = list, max(0, slices.Index(list, cur))
	lb.mu.Unlock()
	if lb.StateFile == "" {
		return
	}
	data, _ := json.MarshalIndent(state{ServerAddresses: list, Default: last(list)}, "", "  ")
	if err := atomicfile.Write(lb.StateFile, data, 0o600); err != nil {
		klog.Warningf("load balancer: save server list: %v", err)
	}
}

func last(s []string) string {
	if len(s) == 0 {
		return ""
	}
	return s[len(s)-1]
}

func (lb *LoadBalancer) Name() string { return "load-balancer" }

func (lb *LoadBalancer) Prepare(context.Context) error {
	l, err := net.Listen("tcp", lb.Address)
	if err != nil {
		return ports.InUseError(lb.Address, err)
	}
	lb.listener = l
	return nil
}

func (lb *LoadBalancer) Start(context.Context) error {
	lb.wg.Add(1)
	go func() {
		defer lb.wg.Done()
		for {
			conn, err := lb.listener.Accept()
			if err != nil {
				return
			}
			go lb.proxy(conn)
		}
	}()
	return nil
}

func (lb *LoadBalancer) Ready(context.Context) error { return nil }

func (lb *LoadBalancer) Stop(context.Context) error {
	if lb.listener != nil {
		lb.listener.Close()
	}
	lb.wg.Wait()
	return nil
}

func (lb *LoadBalancer) proxy(client net.Conn) {
	defer client.Close()
	backend, err := lb.dial()
	if err != nil {
		klog.V(2).Infof("load balancer: %v", err)
		return
	}
	defer backend.Close()
	done := make(chan struct{}, 2)
	go func() { _, _ = io.Copy(backend, client); done <- struct{}{} }()
	go func() { _, _ = io.Copy(client, backend); done <- struct{}{} }()
	<-done // either side closing ends both
}

// dial tries the current server, then the others in order.
func (lb *LoadBalancer) dial() (net.Conn, error) {
	lb.mu.Lock()
	servers, start := slices.Clone(lb.servers), lb.current
	lb.mu.Unlock()
	var errs []error
	for i := range servers {
		idx := (start + i) % len(servers)
		c, err := net.DialTimeout("tcp", servers[idx], 5*time.Second)
		if err == nil {
			if idx != start {
				klog.Infof("load balancer: switched to server %s", servers[idx])
				lb.mu.Lock()
				if slices.Equal(lb.servers, servers) {
					lb.current = idx
				}
				lb.mu.Unlock()
			}
			return c, nil
		}
		errs = append(errs, err)
	}
	return nil, fmt.Errorf("no server reachable: %w", errors.Join(errs...))
}
