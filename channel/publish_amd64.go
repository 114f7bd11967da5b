//go:build amd64 && !race

package channel

import (
	"sync/atomic"
	"unsafe"
)

// publish stores v in an index word that the peer polls (a ring's Tail or
// Head) with a plain store. On x86 every store is a release store (total
// store order: the peer that sees v sees every store made before it, the
// slots and the records), so the index needs no lock-prefixed exchange,
// which Go's atomic Store is and which costs the publishing core a wait
// for its store buffer to drain on every record (BenchmarkRecordInProcess:
// about a quarter of the single-record path on an Intel host).
//
// What the plain store gives up is the fence before the publisher's next
// load: it may read the peer's waiting word before v is visible to the
// peer. A waiter that announced itself and checked the index in that
// window parks although the index moved and nobody wakes it; its first
// park is therefore short (publishGrace), after which it sees v. See
// RecordConsumer.WaitData.
//
// The race detector cannot see that the plain store is ordered (it is
// not, in Go's memory model); race builds use the atomic store.
func publish(w *atomic.Uint64, v uint64) {
	// atomic.Uint64 is its one uint64 word (the other fields are zero
	// sized): a plain store of the whole word, never torn, to an
	// 8-byte aligned address.
	*(*uint64)(unsafe.Pointer(w)) = v
}
