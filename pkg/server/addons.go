package server

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"k8s.io/klog/v2"

	"github.com/berth-io/berth/manifests"
	"github.com/berth-io/berth/pkg/atomicfile"
)

// ManifestsDir is where the auto-deploy controller reads manifests.
func (c *Config) ManifestsDir() string { return filepath.Join(c.ServerDir(), "manifests") }

// writeAddons renders the packaged add-ons into the manifests dir, as k3s
// does at every start: an add-on with a .skip file is left to the user, a
// disabled one's file is removed (the controller then deletes its objects).
func (s *Server) writeAddons() error {
	cfg := s.cfg
	dir := cfg.ManifestsDir()
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("manifests dir: %w", err)
	}
	registry := strings.TrimSuffix(cfg.SystemDefaultRegistry, "/")
	if registry == "" {
		registry = "berth.local"
	}
	v := manifests.Values{
		ClusterDNS:    cfg.ClusterDNS,
		ClusterDomain: cfg.ClusterDomain,
		Registry:      registry,
		StoragePath:   cfg.DefaultLocalStoragePath,
	}
	for _, name := range manifests.Names() {
		path := filepath.Join(dir, name+".yaml")
		if slices.Contains(cfg.Disable, name) {
			if err := os.Remove(path); err == nil {
				klog.Infof("add-on %s is disabled: removing it", name)
			} else if !errors.Is(err, os.ErrNotExist) {
				return fmt.Errorf("disable %s: %w", name, err)
			}
			continue
		}
		if _, err := os.Stat(path + ".skip"); err == nil {
			klog.Infof("add-on %s: %s.skip exists, leaving it alone", name, path)
			continue
		}
		text, err := manifests.Render(name, v)
		if err != nil {
			return err
		}
		if old, err := os.ReadFile(path); err == nil && bytes.Equal(old, text) {
			continue
		}
		if err := atomicfile.Write(path, text, 0o600); err != nil {
			return fmt.Errorf("add-on %s: %w", name, err)
		}
	}
	return nil
}
