// Package etcd runs embedded etcd (go.etcd.io/etcd/server/v3/embed) in the
// berth server process: the datastore of an HA-capable server, with its own
// CAs, tuned for small disks. It also holds what works on that etcd:
// migration from SQLite, snapshots, and cluster reset/restore.
package etcd

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"go.etcd.io/etcd/client/pkg/v3/transport"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"k8s.io/klog/v2"

	"github.com/berth-io/berth/pkg/atomicfile"
	"github.com/berth-io/berth/pkg/pki"
)

// Default ports, as etcd's own.
const (
	DefaultClientPort = 2379
	DefaultPeerPort   = 2380
)

// Tuning for edge hosts (small, slow disks; see docs/architecture.md).
const (
	// heartbeat and election: k3s's values. A slow SD card or an fsync
	// stall of a second or two must not make members start elections.
	tickMs     = 500
	electionMs = 5000
	// quotaBackendBytes caps the bbolt file; etcd raises a NOSPACE alarm
	// (writes refused, reads served) before it can fill a small disk.
	quotaBackendBytes = 2 << 30
	// snapshotCount: raft entries between etcd's internal snapshots. Lower
	// than etcd 3.5's 100000 so memory and WAL stay small.
	snapshotCount = 10000
	// maxWALs/maxSnaps: WAL segments are preallocated at 64 MB each; etcd's
	// default of 5 retained segments is 320 MB of a small disk.
	maxWALs  = 2
	maxSnaps = 2
	// Periodic auto-compaction bounds the history even while no apiserver
	// is compacting (the apiserver compacts every 5 minutes when it runs).
	autoCompactionMode      = "periodic"
	autoCompactionRetention = "30m"
	// bootstrapDefragMB: on start, defragment when at least this much of
	// the file is free pages, giving disk space back after large deletes.
	bootstrapDefragMB = 64
	// slowWarning: etcd warns about every apply or request slower than
	// 100 ms; on an SD card that is most of them, and the log drowns.
	slowWarning = time.Second
)

// DBDir is <server-dir>/db/etcd, etcd's data dir.
func DBDir(serverDir string) string { return filepath.Join(serverDir, "db", "etcd") }

// IsMember tells whether serverDir holds etcd member data.
func IsMember(serverDir string) bool {
	fi, err := os.Stat(filepath.Join(DBDir(serverDir), "member", "wal"))
	return err == nil && fi.IsDir()
}

// Config says where and how the member runs.
type Config struct {
	// ServerDir is <data-dir>/server.
	ServerDir string
	// NodeName is the Kubernetes node name; the member is <node>-<8 hex>.
	NodeName string
	// NodeIP is where the member listens (besides loopback) and what it
	// advertises to peers and clients.
	NodeIP     net.IP
	ClientPort int
	PeerPort   int
	TLS        *pki.EtcdFiles
	// ForceNewCluster turns existing member data into a one-member cluster
	// (--cluster-reset).
	ForceNewCluster bool
	// JoinURLs are client URLs of an existing cluster's members. A server
	// without member data joins that cluster as a learner and is promoted
	// once caught up; with member data it just starts.
	JoinURLs []string
	Debug    bool
}

// DBDir is the member's data dir.
func (c *Config) DBDir() string { return DBDir(c.ServerDir) }

func (c *Config) nameFile() string { return filepath.Join(c.DBDir(), "name") }

// ClientURL is the loopback client URL local clients (apiserver, berth's
// tools) use.
func (c *Config) ClientURL() string {
	return "https://" + net.JoinHostPort("127.0.0.1", strconv.Itoa(c.ClientPort))
}

// PeerURL is what this member advertises to its peers.
func (c *Config) PeerURL() string {
	return "https://" + net.JoinHostPort(c.NodeIP.String(), strconv.Itoa(c.PeerPort))
}

func (c *Config) advertiseClientURL() string {
	return "https://" + net.JoinHostPort(c.NodeIP.String(), strconv.Itoa(c.ClientPort))
}

