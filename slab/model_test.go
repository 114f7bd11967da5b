package slab

import (
	"errors"
	"maps"
	"slices"
	"testing"

	"github.com/heapipc/ipc/internal/mem"
)

// TestModel runs a long seeded random sequence over several handles:
// allocations of mixed sizes (empty, small, slab-sized, large), frees by
// offset, view and record, handles closed and reopened, and invalid frees
// (double frees, offsets inside records, random offsets). The reference
// model is the set of live records and their contents. Check runs after
// every step; at the end every byte is back in the heap.
func TestModel(t *testing.T) {
	for _, c := range []combo{heapCombo, defaultCombo()} {
		t.Run(c.String(), func(t *testing.T) {
			steps := 2500
			if c != heapCombo {
				steps = 600
			}
			runModel(t, c, steps, seed(t))
		})
	}
}

func runModel(t *testing.T, c combo, steps int, sd uint64) {
	r := newRand(sd)
	opts := Options{SlabSize: []int{8 << 10, 16 << 10, 64 << 10}[r.IntN(3)], Align: []int{16, 16, 64}[r.IntN(3)]}
	t.Logf("options %+v", opts)
	p := newPool(t, c, 8<<20, opts)
	h0 := heapStats(t, p)
	handles := make([]*Handle, 3)
	for i := range handles {
		handles[i] = p.NewHandle()
	}
	live := map[mem.Off]Record{}
	var freed []mem.Off
	size := func() int {
		switch k := r.IntN(100); {
		case k < 5:
			return 0
		case k < 70:
			return 1 + r.IntN(128)
		case k < 92:
			return 129 + r.IntN(p.MaxSmall()-128)
		default:
			return p.MaxSmall() + 1 + r.IntN(200<<10)
		}
	}
	for step := range steps {
		what := ""
		switch op := r.IntN(100); {
		case op < 50 || len(live) == 0:
			what = "alloc"
			n := size()
			rec, err := handles[r.IntN(len(handles))].Alloc(n)
			if errors.Is(err, ErrNoSpace) {
				continue
			}
			if err != nil {
				t.Fatalf("step %d: alloc %d: %v", step, n, err)
			}
			if _, dup := live[rec.Off]; dup {
				t.Fatalf("step %d: record %#x handed out twice", step, rec.Off)
			}
			fill(rec)
			live[rec.Off] = rec
		case op < 90:
			what = "free"
			offs := slices.Sorted(maps.Keys(live))
			rec := live[offs[r.IntN(len(offs))]]
			if !intact(rec.Data, rec.Off) {
				t.Fatalf("step %d: record %#x of %d bytes overwritten", step, rec.Off, len(rec.Data))
			}
			var err error
			switch r.IntN(3) {
			case 0:
				err = p.Free(rec.Off)
			case 1:
				err = p.FreeRecord(rec)
			default:
				if len(rec.Data) > 0 {
					err = p.FreeBytes(rec.Data)
				} else {
					err = p.Free(rec.Off)
				}
			}
			if err != nil {
				t.Fatalf("step %d: free %#x: %v", step, rec.Off, err)
			}
			delete(live, rec.Off)
			freed = append(freed, rec.Off)
		case op < 93:
			what = "close"
			i := r.IntN(len(handles))
			handles[i].Close()
			handles[i] = p.NewHandle()
		default:
			what = "bad free"
			before := poolStats(t, p)
			var off mem.Off
			switch k := r.IntN(3); {
			case k == 0 && len(freed) > 0:
				off = freed[r.IntN(len(freed))]
			case k == 1:
				offs := slices.Sorted(maps.Keys(live))
				rec := live[offs[r.IntN(len(offs))]]
				if len(rec.Data) < 32 {
					continue
				}
				off = rec.Off + mem.Off(16*(1+r.IntN(len(rec.Data)/16-1)))
			default:
				lo, hi := p.heap.Range()
				off = (lo + mem.Off(r.Uint64N(uint64(hi-lo)))) &^ 15
			}
			if _, ok := live[off]; ok {
				continue
			}
			err := p.Free(off)
			if !errors.Is(err, ErrDoubleFree) && !errors.Is(err, ErrNotAllocated) {
				t.Fatalf("step %d: free of %#x (not a live record): %v", step, off, err)
			}
			if s := poolStats(t, p); s != before {
				t.Fatalf("step %d: a failed free changed the pool", step)
			}
		}
		if err := p.Check(); err != nil {
			t.Fatalf("step %d (%s): check: %v", step, what, err)
		}
		if step%50 == 0 {
			s := poolStats(t, p)
			if s.LiveRecords+s.LargeRecords != len(live) {
				t.Fatalf("step %d: pool counts %d live records, the model %d", step, s.LiveRecords+s.LargeRecords, len(live))
			}
		}
	}
	for _, rec := range live {
		if !intact(rec.Data, rec.Off) {
			t.Fatalf("end: record %#x overwritten", rec.Off)
		}
		if err := p.FreeRecord(rec); err != nil {
			t.Fatal(err)
		}
	}
	for _, h := range handles {
		h.Close()
	}
	mustCheck(t, p, "end")
	if h := heapStats(t, p); h.FreeBytes != h0.FreeBytes || h.FreeExtents != 1 {
		t.Fatalf("end: heap %+v, want %d free", h, h0.FreeBytes)
	}
}
