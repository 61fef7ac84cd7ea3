// Package server assembles a berth server: PKI, token, kubeconfigs and the
// control-plane components, run by one component manager.
package server

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	"k8s.io/client-go/kubernetes"
	"k8s.io/klog/v2"

	"github.com/berth-io/berth/pkg/component"
	"github.com/berth-io/berth/pkg/control"
	"github.com/berth-io/berth/pkg/datastore"
	"github.com/berth-io/berth/pkg/deploy"
	"github.com/berth-io/berth/pkg/etcd"
	"github.com/berth-io/berth/pkg/join"
	"github.com/berth-io/berth/pkg/kubeconfig"
	"github.com/berth-io/berth/pkg/leader"
	"github.com/berth-io/berth/pkg/lock"
	"github.com/berth-io/berth/pkg/memory"
	"github.com/berth-io/berth/pkg/nodehosts"
	"github.com/berth-io/berth/pkg/pki"
	"github.com/berth-io/berth/pkg/sdnotify"
	"github.com/berth-io/berth/pkg/secretsencrypt"
	"github.com/berth-io/berth/pkg/supervisor"
	"github.com/berth-io/berth/pkg/token"
	"github.com/berth-io/berth/pkg/tunnel"
)

// StopTimeout bounds how long each component may take to stop.
const StopTimeout = 5 * time.Second

// EncryptionReloadInterval is how often the apiserver re-reads its
// encryption config (upstream: a minute), so each step of a key rotation
// takes seconds.
const EncryptionReloadInterval = time.Second

// Server is a prepared berth server.
type Server struct {
	cfg     *Config
	files   *pki.Files
	manager *component.Manager
	unlock  func()
	token   token.Token
	// etcd is set when the server runs embedded etcd (else kine).
	etcd *etcd.Config
	// kine is the datastore component (created in prepare: on an external
	// datastore it starts before the PKI, for the bootstrap data).
	kine *datastore.Kine
	// encryptionConfig is the apiserver's --encryption-provider-config ("" for none).
	encryptionConfig string
}

// Run starts the server and blocks until ctx ends (clean stop: nil) or a
// component fails (its name is in the error).
func Run(ctx context.Context, cfg *Config) error {
	t0 := time.Now()
	memory.Starting()
	s := &Server{cfg: cfg}
	if cfg.ClusterReset {
		return s.clusterReset(ctx)
	}
	if err := s.prepare(ctx); err != nil {
		return err
	}
	defer s.unlock()
	if err := s.manager.Start(ctx); err != nil {
		if ctx.Err() != nil {
			return nil // interrupted while starting
		}
		return err
	}
	if err := s.writeUserKubeconfig(); err != nil {
		_ = s.manager.Stop(StopTimeout)
		return err
	}
	klog.Infof("berth server is ready in %s; admin kubeconfig written to %s (try: berth kubectl get nodes)",
		time.Since(t0).Round(time.Millisecond), cfg.WriteKubeconfig)
	// Start-up is over: give back its garbage, and once more when the
	// controllers' first sync is done.
	memory.Started()
	trimLater := time.AfterFunc(30*time.Second, memory.Trim)
	defer trimLater.Stop()
	// The datastore is stopped last.
	return s.manager.Serve(ctx, "berth server", StopTimeout)
}

