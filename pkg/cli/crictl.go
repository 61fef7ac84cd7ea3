package cli

import (
	"fmt"
	"os"
	"path/filepath"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/berth-io/berth/pkg/data"
)

// NewCrictl returns `berth crictl`: the bundled crictl (a separate binary:
// upstream keeps it in package main), pointed at berth's containerd.
func NewCrictl() *cobra.Command {
	return &cobra.Command{
		Use:                "crictl",
		Short:              "Run crictl against this node's containerd",
		DisableFlagParsing: true,
		RunE: func(_ *cobra.Command, args []string) error {
			return ExecCrictl(args)
		},
	}
}

// ExecCrictl replaces this process with the bundled crictl.
func ExecCrictl(args []string) error {
	dataDir := os.Getenv("BERTH_DATA_DIR")
	if dataDir == "" {
		dataDir = DefaultDataDir()
	}
	binDir, err := data.Extract(dataDir)
	if err != nil {
		return fmt.Errorf("crictl: %w", err)
	}
	env := os.Environ()
	if os.Getenv("CONTAINER_RUNTIME_ENDPOINT") == "" {
		env = append(env, "CONTAINER_RUNTIME_ENDPOINT=unix://"+DefaultContainerdSocket)
	}
	if os.Getenv("IMAGE_SERVICE_ENDPOINT") == "" {
		env = append(env, "IMAGE_SERVICE_ENDPOINT=unix://"+DefaultContainerdSocket)
	}
	path := filepath.Join(binDir, "crictl")
	return syscall.Exec(path, append([]string{"crictl"}, args...), env)
}
