//go:build !amd64 || !gc || race

package ipc

import "sync/atomic"

// setCalls stores n in a handle's call count: an atomic store where plain
// stores are not ordered as on x86, and under the race detector. See
// calls_amd64.go.
func setCalls(w *atomic.Int32, n int32) { w.Store(n) }
