package slab

import (
	"errors"
	"testing"

	"github.com/heapipc/ipc/internal/mem"
)

// straddler returns the first of recs whose slot spans two bitmap words,
// and its slot.
func straddler(t *testing.T, p *Pool, recs []Record) (int, slot) {
	t.Helper()
	for i, r := range recs {
		sl, ok := p.slotOf(r.Off, &slabSeen{})
		if !ok {
			t.Fatalf("record %#x: no slot", uint64(r.Off))
		}
		if sl.bit%64+sl.n > 64 {
			return i, sl
		}
	}
	t.Fatal("no record spans two bitmap words")
	return 0, slot{}
}

// TestRecoverFinishesCutFree: a freer killed between the two bitmap
// words of a record's slot leaves it partly free; Recover sets the rest
// (and counts the words that completes) while the slab's owner lives, a
// slow live freer arriving afterwards takes its later word as done, and
// the slab goes back to the heap in the end.
func TestRecoverFinishesCutFree(t *testing.T) {
	p := newPool(t, heapCombo, 4<<20, Options{SlabSize: 16 << 10})
	h0 := heapStats(t, p)
	hd, recs := allocRecords(t, p)
	i, sl := straddler(t, p, recs)
	// The other records that begin in its second word are freed: the
	// rest of its free completes that word.
	freed := map[int]bool{i: true}
	for j := i + 1; j < len(recs); j++ {
		if s, _ := p.slotOf(recs[j].Off, &slabSeen{}); s.bit/64 == sl.bit/64+1 {
			if err := p.Free(recs[j].Off); err != nil {
				t.Fatal(err)
			}
			freed[j] = true
		}
	}
	first := 64 - sl.bit%64
	word := &p.words[sl.slab/8+bitmapWord+sl.bit/64]
	if old := word.Load(); !word.CompareAndSwap(old, old|maskOf(sl.bit%64, first)) {
		t.Fatal("bitmap changed under the test")
	}
	count := hd.sh.Count.Load()
	if err := p.Check(); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("Check with a record half freed: %v", err)
	}
	rc, err := p.Recover(nil)
	if err != nil || rc.Finished != 1 {
		t.Fatalf("Recover: %+v, %v", rc, err)
	}
	if c := hd.sh.Count.Load(); c != count-1 {
		t.Fatalf("count %#x after finishing a free that completes a word, was %#x", c, count)
	}
	mustCheck(t, p, "after Recover")
	if err := p.Free(recs[i].Off); !errors.Is(err, ErrDoubleFree) {
		t.Fatalf("the finished record freed again: %v", err)
	}
	// The freer, merely slow, does its second word now.
	count = hd.sh.Count.Load()
	if err := p.freeBits(mem.Off(sl.slab), hd.sh, sl.gen, sl.bit+first, sl.n-first, false); err != nil {
		t.Fatalf("the slow freer's second word: %v", err)
	}
	if hd.sh.Count.Load() != count {
		t.Fatal("the slow freer counted a word Recover had counted")
	}
	rc, err = p.Recover(nil)
	if err != nil || rc.Finished != 0 {
		t.Fatalf("Recover again: %+v, %v", rc, err)
	}
	for j, r := range recs {
		if !freed[j] {
			if err := p.Free(r.Off); err != nil {
				t.Fatal(err)
			}
		}
	}
	hd.Close()
	if h := heapStats(t, p); h.FreeBytes != h0.FreeBytes {
		t.Fatalf("heap at the end: %+v, want %d bytes free", h, h0.FreeBytes)
	}
	mustCheck(t, p, "end")
}

// TestFinishCutWrongGeneration: finishCut for a generation the slab no
// longer has (started over since the walk saw it) changes nothing.
func TestFinishCutWrongGeneration(t *testing.T) {
	p := newPool(t, heapCombo, 4<<20, Options{SlabSize: 16 << 10})
	hd, recs := allocRecords(t, p)
	i, sl := straddler(t, p, recs)
	first := 64 - sl.bit%64
	word := &p.words[sl.slab/8+bitmapWord+sl.bit/64]
	word.Store(word.Load() | maskOf(sl.bit%64, first))
	next := &p.words[sl.slab/8+bitmapWord+sl.bit/64+1]
	count, before := hd.sh.Count.Load(), next.Load()
	pos := uint32(sl.bit) + p.geo.recBase
	if ok, err := p.finishCut(mem.Off(sl.slab), hd.sh, sl.gen+1, pos); ok || err != nil {
		t.Fatalf("finishCut of another generation: %v, %v", ok, err)
	}
	if next.Load() != before || hd.sh.Count.Load() != count {
		t.Fatal("finishCut of another generation changed the slab")
	}
	if ok, err := p.finishCut(mem.Off(sl.slab), hd.sh, sl.gen, pos); !ok || err != nil || hd.sh.Count.Load() != count {
		t.Fatalf("finishCut: %v, %v; count %#x, was %#x", ok, err, hd.sh.Count.Load(), count)
	}
	if err := p.Free(recs[i].Off); !errors.Is(err, ErrDoubleFree) {
		t.Fatalf("the finished record freed again: %v", err)
	}
	mustCheck(t, p, "end")
}

