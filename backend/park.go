package backend

import (
	"context"
	"fmt"
	"math"
	"sync/atomic"
	"time"

	"github.com/heapipc/ipc/internal/sys"
)

// Park blocks the caller while *w == val: until a Wake on w, until ctx is
// done (the wrapped ctx.Err() is returned), or until timeout runs out
// (negative: no timeout; ErrTimeout is returned). A nil return means only
// "maybe changed": callers re-check their condition and park again. w may
// be in shared memory: wakes cross processes (the futex is not private).
//
// This is the parking primitive of heapipc's blocking calls: the waiter
// announces itself in a word of its own protocol, re-checks, then parks;
// the waker pays the Wake syscall only when a waiter has announced itself.
func Park(ctx context.Context, w *atomic.Uint32, val uint32, timeout time.Duration) error {
	if err := ctx.Err(); err != nil {
		return ctxError(err)
	}
	if ctx.Done() == nil {
		return futexWait(w, val, timeout)
	}
	// A cancellation must reach a waiter already asleep in the kernel:
	// the AfterFunc wakes the word until the waiter has left (a single
	// wake could land before the waiter enters the futex and be lost).
	var left atomic.Bool
	stop := context.AfterFunc(ctx, func() {
		for !left.Load() {
			sys.FutexWake(w, math.MaxInt32)
			time.Sleep(50 * time.Microsecond)
		}
	})
	err := futexWait(w, val, timeout)
	left.Store(true)
	stop()
	if cerr := ctx.Err(); cerr != nil {
		return ctxError(cerr)
	}
	return err
}

// Wake wakes up to n waiters parked on w (n <= 0: all).
func Wake(w *atomic.Uint32, n int) {
	if n <= 0 {
		n = math.MaxInt32
	}
	sys.FutexWake(w, n)
}

func futexWait(w *atomic.Uint32, val uint32, timeout time.Duration) error {
	err := sys.FutexWait(w, val, timeout)
	if err == sys.ErrTimedOut {
		return ErrTimeout
	}
	return err
}

func ctxError(err error) error { return fmt.Errorf("wait: %w", err) }
