package alloc

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"structs"
	"sync/atomic"
	"time"

	"github.com/heapipc/ipc/backend"
	"github.com/heapipc/ipc/internal/mem"
	"github.com/heapipc/ipc/internal/sys"
)

// LockWord is the shared part of a robust lock: one 128-byte line in
// shared memory, zero when unlocked and nobody waits. Embed it in a
// shared struct (at a 128-byte aligned offset) and drive it with a Lock.
//
//	0   owner      sys.Identity of the holder, 0 when free. Acquirers CAS
//	               it from 0 (or from a dead holder) to themselves; the
//	               holder stores 0 to release.
//	8   waiters    number of acquirers that announced they may sleep on
//	               the semaphore; each adds 1 before and 1's complement
//	               after. The releaser posts only when it is nonzero.
//	12  takeovers  count of takeovers from dead holders (statistics).
type LockWord struct {
	_         structs.HostLayout
	owner     atomic.Uint64
	waiters   atomic.Uint32
	takeovers atomic.Uint32
	_         [mem.CacheLine - 16]byte
}

// DefaultCheckInterval is how long a waiter sleeps on the semaphore before
// it checks whether the holder is still alive.
const DefaultCheckInterval = 50 * time.Millisecond

// lockSpins is how many times an acquirer retries (yielding the processor
// in between) before it announces itself and sleeps. Critical sections of
// the heap last well under a microsecond.
const lockSpins = 16

// Lock is a robust cross-process mutex: a LockWord in shared memory plus a
// semaphore to sleep on.
//
// The owner word is the lock: acquiring is one CAS of the owner word from
// 0 to the caller's identity (pid and start time), so there is no moment
// at which a process holds the lock without its identity being recorded
// (the window of a semaphore-as-lock design, where a process that dies
// between decrementing the semaphore and writing its identity leaves a
// lost unit and no owner, cannot occur). The semaphore (initial value 0)
// is only a place to sleep: a waiter adds itself to the waiter count,
// re-tries the CAS, then waits on the semaphore for at most the check
// interval; the releaser clears the owner word and posts once if anyone
// announced itself. A waiter whose wait times out reads the owner: if it
// is a process that is provably dead (sys.Alive false: gone, a zombie,
// or its pid reused by a process with another start time) it CASes the
// owner from the dead identity to itself and returns tookOver = true, and
// the caller repairs what the lock protects before going on. A holder
// that is alive, however slow, is never robbed.
//
// The identity is per process: goroutines of one process exclude each
// other through the same CAS, but the lock does not know which goroutine
// holds it. Unlock must be called by the goroutine that locked.
//
// Wake-ups are hints: every sleep is bounded by the check interval and
// followed by a re-check, so a lost or extra post (a waiter that died
// after announcing itself leaves the count high, and every release then
// posts once more than needed) costs latency or a spurious loop, never
// correctness. For the same reason the semaphore is not opened with
// SEM_UNDO: the process that posts is rarely the one that waits, and the
// kernel's per-process undo value would drift until semop fails with
// ERANGE.
type Lock struct {
	w     *LockWord
	sem   backend.Semaphore
	self  sys.Identity
	every time.Duration
	alive func(sys.Identity) bool
	// onTakeover, if set, runs when this Lock takes the lock from a dead
	// holder, whichever call took it (the heap marks its repair due
	// there, so that a takeover through Heap.Lock is not lost on it).
	onTakeover func()
}

// wakesPerCheck is how many wake-ups without the lock a waiter takes
// before it looks at the holder anyway: a waiter killed while asleep
// leaves the waiter count up for good, so every Unlock posts, and a
// semaphore full of such posts would otherwise keep a waiter from ever
// timing out and finding a dead holder.
const wakesPerCheck = 64

// NewLock returns a Lock on w that sleeps on sem (a semaphore created with
// value 0 and used for nothing else). checkEvery is the check interval
// (0: DefaultCheckInterval).
func NewLock(w *LockWord, sem backend.Semaphore, checkEvery time.Duration) *Lock {
	if checkEvery <= 0 {
		checkEvery = DefaultCheckInterval
	}
	return &Lock{w: w, sem: sem, self: sys.Self(), every: checkEvery, alive: sys.Alive}
}