// TestCheckCountAboveBitmap: a freer killed between completing a bitmap
// word and counting it leaves the count one above the bitmap. While the
// slab's owner lives and has it, that is not a violation (a freer on its
// way looks the same); once the owner retires it and its records are all
// free, Check reports it stalled and Recover returns it.
func TestCheckCountAboveBitmap(t *testing.T) {
	p := newPool(t, heapCombo, 4<<20, Options{SlabSize: 16 << 10})
	h0 := heapStats(t, p)
	// Slots of 8 granules: eight records a bitmap word.
	hd := p.NewHandle()
	recs := make([]Record, 24)
	for j := range recs {
		r, err := hd.Alloc(112)
		if err != nil {
			t.Fatal(err)
		}
		recs[j] = r
	}
	// The records of the first bitmap word: all but its last freed
	// normally, the last one's CAS only (it completes the word).
	const last = 7
	if sl, _ := p.slotOf(recs[last].Off, &slabSeen{}); sl.n != 8 || sl.bit+sl.n != 64 {
		t.Fatalf("the eighth record's slot is bits %d+%d", sl.bit, sl.n)
	}
	for _, r := range recs[:last] {
		if err := p.Free(r.Off); err != nil {
			t.Fatal(err)
		}
	}
	freeBitsOnly(t, p, recs[last].Off)
	mustCheck(t, p, "count above the bitmap, the owner alive")
	for _, r := range recs[last+1:] {
		if err := p.Free(r.Off); err != nil {
			t.Fatal(err)
		}
	}
	hd.Close()
	if err := p.Check(); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("Check with a stalled slab: %v", err)
	}
	rc, err := p.Recover(nil)
	if err != nil || rc.Returned != 1 {
		t.Fatalf("Recover: %+v, %v", rc, err)
	}
	if h := heapStats(t, p); h.FreeBytes != h0.FreeBytes {
		t.Fatalf("heap at the end: %+v, want %d bytes free", h, h0.FreeBytes)
	}
	mustCheck(t, p, "end")
}

// TestSlotKey: the key worked out from a located slot is the check its
// header holds, for records of several sizes; a large record's key is its
// header's check, which differs from one large record to the next at the
// same place.
func TestSlotKey(t *testing.T) {
	p := newPool(t, heapCombo, 4<<20, Options{SlabSize: 16 << 10})
	hd := p.NewHandle()
	defer hd.Close()
	for _, size := range []int{0, 1, 15, 16, 17, 100, 1000, 1 << 10} {
		r, err := hd.Alloc(size)
		if err != nil {
			t.Fatal(err)
		}
		var s Slot
		if !hd.Locate(r.Off, &s) {
			t.Fatalf("record of %d bytes not located", size)
		}
		if k, want := p.Key(&s), p.RecordKey(r.Off); k != want || k == 0 {
			t.Fatalf("record of %d bytes: key %#x, header %#x", size, k, want)
		}
		if err := p.Free(r.Off); err != nil {
			t.Fatal(err)
		}
	}
	// A large record's key is its header's check, which tells it from
	// the large records of its size at its place before it.
	seen := map[uint32]bool{}
	var at mem.Off
	for i := range 100 {
		r := allocLarge(t, p, hd)
		if i == 0 {
			at = r.Off
		} else if r.Off != at {
			t.Fatalf("large record %d at %#x, not at the freed one's %#x", i, uint64(r.Off), uint64(at))
		}
		k := p.RecordKey(r.Off)
		if k == 0 || seen[k] {
			t.Fatalf("large record %d: key %#x, zero or an earlier one's", i, k)
		}
		seen[k] = true
		if err := p.Free(r.Off); err != nil {
			t.Fatal(err)
		}
	}
	if k := p.RecordKey(0); k != 0 {
		t.Fatalf("offset 0: key %#x", k)
	}
}

