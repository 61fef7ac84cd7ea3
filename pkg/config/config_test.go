package config

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/spf13/pflag"
)

// newFlags builds a flag set shaped like a server command's and parses args.
func newFlags(t *testing.T, args ...string) *pflag.FlagSet {
	t.Helper()
	fs := pflag.NewFlagSet("test", pflag.ContinueOnError)
	fs.String("cluster-cidr", "10.42.0.0/16", "")
	fs.String("token", "", "")
	fs.String("server", "", "")
	fs.String("config", "/etc/berth/config.yaml", "")
	fs.String("etcd-s3-secret-key", "", "")
	fs.Int("https-listen-port", 6443, "")
	fs.Bool("debug", false, "")
	fs.Duration("timeout", time.Minute, "")
	fs.StringSlice("tls-san", nil, "")
	fs.StringArray("kube-apiserver-arg", nil, "")
	fs.StringP("write-kubeconfig", "o", "", "")
	if err := fs.Parse(args); err != nil {
		t.Fatalf("parse %v: %v", args, err)
	}
	return fs
}

func writeFile(t *testing.T, path, content string) string {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func mustApply(t *testing.T, o Options) *Result {
	t.Helper()
	res, err := Apply(o)
	if err != nil {
		t.Fatalf("Apply: %v", err)
	}
	return res
}

func get(t *testing.T, fs *pflag.FlagSet, name string) string {
	t.Helper()
	return fs.Lookup(name).Value.String()
}

func slice(t *testing.T, fs *pflag.FlagSet, name string) []string {
	t.Helper()
	s, err := fs.GetStringSlice(name)
	if err != nil {
		s, err = fs.GetStringArray(name)
	}
	if err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	return s
}

func wantSlice(t *testing.T, fs *pflag.FlagSet, name string, want ...string) {
	t.Helper()
	if got := slice(t, fs, name); !reflect.DeepEqual(got, want) && !(len(got) == 0 && len(want) == 0) {
		t.Errorf("%s = %q, want %q", name, got, want)
	}
}

func wantErr(t *testing.T, err error, parts ...string) {
	t.Helper()
	if err == nil {
		t.Fatalf("expected an error containing %q", parts)
	}
	for _, p := range parts {
		if !strings.Contains(err.Error(), p) {
			t.Errorf("error %q does not contain %q", err, p)
		}
	}
}

func TestFileOnly(t *testing.T) {
	dir := t.TempDir()
	file := writeFile(t, filepath.Join(dir, "config.yaml"), `
cluster-cidr: 10.50.0.0/16
https-listen-port: 6443
debug: true
timeout: 90s
tls-san: [a.example, "b,c"]
kube-apiserver-arg:
  - "enable-admission-plugins=A,B"
  - v=2
o: /tmp/kc.yaml # shorthand key, as in k3s
`)
	fs := newFlags(t)
	res := mustApply(t, Options{Flags: fs, File: file, EnvPrefix: "BERTH_"})

	for name, want := range map[string]string{
		"cluster-cidr":      "10.50.0.0/16",
		"https-listen-port": "6443",
		"debug":             "true",
		"timeout":           "1m30s",
		"write-kubeconfig":  "/tmp/kc.yaml",
	} {
		if got := get(t, fs, name); got != want {
			t.Errorf("%s = %q, want %q", name, got, want)
		}
		if !fs.Changed(name) {
			t.Errorf("%s not marked changed", name)
		}
	}
	// List items stay whole: no comma splitting.
	wantSlice(t, fs, "tls-san", "a.example", "b,c")
	wantSlice(t, fs, "kube-apiserver-arg", "enable-admission-plugins=A,B", "v=2")
	if !fs.Changed("tls-san") || !fs.Changed("kube-apiserver-arg") {
		t.Error("slice flags not marked changed")
	}
	if fs.Changed("token") {
		t.Error("token changed without a value")
	}
	if !reflect.DeepEqual(res.Files, []string{file}) {
		t.Errorf("Files = %q", res.Files)
	}
	if len(res.Warnings) != 0 {
		t.Errorf("unexpected warnings %q", res.Warnings)
	}
}

func TestIntegersAreNotFloats(t *testing.T) {
	file := writeFile(t, filepath.Join(t.TempDir(), "config.yaml"),
		"https-listen-port: 6443\ncluster-cidr: 6443\nserver: 1e21\ntoken: 1.5\ntls-san: [1, 2.0, 9223372036854775807]\n")
	fs := newFlags(t)
	mustApply(t, Options{Flags: fs, File: file})
	if got := get(t, fs, "https-listen-port"); got != "6443" {
		t.Errorf("https-listen-port = %q", got)
	}
	if got := get(t, fs, "cluster-cidr"); got != "6443" {
		t.Errorf("string flag from integer = %q, want 6443", got)
	}
	if got := get(t, fs, "server"); got != "1000000000000000000000" {
		t.Errorf("large float = %q, want no exponent", got)
	}
	if got := get(t, fs, "token"); got != "1.5" {
		t.Errorf("float = %q", got)
	}
	wantSlice(t, fs, "tls-san", "1", "2", "9223372036854775807")
}

func TestDropinsReplaceAndAppend(t *testing.T) {
	dir := t.TempDir()
	file := writeFile(t, filepath.Join(dir, "config.yaml"), `
cluster-cidr: 10.1.0.0/16
tls-san: [main]
kube-apiserver-arg: [main=1]
debug: true
`)
	d := file + ".d"
	// Names chosen so lexical order differs from creation order.
	writeFile(t, filepath.Join(d, "20-b.yml"), "tls-san+: [b]\ncluster-cidr: 10.20.0.0/16\n")
	writeFile(t, filepath.Join(d, "10-a.yaml"), "tls-san+: [a1, a2]\nkube-apiserver-arg: [a=1]\n")
	writeFile(t, filepath.Join(d, "30-c.YAML"), "kube-apiserver-arg+: c=1\ntoken+: [x]\n")
	writeFile(t, filepath.Join(d, "40-ignored.bak"), "cluster-cidr: [broken\n")
	if err := os.Mkdir(filepath.Join(d, "50-dir.yaml"), 0o755); err != nil {
		t.Fatal(err)
	}

	fs := newFlags(t)
	_, err := Apply(Options{Flags: fs, File: file})
	// token+ makes a list, which a string flag rejects, naming file and key.
	wantErr(t, err, filepath.Join(d, "30-c.YAML"), `key "token+"`, "single value")

	writeFile(t, filepath.Join(d, "30-c.YAML"), "kube-apiserver-arg+: c=1\n")
	fs = newFlags(t)
	res := mustApply(t, Options{Flags: fs, File: file})

	wantFiles := []string{file, filepath.Join(d, "10-a.yaml"), filepath.Join(d, "20-b.yml"), filepath.Join(d, "30-c.YAML")}
	if !reflect.DeepEqual(res.Files, wantFiles) {
		t.Errorf("Files = %q, want %q", res.Files, wantFiles)
	}
	if got := get(t, fs, "cluster-cidr"); got != "10.20.0.0/16" {
		t.Errorf("cluster-cidr = %q, want the later file's value", got)
	}
	wantSlice(t, fs, "tls-san", "main", "a1", "a2", "b")
	wantSlice(t, fs, "kube-apiserver-arg", "a=1", "c=1") // 10-a replaced main's list
	if got := res.Sources["cluster-cidr"]; got != "file "+filepath.Join(d, "20-b.yml") {
		t.Errorf("Sources[cluster-cidr] = %q", got)
	}
	if got, want := res.Sources["tls-san"], "file "+strings.Join(wantFiles[:3], ", "); got != want {
		t.Errorf("Sources[tls-san] = %q, want %q", got, want)
	}
	if got := res.Sources["debug"]; got != "file "+file {
		t.Errorf("Sources[debug] = %q", got)
	}
}

func TestAppendWithinOneFileAndFromNothing(t *testing.T) {
	dir := t.TempDir()
	file := writeFile(t, filepath.Join(dir, "config.yaml"), "tls-san+: [b]\ntls-san: [a]\nkube-apiserver-arg+: [x]\n")
	fs := newFlags(t)
	mustApply(t, Options{Flags: fs, File: file})
	wantSlice(t, fs, "tls-san", "a", "b")
	wantSlice(t, fs, "kube-apiserver-arg", "x")
}

func TestScalarToSliceFlagUsesSet(t *testing.T) {
	file := writeFile(t, filepath.Join(t.TempDir(), "config.yaml"), "tls-san: a,b\nkube-apiserver-arg: x,y\n")
	fs := newFlags(t)
	mustApply(t, Options{Flags: fs, File: file})
	wantSlice(t, fs, "tls-san", "a", "b")         // stringSlice.Set splits
	wantSlice(t, fs, "kube-apiserver-arg", "x,y") // stringArray.Set does not
}

func TestMissingMainFileWithDropins(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "config.yaml")
	writeFile(t, filepath.Join(file+".d", "a.yaml"), "debug: true\n")
	for _, required := range []bool{false, true} {
		fs := newFlags(t)
		res := mustApply(t, Options{Flags: fs, File: file, FileRequired: required})
		if get(t, fs, "debug") != "true" || len(res.Files) != 1 {
			t.Errorf("required=%v: drop-in not applied: %q", required, res.Files)
		}
	}
}