// Lock acquires the lock, waiting while a live process holds it, until ctx
// is done. tookOver is true when the previous holder died holding it: what
// the lock protects may be half-updated and must be repaired now.
func (l *Lock) Lock(ctx context.Context) (tookOver bool, err error) {
	if l.w.owner.CompareAndSwap(0, uint64(l.self)) {
		return false, nil
	}
	for range lockSpins {
		runtime.Gosched()
		if l.w.owner.CompareAndSwap(0, uint64(l.self)) {
			return false, nil
		}
	}
	return l.lockSlow(ctx)
}

func (l *Lock) lockSlow(ctx context.Context) (bool, error) {
	l.w.waiters.Add(1)
	defer l.w.waiters.Add(^uint32(0))
	for wakes := 1; ; wakes++ {
		if l.w.owner.CompareAndSwap(0, uint64(l.self)) {
			return false, nil
		}
		err := l.sleep(ctx)
		switch {
		case err == nil:
			if wakes%wakesPerCheck == 0 {
				if took, ok := l.takeOverDead(); ok {
					return took, nil
				}
			}
			continue
		case errors.Is(err, backend.ErrTimeout):
			if took, ok := l.takeOverDead(); ok {
				return took, nil
			}
		default:
			if cerr := ctx.Err(); cerr != nil {
				return false, fmt.Errorf("lock: %w", cerr)
			}
			if errors.Is(err, backend.ErrClosed) || errors.Is(err, backend.ErrDestroyed) {
				return false, fmt.Errorf("lock: %w", err)
			}
			// Anything else (an interrupted wait): sleep a little and
			// go on checking the owner, so the lock stays robust.
			time.Sleep(time.Millisecond)
			if took, ok := l.takeOverDead(); ok {
				return took, nil
			}
		}
	}
}

// sleep waits on the semaphore for at most the check interval (and at
// most until ctx is done).
func (l *Lock) sleep(ctx context.Context) error {
	if ctx.Done() == nil {
		return l.sem.WaitTimeout(l.every)
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	d := l.every
	if dl, ok := ctx.Deadline(); ok {
		if left := time.Until(dl); left < d {
			d = max(left, 0)
		}
	}
	c, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	err := l.sem.Wait(c)
	if err != nil && ctx.Err() == nil && errors.Is(err, context.DeadlineExceeded) {
		return fmt.Errorf("lock: %w", backend.ErrTimeout)
	}
	return err
}

// takeOverDead takes the lock from a dead holder, or takes it if it is
// free. ok is false while a live process holds it.
func (l *Lock) takeOverDead() (tookOver, ok bool) {
	o := l.w.owner.Load()
	if o == 0 {
		return false, l.w.owner.CompareAndSwap(0, uint64(l.self))
	}
	if l.alive(sys.Identity(o)) {
		return false, false
	}
	if l.w.owner.CompareAndSwap(o, uint64(l.self)) {
		l.w.takeovers.Add(1)
		if l.onTakeover != nil {
			l.onTakeover()
		}
		return true, true
	}
	return false, false
}

// TryLock acquires the lock if it is free or its holder is dead, without
// waiting.
func (l *Lock) TryLock() (tookOver, ok bool) {
	if l.w.owner.CompareAndSwap(0, uint64(l.self)) {
		return false, true
	}
	return l.takeOverDead()
}

// Unlock releases the lock. It must be called by the goroutine that
// acquired it. If the owner word no longer names this process (shared
// memory was overwritten, or a peer wrongly judged this process dead and
// took over), the word is left to its new value: clearing it could
// release someone else's hold; a garbage identity is taken over by the
// next waiter as a dead holder's.
func (l *Lock) Unlock() {
	l.w.owner.CompareAndSwap(uint64(l.self), 0)
	if l.w.waiters.Load() != 0 {
		// One unit is enough to wake a waiter, which takes the lock or
		// sleeps again until the next Unlock posts: posts do not pile
		// up when the count is stale (a waiter killed while asleep).
		// Errors (closed handle, overflow) only cost waiters a check
		// interval.
		if v, err := l.sem.Value(); err != nil || v == 0 {
			l.sem.Post()
		}
	}
}

// Holder is the identity recorded as the holder (0: free).
func (l *Lock) Holder() sys.Identity { return sys.Identity(l.w.owner.Load()) }

// Takeovers is how many times the lock was taken from a dead holder.
func (l *Lock) Takeovers() uint32 { return l.w.takeovers.Load() }
