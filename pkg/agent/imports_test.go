package agent

import (
	"os"
	"os/exec"
	"strings"
	"testing"
)

// forbidden are packages only a server may link: the agent-only binary must
// stay free of the control plane.
var forbidden = []string{
	"github.com/berth-io/berth/pkg/server",
	"github.com/berth-io/berth/pkg/control",
	"github.com/berth-io/berth/pkg/datastore",
	"github.com/berth-io/berth/pkg/cli/servercmd",
	"k8s.io/kubernetes/cmd/kube-apiserver",
	"k8s.io/kubernetes/cmd/kube-scheduler",
	"k8s.io/kubernetes/cmd/kube-controller-manager",
	"github.com/k3s-io/kine",
	"go.etcd.io/etcd/server",
}

func TestAgentImportsNoServerPackages(t *testing.T) {
	roots := []string{"github.com/berth-io/berth/pkg/agent"}
	if _, err := os.Stat("../../cmd/berth-agent"); err == nil {
		roots = append(roots, "github.com/berth-io/berth/cmd/berth-agent")
	}
	for _, root := range roots {
		out, err := exec.Command("go", "list", "-deps", root).CombinedOutput()
		if err != nil {
			t.Fatalf("go list %s: %v\n%s", root, err, out)
		}
		deps := strings.Fields(string(out))
		if len(deps) < 100 {
			t.Fatalf("go list %s returned only %d packages; the check would prove nothing", root, len(deps))
		}
		for _, d := range deps {
			for _, f := range forbidden {
				if d == f || strings.HasPrefix(d, f+"/") {
					t.Errorf("%s links %s (a server-only package)", root, d)
				}
			}
		}
	}
}
