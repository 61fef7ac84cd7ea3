package server

import (
	"context"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"strings"

	"k8s.io/klog/v2"

	"github.com/berth-io/berth/pkg/etcd"
	"github.com/berth-io/berth/pkg/join"
	"github.com/berth-io/berth/pkg/lock"
	"github.com/berth-io/berth/pkg/pki"
)

// chooseDatastore decides between kine and embedded etcd, as k3s does:
// etcd with --cluster-init or when the data dir already holds an etcd
// member; kine (SQLite or --datastore-endpoint) otherwise.
func (s *Server) chooseDatastore(ctx context.Context) error {
	cfg := s.cfg
	member := etcd.IsMember(cfg.ServerDir())
	// A cluster on embedded etcd hands its etcd CAs to joining servers
	// (bootstrap data); a cluster on kine has none.
	_, err := os.Stat(pki.EtcdFilesIn(cfg.TLSDir()).ServerCA.Cert)
	joining := cfg.Server != "" && cfg.DatastoreEndpoint == "" && err == nil
	if !cfg.ClusterInit && !member && !joining {
		return nil
	}
	dbDir := etcd.DBDir(cfg.ServerDir())
	if cfg.DatastoreEndpoint != "" {
		return fmt.Errorf("%s holds embedded etcd data, so --datastore-endpoint cannot be used; move that directory aside to use an external datastore", dbDir)
	}
	switch {
	case cfg.ClusterInit && member:
		klog.Infof("--cluster-init: this server is already an etcd member (data in %s); nothing to initialise, starting it", dbDir)
	case member:
		klog.Infof("datastore: embedded etcd (member data in %s)", dbDir)
	case joining:
		klog.Infof("joining the embedded etcd cluster of %s (data in %s)", cfg.Server, dbDir)
	default:
		klog.Infof("--cluster-init: creating a new embedded etcd cluster in %s", dbDir)
	}
	ec, err := s.etcdConfig()
	if err != nil {
		return err
	}
	if joining && !member {
		if ec.JoinURLs, err = s.etcdJoinURLs(ctx); err != nil {
			return err
		}
	}
	s.etcd = ec
	etcd.ClearResetFlag(cfg.ServerDir())
	return nil
}

// etcdConfig makes sure the etcd PKI exists and describes this member.
func (s *Server) etcdConfig() (*etcd.Config, error) {
	cfg := s.cfg
	nodeIP := cfg.advertiseIP
	if cfg.NodeIP != "" {
		nodeIP = net.ParseIP(cfg.NodeIP)
	}
	files, err := pki.EnsureEtcd(pki.EtcdConfig{
		TLSDir:   cfg.TLSDir(),
		NodeName: cfg.NodeName,
		IPs:      []net.IP{nodeIP, cfg.advertiseIP},
	})
	if err != nil {
		return nil, fmt.Errorf("etcd certificates: %w", err)
	}
	return &etcd.Config{
		ServerDir:  cfg.ServerDir(),
		NodeName:   cfg.NodeName,
		NodeIP:     nodeIP,
		ClientPort: cfg.EtcdClientPort,
		PeerPort:   cfg.EtcdPeerPort,
		TLS:        files,
		Debug:      cfg.Debug,
	}, nil
}

// snapshots is where this server's etcd snapshots go.
func (s *Server) snapshots() *etcd.Snapshots {
	return &etcd.Snapshots{
		Dir:      s.cfg.EtcdSnapshotDir,
		NodeName: s.cfg.NodeName,
		Compress: s.cfg.EtcdSnapshotCompress,
		TLS:      s.etcd.TLS,
		Endpoint: s.etcd.ClientURL(),
	}
}

