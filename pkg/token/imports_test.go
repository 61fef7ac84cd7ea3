package token

import (
	"os/exec"
	"strings"
	"testing"
)

// The agent parses and presents tokens with this package, so it must link
// nothing of the control plane.
func TestImportsNoServerPackages(t *testing.T) {
	out, err := exec.Command("go", "list", "-deps", ".").CombinedOutput()
	if err != nil {
		t.Fatalf("go list: %v\n%s", err, out)
	}
	deps := strings.Fields(string(out))
	if len(deps) < 50 {
		t.Fatalf("go list returned only %d packages; the check would prove nothing", len(deps))
	}
	for _, d := range deps {
		for _, f := range []string{
			"github.com/berth-io/berth/pkg/server",
			"github.com/berth-io/berth/pkg/control",
			"github.com/berth-io/berth/pkg/datastore",
			"github.com/berth-io/berth/pkg/supervisor",
			"github.com/berth-io/berth/pkg/cli",
			"k8s.io/kubernetes",
		} {
			if d == f || strings.HasPrefix(d, f+"/") {
				t.Errorf("pkg/token links %s", d)
			}
		}
	}
}
