package integration

import (
	"context"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/berth-io/berth/pkg/join"
	"github.com/berth-io/berth/pkg/pki"
	"github.com/berth-io/berth/pkg/token"
)

// joinAgent runs `berth agent` against s until it exits (every case here is
// refused before the node starts) and returns its exit code and output. Its
// data dir and node password are temporary.
func joinAgent(t *testing.T, server, tok, nodeName, passwordFile string) (int, string) {
	t.Helper()
	dir := emptyConfigDir(t)
	if passwordFile == "" {
		passwordFile = filepath.Join(dir, "node", "password")
	}
	return runBerth(t, 60*time.Second, "agent",
		"--config", filepath.Join(dir, "none.yaml"),
		"--server", server, "--token", tok,
		"--data-dir", filepath.Join(dir, "data"),
		"--node-name", nodeName, "--node-ip", "127.0.0.1",
		"--node-password-file", passwordFile)
}

// TestJoinBadInput: each refused join says why, exits non-zero, and a CA
// mismatch is detected before any credential is sent.
func TestJoinBadInput(t *testing.T) {
	s := newServer(t, "--kube-controller-manager-arg", "controllers=*") // no tokencleaner: expired tokens stay
	s.start()
	cs := s.waitReady(60 * time.Second)
	url := "https://127.0.0.1:" + strconv.Itoa(s.httpsPort)
	good, err := os.ReadFile(filepath.Join(s.dataDir, "server", "token"))
	if err != nil {
		t.Fatal(err)
	}
	tok, err := token.Parse(string(good))
	if err != nil {
		t.Fatal(err)
	}

	t.Run("wrong password", func(t *testing.T) {
		bad := token.Token{CAHash: tok.CAHash, User: "server", Password: "not-the-password"}
		code, out := joinAgent(t, url, bad.String(), "wrong-pw", "")
		wantRefused(t, code, out, "token rejected", "does not match this cluster's token")
	})
	t.Run("CA hash mismatch", func(t *testing.T) {
		before := s.out.String()
		bad := token.Token{CAHash: strings.Repeat("ab", 32), User: "server", Password: tok.Password}
		code, out := joinAgent(t, url, bad.String(), "mitm", "")
		wantRefused(t, code, out, "the server's CA does not match the token", "No credential was sent")
		if strings.Contains(strings.TrimPrefix(s.out.String(), before), "join: refused") {
			t.Errorf("the server saw a join request although the CA did not match")
		}
	})
	t.Run("token for another cluster", func(t *testing.T) {
		other := token.Token{CAHash: strings.Repeat("01", 32), User: "server", Password: "0123456789abcdef0123456789abcdef"}
		code, out := joinAgent(t, url, other.String(), "other", "")
		wantRefused(t, code, out, "the server's CA does not match the token")
	})
	t.Run("server unreachable", func(t *testing.T) {
		dead := "https://127.0.0.1:" + strconv.Itoa(freePort(t))
		dir := emptyConfigDir(t)
		a := &server{t: t, dataDir: filepath.Join(dir, "data")}
		a.startArgs("agent", "--config", filepath.Join(dir, "none.yaml"), "--server", dead, "--token", string(good),
			"--data-dir", a.dataDir, "--node-name", "lonely", "--node-ip", "127.0.0.1",
			"--node-password-file", filepath.Join(dir, "password"))
		waitOutput(t, a, 30*time.Second, "waiting for a berth server to answer", dead)
		select {
		case <-a.done:
			t.Fatalf("the agent gave up instead of retrying:\n%s", a.out.String())
		default:
		}
		_ = a.cmd.Process.Signal(syscall.SIGTERM)
		<-a.done
	})
	caPEM, err := os.ReadFile(filepath.Join(s.dataDir, "server", "tls", "server-ca.crt"))
	if err != nil {
		t.Fatal(err)
	}
	bootstrap := func(t *testing.T, ttl time.Duration) token.Token {
		raw, err := token.GenerateBootstrap()
		if err != nil {
			t.Fatal(err)
		}
		if err := token.CreateBootstrap(context.Background(), cs, raw, ttl, "join test", nil, nil); err != nil {
			t.Fatal(err)
		}
		full, err := token.FormatBootstrap(caPEM, raw)
		if err != nil {
			t.Fatal(err)
		}
		bt, err := token.Parse(full)
		if err != nil || !bt.Bootstrap {
			t.Fatalf("parse %v: %v", bt.Bootstrap, err)
		}
		return bt
	}
	t.Run("bootstrap token works until deleted", func(t *testing.T) {
		bt := bootstrap(t, time.Hour)
		if err := signAs(t, url, bt, "boot-1", "boot-1-password-000000000001"); err != nil {
			t.Fatalf("join with a fresh bootstrap token: %v", err)
		}
		if err := token.DeleteBootstrap(context.Background(), cs, bt.User); err != nil {
			t.Fatal(err)
		}
		code, out := joinAgent(t, url, bt.String(), "boot-2", "")
		wantRefused(t, code, out, "token rejected", "bootstrap token "+bt.User+" does not exist")
	})
	t.Run("expired bootstrap token", func(t *testing.T) {
		bt := bootstrap(t, time.Second)
		time.Sleep(1500 * time.Millisecond)
		code, out := joinAgent(t, url, bt.String(), "boot-3", "")
		wantRefused(t, code, out, "token rejected", "bootstrap token "+bt.User+" expired")
	})
	t.Run("duplicate node name", func(t *testing.T) {
		// A first machine joins as "twin" and its Node exists.
		if err := signAs(t, url, tok, "twin", "first-machine-password-0001"); err != nil {
			t.Fatalf("first join: %v", err)
		}
		if _, err := cs.CoreV1().Nodes().Create(context.Background(), &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "twin"}}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		// A second machine with its own password is refused, clearly; a
		// bare password also warns that the CA is not verified.
		code, out := joinAgent(t, url, tok.Password, "twin", "")
		wantRefused(t, code, out, "node password rejected", `a node named "twin" already exists`, "--with-node-id", "cannot be verified")
		// Deleting the Node frees the name.
		if err := cs.CoreV1().Nodes().Delete(context.Background(), "twin", metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
		if err := signAs(t, url, tok, "twin", "second-machine-password-002"); err != nil {
			t.Fatalf("join after the Node was deleted: %v", err)
		}
		// And the first machine is now the stranger.
		if err := signAs(t, url, tok, "twin", "first-machine-password-0001"); err != nil {
			t.Fatalf("no Node exists, so the name is free again: %v", err)
		}
	})
}

