package integration

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestVersion(t *testing.T) {
	code, out := runBerth(t, 30*time.Second, "--version")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, out)
	}
	for _, want := range []string{"berth version", "kubernetes v1.36.3", "kine v0.17.5", "sqlite 3.", "go-sqlite3 v1.14"} {
		if !strings.Contains(out, want) {
			t.Errorf("--version lacks %q:\n%s", want, out)
		}
	}
}

// --version is the root command's; on a subcommand it must not fall
// through to running that command.
func TestSubcommandVersionFlagDoesNotRun(t *testing.T) {
	s := newServer(t)
	if err := os.WriteFile(s.configPath(), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	code, out := runBerth(t, 30*time.Second, append(s.args(), "--version")...)
	if code == 0 || strings.Contains(out, "Creating server CA") {
		t.Errorf("berth server --version ran the server (exit %d):\n%s", code, tail(out, 5))
	}
}

// A kubectl symlink to berth is kubectl (multi-call by argv[0]).
func TestKubectlMultiCall(t *testing.T) {
	link := filepath.Join(t.TempDir(), "kubectl")
	if err := os.Symlink(berthBin, link); err != nil {
		t.Fatal(err)
	}
	saved := berthBin
	berthBin = link
	defer func() { berthBin = saved }()
	code, out := runBerth(t, 30*time.Second, "version", "--client")
	if code != 0 || !strings.Contains(out, "Client Version: v1.36.3") {
		t.Errorf("kubectl symlink: exit %d\n%s", code, out)
	}
	berthBin = saved
	code, out = runBerth(t, 30*time.Second, "kubectl", "version", "--client")
	if code != 0 || !strings.Contains(out, "Client Version: v1.36.3") {
		t.Errorf("berth kubectl: exit %d\n%s", code, out)
	}
}
