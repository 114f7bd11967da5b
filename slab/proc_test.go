package slab

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/heapipc/ipc/internal/mem"
	"github.com/heapipc/ipc/internal/sys"
	"github.com/heapipc/ipc/internal/testutil"
)

// TestStorm: four processes allocate records from their handles, put them
// on a shared board, and take and free each other's, for a bounded time.
// Afterwards (the children closed their handles, the parent freed what
// was left on the board) every slab is back in the heap and Check passes.
func TestStorm(t *testing.T) {
	for _, c := range crossProcess() {
		t.Run(c.String(), func(t *testing.T) {
			p := newPool(t, c, 32<<20, Options{SlabSize: 16 << 10})
			h0 := heapStats(t, p)
			boardOff, bd := newBoard(t, p)
			sd := seed(t)
			var kids []*testutil.Child
			for i := range 4 {
				kids = append(kids, testutil.StartChild(t, "TestChildStorm", childEnv(p, c,
					"BOARD="+strconv.FormatUint(uint64(boardOff), 10), fmt.Sprintf("SEED=%d", sd+uint64(i)), "DURATION=1s")...))
			}
			for i, k := range kids {
				var allocs, taken int
				if _, err := fmt.Sscanf(k.Line(t, 60*time.Second), "ops %d %d", &allocs, &taken); err != nil {
					t.Fatalf("child %d: %v", i, err)
				}
				k.MustSucceed(t, 60*time.Second)
				if allocs == 0 || taken == 0 {
					t.Fatalf("child %d allocated %d records and freed %d of the board's", i, allocs, taken)
				}
			}
			left := 0
			for i := range bd {
				off := mem.Off(bd[i].Swap(0))
				if off == 0 {
					continue
				}
				b, err := p.Bytes(off)
				if err != nil || !stampOK(b, off) {
					t.Fatalf("board slot %d: record %#x: %v (or overwritten)", i, off, err)
				}
				if err := p.Free(off); err != nil {
					t.Fatal(err)
				}
				left++
			}
			t.Logf("%d records were left on the board", left)
			mustCheck(t, p, "after the storm")
			if err := p.heap.Free(boardOff); err != nil {
				t.Fatal(err)
			}
			if h := heapStats(t, p); h.FreeBytes != h0.FreeBytes || h.AllocExtents != 0 {
				t.Fatalf("after the storm: %+v, want %d free", h, h0.FreeBytes)
			}
		})
	}
}

func TestChildStorm(t *testing.T) {
	testutil.ChildOnly(t)
	p := childPool(t)
	boardOff, _ := strconv.ParseUint(testutil.Env(t, "BOARD"), 10, 64)
	sd, _ := strconv.ParseUint(testutil.Env(t, "SEED"), 10, 64)
	d, _ := time.ParseDuration(testutil.Env(t, "DURATION"))
	bd := board(t, p, mem.Off(boardOff))
	r := newRand(sd)
	hd := p.NewHandle()
	var allocs, taken int
	for deadline := time.Now().Add(d); time.Now().Before(deadline); {
		slot := r.IntN(boardSlots)
		if r.IntN(2) == 0 {
			n := 16 + r.IntN(400)
			if r.IntN(100) == 0 {
				n = p.MaxSmall() + r.IntN(20000)
			}
			rec, err := hd.Alloc(n)
			if errors.Is(err, ErrNoSpace) {
				continue
			}
			if err != nil {
				t.Fatal(err)
			}
			allocs++
			stampRec(rec)
			if !bd[slot].CompareAndSwap(0, uint64(rec.Off)) {
				if err := p.FreeRecord(rec); err != nil {
					t.Fatal(err)
				}
			}
			continue
		}
		off := mem.Off(bd[slot].Swap(0))
		if off == 0 {
			continue
		}
		b, err := p.Bytes(off)
		if err != nil {
			t.Fatalf("record %#x from the board: %v", off, err)
		}
		if !stampOK(b, off) {
			t.Fatalf("record %#x overwritten: overlapping records", off)
		}
		if err := p.Free(off); err != nil {
			t.Fatal(err)
		}
		taken++
	}
	hd.Close()
	testutil.Say("ops %d %d", allocs, taken)
}

