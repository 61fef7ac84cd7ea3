package pki

import (
	"errors"
	"net"
	"path/filepath"
	"strings"
	"time"
)

// EtcdFiles are the embedded etcd's own CAs and certificates in
// <tls-dir>/etcd, with k3s's file names. etcd has CAs separate from the
// Kubernetes ones so that no Kubernetes client certificate (an admin's, a
// kubelet's) can ever open the datastore directly.
type EtcdFiles struct {
	ServerCA, PeerCA Pair
	// Server is etcd's client-facing serving certificate (server and client
	// usage, as etcd also dials itself for its gRPC gateway).
	Server Pair
	// Client is the certificate the apiserver and berth's own tools
	// (snapshots, migration, membership) present to etcd.
	Client Pair
	// Peer is the member-to-member certificate (server and client usage).
	Peer Pair
}

// EtcdFilesIn returns the etcd PKI paths under tlsDir (…/server/tls).
func EtcdFilesIn(tlsDir string) *EtcdFiles {
	dir := filepath.Join(tlsDir, "etcd")
	return &EtcdFiles{
		ServerCA: pair(dir, "server-ca"),
		PeerCA:   pair(dir, "peer-ca"),
		Server:   pair(dir, "server-client"),
		Client:   pair(dir, "client"),
		Peer:     pair(dir, "peer-server-client"),
	}
}

// EtcdConfig describes the etcd PKI to maintain.
type EtcdConfig struct {
	TLSDir   string   // <data-dir>/server/tls
	NodeName string   // in the serving and peer SANs
	IPs      []net.IP // node addresses the client and peer ports listen on
	Now      func() time.Time
}

// EnsureEtcd creates or renews the etcd PKI with the same rules as Ensure:
// CAs are never replaced, leaves are re-issued near expiry or when their
// names change.
func EnsureEtcd(cfg EtcdConfig) (*EtcdFiles, error) {
	if cfg.TLSDir == "" {
		return nil, errors.New("pki: EtcdConfig.TLSDir is empty")
	}
	now := time.Now()
	if cfg.Now != nil {
		now = cfg.Now()
	}
	files := EtcdFilesIn(cfg.TLSDir)
	if err := ensureDir(filepath.Dir(files.ServerCA.Cert)); err != nil {
		return nil, err
	}
	var serverCA, peerCA *CA
	err := parallel(
		func() (err error) {
			serverCA, err = ensureCA("etcd server", "berth-etcd-server-ca", files.ServerCA, now)
			return err
		},
		func() (err error) {
			peerCA, err = ensureCA("etcd peer", "berth-etcd-peer-ca", files.PeerCA, now)
			return err
		},
	)
	if err != nil {
		return nil, err
	}
	ips := dedupIPs(append([]net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback}, cfg.IPs...))
	dns := []string{"localhost"}
	if n := strings.ToLower(cfg.NodeName); n != "" && n != "localhost" {
		dns = append(dns, n)
	}
	leaves := []leaf{
		{"etcd serving", serverCA, files.Server, LeafSpec{CommonName: "etcd-server", DNSNames: dns, IPs: ips, Server: true, Client: true}},
		{"etcd client", serverCA, files.Client, LeafSpec{CommonName: "etcd-client", Client: true}},
		{"etcd peer", peerCA, files.Peer, LeafSpec{CommonName: "etcd-peer", DNSNames: dns, IPs: ips, Server: true, Client: true}},
	}
	if err := ensureLeaves(leaves, now); err != nil {
		return nil, err
	}
	return files, nil
}
