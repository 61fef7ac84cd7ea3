// Package control wires the upstream Kubernetes control-plane components
// (kube-apiserver, kube-scheduler, kube-controller-manager) into berth's
// component lifecycle. They run in-process through their upstream options
// and Run functions; berth only chooses their arguments.
package control

import (
	"fmt"
	"sort"
	"strings"

	"github.com/spf13/pflag"
)

// Args builds a component's command line from berth's defaults and the
// user's pass-through values (--kube-apiserver-arg key=value). A user value
// replaces every default of the same key.
func Args(defaults map[string]string, user []string) ([]string, error) {
	override := map[string]bool{}
	var extra []string
	for _, a := range user {
		a = strings.TrimLeft(a, "-")
		key, _, ok := strings.Cut(a, "=")
		if !ok || key == "" {
			return nil, fmt.Errorf("argument %q: want key=value", a)
		}
		override[key] = true
		extra = append(extra, "--"+a)
	}
	keys := make([]string, 0, len(defaults))
	for k := range defaults {
		if !override[k] {
			keys = append(keys, k)
		}
	}
	sort.Strings(keys)
	out := make([]string, 0, len(keys)+len(extra))
	for _, k := range keys {
		out = append(out, "--"+k+"="+defaults[k])
	}
	return append(out, extra...), nil
}

// parse applies args to a flag set built from a component's named flag sets.
// Unknown flags are an error naming the component, so a typo in a
// pass-through argument is caught before anything starts.
func parse(component string, sets map[string]*pflag.FlagSet, order []string, args []string) error {
	fs := pflag.NewFlagSet(component, pflag.ContinueOnError)
	fs.SetOutput(discard{})
	for _, name := range order {
		fs.AddFlagSet(sets[name])
	}
	if err := fs.Parse(args); err != nil {
		return fmt.Errorf("%s arguments: %w", component, err)
	}
	return nil
}

type discard struct{}

func (discard) Write(p []byte) (int, error) { return len(p), nil }
