package control

import (
	"context"
	"fmt"
	"net"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/klog/v2"
	"k8s.io/utils/ptr"
)

// KubernetesEndpoints keeps the `kubernetes` Service's endpoints on the
// public port. The apiserver listens on loopback only, so its own endpoint
// reconciler (which advertises its secure port) is turned off
// (--endpoint-reconciler-type=none) and berth points pods at the
// supervisor instead.
type KubernetesEndpoints struct {
	Kubeconfig string
	IP         net.IP
	Port       int32

	cancel context.CancelFunc
	done   chan struct{}
}

func (k *KubernetesEndpoints) Name() string { return "kubernetes-endpoints" }

func (k *KubernetesEndpoints) Prepare(context.Context) error { return nil }

func (k *KubernetesEndpoints) Start(context.Context) error {
	cs, err := Clientset(k.Kubeconfig)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(context.Background())
	k.cancel, k.done = cancel, make(chan struct{})
	go func() {
		defer close(k.done)
		// Reassert now and then: someone may edit or delete them.
		for {
			if err := k.reconcile(ctx, cs); err != nil && ctx.Err() == nil {
				klog.Warningf("kubernetes service endpoints: %v", err)
			}
			select {
			case <-ctx.Done():
				return
			case <-time.After(time.Minute):
			}
		}
	}()
	return nil
}

func (k *KubernetesEndpoints) reconcile(ctx context.Context, cs kubernetes.Interface) error {
	const name, ns = "kubernetes", metav1.NamespaceDefault
	ep := &corev1.Endpoints{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns,
			// The EndpointSlice below is berth's own; do not mirror.
			Labels: map[string]string{discoveryv1.LabelSkipMirror: "true"}},
		Subsets: []corev1.EndpointSubset{{
			Addresses: []corev1.EndpointAddress{{IP: k.IP.String()}},
			Ports:     []corev1.EndpointPort{{Name: "https", Port: k.Port, Protocol: corev1.ProtocolTCP}},
		}},
	}
	if err := apply(ctx, func() error {
		_, err := cs.CoreV1().Endpoints(ns).Create(ctx, ep, metav1.CreateOptions{})
		return err
	}, func() error {
		cur, err := cs.CoreV1().Endpoints(ns).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		ep.ResourceVersion = cur.ResourceVersion
		_, err = cs.CoreV1().Endpoints(ns).Update(ctx, ep, metav1.UpdateOptions{})
		return err
	}); err != nil {
		return fmt.Errorf("endpoints: %w", err)
	}
	family := discoveryv1.AddressTypeIPv4
	if k.IP.To4() == nil {
		family = discoveryv1.AddressTypeIPv6
	}
	slice := &discoveryv1.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns, Labels: map[string]string{
			discoveryv1.LabelServiceName: name,
			discoveryv1.LabelManagedBy:   "berth",
		}},
		AddressType: family,
		Endpoints: []discoveryv1.Endpoint{{
			Addresses:  []string{k.IP.String()},
			Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(true)},
		}},
		Ports: []discoveryv1.EndpointPort{{Name: ptr.To("https"), Port: ptr.To(k.Port), Protocol: ptr.To(corev1.ProtocolTCP)}},
	}
	return apply(ctx, func() error {
		_, err := cs.DiscoveryV1().EndpointSlices(ns).Create(ctx, slice, metav1.CreateOptions{})
		return err
	}, func() error {
		cur, err := cs.DiscoveryV1().EndpointSlices(ns).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		slice.ResourceVersion = cur.ResourceVersion
		_, err = cs.DiscoveryV1().EndpointSlices(ns).Update(ctx, slice, metav1.UpdateOptions{})
		return err
	})
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

func (k *KubernetesEndpoints) Stop(ctx context.Context) error {
	if k.cancel == nil {
		return nil
	}
	k.cancel()
	select {
	case <-k.done:
	case <-ctx.Done():
	}
	return nil
}
