// Command berth is the full berth binary: server, agent and bundled tools.
// It is multi-call: invoked as kubectl, ctr or crictl (through a symlink) it
// is that tool.
package main

import (
	"github.com/berth-io/berth/pkg/cli"
	"github.com/berth-io/berth/pkg/cli/agentcmd"
	"github.com/berth-io/berth/pkg/cli/servercmd"
	"github.com/berth-io/berth/pkg/datastore"
	"github.com/berth-io/berth/pkg/logging"
)

func main() {
	logging.RouteLogrus()
	cli.MultiCall(map[string]cli.Tool{"kubectl": cli.RunKubectl, "ctr": cli.RunCtr, "crictl": cli.RunCrictl})
	root := cli.NewRoot(
		map[string]string{"sqlite": datastore.SQLiteVersion()},
		servercmd.New(),
		servercmd.NewEtcdSnapshot(),
		agentcmd.New(),
		cli.NewKubectl(),
		cli.NewCheckConfig(),
		cli.NewCtr(),
		cli.NewCrictl(),
		cli.NewToken(),
		servercmd.NewSecretsEncrypt(),
	)
	cli.Main(root)
}
