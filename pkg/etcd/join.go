package etcd

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"k8s.io/klog/v2"

	"github.com/berth-io/berth/pkg/pki"
)

// DuplicateMemberError: another member of the cluster belongs to a server
// with this node name.
type DuplicateMemberError struct {
	Node, Member, PeerURLs string
}

func (e *DuplicateMemberError) Error() string {
	return fmt.Sprintf("a server named %q is already a member of the etcd cluster (member %s, peers %s): "+
		"give this server another --node-name; or, if that member is this server's old installation, remove it "+
		"on a running server (etcdctl with the certificates in server/tls/etcd: member remove <its id>) and start again",
		e.Node, e.Member, e.PeerURLs)
}

// nodeOf strips the member name's random suffix: "<node>-<8 hex>" → node.
func nodeOf(member string) string {
	if i := strings.LastIndexByte(member, '-'); i > 0 && len(member)-i-1 == 8 {
		return member[:i]
	}
	return member
}

// addLearner makes this member a learner of the cluster reachable at
// c.JoinURLs and returns the initial-cluster value to start it with. A
// learner added earlier for this very member (same peer URL, never
// started: a join interrupted by a crash) is reused, not added twice.
func (c *Config) addLearner(ctx context.Context, name string) (string, error) {
	cli, err := NewClient(ctx, c.TLS, c.JoinURLs...)
	if err != nil {
		return "", err
	}
	defer cli.Close()
	lctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	list, err := cli.MemberList(lctx)
	if err != nil {
		return "", fmt.Errorf("list the etcd members at %s: %w", strings.Join(c.JoinURLs, ","), err)
	}
	peer := c.PeerURL()
	members := list.Members
	var self *etcdserverpb.Member
	for _, m := range members {
		if slices.Contains(m.PeerURLs, peer) {
			if m.Name != "" && m.Name != name {
				return "", fmt.Errorf("the etcd cluster already has a member %s at this server's peer URL %s: remove it first, or give this server another address", m.Name, peer)
			}
			self = m
			continue
		}
		if m.Name != "" && m.Name != name && nodeOf(m.Name) == c.NodeName {
			return "", &DuplicateMemberError{Node: c.NodeName, Member: m.Name, PeerURLs: strings.Join(m.PeerURLs, ",")}
		}
	}
	if self == nil {
		actx, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		resp, err := cli.MemberAddAsLearner(actx, []string{peer})
		if err != nil {
			return "", fmt.Errorf("add this server (%s) to the etcd cluster as a learner: %w", peer, err)
		}
		klog.Infof("etcd: added member %x (%s) as a learner", resp.Member.ID, peer)
		members = resp.Members
	} else {
		klog.Infof("etcd: reusing learner %x added for %s by an earlier, interrupted join", self.ID, peer)
	}
	var parts []string
	for _, m := range members {
		n := m.Name
		if slices.Contains(m.PeerURLs, peer) {
			n = name
		}
		if n == "" {
			continue // another member still joining: not part of our start
		}
		for _, u := range m.PeerURLs {
			parts = append(parts, n+"="+u)
		}
	}
	return strings.Join(parts, ","), nil
}

// promote retries MemberPromote through the cluster until this learner has
// caught up with the leader and is a voting member.
func (e *ETCD) promote(ctx context.Context) error {
	id := uint64(e.etcd.Server.MemberID())
	// Every member's client URL as this member knows them, besides the
	// server it joined through: that one may be the member that is down.
	endpoints := slices.Clone(e.JoinURLs)
	for _, m := range e.etcd.Server.Cluster().Members() {
		if uint64(m.ID) != id {
			for _, u := range m.ClientURLs {
				if !slices.Contains(endpoints, u) {
					endpoints = append(endpoints, u)
				}
			}
		}
	}
	cli, err := NewClient(ctx, e.TLS, endpoints...)
	if err != nil {
		return err
	}
	defer cli.Close()
	for attempt := 0; ; attempt++ {
		pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		_, err := cli.MemberPromote(pctx, id)
		cancel()
		switch {
		case err == nil:
			klog.Infof("etcd: this member (%x) is promoted to a voting member", id)
			return nil
		case errors.Is(err, rpctypes.ErrMemberNotLearner):
			return nil // promoted already (e.g. by an earlier start)
		case errors.Is(err, rpctypes.ErrMemberLearnerNotReady):
			if attempt%10 == 0 {
				klog.Infof("etcd: learner %x is catching up with the leader; will promote it when it is in sync", id)
			}
		default:
			klog.Warningf("etcd: promote learner %x: %v", id, err)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("etcd learner %x not promoted: %w", id, ctx.Err())
		case err := <-e.failed:
			return err
		case <-time.After(time.Second):
		}
	}
}

// Member is one etcd member as a joining server needs to know it.
type Member struct {
	Name       string   `json:"name"`
	ID         string   `json:"id"`
	PeerURLs   []string `json:"peerURLs"`
	ClientURLs []string `json:"clientURLs"`
	Learner    bool     `json:"learner"`
}

// Members lists the cluster's members through the member at endpoint.
func Members(ctx context.Context, files *pki.EtcdFiles, endpoint string) ([]Member, error) {
	cli, err := NewClient(ctx, files, endpoint)
	if err != nil {
		return nil, err
	}
	defer cli.Close()
	lctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	list, err := cli.MemberList(lctx)
	if err != nil {
		return nil, fmt.Errorf("list etcd members: %w", err)
	}
	out := make([]Member, 0, len(list.Members))
	for _, m := range list.Members {
		out = append(out, Member{Name: m.Name, ID: fmt.Sprintf("%x", m.ID), PeerURLs: m.PeerURLs, ClientURLs: m.ClientURLs, Learner: m.IsLearner})
	}
	return out, nil
}
