package agent

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"k8s.io/klog/v2"

	"github.com/berth-io/berth/pkg/atomicfile"
	"github.com/berth-io/berth/pkg/component"
	"github.com/berth-io/berth/pkg/containerd"
	"github.com/berth-io/berth/pkg/data"
	"github.com/berth-io/berth/pkg/join"
	"github.com/berth-io/berth/pkg/loadbalancer"
	"github.com/berth-io/berth/pkg/lock"
	"github.com/berth-io/berth/pkg/memory"
	"github.com/berth-io/berth/pkg/sdnotify"
	"github.com/berth-io/berth/pkg/token"
	"github.com/berth-io/berth/pkg/tunnel"
)

// StopTimeout bounds how long each component may take to stop.
const StopTimeout = 5 * time.Second

// JoinOptions are `berth agent`'s settings.
type JoinOptions struct {
	DataDir   string
	Server    string // https://HOST:PORT
	Token     string
	TokenFile string
	// NodeName defaults to the hostname; WithNodeID appends a stable random
	// suffix to make it unique.
	NodeName   string
	WithNodeID bool
	NodeIP     string
	// NodePasswordFile is /etc/berth/node/password.
	NodePasswordFile string
	LBServerPort     int
	PauseImage       string
	PrivateRegistry  string
	FlannelIface     string
	KubeletArgs      []string
	KubeProxyArgs    []string
	NodeLabels       []string
	NodeTaints       []string
}

// Run joins the cluster and runs the node until ctx ends (nil) or a
// component fails.
func Run(ctx context.Context, o *JoinOptions) error {
	t0 := time.Now()
	memory.Starting()
	if err := os.MkdirAll(filepath.Join(o.DataDir, "agent", "etc"), 0o700); err != nil {
		return fmt.Errorf("data dir %s is not usable: %w", o.DataDir, err)
	}
	unlock, err := lock.DataDir(o.DataDir)
	if err != nil {
		return err
	}
	defer unlock()

	tok, err := readToken(o)
	if err != nil {
		return err
	}
	nodeName, err := nodeName(o)
	if err != nil {
		return err
	}
	password, err := join.EnsureSecret(o.NodePasswordFile, 16)
	if err != nil {
		return fmt.Errorf("node password: %w", err)
	}
	nodeIP := o.NodeIP
	if nodeIP == "" {
		if nodeIP, err = sourceIP(o.Server); err != nil {
			return fmt.Errorf("find this node's IP (set --node-ip): %w", err)
		}
	}
	ac := &Config{DataDir: o.DataDir}
	lbState := ac.Path("etc/berth-agent-load-balancer.json")
	servers := []string{o.Server}
	if saved, err := loadbalancer.Load(lbState); err == nil {
		for _, s := range saved {
			servers = append(servers, "https://"+s)
		}
	}
	klog.Infof("joining the cluster at %s as node %s (%s)", o.Server, nodeName, nodeIP)
	res, err := join.Bootstrap(ctx, join.Request{
		Servers: servers,
		Token:   tok,
		Node:    join.Node{Name: nodeName, Password: password, IPs: []string{nodeIP}},
		CertDir: ac.Dir(),
	})
	if err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return fmt.Errorf("join %s: %w", o.Server, err)
	}
	cc := res.Config
	klog.Infof("joined through %s in %s", res.Server, time.Since(t0).Round(time.Millisecond))

	binDir, err := data.Extract(o.DataDir)
	if err != nil {
		return fmt.Errorf("helper binaries: %w", err)
	}
	canLower, err := containerd.CanLowerOOMScoreAdj()
	if err != nil {
		klog.Warningf("probe oom_score_adj: %v", err)
	}
	lbAddr := net.JoinHostPort("127.0.0.1", strconv.Itoa(o.LBServerPort))
	*ac = Config{
		DataDir:             o.DataDir,
		NodeName:            nodeName,
		NodeIP:              nodeIP,
		ServerURL:           "https://" + lbAddr,
		ClusterCIDR:         cc.ClusterCIDR,
		ClusterDNS:          cc.ClusterDNS,
		ClusterDomain:       cc.ClusterDomain,
		PauseImage:          o.PauseImage,
		PrivateRegistry:     o.PrivateRegistry,
		FlannelBackend:      cc.FlannelBackend,
		FlannelIface:        o.FlannelIface,
		KubeletArgs:         o.KubeletArgs,
		KubeProxyArgs:       o.KubeProxyArgs,
		DisableKubeProxy:    cc.DisableKubeProxy,
		NodeLabels:          o.NodeLabels,
		NodeTaints:          o.NodeTaints,
		ContainerdStateDir:  "/run/berth/containerd",
		KubeletRootDir:      "/var/lib/kubelet",
		PodLogsDir:          "/var/log/pods",
		BinDir:              binDir,
		RestrictOOMScoreAdj: !canLower,
	}
	for name, pem := range map[string][]byte{ClientCAFile: res.ClientCA, ServerCAFile: res.ServerCA} {
		if err := atomicfile.Write(ac.Path(name), pem, 0o644); err != nil {
			return err
		}
	}
	if err := WriteKubeconfigs(ac); err != nil {
		return err
	}

	answered, _ := join.HostPort(res.Server)
	lb := loadbalancer.New(lbAddr, lbState, answered)
	lb.SetServers(append(cc.Servers, answered))
	node, err := Components(ac)
	if err != nil {
		return err
	}
	m := component.NewManager()
	m.Notify = sdnotify.Take()
	m.Add(lb, &ServerWatcher{Kubeconfig: ac.Path(ControllerKubecfg), LB: lb, Default: answered})
	for _, c := range node {
		m.Add(c)
		if c.Name() == "kubelet" {
			// The apiserver reaches this kubelet through the tunnel.
			m.Add(&tunnel.Client{
				URL:       tunnel.URL(lbAddr),
				CAFile:    ac.Path(ServerCAFile),
				CertFile:  ac.Path(KubeletClient + ".crt"),
				KeyFile:   ac.Path(KubeletClient + ".key"),
				Addresses: []string{nodeIP},
			})
		}
	}
	if err := m.Start(ctx); err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return err
	}
	klog.Infof("berth agent %s is running (%s since start)", nodeName, time.Since(t0).Round(time.Millisecond))
	memory.Started()
	trimLater := time.AfterFunc(30*time.Second, memory.Trim)
	defer trimLater.Stop()
	return m.Serve(ctx, "berth agent", StopTimeout)
}