// TestLargeTailZeroed: a large record's last 16 bytes are zero when it is
// handed out, whatever the memory held before (here the same extent, its
// bytes all set by the record freed before).
func TestLargeTailZeroed(t *testing.T) {
	p := newPool(t, heapCombo, 4<<20, Options{SlabSize: 16 << 10})
	hd := p.NewHandle()
	defer hd.Close()
	r := allocLarge(t, p, hd)
	for i := range r.Data {
		r.Data[i] = 0xff
	}
	if err := p.Free(r.Off); err != nil {
		t.Fatal(err)
	}
	r2, err := hd.Alloc(largeSize)
	if err != nil {
		t.Fatal(err)
	}
	if r2.Off != r.Off {
		t.Fatalf("the new large record is at %#x, not at the freed one's %#x", uint64(r2.Off), uint64(r.Off))
	}
	for i, c := range r2.Data[largeSize-16:] {
		if c != 0 {
			t.Fatalf("byte %d of the last 16 is %#x", i, c)
		}
	}
	if r2.Data[largeSize-17] != 0xff {
		t.Fatal("more than the last 16 bytes zeroed")
	}
	if err := p.Free(r2.Off); err != nil {
		t.Fatal(err)
	}
}

// TestRecoverFinishesCutLargeFree: a freer killed inside the heap's
// critical section of a large record's free, after marking its header
// freed and before the heap's update committed, leaves the extent
// allocated with no record in it; Check reports it and Recover frees it,
// while the record's allocator lives. An extent being taken for a large
// record (its header's place zeroed under the heap lock) is not taken
// for one, whatever the memory held before.
func TestRecoverFinishesCutLargeFree(t *testing.T) {
	p := newPool(t, heapCombo, 4<<20, Options{SlabSize: 16 << 10})
	h0 := heapStats(t, p)
	hd := p.NewHandle()
	defer hd.Close()
	r := allocLarge(t, p, hd)
	// What freeLarge's check stores under the heap lock, with no commit.
	g := uint64(r.Off)/granule - 1
	h := p.header(g)
	p.words[2*g+1].Store(packHalves(h.Size, p.largeCheck(h.Len, h.Size, freedKey)))
	if err := p.Free(r.Off); !errors.Is(err, ErrDoubleFree) {
		t.Fatalf("Free of a record whose free was cut: %v", err)
	}
	if err := p.Check(); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("Check with a large free cut short: %v", err)
	}
	rc, err := p.Recover(nil)
	if err != nil || rc.Finished != 1 {
		t.Fatalf("Recover: %+v, %v", rc, err)
	}
	if err := p.Check(); err != nil {
		t.Fatalf("Check after Recover: %v", err)
	}
	if got := heapStats(t, p); got.FreeBytes != h0.FreeBytes {
		t.Fatalf("free bytes %d after Recover, %d before the record", got.FreeBytes, h0.FreeBytes)
	}

	// The freed header is still in the memory; the extent taken again
	// for a record of the same size does not show it.
	hdrOff := p.largeData()
	ext, err := p.takeLarge(hdrOff + largeSize)
	if err != nil {
		t.Fatal(err)
	}
	if ext+mem.Off(hdrOff) != r.Off {
		t.Fatalf("the extent taken is at %#x, not the freed record's %#x", uint64(ext), uint64(r.Off)-hdrOff)
	}
	if h := p.header(g); h != (recHeader{}) {
		t.Fatalf("header of a large record being made: %+v", h)
	}
	rc, err = p.Recover(nil)
	if err != nil || rc.Finished != 0 {
		t.Fatalf("Recover while a large record is being made: %+v, %v", rc, err)
	}
	if got := heapStats(t, p); got.FreeBytes == h0.FreeBytes {
		t.Fatal("Recover freed the extent of a large record being made")
	}
	if err := p.heap.Free(ext); err != nil {
		t.Fatal(err)
	}
}

// largeSize is the size of the large records of these tests.
const largeSize = 8<<10 + 48

// allocLarge allocates a record of largeSize bytes with hd and checks
// that it is a large record.
func allocLarge(t *testing.T, p *Pool, hd *Handle) Record {
	t.Helper()
	r, err := hd.Alloc(largeSize)
	if err != nil {
		t.Fatal(err)
	}
	var loc located
	if err := p.locate(r.Off, &loc); err != nil || !loc.large {
		t.Fatalf("not a large record: %v", err)
	}
	return r
}
