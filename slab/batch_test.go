package slab

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/heapipc/ipc/internal/mem"
	"github.com/stretchr/testify/require"
)

// TestAllocFreeBatch: batches cross slab refills, every record is its
// own and intact, and FreeBatch frees every valid record of a batch that
// also holds a double free, a duplicate, offsets that are not records and
// large records, reporting exactly the bad ones.
func TestAllocFreeBatch(t *testing.T) {
	for _, c := range inProcess() {
		for _, align := range []int{DefaultAlign, CacheLineAlign} {
			t.Run(fmt.Sprintf("%v/align%d", c, align), func(t *testing.T) {
				p := newPool(t, c, 16<<20, Options{Align: align})
				h0 := heapStats(t, p)
				hd := p.NewHandle()
				var all []Record
				for _, size := range []int{0, 1, 64, 100, 1000, p.MaxSmall(), p.MaxSmall() + 1} {
					offs := make([]mem.Off, 300)
					if size > p.MaxSmall() {
						offs = offs[:3]
					}
					n, err := hd.AllocBatch(size, offs)
					if err != nil || n != len(offs) {
						t.Fatalf("AllocBatch(%d): %d, %v", size, n, err)
					}
					for _, off := range offs {
						b, err := p.Bytes(off)
						if err != nil || len(b) != size || uint64(off)%uint64(align) != 0 {
							t.Fatalf("Bytes(%#x) of a %d-byte record: %d bytes, %v", off, size, len(b), err)
						}
						r := Record{Off: off, Data: b}
						fill(r)
						all = append(all, r)
					}
				}
				mustCheck(t, p, "after the batches")
				for i, r := range all {
					if !intact(r.Data, r.Off) {
						t.Fatalf("record %d (%d bytes at %#x) overwritten", i, len(r.Data), r.Off)
					}
				}
				// Free one record first, then a batch of everything with
				// that record again, a duplicate and two bogus offsets.
				if err := p.Free(all[5].Off); err != nil {
					t.Fatal(err)
				}
				offs := make([]mem.Off, 0, len(all)+3)
				for _, r := range all {
					offs = append(offs, r.Off)
				}
				offs = append(offs[:10], append([]mem.Off{all[9].Off, all[0].Off + 16}, offs[10:]...)...)
				offs = append(offs, 64)
				err := p.FreeBatch(offs)
				if !errors.Is(err, ErrDoubleFree) || !errors.Is(err, ErrNotAllocated) {
					t.Fatalf("FreeBatch: %v", err)
				}
				if got := strings.Count(err.Error(), "\n") + 1; got != 4 {
					t.Fatalf("FreeBatch reported %d errors, want 4: %v", got, err)
				}
				for _, want := range []string{"record 5:", "record 10:", "record 11:", fmt.Sprintf("record %d:", len(offs)-1)} {
					if !strings.Contains(err.Error(), want) {
						t.Fatalf("FreeBatch error does not name %q: %v", want, err)
					}
				}
				if s := poolStats(t, p); s.LiveRecords != 0 || s.LargeRecords != 0 {
					t.Fatalf("after FreeBatch: %+v", s)
				}
				mustCheck(t, p, "after FreeBatch")
				if err := hd.Close(); err != nil {
					t.Fatal(err)
				}
				if h := heapStats(t, p); h.FreeBytes != h0.FreeBytes {
					t.Fatalf("heap free %d, was %d", h.FreeBytes, h0.FreeBytes)
				}
			})
		}
	}
}