// MemberName returns the persisted member name, making one the first time.
// The random suffix keeps a re-installed node with the same hostname from
// colliding with its old, not yet removed, member.
func (c *Config) MemberName() (string, error) {
	if b, err := os.ReadFile(c.nameFile()); err == nil {
		if n := strings.TrimSpace(string(b)); n != "" {
			return n, nil
		}
	} else if !errors.Is(err, os.ErrNotExist) {
		return "", fmt.Errorf("read etcd member name: %w", err)
	}
	suffix := make([]byte, 4)
	if _, err := rand.Read(suffix); err != nil {
		return "", err
	}
	name := c.NodeName + "-" + hex.EncodeToString(suffix)
	if err := os.MkdirAll(c.DBDir(), 0o700); err != nil {
		return "", fmt.Errorf("create %s: %w", c.DBDir(), err)
	}
	if err := atomicfile.Write(c.nameFile(), []byte(name+"\n"), 0o600); err != nil {
		return "", fmt.Errorf("write etcd member name: %w", err)
	}
	return name, nil
}

// embedConfig is the embed.Config for this member. initialCluster is
// empty for a new cluster (this member alone).
func (c *Config) embedConfig(name, initialCluster string) (*embed.Config, error) {
	ec := embed.NewConfig()
	ec.Name = name
	ec.Dir = c.DBDir()
	urls := func(ss ...string) ([]url.URL, error) {
		var out []url.URL
		for _, s := range ss {
			u, err := url.Parse(s)
			if err != nil {
				return nil, err
			}
			out = append(out, *u)
		}
		return out, nil
	}
	listenClient := []string{c.ClientURL()}
	if !c.NodeIP.IsLoopback() {
		listenClient = append(listenClient, c.advertiseClientURL())
	}
	var err error
	if ec.ListenClientUrls, err = urls(listenClient...); err != nil {
		return nil, err
	}
	if ec.AdvertiseClientUrls, err = urls(c.advertiseClientURL()); err != nil {
		return nil, err
	}
	if ec.ListenPeerUrls, err = urls(c.PeerURL()); err != nil {
		return nil, err
	}
	if ec.AdvertisePeerUrls, err = urls(c.PeerURL()); err != nil {
		return nil, err
	}
	ec.InitialCluster = name + "=" + c.PeerURL()
	ec.ClusterState = embed.ClusterStateFlagNew
	if initialCluster != "" {
		ec.InitialCluster = initialCluster
		ec.ClusterState = embed.ClusterStateFlagExisting
	}
	ec.ForceNewCluster = c.ForceNewCluster
	ec.ClientTLSInfo = transport.TLSInfo{
		CertFile: c.TLS.Server.Cert, KeyFile: c.TLS.Server.Key,
		TrustedCAFile: c.TLS.ServerCA.Cert, ClientCertAuth: true,
	}
	ec.PeerTLSInfo = transport.TLSInfo{
		CertFile: c.TLS.Peer.Cert, KeyFile: c.TLS.Peer.Key,
		TrustedCAFile: c.TLS.PeerCA.Cert, ClientCertAuth: true,
	}
	ec.TickMs, ec.ElectionMs = tickMs, electionMs
	ec.QuotaBackendBytes = quotaBackendBytes
	ec.SnapshotCount = snapshotCount
	ec.MaxWalFiles, ec.MaxSnapFiles = maxWALs, maxSnaps
	ec.AutoCompactionMode, ec.AutoCompactionRetention = autoCompactionMode, autoCompactionRetention
	ec.BootstrapDefragThresholdMegabytes = bootstrapDefragMB
	ec.WarningApplyDuration, ec.WarningUnaryRequestDuration = slowWarning, slowWarning
	// Only gRPC clients (the apiserver, berth) talk to it: no JSON gateway.
	ec.EnableGRPCGateway = false
	ec.ListenMetricsUrls = nil
	return ec, nil
}