func (s *Server) prepare(ctx context.Context) (err error) {
	cfg := s.cfg
	if err := ensureWritableDir(cfg.ServerDir()); err != nil {
		return err
	}
	unlock, err := lock.DataDir(cfg.DataDir)
	if err != nil {
		return err
	}
	s.kine = &datastore.Kine{
		Dir: cfg.ServerDir(), Endpoint: cfg.DatastoreEndpoint, Sync: cfg.SQLiteSync,
		CAFile: cfg.DatastoreCAFile, CertFile: cfg.DatastoreCertFile, KeyFile: cfg.DatastoreKeyFile,
		NodeName: cfg.NodeName,
	}
	s.unlock = func() {
		// An external datastore may have been started early.
		sctx, cancel := context.WithTimeout(context.Background(), StopTimeout)
		defer cancel()
		_ = s.kine.Stop(sctx)
		unlock()
	}
	defer func() {
		if err != nil {
			s.unlock()
		}
	}()
	// The cluster's CAs and keys come first: from --server, or from a
	// shared datastore; then the PKI issues this server's leaves from them.
	if err := s.fetchBootstrap(ctx); err != nil {
		return err
	}
	found, err := s.loadBootstrap(ctx)
	if err != nil {
		return err
	}
	if err := s.ensureCredentials(); err != nil {
		return err
	}
	// Before the bootstrap data is stored: servers sharing a datastore
	// must share the encryption keys too.
	enc := secretsencrypt.Files{Dir: cfg.CredDir()}
	if s.encryptionConfig, err = enc.Ensure(cfg.SecretsEncryption, cfg.encryptionProvider); err != nil {
		return err
	}
	if err := s.chooseDatastore(ctx); err != nil {
		return err
	}
	if s.sharesDatastore() && !found {
		if err := s.storeBootstrap(ctx); err != nil {
			return err
		}
	}
	if err := s.writeAddons(); err != nil {
		return err
	}
	return s.buildComponents()
}

// ensureWritableDir creates dir (0700) and proves it is writable, so a
// read-only or full data dir is reported by path before anything starts.
func ensureWritableDir(dir string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("data dir %s is not usable: %w", dir, err)
	}
	f, err := os.CreateTemp(dir, ".write-test-*")
	if err != nil {
		return fmt.Errorf("data dir %s is not writable: %w", dir, err)
	}
	name := f.Name()
	_, werr := f.Write([]byte("ok"))
	cerr := f.Close()
	os.Remove(name)
	if werr != nil || cerr != nil {
		return fmt.Errorf("data dir %s is not writable: %w", dir, errors.Join(werr, cerr))
	}
	return nil
}

func (s *Server) ensureCredentials() error {
	cfg := s.cfg
	serviceIP, err := cfg.firstServiceIP()
	if err != nil {
		return fmt.Errorf("--service-cidr: %w", err)
	}
	ips := []net.IP{cfg.advertiseIP}
	if bind := net.ParseIP(cfg.BindAddress); bind != nil && !bind.IsUnspecified() {
		ips = append(ips, bind)
	}
	files, err := pki.Ensure(pki.Config{
		Dir:           cfg.TLSDir(),
		ClusterDomain: cfg.ClusterDomain,
		ServiceIP:     serviceIP,
		IPs:           ips,
		SANs:          cfg.TLSSANs,
	})
	if err != nil {
		return fmt.Errorf("certificates: %w", err)
	}
	s.files = files

	secret, err := cfg.tokenSecret()
	if err != nil {
		return err
	}
	caPEM, err := os.ReadFile(files.ServerCA.Cert)
	if err != nil {
		return err
	}
	tokenPath := filepath.Join(cfg.ServerDir(), "token")
	tok, err := token.EnsureServerToken(tokenPath, caPEM, files.ServerCA.Cert, secret)
	if err != nil {
		return err // names the token and the CA already
	}
	s.token = tok
	// node-token is k3s's historic name for the same file.
	nodeToken := filepath.Join(cfg.ServerDir(), "node-token")
	if _, err := os.Lstat(nodeToken); errors.Is(err, os.ErrNotExist) {
		if err := os.Symlink("token", nodeToken); err != nil {
			return fmt.Errorf("link %s: %w", nodeToken, err)
		}
	}

	if err := os.MkdirAll(cfg.CredDir(), 0o700); err != nil {
		return fmt.Errorf("create %s: %w", cfg.CredDir(), err)
	}
	local := "https://" + cfg.apiserverAddress()
	for name, pair := range map[string]pki.Pair{
		"admin.kubeconfig":      files.Admin,
		"controller.kubeconfig": files.ControllerManager,
		"scheduler.kubeconfig":  files.Scheduler,
	} {
		spec := kubeconfig.Spec{Server: local, CAFile: files.ServerCA.Cert, CertFile: pair.Cert, KeyFile: pair.Key}
		if err := kubeconfig.Write(filepath.Join(cfg.CredDir(), name), spec, 0o600); err != nil {
			return err
		}
	}
	return nil
}

