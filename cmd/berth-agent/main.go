// Command berth-agent is the slim, agent-only berth binary for small nodes:
// the node components and their tools, with no control plane linked in
// (pkg/agent's import test keeps it that way).
package main

import (
	"github.com/berth-io/berth/pkg/cli"
	"github.com/berth-io/berth/pkg/cli/agentcmd"
	"github.com/berth-io/berth/pkg/logging"
)

func main() {
	logging.RouteLogrus()
	cli.MultiCall(map[string]cli.Tool{"ctr": cli.RunCtr, "crictl": cli.RunCrictl})
	root := cli.NewRoot(nil,
		agentcmd.New(),
		cli.NewCheckConfig(),
		cli.NewCtr(),
		cli.NewCrictl(),
	)
	root.Use = "berth-agent"
	cli.Main(root)
}
