package integration

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	authnv1 "k8s.io/api/authentication/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/berth-io/berth/pkg/token"
)

// TestToken drives `berth token` against a real server: bootstrap tokens
// are Secrets the apiserver authenticates, printed with the CA hash of the
// served /cacerts; rotation rewrites the server token of a stopped server,
// which then starts with it.
func TestToken(t *testing.T) {
	s := newServer(t)
	s.start()
	cs := s.waitReady(60 * time.Second)
	ctx := context.Background()
	flags := []string{"--kubeconfig", s.kubeconfig, "--data-dir", s.dataDir}

	code, cacerts := get(t, insecureClient(nil), fmt.Sprintf("https://127.0.0.1:%d/cacerts", s.httpsPort), nil)
	if code != 200 {
		t.Fatalf("/cacerts: %d %s", code, cacerts)
	}
	hash := token.CAHash([]byte(cacerts))

	var first, second token.Token
	t.Run("create", func(t *testing.T) {
		out := berthToken(t, 0, append([]string{"create", "--description", "integration test", "--ttl", "2h"}, flags...)...)
		var err error
		if first, err = token.Parse(out); err != nil {
			t.Fatalf("create printed %q: %v", out, err)
		}
		if !first.Bootstrap || first.CAHash != hash || !strings.HasPrefix(out, "K10"+hash+"::") {
			t.Fatalf("create printed %q; want K10<hash of /cacerts %s>::<id>.<secret>", out, hash)
		}
		sec, err := cs.CoreV1().Secrets("kube-system").Get(ctx, "bootstrap-token-"+first.User, metav1.GetOptions{})
		if err != nil {
			t.Fatalf("the token's Secret: %v", err)
		}
		if sec.Type != "bootstrap.kubernetes.io/token" || string(sec.Data["token-secret"]) != first.Password ||
			string(sec.Data["description"]) != "integration test" ||
			string(sec.Data["auth-extra-groups"]) != "system:bootstrappers:berth:default-node-token" {
			t.Errorf("Secret type %s data %v", sec.Type, keysOf(sec.Data))
		}
		exp, err := time.Parse(time.RFC3339, string(sec.Data["expiration"]))
		if err != nil || !exp.After(time.Now()) || exp.After(time.Now().Add(2*time.Hour)) {
			t.Errorf("expiration %q (%v), want within the 2h TTL", sec.Data["expiration"], err)
		}

		// A chosen token, for signing only and never expiring.
		chosen := "k10tst.0123456789abcdef"
		out = berthToken(t, 0, append([]string{"create", chosen, "--ttl", "0", "--usages", "signing"}, flags...)...)
		if second, err = token.Parse(out); err != nil || second.BootstrapToken() != chosen || second.CAHash != hash {
			t.Fatalf("create %s printed %q (%v)", chosen, out, err)
		}
		_, stderr := berthTokenFails(t, append([]string{"create", chosen}, flags...)...)
		if !strings.Contains(stderr, "bootstrap token k10tst already exists") || strings.Contains(stderr, "0123456789abcdef") {
			t.Errorf("creating an existing token: %s", stderr)
		}
	})
	if first.User == "" || second.User == "" {
		t.FailNow()
	}

	t.Run("the apiserver authenticates it", func(t *testing.T) {
		cfg := &rest.Config{
			Host:            fmt.Sprintf("https://127.0.0.1:%d", s.httpsPort),
			TLSClientConfig: rest.TLSClientConfig{CAData: []byte(cacerts)},
			BearerToken:     first.BootstrapToken(),
		}
		bcs, err := kubernetes.NewForConfig(cfg)
		if err != nil {
			t.Fatal(err)
		}
		review, err := bcs.AuthenticationV1().SelfSubjectReviews().Create(ctx, &authnv1.SelfSubjectReview{}, metav1.CreateOptions{})
		if err != nil {
			t.Fatalf("SelfSubjectReview with the bootstrap token: %v", err)
		}
		u := review.Status.UserInfo
		if u.Username != "system:bootstrap:"+first.User ||
			!slices.Contains(u.Groups, "system:bootstrappers") || !slices.Contains(u.Groups, "system:bootstrappers:berth:default-node-token") {
			t.Errorf("authenticated as %s in %v", u.Username, u.Groups)
		}
	})

	t.Run("ValidateBootstrap", func(t *testing.T) {
		now := time.Now()
		if err := token.ValidateBootstrap(ctx, cs, first.User, first.Password, now); err != nil {
			t.Errorf("valid token: %v", err)
		}
		for _, tc := range []struct {
			id, secret string
			kind       error
		}{
			{first.User, "0000000000000000", token.ErrBootstrapWrongSecret},
			{"nosuch", first.Password, token.ErrBootstrapNotFound},
			{second.User, second.Password, token.ErrBootstrapNotForAuth},
		} {
			err := token.ValidateBootstrap(ctx, cs, tc.id, tc.secret, now)
			if !errors.Is(err, tc.kind) || strings.Contains(err.Error(), tc.secret) {
				t.Errorf("%s: %v, want %v", tc.id, err, tc.kind)
			}
		}
	})

	t.Run("list", func(t *testing.T) {
		out := berthToken(t, 0, append([]string{"list"}, flags...)...)
		rows := tableRows(out)
		if h := rows["TOKEN"]; strings.Join(h, " ") != "TTL EXPIRES USAGES DESCRIPTION EXTRA GROUPS" {
			t.Errorf("header %q", h)
		}
		r := rows[first.User]
		if len(r) != 6 || r[0] == "<forever>" || r[0] == "<invalid>" || r[2] != "signing,authentication" ||
			r[3] != "integration" || r[4] != "test" || r[5] != "system:bootstrappers:berth:default-node-token" {
			t.Errorf("row of %s: %q\n%s", first.User, r, out)
		}
		if r := rows[second.User]; strings.Join(r, " ") != "<forever> <never> signing <none> <none>" {
			t.Errorf("row of %s: %q\n%s", second.User, r, out)
		}
		if strings.Contains(out, first.Password) || strings.Contains(out, second.Password) {
			t.Errorf("list shows a secret:\n%s", out)
		}
	})

	t.Run("generate creates nothing", func(t *testing.T) {
		before := berthToken(t, 0, append([]string{"list"}, flags...)...)
		out := berthToken(t, 0, "generate")
		if !regexp.MustCompile(`^[a-z0-9]{6}\.[a-z0-9]{16}$`).MatchString(out) {
			t.Errorf("generate printed %q", out)
		}
		if after := berthToken(t, 0, append([]string{"list"}, flags...)...); !sameRows(before, after) {
			t.Errorf("tokens changed after generate:\n%s\n---\n%s", before, after)
		}
	})

	t.Run("delete", func(t *testing.T) {
		// By id, and by the full token.
		out := berthToken(t, 0, append([]string{"delete", first.User, second.String()}, flags...)...)
		for _, id := range []string{first.User, second.User} {
			if !strings.Contains(out, "bootstrap token "+id+" deleted") {
				t.Errorf("delete printed %q", out)
			}
			if _, err := cs.CoreV1().Secrets("kube-system").Get(ctx, "bootstrap-token-"+id, metav1.GetOptions{}); !apierrors.IsNotFound(err) {
				t.Errorf("Secret of %s after delete: %v", id, err)
			}
		}
		if out, stderr := berthTokenOut(t, 0, append([]string{"list"}, flags...)...); out != "" || !strings.Contains(stderr, "No bootstrap tokens") {
			t.Errorf("list after delete: %q %s", out, stderr)
		}
		_, stderr := berthTokenFails(t, append([]string{"delete", first.User}, flags...)...)
		if !strings.Contains(stderr, "bootstrap token "+first.User+" does not exist (deleted or never created)") {
			t.Errorf("deleting a deleted token: %s", stderr)
		}
	})

	t.Run("kubeconfig missing", func(t *testing.T) {
		missing := filepath.Join(t.TempDir(), "none.yaml")
		_, stderr := berthTokenFails(t, "list", "--kubeconfig", missing)
		if !strings.Contains(stderr, "kubeconfig "+missing+" does not exist") {
			t.Errorf("missing kubeconfig: %s", stderr)
		}
	})

	tokenPath := filepath.Join(s.dataDir, "server", "token")
	before, err := os.ReadFile(tokenPath)
	if err != nil {
		t.Fatal(err)
	}
	if code, _ := s.stop(30 * time.Second); code != 0 {
		t.Fatalf("server exit %d", code)
	}

	t.Run("server not reachable", func(t *testing.T) {
		_, stderr := berthTokenFails(t, append([]string{"list"}, flags...)...)
		if !strings.Contains(stderr, "cannot reach the berth server at https://127.0.0.1:") {
			t.Errorf("stopped server: %s", stderr)
		}
	})

	t.Run("rotate", func(t *testing.T) {
		_, stderr := berthTokenFails(t, "rotate", "--data-dir", t.TempDir())
		if !strings.Contains(stderr, "is not the data dir of a berth server") {
			t.Errorf("rotate in an empty data dir: %s", stderr)
		}

		out, stderr := berthTokenOut(t, 0, "rotate", "--data-dir", s.dataDir)
		rotated, err := token.Parse(out)
		if err != nil || rotated.CAHash != hash || rotated.User != "server" || rotated.Bootstrap {
			t.Fatalf("rotate printed %q (%v)", out, err)
		}
		if !strings.Contains(stderr, "Restart berth server") {
			t.Errorf("rotate did not say to restart the server: %s", stderr)
		}
		for _, p := range []string{tokenPath, filepath.Join(s.dataDir, "server", "node-token")} {
			data, err := os.ReadFile(p)
			if err != nil || strings.TrimSpace(string(data)) != out {
				t.Errorf("%s holds %q (%v), want the printed token", p, data, err)
			}
		}
		if strings.TrimSpace(string(before)) == out {
			t.Error("the token did not change")
		}
		if m := fileMode(t, tokenPath); m != 0o600 {
			t.Errorf("token mode %o", m)
		}

		// The server starts with the rotated token.
		s.start()
		s.waitReady(60 * time.Second)
		if strings.Contains(s.out.String(), rotated.Password) {
			t.Error("the new token's password appears in berth's log")
		}
	})
}

