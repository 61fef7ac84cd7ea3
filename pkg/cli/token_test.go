package cli

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/berth-io/berth/pkg/token"
)

func TestPrintBootstrapTable(t *testing.T) {
	now := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	var out bytes.Buffer
	printBootstrapTable(&out, []token.BootstrapInfo{
		{ID: "aaaaaa", Description: "shop floor", Expires: now.Add(90 * time.Minute), Usages: []string{"signing", "authentication"}, Groups: []string{token.DefaultBootstrapGroup}},
		{ID: "bbbbbb"},
		{ID: "cccccc", Expires: now.Add(-time.Second)},
	}, now)
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	if len(lines) != 4 {
		t.Fatalf("table:\n%s", out.String())
	}
	for i, want := range [][]string{
		{"TOKEN", "TTL", "EXPIRES", "USAGES", "DESCRIPTION", "EXTRA", "GROUPS"},
		{"aaaaaa", "90m", "2030-01-01T01:30:00Z", "signing,authentication", "shop", "floor", token.DefaultBootstrapGroup},
		{"bbbbbb", "<forever>", "<never>", "<none>", "<none>", "<none>"},
		{"cccccc", "<invalid>", "2029-12-31T23:59:59Z", "<none>", "<none>", "<none>"},
	} {
		if got := strings.Fields(lines[i]); strings.Join(got, " ") != strings.Join(want, " ") {
			t.Errorf("line %d = %q, want fields %q", i, lines[i], want)
		}
	}
}

func TestBootstrapArg(t *testing.T) {
	generated, err := bootstrapArg(nil)
	if err != nil || !generated.Bootstrap || generated.CAHash != "" {
		t.Errorf("no argument: %+v, %v", generated, err)
	}
	k10 := "K10" + strings.Repeat("ab", 32) + "::abcdef.0123456789abcdef"
	if got, err := bootstrapArg([]string{k10}); err != nil || got.BootstrapToken() != "abcdef.0123456789abcdef" || got.CAHash == "" {
		t.Errorf("K10 argument: %+v, %v", got, err)
	}
	for _, bad := range []string{"abcdef.0123456789ABCDEF", "just-a-password", "K10" + strings.Repeat("ab", 32) + "::server:pw"} {
		_, err := bootstrapArg([]string{bad})
		if err == nil || strings.Contains(err.Error(), bad) {
			t.Errorf("argument %q: error %v (must refuse without quoting it)", bad, err)
		}
	}
}

func TestSyncNodeToken(t *testing.T) {
	dir := t.TempDir()
	tok := token.Token{CAHash: strings.Repeat("ab", 32), User: "server", Password: "new"}

	// A symlink to token is left alone, and a missing file is not created.
	link := filepath.Join(dir, "node-token")
	if err := os.Symlink("token", link); err != nil {
		t.Fatal(err)
	}
	if err := syncNodeToken(link, tok); err != nil {
		t.Fatal(err)
	}
	if target, err := os.Readlink(link); err != nil || target != "token" {
		t.Errorf("symlink now %q, %v", target, err)
	}
	missing := filepath.Join(dir, "missing")
	if err := syncNodeToken(missing, tok); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(missing); err == nil {
		t.Error("a missing node-token was created")
	}

	// A regular file gets the new token, owner-only.
	file := filepath.Join(dir, "copied")
	if err := os.WriteFile(file, []byte("old\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := syncNodeToken(file, tok); err != nil {
		t.Fatal(err)
	}
	data, _ := os.ReadFile(file)
	fi, _ := os.Stat(file)
	if strings.TrimSpace(string(data)) != tok.String() || fi.Mode().Perm() != 0o600 {
		t.Errorf("node-token file holds %q with mode %#o", data, fi.Mode().Perm())
	}
}
