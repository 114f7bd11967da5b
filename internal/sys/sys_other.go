//go:build !linux

package sys

import (
	"errors"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

func procStat(pid int) (uint64, byte, error) {
	if err := unix.Kill(pid, 0); err != nil && !errors.Is(err, unix.EPERM) {
		return 0, 0, err
	}
	return 0, 'R', nil
}

func alivePID(pid int) bool {
	e := unix.Kill(pid, 0)
	return e == nil || e == unix.EPERM
}

func alive(id Identity) bool {
	e := unix.Kill(id.PID(), 0)
	return e == nil || e == unix.EPERM
}

// FutexWait has no futex to use here: it polls the word with a short sleep,
// which keeps the semantics (return when the word may have changed, or on
// timeout) at the cost of latency.
func FutexWait(w *atomic.Uint32, val uint32, timeout time.Duration) error {
	const tick = 200 * time.Microsecond
	if w.Load() != val {
		return nil
	}
	if timeout >= 0 && timeout < tick {
		time.Sleep(timeout)
		if w.Load() != val {
			return nil
		}
		return ErrTimedOut
	}
	time.Sleep(tick)
	return nil
}

// FutexWake is a no-op where waiters poll.
func FutexWake(w *atomic.Uint32, n int) (int, error) { return 0, nil }

// Yield gives the processor to another runnable thread, if the OS lets us.
func Yield() { time.Sleep(0) }

// Barrier waits for stores of other threads to become visible (see the
// Linux version): here by sleeping a millisecond.
func Barrier() { time.Sleep(time.Millisecond) }

// PidNamespace is 0 (unknown) where there are no pid namespaces.
func PidNamespace() uint64 { return 0 }
