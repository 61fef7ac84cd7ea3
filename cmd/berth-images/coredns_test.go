package main

import (
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
)

// writeModule lays out the parts of a CoreDNS module readPluginCfg reads.
func writeModule(t *testing.T, cfg string, pluginDirs ...string) string {
	t.Helper()
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "plugin.cfg"), []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, p := range pluginDirs {
		if err := os.MkdirAll(filepath.Join(dir, "plugin", p), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

const sampleCfg = `# comment
#
root:root
reload:reload
prometheus:metrics

errors:errors
log:log
cache:cache
kubernetes:kubernetes
forward:forward
on:github.com/coredns/caddy/onevent
`

func TestCorednsMainKeepsUpstreamOrder(t *testing.T) {
	dir := writeModule(t, sampleCfg, "root", "reload", "metrics", "errors", "log", "cache", "kubernetes", "forward")
	cfg, err := readPluginCfg(dir)
	if err != nil {
		t.Fatal(err)
	}
	// Listed out of order: the directives must still follow plugin.cfg.
	src, err := corednsMain("github.com/coredns/coredns@v1.15.0", cfg,
		[]string{"forward", "kubernetes", "errors", "prometheus", "reload", "on"})
	if err != nil {
		t.Fatal(err)
	}
	s := string(src)
	got := regexp.MustCompile(`(?m)^\s+"([a-z0-9_]+)",$`).FindAllStringSubmatch(s, -1)
	var directives []string
	for _, m := range got {
		directives = append(directives, m[1])
	}
	if want := []string{"reload", "prometheus", "errors", "kubernetes", "forward", "on"}; !slices.Equal(directives, want) {
		t.Errorf("directives %q, want %q\n%s", directives, want, s)
	}
	for _, imp := range []string{
		`_ "github.com/coredns/coredns/plugin/metrics"`, // prometheus's package
		`_ "github.com/coredns/caddy/onevent"`,          // an external plugin
		`"github.com/coredns/coredns/coremain"`,
	} {
		if !strings.Contains(s, imp) {
			t.Errorf("no import %s in\n%s", imp, s)
		}
	}
	for _, not := range []string{"plugin/log", "plugin/cache", "plugin/root", `"log"`} {
		if strings.Contains(s, not) {
			t.Errorf("%s is not wanted but appears in\n%s", not, s)
		}
	}
}

func TestCorednsMainRefusesUnknownPlugins(t *testing.T) {
	dir := writeModule(t, sampleCfg, "errors", "forward")
	cfg, err := readPluginCfg(dir)
	if err != nil {
		t.Fatal(err)
	}
	_, err = corednsMain("github.com/coredns/coredns@v1.15.0", cfg, []string{"errors", "route53", "forward", "azure"})
	if err == nil || !strings.Contains(err.Error(), "no plugin azure, route53") {
		t.Fatalf("got %v, want an error naming azure and route53", err)
	}
	_, err = corednsMain("m", cfg, []string{"errors", "errors"})
	if err == nil || !strings.Contains(err.Error(), `"errors" listed twice`) {
		t.Fatalf("got %v, want a duplicate error", err)
	}
}

func TestReadPluginCfgRefusesOddLines(t *testing.T) {
	for _, line := range []string{"errors", "errors:", ":errors", "a:b:c"} {
		dir := writeModule(t, "cache:cache\n"+line+"\n", "cache")
		if _, err := readPluginCfg(dir); err == nil || !strings.Contains(err.Error(), "odd line") {
			t.Errorf("line %q: got %v, want an odd-line error", line, err)
		}
	}
}

// The list berth ships must name only plugins of the CoreDNS version it
// builds, each once; checked against the real plugin.cfg when the module is
// in the module cache (it is after `make images`).
func TestCorednsPluginsExistUpstream(t *testing.T) {
	b := &builder{goBin: "go", work: t.TempDir()}
	m, err := b.download(coredns.module, coredns.version)
	if err != nil {
		t.Skipf("CoreDNS module not available: %v", err)
	}
	cfg, err := readPluginCfg(m.Dir)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := corednsMain(m.Path+"@"+m.Version, cfg, corednsPlugins); err != nil {
		t.Fatal(err)
	}
}