// signAs asks the server, through the join protocol, for a kubelet client
// certificate as node name with password.
func signAs(t *testing.T, url string, tok token.Token, name, password string) error {
	t.Helper()
	ctx := context.Background()
	c, err := join.Connect(ctx, url, tok)
	if err != nil {
		return err
	}
	key, err := pki.LoadOrCreateKey(filepath.Join(t.TempDir(), "k.key"))
	if err != nil {
		t.Fatal(err)
	}
	csr, err := pki.CSR(key)
	if err != nil {
		t.Fatal(err)
	}
	crt, err := c.Sign(ctx, join.KubeletClient, csr, join.Node{Name: name, Password: password, IPs: []string{"127.0.0.1"}})
	if err != nil {
		return err
	}
	cert, err := pki.ParseCertPEM(crt)
	if err != nil {
		t.Fatal(err)
	}
	if cert.Subject.CommonName != "system:node:"+name || len(cert.Subject.Organization) != 1 || cert.Subject.Organization[0] != "system:nodes" {
		t.Fatalf("certificate subject %v", cert.Subject)
	}
	return nil
}

func wantRefused(t *testing.T, code int, out string, want ...string) {
	t.Helper()
	t.Logf("agent (exit %d) said:\n%s", code, tail(out, 4))
	if code == 0 {
		t.Errorf("the agent exited 0; want a refusal")
	}
	for _, w := range want {
		if !strings.Contains(out, w) {
			t.Errorf("output lacks %q:\n%s", w, tail(out, 30))
		}
	}
}

// waitOutput waits until p's output contains every string.
func waitOutput(t *testing.T, p *server, timeout time.Duration, want ...string) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		all := true
		for _, w := range want {
			all = all && strings.Contains(p.out.String(), w)
		}
		if all {
			return
		}
		time.Sleep(200 * time.Millisecond)
	}
	t.Fatalf("output lacks %q after %s:\n%s", want, timeout, tail(p.out.String(), 30))
}

// emptyConfigDir returns a temp dir with an empty none.yaml, so the agent
// never reads /etc/berth/config.yaml.
func emptyConfigDir(t *testing.T) string {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "none.yaml"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	return dir
}

// TestJoinKeepsWorkingAfterTheToken: a node that joined with a bootstrap
// token renews its certificates with its kubelet certificate once the token
// is deleted; renamed, it needs a token again.
func TestJoinKeepsWorkingAfterTheToken(t *testing.T) {
	s := newServer(t)
	s.start()
	cs := s.waitReady(60 * time.Second)
	url := "https://127.0.0.1:" + strconv.Itoa(s.httpsPort)
	caPEM, err := os.ReadFile(filepath.Join(s.dataDir, "server", "tls", "server-ca.crt"))
	if err != nil {
		t.Fatal(err)
	}
	raw, err := token.GenerateBootstrap()
	if err != nil {
		t.Fatal(err)
	}
	if err := token.CreateBootstrap(context.Background(), cs, raw, time.Hour, "", nil, nil); err != nil {
		t.Fatal(err)
	}
	full, _ := token.FormatBootstrap(caPEM, raw)
	bt, _ := token.Parse(full)
	req := join.Request{Servers: []string{url}, Token: bt, CertDir: t.TempDir(),
		Node: join.Node{Name: "keeper", Password: "keeper-password-0000000000001", IPs: []string{"127.0.0.1"}}}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if _, err := join.Bootstrap(ctx, req); err != nil {
		t.Fatalf("first join: %v", err)
	}
	if err := token.DeleteBootstrap(ctx, cs, bt.User); err != nil {
		t.Fatal(err)
	}
	if _, err := join.Bootstrap(ctx, req); err != nil {
		t.Fatalf("rejoin with the node's certificate after the token was deleted: %v", err)
	}
	renamed := req
	renamed.Node.Name = "renamed"
	_, err = join.Bootstrap(ctx, renamed)
	if err == nil || !strings.Contains(err.Error(), "does not exist") {
		t.Fatalf("renamed node with a deleted token: %v; want the token refusal", err)
	}
}
