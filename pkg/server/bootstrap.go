package server

import (
	"context"
	"crypto/subtle"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"k8s.io/klog/v2"

	"github.com/berth-io/berth/pkg/bootstrap"
	"github.com/berth-io/berth/pkg/datastore"
	"github.com/berth-io/berth/pkg/etcd"
	"github.com/berth-io/berth/pkg/token"
)

// serverToken is the server token the user gave (--token/--token-file), or
// failing that the one this server stored on an earlier start; ok is false
// when there is neither (a new cluster: the token is made with the PKI).
// A bootstrap-token-shaped server token is used whole as the password, as
// token.EnsureServerToken does.
func (s *Server) serverToken() (tok token.Token, ok bool, err error) {
	secret, err := s.cfg.tokenSecret()
	if err != nil {
		return token.Token{}, false, err
	}
	if secret == "" {
		b, err := os.ReadFile(filepath.Join(s.cfg.ServerDir(), "token"))
		if errors.Is(err, os.ErrNotExist) {
			return token.Token{}, false, nil
		}
		if err != nil {
			return token.Token{}, false, fmt.Errorf("read server token: %w", err)
		}
		secret = string(b)
	}
	tok, err = token.Parse(secret)
	if err != nil {
		return token.Token{}, false, fmt.Errorf("--token: %w", err)
	}
	if tok.Bootstrap {
		tok = token.Token{CAHash: tok.CAHash, User: "server", Password: tok.BootstrapToken()}
	}
	if tok.User == "" {
		tok.User = "server"
	}
	return tok, true, nil
}

// fetchBootstrap joins the cluster of --server: it fetches the shared CAs and
// keys (CA pinned by the token) and writes them before the PKI is set up, so
// this server issues its own leaves from the cluster's CAs. A wrong token or
// a data dir of another cluster is an error and nothing is written.
func (s *Server) fetchBootstrap(ctx context.Context) error {
	if s.cfg.Server == "" {
		return nil
	}
	if etcd.IsMember(s.cfg.ServerDir()) {
		// Joined before: the CAs are here and etcd holds the state. Waiting
		// for --server would deadlock a cluster restarting after quorum
		// loss when that server is the one still down.
		klog.Infof("already an etcd member of the cluster: starting from this server's own bootstrap data (not fetching it from %s)", s.cfg.Server)
		return nil
	}
	tok, _, err := s.serverToken()
	if err != nil {
		return err
	}
	klog.Infof("joining the cluster of %s: fetching its bootstrap data", s.cfg.Server)
	if !s.sharesDatastore() {
		// Embedded etcd joins build on this; on SQLite the state is not shared.
		klog.Warningf("--server without a shared datastore: this server gets the cluster's CAs and keys but keeps its own SQLite state; for one cluster on several servers give every server the same --datastore-endpoint")
	}
	d, err := bootstrap.Fetch(ctx, s.cfg.Server, tok)
	if err != nil {
		return fmt.Errorf("join %s as a server: %w", s.cfg.Server, err)
	}
	written, err := d.Write(s.cfg.ServerDir(), bootstrap.Files)
	if err != nil {
		return fmt.Errorf("join %s as a server: %w", s.cfg.Server, err)
	}
	if len(written) > 0 {
		klog.Infof("wrote the cluster's bootstrap data from %s: %s", s.cfg.Server, strings.Join(written, ", "))
	}
	return nil
}

// sharesDatastore tells whether other servers may share this server's
// datastore, so the bootstrap data is kept there.
func (s *Server) sharesDatastore() bool {
	return s.kine != nil && !s.kine.IsSQLite()
}

// loadBootstrap runs before the PKI on an external datastore: it starts the
// datastore early, and if the datastore holds bootstrap data for this
// token it writes it here, so a second server given the same token and
// --datastore-endpoint joins without --server. It reports whether data was
// found (else storeBootstrap saves ours once the PKI exists).
func (s *Server) loadBootstrap(ctx context.Context) (found bool, err error) {
	if !s.sharesDatastore() {
		// One server: nothing sealed anywhere needs the previous token.
		if err := os.Remove(filepath.Join(s.cfg.ServerDir(), token.PreviousFile)); err != nil && !errors.Is(err, os.ErrNotExist) {
			return false, err
		}
		return false, nil
	}
	if err := s.kine.Prepare(ctx); err != nil {
		return false, err
	}
	if err := s.kine.Start(ctx); err != nil {
		return false, err
	}
	c, err := s.kine.Client()
	if err != nil {
		return false, err
	}
	defer c.Close()
	ep := datastore.Redact(s.cfg.DatastoreEndpoint)
	tctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	tok, ok, err := s.serverToken()
	if err != nil {
		return false, err
	}
	if !ok {
		// A new server without a token cannot open any cluster's data.
		if n, err := bootstrap.Count(tctx, c); err != nil {
			return false, fmt.Errorf("datastore %s: %w", ep, err)
		} else if n > 0 {
			return false, fmt.Errorf("datastore %s: %w", ep, bootstrap.ErrOtherToken)
		}
		return false, nil
	}
	d, err := bootstrap.Load(tctx, c, tok.Password)
	if errors.Is(err, bootstrap.ErrOtherToken) {
		d, err = s.resealRotated(tctx, c, tok.Password)
	}
	switch {
	case errors.Is(err, bootstrap.ErrWrongToken):
		return false, fmt.Errorf("datastore %s: the bootstrap data stored for this cluster cannot be decrypted with the given token: use the cluster's server token (<data-dir>/server/token on one of its servers)", ep)
	case err != nil:
		return false, fmt.Errorf("datastore %s: %w", ep, err)
	case d == nil:
		return false, nil
	}
	written, err := d.Write(s.cfg.ServerDir(), bootstrap.Files)
	if err != nil {
		return false, fmt.Errorf("datastore %s: %w", ep, err)
	}
	if len(written) > 0 {
		klog.Infof("wrote the cluster's bootstrap data from the datastore %s: %s", ep, strings.Join(written, ", "))
	}
	// Sealed with the current token (by this or another server): the
	// previous token is no longer needed.
	if err := os.Remove(filepath.Join(s.cfg.ServerDir(), token.PreviousFile)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return false, err
	}
	return true, nil
}

