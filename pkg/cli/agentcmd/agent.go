// Package agentcmd is `berth agent`, shared by the berth and berth-agent
// binaries.
package agentcmd

import (
	"github.com/spf13/cobra"

	"github.com/berth-io/berth/pkg/agent"
	"github.com/berth-io/berth/pkg/cli"
	"github.com/berth-io/berth/pkg/registries"
)

// envAliases are the k3s-style variable names that differ from BERTH_<FLAG>.
var envAliases = map[string]string{"BERTH_URL": "server"}

// New returns the `berth agent` command.
func New() *cobra.Command {
	o := &agent.JoinOptions{}
	var debug bool
	cmd := &cobra.Command{
		Use:   "agent",
		Short: "Run a node that joins a berth server",
		Long: `Run a node — containerd, kubelet, kube-proxy and flannel — that joins the
cluster of the server given by --server with --token.

The token is the server's <data-dir>/server/node-token, or a bootstrap token
from ` + "`berth token create`" + `. Its K10<hash> prefix pins the cluster CA: the
agent refuses a server whose CA does not match before it sends any secret.

Flags may also come from BERTH_<FLAG> environment variables (BERTH_URL for
--server) and from /etc/berth/config.yaml plus config.yaml.d/*.yaml.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := cli.ApplyConfig(cmd, envAliases); err != nil {
				return err
			}
			cli.SetDebug(cmd, debug)
			if o.Server == "" {
				return cmd.Help()
			}
			ctx, cancel := cli.SignalContext()
			defer cancel()
			return agent.Run(ctx, o)
		},
	}
	f := cmd.Flags()
	f.SortFlags = false
	f.StringP("config", "c", cli.DefaultConfigFile, "config file (env BERTH_CONFIG_FILE)")
	f.BoolVar(&debug, "debug", false, "more verbose logging (as -v=2)")
	f.StringVarP(&o.Server, "server", "s", "", "server to join, https://HOST:6443 (env BERTH_URL)")
	f.StringVarP(&o.Token, "token", "t", "", "join token: K10<ca-hash>::<user>:<password> or a bootstrap token (env BERTH_TOKEN)")
	f.StringVar(&o.TokenFile, "token-file", "", "file holding the token")
	f.StringVarP(&o.DataDir, "data-dir", "d", cli.DefaultDataDir(), "folder for state: certificates, images, containerd")
	f.StringVar(&o.NodeName, "node-name", "", "node name (default: the hostname)")
	f.BoolVar(&o.WithNodeID, "with-node-id", false, "append a stable random id to the node name")
	f.StringVarP(&o.NodeIP, "node-ip", "i", "", "IP address of this node (default: the address that reaches the server)")
	f.StringVar(&o.NodePasswordFile, "node-password-file", "/etc/berth/node/password", "where this node keeps its password (made on first start)")
	f.IntVar(&o.LBServerPort, "lb-server-port", 6444, "loopback port of the agent's load balancer to the servers")
	f.StringArrayVar(&o.NodeLabels, "node-label", nil, "label for this node, key=value (repeatable)")
	f.StringArrayVar(&o.NodeTaints, "node-taint", nil, "taint for this node, key=value:Effect (repeatable)")
	f.StringArrayVar(&o.KubeletArgs, "kubelet-arg", nil, "extra kubelet flag, key=value (repeatable)")
	f.StringArrayVar(&o.KubeProxyArgs, "kube-proxy-arg", nil, "extra kube-proxy flag, key=value (repeatable)")
	f.StringVar(&o.FlannelIface, "flannel-iface", "", "network interface flannel uses (default: the node IP's)")
	f.StringVar(&o.PauseImage, "pause-image", "berth.local/pause:3.10", "pod sandbox image (imported from the images dir)")
	f.StringVar(&o.PrivateRegistry, "private-registry", registries.DefaultFile, "registry mirrors, rewrites, credentials and TLS for this node's containerd")
	_ = f.MarkHidden("node-password-file")
	return cmd
}
