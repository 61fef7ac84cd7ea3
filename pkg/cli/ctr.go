package cli

import (
	"fmt"
	"os"

	ctrapp "github.com/containerd/containerd/v2/cmd/ctr/app"
	"github.com/spf13/cobra"
)

// DefaultContainerdSocket is the node's containerd socket.
const DefaultContainerdSocket = "/run/berth/containerd/containerd.sock"

// NewCtr returns `berth ctr`: containerd's ctr, in-process, pointed at
// berth's containerd and the Kubernetes namespace unless told otherwise.
func NewCtr() *cobra.Command {
	return &cobra.Command{
		Use:                "ctr",
		Short:              "Run containerd's ctr against this node's containerd",
		DisableFlagParsing: true,
		Run: func(_ *cobra.Command, args []string) {
			os.Exit(RunCtr(args))
		},
	}
}

// RunCtr runs ctr with args and returns its exit status.
func RunCtr(args []string) int {
	if os.Getenv("CONTAINERD_ADDRESS") == "" {
		os.Setenv("CONTAINERD_ADDRESS", DefaultContainerdSocket)
	}
	if os.Getenv("CONTAINERD_NAMESPACE") == "" {
		os.Setenv("CONTAINERD_NAMESPACE", "k8s.io")
	}
	app := ctrapp.New()
	if err := app.Run(append([]string{"ctr"}, args...)); err != nil {
		fmt.Fprintf(os.Stderr, "ctr: %s\n", err)
		return 1
	}
	return 0
}
