package integration

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"
	"k8s.io/utils/ptr"
)

// TestServerLifecycle runs one server through its life: configured from a
// file and the environment, ready, serving a Deployment's ReplicaSet and
// Pods, refusing the unauthenticated, stopped by SIGTERM and restarted with
// every object kept.
func TestServerLifecycle(t *testing.T) {
	s := newServer(t)
	const secret = "s3cret-never-logged"
	s.configYAML = "tls-san:\n  - berth-test.example\nno-such-key: 1\ntoken: " + secret + "\n"
	s.env = []string{"BERTH_KUBECONFIG_MODE=0640"}
	s.start()
	cs := s.waitReady(60 * time.Second)
	ctx := context.Background()

	t.Run("config file and environment applied", func(t *testing.T) {
		if !strings.Contains(s.out.String(), `unknown key "no-such-key"`) ||
			!strings.Contains(s.out.String(), s.configPath()) {
			t.Errorf("no warning naming the unknown key and the file in the log")
		}
		cert := servingCert(t, s.httpsPort, nil)
		if !contains(cert.DNSNames, "berth-test.example") {
			t.Errorf("serving cert SANs %v lack the --tls-san from the config file", cert.DNSNames)
		}
		for _, want := range []string{"kubernetes.default.svc.cluster.local", "localhost"} {
			if !contains(cert.DNSNames, want) {
				t.Errorf("serving cert SANs %v lack %s", cert.DNSNames, want)
			}
		}
		if mode := fileMode(t, s.kubeconfig); mode != 0o640 {
			t.Errorf("kubeconfig mode %o, want 0640 from BERTH_KUBECONFIG_MODE", mode)
		}
	})

	t.Run("file modes", func(t *testing.T) {
		tlsDir := filepath.Join(s.dataDir, "server", "tls")
		keys, _ := filepath.Glob(filepath.Join(tlsDir, "*.key"))
		if len(keys) < 10 {
			t.Fatalf("found %d keys in %s, want at least 10", len(keys), tlsDir)
		}
		for _, k := range append(keys, filepath.Join(s.dataDir, "server", "token")) {
			if m := fileMode(t, k); m != 0o600 {
				t.Errorf("%s has mode %o, want 0600", k, m)
			}
		}
		for _, d := range []string{filepath.Join(s.dataDir, "server"), tlsDir, filepath.Join(s.dataDir, "server", "cred")} {
			if m := fileMode(t, d); m != 0o700 {
				t.Errorf("%s has mode %o, want 0700", d, m)
			}
		}
		tok, err := os.ReadFile(filepath.Join(s.dataDir, "server", "token"))
		if err != nil || !strings.HasPrefix(string(tok), "K10") || strings.TrimSpace(string(tok))[67:] != "::server:"+secret {
			t.Errorf("server token %q (%v) is not K10<hash>::server:<the --token secret>", tok, err)
		}
		if strings.Contains(s.out.String(), secret) {
			t.Errorf("the token secret appears in berth's log")
		}
	})

	t.Run("supervisor endpoints", func(t *testing.T) {
		client := insecureClient(nil)
		base := "https://127.0.0.1:" + strconv.Itoa(s.httpsPort)
		if code, body := get(t, client, base+"/ping", nil); code != 200 || body != "pong" {
			t.Errorf("/ping: %d %q", code, body)
		}
		ca, _ := os.ReadFile(filepath.Join(s.dataDir, "server", "tls", "server-ca.crt"))
		if code, body := get(t, client, base+"/cacerts", nil); code != 200 || body != string(ca) {
			t.Errorf("/cacerts: %d, body equals server-ca.crt: %v", code, body == string(ca))
		}
	})

	t.Run("unauthenticated requests are refused", func(t *testing.T) {
		client := insecureClient(nil)
		base := "https://127.0.0.1:" + strconv.Itoa(s.httpsPort)
		if code, _ := get(t, client, base+"/api/v1/namespaces", nil); code != http.StatusUnauthorized {
			t.Errorf("anonymous request: %d, want 401", code)
		}
		spoof := map[string]string{"X-Remote-User": "system:admin", "X-Remote-Group": "system:masters"}
		if code, _ := get(t, client, base+"/api/v1/namespaces", spoof); code != http.StatusUnauthorized {
			t.Errorf("request with forged identity headers: %d, want 401", code)
		}
		// The apiserver port itself is loopback-only and also refuses.
		api := "https://127.0.0.1:" + strconv.Itoa(s.apiPort)
		if code, _ := get(t, client, api+"/api/v1/namespaces", nil); code != http.StatusUnauthorized {
			t.Errorf("anonymous request to the apiserver port: %d, want 401", code)
		}
	})

	// The apiserver listens on loopback only; what it tells clients to use
	// must be the public port (the conformance test of OIDC discovery
	// fetches jwks_uri from a pod).
	t.Run("externalized URLs name the public port", func(t *testing.T) {
		public := ":" + strconv.Itoa(s.httpsPort)
		raw, err := cs.Discovery().RESTClient().Get().AbsPath("/.well-known/openid-configuration").DoRaw(ctx)
		if err != nil {
			t.Fatal(err)
		}
		var doc struct {
			JWKSURI string `json:"jwks_uri"`
		}
		if err := json.Unmarshal(raw, &doc); err != nil || !strings.HasSuffix(doc.JWKSURI, public+"/openid/v1/jwks") {
			t.Errorf("OIDC discovery jwks_uri %q (%v), want one on port %d", doc.JWKSURI, err, s.httpsPort)
		}
		raw, err = cs.Discovery().RESTClient().Get().AbsPath("/api").DoRaw(ctx)
		if err != nil {
			t.Fatal(err)
		}
		var api metav1.APIVersions
		if err := json.Unmarshal(raw, &api); err != nil || len(api.ServerAddressByClientCIDRs) == 0 {
			t.Fatalf("/api: %v, %s", err, raw)
		}
		for _, a := range api.ServerAddressByClientCIDRs {
			if !strings.HasSuffix(a.ServerAddress, public) {
				t.Errorf("/api serverAddressByClientCIDRs %q, want port %d", a.ServerAddress, s.httpsPort)
			}
		}
	})

	t.Run("a second server on the same data dir is refused", func(t *testing.T) {
		code, out := runBerth(t, 30*time.Second, "server", "--disable-agent", "--config", s.configPath(),
			"--data-dir", s.dataDir, "--https-listen-port", strconv.Itoa(freePort(t)),
			"--apiserver-port", strconv.Itoa(freePort(t)), "--write-kubeconfig", s.kubeconfig+".2")
		if code == 0 || !strings.Contains(out, "berth.lock") || !strings.Contains(out, "another berth process") {
			t.Errorf("exit %d, output lacks the lock message:\n%s", code, tail(out, 10))
		}
	})

	t.Run("deployment gets a replicaset and pending pods", func(t *testing.T) {
		createDeployment(t, cs, "web", 2)
		waitFor(t, 60*time.Second, "2 Pending unschedulable pods of deployment web", func() (bool, error) {
			pods, err := cs.CoreV1().Pods("default").List(ctx, metav1.ListOptions{LabelSelector: "app=web"})
			if err != nil {
				return false, err
			}
			n := 0
			for _, p := range pods.Items {
				if p.Status.Phase == corev1.PodPending && len(p.OwnerReferences) == 1 && p.OwnerReferences[0].Kind == "ReplicaSet" {
					for _, c := range p.Status.Conditions {
						if c.Type == corev1.PodScheduled && c.Status == corev1.ConditionFalse && c.Reason == corev1.PodReasonUnschedulable {
							n++
						}
					}
				}
			}
			return n == 2, nil
		})
	})

	t.Run("kubernetes service points at the public port", func(t *testing.T) {
		waitFor(t, 30*time.Second, "endpoints and endpointslice of default/kubernetes", func() (bool, error) {
			ep, err := cs.CoreV1().Endpoints("default").Get(ctx, "kubernetes", metav1.GetOptions{})
			if err != nil {
				return false, err
			}
			sl, err := cs.DiscoveryV1().EndpointSlices("default").Get(ctx, "kubernetes", metav1.GetOptions{})
			if err != nil {
				return false, err
			}
			okEp := len(ep.Subsets) == 1 && len(ep.Subsets[0].Ports) == 1 && ep.Subsets[0].Ports[0].Port == int32(s.httpsPort) &&
				len(ep.Subsets[0].Addresses) == 1 && ep.Subsets[0].Addresses[0].IP != "127.0.0.1"
			okSl := len(sl.Ports) == 1 && *sl.Ports[0].Port == int32(s.httpsPort) && len(sl.Endpoints) == 1
			return okEp && okSl, nil
		})
	})

	before := snapshot(t, cs)
	t.Run("SIGTERM stops cleanly", func(t *testing.T) {
		code, took := s.stop(60 * time.Second)
		if code != 0 {
			t.Errorf("exit code %d after SIGTERM, want 0", code)
		}
		t.Logf("stopped %s after SIGTERM", took.Round(time.Millisecond))
		if _, err := os.Stat(filepath.Join(s.dataDir, "server", "db", "state.db")); err != nil {
			t.Errorf("database: %v", err)
		}
	})

	caBefore, _ := os.ReadFile(filepath.Join(s.dataDir, "server", "tls", "server-ca.crt"))
	t.Run("restart keeps every object and resourceVersions grow", func(t *testing.T) {
		s.configYAML += "tls-san+:\n  - added-later.example\n"
		s.start()
		cs := s.waitReady(60 * time.Second)
		if cert := servingCert(t, s.httpsPort, nil); !contains(cert.DNSNames, "added-later.example") ||
			!contains(cert.DNSNames, "berth-test.example") {
			t.Errorf("serving cert not re-issued for the new --tls-san: %v", cert.DNSNames)
		}
		if caAfter, _ := os.ReadFile(filepath.Join(s.dataDir, "server", "tls", "server-ca.crt")); string(caAfter) != string(caBefore) {
			t.Errorf("the server CA changed across a restart")
		}
		after := snapshot(t, cs)
		for key, rv := range before.rvs {
			got, ok := after.rvs[key]
			if !ok {
				t.Errorf("%s is gone after restart", key)
				continue
			}
			if got < rv {
				t.Errorf("%s resourceVersion went back from %d to %d", key, rv, got)
			}
		}
		cm, err := cs.CoreV1().ConfigMaps("default").Create(ctx, &corev1.ConfigMap{
			ObjectMeta: metav1.ObjectMeta{Name: "after-restart"}}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if rv, _ := strconv.ParseInt(cm.ResourceVersion, 10, 64); rv <= before.max {
			t.Errorf("new object's resourceVersion %d is not above the highest before restart (%d)", rv, before.max)
		}
		if code, _ := s.stop(60 * time.Second); code != 0 {
			t.Errorf("exit code %d after SIGTERM, want 0", code)
		}
	})
}

type state struct {
	rvs map[string]int64
	max int64
}

// snapshot records the resourceVersion of every Deployment, ReplicaSet, Pod
// and ConfigMap in every namespace.
func snapshot(t *testing.T, cs kubernetes.Interface) state {
	t.Helper()
	ctx := context.Background()
	st := state{rvs: map[string]int64{}}
	add := func(kind string, items []metav1.Object) {
		for _, o := range items {
			rv, err := strconv.ParseInt(o.GetResourceVersion(), 10, 64)
			if err != nil {
				t.Fatalf("%s %s: resourceVersion %q", kind, o.GetName(), o.GetResourceVersion())
			}
			st.rvs[kind+"/"+o.GetNamespace()+"/"+o.GetName()] = rv
			st.max = max(st.max, rv)
		}
	}
	deps, err := cs.AppsV1().Deployments("").List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	rss, err := cs.AppsV1().ReplicaSets("").List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	pods, err := cs.CoreV1().Pods("").List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	cms, err := cs.CoreV1().ConfigMaps("").List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var objs []metav1.Object
	for i := range deps.Items {
		objs = append(objs, &deps.Items[i])
	}
	add("deployment", objs)
	objs = nil
	for i := range rss.Items {
		objs = append(objs, &rss.Items[i])
	}
	add("replicaset", objs)
	objs = nil
	for i := range pods.Items {
		objs = append(objs, &pods.Items[i])
	}
	add("pod", objs)
	objs = nil
	for i := range cms.Items {
		objs = append(objs, &cms.Items[i])
	}
	add("configmap", objs)
	if len(deps.Items) == 0 || len(pods.Items) == 0 {
		t.Fatalf("snapshot found %d deployments and %d pods; the test needs some", len(deps.Items), len(pods.Items))
	}
	return st
}

func createDeployment(t *testing.T, cs kubernetes.Interface, name string, replicas int32) {
	t.Helper()
	labels := map[string]string{"app": name}
	_, err := cs.AppsV1().Deployments("default").Create(context.Background(), &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: appsv1.DeploymentSpec{
			Replicas: ptr.To(replicas),
			Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: labels},
				Spec: corev1.PodSpec{Containers: []corev1.Container{{
					Name: name, Image: "registry.example/" + name + ":1",
				}}},
			},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("create deployment: %v", err)
	}
}

