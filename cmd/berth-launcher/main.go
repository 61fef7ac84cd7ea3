// Command berth-launcher is the start of every release binary (make
// release): a small static program followed, in the same file, by the real
// berth or berth-agent and its helper binaries as one zstd payload. It
// unpacks them once per version into <data-dir>/data/<sha256>/ and execs
// berth there with the same arguments. See pkg/launcher.
package main

import "github.com/berth-io/berth/pkg/launcher"

func main() { launcher.Main() }
