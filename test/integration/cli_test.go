package integration

import (
	"os"
	"os/exec"
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
	if code != 0 || strings.Contains(out, "Creating server CA") || !strings.Contains(out, "berth version") {
		t.Errorf("berth server --version did not just print the version (exit %d):\n%s", code, tail(out, 5))
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

func TestCheckConfigPassesHere(t *testing.T) {
	noFile := filepath.Join(t.TempDir(), "registries.yaml")
	code, out := runBerth(t, 30*time.Second, "check-config", "--data-dir", t.TempDir(), "--private-registry", noFile)
	if code != 0 || !strings.Contains(out, "verdict: PASS") {
		t.Errorf("check-config on this host: exit %d\n%s", code, out)
	}
}

// TestCheckConfigRegistries: check-config reads registries.yaml as a node
// would and names a bad key or an unreadable CA file.
func TestCheckConfigRegistries(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "registries.yaml")
	for _, tc := range []struct{ yaml, want string }{
		{"mirrors:\n  docker.io:\n    endpoint: [\"https://m.example\"]\n", "[ok     ] registries.yaml: " + file + ": 1 mirrors"},
		{"mirrors:\n  docker.io:\n    endpionts: [\"https://m.example\"]\n", file + `: unknown key mirrors."docker.io".endpionts`},
		{"configs:\n  m.example:\n    tls:\n      ca_file: " + dir + "/missing.crt\n", file + `: configs."m.example".tls: ca_file` + ": open " + dir + "/missing.crt: no such file or directory"},
	} {
		if err := os.WriteFile(file, []byte(tc.yaml), 0o600); err != nil {
			t.Fatal(err)
		}
		code, out := runBerth(t, 30*time.Second, "check-config", "--data-dir", t.TempDir(), "--private-registry", file)
		if !strings.Contains(out, tc.want) {
			t.Errorf("check-config with\n%s\nexit %d, output lacks %q:\n%s", tc.yaml, code, tc.want, out)
		}
		if bad := !strings.HasPrefix(tc.want, "[ok"); bad != (code != 0) {
			t.Errorf("check-config with\n%s\nexit %d", tc.yaml, code)
		}
	}
}

func TestCheckConfigFailsWithoutIptables(t *testing.T) {
	bin := t.TempDir()
	if err := os.WriteFile(filepath.Join(bin, "mount"), []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	ctxCmd := exec.Command(berthBin, "check-config", "--data-dir", t.TempDir())
	ctxCmd.Env = append(cleanEnv(), "PATH="+bin)
	out, err := ctxCmd.CombinedOutput()
	if err == nil {
		t.Fatalf("check-config passed without iptables in PATH:\n%s", out)
	}
	for _, want := range []string{"[MISSING] iptables", "apt-get install iptables", "verdict: FAIL"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
}
