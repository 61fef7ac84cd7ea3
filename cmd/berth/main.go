// Command berth is the full berth binary: server, agent and bundled tools.
// It is multi-call: invoked as kubectl (through a symlink) it is kubectl.
package main

import (
	"fmt"
	"os"
	"path/filepath"

	"github.com/berth-io/berth/pkg/cli"
	"github.com/berth-io/berth/pkg/cli/servercmd"
	"github.com/berth-io/berth/pkg/datastore"
	"github.com/berth-io/berth/pkg/logging"
)

func main() {
	logging.RouteLogrus()
	switch filepath.Base(os.Args[0]) {
	case "kubectl":
		os.Exit(cli.RunKubectl(os.Args[1:]))
	case "ctr":
		os.Exit(cli.RunCtr(os.Args[1:]))
	case "crictl":
		if err := cli.ExecCrictl(os.Args[1:]); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
	}
	root := cli.NewRoot(
		map[string]string{"sqlite": datastore.SQLiteVersion()},
		servercmd.New(),
		cli.NewKubectl(),
		cli.NewCheckConfig(),
		cli.NewCtr(),
		cli.NewCrictl(),
	)
	cli.Main(root)
}
