package integration

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/berth-io/berth/pkg/bootstrap"
	"github.com/berth-io/berth/pkg/token"
)

// TestServerJoinFetchesBootstrap: `berth server --server URL --token T`
// takes the cluster's CAs and keys from a running server before it makes
// its PKI; a wrong token is refused with a clear message and nothing is
// written. (The second server keeps its own SQLite here: what is tested is
// the bootstrap data; sharing a datastore is TestExternalDatastore*.)
func TestServerJoinFetchesBootstrap(t *testing.T) {
	s1 := newServer(t)
	s1.start()
	s1.waitReady(90 * time.Second)
	url := "https://127.0.0.1:" + strconv.Itoa(s1.httpsPort)
	raw, err := os.ReadFile(filepath.Join(s1.dataDir, "server", "token"))
	if err != nil {
		t.Fatal(err)
	}
	good, err := token.Parse(string(raw))
	if err != nil {
		t.Fatal(err)
	}

	t.Run("wrong token", func(t *testing.T) {
		s2 := newServer(t)
		bad := token.Token{CAHash: good.CAHash, User: "server", Password: "not-the-password"}
		code, out := runBerth(t, 60*time.Second, append(s2.argsWithConfig(), "--server", url, "--token", bad.String())...)
		wantRefused(t, code, out, "token rejected", "server token")
		if _, err := os.Stat(filepath.Join(s2.dataDir, "server", "tls", "server-ca.crt")); !os.IsNotExist(err) {
			t.Errorf("a refused join wrote the CA (or failed oddly): %v", err)
		}
	})
	t.Run("token of another cluster", func(t *testing.T) {
		s2 := newServer(t)
		other := token.Token{CAHash: strings.Repeat("ab", 32), User: "server", Password: good.Password}
		code, out := runBerth(t, 60*time.Second, append(s2.argsWithConfig(), "--server", url, "--token", other.String())...)
		wantRefused(t, code, out, "the server's CA does not match the token", "No credential was sent")
	})
	t.Run("bootstrap token", func(t *testing.T) {
		// An agent-only token must not open the servers' keys.
		s2 := newServer(t)
		bt := token.Token{CAHash: good.CAHash, User: "abcdef", Password: "0123456789abcdef", Bootstrap: true}
		code, out := runBerth(t, 60*time.Second, append(s2.argsWithConfig(), "--server", url, "--token", bt.String())...)
		wantRefused(t, code, out, "token rejected")
	})

	t.Run("joins", func(t *testing.T) {
		s2 := newServer(t, "--server", url, "--token", good.String())
		s2.start()
		s2.waitReady(90 * time.Second)
		for _, f := range bootstrap.Files {
			a, errA := os.ReadFile(filepath.Join(s1.dataDir, "server", f.Path))
			b, errB := os.ReadFile(filepath.Join(s2.dataDir, "server", f.Path))
			if os.IsNotExist(errA) && os.IsNotExist(errB) && !f.Required {
				continue
			}
			if errA != nil || errB != nil || !bytes.Equal(a, b) {
				t.Errorf("%s: not shared (%v, %v)", f.Path, errA, errB)
			}
		}
		// Its own serving certificate, from the shared CA.
		a, _ := os.ReadFile(filepath.Join(s1.dataDir, "server", "tls", "serving-kube-apiserver.key"))
		b, _ := os.ReadFile(filepath.Join(s2.dataDir, "server", "tls", "serving-kube-apiserver.key"))
		if bytes.Equal(a, b) {
			t.Error("leaf keys must not travel")
		}
		// The first server's admin credentials work on the second: same CAs.
		cfg, err := clientcmd.BuildConfigFromFlags("", s1.kubeconfig)
		if err != nil {
			t.Fatal(err)
		}
		cfg.Host = "https://127.0.0.1:" + strconv.Itoa(s2.httpsPort)
		cs, err := kubernetes.NewForConfig(cfg)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := cs.CoreV1().Namespaces().Get(context.Background(), "default", metav1.GetOptions{}); err != nil {
			t.Errorf("s1's admin certificate against s2: %v", err)
		}
		if strings.Contains(s2.out.String(), good.Password) || strings.Contains(s1.out.String(), good.Password) {
			t.Error("a server logged the token's password")
		}
		// A restart with the same flags is fine (same data: nothing written).
		s2.stop(30 * time.Second)
		s2.start()
		s2.waitReady(90 * time.Second)
	})
}

// argsWithConfig writes s's config file and returns its flags, for a run
// with runBerth.
func (s *server) argsWithConfig() []string {
	s.t.Helper()
	if err := os.WriteFile(s.configPath(), []byte(s.configYAML), 0o600); err != nil {
		s.t.Fatal(err)
	}
	return s.args()
}