// resealRotated handles a restart after `berth token rotate`: the data is
// still sealed with the previous token (kept in token.previous by the
// rotation). It is re-sealed with the new token, the old copy deleted, and
// token.previous removed. Without a previous token the data belongs to
// another cluster: ErrOtherToken.
func (s *Server) resealRotated(ctx context.Context, kv clientv3.KV, password string) (*bootstrap.Data, error) {
	prevPath := filepath.Join(s.cfg.ServerDir(), token.PreviousFile)
	raw, err := os.ReadFile(prevPath)
	if errors.Is(err, os.ErrNotExist) {
		return nil, bootstrap.ErrOtherToken
	}
	if err != nil {
		return nil, err
	}
	prev, err := token.Parse(string(raw))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", prevPath, err)
	}
	d, err := bootstrap.Load(ctx, kv, prev.Password)
	if err != nil || d == nil {
		return nil, bootstrap.ErrOtherToken
	}
	if err := bootstrap.Save(ctx, kv, password, d); err != nil && !errors.Is(err, bootstrap.ErrExists) {
		return nil, err
	}
	if err := bootstrap.Delete(ctx, kv, prev.Password); err != nil {
		return nil, err
	}
	if err := os.Remove(prevPath); err != nil {
		return nil, err
	}
	klog.Infof("re-sealed the cluster's bootstrap data in the datastore with the rotated server token")
	return d, nil
}

// storeBootstrap saves this server's bootstrap data in the shared datastore
// when it held none for the token (the first server of the cluster).
func (s *Server) storeBootstrap(ctx context.Context) error {
	c, err := s.kine.Client()
	if err != nil {
		return err
	}
	defer c.Close()
	return s.saveBootstrap(ctx, c)
}

func (s *Server) saveBootstrap(ctx context.Context, kv clientv3.KV) error {
	d, err := bootstrap.Read(s.cfg.ServerDir(), bootstrap.Files)
	if err != nil {
		return err
	}
	tctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	ep := datastore.Redact(s.kine.EtcdServers())
	if s.cfg.DatastoreEndpoint != "" {
		ep = datastore.Redact(s.cfg.DatastoreEndpoint)
	}
	err = bootstrap.Save(tctx, kv, s.token.Password, d)
	if errors.Is(err, bootstrap.ErrExists) {
		return fmt.Errorf("datastore %s: %w while this one made its CAs; stop this server, move %s aside and start it again to use the stored ones",
			ep, err, s.cfg.TLSDir())
	}
	if err != nil {
		return fmt.Errorf("datastore %s: %w", ep, err)
	}
	klog.Infof("stored this cluster's bootstrap data (encrypted with the server token) in the datastore %s", ep)
	return nil
}

// serverBootstrap serves the bootstrap data to a joining server. Only the
// server token opens it (basic auth "server" and its password): a
// bootstrap token or a node certificate joins agents, never servers.
func (j *joinHandler) serverBootstrap(w http.ResponseWriter, r *http.Request) {
	user, pass, ok := r.BasicAuth()
	okUser := subtle.ConstantTimeCompare([]byte(user), []byte("server")) == 1
	okPass := subtle.ConstantTimeCompare([]byte(pass), []byte(j.token.Password)) == 1
	if !ok || !okUser || !okPass {
		klog.Infof("join: refused the server bootstrap data to %s: wrong or no server token", r.RemoteAddr)
		http.Error(w, "token rejected: joining as a server needs this cluster's server token (<data-dir>/server/token on an existing server)", http.StatusUnauthorized)
		return
	}
	d, err := bootstrap.Read(j.cfg.ServerDir(), bootstrap.Files)
	if err != nil {
		httpError(w, err)
		return
	}
	b, err := d.Marshal()
	if err != nil {
		httpError(w, err)
		return
	}
	klog.Infof("join: handed the server bootstrap data to %s", r.RemoteAddr)
	w.Header().Set("Content-Type", "application/json")
	_, _ = w.Write(b)
}
