package server

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"k8s.io/klog/v2"

	"github.com/berth-io/berth/pkg/agent"
	"github.com/berth-io/berth/pkg/atomicfile"
	"github.com/berth-io/berth/pkg/component"
	"github.com/berth-io/berth/pkg/containerd"
	"github.com/berth-io/berth/pkg/control"
	"github.com/berth-io/berth/pkg/data"
	"github.com/berth-io/berth/pkg/pki"
)

// localAgent returns the components of the server's own node.
func (s *Server) localAgent() ([]component.Component, error) {
	cfg := s.cfg
	binDir, err := data.Extract(cfg.DataDir)
	if err != nil {
		return nil, fmt.Errorf("helper binaries: %w", err)
	}
	canLower, err := containerd.CanLowerOOMScoreAdj()
	if err != nil {
		klog.Warningf("probe oom_score_adj: %v", err)
	}
	nodeIP := cfg.NodeIP
	if nodeIP == "" {
		nodeIP = cfg.advertiseIP.String()
	}
	ac := &agent.Config{
		DataDir:             cfg.DataDir,
		NodeName:            cfg.NodeName,
		NodeIP:              nodeIP,
		ServerURL:           "https://127.0.0.1:" + strconv.Itoa(cfg.HTTPSListenPort),
		ClusterCIDR:         cfg.ClusterCIDR,
		ClusterDNS:          cfg.ClusterDNS,
		ClusterDomain:       cfg.ClusterDomain,
		PauseImage:          cfg.PauseImage,
		PrivateRegistry:     cfg.PrivateRegistry,
		FlannelBackend:      cfg.FlannelBackend,
		FlannelIface:        cfg.FlannelIface,
		KubeletArgs:         cfg.KubeletArgs,
		KubeProxyArgs:       cfg.KubeProxyArgs,
		DisableKubeProxy:    cfg.DisableKubeProxy,
		NodeLabels:          cfg.NodeLabels,
		NodeTaints:          cfg.NodeTaints,
		ContainerdStateDir:  "/run/berth/containerd",
		KubeletRootDir:      "/var/lib/kubelet",
		PodLogsDir:          "/var/log/pods",
		BinDir:              binDir,
		RestrictOOMScoreAdj: !canLower,
	}
	if err := s.issueLocalAgentCerts(ac); err != nil {
		return nil, err
	}
	cs, err := agent.Components(ac)
	if err != nil {
		return nil, err
	}
	return append([]component.Component{&control.NodeRoleLabeler{
		Kubeconfig: filepath.Join(cfg.CredDir(), "admin.kubeconfig"), NodeName: cfg.NodeName,
	}}, cs...), nil
}

// issueLocalAgentCerts gives the server's own node its certificates straight
// from the cluster CAs (a joining agent gets them through the join
// endpoints instead): kubelet client and serving, kube-proxy client, and
// copies of the CAs.
func (s *Server) issueLocalAgentCerts(ac *agent.Config) error {
	f := s.files
	if err := os.MkdirAll(ac.Dir(), 0o700); err != nil {
		return fmt.Errorf("create %s: %w", ac.Dir(), err)
	}
	clientCA, err := pki.LoadCA(f.ClientCA.Cert, f.ClientCA.Key)
	if err != nil {
		return err
	}
	serverCA, err := pki.LoadCA(f.ServerCA.Cert, f.ServerCA.Key)
	if err != nil {
		return err
	}
	for name, pem := range map[string][]byte{agent.ClientCAFile: clientCA.CertPEM, agent.ServerCAFile: serverCA.CertPEM} {
		if err := atomicfile.Write(ac.Path(name), pem, 0o644); err != nil {
			return err
		}
	}
	ips := []net.IP{net.ParseIP("127.0.0.1"), net.ParseIP("::1")}
	if ip := net.ParseIP(ac.NodeIP); ip != nil {
		ips = append(ips, ip)
	}
	now := time.Now()
	leaves := []struct {
		ca   *pki.CA
		spec pki.LeafSpec
		name string
	}{
		{clientCA, pki.LeafSpec{CommonName: "system:node:" + ac.NodeName, Organization: []string{"system:nodes"}, Client: true}, agent.KubeletClient},
		{serverCA, pki.LeafSpec{CommonName: ac.NodeName, DNSNames: []string{ac.NodeName, "localhost"}, IPs: ips, Server: true}, agent.KubeletServing},
		{clientCA, pki.LeafSpec{CommonName: "system:kube-proxy", Client: true}, agent.KubeProxyClient},
		{clientCA, pki.LeafSpec{CommonName: control.ControllerUser, Client: true}, agent.ControllerClient},
	}
	for _, l := range leaves {
		p := pki.Pair{Cert: ac.Path(l.name + ".crt"), Key: ac.Path(l.name + ".key")}
		if err := pki.EnsureLeaf(l.ca, l.spec, p, now); err != nil {
			return fmt.Errorf("node certificate %s: %w", l.name, err)
		}
	}
	return agent.WriteKubeconfigs(ac)
}
