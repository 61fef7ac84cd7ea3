package datastore

import (
	"database/sql"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestCheckSQLite(t *testing.T) {
	dir := t.TempDir()
	missing := filepath.Join(dir, "missing.db")
	if err := CheckSQLite(missing); err != nil {
		t.Errorf("a missing database is a new one: %v", err)
	}
	empty := filepath.Join(dir, "empty.db")
	os.WriteFile(empty, nil, 0o600)
	if err := CheckSQLite(empty); err != nil {
		t.Errorf("an empty file is a new database: %v", err)
	}
	junk := filepath.Join(dir, "junk.db")
	os.WriteFile(junk, []byte("hello, this is not a database at all"), 0o600)
	var ce *CorruptError
	if err := CheckSQLite(junk); !errors.As(err, &ce) || !strings.Contains(err.Error(), "not an SQLite database") {
		t.Errorf("junk: %v", err)
	}
	good := filepath.Join(dir, "good.db")
	db, err := sql.Open("sqlite3", good)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := db.Exec("CREATE TABLE t (x); INSERT INTO t VALUES (1)"); err != nil {
		t.Fatal(err)
	}
	db.Close()
	if err := CheckSQLite(good); err != nil {
		t.Errorf("good database refused: %v", err)
	}
}

func TestEndpoint(t *testing.T) {
	k := &Kine{Dir: "/d/server"}
	ep, err := k.endpoint()
	if err != nil || !strings.HasPrefix(ep, "sqlite:///d/server/db/state.db?") || !strings.Contains(ep, "_synchronous=FULL") ||
		!strings.Contains(ep, "_journal_mode=WAL") {
		t.Errorf("default endpoint %q %v", ep, err)
	}
	k.Sync = "normal"
	if ep, _ := k.endpoint(); !strings.Contains(ep, "_synchronous=NORMAL") {
		t.Errorf("NORMAL endpoint %q", ep)
	}
	k.Sync = "OFF"
	if _, err := k.endpoint(); err == nil {
		t.Error("synchronous=OFF must be refused")
	}
	if !(&Kine{}).IsSQLite() || (&Kine{Endpoint: "postgres://x"}).IsSQLite() {
		t.Error("IsSQLite")
	}
}

func TestRedact(t *testing.T) {
	for in, want := range map[string]string{
		"postgres://berth:hunter2@db:5432/berth":          "postgres://berth:xxxxx@db:5432/berth",
		"mysql://root:hun@ter2@tcp(127.0.0.1:3306)/berth": "mysql://root:xxxxx@tcp(127.0.0.1:3306)/berth",
		"https://10.0.0.1:2379,https://10.0.0.2:2379":     "https://10.0.0.1:2379,https://10.0.0.2:2379",
		"postgres://berth@db/berth":                       "postgres://berth@db/berth",
	} {
		if got := Redact(in); got != want {
			t.Errorf("Redact(%q) = %q, want %q", in, got, want)
		}
	}
	if got := password("mysql://root:hun@ter2@tcp(127.0.0.1:3306)/berth"); got != "hun@ter2" {
		t.Errorf("password: %q", got)
	}
	err := scrub(errors.New("dial postgres://u:hunter2@x failed"), "postgres://u:hunter2@x")
	if strings.Contains(err.Error(), "hunter2") {
		t.Errorf("scrub: %v", err)
	}
}
