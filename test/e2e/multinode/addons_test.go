package multinode

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

// TestAddons: a server and an agent whose add-on images come only from the
// air-gap bundle (no registry) run CoreDNS, local-path storage and
// metrics-server; DNS answers pods on the agent, a local-path volume keeps
// its data across pods, `kubectl top` has numbers, and --disable on a
// restart removes an add-on.
func TestAddons(t *testing.T) {
	if _, err := os.Stat(airgapBundle); err != nil {
		t.Fatalf("air-gap bundle: %v (run make airgap)", err)
	}
	c := NewCluster(t)
	c.ExtraImages = []string{airgapBundle}
	// An empty --disable: every packaged add-on.
	srv := c.StartServer(t, "--disable", "")
	cs := c.WaitNodeReady(t, srv, 3*time.Minute, time.Time{})
	tok, err := c.Token()
	if err != nil {
		t.Fatal(err)
	}
	agent := c.AddNode(t, "mn-agent1")
	startAgent(t, c, agent, tok)
	c.WaitNodeReady(t, agent, 3*time.Minute, time.Time{})
	kc, err := c.Kubeconfig()
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	for _, d := range []string{"coredns", "local-path-provisioner", "metrics-server"} {
		waitDeploymentAvailable(t, cs, "kube-system", d)
	}

	ns := "mn-addons"
	if _, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}

	t.Run("DNS from a pod on the agent", func(t *testing.T) {
		if _, err := cs.CoreV1().Services(ns).Create(ctx, &corev1.Service{
			ObjectMeta: metav1.ObjectMeta{Name: "named"},
			Spec:       corev1.ServiceSpec{Selector: map[string]string{"app": "none"}, Ports: []corev1.ServicePort{{Port: 80}}},
		}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		if _, err := cs.CoreV1().Pods(ns).Create(ctx, bbPod("dns", agent.Name, "sleep 3600"), metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		waitPod(t, cs, ns, "dns", 2*time.Minute, podRunning)
		svc, err := cs.CoreV1().Services(ns).Get(ctx, "named", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		out := kubectlUntil(t, kc, "10.43.0.1", "exec", "-n", ns, "dns", "--", "nslookup", "kubernetes.default.svc.cluster.local")
		if !strings.Contains(out, "10.43.0.1") {
			t.Errorf("kubernetes.default: %s", out)
		}
		out = kubectlUntil(t, kc, svc.Spec.ClusterIP, "exec", "-n", ns, "dns", "--", "nslookup", "named."+ns+".svc.cluster.local")
		if !strings.Contains(out, svc.Spec.ClusterIP) {
			t.Errorf("named.%s: %s", ns, out)
		}
		// Node names, from the NodeHosts entries berth keeps in CoreDNS's
		// ConfigMap: the server's (another node) and the agent's own. The
		// names end in a dot because busybox's nslookup asks only the
		// search-list names for a bare one (pods' libc resolvers try the
		// bare name last), and the image's other applets resolve through
		// a static glibc without NSS modules. A node's entry reaches CoreDNS
		// through its ConfigMap volume, which the kubelet refreshes at its
		// periodic pod sync (about a minute, with jitter), then the hosts
		// plugin's 5 s reload: 90 s was seen to be too short for the agent
		// that had just joined.
		for _, n := range []*Node{srv, agent} {
			out := kubectlWithin(t, 3*time.Minute, kc, n.IP, "exec", "-n", ns, "dns", "--", "nslookup", n.Name+".")
			if !strings.Contains(out, "Address: "+n.IP) {
				t.Errorf("node %s: %s", n.Name, out)
			}
		}
	})

	t.Run("a local-path volume outlives its pod", func(t *testing.T) {
		if _, err := cs.CoreV1().PersistentVolumeClaims(ns).Create(ctx, &corev1.PersistentVolumeClaim{
			ObjectMeta: metav1.ObjectMeta{Name: "data"},
			Spec: corev1.PersistentVolumeClaimSpec{
				AccessModes: []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce},
				Resources:   corev1.VolumeResourceRequirements{Requests: corev1.ResourceList{corev1.ResourceStorage: resource.MustParse("10Mi")}},
			},
		}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		volPod := func(name, script string) *corev1.Pod {
			p := bbPod(name, "", script)
			p.Spec.Volumes = []corev1.Volume{{Name: "d", VolumeSource: corev1.VolumeSource{
				PersistentVolumeClaim: &corev1.PersistentVolumeClaimVolumeSource{ClaimName: "data"}}}}
			p.Spec.Containers[0].VolumeMounts = []corev1.VolumeMount{{Name: "d", MountPath: "/data"}}
			return p
		}
		if _, err := cs.CoreV1().Pods(ns).Create(ctx, volPod("writer", "echo persisted-$HOSTNAME > /data/f; sleep 3600"), metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		waitPod(t, cs, ns, "writer", 2*time.Minute, podRunning)
		pvc, err := cs.CoreV1().PersistentVolumeClaims(ns).Get(ctx, "data", metav1.GetOptions{})
		if err != nil || pvc.Status.Phase != corev1.ClaimBound {
			t.Fatalf("PVC: %v %v", err, pvc.Status.Phase)
		}
		zero := int64(0)
		if err := cs.CoreV1().Pods(ns).Delete(ctx, "writer", metav1.DeleteOptions{GracePeriodSeconds: &zero}); err != nil {
			t.Fatal(err)
		}
		waitGonePod(t, cs, ns, "writer")
		if _, err := cs.CoreV1().Pods(ns).Create(ctx, volPod("reader", "sleep 3600"), metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		waitPod(t, cs, ns, "reader", 2*time.Minute, podRunning)
		if out := kubectlUntil(t, kc, "persisted-writer", "exec", "-n", ns, "reader", "--", "cat", "/data/f"); !strings.Contains(out, "persisted-writer") {
			t.Errorf("read back %q", out)
		}
	})

	t.Run("kubectl top", func(t *testing.T) {
		out := kubectlUntil(t, kc, agent.Name, "top", "nodes")
		if !strings.Contains(out, srv.Name) || !strings.Contains(out, "Mi") {
			t.Errorf("top nodes: %s", out)
		}
		out = kubectlUntil(t, kc, "coredns", "top", "pods", "-n", "kube-system")
		for _, line := range strings.Split(out, "\n") {
			if strings.HasPrefix(line, "coredns-") && !strings.HasSuffix(strings.TrimSpace(line), "Mi") {
				t.Errorf("top pods: %q", line)
			}
		}
	})

	t.Run("a dropped manifest is applied, re-applied and pruned", func(t *testing.T) {
		file := filepath.Join(srv.DataDir, "server", "manifests", "mine.yaml")
		write := func(v string) {
			t.Helper()
			if err := os.WriteFile(file, []byte("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: mine, namespace: "+ns+"}\ndata: {v: "+v+"}\n"), 0o600); err != nil {
				t.Fatal(err)
			}
		}
		value := func() string {
			cm, err := cs.CoreV1().ConfigMaps(ns).Get(ctx, "mine", metav1.GetOptions{})
			if err != nil {
				return "<" + err.Error() + ">"
			}
			return cm.Data["v"]
		}
		waitValue := func(want string) {
			t.Helper()
			for deadline := time.Now().Add(time.Minute); time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
				if value() == want {
					return
				}
			}
			t.Fatalf("ConfigMap mine: %s, want %s", value(), want)
		}
		write("one")
		waitValue("one")
		write("two")
		waitValue("two")
		if err := os.Remove(file); err != nil {
			t.Fatal(err)
		}
		for deadline := time.Now().Add(time.Minute); ; time.Sleep(200 * time.Millisecond) {
			if _, err := cs.CoreV1().ConfigMaps(ns).Get(ctx, "mine", metav1.GetOptions{}); apierrors.IsNotFound(err) {
				break
			}
			if time.Now().After(deadline) {
				t.Fatal("ConfigMap mine not pruned after its file was removed")
			}
		}
	})

	t.Run("--disable on restart removes an add-on", func(t *testing.T) {
		t0 := time.Now()
		if _, err := srv.Stop(30 * time.Second); err != nil {
			t.Fatal(err)
		}
		args := append([]string{"server"}, srv.NodeArgs()...)
		args = append(args, "--advertise-address", srv.IP, "--write-kubeconfig", srv.Kubeconfig, "--disable", "metrics-server")
		if err := srv.Start(args...); err != nil {
			t.Fatal(err)
		}
		c.WaitNodeReady(t, srv, 3*time.Minute, t0)
		deadline := time.Now().Add(2 * time.Minute)
		for {
			_, err := cs.AppsV1().Deployments("kube-system").Get(ctx, "metrics-server", metav1.GetOptions{})
			if apierrors.IsNotFound(err) {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("metrics-server still deployed after --disable: %v", err)
			}
			time.Sleep(time.Second)
		}
		if _, err := cs.AppsV1().Deployments("kube-system").Get(ctx, "coredns", metav1.GetOptions{}); err != nil {
			t.Errorf("coredns after the restart: %v", err)
		}
	})
}

func waitDeploymentAvailable(t *testing.T, cs kubernetes.Interface, ns, name string) {
	t.Helper()
	var last string
	for deadline := time.Now().Add(3 * time.Minute); time.Now().Before(deadline); time.Sleep(time.Second) {
		d, err := cs.AppsV1().Deployments(ns).Get(context.Background(), name, metav1.GetOptions{})
		if err == nil && available(d) {
			return
		}
		last = fmt.Sprint(err)
		if err == nil {
			last = fmt.Sprintf("%d/%d available", d.Status.AvailableReplicas, d.Status.Replicas)
		}
	}
	t.Fatalf("deployment %s/%s not available: %s", ns, name, last)
}

func available(d *appsv1.Deployment) bool {
	return d.Status.ObservedGeneration >= d.Generation && d.Status.AvailableReplicas > 0 &&
		d.Status.UpdatedReplicas == d.Status.Replicas
}

func waitGonePod(t *testing.T, cs kubernetes.Interface, ns, name string) {
	t.Helper()
	for deadline := time.Now().Add(2 * time.Minute); time.Now().Before(deadline); time.Sleep(500 * time.Millisecond) {
		if _, err := cs.CoreV1().Pods(ns).Get(context.Background(), name, metav1.GetOptions{}); apierrors.IsNotFound(err) {
			return
		}
	}
	t.Fatalf("pod %s/%s not deleted", ns, name)
}
