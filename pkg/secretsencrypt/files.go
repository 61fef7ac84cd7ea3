package secretsencrypt

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	"k8s.io/klog/v2"

	"github.com/berth-io/berth/pkg/atomicfile"
)

// Rotation stages, k3s's names (status prints them).
const (
	StageStart             = "start"
	StagePrepare           = "prepare"
	StageRotate            = "rotate"
	StageReencryptRequest  = "reencrypt_request"
	StageReencryptActive   = "reencrypt_active"
	StageReencryptFinished = "reencrypt_finished"
)

// File names in <data-dir>/server/cred (k3s's layout).
const (
	ConfigFile = "encryption-config.json"
	StateFile  = "encryption-state.json"
)

// State is this server's rotation state, kept next to the configuration
// so it survives restarts and needs no apiserver to read.
type State struct {
	Stage string `json:"stage"`
	// ConfigHash is the configuration's hash when Stage was reached.
	ConfigHash string `json:"configHash"`
	// Pending is a reencryption that has not finished: it resumes when the
	// server starts again (unless it failed: then LastError says why and
	// the user retries).
	Pending   *Pending  `json:"pending,omitempty"`
	LastError string    `json:"lastError,omitempty"`
	Updated   time.Time `json:"updated"`
}

// Pending is the reencryption work a command left to do.
type Pending struct {
	Command string `json:"command"`
	// DropInactive removes every key but the active one once every Secret
	// is rewritten with it.
	DropInactive bool `json:"dropInactive"`
	// Final is the stage reached when done.
	Final string `json:"final"`
	// Server runs it: the state file may be shared between servers (it
	// travels with the config), but only the server that started the work
	// resumes it.
	Server string `json:"server"`
}

// Files are the encryption files in a server's cred dir.
type Files struct{ Dir string }

func (f Files) ConfigPath() string { return filepath.Join(f.Dir, ConfigFile) }
func (f Files) StatePath() string  { return filepath.Join(f.Dir, StateFile) }

// ReadConfig returns the configuration, its raw bytes, or fs.ErrNotExist.
func (f Files) ReadConfig() (*Config, []byte, error) {
	data, err := os.ReadFile(f.ConfigPath())
	if err != nil {
		return nil, nil, err
	}
	c, err := Parse(data)
	if err != nil {
		return nil, data, fmt.Errorf("secrets encryption config %s: %w", f.ConfigPath(), err)
	}
	return c, data, nil
}

// WriteConfig replaces the configuration atomically (0600: it holds the
// keys) and returns the new content's hash.
func (f Files) WriteConfig(c *Config) (string, error) {
	data, err := c.Marshal()
	if err != nil {
		return "", err
	}
	if err := atomicfile.Write(f.ConfigPath(), data, 0o600); err != nil {
		return "", fmt.Errorf("secrets encryption config: %w", err)
	}
	return Hash(data), nil
}

// ReadState returns the stored state; a missing file is stage start.
func (f Files) ReadState() (*State, error) {
	b, err := os.ReadFile(f.StatePath())
	if errors.Is(err, fs.ErrNotExist) {
		return &State{Stage: StageStart}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("secrets encryption state: %w", err)
	}
	var s State
	if err := json.Unmarshal(b, &s); err != nil || s.Stage == "" {
		return nil, fmt.Errorf("secrets encryption state %s is not valid (%v); delete it to start over at stage %q: the keys are in %s", f.StatePath(), err, StageStart, f.ConfigPath())
	}
	return &s, nil
}

// WriteState stores s atomically.
func (f Files) WriteState(s *State) error {
	s.Updated = time.Now().UTC()
	b, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		return err
	}
	if err := atomicfile.Write(f.StatePath(), append(b, '\n'), 0o600); err != nil {
		return fmt.Errorf("secrets encryption state: %w", err)
	}
	return nil
}

// Ensure prepares secrets encryption before the apiserver starts and
// returns the configuration file to give it ("" for none).
//
//   - A configuration in the data dir is always used, with or without
//     --secrets-encryption: starting without it would make every Secret
//     encrypted so far unreadable. It must parse and pass the apiserver's
//     own checks; a broken one stops the start, untouched, because
//     regenerating it would lose the keys the Secrets were written with.
//   - Without one, --secrets-encryption generates it: one new key of
//     provider p, identity last.
func (f Files) Ensure(enable bool, p Provider) (string, error) {
	c, _, err := f.ReadConfig()
	switch {
	case err == nil:
		if err := CheckWithAPIServer(f.ConfigPath()); err != nil {
			return "", fmt.Errorf("secrets encryption config %s is refused by the apiserver: %w", f.ConfigPath(), err)
		}
		if err := tightenMode(f.ConfigPath()); err != nil {
			return "", err
		}
		if !enable {
			klog.Warningf("Secrets encryption: %s exists, so it is used although --secrets-encryption is not set (without it the Secrets encrypted so far could not be read). To turn encryption off: berth secrets-encrypt disable", f.ConfigPath())
		}
		if active, ok := c.Active(); ok && active.Provider != p && enable {
			klog.Infof("Secrets encryption: the active key %s is %s; --secrets-encryption-provider %s applies from the next `berth secrets-encrypt rotate-keys`", active.Name, active.Provider, p)
		}
		if _, err := os.Stat(f.StatePath()); errors.Is(err, fs.ErrNotExist) {
			data, _ := os.ReadFile(f.ConfigPath())
			if err := f.WriteState(&State{Stage: StageStart, ConfigHash: Hash(data)}); err != nil {
				return "", err
			}
		} else if _, err := f.ReadState(); err != nil {
			return "", err
		}
		return f.ConfigPath(), nil
	case errors.Is(err, fs.ErrNotExist):
		if !enable {
			return "", nil
		}
	default:
		return "", fmt.Errorf("%w\nberth does not start with it: the Secrets encrypted with its keys would be unreadable, and a new file would lose the keys. Restore the file (from a backup, or from another server's <data-dir>/server/cred/%s); berth never regenerates it", err, ConfigFile)
	}
	c, err = Generate(p)
	if err != nil {
		return "", err
	}
	if err := os.MkdirAll(f.Dir, 0o700); err != nil {
		return "", fmt.Errorf("secrets encryption: %w", err)
	}
	hash, err := f.WriteConfig(c)
	if err != nil {
		return "", err
	}
	if err := f.WriteState(&State{Stage: StageStart, ConfigHash: hash}); err != nil {
		return "", err
	}
	klog.Infof("Secrets encryption: generated %s with a new %s key %s; Secrets are encrypted from now on (existing ones when rewritten: berth secrets-encrypt reencrypt)", f.ConfigPath(), p, c.Keys[0].Name)
	return f.ConfigPath(), nil
}

// tightenMode makes a key file private if it was copied in loosely.
func tightenMode(path string) error {
	fi, err := os.Stat(path)
	if err != nil {
		return err
	}
	if fi.Mode().Perm()&0o077 != 0 {
		klog.Warningf("%s was readable by others (mode %o); setting 0600", path, fi.Mode().Perm())
		if err := os.Chmod(path, 0o600); err != nil {
			return fmt.Errorf("chmod %s: %w", path, err)
		}
	}
	return nil
}