// writeUserKubeconfig writes the admin kubeconfig users and `berth kubectl`
// read, pointing at the public port.
func (s *Server) writeUserKubeconfig() error {
	cfg := s.cfg
	host := "127.0.0.1"
	if bind := net.ParseIP(cfg.BindAddress); bind != nil && !bind.IsUnspecified() && !bind.IsLoopback() {
		host = bind.String()
	}
	spec := kubeconfig.Spec{
		Server:   "https://" + net.JoinHostPort(host, strconv.Itoa(cfg.HTTPSListenPort)),
		CAFile:   s.files.ServerCA.Cert,
		CertFile: s.files.Admin.Cert,
		KeyFile:  s.files.Admin.Key,
		Embed:    true,
	}
	if err := os.MkdirAll(filepath.Dir(cfg.WriteKubeconfig), 0o755); err != nil {
		return fmt.Errorf("--write-kubeconfig: %w", err)
	}
	if err := kubeconfig.Write(cfg.WriteKubeconfig, spec, cfg.kubeconfigMode); err != nil {
		return fmt.Errorf("--write-kubeconfig: %w", err)
	}
	return nil
}

func (s *Server) buildComponents() error {
	cfg, f := s.cfg, s.files
	var store []component.Component
	storeArgs := map[string]string{}
	sqlite := false
	if s.etcd != nil {
		store = append(store, &etcd.ETCD{Config: *s.etcd})
		// A server that ran on SQLite moves its keys into etcd before the
		// apiserver starts (a no-op without server/db/state.db).
		store = append(store, &etcd.Migrate{ServerDir: cfg.ServerDir(), TLS: s.etcd.TLS, ClientURL: s.etcd.ClientURL()})
		storeArgs["etcd-servers"] = s.etcd.ClientURL()
		storeArgs["etcd-cafile"] = s.etcd.TLS.ServerCA.Cert
		storeArgs["etcd-certfile"] = s.etcd.TLS.Client.Cert
		storeArgs["etcd-keyfile"] = s.etcd.TLS.Client.Key
	} else {
		store = append(store, s.kine)
		storeArgs = s.kine.APIServerArgs()
		sqlite = s.kine.IsSQLite()
	}
	egressSocket := filepath.Join(cfg.ServerDir(), "egress.sock")
	egressConfig, err := writeEgressConfig(cfg.ServerDir(), egressSocket)
	if err != nil {
		return err
	}

	defaults := s.apiserverDefaults()
	maps.Copy(defaults, storeArgs)
	defaults["egress-selector-config-file"] = egressConfig
	if s.encryptionConfig != "" {
		defaults["encryption-provider-config"] = s.encryptionConfig
		// `berth secrets-encrypt` changes the file while the apiserver runs.
		defaults["encryption-provider-config-automatic-reload"] = "true"
	}
	apiArgs, err := control.Args(defaults, cfg.APIServerArgs)
	if err != nil {
		return fmt.Errorf("--kube-apiserver-arg: %w", err)
	}
	// One SQLite file means one server: leader election is pointless
	// there, and needed on etcd or an external database.
	leaderElect := strconv.FormatBool(!sqlite)
	schedKubeconfig := filepath.Join(cfg.CredDir(), "scheduler.kubeconfig")
	schedArgs, err := control.Args(map[string]string{
		"kubeconfig":                schedKubeconfig,
		"authentication-kubeconfig": schedKubeconfig,
		"authorization-kubeconfig":  schedKubeconfig,
		"bind-address":              "127.0.0.1",
		"secure-port":               "10259",
		"profiling":                 "false",
		"leader-elect":              leaderElect,
	}, cfg.SchedulerArgs)
	if err != nil {
		return fmt.Errorf("--kube-scheduler-arg: %w", err)
	}
	cmKubeconfig := filepath.Join(cfg.CredDir(), "controller.kubeconfig")
	cmArgs, err := control.Args(map[string]string{
		"kubeconfig":                                      cmKubeconfig,
		"authentication-kubeconfig":                       cmKubeconfig,
		"authorization-kubeconfig":                        cmKubeconfig,
		"service-account-private-key-file":                f.ServiceAccountKey,
		"root-ca-file":                                    f.ServerCA.Cert,
		"cluster-signing-kube-apiserver-client-cert-file": f.ClientCA.Cert,
		"cluster-signing-kube-apiserver-client-key-file":  f.ClientCA.Key,
		"cluster-signing-kubelet-client-cert-file":        f.ClientCA.Cert,
		"cluster-signing-kubelet-client-key-file":         f.ClientCA.Key,
		"cluster-signing-kubelet-serving-cert-file":       f.ServerCA.Cert,
		"cluster-signing-kubelet-serving-key-file":        f.ServerCA.Key,
		"cluster-signing-legacy-unknown-cert-file":        f.ServerCA.Cert,
		"cluster-signing-legacy-unknown-key-file":         f.ServerCA.Key,
		"allocate-node-cidrs":                             "true",
		"cluster-cidr":                                    cfg.ClusterCIDR,
		"service-cluster-ip-range":                        cfg.ServiceCIDR,
		"use-service-account-credentials":                 "true",
		"controllers":                                     "*,tokencleaner",
		"configure-cloud-routes":                          "false",
		"bind-address":                                    "127.0.0.1",
		"secure-port":                                     "10257",
		"profiling":                                       "false",
		"leader-elect":                                    leaderElect,
	}, cfg.ControllerManagerArgs)
	if err != nil {
		return fmt.Errorf("--kube-controller-manager-arg: %w", err)
	}

	admin := filepath.Join(cfg.CredDir(), "admin.kubeconfig")
	client := sync.OnceValues(func() (kubernetes.Interface, error) { return control.Clientset(admin) })
	tun := tunnel.NewServer(egressSocket, client)
	joins, err := s.newJoinHandler(client)
	if err != nil {
		return fmt.Errorf("join endpoints: %w", err)
	}
	handlers := joins.routes()
	handlers["GET "+join.EtcdMembersPath] = joins.etcdMembers(s.etcd)
	handlers[join.ConnectPath] = tun.Handler()
	encryption := &secretsencrypt.Manager{
		Files:    secretsencrypt.Files{Dir: cfg.CredDir()},
		Provider: cfg.encryptionProvider,
		NodeName: cfg.NodeName,
		// Rewriting Secrets is one request each: client-go's default 5/s
		// would take minutes for a few hundred; 50/s still leaves the
		// apiserver room on two cores.
		Client: sync.OnceValues(func() (kubernetes.Interface, error) {
			return control.ClientsetWithQPS(admin, 50, 100)
		}),
		ReloadInterval: EncryptionReloadInterval,
	}
	maps.Copy(handlers, s.encryptionRoutes(encryption))

	m := component.NewManager()
	m.Notify = sdnotify.Take()
	m.Add(store...)
	m.Add(
		&control.APIServer{
			Args:       apiArgs,
			Address:    cfg.apiserverAddress(),
			CAFile:     f.ServerCA.Cert,
			ClientCert: f.Admin.Cert,
			ClientKey:  f.Admin.Key,
		},
		// Before the supervisor serves its endpoints, stopped before the apiserver.
		encryption,
		&supervisor.Supervisor{
			Address:       cfg.supervisorAddress(),
			Backend:       "https://" + cfg.apiserverAddress(),
			ServerCAFile:  f.ServerCA.Cert,
			ClientCAFile:  f.ClientCA.Cert,
			CertFile:      f.Serving.Cert,
			KeyFile:       f.Serving.Key,
			ProxyCertFile: f.AuthProxy.Cert,
			ProxyKeyFile:  f.AuthProxy.Key,
			Handlers:      handlers,
		},
		tun,
		&control.RBAC{Kubeconfig: filepath.Join(cfg.CredDir(), "admin.kubeconfig")},
		&control.KubernetesEndpoints{
			Kubeconfig: filepath.Join(cfg.CredDir(), "admin.kubeconfig"),
			IP:         cfg.advertiseIP,
			Port:       int32(cfg.HTTPSListenPort),
		},
	)
	m.Add(s.singletons(admin, client)...)
	m.Add(
		&control.ControllerManager{Args: cmArgs},
		&control.Scheduler{Args: schedArgs},
	)
	if s.etcd != nil && !cfg.EtcdDisableSnapshots {
		m.Add(&etcd.Scheduler{Snapshots: s.snapshots(), Cron: cfg.EtcdSnapshotScheduleCron, Retention: cfg.EtcdSnapshotRetention})
	}
	if !cfg.DisableAgent {
		node, err := s.localAgent()
		if err != nil {
			return fmt.Errorf("this server's node: %w", err)
		}
		// The kubelet starts only once the controller-manager has built its
		// controllers (see control.ControllersBuilt).
		wait := &control.ControllersBuilt{Port: control.SecurePort(cmArgs)}
		for _, c := range node {
			if c.Name() == "kubelet" {
				m.Add(wait)
			}
			m.Add(c)
		}
	}
	s.manager = m
	return nil
}

