package node

import (
	"context"
	"fmt"
	"time"

	"github.com/spf13/pflag"
	proxyapp "k8s.io/kubernetes/cmd/kube-proxy/app"

	"github.com/berth-io/berth/pkg/component"
)

// ProxyConfig is what berth decides for kube-proxy.
type ProxyConfig struct {
	NodeName    string
	Kubeconfig  string
	ClusterCIDR string
	// Mode is iptables (default) or nftables.
	Mode string
	// ExtraArgs are the user's --kube-proxy-arg values (key=value).
	ExtraArgs []string
}

// Proxy is the kube-proxy component, run through its upstream options.
type Proxy struct {
	Config *ProxyConfig

	opts *proxyapp.Options
	*component.Runner
}

func (p *Proxy) Name() string { return "kube-proxy" }

// Args is the kube-proxy command line: k3s's choices, and the kernel's
// conntrack values are left as they are.
func (p *Proxy) Args() []string {
	c := p.Config
	mode := c.Mode
	if mode == "" {
		mode = "iptables"
	}
	args := []string{
		"--kubeconfig=" + c.Kubeconfig,
		"--hostname-override=" + c.NodeName,
		"--cluster-cidr=" + c.ClusterCIDR,
		"--proxy-mode=" + mode,
		"--healthz-bind-address=127.0.0.1:10256",
		"--metrics-bind-address=127.0.0.1:10249",
		"--conntrack-max-per-core=0",
		"--conntrack-tcp-timeout-established=0s",
		"--conntrack-tcp-timeout-close-wait=0s",
	}
	for _, a := range c.ExtraArgs {
		args = append(args, "--"+a)
	}
	return args
}

// Prepare parses and validates the arguments.
func (p *Proxy) Prepare(context.Context) error {
	p.opts = proxyapp.NewOptions()
	fs := pflag.NewFlagSet("kube-proxy", pflag.ContinueOnError)
	p.opts.AddFlags(fs)
	if err := fs.Parse(p.Args()); err != nil {
		return fmt.Errorf("kube-proxy arguments: %w", err)
	}
	if err := p.opts.Complete(fs); err != nil {
		return fmt.Errorf("kube-proxy: %w", err)
	}
	if err := p.opts.Validate(); err != nil {
		return fmt.Errorf("kube-proxy: %w", err)
	}
	return nil
}

func (p *Proxy) Start(ctx context.Context) error {
	opts := p.opts
	p.Runner = component.NewRunner(p.Name(), opts.Run)
	return p.Runner.Start(ctx)
}

// Stop cancels kube-proxy without waiting long: its Run does not return on
// cancellation, and its rules must stay for the pods that keep running.
func (p *Proxy) Stop(ctx context.Context) error {
	if p.Runner == nil {
		return nil
	}
	sctx, cancel := context.WithTimeout(ctx, 500*time.Millisecond)
	defer cancel()
	_ = p.Runner.Stop(sctx)
	return nil
}
