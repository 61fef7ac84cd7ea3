package bootstrap

import (
	"context"
	"errors"
	"fmt"
	"time"

	"k8s.io/klog/v2"

	"github.com/berth-io/berth/pkg/join"
	"github.com/berth-io/berth/pkg/token"
)

// Fetch gets the bootstrap data from a running server of the cluster
// (--server), as an agent joins: the server's CA is first checked against
// the token's hash (pkg/join), and only then is the token sent. A refusal
// (wrong token, CA mismatch) returns at once as a *join.Rejected; an
// unreachable server is retried with back-off until ctx ends.
func Fetch(ctx context.Context, serverURL string, tok token.Token) (*Data, error) {
	if tok.Password == "" {
		return nil, &join.Rejected{Msg: "joining a server with --server needs --token: the cluster's server token (<data-dir>/server/token on an existing server)"}
	}
	if tok.CAHash == "" {
		klog.Warningf("the token has no CA hash (K10…::): %s cannot be verified before the token is sent; use the full token from an existing server's <data-dir>/server/token", serverURL)
	}
	delay := time.Second
	for {
		d, err := fetchOnce(ctx, serverURL, tok)
		if err == nil {
			return d, nil
		}
		if join.IsRejected(err) || ctx.Err() != nil {
			return nil, err
		}
		klog.Warningf("waiting for the server %s to hand out the cluster's bootstrap data (retry in %s): %v", serverURL, delay, err)
		select {
		case <-ctx.Done():
			return nil, errors.Join(ctx.Err(), err)
		case <-time.After(delay):
		}
		delay = min(delay*2, 15*time.Second)
	}
}

func fetchOnce(ctx context.Context, serverURL string, tok token.Token) (*Data, error) {
	c, err := join.Connect(ctx, serverURL, tok)
	if err != nil {
		return nil, err
	}
	body, err := c.ServerBootstrap(ctx)
	if err != nil {
		return nil, err
	}
	d, err := Unmarshal(body)
	if err != nil {
		return nil, &join.Rejected{Msg: fmt.Sprintf("%s: %v", serverURL, err)}
	}
	// The CA the data carries must be the one the token pinned.
	if tok.CAHash != "" {
		if got := token.CAHash(d.Files["tls/server-ca.crt"]); got != tok.CAHash {
			return nil, &join.Rejected{Msg: fmt.Sprintf("%s handed out a server CA with hash %s, the token expects %s; nothing was written", serverURL, got, tok.CAHash)}
		}
	}
	return d, nil
}
