package alloc

import (
	"errors"
	"strings"
	"testing"

	"github.com/heapipc/ipc/backend"
	"github.com/heapipc/ipc/internal/mem"
)

// checkHeap builds a heap with allocated and free extents:
// [a 1][b 3][free 2][c 1][free ...]
func checkHeap(t *testing.T) (*Heap, []mem.Off) {
	h := newHeap(t, combo{backend.Heap, backend.Heap}, 1<<20)
	var offs []mem.Off
	for _, n := range []int{1, 3, 2, 1} {
		off, err := h.Alloc(n * 4096)
		if err != nil {
			t.Fatal(err)
		}
		offs = append(offs, off)
	}
	h.Free(offs[2])
	mustCheck(t, h, "before damage")
	return h, offs
}

func violationCount(err error) int {
	if err == nil {
		return 0
	}
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		n := 0
		for _, e := range j.Unwrap() {
			n += violationCount(e)
		}
		return n
	}
	return 1
}

// TestCheckReports damages the metadata in known ways and expects Check
// to name each violation, all of them at once, and Repair to fix what is
// derived.
func TestCheckReports(t *testing.T) {
	cases := []struct {
		name     string
		damage   func(h *Heap, offs []mem.Off)
		want     []string
		repaired bool // Repair restores a heap that Check passes
	}{
		{"overlapping extents", func(h *Heap, _ []mem.Off) {
			h.pages[2].Tag = headTag(tagAlloc, 1, 0) // inside b
		}, []string{"overlapping"}, false},
		{"lost extent", func(h *Heap, _ []mem.Off) {
			h.pages[0].Tag = 0 // a's only tag
		}, []string{"lost extent"}, false},
		{"index entry replaced", func(h *Heap, _ []mem.Off) {
			h.index[0] = makeKey(5, 40)
		}, []string{"index", "names no free extent"}, true},
		{"position word", func(h *Heap, _ []mem.Off) {
			h.pages[4].Aux = 7
		}, []string{"missing from the index"}, true},
		{"heap order", func(h *Heap, _ []mem.Off) {
			h.index[0], h.index[1] = h.index[1], h.index[0]
			h.pages[keyStart(h.index[0])].Aux = 1
			h.pages[keyStart(h.index[1])].Aux = 2
		}, []string{"heap order"}, true},
		{"counters", func(h *Heap, _ []mem.Off) {
			h.rt.FreePages++
			h.rt.AllocExtents = 9
		}, []string{"root.FreePages", "root.AllocExtents"}, true},
		{"not coalesced", func(h *Heap, offs []mem.Off) {
			// Free c behind the heap's back: two free runs touch.
			h.pages[6].Tag = headTag(tagFree, 1, 0)
			h.pages[6].Aux = 0
		}, []string{"not coalesced", "missing from the index"}, true},
		{"pending log", func(h *Heap, _ []mem.Off) {
			h.rt.LogState.Store(1)
			h.rt.LogN = 0
		}, []string{"redo log"}, true},
		{"everything at once", func(h *Heap, _ []mem.Off) {
			h.pages[2].Tag = headTag(tagAlloc, 1, 0)
			h.index[0] = makeKey(5, 40)
			h.rt.FreePages++
			h.rt.AllocPages++
		}, []string{"overlapping", "names no free extent", "root.FreePages", "root.AllocPages"}, false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			h, offs := checkHeap(t)
			c.damage(h, offs)
			// Check directly under the lock: acquire would repair a
			// pending log first.
			h.lock.Lock(t.Context())
			err := h.checkLocked()
			h.lock.Unlock()
			if !errors.Is(err, ErrCorrupt) {
				t.Fatalf("check: %v, want ErrCorrupt", err)
			}
			for _, w := range c.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("check does not report %q:\n%v", w, err)
				}
			}
			if violationCount(err) < len(c.want) {
				t.Errorf("%d violations reported, want at least %d:\n%v", violationCount(err), len(c.want), err)
			}
			rerr := h.Repair()
			if c.repaired {
				if rerr != nil {
					t.Fatalf("repair: %v", rerr)
				}
				mustCheck(t, h, "after repair")
				// The heap works after its repair.
				off, err := h.Alloc(4096)
				if err != nil {
					t.Fatal(err)
				}
				h.Free(off)
				mustCheck(t, h, "after repair and use")
			} else if rerr == nil && h.Check() == nil {
				t.Fatalf("repair made a damaged page map look sound")
			}
		})
	}
}

