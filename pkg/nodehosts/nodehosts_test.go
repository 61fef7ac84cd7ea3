package nodehosts

import (
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

func node(name string, addrs ...corev1.NodeAddress) *corev1.Node {
	return &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name}, Status: corev1.NodeStatus{Addresses: addrs}}
}

func internal(ip string) corev1.NodeAddress {
	return corev1.NodeAddress{Type: corev1.NodeInternalIP, Address: ip}
}

func TestRender(t *testing.T) {
	for _, tc := range []struct {
		name  string
		nodes []*corev1.Node
		want  string
	}{
		{"no nodes", nil, ""},
		{"node without InternalIP", []*corev1.Node{node("a", corev1.NodeAddress{Type: corev1.NodeHostName, Address: "a"})}, ""},
		{
			"sorted by name, then address, IPv4 first; other address types ignored",
			[]*corev1.Node{
				node("b", internal("fd00::2"), internal("10.0.0.2"), corev1.NodeAddress{Type: corev1.NodeExternalIP, Address: "203.0.113.2"}),
				node("a", internal("10.0.0.10"), internal("10.0.0.9")),
			},
			"10.0.0.9 a\n10.0.0.10 a\n10.0.0.2 b\nfd00::2 b\n",
		},
		{
			"duplicates once, junk skipped, mapped IPv4 unmapped",
			[]*corev1.Node{node("a", internal("10.0.0.1"), internal("10.0.0.1"), internal("not-an-ip"), internal("::ffff:10.0.0.3"))},
			"10.0.0.1 a\n10.0.0.3 a\n",
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := Render(tc.nodes); got != tc.want {
				t.Errorf("Render = %q, want %q", got, tc.want)
			}
		})
	}
	// The order of the nodes handed in does not change the text.
	x, y := node("x", internal("10.0.0.1")), node("y", internal("10.0.0.2"))
	if Render([]*corev1.Node{x, y}) != Render([]*corev1.Node{y, x}) {
		t.Error("Render depends on the input order")
	}
}

func TestOwnsKey(t *testing.T) {
	for raw, want := range map[string]bool{
		`{"f:data":{".":{},"f:Corefile":{},"f:NodeHosts":{}}}`: true,
		`{"f:data":{"f:Corefile":{}}}`:                         false,
		`{"f:metadata":{"f:annotations":{"f:NodeHosts":{}}}}`:  false,
		`not json`: false,
		`{"f:data":{"f:Corefile":{}},"f:metadata":{"f:labels":{"f:NodeHosts":{}}}}`: false,
	} {
		if got := ownsKey(&metav1.FieldsV1{Raw: []byte(raw)}); got != want {
			t.Errorf("ownsKey(%s) = %v, want %v", raw, got, want)
		}
	}
	if ownsKey(nil) {
		t.Error("ownsKey(nil) = true")
	}
}

func TestStripNode(t *testing.T) {
	n := node("a", internal("10.0.0.1"))
	n.Status.Images = []corev1.ContainerImage{{Names: []string{"big"}}}
	n.Labels = map[string]string{"l": "v"}
	out, err := stripNode(n)
	if err != nil {
		t.Fatal(err)
	}
	s := out.(*corev1.Node)
	if s.Name != "a" || len(s.Status.Addresses) != 1 || s.Status.Images != nil || s.Labels != nil {
		t.Errorf("stripped node: %+v", s)
	}
	if got, _ := stripNode("other"); got != "other" {
		t.Errorf("non-node changed: %v", got)
	}
}
