package slab

import (
	"testing"

	"github.com/heapipc/ipc/internal/mem"
	"github.com/heapipc/ipc/internal/testutil"
)

// stallCase leaves one slab stalled as a process killed at some point
// would: retired (or being retired), every record free, not returned.
type stallCase struct {
	name string
	// takeover: Recover's takeover of the dead owner returns the slab
	// (counted in Reclaimed.Slabs), not returnStalled.
	takeover bool
	// stall gets a pool with one handle's slab holding recs (all live,
	// the handle open) and leaves the slab stalled; the handle is not
	// used again.
	stall func(t *testing.T, p *Pool, hd *Handle, recs []Record)
}

// freeBitsOnly sets a live record's bits as a freer's CAS does, and
// nothing else: a freer that dies right after the CAS.
func freeBitsOnly(t *testing.T, p *Pool, off mem.Off) slot {
	t.Helper()
	sl, ok := p.slotOf(off, &slabSeen{})
	if !ok || sl.bit%64+sl.n > 64 {
		t.Fatalf("record %#x: no slot in one bitmap word", uint64(off))
	}
	word := &p.words[sl.slab/8+bitmapWord+sl.bit/64]
	if old := word.Load(); !word.CompareAndSwap(old, old|maskOf(sl.bit%64, sl.n)) {
		t.Fatal("bitmap changed under the test")
	}
	return sl
}

// retireBitsOnly takes retire's steps for the handle's current slab up to
// the count: the retirement point, then every granule past it free (whole
// words; the handle's records end on a word boundary or the rest of that
// word is set too).
func retireBitsOnly(p *Pool, hd *Handle) {
	hd.sh.Retired.Store(uint64(hd.cur) + 1)
	base := uint64(hd.slab)/8 + bitmapWord
	for w := uint64((hd.cur - p.geo.recBase) / 64); w < uint64(p.geo.words); w++ {
		p.words[base+w].Store(^uint64(0))
	}
}

// allocRecords gives a new handle 40 records of 64 bytes: 40 slots of
// 80 bytes in one slab, over several bitmap words.
func allocRecords(t *testing.T, p *Pool) (*Handle, []Record) {
	t.Helper()
	hd := p.NewHandle()
	recs := make([]Record, 40)
	for i := range recs {
		r, err := hd.Alloc(64)
		if err != nil {
			t.Fatal(err)
		}
		recs[i] = r
	}
	return hd, recs
}

var stallCases = []stallCase{
	{"freer died between its bitmap CAS and the count", false, func(t *testing.T, p *Pool, hd *Handle, recs []Record) {
		hd.Close()
		for _, r := range recs[:len(recs)-1] {
			if err := p.Free(r.Off); err != nil {
				t.Fatal(err)
			}
		}
		freeBitsOnly(t, p, recs[len(recs)-1].Off)
	}},
	{"last freer died before claiming the return", false, func(t *testing.T, p *Pool, hd *Handle, recs []Record) {
		hd.Close()
		for _, r := range recs[:len(recs)-1] {
			if err := p.Free(r.Off); err != nil {
				t.Fatal(err)
			}
		}
		sl := freeBitsOnly(t, p, recs[len(recs)-1].Off)
		if !p.slabs[sl.slab/slabHeaderSize].countDown(sl.gen, 1) {
			t.Fatal("the last free did not bring the count to zero")
		}
	}},
	{"owner died in the middle of retiring", false, func(t *testing.T, p *Pool, hd *Handle, recs []Record) {
		for _, r := range recs {
			if err := p.Free(r.Off); err != nil {
				t.Fatal(err)
			}
		}
		retireBitsOnly(p, hd)
		hd.sh.Owner.Store(uint64(testutil.DeadIdentity(t)))
	}},
	{"owner died in the middle of a restart", true, func(t *testing.T, p *Pool, hd *Handle, recs []Record) {
		for _, r := range recs {
			if err := p.Free(r.Off); err != nil {
				t.Fatal(err)
			}
		}
		// start's first steps over a slab whose records are all free:
		// a new generation, the bitmap cleared; not the count.
		hd.sh.Ident.Store(ident(genOf(hd.sh.Ident.Load()) + 1))
		base := uint64(hd.slab)/8 + bitmapWord
		for w := range uint64(p.geo.words) {
			p.words[base+w].Store(0)
		}
		hd.sh.Owner.Store(uint64(testutil.DeadIdentity(t)))
	}},
}