func TestEnvBeatsFile(t *testing.T) {
	file := writeFile(t, filepath.Join(t.TempDir(), "config.yaml"),
		"cluster-cidr: 10.1.0.0/16\ntls-san: [file]\nhttps-listen-port: 1\ntoken: from-file\n")
	fs := newFlags(t)
	res := mustApply(t, Options{
		Flags:     fs,
		File:      file,
		EnvPrefix: "BERTH_",
		Environ: []string{
			"BERTH_CLUSTER_CIDR=10.9.0.0/16",
			"BERTH_CLUSTER_CIDR=ignored-second",
			"BERTH_TLS_SAN=x, y,,z",
			"BERTH_TOKEN=", // empty counts as unset
			"BERTH_DEBUG=1",
			"BERTH_KUBE_APISERVER_ARG=a=1,b=2",
			"NOEQUALS",
		},
	})
	if got := get(t, fs, "cluster-cidr"); got != "10.9.0.0/16" {
		t.Errorf("cluster-cidr = %q", got)
	}
	wantSlice(t, fs, "tls-san", "x", "y", "z")
	wantSlice(t, fs, "kube-apiserver-arg", "a=1", "b=2")
	if get(t, fs, "token") != "from-file" || get(t, fs, "https-listen-port") != "1" {
		t.Error("file values lost")
	}
	if get(t, fs, "debug") != "true" || !fs.Changed("debug") {
		t.Error("debug not taken from env")
	}
	want := map[string]string{
		"cluster-cidr":       "env BERTH_CLUSTER_CIDR",
		"tls-san":            "env BERTH_TLS_SAN",
		"kube-apiserver-arg": "env BERTH_KUBE_APISERVER_ARG",
		"debug":              "env BERTH_DEBUG",
		"token":              "file " + file,
		"https-listen-port":  "file " + file,
	}
	if !reflect.DeepEqual(res.Sources, want) {
		t.Errorf("Sources = %v, want %v", res.Sources, want)
	}
}