// TestAllocBatchStamped: every record of a batch (small ones across
// slab refills, large ones) is a record of its size whose last 16 bytes
// are the tail, and nothing else of it or its neighbours is written; a
// size that is no multiple of 16 is refused before anything is
// allocated.
func TestAllocBatchStamped(t *testing.T) {
	for _, align := range []int{DefaultAlign, CacheLineAlign} {
		t.Run(fmt.Sprintf("align%d", align), func(t *testing.T) {
			p := newPool(t, heapCombo, 16<<20, Options{Align: align})
			h0 := heapStats(t, p)
			hd := p.NewHandle()
			tail := [2]uint64{0x0123456789abcdef, 0xfedcba9876543210}
			var want [16]byte
			binary.NativeEndian.PutUint64(want[:], tail[0])
			binary.NativeEndian.PutUint64(want[8:], tail[1])
			big := (p.MaxSmall() + 1 + 15) &^ 15
			var all []Record
			for _, size := range []int{16, 96, 1008, p.MaxSmall() &^ 15, big} {
				offs := make([]mem.Off, 300)
				if size > p.MaxSmall() {
					offs = offs[:3]
				}
				keys := make([]uint32, len(offs))
				n, err := hd.AllocBatchStamped(size, offs, keys, tail)
				if err != nil || n != len(offs) {
					t.Fatalf("AllocBatchStamped(%d): %d, %v", size, n, err)
				}
				for i, off := range offs {
					b, err := p.Bytes(off)
					if err != nil || len(b) != size || uint64(off)%uint64(align) != 0 {
						t.Fatalf("Bytes(%#x) of a %d-byte record: %d bytes, %v", off, size, len(b), err)
					}
					if keys[i] != p.RecordKey(off) || keys[i] == 0 {
						t.Fatalf("%d-byte record at %#x: key %#x, its header's %#x", size, off, keys[i], p.RecordKey(off))
					}
					if !bytes.Equal(b[size-16:], want[:]) {
						t.Fatalf("%d-byte record at %#x ends in %x, want the tail %x", size, off, b[size-16:], want)
					}
					r := Record{Off: off, Data: b[:size-16]}
					fill(r)
					all = append(all, r)
				}
			}
			mustCheck(t, p, "after the batches")
			for i, r := range all {
				b, _ := p.Bytes(r.Off)
				if !intact(r.Data, r.Off) || !bytes.Equal(b[len(b)-16:], want[:]) {
					t.Fatalf("record %d (%d bytes at %#x) overwritten", i, len(b), r.Off)
				}
			}
			for _, size := range []int{0, 8, 24, 1000} {
				offs := make([]mem.Off, 4)
				if n, err := hd.AllocBatchStamped(size, offs, make([]uint32, 4), tail); n != 0 || !errors.Is(err, ErrInvalidSize) {
					t.Fatalf("AllocBatchStamped(%d): %d, %v; want ErrInvalidSize", size, n, err)
				}
			}
			if n, err := hd.AllocBatchStamped(16, make([]mem.Off, 4), make([]uint32, 3), tail); n != 0 || !errors.Is(err, ErrInvalidSize) {
				t.Fatalf("AllocBatchStamped with 3 keys for 4 records: %d, %v; want ErrInvalidSize", n, err)
			}
			offs := make([]mem.Off, len(all))
			for i, r := range all {
				offs[i] = r.Off
			}
			if err := p.FreeBatch(offs); err != nil {
				t.Fatal(err)
			}
			mustCheck(t, p, "after FreeBatch")
			if err := hd.Close(); err != nil {
				t.Fatal(err)
			}
			if h := heapStats(t, p); h.FreeBytes != h0.FreeBytes {
				t.Fatalf("heap free %d, was %d", h.FreeBytes, h0.FreeBytes)
			}
		})
	}
}

// TestAllocBatchNoSpace: a batch that the heap cannot hold stops at the
// first record that does not fit and reports ErrNoSpace.
func TestAllocBatchNoSpace(t *testing.T) {
	p := newPool(t, heapCombo, 1<<20, Options{})
	hd := p.NewHandle()
	defer hd.Close()
	offs := make([]mem.Off, 1<<20/64)
	n, err := hd.AllocBatch(64, offs)
	if !errors.Is(err, ErrNoSpace) || n == 0 || n >= len(offs) {
		t.Fatalf("AllocBatch: %d, %v", n, err)
	}
	if err := p.FreeBatch(offs[:n]); err != nil {
		t.Fatal(err)
	}
	mustCheck(t, p, "after freeing the batch")
}

