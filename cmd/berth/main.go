// Command berth is the full berth binary: server, agent and bundled tools.
// It is multi-call: invoked as kubectl (through a symlink) it is kubectl.
package main

import (
	"os"
	"path/filepath"

	"github.com/spf13/pflag"

	"github.com/berth-io/berth/pkg/cli"
	"github.com/berth-io/berth/pkg/cli/servercmd"
	"github.com/berth-io/berth/pkg/datastore"
	"github.com/berth-io/berth/pkg/logging"
)

func main() {
	// Upstream packages register flags on pflag.CommandLine at init (the
	// component-base --version flag among them) and cobra merges that set
	// into every command; berth's commands define their own flags only.
	pflag.CommandLine = pflag.NewFlagSet(os.Args[0], pflag.ContinueOnError)
	logging.RouteLogrus()
	switch filepath.Base(os.Args[0]) {
	case "kubectl":
		os.Exit(cli.RunKubectl(os.Args[1:]))
	}
	root := cli.NewRoot(
		map[string]string{"sqlite": datastore.SQLiteVersion()},
		servercmd.New(),
		cli.NewKubectl(),
		cli.NewCheckConfig(),
	)
	cli.Main(root)
}