func TestCLIBeatsEnvAndFile(t *testing.T) {
	file := writeFile(t, filepath.Join(t.TempDir(), "config.yaml"), "cluster-cidr: file\ntls-san: [file]\ndebug: true\n")
	fs := newFlags(t, "--cluster-cidr=cli", "--tls-san=cli1", "--debug=false")
	res := mustApply(t, Options{
		Flags:     fs,
		File:      file,
		EnvPrefix: "BERTH_",
		Environ:   []string{"BERTH_CLUSTER_CIDR=env", "BERTH_TLS_SAN=env", "BERTH_DEBUG=true"},
	})
	if get(t, fs, "cluster-cidr") != "cli" || get(t, fs, "debug") != "false" {
		t.Errorf("cli value overridden: %q %q", get(t, fs, "cluster-cidr"), get(t, fs, "debug"))
	}
	wantSlice(t, fs, "tls-san", "cli1")
	for _, name := range []string{"cluster-cidr", "tls-san", "debug"} {
		if res.Sources[name] != "flag" {
			t.Errorf("Sources[%s] = %q, want flag", name, res.Sources[name])
		}
	}
}

func TestAliases(t *testing.T) {
	aliases := map[string]string{
		"BERTH_URL":         "server",
		"BERTH_CONFIG_FILE": "config",
		"BERTH_NOT_A_FLAG":  "no-such-flag", // shared maps may name other commands' flags
		"BERTH_Z_TOKEN":     "token",
		"BERTH_A_TOKEN":     "token",
	}
	fs := newFlags(t)
	res := mustApply(t, Options{
		Flags:      fs,
		EnvPrefix:  "BERTH_",
		EnvAliases: aliases,
		Skip:       []string{"config", "help"},
		Environ: []string{
			"BERTH_URL=https://10.0.0.1:6443",
			"BERTH_CONFIG_FILE=/tmp/other.yaml",
			"BERTH_CONFIG=/tmp/other.yaml",
			"BERTH_NOT_A_FLAG=x",
			"BERTH_Z_TOKEN=zzz",
			"BERTH_A_TOKEN=aaa",
		},
	})
	if got := get(t, fs, "server"); got != "https://10.0.0.1:6443" {
		t.Errorf("server = %q", got)
	}
	if res.Sources["server"] != "env BERTH_URL" {
		t.Errorf("Sources[server] = %q", res.Sources["server"])
	}
	if fs.Changed("config") || get(t, fs, "config") != "/etc/berth/config.yaml" {
		t.Error("skipped flag config was set from env")
	}
	// Several aliases: sorted order decides.
	if got := get(t, fs, "token"); got != "aaa" {
		t.Errorf("token = %q, want aaa", got)
	}

	// The derived name is preferred over an alias.
	fs = newFlags(t)
	mustApply(t, Options{Flags: fs, EnvPrefix: "BERTH_", EnvAliases: aliases,
		Environ: []string{"BERTH_URL=alias", "BERTH_SERVER=derived"}})
	if got := get(t, fs, "server"); got != "derived" {
		t.Errorf("server = %q, want derived", got)
	}
}