// TestFreeBatchRuns: FreeBatch frees records that lie back to back as
// runs of bits across bitmap words; a record of the run freed already
// (whether its slot lies in one word or across two, first in the run,
// last or between) is reported by its index and every other record of
// the run is freed, with the bitmap and the counts intact.
func TestFreeBatchRuns(t *testing.T) {
	p := newPool(t, heapCombo, 16<<20, Options{})
	hd := p.NewHandle()
	defer hd.Close()
	const n = 40
	// 80-byte records take 6 granules: their slots cross bitmap words
	// every ten or eleven records.
	for k := range n {
		offs := make([]mem.Off, n)
		if got, err := hd.AllocBatch(80, offs); err != nil || got != n {
			t.Fatalf("AllocBatch: %d, %v", got, err)
		}
		if err := p.Free(offs[k]); err != nil {
			t.Fatal(err)
		}
		err := p.FreeBatch(offs)
		if !errors.Is(err, ErrDoubleFree) || strings.Count(err.Error(), "\n") != 0 || !strings.Contains(err.Error(), fmt.Sprintf("record %d:", k)) {
			t.Fatalf("record %d freed twice: FreeBatch: %v", k, err)
		}
		if s := poolStats(t, p); s.LiveRecords != 0 {
			t.Fatalf("record %d freed twice: %d records still live", k, s.LiveRecords)
		}
		mustCheck(t, p, fmt.Sprintf("record %d freed twice", k))
	}
	// A batch with the runs in reverse order, and records of two slabs.
	offs := make([]mem.Off, 3000)
	if got, err := hd.AllocBatch(80, offs); err != nil || got != len(offs) {
		t.Fatalf("AllocBatch: %d, %v", got, err)
	}
	for i, j := 0, len(offs)-1; i < j; i, j = i+1, j-1 {
		offs[i], offs[j] = offs[j], offs[i]
	}
	if err := p.FreeBatch(offs[:1000]); err != nil {
		t.Fatal(err)
	}
	if err := p.FreeBatch(offs[1000:]); err != nil {
		t.Fatal(err)
	}
	if s := poolStats(t, p); s.LiveRecords != 0 {
		t.Fatalf("%d records still live", s.LiveRecords)
	}
	mustCheck(t, p, "after the reversed batch")
}

// TestLocateNext: a record expected right after a located one is found
// by its header alone, with the slot Locate would give; anything else at
// that place (a damaged header, a slab started over since) is refused,
// and a record elsewhere is located in full. FreeBatch's runs rely on
// the same check: a damaged header in the middle of a run fails that
// record alone.
func TestLocateNext(t *testing.T) {
	p := newPool(t, heapCombo, 16<<20, Options{})
	hd := p.NewHandle()
	defer hd.Close()
	other := p.NewHandle()
	defer other.Close()
	offs := make([]mem.Off, 8)
	if n, err := hd.AllocBatch(64, offs); err != nil || n != len(offs) {
		t.Fatalf("AllocBatch: %d, %v", n, err)
	}
	elsewhere, err := other.Alloc(64)
	if err != nil {
		t.Fatal(err)
	}
	located := func(off mem.Off) Slot {
		var s Slot
		if !hd.Locate(off, &s) {
			t.Fatalf("Locate(%#x) failed", off)
		}
		return s
	}
	var s Slot
	if !hd.LocateNext(&s, offs[0], &s) || s != located(offs[0]) {
		t.Fatalf("LocateNext from nothing: %+v, Locate gives %+v", s, located(offs[0]))
	}
	for _, off := range offs[1:4] {
		if !hd.LocateNext(&s, off, &s) || s != located(off) {
			t.Fatalf("LocateNext(%#x): %+v, Locate gives %+v", off, s, located(off))
		}
	}
	// Into another slot: the previous one is left as it was.
	prev, want := located(offs[2]), located(offs[2])
	var out Slot
	if !hd.LocateNext(&prev, offs[3], &out) || out != located(offs[3]) || prev != want {
		t.Fatalf("LocateNext into another slot: %+v from %+v", out, prev)
	}
	// Freed meanwhile: only the place counts (liveness is Live's).
	if err := p.Free(offs[3]); err != nil {
		t.Fatal(err)
	}
	if !hd.LocateNext(&s, offs[4], &s) || s != located(offs[4]) {
		t.Fatalf("LocateNext after a freed record: %+v", s)
	}
	// Not the next one, and in another slab: located in full.
	if !hd.LocateNext(&s, offs[1], &s) || s != located(offs[1]) {
		t.Fatalf("LocateNext of an earlier record: %+v", s)
	}
	if !hd.LocateNext(&s, elsewhere.Off, &s) || s.Off() != elsewhere.Off {
		t.Fatalf("LocateNext of a record in another slab: %+v", s)
	}
	// A damaged header at the expected place.
	s = located(offs[4])
	g := uint64(offs[5])/granule - 1
	w1 := p.plain[2*g+1]
	p.plain[2*g+1] ^= 1 << 40
	if hd.LocateNext(&s, offs[5], &s) {
		t.Fatalf("LocateNext accepted a damaged header: %+v", s)
	}
	// The damaged record fails FreeBatch alone, in the middle of a run.
	err = p.FreeBatch(offs[4:7])
	if !errors.Is(err, ErrNotAllocated) || !strings.Contains(err.Error(), "record 1:") || strings.Count(err.Error(), "\n") != 0 {
		t.Fatalf("FreeBatch with a damaged header in the middle: %v", err)
	}
	p.plain[2*g+1] = w1
	// A valid header of another record copied there.
	g1 := uint64(offs[1])/granule - 1
	w0 := p.plain[2*g]
	p.plain[2*g], p.plain[2*g+1] = p.plain[2*g1], p.plain[2*g1+1]
	s = located(offs[4])
	if hd.LocateNext(&s, offs[5], &s) {
		t.Fatalf("LocateNext accepted another record's header: %+v", s)
	}
	p.plain[2*g], p.plain[2*g+1] = w0, w1
	if err := p.FreeBatch(offs[5:6]); err != nil {
		t.Fatalf("freeing the mended record: %v", err)
	}
	// The slab started over (another generation) since s was located:
	// the header at the expected place is of the old one.
	s = located(offs[6])
	sh := &p.slabs[s.sl.slab/slabHeaderSize]
	id := sh.Ident.Load()
	sh.Ident.Store(ident(genOf(id) + 1))
	if hd.LocateNext(&s, offs[7], &s) {
		t.Fatalf("LocateNext accepted a header of the slab's old generation: %+v", s)
	}
	sh.Ident.Store(id)
	if err := p.FreeBatch(append(offs[:3:3], offs[7], elsewhere.Off)); err != nil {
		t.Fatal(err)
	}
	if st := poolStats(t, p); st.LiveRecords != 0 {
		t.Fatalf("%d records still live", st.LiveRecords)
	}
	mustCheck(t, p, "at the end")
}

