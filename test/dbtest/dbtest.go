// Package dbtest runs a real PostgreSQL or MariaDB server from Debian's
// packages (`make deps`) for tests and benchmarks: on loopback, on a free
// port, with its data and socket in a private temporary directory, as the
// packages' own system user, without systemd. Stop removes everything.
package dbtest

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/go-sql-driver/mysql"
	"github.com/jackc/pgx/v5"
)

// ErrMissing says the database binaries are not installed.
var ErrMissing = errors.New("not installed")

// Required reports whether a missing database is a failure rather than a
// reason to skip: the Makefile sets BERTH_DB_REQUIRED, after `make deps`
// installed both, so CI cannot pass without running these tests.
func Required() bool { return os.Getenv("BERTH_DB_REQUIRED") != "" }

// DB is a running database server.
type DB struct {
	// Kind is "postgres" or "mariadb".
	Kind string
	// Endpoint is the --datastore-endpoint for database name db, user
	// User and password Password.
	User, Password string
	Port           int
	Dir            string
	// Log is the server's own log file.
	Log string
	// Host is the address it listens on (127.0.0.1 unless StartPostgresOn).
	Host string

	cmd  *exec.Cmd
	done chan struct{}
}

// Endpoint is the kine URL for database name db.
func (d *DB) Endpoint(db string) string {
	return d.EndpointWithPassword(db, d.Password)
}

// EndpointWithPassword is Endpoint with another password (bad-input tests).
func (d *DB) EndpointWithPassword(db, password string) string {
	if d.Kind == "postgres" {
		return fmt.Sprintf("postgres://%s:%s@%s/%s?sslmode=disable", d.User, password, net.JoinHostPort(d.Host, strconv.Itoa(d.Port)), db)
	}
	return fmt.Sprintf("mysql://%s:%s@tcp(%s)/%s", d.User, password, net.JoinHostPort(d.Host, strconv.Itoa(d.Port)), db)
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

func lookupIDs(name string) (*syscall.Credential, error) {
	u, err := user.Lookup(name)
	if err != nil {
		return nil, fmt.Errorf("system user %s: %w", name, err)
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	return &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}, nil
}

// privateDir makes a 0700 directory under the system temp dir owned by the
// database's user (a test's own TempDir is not reachable for it).
func privateDir(prefix string, cred *syscall.Credential) (string, error) {
	dir, err := os.MkdirTemp("", prefix)
	if err != nil {
		return "", err
	}
	if err := os.Chown(dir, int(cred.Uid), int(cred.Gid)); err != nil {
		os.RemoveAll(dir)
		return "", err
	}
	return dir, nil
}

func run(cred *syscall.Credential, name string, args ...string) error {
	cmd := exec.Command(name, args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred, Pdeathsig: syscall.SIGKILL}
	cmd.Dir = "/"
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s: %w: %s", filepath.Base(name), err, lastLines(string(out), 10))
	}
	return nil
}

func lastLines(s string, n int) string {
	l := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(l) > n {
		l = l[len(l)-n:]
	}
	return strings.Join(l, "\n")
}

// PostgresBin finds Debian's PostgreSQL server binaries.
func PostgresBin() (string, error) {
	m, _ := filepath.Glob("/usr/lib/postgresql/*/bin/postgres")
	if len(m) == 0 {
		return "", fmt.Errorf("PostgreSQL %w (/usr/lib/postgresql/*/bin/postgres; `make deps` installs the postgresql package)", ErrMissing)
	}
	return filepath.Dir(m[len(m)-1]), nil
}

// StartPostgres initialises a cluster in a private directory and runs
// postgres on 127.0.0.1 with password (SCRAM) authentication.
func StartPostgres(password string) (*DB, error) { return StartPostgresOn("127.0.0.1", password) }

// StartPostgresOn is StartPostgres listening on host (e.g. a test bridge's
// address, for nodes in network namespaces), accepting password logins
// from any address that reaches it.
func StartPostgresOn(host, password string) (*DB, error) {
	bin, err := PostgresBin()
	if err != nil {
		return nil, err
	}
	cred, err := lookupIDs("postgres")
	if err != nil {
		return nil, err
	}
	dir, err := privateDir("berth-pg-", cred)
	if err != nil {
		return nil, err
	}
	d := &DB{Kind: "postgres", User: "postgres", Password: password, Dir: dir, Log: filepath.Join(dir, "postgres.log"), Host: host}
	fail := func(err error) (*DB, error) { d.Stop(); return nil, err }
	pwfile := filepath.Join(dir, "pw")
	if err := os.WriteFile(pwfile, []byte(password+"\n"), 0o600); err != nil {
		return fail(err)
	}
	os.Chown(pwfile, int(cred.Uid), int(cred.Gid))
	data := filepath.Join(dir, "data")
	if err := run(cred, filepath.Join(bin, "initdb"), "-D", data, "-U", "postgres", "--pwfile", pwfile,
		"--auth=scram-sha-256", "--no-sync", "-E", "UTF8", "--locale=C"); err != nil {
		return fail(err)
	}
	os.Remove(pwfile)
	if host != "127.0.0.1" {
		hba, err := os.OpenFile(filepath.Join(data, "pg_hba.conf"), os.O_APPEND|os.O_WRONLY, 0)
		if err != nil {
			return fail(err)
		}
		_, err = hba.WriteString("host all all 0.0.0.0/0 scram-sha-256\n")
		hba.Close()
		if err != nil {
			return fail(err)
		}
	}
	if d.Port, err = freePort(); err != nil {
		return fail(err)
	}
	if err := d.start(cred, filepath.Join(bin, "postgres"), "-D", data, "-k", dir, "-h", host, "-p", strconv.Itoa(d.Port)); err != nil {
		return fail(err)
	}
	return d, d.wait(func(ctx context.Context) error {
		c, err := pgx.Connect(ctx, d.Endpoint("postgres"))
		if err != nil {
			return err
		}
		return c.Close(ctx)
	})
}

