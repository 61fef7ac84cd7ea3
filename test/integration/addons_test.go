package integration

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// TestPackagedAddons: the server writes its add-ons into the manifests dir
// and applies them (templated with the cluster's DNS address); --disable on
// a restart removes an add-on and its objects; X.skip keeps a user's edit.
func TestPackagedAddons(t *testing.T) {
	s := newServer(t, "--cluster-dns", "10.43.0.53", "--system-default-registry", "mirror.example:5000")
	s.start()
	cs := s.waitReady(60 * time.Second)
	ctx := context.Background()
	dir := filepath.Join(s.dataDir, "server", "manifests")
	for _, f := range []string{"coredns.yaml", "local-storage.yaml", "metrics-server.yaml"} {
		if _, err := os.Stat(filepath.Join(dir, f)); err != nil {
			t.Errorf("packaged add-on not written: %v", err)
		}
	}
	eventually(t, "add-ons applied", func() error {
		svc, err := cs.CoreV1().Services("kube-system").Get(ctx, "kube-dns", metav1.GetOptions{})
		if err != nil {
			return err
		}
		if svc.Spec.ClusterIP != "10.43.0.53" {
			return fmt.Errorf("kube-dns ClusterIP %s, want --cluster-dns 10.43.0.53", svc.Spec.ClusterIP)
		}
		d, err := cs.AppsV1().Deployments("kube-system").Get(ctx, "coredns", metav1.GetOptions{})
		if err != nil {
			return err
		}
		if img := d.Spec.Template.Spec.Containers[0].Image; img != "mirror.example:5000/coredns:1.15.0" {
			return fmt.Errorf("coredns image %s, want the --system-default-registry prefix", img)
		}
		sc, err := cs.StorageV1().StorageClasses().Get(ctx, "local-path", metav1.GetOptions{})
		if err != nil {
			return err
		}
		if sc.Annotations["storageclass.kubernetes.io/is-default-class"] != "true" {
			return fmt.Errorf("local-path is not the default StorageClass")
		}
		_, err = cs.AppsV1().Deployments("kube-system").Get(ctx, "metrics-server", metav1.GetOptions{})
		return err
	})

	// A user's edit to a skipped add-on survives a restart.
	if err := os.WriteFile(filepath.Join(dir, "local-storage.yaml.skip"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "local-storage.yaml"), []byte("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: mine}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if code, _ := s.stop(30 * time.Second); code != 0 {
		t.Fatalf("stop: exit %d", code)
	}
	s.extra = append(s.extra, "--disable", "metrics-server")
	s.start()
	cs = s.waitReady(60 * time.Second)
	eventually(t, "metrics-server removed", func() error {
		if _, err := os.Stat(filepath.Join(dir, "metrics-server.yaml")); !os.IsNotExist(err) {
			return fmt.Errorf("metrics-server.yaml still there (%v)", err)
		}
		if _, err := cs.AppsV1().Deployments("kube-system").Get(ctx, "metrics-server", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
			return fmt.Errorf("metrics-server Deployment still there (%v)", err)
		}
		return nil
	})
	b, err := os.ReadFile(filepath.Join(dir, "local-storage.yaml"))
	if err != nil || !strings.Contains(string(b), "name: mine") {
		t.Errorf("the skipped add-on was rewritten: %v %q", err, b)
	}
	if _, err := cs.AppsV1().Deployments("kube-system").Get(ctx, "coredns", metav1.GetOptions{}); err != nil {
		t.Errorf("coredns after restart: %v", err)
	}
}
