package cli

import (
	"errors"
	"os"

	"github.com/spf13/cobra"

	"github.com/berth-io/berth/pkg/hostcheck"
)

// NewCheckConfig returns `berth check-config`.
func NewCheckConfig() *cobra.Command {
	var dataDir string
	cmd := &cobra.Command{
		Use:   "check-config",
		Short: "Check that this host has what a berth node needs",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			rs := hostcheck.Run(hostcheck.Options{DataDir: dataDir})
			hostcheck.Print(os.Stdout, rs)
			if hostcheck.Failed(rs) {
				return errors.New("this host lacks something a node requires (see MISSING above)")
			}
			return nil
		},
	}
	cmd.Flags().StringVarP(&dataDir, "data-dir", "d", DefaultDataDir(), "data dir to check")
	return cmd
}
