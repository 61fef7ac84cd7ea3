// Package config fills command-line flags the user did not set from
// environment variables and YAML config files, following k3s's conventions
// (pkg/configfilearg) with the BERTH_ prefix.
//
// Precedence, highest first: command-line flag, environment variable,
// config file(s), flag default.
package config

import (
	"fmt"
	"sort"
	"strings"

	"github.com/spf13/pflag"
)

// ConfigFileEnv names the config file when --config is not given on the
// command line.
const ConfigFileEnv = "BERTH_CONFIG_FILE"

// Options describes one Apply run.
type Options struct {
	// Flags is the command's flag set, already parsed from the command line.
	Flags *pflag.FlagSet
	// File is the main config file path, e.g. /etc/berth/config.yaml. Its
	// drop-in directory File+".d" is read too. Empty means no config files.
	File string
	// FileRequired is true when the user named File explicitly (--config or
	// BERTH_CONFIG_FILE). Then it is an error if neither File nor any drop-in
	// exists; for the default path nothing existing is fine.
	FileRequired bool
	// EnvPrefix is prepended to the upper-cased, underscored flag name to
	// form its environment variable, e.g. "BERTH_" gives BERTH_CLUSTER_CIDR.
	// Empty disables derived names (only EnvAliases are consulted), since
	// unprefixed names would pick up unrelated variables such as PATH.
	EnvPrefix string
	// EnvAliases maps extra environment variable names to flag names, e.g.
	// "BERTH_URL" -> "server". Aliases of flags absent from Flags are ignored
	// so one map can serve several commands.
	EnvAliases map[string]string
	// Environ holds "KEY=value" entries, normally os.Environ().
	Environ []string
	// Skip lists flag names never taken from the environment or a file,
	// e.g. "config" and "help".
	Skip []string
}

// Result reports what Apply did.
type Result struct {
	// Warnings are non-fatal problems, e.g. unknown config file keys; the
	// caller logs them. They never contain values.
	Warnings []string
	// Files are the config files actually read, in order.
	Files []string
	// Sources maps each flag that has a value other than its default to
	// where it came from: "flag", "env BERTH_X" or "file /path" (several
	// comma-separated paths when a list was accumulated with "key+").
	Sources map[string]string
}

// Apply sets every flag in o.Flags that was not changed on the command line
// from, in order of preference, the environment or the config files. It
// returns an error for unreadable or malformed files, a required file that
// does not exist, and values a flag rejects.
func Apply(o Options) (*Result, error) {
	if o.Flags == nil {
		return nil, fmt.Errorf("config: no flag set given")
	}
	res := &Result{Sources: map[string]string{}}

	skip := map[string]bool{}
	for _, name := range o.Skip {
		// Normalise through Lookup so Skip may use any spelling the flag set accepts.
		if f := o.Flags.Lookup(name); f != nil {
			skip[f.Name] = true
		}
		skip[name] = true
	}

	// Snapshot the flags first: setting values while visiting would mix
	// command-line and applied values in the Changed check.
	var pending []*pflag.Flag
	o.Flags.VisitAll(func(f *pflag.Flag) {
		switch {
		case f.Changed:
			res.Sources[f.Name] = "flag"
		case !skip[f.Name]:
			pending = append(pending, f)
		}
	})

	files, err := configFiles(o.File, o.FileRequired)
	if err != nil {
		return nil, err
	}
	values, err := readFiles(files, o.Flags, skip, res)
	if err != nil {
		return nil, err
	}

	env := parseEnviron(o.Environ)
	aliases := aliasesByFlag(o.Flags, o.EnvAliases)

	for _, f := range pending {
		name, value, ok := lookupEnv(env, envNames(o.EnvPrefix, f.Name, aliases[f.Name]))
		if ok {
			if err := applyEnv(o.Flags, f, name, value); err != nil {
				return nil, err
			}
			res.Sources[f.Name] = "env " + name
			continue
		}
		if v, ok := values[f.Name]; ok {
			if err := applyFile(o.Flags, f, v); err != nil {
				return nil, err
			}
			res.Sources[f.Name] = "file " + strings.Join(v.files, ", ")
		}
	}
	return res, nil
}

// FilePath resolves the config file path the k3s way: the value of flagName
// if it was set on the command line, else $BERTH_CONFIG_FILE, else def.
// explicit reports whether the user chose the path, i.e. whether a missing
// file should be an error.
func FilePath(fs *pflag.FlagSet, flagName string, environ []string, def string) (path string, explicit bool) {
	if fs != nil {
		if f := fs.Lookup(flagName); f != nil && f.Changed {
			return f.Value.String(), true
		}
	}
	if v := parseEnviron(environ)[ConfigFileEnv]; v != "" {
		return v, true
	}
	return def, false
}