// TestRecoverStalled: a slab left stalled by a process killed between
// two of its steps is not returned and fails Check; Recover returns it,
// and a counter that arrives late (a live process that was merely slow)
// changes neither it nor the slab that takes its place.
func TestRecoverStalled(t *testing.T) {
	for _, c := range stallCases {
		t.Run(c.name, func(t *testing.T) {
			p := newPool(t, heapCombo, 4<<20, Options{SlabSize: 16 << 10})
			h0 := heapStats(t, p)
			hd, recs := allocRecords(t, p)
			slab := hd.slab
			sh := hd.sh
			gen := genOf(sh.Ident.Load())
			c.stall(t, p, hd, recs)

			if s := poolStats(t, p); s.Slabs != 1 || s.LiveRecords != 0 {
				t.Fatalf("stalled: %+v", s)
			}
			if err := p.Check(); err == nil {
				t.Fatal("Check passes with a stalled slab")
			}
			rc, err := p.Recover(nil)
			if err != nil || (c.takeover && (rc.Slabs != 1 || rc.Returned != 0)) || (!c.takeover && rc.Returned != 1) {
				t.Fatalf("Recover: %+v, %v", rc, err)
			}
			if h := heapStats(t, p); h.FreeBytes != h0.FreeBytes {
				t.Fatalf("heap after Recover: %+v, want %d bytes free", h, h0.FreeBytes)
			}
			mustCheck(t, p, "after Recover")

			// A counter of the stalled slab's generation arriving now.
			if sh.countDown(gen, 1) {
				t.Fatal("a late count reached zero on a returned slab")
			}
			if err := p.wordDone(slab, gen, 1); err != nil {
				t.Fatalf("a late count on a returned slab: %v", err)
			}
			mustCheck(t, p, "after a late count")

			// The same memory as a new slab: a late count leaves it alone.
			hd2 := p.NewHandle()
			r, err := hd2.Alloc(64)
			if err != nil {
				t.Fatal(err)
			}
			if hd2.slab != slab {
				t.Fatalf("the new slab is at %#x, not at the returned one's %#x", uint64(hd2.slab), uint64(slab))
			}
			before := sh.Count.Load()
			if sh.countDown(gen, 1) || sh.Count.Load() != before {
				t.Fatal("a late count of the old generation changed the new slab's count")
			}
			mustCheck(t, p, "new slab after a late count")
			// A returner of the old generation arriving now (its count
			// reached zero before Recover took the slab over): the new
			// slab, whose Returner is clear, stays.
			if err := p.returnSlab(slab, sh, gen); err != nil {
				t.Fatalf("a late return: %v", err)
			}
			if s := poolStats(t, p); s.Slabs != 1 || s.LiveRecords != 1 || sh.Returner.Load() != 0 {
				t.Fatalf("a late return of the old generation touched the new slab: %+v, returner %#x", s, sh.Returner.Load())
			}
			mustCheck(t, p, "new slab after a late return")
			if err := p.Free(r.Off); err != nil {
				t.Fatal(err)
			}
			hd2.Close()
			if h := heapStats(t, p); h.FreeBytes != h0.FreeBytes {
				t.Fatalf("heap at the end: %+v, want %d bytes free", h, h0.FreeBytes)
			}
			mustCheck(t, p, "end")
		})
	}
}

// TestRecoverLeavesBusySlabs: Recover returns no slab that is only on its
// way to being returned (a retirement or the last free in progress) once
// the process doing it gets there, and none with a live record.
func TestRecoverLeavesBusySlabs(t *testing.T) {
	p := newPool(t, heapCombo, 4<<20, Options{SlabSize: 16 << 10})
	hd, recs := allocRecords(t, p)
	hd.Close()
	for _, r := range recs[1:] {
		if err := p.Free(r.Off); err != nil {
			t.Fatal(err)
		}
	}
	// One live record: retired, not stalled.
	rc, err := p.Recover(nil)
	if err != nil || rc.Returned != 0 {
		t.Fatalf("Recover with a live record: %+v, %v", rc, err)
	}
	if s := poolStats(t, p); s.Slabs != 1 || s.LiveRecords != 1 {
		t.Fatalf("%+v", s)
	}
	mustCheck(t, p, "one live record")
	// The last free's bitmap CAS done, its count still to come: Recover
	// finds the slab stalled, and the count arrives during the grace
	// period (stallHook runs after it, before the second look) and
	// returns the slab. Recover then leaves it alone.
	sl := freeBitsOnly(t, p, recs[0].Off)
	var werr error
	stallHook = func() { werr = p.wordDone(mem.Off(sl.slab), sl.gen, 1) }
	defer func() { stallHook = nil }()
	rc, err = p.Recover(nil)
	if err != nil || werr != nil || rc.Returned != 0 {
		t.Fatalf("Recover: %+v, %v; the freer's count: %v", rc, err, werr)
	}
	if s := poolStats(t, p); s.Slabs != 0 {
		t.Fatalf("slab not returned: %+v", s)
	}
	mustCheck(t, p, "end")
}

// TestRecoverLeavesLiveRetirer: a retirement whose bitmap is all set but
// whose count still has the active mark is left to its owner while the
// owner lives, however long it takes.
func TestRecoverLeavesLiveRetirer(t *testing.T) {
	p := newPool(t, heapCombo, 4<<20, Options{SlabSize: 16 << 10})
	h0 := heapStats(t, p)
	hd, recs := allocRecords(t, p)
	for _, r := range recs {
		if err := p.Free(r.Off); err != nil {
			t.Fatal(err)
		}
	}
	retireBitsOnly(p, hd) // by a live owner (this process)
	rc, err := p.Recover(nil)
	if err != nil || rc.Returned != 0 || rc.Slabs != 0 {
		t.Fatalf("Recover during a live retirement: %+v, %v", rc, err)
	}
	if s := poolStats(t, p); s.Slabs != 1 {
		t.Fatalf("%+v", s)
	}
	// The owner finishes: its count returns the slab.
	gen := genOf(hd.sh.Ident.Load())
	done := uint64(p.geo.words) - uint64((hd.cur-p.geo.recBase)/64)
	if !hd.sh.countDown(gen, active+done) {
		t.Fatalf("the retirement's count did not reach zero: %#x", hd.sh.Count.Load())
	}
	if err := p.returnSlab(hd.slab, hd.sh, gen); err != nil {
		t.Fatal(err)
	}
	if h := heapStats(t, p); h.FreeBytes != h0.FreeBytes {
		t.Fatalf("heap at the end: %+v, want %d bytes free", h, h0.FreeBytes)
	}
	mustCheck(t, p, "end")
}
