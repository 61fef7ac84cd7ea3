package dbtest

import (
	"errors"
	"os"
	"testing"
)

// TestStart starts and stops each database (the integration tests use
// them; this shows a broken set-up by itself).
func TestStart(t *testing.T) {
	if os.Getuid() != 0 {
		t.Skip("needs root (the databases run as their system users)")
	}
	for name, start := range map[string]func(string) (*DB, error){"postgres": StartPostgres, "mariadb": StartMariaDB} {
		t.Run(name, func(t *testing.T) {
			d, err := start("pw-" + name)
			if errors.Is(err, ErrMissing) {
				t.Skipf("%v", err)
			}
			if err != nil {
				t.Fatal(err)
			}
			dir := d.Dir
			d.Stop()
			if _, err := os.Stat(dir); !os.IsNotExist(err) {
				t.Errorf("%s left behind", dir)
			}
		})
	}
}
