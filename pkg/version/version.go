// Package version reports berth's version and the versions of the parts
// linked into the binary.
package version

import (
	"fmt"
	"runtime"
	"runtime/debug"
	"sort"
	"strings"

	k8sversion "k8s.io/component-base/version"
)

// Set at link time by the Makefile (-X).
var (
	Version   = "v0.0.0-dev"
	GitCommit = ""
)

// Program is the name used in paths, env vars and messages.
const Program = "berth"

// embedded lists modules whose versions matter to users, by display name.
var embedded = []struct{ name, module string }{
	{"kine", "github.com/k3s-io/kine"},
	{"go-sqlite3", "github.com/mattn/go-sqlite3"},
	{"etcd", "go.etcd.io/etcd/server/v3"},
	{"containerd", "github.com/containerd/containerd/v2"},
	{"runc", "github.com/opencontainers/runc"},
	{"flannel", "github.com/flannel-io/flannel"},
	{"cni-plugins", "github.com/containernetworking/plugins"},
}

// Kubernetes is the version of the embedded Kubernetes components.
func Kubernetes() string { return k8sversion.Get().GitVersion }

// Modules returns "name version" for each embedded module linked in.
func Modules() map[string]string {
	out := map[string]string{}
	info, ok := debug.ReadBuildInfo()
	if !ok {
		return out
	}
	for _, d := range info.Deps {
		m := d
		if d.Replace != nil {
			m = d.Replace
		}
		for _, e := range embedded {
			if d.Path == e.module {
				out[e.name] = m.Version
			}
		}
	}
	return out
}

// String is the multi-line text of `berth --version`; extra adds lines such
// as the SQLite library version, which only the server binary links.
func String(extra map[string]string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s version %s", Program, Version)
	if GitCommit != "" {
		fmt.Fprintf(&b, " (%s)", GitCommit)
	}
	fmt.Fprintf(&b, "\nkubernetes %s\n", Kubernetes())
	mods := Modules()
	for k, v := range extra {
		mods[k] = v
	}
	names := make([]string, 0, len(mods))
	for k := range mods {
		names = append(names, k)
	}
	sort.Strings(names)
	for _, n := range names {
		fmt.Fprintf(&b, "%s %s\n", n, mods[n])
	}
	fmt.Fprintf(&b, "go %s %s/%s\n", runtime.Version(), runtime.GOOS, runtime.GOARCH)
	return b.String()
}
