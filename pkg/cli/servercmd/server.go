// Package servercmd is `berth server`.
package servercmd

import (
	"strings"

	"github.com/spf13/cobra"

	"github.com/berth-io/berth/manifests"
	"github.com/berth-io/berth/pkg/cli"
	"github.com/berth-io/berth/pkg/datastore"
	"github.com/berth-io/berth/pkg/etcd"
	"github.com/berth-io/berth/pkg/registries"
	"github.com/berth-io/berth/pkg/server"
)

// envAliases are the k3s-style variable names that differ from BERTH_<FLAG>.
var envAliases = map[string]string{
	"BERTH_KUBECONFIG_OUTPUT": "write-kubeconfig",
	"BERTH_KUBECONFIG_MODE":   "write-kubeconfig-mode",
	"BERTH_URL":               "server",
}

// New returns the `berth server` command.
func New() *cobra.Command {
	cfg := &server.Config{}
	cmd := &cobra.Command{
		Use:   "server",
		Short: "Run the control plane (and, by default, a node)",
		Long: `Run the Kubernetes control plane: kube-apiserver, kube-scheduler and
kube-controller-manager in one process, on kine with SQLite, or on
embedded etcd with --cluster-init.

Flags may also come from BERTH_<FLAG> environment variables and from
/etc/berth/config.yaml plus /etc/berth/config.yaml.d/*.yaml (keys are flag
names). A flag on the command line wins over the environment, which wins
over the files.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := cli.ApplyConfig(cmd, envAliases); err != nil {
				return err
			}
			cli.SetDebug(cmd, cfg.Debug)
			if err := cfg.Validate(); err != nil {
				return err
			}
			ctx, cancel := cli.SignalContext()
			defer cancel()
			return server.Run(ctx, cfg)
		},
	}
	f := cmd.Flags()
	f.SortFlags = false
	f.StringP("config", "c", cli.DefaultConfigFile, "config file (env BERTH_CONFIG_FILE)")
	f.BoolVar(&cfg.Debug, "debug", false, "more verbose logging (as -v=2)")
	f.StringVarP(&cfg.DataDir, "data-dir", "d", cli.DefaultDataDir(), "folder for state: certificates, database, token")
	f.StringVar(&cfg.ClusterCIDR, "cluster-cidr", "10.42.0.0/16", "IPv4 network for pod IPs")
	f.StringVar(&cfg.ServiceCIDR, "service-cidr", "10.43.0.0/16", "IPv4 network for service IPs")
	f.StringVar(&cfg.ClusterDNS, "cluster-dns", "10.43.0.10", "IPv4 address of the cluster DNS service (inside --service-cidr)")
	f.StringVar(&cfg.ClusterDomain, "cluster-domain", "cluster.local", "cluster domain")
	f.StringVar(&cfg.ServiceNodePortRange, "service-node-port-range", "30000-32767", "port range for NodePort services")
	f.IntVar(&cfg.HTTPSListenPort, "https-listen-port", 6443, "public HTTPS port: the Kubernetes API and berth's endpoints")
	f.IntVar(&cfg.APIServerPort, "apiserver-port", 6444, "loopback port of the kube-apiserver itself")
	f.StringVar(&cfg.BindAddress, "bind-address", "0.0.0.0", "address the public HTTPS port listens on")
	f.StringVar(&cfg.AdvertiseAddress, "advertise-address", "", "IP address the apiserver advertises to the cluster (default: the host's primary IP)")
	f.StringSliceVar(&cfg.TLSSANs, "tls-san", nil, "extra hostnames or IPs in the serving certificate")
	f.StringVar(&cfg.NodeName, "node-name", "", "node name (default: the hostname)")
	f.StringVarP(&cfg.Token, "token", "t", "", "shared secret for joining nodes; a K10… token is checked against this cluster's CA")
	f.StringVar(&cfg.TokenFile, "token-file", "", "file holding the token")
	f.StringVarP(&cfg.Server, "server", "s", "", "join the cluster of this server, https://HOST:6443, as another server: its CAs and keys are fetched with --token (env BERTH_URL)")
	f.StringVarP(&cfg.WriteKubeconfig, "write-kubeconfig", "o", cli.DefaultKubeconfig, "where to write the admin kubeconfig (env BERTH_KUBECONFIG_OUTPUT)")
	f.StringVar(&cfg.WriteKubeconfigMode, "write-kubeconfig-mode", "0600", "file mode of the admin kubeconfig (env BERTH_KUBECONFIG_MODE)")
	f.StringArrayVar(&cfg.APIServerArgs, "kube-apiserver-arg", nil, "extra kube-apiserver flag, key=value (repeatable)")
	f.StringArrayVar(&cfg.SchedulerArgs, "kube-scheduler-arg", nil, "extra kube-scheduler flag, key=value (repeatable)")
	f.StringArrayVar(&cfg.ControllerManagerArgs, "kube-controller-manager-arg", nil, "extra kube-controller-manager flag, key=value (repeatable)")
	f.BoolVar(&cfg.DisableAgent, "disable-agent", false, "run the control plane only, no node")
	f.StringVar(&cfg.NodeIP, "node-ip", "", "IP address of this node (default: --advertise-address)")
	f.StringArrayVar(&cfg.NodeLabels, "node-label", nil, "label for this node, key=value (repeatable)")
	f.StringArrayVar(&cfg.NodeTaints, "node-taint", nil, "taint for this node, key=value:Effect (repeatable)")
	f.StringArrayVar(&cfg.KubeletArgs, "kubelet-arg", nil, "extra kubelet flag, key=value (repeatable)")
	f.StringArrayVar(&cfg.KubeProxyArgs, "kube-proxy-arg", nil, "extra kube-proxy flag, key=value (repeatable)")
	f.BoolVar(&cfg.DisableKubeProxy, "disable-kube-proxy", false, "do not run kube-proxy")
	f.StringVar(&cfg.FlannelBackend, "flannel-backend", "vxlan", "pod network backend: vxlan, host-gw or none (bring your own CNI)")
	f.StringVar(&cfg.FlannelIface, "flannel-iface", "", "network interface flannel uses (default: the node IP's)")
	f.StringVar(&cfg.PauseImage, "pause-image", "berth.local/pause:3.10", "pod sandbox image (imported from the images dir)")
	f.StringVar(&cfg.PrivateRegistry, "private-registry", registries.DefaultFile, "registry mirrors, rewrites, credentials and TLS for this node's containerd")
	f.StringSliceVar(&cfg.Disable, "disable", nil, "packaged add-ons not to deploy (and to remove): "+strings.Join(manifests.Names(), ", "))
	f.StringVar(&cfg.SystemDefaultRegistry, "system-default-registry", "", "registry prefixing the packaged add-ons' images (default: berth.local, the air-gap images)")
	f.StringVar(&cfg.DefaultLocalStoragePath, "default-local-storage-path", "", "where local-path volumes live (default: <data-dir>/storage)")
	f.StringVar(&cfg.DatastoreEndpoint, "datastore-endpoint", "", "external datastore: postgres://user:pw@host:5432/db, mysql://user:pw@tcp(host:3306)/db, https://etcd1:2379[,…] or sqlite://path (default: SQLite in <data-dir>/server/db/state.db)")
	f.StringVar(&cfg.DatastoreCAFile, "datastore-cafile", "", "CA certificate to verify the datastore's TLS certificate")
	f.StringVar(&cfg.DatastoreCertFile, "datastore-certfile", "", "client certificate for the datastore")
	f.StringVar(&cfg.DatastoreKeyFile, "datastore-keyfile", "", "client key for the datastore")
	f.BoolVar(&cfg.ClusterInit, "cluster-init", false, "run embedded etcd (HA-capable) instead of SQLite; an existing SQLite datastore is migrated into it")
	f.BoolVar(&cfg.ClusterReset, "cluster-reset", false, "make this server's embedded etcd a one-member cluster (from its data, or --cluster-reset-restore-path), then exit")
	f.StringVar(&cfg.ClusterResetRestorePath, "cluster-reset-restore-path", "", "etcd snapshot file to restore with --cluster-reset (its .sha256 file is checked)")
	f.IntVar(&cfg.EtcdClientPort, "etcd-client-port", etcd.DefaultClientPort, "embedded etcd client port (loopback and the node IP)")
	f.IntVar(&cfg.EtcdPeerPort, "etcd-peer-port", etcd.DefaultPeerPort, "embedded etcd peer port (the node IP)")
	f.StringVar(&cfg.EtcdSnapshotScheduleCron, "etcd-snapshot-schedule-cron", "0 */12 * * *", "when to take etcd snapshots (cron spec: minute hour day month weekday)")
	f.IntVar(&cfg.EtcdSnapshotRetention, "etcd-snapshot-retention", 5, "number of scheduled snapshots to keep")
	f.StringVar(&cfg.EtcdSnapshotDir, "etcd-snapshot-dir", "", "where snapshots go (default: <data-dir>/server/db/snapshots)")
	f.BoolVar(&cfg.EtcdSnapshotCompress, "etcd-snapshot-compress", false, "zip-compress snapshots")
	f.BoolVar(&cfg.EtcdDisableSnapshots, "etcd-disable-snapshots", false, "take no scheduled snapshots")
	f.BoolVar(&cfg.SecretsEncryption, "secrets-encryption", false, "encrypt Secrets at rest (generates <data-dir>/server/cred/encryption-config.json; see berth secrets-encrypt)")
	f.StringVar(&cfg.SecretsEncryptionProvider, "secrets-encryption-provider", "aescbc", "key type of new secrets encryption keys: aescbc or secretbox")
	f.StringVar(&cfg.SQLiteSync, "sqlite-synchronous", datastore.SyncFull, "SQLite synchronous mode: FULL (an acknowledged write survives a power cut) or NORMAL (faster; the newest writes can be lost)")
	return cmd
}