// TestForgedSlabAtHeapEnd: a slab header forged (valid words, the
// buffer's salt and a live generation) in the last pages of the heap,
// with a record header whose data runs past the heap's end: Bytes, Free
// and FreeBatch refuse the record instead of slicing past the mapping.
func TestForgedSlabAtHeapEnd(t *testing.T) {
	p := newPool(t, heapCombo, 16<<20, Options{})
	hd := p.NewHandle()
	defer hd.Close()
	real, err := hd.Alloc(64)
	require.NoError(t, err)
	sl, ok := p.slotOf(real.Off, &slabSeen{})
	require.True(t, ok)
	if uint64(p.hi) != uint64(len(p.b)) {
		t.Skipf("the heap ends %d bytes before the mapping: nothing to slice past", uint64(len(p.b))-uint64(p.hi))
	}
	fake := (uint64(p.hi) - 2*p.ps) &^ (p.ps - 1)
	require.Greater(t, fake, sl.slab)
	for w := uint64(0); w < 5; w++ {
		p.words[fake/8+w].Store(p.words[sl.slab/8+w].Load())
	}
	p.words[fake/8+2].Store(fake) // Self
	ln := uint32(slotGranules(64, p.align))
	pos := uint32((uint64(p.hi)-fake)/granule - 2) // data starts 16 bytes before the end
	g := fake/granule + uint64(pos)
	key := p.salt ^ genOf(p.words[fake/8].Load())
	p.plain[2*g] = packHalves(pos, ln)
	p.plain[2*g+1] = packHalves(64, recCheck(pos, ln, 64, key))
	off := mem.Off((g + 1) * granule)
	require.Less(t, uint64(off), uint64(p.hi))
	_, err = p.Bytes(off)
	require.ErrorIs(t, err, ErrNotAllocated)
	require.ErrorIs(t, p.Free(off), ErrNotAllocated)
	require.ErrorIs(t, p.FreeBatch([]mem.Off{off, off + mem.Off(ln)*granule}), ErrNotAllocated)
	clear(p.words[fake/8 : fake/8+5])
	p.plain[2*g], p.plain[2*g+1] = 0, 0
	require.NoError(t, p.Free(real.Off))
}

