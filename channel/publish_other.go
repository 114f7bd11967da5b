//go:build !amd64 || !gc || race

package channel

import "sync/atomic"

// publish stores v in an index word that the peer polls: an atomic store
// (a release store) where plain stores are not ordered as on x86, and
// under the race detector. See publish_amd64.go.
func publish(w *atomic.Uint64, v uint64) { w.Store(v) }
