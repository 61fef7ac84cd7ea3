package config

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"

	"github.com/spf13/pflag"
	"sigs.k8s.io/yaml"
)

// fileValue is one flag's value merged across all config files.
type fileValue struct {
	items []string // one element unless list
	list  bool     // given as a YAML list (or accumulated with "key+")
	files []string // files that contributed, in order, for Sources and errors
	key   string   // key as last written, for error messages
}

// configFiles lists the files to read: file itself, then the drop-ins in
// file+".d" in lexical order. Like k3s, a missing main file is tolerated
// when drop-ins exist, even if the path was given explicitly.
func configFiles(file string, required bool) ([]string, error) {
	if file == "" {
		return nil, nil
	}
	dropins, err := dropinFiles(file + ".d")
	if err != nil {
		return nil, err
	}
	switch _, err := os.Stat(file); {
	case err == nil:
		return append([]string{file}, dropins...), nil
	case errors.Is(err, fs.ErrNotExist) && (!required || len(dropins) > 0):
		return dropins, nil
	default:
		return nil, fmt.Errorf("config file %s: %w", file, err)
	}
}

// dropinFiles returns the *.yaml and *.yml files in dir sorted by name; a
// missing dir has none.
func dropinFiles(dir string) ([]string, error) {
	entries, err := os.ReadDir(dir) // sorted by file name
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("config drop-in directory %s: %w", dir, err)
	}
	var files []string
	for _, e := range entries {
		name := strings.ToLower(e.Name())
		if !strings.HasSuffix(name, ".yaml") && !strings.HasSuffix(name, ".yml") {
			continue
		}
		path := filepath.Join(dir, e.Name())
		isDir := e.IsDir()
		if e.Type()&fs.ModeSymlink != 0 {
			// Follow links so a linked directory is skipped rather than failing the read.
			if st, err := os.Stat(path); err == nil {
				isDir = st.IsDir()
			}
		}
		if !isDir {
			files = append(files, path)
		}
	}
	return files, nil
}

// readFiles parses files in order and merges their keys into values keyed
// by canonical flag name: a later plain key replaces, "key+" appends.
func readFiles(files []string, flags *pflag.FlagSet, skip map[string]bool, res *Result) (map[string]*fileValue, error) {
	values := map[string]*fileValue{}
	for _, file := range files {
		data, err := readFile(file)
		if err != nil {
			return nil, err
		}
		res.Files = append(res.Files, file)

		// Sorted keys make the result deterministic; "k" sorts before "k+",
		// so within one file the replace happens before the append.
		keys := make([]string, 0, len(data))
		for k := range data {
			keys = append(keys, k)
		}
		sort.Strings(keys)

		for _, key := range keys {
			base, appendMode := strings.CutSuffix(key, "+")
			f := lookupKey(flags, base)
			switch {
			case f == nil:
				res.Warnings = append(res.Warnings, fmt.Sprintf("config file %s: unknown key %q ignored", file, key))
				continue
			case skip[f.Name]:
				res.Warnings = append(res.Warnings, fmt.Sprintf("config file %s: key %q cannot be set from a config file; ignored", file, key))
				continue
			case data[key] == nil:
				res.Warnings = append(res.Warnings, fmt.Sprintf("config file %s: key %q has no value; ignored", file, key))
				continue
			}

			items, list, err := toStrings(data[key])
			if err != nil {
				return nil, fmt.Errorf("config file %s: key %q: %w", file, key, err)
			}
			prev := values[f.Name]
			if appendMode && prev != nil {
				prev.items = append(prev.items, items...)
				prev.list = true
				if prev.files[len(prev.files)-1] != file {
					prev.files = append(prev.files, file)
				}
				prev.key = key
				continue
			}
			// "key+" with nothing before it starts a new list.
			values[f.Name] = &fileValue{items: items, list: list || appendMode, files: []string{file}, key: key}
		}
	}
	return values, nil
}

// readFile parses one config file, which must be empty or a YAML mapping.
func readFile(file string) (map[string]interface{}, error) {
	b, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("config file %s: %w", file, err)
	}
	var doc interface{}
	// Strict rejects duplicate keys, whose winner would otherwise be
	// arbitrary; UseNumber keeps integers exact instead of float64.
	if err := yaml.UnmarshalStrict(b, &doc, func(d *json.Decoder) *json.Decoder {
		d.UseNumber()
		return d
	}); err != nil {
		return nil, fmt.Errorf("config file %s: invalid YAML: %w", file, err)
	}
	switch m := doc.(type) {
	case nil: // empty or comments only
		return nil, nil
	case map[string]interface{}:
		return m, nil
	default:
		return nil, fmt.Errorf("config file %s: top level must be a mapping of flag names to values, got %s", file, kind(doc))
	}
}

// lookupKey finds the flag a config key names; single-letter keys are
// shorthands, as in k3s.
func lookupKey(flags *pflag.FlagSet, key string) *pflag.Flag {
	if len(key) == 1 {
		// ShorthandLookup panics on longer names, hence the length check.
		if f := flags.ShorthandLookup(key); f != nil {
			return f
		}
	}
	if key == "" {
		return nil
	}
	return flags.Lookup(key)
}

// toStrings converts a YAML value to flag strings. list reports whether it
// was a YAML sequence, which only slice flags accept.
func toStrings(v interface{}) (items []string, list bool, err error) {
	seq, ok := v.([]interface{})
	if !ok {
		s, err := scalarString(v)
		if err != nil {
			return nil, false, err
		}
		return []string{s}, false, nil
	}
	items = make([]string, 0, len(seq))
	for i, item := range seq {
		s, err := scalarString(item)
		if err != nil {
			return nil, true, fmt.Errorf("list item %d: %w", i+1, err)
		}
		items = append(items, s)
	}
	return items, true, nil
}

// scalarString formats a decoded YAML scalar the way it would be typed on a
// command line.
func scalarString(v interface{}) (string, error) {
	switch s := v.(type) {
	case string:
		return s, nil
	case bool:
		return strconv.FormatBool(s), nil
	case json.Number:
		// Integers arrive verbatim; only huge floats use exponent form.
		if !strings.ContainsAny(string(s), "eE") {
			return string(s), nil
		}
		f, err := s.Float64()
		if err != nil {
			return "", fmt.Errorf("invalid number %s: %w", s, err)
		}
		return strconv.FormatFloat(f, 'f', -1, 64), nil
	case float64: // not produced with UseNumber, kept for safety
		return strconv.FormatFloat(s, 'f', -1, 64), nil
	default:
		return "", fmt.Errorf("expected a string, number, boolean or list of them, got %s", kind(v))
	}
}

// kind names a decoded YAML value's type for error messages without
// revealing its content.
func kind(v interface{}) string {
	switch v.(type) {
	case map[string]interface{}:
		return "a mapping"
	case []interface{}:
		return "a list"
	case nil:
		return "null"
	default:
		return fmt.Sprintf("%T", v)
	}
}
