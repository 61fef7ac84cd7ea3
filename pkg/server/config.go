package server

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	utilnet "k8s.io/apimachinery/pkg/util/net"
	netutils "k8s.io/utils/net"

	"github.com/berth-io/berth/manifests"
	"github.com/berth-io/berth/pkg/etcd"
	"github.com/berth-io/berth/pkg/secretsencrypt"
)

// Config is the validated server configuration. Fields mirror the flags of
// `berth server` (k3s's names); Validate fills the derived ones.
type Config struct {
	DataDir               string
	ClusterCIDR           string
	ServiceCIDR           string
	ClusterDNS            string
	ClusterDomain         string
	ServiceNodePortRange  string
	HTTPSListenPort       int
	APIServerPort         int
	BindAddress           string
	AdvertiseAddress      string
	TLSSANs               []string
	NodeName              string
	Token                 string
	TokenFile             string
	WriteKubeconfig       string
	WriteKubeconfigMode   string
	APIServerArgs         []string
	SchedulerArgs         []string
	ControllerManagerArgs []string
	DisableAgent          bool
	DatastoreEndpoint     string
	// TLS to the external datastore (--datastore-cafile/-certfile/-keyfile).
	DatastoreCAFile, DatastoreCertFile, DatastoreKeyFile string
	// Server is --server: an existing server of the cluster to join (its
	// bootstrap data is fetched before the PKI is set up).
	Server string
	// SQLiteSync is FULL (default, durable) or NORMAL.
	SQLiteSync string

	// Embedded etcd (--cluster-init, or member data in server/db/etcd).
	ClusterInit             bool
	ClusterReset            bool
	ClusterResetRestorePath string
	EtcdClientPort          int
	EtcdPeerPort            int
	// Snapshots (etcd only).
	EtcdSnapshotScheduleCron string
	EtcdSnapshotRetention    int
	EtcdSnapshotDir          string
	EtcdSnapshotCompress     bool
	EtcdDisableSnapshots     bool
	Debug                    bool
	// Disable lists packaged add-ons not to deploy (and to remove).
	Disable []string
	// SystemDefaultRegistry prefixes the packaged add-ons' images.
	SystemDefaultRegistry string
	// DefaultLocalStoragePath is where local-path volumes live.
	DefaultLocalStoragePath string
	// SecretsEncryption generates an encryption config for Secrets at rest
	// (an existing one is always used); SecretsEncryptionProvider is the
	// key type of new keys: aescbc or secretbox.
	SecretsEncryption         bool
	SecretsEncryptionProvider string

	// The server's own node (unless DisableAgent).
	NodeIP           string
	NodeLabels       []string
	NodeTaints       []string
	KubeletArgs      []string
	KubeProxyArgs    []string
	DisableKubeProxy bool
	FlannelBackend   string
	FlannelIface     string
	PauseImage       string
	PrivateRegistry  string

	// Derived by Validate.
	encryptionProvider     secretsencrypt.Provider
	clusterNet, serviceNet *net.IPNet
	advertiseIP            net.IP
	kubeconfigMode         os.FileMode
}