// clusterReset is `berth server --cluster-reset [--cluster-reset-restore-path]`:
// etcd alone is started as a one-member cluster (from a snapshot if given),
// checked and stopped, then berth prints what to do next and exits, as
// k3s does.
func (s *Server) clusterReset(ctx context.Context) error {
	cfg := s.cfg
	if err := ensureWritableDir(cfg.ServerDir()); err != nil {
		return err
	}
	unlock, err := lock.DataDir(cfg.DataDir)
	if err != nil {
		return err
	}
	defer unlock()
	if cfg.ClusterResetRestorePath == "" && !etcd.IsMember(cfg.ServerDir()) {
		return errors.New("--cluster-reset: this server has no embedded etcd data (" + etcd.DBDir(cfg.ServerDir()) + "); nothing to reset")
	}
	if err := s.ensureCredentials(); err != nil {
		return err
	}
	ec, err := s.etcdConfig()
	if err != nil {
		return err
	}
	if err := etcd.Reset(ctx, *ec, cfg.ClusterResetRestorePath); err != nil {
		return fmt.Errorf("--cluster-reset: %w", err)
	}
	what := "Managed etcd cluster membership has been reset to this one server"
	if cfg.ClusterResetRestorePath != "" {
		what = "The etcd snapshot " + cfg.ClusterResetRestorePath + " has been restored as a one-server cluster"
	}
	klog.Infof(`%s.
Next steps:
  1. Remove --cluster-reset and --cluster-reset-restore-path (flags, BERTH_CLUSTER_RESET* variables,
     config file keys) and start "berth server" again normally on this server.
  2. On every other server of this cluster: stop berth, back up and delete %s/server/db
     (on that server), then start it again with --server pointing at this server to rejoin.`,
		what, cfg.DataDir)
	return nil
}

// etcdJoinURLs asks --server for its etcd members (server-token
// authenticated, the CA pinned as for the bootstrap data) and returns the
// client URLs of the started ones, so no port or address is assumed.
func (s *Server) etcdJoinURLs(ctx context.Context) ([]string, error) {
	tok, _, err := s.serverToken()
	if err != nil {
		return nil, err
	}
	c, err := join.Connect(ctx, s.cfg.Server, tok)
	if err != nil {
		return nil, fmt.Errorf("join %s: %w", s.cfg.Server, err)
	}
	body, err := c.EtcdMembers(ctx)
	if err != nil {
		return nil, fmt.Errorf("join %s: etcd members: %w", s.cfg.Server, err)
	}
	var members []etcd.Member
	if err := json.Unmarshal(body, &members); err != nil {
		return nil, fmt.Errorf("join %s: etcd members: %w", s.cfg.Server, err)
	}
	var urls []string
	for _, m := range members {
		if m.Name != "" && !m.Learner {
			urls = append(urls, m.ClientURLs...)
		}
	}
	if len(urls) == 0 {
		return nil, fmt.Errorf("join %s: its etcd cluster lists no started voting member", s.cfg.Server)
	}
	klog.Infof("etcd members of %s: %s", s.cfg.Server, strings.Join(urls, ", "))
	return urls, nil
}

// etcdMembers serves this server's etcd member list to a joining server;
// like the bootstrap data, only the server token opens it.
func (j *joinHandler) etcdMembers(ec *etcd.Config) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		user, pass, ok := r.BasicAuth()
		okUser := subtle.ConstantTimeCompare([]byte(user), []byte("server")) == 1
		okPass := subtle.ConstantTimeCompare([]byte(pass), []byte(j.token.Password)) == 1
		if !ok || !okUser || !okPass {
			http.Error(w, "token rejected: joining as a server needs this cluster's server token (<data-dir>/server/token on an existing server)", http.StatusUnauthorized)
			return
		}
		if ec == nil {
			http.Error(w, "this server does not run embedded etcd (start the first server with --cluster-init to join servers to it)", http.StatusNotFound)
			return
		}
		members, err := etcd.Members(r.Context(), ec.TLS, ec.ClientURL())
		if err != nil {
			httpError(w, err)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(members)
	}
}
