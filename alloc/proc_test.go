package alloc

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/heapipc/ipc/internal/mem"
	"github.com/heapipc/ipc/internal/sys"
	"github.com/heapipc/ipc/internal/testutil"
)

// boardSlots is the size of the exchange board: a plain extent of atomic
// words through which the processes of a storm hand each other extents.
const boardSlots = 256

func board(tb testing.TB, h *Heap, off mem.Off) []atomic.Uint64 {
	tb.Helper()
	b, err := h.View(off, boardSlots*8)
	if err != nil {
		tb.Fatal(err)
	}
	s, err := mem.Slice[atomic.Uint64](b, 0, boardSlots)
	if err != nil {
		tb.Fatal(err)
	}
	return s
}

func stamp(b []byte, off mem.Off) {
	binary.LittleEndian.PutUint64(b, uint64(off))
	binary.LittleEndian.PutUint64(b[len(b)-8:], ^uint64(off))
}

func stamped(b []byte, off mem.Off) bool {
	return binary.LittleEndian.Uint64(b) == uint64(off) && binary.LittleEndian.Uint64(b[len(b)-8:]) == ^uint64(off)
}

// TestStorm: four processes allocate extents, stamp them, put them on a
// shared board, and take and free each other's, for a bounded time.
// Afterwards every byte is free again and Check passes.
func TestStorm(t *testing.T) {
	for _, c := range crossProcess() {
		t.Run(c.String(), func(t *testing.T) {
			h := newHeap(t, c, 8<<20)
			s0 := mustStats(t, h)
			boardOff, err := h.Alloc(boardSlots * 8)
			if err != nil {
				t.Fatal(err)
			}
			bb, _ := h.Bytes(boardOff)
			clear(bb)
			sd := seed(t)
			var kids []*testutil.Child
			for i := range 4 {
				kids = append(kids, testutil.StartChild(t, "TestChildStorm", childEnv(h, c,
					"BOARD="+strconv.FormatUint(uint64(boardOff), 10), fmt.Sprintf("SEED=%d", sd+uint64(i)), "DURATION=1s")...))
			}
			for i, k := range kids {
				var allocs, taken int
				if _, err := fmt.Sscanf(k.Line(t, 60*time.Second), "ops %d %d", &allocs, &taken); err != nil {
					t.Fatalf("child %d: %v", i, err)
				}
				k.MustSucceed(t, 60*time.Second)
				if allocs == 0 || taken == 0 {
					t.Fatalf("child %d made %d allocations and freed %d extents of the board", i, allocs, taken)
				}
			}
			bd := board(t, h, boardOff)
			left := 0
			for i := range bd {
				off := mem.Off(bd[i].Swap(0))
				if off == 0 {
					continue
				}
				e, err := h.Extent(off)
				if err != nil {
					t.Fatalf("board slot %d: %v", i, err)
				}
				b, _ := h.Bytes(off)
				if !stamped(b, off) || e.Kind != KindPlain {
					t.Fatalf("board slot %d: extent %#x overwritten", i, off)
				}
				if err := h.Free(off); err != nil {
					t.Fatal(err)
				}
				left++
			}
			t.Logf("%d extents were left on the board", left)
			mustCheck(t, h, "after the storm")
			if err := h.Free(boardOff); err != nil {
				t.Fatal(err)
			}
			if s := mustStats(t, h); s.FreeBytes != s0.FreeBytes || s.FreeExtents != 1 || s.AllocExtents != 0 {
				t.Fatalf("after the storm: %s, want %d free", describe(s), s0.FreeBytes)
			}
			mustCheck(t, h, "end")
		})
	}
}

func TestChildStorm(t *testing.T) {
	testutil.ChildOnly(t)
	h := childHeap(t)
	boardOff, _ := strconv.ParseUint(testutil.Env(t, "BOARD"), 10, 64)
	sd, _ := strconv.ParseUint(testutil.Env(t, "SEED"), 10, 64)
	d, _ := time.ParseDuration(testutil.Env(t, "DURATION"))
	bd := board(t, h, mem.Off(boardOff))
	r := newRand(sd)
	var allocs, frees, taken int
	for deadline := time.Now().Add(d); time.Now().Before(deadline); {
		slot := r.IntN(boardSlots)
		if r.IntN(2) == 0 {
			n := 16 + r.IntN(8*4096)
			off, err := h.Alloc(n)
			if errors.Is(err, ErrNoSpace) {
				continue
			}
			if err != nil {
				t.Fatal(err)
			}
			allocs++
			b, _ := h.Bytes(off)
			stamp(b, off)
			if !bd[slot].CompareAndSwap(0, uint64(off)) {
				if err := h.Free(off); err != nil {
					t.Fatal(err)
				}
				frees++
			}
			continue
		}
		off := mem.Off(bd[slot].Swap(0))
		if off == 0 {
			continue
		}
		b, err := h.Bytes(off)
		if err != nil {
			t.Fatalf("extent %#x from the board: %v", off, err)
		}
		if !stamped(b, off) {
			t.Fatalf("extent %#x overwritten: overlapping extents", off)
		}
		if err := h.Free(off); err != nil {
			t.Fatal(err)
		}
		frees++
		taken++
	}
	t.Logf("pid %d: %d allocations, %d frees", os.Getpid(), allocs, frees)
	testutil.Say("ops %d %d", allocs, taken)
}

