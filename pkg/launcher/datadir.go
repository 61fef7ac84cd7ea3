package launcher

import (
	"bufio"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/berth-io/berth/pkg/defaults"
)

// Commands whose --data-dir (-d) names the data dir; server and agent also
// take it from BERTH_DATA_DIR and the config files, as berth does.
var (
	dataDirCommands = map[string]bool{"server": true, "agent": true, "check-config": true, "token": true}
	configCommands  = map[string]bool{"server": true, "agent": true}
	// Tools berth runs when argv[0] names them: their arguments are
	// theirs. (As a subcommand, `berth kubectl …`, they are not in
	// dataDirCommands either: kubectl exec … -- ls -d /tmp must not move
	// the data dir.)
	tools = map[string]bool{"kubectl": true, "ctr": true, "crictl": true}
)

// rootValueFlags are berth's global flags that take a separate value.
var rootValueFlags = map[string]bool{"-v": true, "--v": true, "--vmodule": true}

// DataDir returns the data dir berth will use for this command line, so the
// launcher unpacks where berth keeps its state: --data-dir/-d, then
// BERTH_DATA_DIR, then a data-dir line in the config files (server and
// agent; -c/--config or BERTH_CONFIG_FILE, else /etc/berth/config.yaml,
// then its .d drop-ins in lexical order, the last one winning), then def.
//
// The launcher parses no YAML, to stay small: it reads only a plain
// top-level `data-dir: PATH` line (quotes and a trailing comment allowed).
// A data dir written any other way is still berth's data dir; the helpers
// are then unpacked under def or BERTH_DATA_DIR instead, which works too,
// only elsewhere.
func DataDir(argv0 string, args, environ []string, def string) string {
	env := map[string]string{}
	for _, kv := range environ {
		if k, v, ok := strings.Cut(kv, "="); ok {
			env[k] = v
		}
	}
	envDir := env["BERTH_DATA_DIR"]
	if tools[filepath.Base(argv0)] {
		return or(envDir, def)
	}
	cmd, rest := subcommand(args)
	if !dataDirCommands[cmd] {
		return or(envDir, def)
	}
	flagDir, configFile := flags(rest)
	if flagDir != "" {
		return flagDir
	}
	if envDir != "" || !configCommands[cmd] {
		return or(envDir, def)
	}
	if configFile == "" {
		configFile = or(env["BERTH_CONFIG_FILE"], defaults.ConfigFile)
	}
	return or(fromConfigFiles(configFile), def)
}

func or(a, b string) string {
	if a != "" {
		return a
	}
	return b
}

// subcommand returns berth's command (the first argument that is not a
// flag) and the arguments after it.
func subcommand(args []string) (string, []string) {
	for i := 0; i < len(args); i++ {
		a := args[i]
		switch {
		case a == "--":
			return "", nil
		case rootValueFlags[a]:
			i++ // its value
		case strings.HasPrefix(a, "-"):
		default:
			return a, args[i+1:]
		}
	}
	return "", nil
}

// flags finds the last --data-dir/-d and --config/-c in args (as pflag
// reads them: `-d X`, `-dX`, `-d=X`, `--data-dir X`, `--data-dir=X`), up
// to a "--".
func flags(args []string) (dataDir, config string) {
	for i := 0; i < len(args) && args[i] != "--"; i++ {
		if v, n := value(args, i, "--data-dir", "-d"); n > 0 {
			dataDir, i = v, i+n-1
		} else if v, n := value(args, i, "--config", "-c"); n > 0 {
			config, i = v, i+n-1
		}
	}
	return dataDir, config
}

// value returns the value args[i] gives the flag long/short and how many
// arguments that took (0: args[i] is another flag).
func value(args []string, i int, long, short string) (string, int) {
	a := args[i]
	switch {
	case a == long || a == short:
		if i+1 < len(args) {
			return args[i+1], 2
		}
		return "", 1
	case strings.HasPrefix(a, long+"="):
		return a[len(long)+1:], 1
	case !strings.HasPrefix(a, "--") && strings.HasPrefix(a, short):
		return strings.TrimPrefix(a[len(short):], "="), 1
	}
	return "", 0
}

// fromConfigFiles returns the data-dir of file and its drop-ins (the last
// one that sets it), or "".
func fromConfigFiles(file string) string {
	files := []string{file}
	if entries, err := os.ReadDir(file + ".d"); err == nil {
		var names []string
		for _, e := range entries {
			n := strings.ToLower(e.Name())
			if strings.HasSuffix(n, ".yaml") || strings.HasSuffix(n, ".yml") {
				names = append(names, filepath.Join(file+".d", e.Name()))
			}
		}
		sort.Strings(names)
		files = append(files, names...)
	}
	dir := ""
	for _, f := range files {
		if d := dataDirLine(f); d != "" {
			dir = d
		}
	}
	return dir
}

// dataDirLine returns the value of a top-level `data-dir: PATH` line in
// file, or "".
func dataDirLine(file string) string {
	f, err := os.Open(file)
	if err != nil {
		return ""
	}
	defer f.Close()
	dir := ""
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		v, ok := strings.CutPrefix(sc.Text(), "data-dir:")
		if !ok {
			continue
		}
		v = strings.TrimSpace(v)
		switch {
		case len(v) >= 2 && (v[0] == '"' || v[0] == '\''):
			if end := strings.IndexByte(v[1:], v[0]); end >= 0 {
				v = v[1 : end+1]
			} else {
				v = ""
			}
		default:
			if i := strings.Index(v, " #"); i >= 0 {
				v = strings.TrimSpace(v[:i])
			}
			if strings.ContainsAny(v, "[]{}&*!|>%@`") {
				v = "" // not a plain scalar: leave it to berth
			}
		}
		if v != "" {
			dir = v
		}
	}
	return dir
}
