package control

import (
	"context"
	"fmt"
	"maps"
	"net"
	"slices"
	"strconv"
	"strings"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/klog/v2"
	"k8s.io/utils/ptr"
)

// KubernetesEndpoints keeps the `kubernetes` Service's endpoints on the
// public port of every live server. The apiserver listens on loopback only,
// so its own endpoint reconciler (which advertises its secure port) is
// turned off (--endpoint-reconciler-type=none) and berth does the same job
// the apiserver's lease reconciler does: each server renews a Lease
// kube-system/berth-apiserver-<ip>-<port> and writes the union of the
// servers whose Lease is fresh. Several servers on one datastore thus never
// overwrite each other, and a server that is gone drops out after
// EndpointTTL (at once when it stops cleanly).
type KubernetesEndpoints struct {
	Kubeconfig string
	IP         net.IP
	Port       int32

	cancel context.CancelFunc
	done   chan struct{}
	cs     kubernetes.Interface
}

// Timing of the server leases: renewed every EndpointInterval, expired
// after EndpointTTL (the apiserver's lease reconciler: 10 s and 15 s; a
// little longer here for slow disks).
const (
	EndpointInterval = 10 * time.Second
	EndpointTTL      = 30 * time.Second
)

// serverLeaseLabel marks the servers' Leases.
const serverLeaseLabel = "berth.io/apiserver-endpoint"

func (k *KubernetesEndpoints) Name() string { return "kubernetes-endpoints" }

func (k *KubernetesEndpoints) Prepare(context.Context) error { return nil }

func (k *KubernetesEndpoints) Start(context.Context) error {
	cs, err := Clientset(k.Kubeconfig)
	if err != nil {
		return err
	}
	k.cs = cs
	ctx, cancel := context.WithCancel(context.Background())
	k.cancel, k.done = cancel, make(chan struct{})
	go func() {
		defer close(k.done)
		for {
			if err := k.reconcile(ctx, cs, true); err != nil && ctx.Err() == nil {
				klog.Warningf("kubernetes service endpoints: %v", err)
			}
			select {
			case <-ctx.Done():
				return
			case <-time.After(EndpointInterval):
			}
		}
	}()
	return nil
}

func (k *KubernetesEndpoints) leaseName() string {
	return "berth-apiserver-" + strings.NewReplacer(".", "-", ":", "-").Replace(k.IP.String()) + "-" + strconv.Itoa(int(k.Port))
}

// renew creates or renews this server's Lease.
func (k *KubernetesEndpoints) renew(ctx context.Context, cs kubernetes.Interface) error {
	leases := cs.CoordinationV1().Leases(metav1.NamespaceSystem)
	now := metav1.NewMicroTime(time.Now())
	lease := &coordinationv1.Lease{
		ObjectMeta: metav1.ObjectMeta{Name: k.leaseName(), Namespace: metav1.NamespaceSystem,
			Labels: map[string]string{serverLeaseLabel: "true"}},
		Spec: coordinationv1.LeaseSpec{
			HolderIdentity:       ptr.To(net.JoinHostPort(k.IP.String(), strconv.Itoa(int(k.Port)))),
			LeaseDurationSeconds: ptr.To(int32(EndpointTTL / time.Second)),
			RenewTime:            &now,
		},
	}
	// Get before create, never create-then-update: kine (on PostgreSQL or
	// MySQL) inserts a create before it finds the key exists, and the
	// failed insert leaves a gap in the revision sequence that every kine
	// on the datastore then waits on and fills; every 10 s that stalled a
	// second server's apiserver at start.
	cur, err := leases.Get(ctx, lease.Name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		_, err = leases.Create(ctx, lease, metav1.CreateOptions{})
		return err
	}
	if err != nil {
		return err
	}
	lease.ResourceVersion = cur.ResourceVersion
	_, err = leases.Update(ctx, lease, metav1.UpdateOptions{})
	return err
}

