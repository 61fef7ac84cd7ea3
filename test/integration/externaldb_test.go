package integration

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/berth-io/berth/test/dbtest"
)

// TestExternalDatastorePostgres and TestExternalDatastoreMariaDB run two
// servers on one real database (Debian's packages, started here on
// loopback): the second finds the cluster's CAs in the datastore with the
// same token (no --server); a Deployment survives a restart of both; a
// wrong password and a different token are refused with clear errors that
// never show the password.
func TestExternalDatastorePostgres(t *testing.T) {
	testExternalDatastore(t, dbtest.StartPostgres)
}

func TestExternalDatastoreMariaDB(t *testing.T) {
	testExternalDatastore(t, dbtest.StartMariaDB)
}

func startDB(t *testing.T, start func(string) (*dbtest.DB, error), password string) *dbtest.DB {
	t.Helper()
	if os.Getuid() != 0 {
		t.Skip("needs root: the database runs as its system user")
	}
	db, err := start(password)
	if errors.Is(err, dbtest.ErrMissing) && !dbtest.Required() {
		// `make deps` installs them; the Makefile's targets require them.
		t.Skipf("%v", err)
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(db.Stop)
	return db
}

func testExternalDatastore(t *testing.T, start func(string) (*dbtest.DB, error)) {
	const dbPassword = "Db-pw-7f3a9c1e" // unique enough to grep for
	const clusterToken = "cluster-token-5b8e2d4f6a"
	db := startDB(t, start, dbPassword)
	ep := db.Endpoint("berth")
	common := []string{"--datastore-endpoint", ep, "--disable", "coredns,local-storage,metrics-server"}

	s1 := newServer(t, append(common, "--token", clusterToken)...)
	s1.hostname = "berth-test-s1"
	s1.start()
	cs1 := s1.waitReady(3 * time.Minute)
	// Same token and datastore, no --server: the CAs come from the datastore.
	s2 := newServer(t, append(common, "--token", clusterToken)...)
	s2.hostname = "berth-test-s2"
	s2.start()
	cs2 := s2.waitReady(3 * time.Minute)
	for _, f := range []string{"server-ca.crt", "client-ca.key", "service.key"} {
		a, _ := os.ReadFile(filepath.Join(s1.dataDir, "server", "tls", f))
		b, _ := os.ReadFile(filepath.Join(s2.dataDir, "server", "tls", f))
		if len(a) == 0 || !bytes.Equal(a, b) {
			t.Errorf("tls/%s differs between the servers", f)
		}
	}
	if !strings.Contains(s2.out.String(), "from the datastore") {
		t.Errorf("s2 did not say it took the bootstrap data from the datastore")
	}

	ctx := context.Background()
	dep := deployment("survivor")
	created, err := cs1.AppsV1().Deployments("default").Create(ctx, dep, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	// Written through one server, read through the other.
	waitErr(t, time.Minute, "the Deployment through the second server", func() error {
		_, err := cs2.AppsV1().Deployments("default").Get(ctx, "survivor", metav1.GetOptions{})
		return err
	})
	// The controller-manager (whichever holds the lease) makes its ReplicaSet.
	waitErr(t, 2*time.Minute, "the Deployment's ReplicaSet", func() error { return hasReplicaSet(ctx, cs2, created) })

	s1.stop(60 * time.Second)
	s2.stop(60 * time.Second)
	s1.start()
	s2.start()
	cs1 = s1.waitReady(3 * time.Minute)
	cs2 = s2.waitReady(3 * time.Minute)
	for i, cs := range []kubernetes.Interface{cs1, cs2} {
		got, err := cs.AppsV1().Deployments("default").Get(ctx, "survivor", metav1.GetOptions{})
		if err != nil || got.UID != created.UID {
			t.Errorf("server %d after the restart: %v (uid %v, want %v)", i+1, err, got.GetUID(), created.UID)
		}
		if err := hasReplicaSet(ctx, cs, created); err != nil {
			t.Errorf("server %d after the restart: %v", i+1, err)
		}
	}

	t.Run("token rotation", func(t *testing.T) {
		// `berth token rotate` on both servers, restart with the new token:
		// the bootstrap data is re-sealed, the cluster carries on.
		const newToken = "rotated-token-2d7c5e"
		s1.stop(60 * time.Second)
		s2.stop(60 * time.Second)
		for _, s := range []*server{s1, s2} {
			if code, out := runBerth(t, time.Minute, "token", "rotate", "-d", s.dataDir, "--new-token", newToken); code != 0 {
				t.Fatalf("token rotate: %d\n%s", code, out)
			}
			for i, a := range s.extra {
				if a == clusterToken {
					s.extra[i] = newToken
				}
			}
		}
		s1.start()
		s2.start()
		cs1 := s1.waitReady(3 * time.Minute)
		s2.waitReady(3 * time.Minute)
		if !strings.Contains(s1.out.String()+s2.out.String(), "re-sealed the cluster's bootstrap data") {
			t.Error("no server re-sealed the bootstrap data")
		}
		for _, s := range []*server{s1, s2} {
			if _, err := os.Stat(filepath.Join(s.dataDir, "server", "token.previous")); !os.IsNotExist(err) {
				t.Errorf("%s: token.previous left behind (%v)", s.dataDir, err)
			}
		}
		if _, err := cs1.AppsV1().Deployments("default").Get(ctx, "survivor", metav1.GetOptions{}); err != nil {
			t.Error(err)
		}
		// A new server with the old token is now refused.
		s3 := newServer(t, append(common, "--token", clusterToken)...)
		code, out := runBerth(t, 2*time.Minute, s3.argsWithConfig()...)
		wantRefused(t, code, out, "different token")
	})
	t.Run("wrong password", func(t *testing.T) {
		s3 := newServer(t, "--datastore-endpoint", db.EndpointWithPassword("berth", "Wrong-pw-91c2"), "--token", clusterToken)
		code, out := runBerth(t, 2*time.Minute, s3.argsWithConfig()...)
		wantRefused(t, code, out, "refused the login", "xxxxx@")
		if strings.Contains(out, "Wrong-pw-91c2") {
			t.Errorf("the output shows the password:\n%s", tail(out, 20))
		}
	})
	t.Run("unreachable", func(t *testing.T) {
		dead := *db
		dead.Port = freePort(t)
		s3 := newServer(t, "--datastore-endpoint", dead.Endpoint("berth"), "--token", clusterToken)
		code, out := runBerth(t, 2*time.Minute, s3.argsWithConfig()...)
		wantRefused(t, code, out, "is not reachable", "xxxxx@")
		if strings.Contains(out, dbPassword) {
			t.Errorf("the output shows the password:\n%s", tail(out, 20))
		}
	})
	t.Run("other token", func(t *testing.T) {
		s3 := newServer(t, append(common, "--token", "another-token-0000")...)
		code, out := runBerth(t, 2*time.Minute, s3.argsWithConfig()...)
		wantRefused(t, code, out, "different token")
		if _, err := os.Stat(filepath.Join(s3.dataDir, "server", "tls", "server-ca.crt")); !os.IsNotExist(err) {
			t.Errorf("a refused server made its CA anyway: %v", err)
		}
	})

	for _, s := range []*server{s1, s2} {
		if out := s.out.String(); strings.Contains(out, dbPassword) || strings.Contains(out, "token-5b8e2d4f6a") || strings.Contains(out, "token-2d7c5e") {
			t.Errorf("a server logged the database password or the token")
		}
	}
	// The CA keys in the datastore are sealed: the database's files never
	// hold the PEM in the clear.
	if leaked := grepDir(t, db.Dir, []byte("PRIVATE KEY")); leaked != "" {
		t.Errorf("a private key is stored in the clear in %s", leaked)
	}
}

func deployment(name string) *appsv1.Deployment {
	one := int32(1)
	labels := map[string]string{"app": name}
	return &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: appsv1.DeploymentSpec{
			Replicas: &one,
			Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: labels},
				Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "c", Image: "berth.local/pause:3.10"}}},
			},
		},
	}
}

