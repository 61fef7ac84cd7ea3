package containerd

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"
)

// CanLowerOOMScoreAdj tells whether this process may lower its
// oom_score_adj, which needs CAP_SYS_RESOURCE. Without it every container
// fails to start ("failed to update /proc/self/oom_score_adj: permission
// denied") unless containerd restricts the values it sets.
//
// It tries for real: lower the value by one, then put it back (raising is
// always allowed).
func CanLowerOOMScoreAdj() (bool, error) {
	const path = "/proc/self/oom_score_adj"
	b, err := os.ReadFile(path)
	if err != nil {
		return false, err
	}
	cur, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		return false, fmt.Errorf("parse %s: %w", path, err)
	}
	if cur <= -1000 {
		return true, nil // already at the floor: something privileged set it
	}
	err = os.WriteFile(path, []byte(strconv.Itoa(cur-1)), 0)
	if errors.Is(err, syscall.EACCES) || errors.Is(err, syscall.EPERM) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	if err := os.WriteFile(path, []byte(strconv.Itoa(cur)), 0); err != nil {
		return true, fmt.Errorf("restore %s: %w", path, err)
	}
	return true, nil
}
