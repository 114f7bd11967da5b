package alloc

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/heapipc/ipc/backend"
	"github.com/heapipc/ipc/internal/mem"
	"github.com/heapipc/ipc/internal/sys"
	"github.com/heapipc/ipc/internal/testutil"
)

func selfIdentity() sys.Identity { return sys.Self() }

// TestLockTakeover leaves the lock owned by a dead process: the next
// acquirer takes it over within a few check intervals and repairs.
func TestLockTakeover(t *testing.T) {
	for _, c := range inProcess() {
		t.Run(c.String(), func(t *testing.T) {
			h := newHeap(t, c, 1<<20)
			s0 := mustStats(t, h)
			h.rt.Lock.owner.Store(uint64(testutil.DeadIdentity(t)))
			ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
			defer cancel()
			off, err := h.AllocFor(ctx, 4096, KindPlain, 0)
			if err != nil {
				t.Fatalf("alloc with a dead holder: %v", err)
			}
			s := mustStats(t, h)
			if s.Takeovers != 1 || s.Repairs != s0.Repairs+1 {
				t.Fatalf("takeovers %d repairs %d", s.Takeovers, s.Repairs)
			}
			h.Free(off)
			mustCheck(t, h, "after takeover")
		})
	}
}

// TestLockNotRobbed: a holder that is alive keeps the lock however long
// it holds it.
func TestLockNotRobbed(t *testing.T) {
	h := newHeap(t, combo{backend.Heap, backend.Heap}, 1<<20)
	release, err := h.HoldLock(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 150*time.Millisecond)
		defer cancel()
		_, err := h.AllocFor(ctx, 4096, KindPlain, 0)
		done <- err
	}()
	if err := <-done; !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("alloc while a live holder holds the lock: %v, want a deadline error", err)
	}
	release()
	release() // idempotent
	if h.lock.Takeovers() != 0 {
		t.Fatalf("a live holder was robbed")
	}
	off, err := h.Alloc(1)
	if err != nil {
		t.Fatal(err)
	}
	h.Free(off)
}

// TestLockMutualExclusion hammers a Lock from many goroutines around a
// plain counter: the race detector and the count check exclusion, and the
// waiters sleep and wake through the semaphore.
func TestLockMutualExclusion(t *testing.T) {
	for _, c := range inProcess() {
		t.Run(c.String(), func(t *testing.T) {
			h := newHeap(t, c, 1<<20)
			var w LockWord
			l := NewLock(&w, h.sem, time.Millisecond)
			var counter int
			var wg sync.WaitGroup
			const g, n = 8, 300
			for range g {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for i := range n {
						if _, err := l.Lock(context.Background()); err != nil {
							t.Error(err)
							return
						}
						counter++
						if i%50 == 0 {
							time.Sleep(50 * time.Microsecond) // make others sleep
						}
						l.Unlock()
					}
				}()
			}
			wg.Wait()
			if counter != g*n {
				t.Fatalf("counter %d, want %d", counter, g*n)
			}
			if l.Holder() != 0 || w.waiters.Load() != 0 {
				t.Fatalf("holder %v waiters %d after all released", l.Holder(), w.waiters.Load())
			}
		})
	}
}

func TestTryLock(t *testing.T) {
	h := newHeap(t, combo{backend.Heap, backend.Heap}, 1<<20)
	var w LockWord
	l := NewLock(&w, h.sem, 0)
	if took, ok := l.TryLock(); !ok || took {
		t.Fatalf("trylock of a free lock: %v %v", took, ok)
	}
	if _, ok := l.TryLock(); ok {
		t.Fatalf("trylock of a held lock succeeded")
	}
	l.Unlock()
	w.owner.Store(uint64(testutil.DeadIdentity(t)))
	if took, ok := l.TryLock(); !ok || !took {
		t.Fatalf("trylock of a dead holder's lock: %v %v", took, ok)
	}
	l.Unlock()
}

