//go:build linux

package sys

import (
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// membarrier(2) commands (linux/membarrier.h).
const (
	membarrierPrivateExpedited         = 1 << 3
	membarrierRegisterPrivateExpedited = 1 << 4
)

var barrierOK = sync.OnceValue(func() bool {
	_, _, e := unix.Syscall(unix.SYS_MEMBARRIER, membarrierRegisterPrivateExpedited, 0, 0)
	return e == 0
})

// Barrier makes every thread of the process execute a full memory
// barrier before it returns (membarrier(2), private expedited): the slow
// side of an asymmetric fence, whose fast side is a plain store followed
// by a load, on the path of every call. After Barrier, a store that some
// thread made before its load of a word the caller had stored (and
// fenced) before Barrier is visible to the caller, or that thread's load
// saw the caller's word. Where membarrier is missing (kernels before
// 4.14, some sandboxes) it sleeps a millisecond instead: stores leave a
// core's store buffer within microseconds (as the record channel's
// publish also assumes).
func Barrier() {
	if barrierOK() {
		if _, _, e := unix.Syscall(unix.SYS_MEMBARRIER, membarrierPrivateExpedited, 0, 0); e == 0 {
			return
		}
	}
	time.Sleep(time.Millisecond)
}
