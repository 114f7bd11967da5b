//go:build amd64 && gc && !race

package ipc

import (
	"sync/atomic"
	"unsafe"
)

// setCalls stores n in a handle's call count (Handle.in), which only the
// handle's goroutine writes: a plain store, no locked instruction on the
// path of every call (as the record channel's publish). Buffer.Close reads
// the count after a process-wide barrier (sys.Barrier), which makes the
// store visible; the gc compiler keeps the store before the load of
// isClosed that follows it in Handle.in. Under the race detector the
// store is atomic (calls_other.go).
func setCalls(w *atomic.Int32, n int32) { *(*int32)(unsafe.Pointer(w)) = n }

// atomic.Int32 must be the one word setCalls stores.
var _ [4 - unsafe.Sizeof(atomic.Int32{})]struct{}
var _ [unsafe.Sizeof(atomic.Int32{}) - 4]struct{}