func TestNoPrefixOnlyAliases(t *testing.T) {
	fs := newFlags(t)
	mustApply(t, Options{Flags: fs, Environ: []string{"DEBUG=true", "SERVER=x"}, EnvAliases: map[string]string{"SERVER": "server"}})
	if fs.Changed("debug") || get(t, fs, "server") != "x" {
		t.Error("empty prefix must disable derived names but keep aliases")
	}
}

func TestUnknownAndSkippedKeysWarn(t *testing.T) {
	file := writeFile(t, filepath.Join(t.TempDir(), "config.yaml"),
		"foo: bar\nbar+: [x]\nconfig: /other.yaml\ndebug: true\nserver:\n")
	fs := newFlags(t)
	res := mustApply(t, Options{Flags: fs, File: file, Skip: []string{"config"}})
	want := []string{
		`config file ` + file + `: unknown key "bar+" ignored`,
		`config file ` + file + `: key "config" cannot be set from a config file; ignored`,
		`config file ` + file + `: unknown key "foo" ignored`,
		`config file ` + file + `: key "server" has no value; ignored`,
	}
	if !reflect.DeepEqual(res.Warnings, want) {
		t.Errorf("Warnings =\n%q\nwant\n%q", res.Warnings, want)
	}
	if get(t, fs, "debug") != "true" {
		t.Error("known key not applied next to unknown ones")
	}
	if fs.Changed("config") {
		t.Error("skipped flag set from file")
	}
}

func TestBadFiles(t *testing.T) {
	for name, tc := range map[string]struct {
		content string
		want    []string
	}{
		"map value":     {"cluster-cidr:\n  a: b\n", []string{`key "cluster-cidr"`, "mapping"}},
		"map in list":   {"tls-san:\n  - a: b\n", []string{`key "tls-san"`, "list item 1", "mapping"}},
		"list for int":  {"https-listen-port: [1, 2]\n", []string{`key "https-listen-port"`, "single value"}},
		"not a mapping": {"- a\n- b\n", []string{"top level must be a mapping", "a list"}},
		"scalar doc":    {"just a string\n", []string{"top level must be a mapping"}},
		"invalid yaml":  {"a: [b\n", []string{"invalid YAML"}},
		"duplicate key": {"debug: true\ndebug: false\n", []string{"invalid YAML", "already set"}},
		"bad int": {"https-listen-port: abc\n",
			[]string{`key "https-listen-port": invalid value "abc"`, "invalid syntax"}},
		"bad bool":     {"debug: maybe\n", []string{`key "debug": invalid value "maybe"`}},
		"bad duration": {"timeout: soon\n", []string{`key "timeout": invalid value "soon"`}},
	} {
		t.Run(name, func(t *testing.T) {
			file := writeFile(t, filepath.Join(t.TempDir(), "config.yaml"), tc.content)
			_, err := Apply(Options{Flags: newFlags(t), File: file})
			wantErr(t, err, append([]string{"config file " + file + ":"}, tc.want...)...)
		})
	}
}

