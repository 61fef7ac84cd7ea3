// Package memory returns what start-up used and idle does not need.
//
// A berth process links all of Kubernetes: ~1,500 package init functions
// and the components' start-up (OpenAPI aggregation, informer syncs) leave
// tens of MB of garbage that the Go runtime would otherwise keep mapped
// until the heap next reaches its goal, which an idle server takes minutes
// to do.
package memory

import (
	"os"
	"runtime/debug"

	"k8s.io/klog/v2"
)

// DefaultGCPercent is the GOGC berth uses unless the user sets GOGC: the
// heap of an idle control plane is mostly long-lived caches, so a tighter
// goal costs little CPU and saves about a quarter of the heap.
const DefaultGCPercent = 50

// StartupGCPercent lets the heap grow during start-up, which allocates
// hundreds of MB of short-lived objects: collecting them less often shortens
// start-up, and Trim returns the memory once start-up is over.
const StartupGCPercent = 400

// Starting applies StartupGCPercent unless GOGC is set.
func Starting() {
	if os.Getenv("GOGC") == "" {
		debug.SetGCPercent(StartupGCPercent)
	}
}

// Started applies DefaultGCPercent unless GOGC is set, and returns the
// start-up garbage. The binary's pages stay until Trim: the first minute
// (node registration, first syncs) still runs code start-up shares.
func Started() {
	if os.Getenv("GOGC") == "" {
		debug.SetGCPercent(DefaultGCPercent)
	}
	debug.FreeOSMemory()
}

// Trim collects garbage and returns freed pages to the kernel, heap and
// binary alike.
func Trim() {
	debug.FreeOSMemory()
	n, err := PageOutBinary(0)
	if err != nil {
		klog.V(2).Infof("memory trim: page out the binary: %v", err)
	}
	klog.V(2).Infof("memory trim: start-up garbage returned to the kernel; %d MiB of binary mappings paged out", n>>20)
}
