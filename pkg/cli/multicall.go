package cli

import (
	"fmt"
	"os"
	"path/filepath"
)

// Tool runs a bundled program with its arguments and returns its exit status.
type Tool func(args []string) int

// RunCrictl is ExecCrictl as a Tool: it returns only when the exec failed.
func RunCrictl(args []string) int {
	fmt.Fprintln(os.Stderr, ExecCrictl(args))
	return 1
}

// MultiCall runs the tool named by argv[0] (a kubectl, ctr or crictl symlink
// to a berth binary) and exits; it returns when argv[0] names none of them.
func MultiCall(tools map[string]Tool) {
	if run, ok := tools[filepath.Base(os.Args[0])]; ok {
		os.Exit(run(os.Args[1:]))
	}
}
