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
	"k8s.io/client-go/kubernetes"
)

// TestAutoDeploy: files in <data-dir>/server/manifests are applied, edits
// re-applied, objects a file drops are pruned, a removed file's objects
// deleted, X.skip leaves X alone, and a bad file is reported on its state
// object without stopping the others.
func TestAutoDeploy(t *testing.T) {
	s := newServer(t)
	s.start()
	cs := s.waitReady(60 * time.Second)
	dir := filepath.Join(s.dataDir, "server", "manifests")
	write := func(name, content string) {
		t.Helper()
		if err := os.MkdirAll(filepath.Dir(filepath.Join(dir, name)), 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	ctx := context.Background()
	cmData := func(name string) (string, error) {
		cm, err := cs.CoreV1().ConfigMaps("default").Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return "", err
		}
		return cm.Data["v"], nil
	}

	write("apps/a.yaml", `apiVersion: v1
kind: ConfigMap
metadata: {name: cm-a}
data: {v: one}
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: sa-a, namespace: kube-system}
`)
	eventually(t, "cm-a and sa-a applied", func() error {
		v, err := cmData("cm-a")
		if err == nil && v != "one" {
			err = fmt.Errorf("v=%q", v)
		}
		if err == nil {
			_, err = cs.CoreV1().ServiceAccounts("kube-system").Get(ctx, "sa-a", metav1.GetOptions{})
		}
		return err
	})

	// An edit is re-applied; the ServiceAccount the file no longer holds is pruned.
	write("apps/a.yaml", "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: cm-a}\ndata: {v: two}\n")
	eventually(t, "edit re-applied and sa-a pruned", func() error {
		if v, err := cmData("cm-a"); err != nil || v != "two" {
			return fmt.Errorf("cm-a v=%q %v", v, err)
		}
		if _, err := cs.CoreV1().ServiceAccounts("kube-system").Get(ctx, "sa-a", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
			return fmt.Errorf("sa-a still there (%v)", err)
		}
		return nil
	})

	// Bad files: reported on their state objects and in the log; a good
	// file next to them still applies.
	write("broken.yaml", "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: [oops\n")
	write("alien.yaml", "apiVersion: example.com/v1\nkind: Frobnicator\nmetadata: {name: f}\n")
	write("good.json", `{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"cm-json"},"data":{"v":"json"}}`)
	eventually(t, "good.json applied next to bad files", func() error {
		v, err := cmData("cm-json")
		if err == nil && v != "json" {
			err = fmt.Errorf("v=%q", v)
		}
		return err
	})
	eventually(t, "errors recorded", func() error {
		errs := stateErrors(ctx, cs)
		if !strings.Contains(errs["broken.yaml"], "document 1") {
			return fmt.Errorf("broken.yaml error %q", errs["broken.yaml"])
		}
		if !strings.Contains(errs["alien.yaml"], "unknown kind") {
			return fmt.Errorf("alien.yaml error %q", errs["alien.yaml"])
		}
		if errs["apps/a.yaml"] != "" {
			return fmt.Errorf("a.yaml error %q", errs["apps/a.yaml"])
		}
		return nil
	})
	if out := s.out.String(); !strings.Contains(out, "deploy: broken.yaml") || !strings.Contains(out, "deploy: alien.yaml") {
		t.Errorf("the log does not name the bad files")
	}

	// X.skip: berth leaves X and its objects alone.
	write("apps/a.yaml.skip", "")
	write("apps/a.yaml", "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: cm-a}\ndata: {v: three}\n")
	write("marker.yaml", "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: cm-marker}\ndata: {v: m}\n")
	eventually(t, "a later file applied", func() error { _, err := cmData("cm-marker"); return err })
	if v, err := cmData("cm-a"); err != nil || v != "two" {
		t.Errorf("a skipped file was applied or pruned: v=%q %v", v, err)
	}

	// A removed file's objects are deleted.
	if err := os.Remove(filepath.Join(dir, "good.json")); err != nil {
		t.Fatal(err)
	}
	eventually(t, "removed file pruned", func() error {
		if _, err := cmData("cm-json"); !apierrors.IsNotFound(err) {
			return fmt.Errorf("cm-json still there (%v)", err)
		}
		return nil
	})
}

// stateErrors maps each manifest's source to its recorded error.
func stateErrors(ctx context.Context, cs kubernetes.Interface) map[string]string {
	out := map[string]string{}
	list, err := cs.CoreV1().ConfigMaps("kube-system").List(ctx, metav1.ListOptions{LabelSelector: "berth.io/manifest"})
	if err != nil {
		return out
	}
	for _, cm := range list.Items {
		out[cm.Data["source"]] = cm.Data["error"]
	}
	return out
}

// eventually retries fn until it succeeds; the timeout only guards hangs.
func eventually(t *testing.T, what string, fn func() error) {
	t.Helper()
	var err error
	for deadline := time.Now().Add(60 * time.Second); time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
		if err = fn(); err == nil {
			return
		}
	}
	t.Fatalf("%s: %v", what, err)
}
