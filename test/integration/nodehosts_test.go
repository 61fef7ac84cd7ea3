package integration

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	corev1ac "k8s.io/client-go/applyconfigurations/core/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/util/retry"
)

// TestNodeHosts: the server keeps the NodeHosts key of kube-system/coredns
// equal to the nodes' InternalIPs (created, changed and deleted through the
// API: test servers run no node), restores it after a manifest that owns
// the key is applied and after the ConfigMap is deleted and re-applied, and
// the auto-deploy controller's re-apply leaves it alone.
func TestNodeHosts(t *testing.T) {
	s := newServer(t)
	s.start()
	cs := s.waitReady(60 * time.Second)
	ctx := context.Background()

	// No nodes yet: the key is there, empty (the manifest no longer holds it).
	waitNodeHosts(t, cs, "")

	createNode(t, cs, "nh-b",
		corev1.NodeAddress{Type: corev1.NodeInternalIP, Address: "10.77.0.2"},
		corev1.NodeAddress{Type: corev1.NodeExternalIP, Address: "203.0.113.2"},
		corev1.NodeAddress{Type: corev1.NodeHostName, Address: "nh-b"})
	createNode(t, cs, "nh-a",
		corev1.NodeAddress{Type: corev1.NodeInternalIP, Address: "fd00:77::1"},
		corev1.NodeAddress{Type: corev1.NodeInternalIP, Address: "10.77.0.1"})
	waitNodeHosts(t, cs, "10.77.0.1 nh-a\nfd00:77::1 nh-a\n10.77.0.2 nh-b\n")

	// A changed address replaces the old line.
	if err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
		n, err := cs.CoreV1().Nodes().Get(ctx, "nh-b", metav1.GetOptions{})
		if err != nil {
			return err
		}
		n.Status.Addresses[0].Address = "10.77.0.20"
		_, err = cs.CoreV1().Nodes().UpdateStatus(ctx, n, metav1.UpdateOptions{})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	want := "10.77.0.1 nh-a\nfd00:77::1 nh-a\n10.77.0.20 nh-b\n"
	waitNodeHosts(t, cs, want)

	// A deleted node's lines go.
	if err := cs.CoreV1().Nodes().Delete(ctx, "nh-a", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	want = "10.77.0.20 nh-b\n"
	waitNodeHosts(t, cs, want)
	checkOwners(t, cs)

	// A manifest that still sets NodeHosts (one written by an older berth,
	// or a user's copy of it), applied as the deploy controller applies:
	// the entries come back.
	// The first overwrite is silent (an upgrade from a berth whose manifest
	// held the key); a second one is warned about, once.
	cm, err := cs.CoreV1().ConfigMaps("kube-system").Get(ctx, "coredns", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for i := 1; i <= 3; i++ {
		applied, err := cs.CoreV1().ConfigMaps("kube-system").Apply(ctx,
			corev1ac.ConfigMap("coredns", "kube-system").WithData(map[string]string{"Corefile": cm.Data["Corefile"], "NodeHosts": ""}),
			metav1.ApplyOptions{FieldManager: "berth-deploy", Force: true})
		if err != nil {
			t.Fatal(err)
		}
		if applied.Data["NodeHosts"] != "" {
			t.Fatalf("the forced apply did not take: %q", applied.Data["NodeHosts"])
		}
		waitNodeHosts(t, cs, want)
		eventually(t, fmt.Sprintf("warnings after %d overwrites", i), func() error {
			if n, wantN := strings.Count(s.out.String(), deployWarning), min(i-1, 1); n != wantN {
				return fmt.Errorf("%d warnings about berth-deploy setting NodeHosts, want %d", n, wantN)
			}
			return nil
		})
	}

	// Deleted, then re-applied by the deploy controller (its file changed):
	// a ConfigMap without the key, which is filled again.
	manifest := filepath.Join(s.dataDir, "server", "manifests", "coredns.yaml")
	if err := cs.CoreV1().ConfigMaps("kube-system").Delete(ctx, "coredns", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	appendComment(t, manifest, "# re-applied by TestNodeHosts\n")
	waitNodeHosts(t, cs, want)
	waitManifestApplied(t, cs, manifest)
	checkOwners(t, cs)

	// The deploy controller's next apply does not touch the key: the
	// ConfigMap does not change at all.
	cm, err = cs.CoreV1().ConfigMaps("kube-system").Get(ctx, "coredns", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	appendComment(t, manifest, "# and once more\n")
	waitManifestApplied(t, cs, manifest)
	after, err := cs.CoreV1().ConfigMaps("kube-system").Get(ctx, "coredns", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if after.ResourceVersion != cm.ResourceVersion || after.Data["NodeHosts"] != want {
		t.Errorf("the deploy controller's re-apply changed the ConfigMap (resourceVersion %s → %s, NodeHosts %q)",
			cm.ResourceVersion, after.ResourceVersion, after.Data["NodeHosts"])
	}
	if n := strings.Count(s.out.String(), deployWarning); n != 1 {
		t.Errorf("%d warnings about berth-deploy setting NodeHosts, want 1", n)
	}
	noNodeHostsErrors(t, s)
}

// deployWarning is logged when berth-deploy keeps setting NodeHosts.
const deployWarning = `"berth-deploy" keeps setting NodeHosts`

// TestNodeHostsWithoutCoreDNS: with --disable coredns the controller waits
// (one log line, no errors), and fills the key of a coredns ConfigMap the
// user creates later, as k3s does for self-managed CoreDNS.
func TestNodeHostsWithoutCoreDNS(t *testing.T) {
	s := newServer(t, "--disable", "coredns")
	s.start()
	cs := s.waitReady(60 * time.Second)
	ctx := context.Background()
	createNode(t, cs, "nh-c", corev1.NodeAddress{Type: corev1.NodeInternalIP, Address: "10.77.0.3"})
	eventually(t, "the controller says it waits", func() error {
		if !strings.Contains(s.out.String(), "waiting for ConfigMap kube-system/coredns") {
			return fmt.Errorf("no waiting line in the log")
		}
		return nil
	})
	// Create fails if anything made the ConfigMap meanwhile.
	if _, err := cs.CoreV1().ConfigMaps("kube-system").Create(ctx, &corev1.ConfigMap{
		ObjectMeta: metav1.ObjectMeta{Name: "coredns", Namespace: "kube-system"},
		Data:       map[string]string{"Corefile": ".:53 {\n    hosts /etc/coredns/NodeHosts\n}\n"},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create the user's coredns ConfigMap: %v", err)
	}
	waitNodeHosts(t, cs, "10.77.0.3 nh-c\n")
	if n := strings.Count(s.out.String(), "waiting for ConfigMap kube-system/coredns"); n != 1 {
		t.Errorf("the missing ConfigMap was logged %d times, want once", n)
	}
	noNodeHostsErrors(t, s)
}

func createNode(t *testing.T, cs kubernetes.Interface, name string, addrs ...corev1.NodeAddress) {
	t.Helper()
	n := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name}, Status: corev1.NodeStatus{Addresses: addrs}}
	// A Node's status is kept on create.
	if _, err := cs.CoreV1().Nodes().Create(context.Background(), n, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create node %s: %v", name, err)
	}
	t.Cleanup(func() { _ = cs.CoreV1().Nodes().Delete(context.Background(), name, metav1.DeleteOptions{}) })
}

// waitNodeHosts waits until kube-system/coredns has NodeHosts == want (the
// key present, even when want is empty).
func waitNodeHosts(t *testing.T, cs kubernetes.Interface, want string) {
	t.Helper()
	eventually(t, fmt.Sprintf("NodeHosts %q", want), func() error {
		cm, err := cs.CoreV1().ConfigMaps("kube-system").Get(context.Background(), "coredns", metav1.GetOptions{})
		if err != nil {
			return err
		}
		got, ok := cm.Data["NodeHosts"]
		if !ok {
			return fmt.Errorf("no NodeHosts key")
		}
		if got != want {
			return fmt.Errorf("NodeHosts %q", got)
		}
		return nil
	})
}

// checkOwners: only berth's nodehosts controller owns data.NodeHosts, so
// the deploy controller's forced applies leave it alone.
func checkOwners(t *testing.T, cs kubernetes.Interface) {
	t.Helper()
	cm, err := cs.CoreV1().ConfigMaps("kube-system").Get(context.Background(), "coredns", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var owners []string
	for _, mf := range cm.ManagedFields {
		if mf.FieldsV1 != nil && strings.Contains(string(mf.FieldsV1.Raw), `"f:NodeHosts"`) {
			owners = append(owners, mf.Manager)
		}
	}
	if !slices.Equal(owners, []string{"berth-nodehosts"}) {
		t.Errorf("NodeHosts owned by %v, want [berth-nodehosts]", owners)
	}
}

func appendComment(t *testing.T, path, line string) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteString(line); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
}

// waitManifestApplied waits until the deploy controller recorded the file's
// current checksum without an error.
func waitManifestApplied(t *testing.T, cs kubernetes.Interface, path string) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(b)
	want := hex.EncodeToString(sum[:])
	eventually(t, filepath.Base(path)+" re-applied", func() error {
		list, err := cs.CoreV1().ConfigMaps("kube-system").List(context.Background(), metav1.ListOptions{LabelSelector: "berth.io/manifest"})
		if err != nil {
			return err
		}
		for _, cm := range list.Items {
			if cm.Data["source"] == filepath.Base(path) {
				if cm.Data["checksum"] != want || cm.Data["error"] != "" {
					return fmt.Errorf("state: checksum %s error %q", cm.Data["checksum"], cm.Data["error"])
				}
				return nil
			}
		}
		return apierrors.NewNotFound(corev1.Resource("configmaps"), "state of "+path)
	})
}

// noNodeHostsErrors: the controller logged no error (klog's E lines).
func noNodeHostsErrors(t *testing.T, s *server) {
	t.Helper()
	for _, line := range strings.Split(s.out.String(), "\n") {
		if strings.HasPrefix(line, "E") && strings.Contains(line, "nodehosts") {
			t.Errorf("error logged: %s", line)
		}
	}
}
