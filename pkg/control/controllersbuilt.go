package control

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"

	"k8s.io/klog/v2"
)

// ControllersBuilt waits until the in-process controller-manager has built
// all its controllers. The kubelet must start after that: Kubernetes' CSI
// volume plugin keeps its node-info manager in a package-level variable that
// every Init overwrites, and the attach-detach controller's Init (with no
// node name) must not come after the kubelet's, or the kubelet never
// initialises its CSINode, never turns Ready and finally exits.
//
// The controller-manager registers its per-controller health checks only
// after building them all, so the attach-detach check appearing in
// /healthz?verbose is the signal.
type ControllersBuilt struct {
	// Port is the controller-manager's secure port on loopback; 0 means it
	// does not serve, and there is nothing to wait on.
	Port int
}

const attachDetachCheck = "persistentvolume-attach-detach-controller"

func (c *ControllersBuilt) Name() string                  { return "controllers-built" }
func (c *ControllersBuilt) Prepare(context.Context) error { return nil }
func (c *ControllersBuilt) Start(context.Context) error   { return nil }
func (c *ControllersBuilt) Stop(context.Context) error    { return nil }

func (c *ControllersBuilt) Ready(ctx context.Context) error {
	if c.Port == 0 {
		klog.Warning("controller-manager secure port is 0: cannot tell when its controllers are built; starting the kubelet anyway")
		return nil
	}
	url := "https://127.0.0.1:" + strconv.Itoa(c.Port) + "/healthz?verbose"
	// Loopback readiness probe of an always-allowed path; no credentials are
	// sent, so not verifying the self-signed serving certificate risks nothing.
	client := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{InsecureSkipVerify: true}, //nolint:gosec // see above
	}}
	var last string
	for {
		resp, err := client.Get(url)
		if err == nil {
			body, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
			resp.Body.Close()
			if strings.Contains(string(body), attachDetachCheck) {
				return nil
			}
			last = fmt.Sprintf("%d, %d bytes", resp.StatusCode, len(body))
		} else {
			last = err.Error()
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("controller-manager controllers not built (last answer: %s): %w", last, ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// SecurePort returns the controller-manager's secure port from its final
// argument list (the user's pass-through wins over berth's default).
func SecurePort(args []string) int {
	port := 10257
	for _, a := range args {
		if v, ok := strings.CutPrefix(a, "--secure-port="); ok {
			if p, err := strconv.Atoi(v); err == nil {
				port = p
			}
		}
	}
	return port
}
