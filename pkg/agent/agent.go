// Package agent assembles a berth node: host setup, containerd, air-gap
// images, kubelet, flannel and kube-proxy. It never imports the server's
// packages, so the agent-only binary links no control plane.
package agent

import (
	"fmt"
	"os"
	"path/filepath"

	"github.com/berth-io/berth/pkg/component"
	"github.com/berth-io/berth/pkg/containerd"
	"github.com/berth-io/berth/pkg/flannel"
	"github.com/berth-io/berth/pkg/images"
	"github.com/berth-io/berth/pkg/kubeconfig"
	"github.com/berth-io/berth/pkg/node"
	"github.com/berth-io/berth/pkg/registries"
)

// Config is one node's configuration.
type Config struct {
	DataDir       string
	NodeName      string
	NodeIP        string
	ServerURL     string // https://127.0.0.1:6443 for the server's own node
	ClusterCIDR   string
	ClusterDNS    string
	ClusterDomain string
	PauseImage    string
	// PrivateRegistry is registries.yaml; empty for none.
	PrivateRegistry string
	// FlannelBackend is vxlan (default), host-gw or none.
	FlannelBackend string
	FlannelIface   string
	KubeletArgs    []string
	KubeProxyArgs  []string
	// DisableKubeProxy leaves Services to something else.
	DisableKubeProxy bool
	NodeLabels       []string
	NodeTaints       []string
	// ContainerdStateDir is /run/berth/containerd unless several nodes share a host.
	ContainerdStateDir string
	// KubeletRootDir is /var/lib/kubelet unless several nodes share a host.
	KubeletRootDir string
	// PodLogsDir is /var/log/pods unless several nodes share a host.
	PodLogsDir string
	// CgroupRoot gives the node's pods their own cgroup subtree.
	CgroupRoot string
	// BinDir holds the unpacked helper binaries (containerd, runc, CNI).
	BinDir string
	// RestrictOOMScoreAdj: see containerd.CanLowerOOMScoreAdj.
	RestrictOOMScoreAdj bool
}

// Dir is <data-dir>/agent.
func (c *Config) Dir() string { return filepath.Join(c.DataDir, "agent") }

// Path returns a file in the agent dir.
func (c *Config) Path(name string) string { return filepath.Join(c.Dir(), name) }

// Certificate files the bootstrap (the local server now, the join protocol
// later) puts in the agent dir.
const (
	ClientCAFile      = "client-ca.crt"
	ServerCAFile      = "server-ca.crt"
	KubeletClient     = "client-kubelet"
	KubeletServing    = "serving-kubelet"
	KubeProxyClient   = "client-kube-proxy"
	ControllerClient  = "client-berth-controller"
	KubeletKubecfg    = "kubelet.kubeconfig"
	KubeProxyKubecfg  = "kubeproxy.kubeconfig"
	ControllerKubecfg = "berth-controller.kubeconfig"
)

// CgroupV1 tells whether the host has no unified cgroup hierarchy.
func CgroupV1() bool {
	_, err := os.Stat("/sys/fs/cgroup/cgroup.controllers")
	return err != nil
}

// WriteKubeconfigs writes the kubelet's and kube-proxy's kubeconfigs from
// the certificates in the agent dir.
func WriteKubeconfigs(c *Config) error {
	for _, k := range []struct{ file, cert string }{
		{KubeletKubecfg, KubeletClient},
		{KubeProxyKubecfg, KubeProxyClient},
		{ControllerKubecfg, ControllerClient},
	} {
		spec := kubeconfig.Spec{
			Server:   c.ServerURL,
			CAFile:   c.Path(ServerCAFile),
			CertFile: c.Path(k.cert + ".crt"),
			KeyFile:  c.Path(k.cert + ".key"),
		}
		if err := kubeconfig.Write(c.Path(k.file), spec, 0o600); err != nil {
			return err
		}
	}
	return nil
}

// Components returns the node's components in start order.
func Components(c *Config) ([]component.Component, error) {
	if c.BinDir == "" {
		return nil, fmt.Errorf("no helper binaries directory")
	}
	ctrd := &containerd.Config{
		DataDir:             c.DataDir,
		BinDir:              c.BinDir,
		StateDir:            c.ContainerdStateDir,
		PauseImage:          c.PauseImage,
		RestrictOOMScoreAdj: c.RestrictOOMScoreAdj,
		CNIConfDir:          c.Path("etc/cni/net.d"),
		StreamPort:          10010,
	}
	cs := []component.Component{&Host{DataDir: c.DataDir}}
	if c.PrivateRegistry != "" {
		// Before containerd: it supplies the credentials containerd's config holds.
		cs = append(cs, &registries.Component{File: c.PrivateRegistry, Containerd: ctrd})
	}
	cs = append(cs,
		&containerd.Containerd{Config: ctrd},
		&images.Component{Importer: &images.Importer{Dir: c.Path("images"), Socket: ctrd.Socket()}},
		&node.Kubelet{Config: &node.KubeletConfig{
			NodeName:      c.NodeName,
			NodeIP:        c.NodeIP,
			RootDir:       c.KubeletRootDir,
			DropInDir:     c.Path("etc/kubelet.conf.d"),
			Kubeconfig:    c.Path(KubeletKubecfg),
			ClientCAFile:  c.Path(ClientCAFile),
			ServingCert:   c.Path(KubeletServing + ".crt"),
			ServingKey:    c.Path(KubeletServing + ".key"),
			RuntimeSocket: ctrd.Socket(),
			ClusterDNS:    c.ClusterDNS,
			ClusterDomain: c.ClusterDomain,
			StaticPodPath: c.Path("pod-manifests"),
			PodLogsDir:    c.PodLogsDir,
			CgroupRoot:    c.CgroupRoot,
			CgroupV1:      CgroupV1(),
			NodeLabels:    c.NodeLabels,
			NodeTaints:    c.NodeTaints,
			ExtraArgs:     c.KubeletArgs,
			HealthzPort:   10248,
		}},
	)
	if !c.DisableKubeProxy {
		cs = append(cs, &node.Proxy{Config: &node.ProxyConfig{
			NodeName:    c.NodeName,
			Kubeconfig:  c.Path(KubeProxyKubecfg),
			ClusterCIDR: c.ClusterCIDR,
			ExtraArgs:   c.KubeProxyArgs,
		}})
	}
	// Flannel waits for the kubelet to register the node and the
	// controller-manager to give it a podCIDR; pods start once it has
	// written the CNI config.
	cs = append(cs, flannel.New(flannel.Config{
		NodeName:    c.NodeName,
		Kubeconfig:  c.Path(ControllerKubecfg),
		ClusterCIDR: c.ClusterCIDR,
		Backend:     c.FlannelBackend,
		Iface:       c.FlannelIface,
		NodeIP:      c.NodeIP,
		ConfDir:     c.Path("etc/flannel"),
		CNIConfDir:  c.Path("etc/cni/net.d"),
		CNIDataDir:  c.Path("cni/networks"),
	}))
	return cs, nil
}