func readToken(o *JoinOptions) (token.Token, error) {
	raw := o.Token
	if o.TokenFile != "" {
		b, err := os.ReadFile(o.TokenFile)
		if err != nil {
			return token.Token{}, fmt.Errorf("--token-file: %w", err)
		}
		raw = string(b)
	}
	if strings.TrimSpace(raw) == "" {
		return token.Token{}, fmt.Errorf("no token: set --token or --token-file (BERTH_TOKEN); the server keeps it in <data-dir>/server/node-token, or make one with `berth token create`")
	}
	tok, err := token.Parse(raw)
	if err != nil {
		return token.Token{}, fmt.Errorf("--token: %w", err)
	}
	return tok, nil
}

func nodeName(o *JoinOptions) (string, error) {
	name := o.NodeName
	if name == "" {
		h, err := os.Hostname()
		if err != nil {
			return "", fmt.Errorf("hostname (set --node-name): %w", err)
		}
		name = h
	}
	name = strings.ToLower(name)
	if o.WithNodeID {
		id, err := join.EnsureSecret(filepath.Join(filepath.Dir(o.NodePasswordFile), "id"), 4)
		if err != nil {
			return "", fmt.Errorf("node id: %w", err)
		}
		name += "-" + id
	}
	return name, nil
}

// sourceIP returns the local address this host uses to reach the server.
func sourceIP(serverURL string) (string, error) {
	hp, err := join.HostPort(serverURL)
	if err != nil {
		return "", err
	}
	c, err := net.Dial("udp", hp) // no packet is sent
	if err != nil {
		return "", err
	}
	defer c.Close()
	return c.LocalAddr().(*net.UDPAddr).IP.String(), nil
}