// Logger is etcd's zap logger: warnings and errors only (info under
// --debug), since etcd logs dozens of lines per start at info.
func Logger(debug bool) *zap.Logger {
	lg, _ := newLogger(debug)
	return lg
}

// newLogger also returns the logger's level, which Stop raises: etcd's
// Close logs every listener it closes as a failed serve, with a stack.
func newLogger(debug bool) (*zap.Logger, zap.AtomicLevel) {
	level := zapcore.WarnLevel
	if debug {
		level = zapcore.InfoLevel
	}
	atom := zap.NewAtomicLevelAt(level)
	zc := zap.NewProductionConfig()
	zc.Level = atom
	zc.DisableStacktrace = true
	zc.Encoding = "console"
	zc.EncoderConfig.EncodeTime = zapcore.ISO8601TimeEncoder
	zc.Sampling = nil
	zc.OutputPaths, zc.ErrorOutputPaths = []string{"stderr"}, []string{"stderr"}
	lg, err := zc.Build(zap.Fields(zap.String("component", "etcd")))
	if err != nil {
		return zap.NewNop(), atom
	}
	return lg, atom
}

// ETCD is the embedded etcd component.
type ETCD struct {
	Config
	etcd     *embed.Etcd
	joined   bool // added as a learner by this start
	logLevel zap.AtomicLevel
	failed   chan error
	stopping chan struct{}
}

func (e *ETCD) Name() string { return "etcd" }

// Prepare checks the ports are free, so a second etcd (or a leftover
// process) is reported before anything starts.
func (e *ETCD) Prepare(context.Context) error {
	if e.TLS == nil || e.NodeIP == nil {
		return errors.New("etcd: TLS files and node IP are required")
	}
	addrs := []string{
		net.JoinHostPort("127.0.0.1", strconv.Itoa(e.ClientPort)),
		net.JoinHostPort(e.NodeIP.String(), strconv.Itoa(e.PeerPort)),
	}
	if !e.NodeIP.IsLoopback() {
		addrs = append(addrs, net.JoinHostPort(e.NodeIP.String(), strconv.Itoa(e.ClientPort)))
	}
	for _, a := range addrs {
		l, err := net.Listen("tcp", a)
		if err != nil {
			return fmt.Errorf("etcd cannot listen on %s (another etcd or berth running? use --etcd-client-port/--etcd-peer-port): %w", a, err)
		}
		l.Close()
	}
	if err := os.MkdirAll(filepath.Dir(e.DBDir()), 0o700); err != nil {
		return fmt.Errorf("create %s: %w", filepath.Dir(e.DBDir()), err)
	}
	return nil
}

func (e *ETCD) Start(ctx context.Context) error {
	name, err := e.MemberName()
	if err != nil {
		return err
	}
	initialCluster := ""
	if len(e.JoinURLs) > 0 && !IsMember(e.ServerDir) {
		if initialCluster, err = e.addLearner(ctx, name); err != nil {
			return err
		}
		e.joined = true
	}
	ec, err := e.embedConfig(name, initialCluster)
	if err != nil {
		return fmt.Errorf("etcd configuration: %w", err)
	}
	var lg *zap.Logger
	lg, e.logLevel = newLogger(e.Debug)
	ec.ZapLoggerBuilder = embed.NewZapLoggerBuilder(lg)
	if e.ForceNewCluster {
		klog.Warningf("etcd: forcing a new one-member cluster from the data in %s (--cluster-reset)", e.DBDir())
	}
	etcd, err := embed.StartEtcd(ec)
	if err != nil {
		return fmt.Errorf("start etcd member %s in %s: %w", name, e.DBDir(), err)
	}
	e.etcd = etcd
	e.failed = make(chan error, 1)
	e.stopping = make(chan struct{})
	go func() {
		var err error
		select {
		case err = <-etcd.Err():
		case <-etcd.Server.StopNotify():
			err = errors.New("etcd server stopped")
		case <-e.stopping:
			return
		}
		select {
		case <-e.stopping: // berth asked for it: not a failure
		default:
			if err == nil {
				err = errors.New("etcd server stopped")
			}
			e.failed <- fmt.Errorf("etcd: %w", err)
		}
	}()
	klog.Infof("etcd member %s started: data %s, clients %s, peers %s", name, e.DBDir(), e.ClientURL(), e.PeerURL())
	return nil
}