// Validate checks the configuration and derives the values the components
// need. Each error names the flag to fix.
func (c *Config) Validate() error {
	var errs []error
	var err error
	if c.DataDir == "" {
		errs = append(errs, errors.New("--data-dir must not be empty"))
	} else if c.DataDir, err = filepath.Abs(c.DataDir); err != nil {
		errs = append(errs, fmt.Errorf("--data-dir: %w", err))
	}
	if _, c.clusterNet, err = net.ParseCIDR(c.ClusterCIDR); err != nil {
		errs = append(errs, fmt.Errorf("--cluster-cidr %q is not a valid CIDR (example: 10.42.0.0/16)", c.ClusterCIDR))
	}
	if _, c.serviceNet, err = net.ParseCIDR(c.ServiceCIDR); err != nil {
		errs = append(errs, fmt.Errorf("--service-cidr %q is not a valid CIDR (example: 10.43.0.0/16)", c.ServiceCIDR))
	}
	if c.clusterNet != nil && c.serviceNet != nil &&
		(c.clusterNet.Contains(c.serviceNet.IP) || c.serviceNet.Contains(c.clusterNet.IP)) {
		errs = append(errs, fmt.Errorf("--cluster-cidr %s and --service-cidr %s overlap; pod and service addresses must be distinct", c.ClusterCIDR, c.ServiceCIDR))
	}
	if dns := net.ParseIP(c.ClusterDNS); dns == nil {
		errs = append(errs, fmt.Errorf("--cluster-dns %q is not an IP address", c.ClusterDNS))
	} else if c.serviceNet != nil && !c.serviceNet.Contains(dns) {
		errs = append(errs, fmt.Errorf("--cluster-dns %s is outside --service-cidr %s", c.ClusterDNS, c.ServiceCIDR))
	}
	if c.ClusterDomain == "" || strings.ContainsAny(c.ClusterDomain, " /") {
		errs = append(errs, fmt.Errorf("--cluster-domain %q is not a valid domain", c.ClusterDomain))
	}
	if _, err := utilnet.ParsePortRange(c.ServiceNodePortRange); err != nil {
		errs = append(errs, fmt.Errorf("--service-node-port-range %q: %v", c.ServiceNodePortRange, err))
	}
	errs = append(errs, portPair("--https-listen-port", c.HTTPSListenPort, "--apiserver-port", c.APIServerPort)...)
	errs = append(errs, c.validateEtcd()...)
	if net.ParseIP(c.BindAddress) == nil {
		errs = append(errs, fmt.Errorf("--bind-address %q is not an IP address", c.BindAddress))
	}
	if c.AdvertiseAddress != "" {
		if c.advertiseIP = net.ParseIP(c.AdvertiseAddress); c.advertiseIP == nil {
			errs = append(errs, fmt.Errorf("--advertise-address %q is not an IP address", c.AdvertiseAddress))
		}
	} else if ip, err := utilnet.ChooseHostInterface(); err == nil {
		c.advertiseIP = ip
	} else {
		errs = append(errs, fmt.Errorf("cannot find this host's IP address (%v); set --advertise-address", err))
	}
	if c.advertiseIP != nil && c.advertiseIP.IsLoopback() {
		errs = append(errs, fmt.Errorf("--advertise-address %s is a loopback address; the apiserver needs an address other nodes and pods can reach", c.advertiseIP))
	}
	if c.NodeIP != "" && net.ParseIP(c.NodeIP) == nil {
		errs = append(errs, fmt.Errorf("--node-ip %q is not an IP address", c.NodeIP))
	}
	switch c.FlannelBackend {
	case "", "vxlan", "host-gw", "none":
	default:
		errs = append(errs, fmt.Errorf("--flannel-backend %q: want vxlan, host-gw or none", c.FlannelBackend))
	}
	for _, d := range c.Disable {
		if !slices.Contains(manifests.Names(), d) {
			errs = append(errs, fmt.Errorf("--disable %q: not a packaged add-on; valid names: %s", d, strings.Join(manifests.Names(), ", ")))
		}
	}
	if c.SecretsEncryptionProvider == "" {
		c.SecretsEncryptionProvider = string(secretsencrypt.AESCBC)
	}
	if c.encryptionProvider, err = secretsencrypt.ParseProvider(c.SecretsEncryptionProvider); err != nil {
		errs = append(errs, fmt.Errorf("--secrets-encryption-provider: %w", err))
	}
	if c.Token != "" && c.TokenFile != "" {
		errs = append(errs, errors.New("--token and --token-file are mutually exclusive"))
	}
	errs = append(errs, c.validateDatastore()...)
	mode, err := strconv.ParseUint(strings.TrimPrefix(c.WriteKubeconfigMode, "0o"), 8, 32)
	if err != nil || mode > 0o777 {
		errs = append(errs, fmt.Errorf("--write-kubeconfig-mode %q is not an octal file mode (example: 0600)", c.WriteKubeconfigMode))
	}
	c.kubeconfigMode = os.FileMode(mode)
	if c.NodeName == "" {
		if h, err := os.Hostname(); err == nil {
			c.NodeName = strings.ToLower(h)
		}
	}
	if c.EtcdSnapshotDir == "" && c.DataDir != "" {
		c.EtcdSnapshotDir = etcd.DefaultSnapshotDir(c.ServerDir())
	} else if c.EtcdSnapshotDir != "" {
		if c.EtcdSnapshotDir, err = filepath.Abs(c.EtcdSnapshotDir); err != nil {
			errs = append(errs, fmt.Errorf("--etcd-snapshot-dir: %w", err))
		}
	}
	if c.DefaultLocalStoragePath == "" && c.DataDir != "" {
		c.DefaultLocalStoragePath = filepath.Join(c.DataDir, "storage")
	}
	return errors.Join(errs...)
}