// berthToken runs `berth token args...`, wants exit code want, and returns
// its trimmed stdout.
func berthToken(t *testing.T, want int, args ...string) string {
	t.Helper()
	out, _ := berthTokenOut(t, want, args...)
	return out
}

// berthTokenFails runs `berth token args...`, wants it to fail, and returns
// stdout and stderr.
func berthTokenFails(t *testing.T, args ...string) (string, string) {
	t.Helper()
	return berthTokenOut(t, 1, args...)
}

// berthTokenOut is runBerth with stdout and stderr apart: stdout is what
// scripts capture (the token), stderr the messages.
func berthTokenOut(t *testing.T, want int, args ...string) (string, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, berthBin, append([]string{"token"}, args...)...)
	cmd.Env = cleanEnv()
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	if ctx.Err() != nil {
		t.Fatalf("berth token %s did not finish: %s", strings.Join(args, " "), stderr.String())
	}
	if err != nil && cmd.ProcessState == nil {
		t.Fatalf("run berth token: %v", err)
	}
	if code := cmd.ProcessState.ExitCode(); code != want {
		t.Errorf("berth token %s: exit %d, want %d\nstdout: %s\nstderr: %s", strings.Join(args, " "), code, want, stdout.String(), stderr.String())
	}
	return strings.TrimSpace(stdout.String()), stderr.String()
}

// tableRows maps a table's first column to the rest of each row's fields.
func tableRows(out string) map[string][]string {
	rows := map[string][]string{}
	for _, line := range strings.Split(out, "\n") {
		if f := strings.Fields(line); len(f) > 0 {
			rows[f[0]] = f[1:]
		}
	}
	return rows
}

// sameRows compares two listings by token id and everything but the TTL,
// which changes as time passes.
func sameRows(a, b string) bool {
	ra, rb := tableRows(a), tableRows(b)
	if len(ra) != len(rb) {
		return false
	}
	for id, r := range ra {
		o, ok := rb[id]
		if !ok || len(o) != len(r) || (len(r) > 1 && !slices.Equal(r[1:], o[1:])) {
			return false
		}
	}
	return true
}

func keysOf(m map[string][]byte) []string {
	var ks []string
	for k := range m {
		ks = append(ks, k)
	}
	slices.Sort(ks)
	return ks
}
