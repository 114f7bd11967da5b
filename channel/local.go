package channel

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"github.com/heapipc/ipc/backend"
	"github.com/heapipc/ipc/internal/mem"
	"github.com/heapipc/ipc/internal/sys"
)

// A record channel end whose peer end is held by this same process parks
// in the Go scheduler instead of the futex (waitLocal): the waker, a
// goroutine of this process, hands the waiter to its own P with a channel
// send, and the round trip needs no thread to sleep and wake. Parked on
// the futex, each wake-up was a sleeping thread woken by the kernel
// (BenchmarkRecordPingPong/parked, Intel Xeon VM: 3.0-4.9 µs a round
// trip, 0.45-0.67× os.Pipe, whose goroutines Go's poller hands over the
// same way); parked here, 0.70-0.72 µs (2.75-2.83×).
//
// A waiter parks here only while its peer end's owner word names this
// process, checked after its waiting word says waitLocal: the peer end
// can pass to another process only once this process's end lets it go,
// and that Close wakes the waiter (notifyRing, wakeParked), which decides
// again. A waker of another process that finds waitLocal finds no waiter
// of its own process to wake and cannot reach this one; it can only come
// after that Close, and the waiter, woken by the Close, parks on the
// futex next time.
//
// Waiters are found by a key that is the same in every mapping of the
// buffer in this process (a channel's two ends may be attached through
// two Open calls): the creator's identity and creation time from the
// region's header, and the waiting word's offset.

// localKey names a waiting word among every mapped buffer of the process.
type localKey struct {
	creator sys.Identity
	created int64
	off     mem.Off
}

// localWaiter is an end's parking place in this process: a token channel
// that a waker fills, and the timer of the waiter's check interval.
type localWaiter struct {
	key   localKey
	ch    chan struct{}
	timer *time.Timer // the check timer (park); set by the end's goroutine
	armed atomic.Bool // the check timer runs
}

// localWaiters maps localKey to the *localWaiter of the end that owns the
// word, from its attach to its Close.
var localWaiters sync.Map

// wordKey is the key of a waiting word of r's control block.
func (r *Ring) wordKey(w *atomic.Uint32) localKey {
	off := r.cbOff + mem.Off(uintptr(unsafe.Pointer(w))-uintptr(unsafe.Pointer(r.cb)))
	return localKey{creator: r.region.Creator(), created: r.region.CreatedAt().UnixNano(), off: off}
}

// newLocalWaiter registers the parking place of the end that owns w.
func (r *Ring) newLocalWaiter(w *atomic.Uint32) *localWaiter {
	lw := &localWaiter{key: r.wordKey(w), ch: make(chan struct{}, 1)}
	localWaiters.Store(lw.key, lw)
	return lw
}

// release unregisters the parking place and stops its timer (the end
// closed).
func (lw *localWaiter) release() {
	localWaiters.CompareAndDelete(lw.key, lw)
	if lw.timer != nil {
		lw.timer.Stop()
	}
}

// signal leaves a token for the waiter: it does not park, or wakes.
func (lw *localWaiter) signal() {
	select {
	case lw.ch <- struct{}{}:
	default:
	}
}

// wakeLocal wakes the waiter of this process registered for key, if any.
func wakeLocal(key localKey) {
	if v, ok := localWaiters.Load(key); ok {
		v.(*localWaiter).signal()
	}
}

// park waits for a token, ctx, or the check timer, whichever comes
// first. A timeout is not an error (the caller checks its peer after each
// park); ctx's error is returned as backend.Park returns it.
//
// The check timer (a func timer that leaves a token) is armed for timeout
// when a park finds it idle, and is left running when the park ends
// otherwise: it fires at most one timeout after it was armed, during a
// park (which then checks) or between two (the next park returns at
// once, checks, and arms it again), so that no wait goes unchecked for
// longer than timeout. A timer armed and stopped at every park, with its
// channel in the select, cost ~0.2 µs each time, a third of a round trip
// between two goroutines (BenchmarkRecordPingPong/parked: 1.06-1.10 µs
// against 0.68-0.71 with no timer; armed only when idle but still a
// channel in the select, 0.89-0.93).
func (lw *localWaiter) park(ctx context.Context, timeout time.Duration) error {
	if !lw.armed.Load() {
		lw.armed.Store(true)
		if lw.timer == nil {
			lw.timer = time.AfterFunc(timeout, lw.fire)
		} else {
			lw.timer.Reset(timeout)
		}
	}
	select {
	case <-lw.ch:
	case <-ctx.Done():
		return fmt.Errorf("wait: %w", ctx.Err())
	}
	return nil
}

// fire is the check timer's: the waiter wakes (or its next park returns
// at once) and checks.
func (lw *localWaiter) fire() {
	lw.armed.Store(false)
	lw.signal()
}

// parkWord parks a waiter whose waiting word w is already armed (waitSelf
// or waitLocal): on the futex or in the scheduler.
func parkWord(ctx context.Context, w *atomic.Uint32, lw *localWaiter, word uint32, timeout time.Duration) error {
	if word == waitLocal {
		return lw.park(ctx, timeout)
	}
	return backend.Park(ctx, w, waitSelf, timeout)
}