// TestLocateRuns: a consumer's batch is located as runs of records that
// lie back to back in a slab (a run per slab, or per record where records
// of several handles alternate), with the bits Locate gives each record;
// the first record that is not what the caller says (another size, a
// damaged header, a large record, a slab of another generation) ends the
// prefix located; RunLive sees a record freed since; FreeRuns frees the
// runs, reports a record freed already by its index, and frees a run
// whose slab changed identity record by record. Each located record's
// key is its header's check.
func TestLocateRuns(t *testing.T) {
	p := newPool(t, heapCombo, 16<<20, Options{})
	hd := p.NewHandle()
	defer hd.Close()
	other := p.NewHandle()
	defer other.Close()
	const n = 1500 // 96-byte slots: three slabs
	offs := make([]mem.Off, n)
	if got, err := hd.AllocBatch(80, offs); err != nil || got != n {
		t.Fatalf("AllocBatch: %d, %v", got, err)
	}
	sizes, keys := make([]uint32, n), make([]uint32, n)
	for i := range sizes {
		sizes[i] = 80
	}
	slabOf := func(off mem.Off) uint64 {
		var s Slot
		if !hd.Locate(off, &s) {
			t.Fatalf("Locate(%#x) failed", off)
		}
		return s.sl.slab
	}
	k, runs := locateAll(p, offs, sizes, keys)
	if k != n {
		t.Fatalf("LocateRuns located %d of %d", k, n)
	}
	i := 0
	for _, r := range runs {
		var first Slot
		hd.Locate(offs[i], &first)
		if r.Count == 0 || r.slab != first.sl.slab || r.bit != first.sl.bit || r.n != uint64(r.Count)*6 {
			t.Fatalf("run %+v for records from %d: first slot %+v", r, i, first.sl)
		}
		for j, off := range offs[i : i+r.Count] {
			if slabOf(off) != r.slab {
				t.Fatalf("run %+v holds %#x of another slab", r, off)
			}
			if k, want := keys[i+j], p.RecordKey(off); k != want || k == 0 {
				t.Fatalf("record %#x: key %#x, header %#x", off, k, want)
			}
		}
		if i+r.Count < n && slabOf(offs[i+r.Count]) == r.slab {
			t.Fatalf("run %+v ends before the end of its slab's records", r)
		}
		if !p.RunLive(&r) {
			t.Fatalf("run %+v not live", r)
		}
		i += r.Count
	}
	if i != n || len(runs) != 3 {
		t.Fatalf("%d runs covering %d records", len(runs), i)
	}
	// Records of mixed sizes back to back: still runs, with each record's
	// key.
	var moffs []mem.Off
	var msizes []uint32
	for j := range 30 {
		r, err := other.Alloc(16 + 24*(j%7))
		if err != nil {
			t.Fatal(err)
		}
		moffs, msizes = append(moffs, r.Off), append(msizes, uint32(len(r.Data)))
	}
	mkeys := make([]uint32, len(moffs))
	k, mruns := locateAll(p, moffs, msizes, mkeys)
	if k != len(moffs) || len(mruns) > 2 {
		t.Fatalf("mixed sizes: %d located in %d runs", k, len(mruns))
	}
	for j, off := range moffs {
		if want := p.RecordKey(off); mkeys[j] != want {
			t.Fatalf("mixed sizes: record %d: key %#x, header %#x", j, mkeys[j], want)
		}
	}
	if err := p.FreeRuns(mruns, moffs); err != nil {
		t.Fatal(err)
	}

	// Records of two handles, alternating: a run each.
	mixed := make([]mem.Off, 0, 8)
	for j := range 4 {
		r, err := other.Alloc(80)
		if err != nil {
			t.Fatal(err)
		}
		mixed = append(mixed, offs[j], r.Off)
	}
	if k, runs := locateAll(p, mixed, sizes[:8], keys); k != 8 || len(runs) != 8 {
		t.Fatalf("alternating records: %d located in %d runs", k, len(runs))
	}

	// What ends the prefix.
	g := uint64(offs[10])/granule - 1
	w1 := p.plain[2*g+1]
	p.plain[2*g+1] ^= 1 << 40
	if k, _ := locateAll(p, offs[:20], sizes, keys); k != 10 {
		t.Fatalf("a damaged header at 10: %d located", k)
	}
	p.plain[2*g+1] = w1
	sizes[10] = 64
	if k, _ := locateAll(p, offs[:20], sizes, keys); k != 10 {
		t.Fatalf("a record of another size at 10: %d located", k)
	}
	sizes[10] = 80
	large, err := hd.Alloc(p.MaxSmall() + 1)
	if err != nil {
		t.Fatal(err)
	}
	if k, _ := locateAll(p, []mem.Off{offs[0], large.Off}, []uint32{80, uint32(p.MaxSmall() + 1)}, keys); k != 1 {
		t.Fatalf("a large record: %d located", k)
	}
	if err := p.Free(large.Off); err != nil {
		t.Fatal(err)
	}

	// Offsets that no run covers are reported, not dropped.
	if err := p.FreeRuns(nil, offs[:1]); !errors.Is(err, ErrInvalidArgument) {
		t.Fatalf("FreeRuns without runs: %v", err)
	}

	// A record of the first run freed since: the run is no longer live,
	// and FreeRuns reports it and frees the rest.
	if err := p.Free(offs[7]); err != nil {
		t.Fatal(err)
	}
	if p.RunLive(&runs[0]) {
		t.Fatal("RunLive: a run with a freed record")
	}
	// The second run's slab changes identity (as if started over):
	// FreeRuns frees its records one by one, which refuses them.
	sh := &p.slabs[runs[1].slab/slabHeaderSize]
	id := sh.Ident.Load()
	sh.Ident.Store(ident(genOf(id) + 1))
	if p.RunLive(&runs[1]) {
		t.Fatal("RunLive: a run of a slab of another generation")
	}
	err = p.FreeRuns(runs, offs)
	sh.Ident.Store(id)
	if !errors.Is(err, ErrDoubleFree) || !strings.Contains(err.Error(), "record 7:") {
		t.Fatalf("FreeRuns with record 7 freed already: %v", err)
	}
	if got := strings.Count(err.Error(), "\n") + 1; got != 1+runs[1].Count {
		t.Fatalf("FreeRuns reported %d errors, want %d: %v", got, 1+runs[1].Count, err)
	}
	second := offs[runs[0].Count : runs[0].Count+runs[1].Count]
	if !strings.Contains(err.Error(), fmt.Sprintf("record %d:", runs[0].Count)) {
		t.Fatalf("FreeRuns does not name the second run's first record: %v", err)
	}
	if err := p.FreeBatch(second); err != nil {
		t.Fatalf("freeing the second run with its slab's identity back: %v", err)
	}
	if err := p.FreeBatch([]mem.Off{mixed[1], mixed[3], mixed[5], mixed[7]}); err != nil {
		t.Fatal(err)
	}
	if s := poolStats(t, p); s.LiveRecords != 0 {
		t.Fatalf("%d records still live", s.LiveRecords)
	}
	mustCheck(t, p, "at the end")
}

