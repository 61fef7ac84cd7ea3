package cli

import (
	"errors"
	"fmt"
	"os"

	"github.com/spf13/cobra"

	"github.com/berth-io/berth/pkg/hostcheck"
	"github.com/berth-io/berth/pkg/registries"
)

// NewCheckConfig returns `berth check-config`.
func NewCheckConfig() *cobra.Command {
	var dataDir, registriesFile string
	cmd := &cobra.Command{
		Use:   "check-config",
		Short: "Check that this host has what a berth node needs",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			rs := hostcheck.Run(hostcheck.Options{DataDir: dataDir})
			rs = append(rs, registriesCheck(registriesFile))
			hostcheck.Print(os.Stdout, rs)
			if hostcheck.Failed(rs) {
				return errors.New("this host lacks something a node requires (see MISSING above)")
			}
			return nil
		},
	}
	cmd.Flags().StringVarP(&dataDir, "data-dir", "d", DefaultDataDir(), "data dir to check")
	cmd.Flags().StringVar(&registriesFile, "private-registry", registries.DefaultFile, "registries.yaml to check")
	return cmd
}

// registriesCheck loads registries.yaml as a node would, so a broken edit
// is found before the restart that would fall back to the last good copy.
func registriesCheck(path string) hostcheck.Result {
	r := hostcheck.Result{Group: "config", Name: "registries.yaml"}
	if _, err := os.Stat(path); os.IsNotExist(err) {
		r.Verdict, r.Detail = hostcheck.OK, path+" not present (no mirrors or registry credentials)"
		return r
	}
	reg, err := registries.Load(path)
	if err != nil {
		r.Verdict, r.Detail = hostcheck.Missing, err.Error()
		r.Fix = "fix the file; until then a restarted node keeps its last good registry configuration"
		return r
	}
	r.Verdict, r.Detail = hostcheck.OK, fmt.Sprintf("%s: %d mirrors, %d registry configs", path, len(reg.Mirrors), len(reg.Configs))
	return r
}