// LiveServers returns the public addresses of the servers whose Lease is
// fresh, sorted.
func LiveServers(ctx context.Context, cs kubernetes.Interface, now time.Time) ([]string, error) {
	list, err := cs.CoordinationV1().Leases(metav1.NamespaceSystem).List(ctx, metav1.ListOptions{LabelSelector: serverLeaseLabel})
	if err != nil {
		return nil, err
	}
	var out []string
	for _, l := range list.Items {
		sp := l.Spec
		if sp.HolderIdentity == nil || sp.RenewTime == nil || sp.LeaseDurationSeconds == nil {
			continue
		}
		if sp.RenewTime.Add(time.Duration(*sp.LeaseDurationSeconds) * time.Second).Before(now) {
			continue
		}
		if _, _, err := net.SplitHostPort(*sp.HolderIdentity); err == nil {
			out = append(out, *sp.HolderIdentity)
		}
	}
	slices.Sort(out)
	return slices.Compact(out), nil
}

// reconcile renews this server's Lease (or, when self is false, removes
// it) and writes the Endpoints and EndpointSlices of the live servers.
func (k *KubernetesEndpoints) reconcile(ctx context.Context, cs kubernetes.Interface, self bool) error {
	me := net.JoinHostPort(k.IP.String(), strconv.Itoa(int(k.Port)))
	if self {
		if err := k.renew(ctx, cs); err != nil {
			return fmt.Errorf("server lease: %w", err)
		}
	} else {
		err := cs.CoordinationV1().Leases(metav1.NamespaceSystem).Delete(ctx, k.leaseName(), metav1.DeleteOptions{})
		if err != nil && !apierrors.IsNotFound(err) {
			return fmt.Errorf("server lease: %w", err)
		}
	}
	servers, err := LiveServers(ctx, cs, time.Now())
	if err != nil {
		return fmt.Errorf("server leases: %w", err)
	}
	if self && !slices.Contains(servers, me) {
		servers = append(servers, me)
		slices.Sort(servers)
	} else if !self {
		servers = slices.DeleteFunc(servers, func(s string) bool { return s == me })
	}
	if len(servers) == 0 {
		return nil // the last server going: leave the last known address
	}
	return writeEndpoints(ctx, cs, servers)
}

// byPort groups host:port addresses by port (sorted), each group's IPs
// sorted.
func byPort(servers []string) ([]int32, map[int32][]string) {
	groups := map[int32][]string{}
	for _, s := range servers {
		host, port, _ := net.SplitHostPort(s)
		p, _ := strconv.Atoi(port)
		groups[int32(p)] = append(groups[int32(p)], host)
	}
	ports := slices.Sorted(maps.Keys(groups))
	for _, p := range ports {
		slices.Sort(groups[p])
	}
	return ports, groups
}

func writeEndpoints(ctx context.Context, cs kubernetes.Interface, servers []string) error {
	const name, ns = "kubernetes", metav1.NamespaceDefault
	ports, groups := byPort(servers)
	ep := &corev1.Endpoints{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns,
			// The EndpointSlices below are berth's own; do not mirror.
			Labels: map[string]string{discoveryv1.LabelSkipMirror: "true"}},
	}
	for _, p := range ports {
		sub := corev1.EndpointSubset{Ports: []corev1.EndpointPort{{Name: "https", Port: p, Protocol: corev1.ProtocolTCP}}}
		for _, ip := range groups[p] {
			sub.Addresses = append(sub.Addresses, corev1.EndpointAddress{IP: ip})
		}
		ep.Subsets = append(ep.Subsets, sub)
	}
	cur, err := cs.CoreV1().Endpoints(ns).Get(ctx, name, metav1.GetOptions{})
	switch {
	case apierrors.IsNotFound(err):
		if _, err := cs.CoreV1().Endpoints(ns).Create(ctx, ep, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
			return fmt.Errorf("endpoints: %w", err)
		}
	case err != nil:
		return fmt.Errorf("endpoints: %w", err)
	case !equality.Semantic.DeepEqual(cur.Subsets, ep.Subsets) || cur.Labels[discoveryv1.LabelSkipMirror] != "true":
		ep.ResourceVersion = cur.ResourceVersion
		if _, err := cs.CoreV1().Endpoints(ns).Update(ctx, ep, metav1.UpdateOptions{}); err != nil {
			return fmt.Errorf("endpoints: %w", err)
		}
		klog.Infof("kubernetes service endpoints: %s", strings.Join(servers, ", "))
	}
	// One EndpointSlice per port ("kubernetes" for the lowest, as servers
	// normally share one), so kube-proxy reaches every server.
	want := map[string]bool{}
	for i, p := range ports {
		sliceName := name
		if i > 0 {
			sliceName = fmt.Sprintf("%s-%d", name, p)
		}
		want[sliceName] = true
		if err := writeSlice(ctx, cs, sliceName, p, groups[p]); err != nil {
			return err
		}
	}
	slicesList, err := cs.DiscoveryV1().EndpointSlices(ns).List(ctx, metav1.ListOptions{
		LabelSelector: discoveryv1.LabelServiceName + "=" + name + "," + discoveryv1.LabelManagedBy + "=berth"})
	if err != nil {
		return fmt.Errorf("endpointslices: %w", err)
	}
	for _, sl := range slicesList.Items {
		if !want[sl.Name] {
			if err := cs.DiscoveryV1().EndpointSlices(ns).Delete(ctx, sl.Name, metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
				return fmt.Errorf("endpointslice %s: %w", sl.Name, err)
			}
		}
	}
	return nil
}

