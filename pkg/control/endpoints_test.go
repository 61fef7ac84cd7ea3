package control

import (
	"context"
	"net"
	"slices"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"
)

// TestEndpointsOfSeveralServers: each server publishes itself without
// removing the others; a server whose lease expired, or that stopped,
// drops out.
func TestEndpointsOfSeveralServers(t *testing.T) {
	ctx := context.Background()
	cs := fake.NewClientset()
	a := &KubernetesEndpoints{IP: net.ParseIP("10.0.0.1"), Port: 6443}
	b := &KubernetesEndpoints{IP: net.ParseIP("10.0.0.2"), Port: 6443}
	c := &KubernetesEndpoints{IP: net.ParseIP("10.0.0.3"), Port: 7443}
	for _, k := range []*KubernetesEndpoints{a, b, c} {
		if err := k.reconcile(ctx, cs, true); err != nil {
			t.Fatal(err)
		}
	}
	ep, err := cs.CoreV1().Endpoints("default").Get(ctx, "kubernetes", metavGet)
	if err != nil {
		t.Fatal(err)
	}
	if len(ep.Subsets) != 2 || len(ep.Subsets[0].Addresses) != 2 || ep.Subsets[0].Ports[0].Port != 6443 ||
		ep.Subsets[1].Addresses[0].IP != "10.0.0.3" {
		t.Errorf("endpoints %+v", ep.Subsets)
	}
	sls, err := cs.DiscoveryV1().EndpointSlices("default").List(ctx, metavList)
	if err != nil || len(sls.Items) != 2 {
		t.Fatalf("slices: %v %v", err, sls)
	}
	// c stops cleanly: gone at once.
	if err := c.reconcile(ctx, cs, false); err != nil {
		t.Fatal(err)
	}
	live, _ := LiveServers(ctx, cs, time.Now())
	if !equal(live, []string{"10.0.0.1:6443", "10.0.0.2:6443"}) {
		t.Errorf("live after c left: %v", live)
	}
	if sl, _ := cs.DiscoveryV1().EndpointSlices("default").List(ctx, metavList); len(sl.Items) != 1 {
		t.Errorf("the slice of c's port stayed: %d slices", len(sl.Items))
	}
	// b's lease expires (b died): a drops it at its next renewal.
	live, _ = LiveServers(ctx, cs, time.Now().Add(EndpointTTL+time.Second))
	if len(live) != 0 {
		t.Errorf("expired leases counted: %v", live)
	}
}

func equal(a, b []string) bool { return slices.Equal(a, b) }

var (
	metavGet  = metav1.GetOptions{}
	metavList = metav1.ListOptions{}
)
