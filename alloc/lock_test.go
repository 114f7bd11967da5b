package alloc

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/heapipc/ipc/backend"
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