// TestAllocOff: AllocOff and AllocKeyed carve what Alloc would (records
// of every size class, large ones, across slab refills), AllocKeyed's key
// is what RecordKey reads (0 for a large record), and the records free
// alike.
func TestAllocOff(t *testing.T) {
	p := newPool(t, heapCombo, 16<<20, Options{})
	hd := p.NewHandle()
	defer hd.Close()
	var offs []mem.Off
	for i := range 3000 {
		size := []int{0, 1, 64, 1000, p.MaxSmall(), p.MaxSmall() + 1}[i%6]
		var off mem.Off
		var err error
		if i%2 == 0 {
			off, err = hd.AllocOff(size)
		} else {
			var key uint32
			off, key, err = hd.AllocKeyed(size)
			if err == nil && (key != p.RecordKey(off) || key == 0) {
				t.Fatalf("AllocKeyed(%d): key %#x, its header's %#x", size, key, p.RecordKey(off))
			}
		}
		if err != nil {
			t.Fatalf("AllocOff(%d): %v", size, err)
		}
		b, err := p.Bytes(off)
		if err != nil || len(b) != size {
			t.Fatalf("Bytes of a %d-byte record: %d bytes, %v", size, len(b), err)
		}
		offs = append(offs, off)
	}
	mustCheck(t, p, "after AllocOff")
	if err := p.FreeBatch(offs); err != nil {
		t.Fatal(err)
	}
	if s := poolStats(t, p); s.LiveRecords != 0 || s.LargeRecords != 0 {
		t.Fatalf("after FreeBatch: %+v", s)
	}
	hd.Close()
	if _, err := hd.AllocOff(64); !errors.Is(err, ErrClosed) {
		t.Fatalf("AllocOff on a closed handle: %v", err)
	}
}
