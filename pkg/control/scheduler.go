package control

import (
	"context"

	"k8s.io/kubernetes/cmd/kube-scheduler/app"
	"k8s.io/kubernetes/cmd/kube-scheduler/app/options"

	"github.com/berth-io/berth/pkg/component"
)

// Scheduler runs kube-scheduler in-process.
type Scheduler struct {
	Args []string

	opts *options.Options
	*component.Runner
}

func (s *Scheduler) Name() string { return "kube-scheduler" }

func (s *Scheduler) Prepare(context.Context) error {
	s.opts = options.NewOptions()
	return parse("kube-scheduler", s.opts.Flags.FlagSets, s.opts.Flags.Order, s.Args)
}

func (s *Scheduler) Start(ctx context.Context) error {
	if err := s.opts.ComponentGlobalsRegistry.Set(); err != nil {
		return err
	}
	opts := s.opts
	s.Runner = component.NewRunner(s.Name(), func(ctx context.Context) error {
		cc, sched, err := app.Setup(ctx, opts)
		if err != nil {
			return err
		}
		return app.Run(ctx, cc, sched)
	})
	return s.Runner.Start(ctx)
}

func (s *Scheduler) Stop(ctx context.Context) error {
	if s.Runner == nil {
		return nil
	}
	return s.Runner.Stop(ctx)
}
