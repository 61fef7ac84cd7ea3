package cli

import (
	"os"

	"github.com/spf13/cobra"
	"k8s.io/cli-runtime/pkg/genericiooptions"
	"k8s.io/component-base/cli"
	kubectlcmd "k8s.io/kubectl/pkg/cmd"
)

// NewKubectl returns `berth kubectl`, the upstream kubectl in-process.
func NewKubectl() *cobra.Command {
	return &cobra.Command{
		Use:                "kubectl",
		Short:              "Run kubectl against this cluster (admin kubeconfig by default)",
		DisableFlagParsing: true,
		Run: func(_ *cobra.Command, args []string) {
			os.Exit(RunKubectl(args))
		},
	}
}

// RunKubectl runs kubectl with args and returns its exit status. With no
// KUBECONFIG set, it uses berth's admin kubeconfig when it can read it.
func RunKubectl(args []string) int {
	if os.Getenv("KUBECONFIG") == "" {
		if f, err := os.Open(DefaultKubeconfig); err == nil {
			f.Close()
			os.Setenv("KUBECONFIG", DefaultKubeconfig)
		}
	}
	cmd := kubectlcmd.NewDefaultKubectlCommandWithArgs(kubectlcmd.KubectlOptions{
		PluginHandler: kubectlcmd.NewDefaultPluginHandler([]string{"kubectl"}),
		Arguments:     append([]string{"kubectl"}, args...),
		IOStreams:     genericiooptions.IOStreams{In: os.Stdin, Out: os.Stdout, ErrOut: os.Stderr},
	})
	cmd.SetArgs(args)
	return cli.Run(cmd)
}
