package control

import (
	"context"
	"fmt"

	"k8s.io/client-go/rest"
	"k8s.io/kubernetes/cmd/kube-controller-manager/app"
	"k8s.io/kubernetes/cmd/kube-controller-manager/app/options"

	"github.com/berth-io/berth/pkg/component"
)

// ControllerManager runs kube-controller-manager in-process.
type ControllerManager struct {
	Args []string

	opts *options.KubeControllerManagerOptions
	*component.Runner
}

func (c *ControllerManager) Name() string { return "kube-controller-manager" }

func (c *ControllerManager) Prepare(context.Context) error {
	s, err := options.NewKubeControllerManagerOptions()
	if err != nil {
		return fmt.Errorf("controller-manager options: %w", err)
	}
	nfs := s.Flags(app.KnownControllers(), app.ControllersDisabledByDefault(), app.ControllerAliases())
	s.ParsedFlags = &nfs
	c.opts = s
	return parse("kube-controller-manager", nfs.FlagSets, nfs.Order, c.Args)
}

func (c *ControllerManager) Start(ctx context.Context) error {
	s := c.opts
	if err := s.ComponentGlobalsRegistry.Set(); err != nil {
		return err
	}
	// It watches deprecated APIs on purpose; their warnings are noise.
	rest.SetDefaultWarningHandler(rest.NoWarnings{})
	c.Runner = component.NewRunner(c.Name(), func(ctx context.Context) error {
		cfg, err := s.Config(ctx, app.KnownControllers(), app.ControllersDisabledByDefault(), app.ControllerAliases())
		if err != nil {
			return err
		}
		return app.Run(ctx, cfg.Complete())
	})
	return c.Runner.Start(ctx)
}

func (c *ControllerManager) Stop(ctx context.Context) error {
	if c.Runner == nil {
		return nil
	}
	return c.Runner.Stop(ctx)
}