func writeSlice(ctx context.Context, cs kubernetes.Interface, name string, port int32, ips []string) error {
	const ns = metav1.NamespaceDefault
	family := discoveryv1.AddressTypeIPv4
	if ip := net.ParseIP(ips[0]); ip != nil && ip.To4() == nil {
		family = discoveryv1.AddressTypeIPv6
	}
	slice := &discoveryv1.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns, Labels: map[string]string{
			discoveryv1.LabelServiceName: "kubernetes",
			discoveryv1.LabelManagedBy:   "berth",
		}},
		AddressType: family,
		Ports:       []discoveryv1.EndpointPort{{Name: ptr.To("https"), Port: ptr.To(port), Protocol: ptr.To(corev1.ProtocolTCP)}},
	}
	for _, ip := range ips {
		slice.Endpoints = append(slice.Endpoints, discoveryv1.Endpoint{
			Addresses:  []string{ip},
			Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(true)},
		})
	}
	cur, err := cs.DiscoveryV1().EndpointSlices(ns).Get(ctx, name, metav1.GetOptions{})
	switch {
	case apierrors.IsNotFound(err):
		if _, err := cs.DiscoveryV1().EndpointSlices(ns).Create(ctx, slice, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
			return fmt.Errorf("endpointslice %s: %w", name, err)
		}
		return nil
	case err != nil:
		return fmt.Errorf("endpointslice %s: %w", name, err)
	}
	if equality.Semantic.DeepEqual(cur.Endpoints, slice.Endpoints) && equality.Semantic.DeepEqual(cur.Ports, slice.Ports) &&
		cur.AddressType == slice.AddressType && cur.Labels[discoveryv1.LabelManagedBy] == "berth" {
		return nil
	}
	slice.ResourceVersion = cur.ResourceVersion
	if _, err := cs.DiscoveryV1().EndpointSlices(ns).Update(ctx, slice, metav1.UpdateOptions{}); err != nil {
		return fmt.Errorf("endpointslice %s: %w", name, err)
	}
	return nil
}

// apply creates, or updates when the object exists.
func apply(ctx context.Context, create, update func() error) error {
	err := create()
	if apierrors.IsAlreadyExists(err) {
		return update()
	}
	return err
}

// Ready returns once the first reconcile had its chance; failures are
// retried in the background.
func (k *KubernetesEndpoints) Ready(context.Context) error { return nil }

// Stop drops this server from the endpoints (and its Lease), so clients
// move to the other servers at once rather than after EndpointTTL.
func (k *KubernetesEndpoints) Stop(ctx context.Context) error {
	if k.cancel == nil {
		return nil
	}
	k.cancel()
	select {
	case <-k.done:
	case <-ctx.Done():
		return nil
	}
	rctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	if err := k.reconcile(rctx, k.cs, false); err != nil {
		klog.V(1).Infof("kubernetes service endpoints: leaving: %v", err)
	}
	return nil
}
