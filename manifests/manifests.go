// Package manifests holds berth's packaged add-ons: Go templates of
// Kubernetes manifests that the server renders into
// <data-dir>/server/manifests, where the auto-deploy controller (pkg/deploy)
// applies them.
package manifests

import (
	"bytes"
	"embed"
	"fmt"
	"sort"
	"strings"
	"text/template"
)

//go:embed *.yaml
var files embed.FS

// Values fill the templates.
type Values struct {
	ClusterDNS    string
	ClusterDomain string
	// Registry prefixes every packaged image: berth.local unless
	// --system-default-registry is set.
	Registry    string
	StoragePath string
}

// Names lists the packaged add-ons (the names --disable takes).
func Names() []string {
	entries, _ := files.ReadDir(".")
	var out []string
	for _, e := range entries {
		out = append(out, strings.TrimSuffix(e.Name(), ".yaml"))
	}
	sort.Strings(out)
	return out
}

// Render returns the add-on's manifest with v filled in.
func Render(name string, v Values) ([]byte, error) {
	text, err := files.ReadFile(name + ".yaml")
	if err != nil {
		return nil, fmt.Errorf("no packaged add-on %q (have: %s)", name, strings.Join(Names(), ", "))
	}
	t, err := template.New(name).Option("missingkey=error").Parse(string(text))
	if err != nil {
		return nil, fmt.Errorf("add-on %s: %w", name, err)
	}
	var b bytes.Buffer
	if err := t.Execute(&b, v); err != nil {
		return nil, fmt.Errorf("add-on %s: %w", name, err)
	}
	return b.Bytes(), nil
}
