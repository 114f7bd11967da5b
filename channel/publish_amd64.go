//go:build amd64 && gc && !race

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
// for its store buffer to drain on every record.
//
// What the plain store gives up is the fence before the publisher's next
// load, of the peer's waiting word: it may read that word before v
// reaches the peer (Dekker's problem). So a waiter announces itself
// (waitSoon) a lead (announceLead, 5 µs) before its last look at the
// index, and a publisher that sees any announcement stores the index
// again with a fence before it looks for a parked waiter (wakeConsumer,
// wakeProducer): the classic fenced handshake. A publisher that read no
// announcement published before the waiter announced itself, and the
// waiter's last look comes a lead later, by when the store has left the
// publisher's store buffer (a store leaves it within a few hundred
// nanoseconds, and on any interrupt, exit to the hypervisor or context
// switch). Were one ever slower, the waiter would find the record at its
// check interval, not hang. An end that spins less than the lead is
// announced from its attach on (idleValue), and its first waits last a
// lead after the attach at least: its peer fences every publication.
// Only the end itself puts its word back to 0 (a waker, or the peer's
// Close, leaves it announced).
//
// The gc compiler keeps memory operations in program order (stores are
// never moved past each other or past the atomic load that follows);
// the build tag limits the plain store to it.
//
// The race detector cannot see that the plain store is ordered (it is
// not, in Go's memory model); race builds use the atomic store.
func publish(w *atomic.Uint64, v uint64) {
	// atomic.Uint64 is its one uint64 word (the other fields are zero
	// sized): a plain store of the whole word, never torn, to an
	// 8-byte aligned address.
	*(*uint64)(unsafe.Pointer(w)) = v
}

// atomic.Uint64 must be the one word publish stores.
var _ [8 - unsafe.Sizeof(atomic.Uint64{})]struct{}
var _ [unsafe.Sizeof(atomic.Uint64{}) - 8]struct{}
