// Command berth-agent is the slim, agent-only berth binary for small nodes:
// the node components and their tools, with no control plane linked in
// (pkg/agent's import test keeps it that way).
package main

import (
	"errors"

	"github.com/spf13/cobra"

	"github.com/berth-io/berth/pkg/agent"
	"github.com/berth-io/berth/pkg/cli"
	"github.com/berth-io/berth/pkg/logging"
)

// Keep the node assembly linked, so the binary's size and the import test
// reflect what an agent-only node carries.
var _ = agent.Components

func main() {
	logging.RouteLogrus()
	cli.MultiCall(map[string]cli.Tool{"ctr": cli.RunCtr, "crictl": cli.RunCrictl})
	root := cli.NewRoot(nil,
		&cobra.Command{
			Use:   "agent",
			Short: "Run a node that joins a berth server",
			RunE: func(*cobra.Command, []string) error {
				return errors.New("joining a server (--server, --token) is not implemented yet; run `berth server` for a single-node cluster")
			},
		},
		cli.NewCheckConfig(),
		cli.NewCtr(),
		cli.NewCrictl(),
	)
	root.Use = "berth-agent"
	cli.Main(root)
}