// applyEnv sets f from an environment variable. Slice flags take a
// comma-separated list, each item one element.
func applyEnv(fs *pflag.FlagSet, f *pflag.Flag, envName, value string) error {
	if sv, ok := f.Value.(pflag.SliceValue); ok {
		var items []string
		for _, item := range strings.Split(value, ",") {
			if item = strings.TrimSpace(item); item != "" {
				items = append(items, item)
			}
		}
		if err := sv.Replace(items); err != nil {
			return invalidValue("environment "+envName, f.Name, fmt.Sprintf("%q", items), err)
		}
		// Replace bypasses FlagSet.Set, so record that a value was given.
		f.Changed = true
		return nil
	}
	if err := fs.Set(f.Name, value); err != nil {
		return invalidValue("environment "+envName, f.Name, fmt.Sprintf("%q", value), err)
	}
	return nil
}

// applyFile sets f from its merged config file value.
func applyFile(fs *pflag.FlagSet, f *pflag.Flag, v *fileValue) error {
	files := "config file " + v.files[len(v.files)-1]
	if len(v.files) > 1 {
		files = "config files " + strings.Join(v.files, ", ")
	}
	where := fmt.Sprintf("%s: key %q", files, v.key)

	sv, isSlice := f.Value.(pflag.SliceValue)
	switch {
	case v.list && isSlice:
		if err := sv.Replace(v.items); err != nil {
			return invalidValue(where, f.Name, fmt.Sprintf("%q", v.items), err)
		}
		// Replace bypasses FlagSet.Set, so record that a value was given.
		f.Changed = true
	case v.list:
		return fmt.Errorf("%s: flag --%s takes a single value, not a list", where, f.Name)
	default:
		// A scalar goes through Set exactly as if typed on the command line.
		if err := fs.Set(f.Name, v.items[0]); err != nil {
			return invalidValue(where, f.Name, fmt.Sprintf("%q", v.items[0]), err)
		}
	}
	return nil
}

// invalidValue builds the error for a rejected value, leaving out both the
// value and the flag's own error text (which repeats the value) for secrets.
func invalidValue(where, flagName, quoted string, err error) error {
	if isSecret(flagName) {
		return fmt.Errorf("%s: invalid value (hidden)", where)
	}
	return fmt.Errorf("%s: invalid value %s: %w", where, quoted, err)
}

// isSecret reports whether a flag's values must never appear in messages.
func isSecret(flagName string) bool {
	n := strings.ToLower(flagName)
	return n == "token" || n == "agent-token" ||
		strings.Contains(n, "password") || strings.Contains(n, "secret")
}

// parseEnviron turns "KEY=value" entries into a map. The first entry for a
// key wins, as with os.Getenv.
func parseEnviron(environ []string) map[string]string {
	env := make(map[string]string, len(environ))
	for _, kv := range environ {
		k, v, ok := strings.Cut(kv, "=")
		if !ok || k == "" {
			continue
		}
		if _, seen := env[k]; !seen {
			env[k] = v
		}
	}
	return env
}

// aliasesByFlag inverts the alias map to flag name -> sorted env names, so
// the lookup order is deterministic when several aliases name one flag.
func aliasesByFlag(fs *pflag.FlagSet, aliases map[string]string) map[string][]string {
	out := map[string][]string{}
	for envName, flagName := range aliases {
		if f := fs.Lookup(flagName); f != nil && envName != "" {
			out[f.Name] = append(out[f.Name], envName)
		}
	}
	for _, names := range out {
		sort.Strings(names)
	}
	return out
}

// envNames lists the variables consulted for a flag, most preferred first:
// the derived PREFIX_NAME, then its aliases.
func envNames(prefix, flagName string, aliases []string) []string {
	var names []string
	if prefix != "" {
		names = append(names, prefix+strings.ToUpper(strings.ReplaceAll(flagName, "-", "_")))
	}
	return append(names, aliases...)
}

// lookupEnv returns the first of names that is set to a non-empty value;
// an empty variable counts as unset so it cannot blank out a file value.
func lookupEnv(env map[string]string, names []string) (name, value string, ok bool) {
	for _, n := range names {
		if v := env[n]; v != "" {
			return n, v, true
		}
	}
	return "", "", false
}
