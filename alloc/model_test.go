package alloc

import (
	"errors"
	"maps"
	"slices"
	"testing"

	"github.com/heapipc/ipc/backend"
	"github.com/heapipc/ipc/internal/mem"
)

// model is the reference the heap is compared with: which page belongs to
// which live extent, nothing else.
type model struct {
	n    uint64
	used []bool
	live map[uint64]uint64 // start page -> pages
}

func newModel(n uint64) *model { return &model{n: n, used: make([]bool, n), live: map[uint64]uint64{}} }

// runs returns the free runs in address order.
func (m *model) runs() (starts, lens []uint64) {
	for p := uint64(0); p < m.n; {
		if m.used[p] {
			p++
			continue
		}
		q := p
		for q < m.n && !m.used[q] {
			q++
		}
		starts, lens = append(starts, p), append(lens, q-p)
		p = q
	}
	return
}

// largest is where the heap must allocate: the largest run, the lowest of
// equal ones.
func (m *model) largest() (start, n uint64) {
	starts, lens := m.runs()
	for i := range starts {
		if lens[i] > n {
			start, n = starts[i], lens[i]
		}
	}
	return
}

func (m *model) stats(ps uint64) (free, largest, freeExt, allocExt uint64) {
	starts, lens := m.runs()
	for i := range starts {
		free += lens[i] * ps
		largest = max(largest, lens[i]*ps)
	}
	return free, largest, uint64(len(starts)), uint64(len(m.live))
}

func (m *model) mark(start, n uint64, used bool) {
	for p := start; p < start+n; p++ {
		m.used[p] = used
	}
	if used {
		m.live[start] = n
	} else {
		delete(m.live, start)
	}
}

// TestModel runs a long seeded random sequence of allocations and frees of
// mixed sizes (and some invalid frees) against the model, checking the
// heap after every step.
func TestModel(t *testing.T) {
	for _, c := range []combo{{backend.Heap, backend.Heap}, {backend.DefaultSegmentKind(), backend.DefaultSemaphoreKind()}} {
		t.Run(c.String(), func(t *testing.T) {
			steps := 3000
			if c.seg != backend.Heap {
				steps = 800
			}
			runModel(t, c, steps, seed(t))
		})
	}
}

func runModel(t *testing.T, c combo, steps int, sd uint64) {
	h := newHeap(t, c, 1<<20)
	ps := h.ps
	m := newModel(h.n)
	r := newRand(sd)
	s0 := mustStats(t, h)
	compare := func(step int, what string) {
		t.Helper()
		if err := h.Check(); err != nil {
			t.Fatalf("step %d (%s): check: %v", step, what, err)
		}
		s := mustStats(t, h)
		free, largest, fe, ae := m.stats(ps)
		if s.FreeBytes != free || s.LargestFree != largest || s.FreeExtents != fe || s.AllocExtents != ae || s.AllocBytes != s.TotalBytes-free {
			t.Fatalf("step %d (%s): heap %s; model free %d largest %d in %d extents, %d allocated", step, what, describe(s), free, largest, fe, ae)
		}
	}
	for step := range steps {
		op := r.IntN(100)
		switch {
		case op < 55 || len(m.live) == 0:
			var pages uint64
			switch k := r.IntN(100); {
			case k < 70:
				pages = 1 + r.Uint64N(4)
			case k < 95:
				pages = 5 + r.Uint64N(28)
			default:
				pages = 33 + r.Uint64N(m.n)
			}
			n := int(pages*ps) - r.IntN(int(ps))
			start, run := m.largest()
			before := mustStats(t, h)
			off, err := h.Alloc(n)
			if run < pages {
				if !errors.Is(err, ErrNoSpace) {
					t.Fatalf("step %d: alloc %d pages with largest run %d: %v, want ErrNoSpace", step, pages, run, err)
				}
				if s := mustStats(t, h); s != before {
					t.Fatalf("step %d: failed alloc (%v) changed the heap: %+v -> %+v", step, err, before, s)
				}
				continue
			}
			if err != nil {
				t.Fatalf("step %d: alloc %d pages: %v", step, pages, err)
			}
			if want := h.offOf(start); off != want {
				t.Fatalf("step %d: alloc %d pages at %#x, want the largest run's start %#x", step, pages, off, want)
			}
			m.mark(start, pages, true)
			compare(step, "alloc")
		case op < 95:
			starts := slices.Sorted(maps.Keys(m.live))
			p := starts[r.IntN(len(starts))]
			if err := h.Free(h.offOf(p)); err != nil {
				t.Fatalf("step %d: free page %d: %v", step, p, err)
			}
			m.mark(p, m.live[p], false)
			compare(step, "free")
		default:
			// Free something that is not a live extent: nothing changes.
			p := r.Uint64N(m.n)
			if _, ok := m.live[p]; ok {
				continue
			}
			before := mustStats(t, h)
			off := h.offOf(p)
			if r.IntN(4) == 0 {
				off += mem.Off(1 + r.IntN(int(ps)-1))
			}
			err := h.Free(off)
			if !errors.Is(err, ErrNotAllocated) && !errors.Is(err, ErrDoubleFree) {
				t.Fatalf("step %d: free of non-extent %#x: %v", step, off, err)
			}
			if s := mustStats(t, h); s != before {
				t.Fatalf("step %d: failed free changed the heap", step)
			}
		}
	}
	for p, n := range m.live {
		if err := h.Free(h.offOf(p)); err != nil {
			t.Fatal(err)
		}
		m.mark(p, n, false)
	}
	compare(steps, "end")
	if s := mustStats(t, h); s != s0 {
		t.Fatalf("end: %+v, want %+v", s, s0)
	}
}