// TestOpsOnDamagedIndex: an allocation or free that finds the index out
// of step with the page map rebuilds it and goes on.
func TestOpsOnDamagedIndex(t *testing.T) {
	h, offs := checkHeap(t)
	h.index[0] = makeKey(3, 17) // a top entry that names nothing
	off, err := h.Alloc(4096)
	if err != nil {
		t.Fatalf("alloc over a damaged index: %v", err)
	}
	mustCheck(t, h, "after alloc")
	h.pages[4].Aux = 99 // c's left neighbour's position
	if err := h.Free(offs[3]); err != nil {
		t.Fatalf("free over a damaged index: %v", err)
	}
	mustCheck(t, h, "after free")
	if s := mustStats(t, h); s.Repairs != 2 {
		t.Fatalf("%d repairs, want 2", s.Repairs)
	}
	h.Free(off)
	h.Free(offs[0])
	h.Free(offs[1])
	if s := mustStats(t, h); s.FreeExtents != 1 || s.AllocExtents != 0 {
		t.Fatalf("%s", describe(s))
	}
}

// TestCheckHeadTagExact: a head tag with a stray tail flag (one bit) on an
// extent of several pages is reported by Check (it passed, while Alloc
// and Free, which want the exact tag, failed on that extent for good),
// and Repair, or the repair an Alloc makes, writes it again.
func TestCheckHeadTagExact(t *testing.T) {
	h := newHeap(t, combo{backend.Heap, backend.Heap}, 1<<20)
	a, err := h.Alloc(2 * 4096)
	if err != nil {
		t.Fatal(err)
	}
	pa, _ := h.pageOf(a)
	free := pa + 2 // the free rest
	h.pages[free].Tag |= tagTail
	if err := h.Check(); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("Check with a stray tail flag on a free extent's head: %v", err)
	}
	if _, err := h.Alloc(4096); err != nil {
		t.Fatalf("Alloc after the damage (its repair writes the head again): %v", err)
	}
	if err := h.Check(); err != nil {
		t.Fatal(err)
	}
	h.pages[pa].Tag |= tagTail
	if err := h.Check(); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("Check with a stray tail flag on an allocated extent's head: %v", err)
	}
	if err := h.Repair(); err != nil {
		t.Fatal(err)
	}
	if err := h.Check(); err != nil {
		t.Fatalf("Check after Repair: %v", err)
	}
	if err := h.Free(a); err != nil {
		t.Fatal(err)
	}
}

// TestAllocOverIndexOutOfOrder: an index whose entries each name a free
// extent but whose top is not the longest (heap order broken by a
// scribble) is rebuilt by an Alloc that the top cannot serve, instead of
// failing with ErrNoSpace while a long enough run is free.
func TestAllocOverIndexOutOfOrder(t *testing.T) {
	h, _ := checkHeap(t)
	// The free runs: offs[2]'s two pages and the long rest. Put the short
	// one on top, positions kept consistent.
	if keyLen(h.index[0]) <= keyLen(h.index[1]) {
		t.Fatalf("set-up: top %d pages, next %d", keyLen(h.index[0]), keyLen(h.index[1]))
	}
	h.index[0], h.index[1] = h.index[1], h.index[0]
	h.pages[keyStart(h.index[0])].Aux = 1
	h.pages[keyStart(h.index[1])].Aux = 2
	off, err := h.Alloc(3 * 4096)
	if err != nil {
		t.Fatalf("Alloc of 3 pages with the long run below the top: %v", err)
	}
	mustCheck(t, h, "after the alloc")
	if s := mustStats(t, h); s.Repairs != 1 {
		t.Fatalf("%d repairs, want 1", s.Repairs)
	}
	if err := h.Free(off); err != nil {
		t.Fatal(err)
	}
	// A heap in order that cannot serve still says ErrNoSpace at once.
	if _, err := h.Alloc(1 << 30); !errors.Is(err, ErrNoSpace) {
		t.Fatalf("Alloc beyond the heap: %v", err)
	}
	big := int(keyLen(h.index[0])+1) * 4096
	if _, err := h.Alloc(big); !errors.Is(err, ErrNoSpace) {
		t.Fatalf("Alloc one page longer than the longest run: %v", err)
	}
	if s := mustStats(t, h); s.Repairs != 1 {
		t.Fatalf("%d repairs after the in-order failures, want 1", s.Repairs)
	}
}
