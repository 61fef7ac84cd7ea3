// Package defaults holds berth's default paths. It imports nothing of
// berth's and no third-party code, so the release launcher
// (cmd/berth-launcher) finds the same data dir as berth without linking
// berth's commands or configuration machinery.
package defaults

import (
	"os"
	"path/filepath"
)

// ConfigFile is the config file read when neither --config nor
// BERTH_CONFIG_FILE names one; its drop-ins are in ConfigFile+".d".
const ConfigFile = "/etc/berth/config.yaml"

// DataDir is /var/lib/berth for root and ~/.berth otherwise, as k3s does.
func DataDir() string {
	if os.Geteuid() == 0 {
		return "/var/lib/berth"
	}
	if home, err := os.UserHomeDir(); err == nil {
		return filepath.Join(home, ".berth")
	}
	return "/var/lib/berth"
}
