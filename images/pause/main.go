// Command pause is the sandbox container of every berth pod (image
// berth.local/pause). It holds the pod's namespaces open and otherwise does
// nothing: it sleeps until SIGINT or SIGTERM and then exits 0. When it is the
// pod's PID 1 (shareProcessNamespace), orphaned processes are re-parented to
// it, so it reaps them on SIGCHLD to keep zombies from piling up.
//
// Built static (CGO_ENABLED=0) by cmd/berth-images; it must stay tiny.
package main

import (
	"errors"
	"fmt"
	"os"
	"os/signal"
	"syscall"
)

// version is the tag of the image this program ships in.
const version = "3.10"

func main() {
	if len(os.Args) > 1 {
		if os.Args[1] == "-v" || os.Args[1] == "--version" {
			fmt.Println("pause (berth) " + version)
			return
		}
		fmt.Fprintln(os.Stderr, "usage: pause [-v]")
		os.Exit(2)
	}
	if os.Getpid() != 1 {
		fmt.Fprintln(os.Stderr, "pause: warning: not running as PID 1, orphans will not be reaped here")
	}

	sigs := make(chan os.Signal, 16)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGCHLD)
	for s := range sigs {
		if s == syscall.SIGCHLD {
			reap()
			continue
		}
		fmt.Fprintf(os.Stderr, "pause: shutting down, got signal %v\n", s)
		os.Exit(0)
	}
}

// reap collects every exited child. SIGCHLDs coalesce, so one signal may
// stand for several children: loop until none is left waiting.
func reap() {
	for {
		var ws syscall.WaitStatus
		pid, err := syscall.Wait4(-1, &ws, syscall.WNOHANG, nil)
		if errors.Is(err, syscall.EINTR) {
			continue
		}
		if pid <= 0 || err != nil {
			return
		}
	}
}