// watchQuorum logs when the member loses and regains a leader: without a
// majority of members etcd refuses every write (the apiserver's requests
// time out), and the operator needs to know why.
func (e *ETCD) watchQuorum() {
	hadLeader := true
	for {
		select {
		case <-e.stopping:
			return
		case <-time.After(2 * time.Second):
		}
		leader := e.etcd.Server.Leader() != 0
		if leader == hadLeader {
			continue
		}
		hadLeader = leader
		n := 0
		for _, m := range e.etcd.Server.Cluster().Members() {
			if !m.IsLearner {
				n++
			}
		}
		if leader {
			klog.Infof("etcd: quorum restored, member %x is the leader; writes are accepted again", uint64(e.etcd.Server.Leader()))
		} else {
			klog.Errorf("etcd: no leader: quorum lost (fewer than %d of the %d voting members reachable); writes are refused until a majority of the servers is back", n/2+1, n)
		}
	}
}

// Ready waits for the member to have joined a raft cluster with a leader
// and answer a linearizable read over TLS, as the apiserver will.
func (e *ETCD) Ready(ctx context.Context) error {
	select {
	case <-e.etcd.Server.ReadyNotify():
	case err := <-e.failed:
		return err
	case <-ctx.Done():
		return fmt.Errorf("etcd not ready: %w", ctx.Err())
	}
	// A learner serves no linearizable reads: it must be promoted first.
	// Right after a join the local view may not show the learner flag yet,
	// so a member that just joined always asks (a voter gets "not a
	// learner").
	if e.joined || e.etcd.Server.IsLearner() {
		if err := e.promote(ctx); err != nil {
			return err
		}
	}
	c, err := NewClient(ctx, e.TLS, e.ClientURL())
	if err != nil {
		return err
	}
	defer c.Close()
	for {
		rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		_, err := c.Get(rctx, "health")
		cancel()
		if err == nil {
			go e.watchQuorum()
			return nil
		}
		klog.Infof("etcd: waiting for a linearizable read: %v", err)
		select {
		case <-ctx.Done():
			return fmt.Errorf("etcd not ready: %w", err)
		case <-time.After(time.Second):
		}
	}
}

func (e *ETCD) Failed() <-chan error { return e.failed }

func (e *ETCD) Stop(ctx context.Context) error {
	if e.etcd == nil {
		return nil
	}
	close(e.stopping)
	e.logLevel.SetLevel(zapcore.FatalLevel)
	done := make(chan struct{})
	go func() { e.etcd.Close(); close(done) }()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("etcd did not stop: %w", ctx.Err())
	}
}

// NewClient connects to etcd at endpoints with the etcd client certificate.
func NewClient(ctx context.Context, files *pki.EtcdFiles, endpoints ...string) (*clientv3.Client, error) {
	tlsInfo := transport.TLSInfo{
		CertFile: files.Client.Cert, KeyFile: files.Client.Key, TrustedCAFile: files.ServerCA.Cert,
	}
	tc, err := tlsInfo.ClientConfig()
	if err != nil {
		return nil, fmt.Errorf("etcd client TLS (%s): %w", files.Client.Cert, err)
	}
	c, err := clientv3.New(clientv3.Config{
		Endpoints:   endpoints,
		TLS:         tc,
		DialTimeout: 10 * time.Second,
		Context:     ctx,
		Logger:      zap.NewNop(),
	})
	if err != nil {
		return nil, fmt.Errorf("etcd client for %s: %w", strings.Join(endpoints, ","), err)
	}
	return c, nil
}
