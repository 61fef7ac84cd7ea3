package datastore

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net/url"
	"strings"
	"time"

	"github.com/go-sql-driver/mysql"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"k8s.io/klog/v2"
)

// CheckTimeout bounds how long Prepare waits for an unreachable external
// database before giving up (a service manager restarts berth anyway).
const CheckTimeout = 30 * time.Second

// checkDatabase connects to an external PostgreSQL or MySQL once before kine
// does: kine retries every failure (a wrong password too) for five minutes,
// logging each, and then reports no endpoint. berth instead fails at once
// on a refused login and after CheckTimeout on an unreachable server, with
// the endpoint in the error and its password masked.
func (k *Kine) checkDatabase(ctx context.Context) error {
	scheme, _, _ := strings.Cut(k.Endpoint, "://")
	var try func(context.Context) error
	switch scheme {
	case "postgres", "postgresql":
		try = k.pingPostgres
	case "mysql":
		try = k.pingMySQL
	default:
		return nil
	}
	ep := Redact(k.Endpoint)
	ctx, cancel := context.WithTimeout(ctx, CheckTimeout)
	defer cancel()
	var last error
	for attempt := 0; ; attempt++ {
		actx, acancel := context.WithTimeout(ctx, 5*time.Second)
		err := scrub(try(actx), k.Endpoint)
		acancel()
		if err == nil {
			return nil
		}
		if refused(err) {
			return fmt.Errorf("datastore %s refused the login: %w (check the user and password in --datastore-endpoint)", ep, err)
		}
		if ctx.Err() != nil {
			// An attempt cut short by the deadline says less than the one
			// before it (connection refused, no route …).
			if last == nil {
				last = err
			}
			return fmt.Errorf("datastore %s is not reachable after %s: %w (is the database running, and are host and port right?)", ep, CheckTimeout, last)
		}
		last = err
		if attempt == 0 {
			klog.Warningf("waiting for the datastore %s: %v", ep, err)
		}
		select {
		case <-ctx.Done():
		case <-time.After(time.Second):
		}
	}
}

// refused tells a login refusal (retrying cannot help) from a network error.
func refused(err error) bool {
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		// invalid_authorization_specification, invalid_password
		return pe.Code == "28000" || pe.Code == "28P01"
	}
	var me *mysql.MySQLError
	if errors.As(err, &me) {
		// ER_ACCESS_DENIED_ERROR, ER_DBACCESS_DENIED_ERROR
		return me.Number == 1045 || me.Number == 1044
	}
	return false
}

// pingPostgres logs in to the server's "postgres" database (the cluster's
// own database may not exist yet: kine creates it), with the TLS settings
// kine would use.
func (k *Kine) pingPostgres(ctx context.Context) error {
	u, err := url.Parse(k.Endpoint)
	if err != nil {
		return errors.New("the endpoint is not a valid URL")
	}
	q := u.Query()
	mode := ""
	for param, file := range map[string]string{"sslcert": k.CertFile, "sslkey": k.KeyFile, "sslrootcert": k.CAFile} {
		if file != "" && q.Get(param) == "" {
			q.Set(param, file)
			mode = "verify-full"
		}
	}
	if mode != "" && q.Get("sslmode") == "" {
		q.Set("sslmode", mode)
	}
	u.RawQuery = q.Encode()
	u.Path = "/postgres"
	cfg, err := pgx.ParseConfig(u.String())
	if err != nil {
		return errors.New("the endpoint is not a valid PostgreSQL URL")
	}
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return err
	}
	return conn.Close(ctx)
}

// pingMySQL logs in without selecting a database (kine creates it).
func (k *Kine) pingMySQL(ctx context.Context) error {
	dsn := strings.TrimPrefix(k.Endpoint, "mysql://")
	cfg, err := mysql.ParseDSN(dsn)
	if err != nil {
		return errors.New("the endpoint is not a valid MySQL DSN (mysql://user:password@tcp(host:3306)/database)")
	}
	cfg.DBName = ""
	if k.CAFile != "" || k.CertFile != "" || k.KeyFile != "" {
		tc, err := k.backendTLS().ClientConfig()
		if err != nil {
			return fmt.Errorf("datastore TLS: %w", err)
		}
		tc.MinVersion = tls.VersionTLS12
		cfg.TLS = tc
	}
	conn, err := mysql.NewConnector(cfg)
	if err != nil {
		return err
	}
	c, err := conn.Connect(ctx)
	if err != nil {
		return err
	}
	return c.Close()
}