// singletons are the controllers that write cluster state once per
// cluster. With one server (SQLite) they simply run; on a datastore several
// servers share, they run under leader election on the Lease
// kube-system/berth, on one server at a time.
func (s *Server) singletons(admin string, client func() (kubernetes.Interface, error)) []component.Component {
	cfg := s.cfg
	newControllers := func() []component.Component {
		return []component.Component{
			&deploy.Controller{Dir: cfg.ManifestsDir(), Kubeconfig: admin},
			// Runs whether or not CoreDNS is packaged: a user's own coredns
			// ConfigMap gets the node entries too (as in k3s).
			&nodehosts.Controller{Client: client},
		}
	}
	if !s.sharesDatastore() {
		return newControllers()
	}
	return []component.Component{&leader.Elected{Lease: "berth", Identity: leader.Identity(cfg.NodeName), Client: client, New: newControllers}}
}

// apiserverDefaults are the kube-apiserver arguments of a careful
// distribution: no anonymous access, Node+RBAC, NodeRestriction, loopback
// only, and the request-header front proxy the supervisor relies on.
func (s *Server) apiserverDefaults() map[string]string {
	cfg, f := s.cfg, s.files
	issuer := "https://kubernetes.default.svc." + cfg.ClusterDomain
	return map[string]string{
		"advertise-address": cfg.advertiseIP.String(),
		// URLs the apiserver hands out (the OIDC discovery document's
		// jwks_uri, /api's serverAddressByClientCIDRs) would otherwise name
		// its own loopback-only port; clients reach it through the public one.
		"external-hostname":                  net.JoinHostPort(cfg.advertiseIP.String(), strconv.Itoa(cfg.HTTPSListenPort)),
		"bind-address":                       "127.0.0.1",
		"secure-port":                        strconv.Itoa(cfg.APIServerPort),
		"storage-backend":                    "etcd3",
		"service-cluster-ip-range":           cfg.ServiceCIDR,
		"service-node-port-range":            cfg.ServiceNodePortRange,
		"allow-privileged":                   "true",
		"anonymous-auth":                     "false",
		"authorization-mode":                 "Node,RBAC",
		"enable-admission-plugins":           "NodeRestriction",
		"enable-bootstrap-token-auth":        "true",
		"profiling":                          "false",
		"client-ca-file":                     f.ClientCA.Cert,
		"tls-cert-file":                      f.Serving.Cert,
		"tls-private-key-file":               f.Serving.Key,
		"cert-dir":                           filepath.Join(cfg.TLSDir(), "temporary-certs"),
		"kubelet-certificate-authority":      f.ServerCA.Cert,
		"kubelet-client-certificate":         f.KubeletClient.Cert,
		"kubelet-client-key":                 f.KubeletClient.Key,
		"kubelet-preferred-address-types":    "InternalIP,ExternalIP,Hostname",
		"proxy-client-cert-file":             f.AuthProxy.Cert,
		"proxy-client-key-file":              f.AuthProxy.Key,
		"requestheader-client-ca-file":       f.RequestHeaderCA.Cert,
		"requestheader-allowed-names":        "system:auth-proxy",
		"requestheader-username-headers":     "X-Remote-User",
		"requestheader-group-headers":        "X-Remote-Group",
		"requestheader-extra-headers-prefix": "X-Remote-Extra-",
		"service-account-issuer":             issuer,
		"api-audiences":                      issuer + ",berth",
		"service-account-key-file":           f.ServiceAccountPub,
		"service-account-signing-key-file":   f.ServiceAccountKey,
		// The apiserver is on loopback; berth points the kubernetes
		// Service at the public port itself (control.KubernetesEndpoints).
		"endpoint-reconciler-type": "none",
	}
}