// TestUnlockOverwritten: the owner word is overwritten while the lock is
// held; Unlock leaves the foreign value (no panic), and the next acquirer
// takes the lock over from the identity, which is dead.
func TestUnlockOverwritten(t *testing.T) {
	h := newHeap(t, combo{backend.Heap, backend.Heap}, 1<<20)
	var w LockWord
	l := NewLock(&w, h.sem, time.Millisecond)
	if _, err := l.Lock(t.Context()); err != nil {
		t.Fatal(err)
	}
	dead := testutil.DeadIdentity(t)
	w.owner.Store(uint64(dead))
	l.Unlock()
	if l.Holder() != dead {
		t.Fatalf("unlock cleared a word it did not own")
	}
	took, err := l.Lock(t.Context())
	if err != nil || !took {
		t.Fatalf("lock after the word was overwritten: took %v, %v", took, err)
	}
	l.Unlock()
}

// TestTakeoverThroughHeapLockRepairs: a layer that takes the heap's lock
// (Heap.Lock) from a holder killed in the middle of a heap update has the
// heap repaired at its next operation (the repair was marked due only
// when the heap itself took over, and the index stayed broken).
func TestTakeoverThroughHeapLockRepairs(t *testing.T) {
	h := newHeap(t, combo{backend.Heap, backend.Heap}, 1<<20)
	var offs []mem.Off
	for range 3 {
		off, err := h.Alloc(4096)
		if err != nil {
			t.Fatal(err)
		}
		offs = append(offs, off)
	}
	if _, err := h.Alloc(int(mustStats(t, h).FreeBytes)); err != nil { // the rest
		t.Fatal(err)
	}
	// A holder dies inside Free(offs[1]): page map committed, index not.
	dead := testutil.DeadIdentity(t)
	if err := h.acquire(t.Context()); err != nil {
		t.Fatal(err)
	}
	p, _ := h.pageOf(offs[1])
	var lg logBuf
	lg.add(p, 1, 0)
	lg.add(p, 0, headTag(tagFree, 1, 0))
	h.commit(&lg)
	h.rt.Lock.owner.Store(uint64(dead))
	took, err := h.Lock().Lock(t.Context()) // a layer above, for its own metadata
	if err != nil || !took {
		t.Fatalf("layer lock: took %v, %v", took, err)
	}
	h.Lock().Unlock()
	if _, err := h.Alloc(4096); err != nil {
		t.Fatalf("Alloc of the freed page after the takeover: %v", err)
	}
	if err := h.Check(); err != nil {
		t.Fatalf("heap left unrepaired after a takeover through Heap.Lock: %v", err)
	}
}

// TestLockStaleWaiter: a waiter killed while asleep leaves the waiter
// count up for good. Unlocks then keep at most one post in the semaphore
// (they used to post every time, up to the semaphore's cap), and a waiter
// woken by stale posts looks at the holder every wakesPerCheck wake-ups,
// so it takes the lock from a dead holder without first draining them
// (it looked only when a sleep timed out).
func TestLockStaleWaiter(t *testing.T) {
	for _, c := range inProcess() {
		t.Run(c.String(), func(t *testing.T) {
			h := newHeap(t, c, 1<<20)
			h.rt.Lock.waiters.Store(1) // killed while asleep
			for range 1000 {
				if _, err := h.lock.Lock(t.Context()); err != nil {
					t.Fatal(err)
				}
				h.lock.Unlock()
			}
			if v, err := h.sem.Value(); err != nil || v > 1 {
				t.Fatalf("semaphore value %d (%v) after unlocks with a stale waiter", v, err)
			}
			const stale = 5000
			for range stale { // as an older process's unlocks left them
				if err := h.sem.Post(); err != nil {
					t.Fatal(err)
				}
			}
			h.rt.Lock.owner.Store(uint64(testutil.DeadIdentity(t)))
			took, err := h.lock.Lock(t.Context())
			if err != nil || !took {
				t.Fatalf("took %v, %v", took, err)
			}
			h.lock.Unlock()
			left := 0
			for h.sem.TryWait() == nil {
				left++
			}
			h.rt.Lock.waiters.Store(0)
			if left < stale/2 {
				t.Fatalf("the waiter went through %d stale posts before it looked at the holder", stale+1-left)
			}
			if err := h.Check(); err != nil {
				t.Fatal(err)
			}
		})
	}
}