// StartMariaDB installs a system database in a private directory and runs
// mariadbd on 127.0.0.1; an init file creates user "berth" with password.
func StartMariaDB(password string) (*DB, error) {
	mariadbd, err := exec.LookPath("mariadbd")
	if err != nil {
		mariadbd = "/usr/sbin/mariadbd"
		if _, err := os.Stat(mariadbd); err != nil {
			return nil, fmt.Errorf("MariaDB %w (mariadbd; `make deps` installs the mariadb-server package)", ErrMissing)
		}
	}
	install, err := exec.LookPath("mariadb-install-db")
	if err != nil {
		return nil, fmt.Errorf("MariaDB %w (mariadb-install-db; `make deps` installs the mariadb-server package)", ErrMissing)
	}
	cred, err := lookupIDs("mysql")
	if err != nil {
		return nil, err
	}
	dir, err := privateDir("berth-mariadb-", cred)
	if err != nil {
		return nil, err
	}
	d := &DB{Kind: "mariadb", User: "berth", Password: password, Dir: dir, Log: filepath.Join(dir, "mariadb.log"), Host: "127.0.0.1"}
	fail := func(err error) (*DB, error) { d.Stop(); return nil, err }
	data := filepath.Join(dir, "data")
	if err := run(cred, install, "--no-defaults", "--datadir="+data, "--auth-root-authentication-method=socket",
		"--skip-test-db", "--user=mysql"); err != nil {
		return fail(err)
	}
	init := filepath.Join(dir, "init.sql")
	sqlText := fmt.Sprintf("CREATE USER IF NOT EXISTS 'berth'@'127.0.0.1' IDENTIFIED BY '%s';\nGRANT ALL ON *.* TO 'berth'@'127.0.0.1';\n", password)
	if err := os.WriteFile(init, []byte(sqlText), 0o600); err != nil {
		return fail(err)
	}
	os.Chown(init, int(cred.Uid), int(cred.Gid))
	if d.Port, err = freePort(); err != nil {
		return fail(err)
	}
	if err := d.start(cred, mariadbd, "--no-defaults", "--datadir="+data, "--socket="+filepath.Join(dir, "mysqld.sock"),
		"--port="+strconv.Itoa(d.Port), "--bind-address=127.0.0.1", "--pid-file="+filepath.Join(dir, "mysqld.pid"),
		"--init-file="+init, "--skip-name-resolve", "--log-error="+d.Log, "--innodb-buffer-pool-size=64M"); err != nil {
		return fail(err)
	}
	return d, d.wait(func(ctx context.Context) error {
		cfg := mysql.NewConfig()
		cfg.User, cfg.Passwd, cfg.Net, cfg.Addr = "berth", password, "tcp", "127.0.0.1:"+strconv.Itoa(d.Port)
		conn, err := mysql.NewConnector(cfg)
		if err != nil {
			return err
		}
		db := sql.OpenDB(conn)
		defer db.Close()
		return db.PingContext(ctx)
	})
}

func (d *DB) start(cred *syscall.Credential, name string, args ...string) error {
	log, err := os.OpenFile(filepath.Join(d.Dir, "stdout.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	defer log.Close()
	d.cmd = exec.Command(name, args...)
	d.cmd.Dir = "/"
	d.cmd.Stdout, d.cmd.Stderr = log, log
	// Own process group, and killed if the test dies.
	d.cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred, Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := d.cmd.Start(); err != nil {
		return fmt.Errorf("start %s: %w", filepath.Base(name), err)
	}
	d.done = make(chan struct{})
	go func() { _ = d.cmd.Wait(); close(d.done) }()
	return nil
}

// wait polls ping until the server answers (60 s at most).
func (d *DB) wait(ping func(context.Context) error) error {
	deadline := time.Now().Add(60 * time.Second)
	var last error
	for time.Now().Before(deadline) {
		select {
		case <-d.done:
			out, _ := os.ReadFile(filepath.Join(d.Dir, "stdout.log"))
			logText, _ := os.ReadFile(d.Log)
			err := fmt.Errorf("%s exited during start-up: %s%s", d.Kind, lastLines(string(out), 10), lastLines(string(logText), 10))
			d.Stop()
			return err
		default:
		}
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		last = ping(ctx)
		cancel()
		if last == nil {
			return nil
		}
		time.Sleep(200 * time.Millisecond)
	}
	d.Stop()
	return fmt.Errorf("%s did not answer within 60s: %v", d.Kind, last)
}

// Stop ends the server (SIGTERM, then SIGKILL of its group) and removes
// its directory.
func (d *DB) Stop() {
	if d.cmd != nil && d.cmd.Process != nil {
		select {
		case <-d.done:
		default:
			_ = d.cmd.Process.Signal(syscall.SIGTERM)
			select {
			case <-d.done:
			case <-time.After(20 * time.Second):
				_ = syscall.Kill(-d.cmd.Process.Pid, syscall.SIGKILL)
				<-d.done
			}
		}
	}
	if d.Dir != "" {
		os.RemoveAll(d.Dir)
	}
}
