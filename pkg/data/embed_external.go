//go:build external_helpers

package data

import "embed"

// assets is empty: a binary built with the external_helpers tag (the
// release build's inner binary) runs beside its helpers, unpacked by the
// release launcher, and carries no second copy of them.
var assets embed.FS