func waitFor(t *testing.T, timeout time.Duration, what string, cond func() (bool, error)) {
	t.Helper()
	var last error
	err := wait.PollUntilContextTimeout(context.Background(), 200*time.Millisecond, timeout, true,
		func(context.Context) (bool, error) {
			ok, err := cond()
			last = err
			return ok, nil
		})
	if err != nil {
		t.Fatalf("waiting for %s: %v (last error: %v)", what, err, last)
	}
}

func insecureClient(cert *tls.Certificate) *http.Client {
	cfg := &tls.Config{InsecureSkipVerify: true} //nolint:gosec // the tests inspect the cert themselves
	if cert != nil {
		cfg.Certificates = []tls.Certificate{*cert}
	}
	return &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: cfg}}
}

func get(t *testing.T, c *http.Client, url string, headers map[string]string) (int, string) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, url, nil)
	for k, v := range headers {
		req.Header.Set(k, v)
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func servingCert(t *testing.T, port int, _ *tls.Certificate) *x509.Certificate {
	t.Helper()
	conn, err := tls.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", port), &tls.Config{InsecureSkipVerify: true}) //nolint:gosec
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	return conn.ConnectionState().PeerCertificates[0]
}

func fileMode(t *testing.T, path string) os.FileMode {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Mode().Perm()
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}