func hasReplicaSet(ctx context.Context, cs kubernetes.Interface, d *appsv1.Deployment) error {
	rss, err := cs.AppsV1().ReplicaSets("default").List(ctx, metav1.ListOptions{LabelSelector: "app=" + d.Name})
	if err != nil {
		return err
	}
	for _, rs := range rss.Items {
		for _, o := range rs.OwnerReferences {
			if o.UID == d.UID {
				return nil
			}
		}
	}
	return fmt.Errorf("no ReplicaSet of Deployment %s", d.Name)
}

// waitErr retries f until it succeeds or timeout passes.
func waitErr(t *testing.T, timeout time.Duration, what string, f func() error) {
	t.Helper()
	waitFor(t, timeout, what, func() (bool, error) { err := f(); return err == nil, err })
}

// grepDir returns the first file under dir that contains needle.
func grepDir(t *testing.T, dir string, needle []byte) string {
	t.Helper()
	found := ""
	_ = filepath.Walk(dir, func(path string, fi os.FileInfo, err error) error {
		if err != nil || fi.IsDir() || found != "" || fi.Size() > 256<<20 {
			return nil
		}
		b, err := os.ReadFile(path)
		if err == nil && bytes.Contains(b, needle) {
			found = path
		}
		return nil
	})
	return found
}