func TestEmptyFile(t *testing.T) {
	for _, content := range []string{"", "# only a comment\n", "---\n"} {
		file := writeFile(t, filepath.Join(t.TempDir(), "config.yaml"), content)
		res := mustApply(t, Options{Flags: newFlags(t), File: file, FileRequired: true})
		if len(res.Files) != 1 || len(res.Warnings) != 0 {
			t.Errorf("%q: Files=%q Warnings=%q", content, res.Files, res.Warnings)
		}
	}
}

func TestInvalidEnvValue(t *testing.T) {
	_, err := Apply(Options{Flags: newFlags(t), EnvPrefix: "BERTH_", Environ: []string{"BERTH_HTTPS_LISTEN_PORT=abc"}})
	wantErr(t, err, `environment BERTH_HTTPS_LISTEN_PORT: invalid value "abc"`)
}

func TestSecretsHidden(t *testing.T) {
	const secret = "K10-super-secret-value"
	fs := pflag.NewFlagSet("test", pflag.ContinueOnError)
	fs.Int("token", 0, "") // an int so the value is rejected
	fs.Int("agent-token", 0, "")
	fs.Int("datastore-password", 0, "")
	fs.Int("etcd-s3-secret-key", 0, "")
	for _, name := range []string{"token", "agent-token", "datastore-password", "etcd-s3-secret-key"} {
		file := writeFile(t, filepath.Join(t.TempDir(), "config.yaml"), name+": "+secret+"\n")
		_, err := Apply(Options{Flags: fs, File: file})
		wantErr(t, err, "invalid value (hidden)", file, `key "`+name+`"`)
		if err != nil && strings.Contains(err.Error(), secret) {
			t.Errorf("file error leaks the secret: %v", err)
		}

		env := "BERTH_" + strings.ToUpper(strings.ReplaceAll(name, "-", "_"))
		_, err = Apply(Options{Flags: fs, EnvPrefix: "BERTH_", Environ: []string{env + "=" + secret}})
		wantErr(t, err, "environment "+env+": invalid value (hidden)")
		if err != nil && strings.Contains(err.Error(), secret) {
			t.Errorf("env error leaks the secret: %v", err)
		}
	}
	if !isSecret("etcd-s3-secret-key") || isSecret("token-file") || isSecret("server") {
		t.Error("isSecret classification wrong")
	}
}

func TestMissingFiles(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "nope", "config.yaml")
	res := mustApply(t, Options{Flags: newFlags(t), File: missing})
	if len(res.Files) != 0 {
		t.Errorf("Files = %q", res.Files)
	}
	mustApply(t, Options{Flags: newFlags(t)}) // no file at all

	_, err := Apply(Options{Flags: newFlags(t), File: missing, FileRequired: true})
	wantErr(t, err, "config file "+missing)
	if !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("error %v does not wrap fs.ErrNotExist", err)
	}
}

func TestNilFlags(t *testing.T) {
	if _, err := Apply(Options{}); err == nil {
		t.Error("expected an error for nil Flags")
	}
}

func TestFilePath(t *testing.T) {
	const def = "/etc/berth/config.yaml"
	env := []string{"BERTH_CONFIG_FILE=/env.yaml"}

	path, explicit := FilePath(newFlags(t, "--config", "/cli.yaml"), "config", env, def)
	if path != "/cli.yaml" || !explicit {
		t.Errorf("cli: %q %v", path, explicit)
	}
	path, explicit = FilePath(newFlags(t), "config", env, def)
	if path != "/env.yaml" || !explicit {
		t.Errorf("env: %q %v", path, explicit)
	}
	path, explicit = FilePath(newFlags(t), "config", []string{"BERTH_CONFIG_FILE="}, def)
	if path != def || explicit {
		t.Errorf("default: %q %v", path, explicit)
	}
	path, explicit = FilePath(nil, "config", nil, def)
	if path != def || explicit {
		t.Errorf("nil flags: %q %v", path, explicit)
	}
}
