// Package cli holds berth's cobra commands that both binaries share (root,
// kubectl, logging setup). Role commands live in subpackages so the slim
// agent binary links no server code.
package cli

import (
	"context"
	goflag "flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"k8s.io/klog/v2"

	"github.com/berth-io/berth/pkg/config"
	"github.com/berth-io/berth/pkg/defaults"
	"github.com/berth-io/berth/pkg/version"
)

// Defaults shared by every role.
const (
	DefaultConfigFile = defaults.ConfigFile
	DefaultKubeconfig = "/etc/berth/berth.yaml"
)

// DefaultDataDir is /var/lib/berth for root and ~/.berth otherwise, as k3s does.
func DefaultDataDir() string { return defaults.DataDir() }

// NewRoot returns the `berth` command; extra lines go into --version.
func NewRoot(extraVersions map[string]string, sub ...*cobra.Command) *cobra.Command {
	root := &cobra.Command{
		Use:           "berth",
		Short:         "berth: a small, durable Kubernetes distribution for the edge",
		Version:       version.Version,
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.SetVersionTemplate(version.String(extraVersions))
	// Defined here so cobra does not claim -v for --version: -v is klog's
	// verbosity, as in every Kubernetes component.
	root.Flags().Bool("version", false, "print the version of berth and its components")
	gofs := goflag.NewFlagSet("klog", goflag.ContinueOnError)
	klog.InitFlags(gofs)
	for _, name := range []string{"v", "vmodule"} {
		pf := pflag.PFlagFromGoFlag(gofs.Lookup(name))
		if name == "v" {
			pf.Shorthand = "v"
		}
		root.PersistentFlags().AddFlag(pf)
	}
	// Upstream's component-base registers a --version flag on
	// pflag.CommandLine (the kubelet looks it up there), and cobra adds that
	// set to every command. Hide it, and make --version on any command print
	// berth's version instead of running the command.
	if f := pflag.CommandLine.Lookup("version"); f != nil {
		f.Hidden = true
	}
	versionText := version.String(extraVersions)
	root.PersistentPreRunE = func(cmd *cobra.Command, _ []string) error {
		if f := cmd.Flags().Lookup("version"); f != nil && f.Changed {
			fmt.Print(versionText)
			os.Exit(0)
		}
		return nil
	}
	root.AddCommand(sub...)
	return root
}

// SetDebug raises klog's verbosity for --debug unless -v was given.
func SetDebug(cmd *cobra.Command, debug bool) {
	if f := cmd.Flags().Lookup("v"); debug && f != nil && !f.Changed {
		_ = f.Value.Set("2")
	}
}

// ApplyConfig fills the command's unset flags from BERTH_* variables and
// the config file with its drop-ins, and logs what it could not use.
func ApplyConfig(cmd *cobra.Command, aliases map[string]string) error {
	fs := cmd.Flags()
	environ := os.Environ()
	path, explicit := config.FilePath(fs, "config", environ, DefaultConfigFile)
	res, err := config.Apply(config.Options{
		Flags:        fs,
		File:         path,
		FileRequired: explicit,
		EnvPrefix:    "BERTH_",
		EnvAliases:   aliases,
		Environ:      environ,
		Skip:         []string{"config", "help", "version", "v", "vmodule"},
	})
	if err != nil {
		return err
	}
	for _, w := range res.Warnings {
		klog.Warning(w)
	}
	for _, f := range res.Files {
		klog.V(1).Infof("read config file %s", f)
	}
	return nil
}

// SignalContext is cancelled by the first SIGINT or SIGTERM; a second one
// exits at once, for a stop that hangs.
func SignalContext() (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithCancel(context.Background())
	ch := make(chan os.Signal, 2)
	signal.Notify(ch, syscall.SIGINT, syscall.SIGTERM)
	go func() {
		sig := <-ch
		klog.Infof("received %s, shutting down", sig)
		cancel()
		sig = <-ch
		klog.Errorf("received %s again, exiting now", sig)
		klog.Flush()
		os.Exit(1)
	}()
	return ctx, cancel
}

// Main runs root and exits with its status.
func Main(root *cobra.Command) {
	err := root.Execute()
	klog.Flush()
	if err != nil {
		fmt.Fprintf(os.Stderr, "berth: %v\n", err)
		os.Exit(1)
	}
}