// validateEtcd checks the embedded-etcd flags.
func (c *Config) validateEtcd() []error {
	var errs []error
	if c.ClusterInit && c.DatastoreEndpoint != "" {
		errs = append(errs, errors.New("--cluster-init (embedded etcd) and --datastore-endpoint (kine) are mutually exclusive"))
	}
	if c.ClusterReset && c.DatastoreEndpoint != "" {
		errs = append(errs, errors.New("--cluster-reset works on embedded etcd, not on --datastore-endpoint"))
	}
	if c.ClusterResetRestorePath != "" && !c.ClusterReset {
		errs = append(errs, errors.New("--cluster-reset-restore-path needs --cluster-reset"))
	}
	errs = append(errs, portPair("--etcd-client-port", c.EtcdClientPort, "--etcd-peer-port", c.EtcdPeerPort)...)
	if !c.EtcdDisableSnapshots {
		if _, err := etcd.ParseSchedule(c.EtcdSnapshotScheduleCron); err != nil {
			errs = append(errs, fmt.Errorf("--etcd-snapshot-schedule-cron %q is not a cron spec (example: \"0 */12 * * *\"): %v", c.EtcdSnapshotScheduleCron, err))
		}
	}
	if c.EtcdSnapshotRetention < 1 {
		errs = append(errs, fmt.Errorf("--etcd-snapshot-retention %d: keep at least 1 snapshot", c.EtcdSnapshotRetention))
	}
	return errs
}

// portPair checks two ports one component listens on: each valid, and not
// the same.
func portPair(flagA string, a int, flagB string, b int) []error {
	var errs []error
	for _, p := range []struct {
		flag string
		v    int
	}{{flagA, a}, {flagB, b}} {
		if p.v < 1 || p.v > 65535 {
			errs = append(errs, fmt.Errorf("%s %d is not a valid port", p.flag, p.v))
		}
	}
	if a == b {
		errs = append(errs, fmt.Errorf("%s and %s are both %d", flagA, flagB, a))
	}
	return errs
}

// validateDatastore checks --server and the --datastore-* flags.
func (c *Config) validateDatastore() []error {
	var errs []error
	if c.Server != "" {
		if u, err := url.Parse(c.Server); err != nil || u.Scheme != "https" || u.Host == "" {
			errs = append(errs, fmt.Errorf("--server %q is not an https://HOST:PORT URL", c.Server))
		}
		if c.Token == "" && c.TokenFile == "" {
			errs = append(errs, errors.New("--server needs --token (or --token-file): the cluster's server token, <data-dir>/server/token on an existing server"))
		}
	}
	if ep := c.DatastoreEndpoint; ep != "" {
		scheme, _, ok := strings.Cut(ep, "://")
		switch {
		case !ok:
			// Not quoted: without a scheme a password cannot be found to mask.
			errs = append(errs, errors.New("--datastore-endpoint is not a URL: want postgres://, mysql://, https:// (etcd) or sqlite://"))
		case !slices.Contains([]string{"postgres", "postgresql", "mysql", "http", "https", "sqlite"}, scheme):
			errs = append(errs, fmt.Errorf("--datastore-endpoint scheme %q: want postgres://, mysql://, https:// (etcd) or sqlite://", scheme))
		}
	}
	for flag, path := range map[string]string{"--datastore-cafile": c.DatastoreCAFile, "--datastore-certfile": c.DatastoreCertFile, "--datastore-keyfile": c.DatastoreKeyFile} {
		if path == "" {
			continue
		}
		if c.DatastoreEndpoint == "" {
			errs = append(errs, fmt.Errorf("%s needs --datastore-endpoint", flag))
		} else if _, err := os.Stat(path); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", flag, err))
		}
	}
	if (c.DatastoreCertFile == "") != (c.DatastoreKeyFile == "") {
		errs = append(errs, errors.New("--datastore-certfile and --datastore-keyfile go together"))
	}
	return errs
}

// tokenSecret is what the user gave as --token or in --token-file ("" if
// neither).
func (c *Config) tokenSecret() (string, error) {
	if c.TokenFile == "" {
		return c.Token, nil
	}
	b, err := os.ReadFile(c.TokenFile)
	if err != nil {
		return "", fmt.Errorf("--token-file: %w", err)
	}
	s := strings.TrimSpace(string(b))
	if s == "" {
		return "", fmt.Errorf("--token-file %s is empty", c.TokenFile)
	}
	return s, nil
}

// ServerDir is <data-dir>/server.
func (c *Config) ServerDir() string { return filepath.Join(c.DataDir, "server") }

// TLSDir is where the PKI lives.
func (c *Config) TLSDir() string { return filepath.Join(c.ServerDir(), "tls") }

// CredDir holds the components' kubeconfigs.
func (c *Config) CredDir() string { return filepath.Join(c.ServerDir(), "cred") }

// firstServiceIP is the kubernetes Service's ClusterIP.
func (c *Config) firstServiceIP() (net.IP, error) {
	return netutils.GetIndexedIP(c.serviceNet, 1)
}

// supervisorAddress is where the public listener binds.
func (c *Config) supervisorAddress() string {
	return net.JoinHostPort(c.BindAddress, strconv.Itoa(c.HTTPSListenPort))
}

// apiserverAddress is the apiserver's loopback address.
func (c *Config) apiserverAddress() string {
	return net.JoinHostPort("127.0.0.1", strconv.Itoa(c.APIServerPort))
}