// TestCrash kills a child that holds the heap lock, has an active slab
// and retired slabs with live records, large records, and records it put
// on the board. The survivor takes the lock over within a bounded time,
// Check passes, Reclaim (keeping the records on the board, which are
// still intact) gives everything else back, and once the kept records are
// freed the heap is as it was.
func TestCrash(t *testing.T) {
	for _, c := range crossProcess() {
		t.Run(c.String(), func(t *testing.T) {
			p := newPool(t, c, 8<<20, Options{SlabSize: 16 << 10})
			h0 := heapStats(t, p)
			boardOff, bd := newBoard(t, p)
			kid := testutil.StartChild(t, "TestChildCrash", childEnv(p, c, "BOARD="+strconv.FormatUint(uint64(boardOff), 10))...)
			line := kid.Line(t, 30*time.Second)
			var pid int
			if _, err := fmt.Sscanf(line, "ready %d", &pid); err != nil || pid != kid.Pid() {
				t.Fatalf("child said %q", line)
			}
			child := sys.Identity(p.heap.Lock().Holder())
			if child.PID() != pid {
				t.Fatalf("the child does not hold the heap lock (holder %v)", child)
			}
			if _, err := p.Reclaim(child, nil); !errors.Is(err, ErrBusy) {
				t.Fatalf("reclaim of a live child: %v", err)
			}
			kid.Kill()

			// The lock comes back within a bounded time.
			ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
			defer cancel()
			release, err := p.heap.HoldLock(ctx)
			if err != nil {
				t.Fatalf("heap lock after the holder died: %v", err)
			}
			release()
			mustCheck(t, p, "after the child died")
			s := poolStats(t, p)
			if s.Heap.Takeovers != 1 || s.ActiveSlabs < 1 || s.ActiveSlabs > 1+maxSpares || s.RetiredSlabs < 1 || s.LargeRecords != 2 || s.LiveRecords < 100 {
				t.Fatalf("what the child left: %+v", s)
			}
			kept := map[mem.Off]bool{}
			for i := range bd {
				if off := mem.Off(bd[i].Load()); off != 0 {
					kept[off] = true
				}
			}
			if len(kept) != 10 {
				t.Fatalf("%d records on the board", len(kept))
			}
			rc, err := p.Reclaim(child, func(off mem.Off) bool { return kept[off] })
			if err != nil || rc.Slabs != s.ActiveSlabs || rc.Large != 2 || rc.Records+len(kept) != s.LiveRecords {
				t.Fatalf("reclaim: %+v %v (the child left %d live records)", rc, err, s.LiveRecords)
			}
			mustCheck(t, p, "after reclaim")
			for off := range kept {
				b, err := p.Bytes(off)
				if err != nil || !stampOK(b, off) {
					t.Fatalf("kept record %#x: %v (or overwritten)", off, err)
				}
				if err := p.Free(off); err != nil {
					t.Fatal(err)
				}
			}
			if rc, err := p.Recover(nil); err != nil || rc != (Reclaimed{}) {
				t.Fatalf("nothing should be left to recover: %+v %v", rc, err)
			}
			p.heap.Free(boardOff)
			if h := heapStats(t, p); h.FreeBytes != h0.FreeBytes || h.AllocExtents != 0 {
				t.Fatalf("after reclaim: %+v, want %d free", h, h0.FreeBytes)
			}
			mustCheck(t, p, "end")
		})
	}
}

func TestChildCrash(t *testing.T) {
	testutil.ChildOnly(t)
	p := childPool(t)
	boardOff, _ := strconv.ParseUint(testutil.Env(t, "BOARD"), 10, 64)
	bd := board(t, p, mem.Off(boardOff))
	hd := p.NewHandle()
	for i := range 400 {
		rec, err := hd.Alloc(64 + i%100)
		if err != nil {
			t.Fatal(err)
		}
		stampRec(rec)
		if i%40 == 0 {
			bd[i/40].Store(uint64(rec.Off))
		}
	}
	for range 2 {
		rec, err := hd.Alloc(30000)
		if err != nil {
			t.Fatal(err)
		}
		stampRec(rec)
	}
	if _, err := p.heap.HoldLock(t.Context()); err != nil {
		t.Fatal(err)
	}
	testutil.Say("ready %d", os.Getpid())
	time.Sleep(time.Minute)
}

// TestCrashRetireOnly: a child dies with an active slab whose records it
// gave away; Recover with KeepAll only retires its slab, and the slab goes
// back to the heap when the survivor frees the records.
func TestCrashRetireOnly(t *testing.T) {
	c := defaultCombo()
	p := newPool(t, c, 4<<20, Options{})
	h0 := heapStats(t, p)
	boardOff, bd := newBoard(t, p)
	kid := testutil.StartChild(t, "TestChildGiveAway", childEnv(p, c, "BOARD="+strconv.FormatUint(uint64(boardOff), 10))...)
	if l := kid.Line(t, 30*time.Second); !strings.HasPrefix(l, "gave") {
		t.Fatalf("child said %q", l)
	}
	kid.Kill()
	kid.Wait(t, 10*time.Second)
	rc, err := p.Recover(KeepAll)
	if err != nil || rc.Slabs != 1 || rc.Records != 0 {
		t.Fatalf("recover: %+v %v", rc, err)
	}
	if s := poolStats(t, p); s.ActiveSlabs != 0 || s.RetiredSlabs != 1 || s.LiveRecords != boardSlots {
		t.Fatalf("after recover: %+v", s)
	}
	mustCheck(t, p, "after recover")
	for i := range bd {
		off := mem.Off(bd[i].Swap(0))
		if b, err := p.Bytes(off); err != nil || !stampOK(b, off) {
			t.Fatalf("record %#x: %v", off, err)
		}
		if err := p.Free(off); err != nil {
			t.Fatal(err)
		}
	}
	p.heap.Free(boardOff)
	if h := heapStats(t, p); h.FreeBytes != h0.FreeBytes {
		t.Fatalf("heap %+v", h)
	}
	mustCheck(t, p, "end")
}

func TestChildGiveAway(t *testing.T) {
	testutil.ChildOnly(t)
	p := childPool(t)
	boardOff, _ := strconv.ParseUint(testutil.Env(t, "BOARD"), 10, 64)
	bd := board(t, p, mem.Off(boardOff))
	hd := p.NewHandle()
	for i := range bd {
		rec, err := hd.Alloc(48)
		if err != nil {
			t.Fatal(err)
		}
		stampRec(rec)
		bd[i].Store(uint64(rec.Off))
	}
	testutil.Say("gave %d", len(bd))
	time.Sleep(time.Minute)
}