// TestCrashHoldingLock kills a child that holds the heap lock (and owns
// extents). The survivor is not robbed while the child lives, takes the
// lock over within a bounded time once it is dead, repairs, and gets all
// memory back through Recover.
func TestCrashHoldingLock(t *testing.T) {
	for _, c := range crossProcess() {
		t.Run(c.String(), func(t *testing.T) {
			h := newHeap(t, c, 1<<20)
			s0 := mustStats(t, h)
			kid := testutil.StartChild(t, "TestChildHoldLock", childEnv(h, c)...)
			if l := kid.Line(t, 30*time.Second); l != "locked" {
				t.Fatalf("child said %q", l)
			}
			if h.lock.Holder().PID() != kid.Pid() {
				t.Fatalf("holder %v, child pid %d", h.lock.Holder(), kid.Pid())
			}
			ctx, cancel := context.WithTimeout(t.Context(), 100*time.Millisecond)
			_, err := h.AllocFor(ctx, 1, KindPlain, 0)
			cancel()
			if !errors.Is(err, context.DeadlineExceeded) {
				t.Fatalf("alloc while a live child holds the lock: %v", err)
			}
			kid.Kill()
			ctx, cancel = context.WithTimeout(t.Context(), 10*time.Second)
			defer cancel()
			off, err := h.AllocFor(ctx, 4096, KindPlain, 0)
			if err != nil {
				t.Fatalf("alloc after the holder died: %v", err)
			}
			h.Free(off)
			s := mustStats(t, h)
			if s.Takeovers != 1 || s.AllocExtents != 3 {
				t.Fatalf("takeovers %d, %s", s.Takeovers, describe(s))
			}
			mustCheck(t, h, "after takeover")
			rc, err := h.Recover()
			if err != nil || rc.Extents != 3 {
				t.Fatalf("recover: %+v %v", rc, err)
			}
			if s := mustStats(t, h); s.FreeBytes != s0.FreeBytes || s.FreeExtents != 1 {
				t.Fatalf("after recover: %s", describe(s))
			}
			mustCheck(t, h, "end")
		})
	}
}

func TestChildHoldLock(t *testing.T) {
	testutil.ChildOnly(t)
	h := childHeap(t)
	for i := range 3 {
		if _, err := h.AllocFor(t.Context(), 4096*(i+1), KindPlain, sys.Self()); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := h.HoldLock(t.Context()); err != nil {
		t.Fatal(err)
	}
	testutil.Say("locked")
	time.Sleep(time.Minute)
}

// TestCrashMidUpdate kills a child half-way through writing the page map
// (a test hook blocks it there, holding the lock, with the redo log
// committed). The survivor takes over, finishes the update from the log,
// rebuilds the index, and Check passes.
func TestCrashMidUpdate(t *testing.T) {
	for _, c := range crossProcess() {
		for _, mode := range []string{"alloc", "free"} {
			t.Run(c.String()+"/"+mode, func(t *testing.T) {
				h := newHeap(t, c, 1<<20)
				s0 := mustStats(t, h)
				// Something on both sides, so the child's update coalesces.
				a, _ := h.Alloc(4096)
				kid := testutil.StartChild(t, "TestChildMidUpdate", childEnv(h, c, "MODE="+mode)...)
				if l := kid.Line(t, 30*time.Second); l != "mid" {
					t.Fatalf("child said %q", l)
				}
				if h.rt.LogState.Load() != 1 {
					t.Fatalf("child is not in the middle of an update")
				}
				kid.Kill()
				if err := h.Check(); err != nil {
					t.Fatalf("check after the child died mid-update: %v", err)
				}
				s := mustStats(t, h)
				want := uint64(2) // a and the child's extent
				if mode == "free" {
					want = 1 + 1 // a, and b of the child (its free of c completed)
				}
				if s.Takeovers != 1 || s.Repairs != 1 || s.AllocExtents != want {
					t.Fatalf("takeovers %d repairs %d, %s", s.Takeovers, s.Repairs, describe(s))
				}
				if rc, err := h.Recover(); err != nil || rc.Extents != int(want-1) {
					t.Fatalf("recover: %+v %v", rc, err)
				}
				h.Free(a)
				if s := mustStats(t, h); s.FreeBytes != s0.FreeBytes || s.FreeExtents != 1 {
					t.Fatalf("end: %s", describe(s))
				}
				mustCheck(t, h, "end")
			})
		}
	}
}

func TestChildMidUpdate(t *testing.T) {
	testutil.ChildOnly(t)
	h := childHeap(t)
	hook := func() {
		testutil.Say("mid")
		time.Sleep(time.Minute)
	}
	switch os.Getenv("MODE") {
	case "alloc":
		testHookMidLog = hook
		h.AllocFor(t.Context(), 3*4096, KindPlain, sys.Self())
	case "free":
		if _, err := h.AllocFor(t.Context(), 4096, KindPlain, sys.Self()); err != nil { // b
			t.Fatal(err)
		}
		c, err := h.AllocFor(t.Context(), 2*4096, KindPlain, sys.Self())
		if err != nil {
			t.Fatal(err)
		}
		testHookMidLog = hook
		h.Free(c)
	}
	t.Fatalf("the hook did not run")
}
