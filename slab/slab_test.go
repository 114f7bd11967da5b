package slab

import (
	"encoding/binary"
	"errors"
	"fmt"
	"testing"
	"unsafe"

	"github.com/heapipc/ipc/alloc"
	"github.com/heapipc/ipc/internal/mem"
	"github.com/heapipc/ipc/internal/sys"
	"github.com/heapipc/ipc/internal/testutil"
	"github.com/stretchr/testify/require"
)

func TestLayout(t *testing.T) {
	var sh slabHeader
	var rh recHeader
	testutil.RequirePortableLayouts(t, &sh, &rh)
	cases := []struct {
		name      string
		got, want uintptr
	}{
		{"sizeof(slabHeader)", unsafe.Sizeof(sh), slabHeaderSize},
		{"Ident", unsafe.Offsetof(sh.Ident), 0},
		{"Salt", unsafe.Offsetof(sh.Salt), 8},
		{"Pages", unsafe.Offsetof(sh.Pages), 12},
		{"Self", unsafe.Offsetof(sh.Self), 16},
		{"RecBase", unsafe.Offsetof(sh.RecBase), 24},
		{"Limit", unsafe.Offsetof(sh.Limit), 28},
		{"Words", unsafe.Offsetof(sh.Words), 32},
		{"Align", unsafe.Offsetof(sh.Align), 36},
		{"Version", unsafe.Offsetof(sh.Version), 40},
		{"Owner", unsafe.Offsetof(sh.Owner), mem.CacheLine},
		{"Returner", unsafe.Offsetof(sh.Returner), 136},
		{"Count", unsafe.Offsetof(sh.Count), 144},
		{"Retired", unsafe.Offsetof(sh.Retired), 152},
		{"sizeof(recHeader)", unsafe.Sizeof(rh), HeaderSize},
		{"recHeader.Pos", unsafe.Offsetof(rh.Pos), 0},
		{"recHeader.Len", unsafe.Offsetof(rh.Len), 4},
		{"recHeader.Size", unsafe.Offsetof(rh.Size), 8},
		{"recHeader.Check", unsafe.Offsetof(rh.Check), 12},
	}
	for _, c := range cases {
		if c.got != c.want {
			t.Errorf("%s = %d, want %d", c.name, c.got, c.want)
		}
	}
	// The header words the hot paths pack are the fields as laid out
	// (the build tags of endian_*.go name this architecture right).
	w := packHalves(0x11111111, 0x22222222)
	if h := (*[2]uint32)(unsafe.Pointer(&w)); littleEndian != (binary.NativeEndian.Uint16([]byte{1, 0}) == 1) || h[0] != 0x11111111 || h[1] != 0x22222222 {
		t.Errorf("littleEndian %v: packHalves lays out %#x as %#x", littleEndian, w, *h)
	}
}

func TestGeometry(t *testing.T) {
	for _, size := range []uint64{4096, 8192, 64 << 10, 1 << 20, 64 << 20} {
		for _, align := range []uint64{16, 32, 64, 128, 4096} {
			g := slabGeometry(size, align)
			bits := uint64(g.limit - g.recBase)
			switch {
			case g.limit != uint32(size/granule):
				t.Errorf("%d/%d: limit %d", size, align, g.limit)
			case slabHeaderSize+8*uint64(g.words) > uint64(g.recBase)*granule:
				t.Errorf("%d/%d: bitmap of %d words overlaps the first record at granule %d", size, align, g.words, g.recBase)
			case uint64(g.words)*64 < bits || uint64(g.words)*64 >= bits+64:
				t.Errorf("%d/%d: %d words for %d bits", size, align, g.words, bits)
			case (uint64(g.recBase)+1)*granule%align != 0:
				t.Errorf("%d/%d: first record's data at %d is misaligned", size, align, (g.recBase+1)*granule)
			}
		}
	}
	for _, c := range []struct{ size, align, want uint64 }{{0, 16, 2}, {1, 16, 2}, {16, 16, 2}, {17, 16, 3}, {64, 16, 5}, {64, 64, 8}, {48, 64, 4}, {49, 64, 8}} {
		if got := slotGranules(c.size, c.align); got != c.want {
			t.Errorf("slot of %d bytes aligned %d: %d granules, want %d", c.size, c.align, got, c.want)
		}
	}
	seen := map[uint32]bool{}
	for pos := uint32(1); pos < 200; pos++ {
		c := recCheck(pos, 5, 64, 0x1234)
		if c == 0 || seen[c] {
			t.Fatalf("check %#x repeats or is zero", c)
		}
		seen[c] = true
	}
}

// TestAllocFree allocates records of many sizes on every backend, checks
// alignment, isolation and views, frees them in every way, and gets every
// byte back.
func TestAllocFree(t *testing.T) {
	for _, c := range inProcess() {
		for _, align := range []int{DefaultAlign, CacheLineAlign} {
			t.Run(fmt.Sprintf("%v/align%d", c, align), func(t *testing.T) {
				p := newPool(t, c, 8<<20, Options{Align: align})
				h0 := heapStats(t, p)
				hd := p.NewHandle()
				sizes := []int{0, 1, 15, 16, 17, 64, 100, 1000, 4096, p.MaxSmall(), p.MaxSmall() + 1, 100 << 10, 1 << 20}
				var recs []Record
				for round := range 30 {
					for i, n := range sizes {
						if i >= len(sizes)-3 && round >= 3 {
							break // large records in the first rounds only
						}
						r, err := hd.Alloc(n)
						if err != nil {
							t.Fatalf("alloc %d: %v", n, err)
						}
						if len(r.Data) != n || uint64(r.Off)%uint64(align) != 0 ||
							uintptr(unsafe.Pointer(unsafe.SliceData(r.Data)))%uintptr(align) != 0 {
							t.Fatalf("record of %d bytes at %#x: len %d, misaligned for %d", n, r.Off, len(r.Data), align)
						}
						if off, err := p.OffsetOf(r.Data); err != nil || off != r.Off {
							t.Fatalf("OffsetOf: %#x %v, want %#x", off, err, r.Off)
						}
						fill(r)
						recs = append(recs, r)
					}
					if round == 0 {
						mustCheck(t, p, "after the first round")
					}
				}
				s := poolStats(t, p)
				if s.LiveRecords+s.LargeRecords != len(recs) || s.LargeRecords != 3*3 || s.ActiveSlabs < 1 || s.ActiveSlabs > 1+maxSpares || s.Slabs < 2 {
					t.Fatalf("stats %+v with %d records", s, len(recs))
				}
				mustCheck(t, p, "all allocated")
				for i, r := range recs {
					if !intact(r.Data, r.Off) {
						t.Fatalf("record %d (%d bytes at %#x) overwritten", i, len(r.Data), r.Off)
					}
					b, err := p.Bytes(r.Off)
					if err != nil || len(b) != len(r.Data) || (len(b) > 0 && &b[0] != &r.Data[0]) {
						t.Fatalf("Bytes(%#x): %d bytes, %v", r.Off, len(b), err)
					}
					var ferr error
					switch i % 3 {
					case 0:
						ferr = p.Free(r.Off)
					case 1:
						ferr = p.FreeRecord(r)
					default:
						if len(r.Data) == 0 {
							ferr = hd.Free(r.Off)
						} else {
							ferr = p.FreeBytes(r.Data)
						}
					}
					if ferr != nil {
						t.Fatalf("free %d (%d bytes): %v", i, len(r.Data), ferr)
					}
				}
				mustCheck(t, p, "all freed, handle open")
				if s := poolStats(t, p); s.Slabs != s.ActiveSlabs || s.ActiveSlabs < 1 || s.ActiveSlabs > 1+maxSpares || s.LiveRecords != 0 || s.LargeRecords != 0 {
					t.Fatalf("after freeing: %+v (only the handle's slab and spares should remain)", s)
				}
				hd.Close()
				if _, err := hd.Alloc(1); !errors.Is(err, ErrClosed) {
					t.Fatalf("alloc on a closed handle: %v", err)
				}
				mustCheck(t, p, "handle closed")
				if h := heapStats(t, p); h.FreeBytes != h0.FreeBytes || h.FreeExtents != 1 {
					t.Fatalf("heap after everything was freed: %+v, want %d free", h, h0.FreeBytes)
				}
			})
		}
	}
}

// TestSlabReturn: a slab goes back to the heap when it is retired and all
// its records are free, in either order; a handle keeps its last full
// slabs as spares, active, until it closes.
func TestSlabReturn(t *testing.T) {
	p := newPool(t, heapCombo, 4<<20, Options{SlabSize: 16 << 10})
	h0 := heapStats(t, p)
	hd := p.NewHandle()
	var recs []Record
	for len(recs) == 0 || poolStats(t, p).Slabs < maxSpares+3 {
		r, err := hd.Alloc(16)
		if err != nil {
			t.Fatal(err)
		}
		recs = append(recs, r)
	}
	// Two retired slabs, the spares and the current one.
	if s := poolStats(t, p); s.RetiredSlabs != 2 || s.ActiveSlabs != maxSpares+1 {
		t.Fatalf("after filling %d slabs: %+v", maxSpares+2, s)
	}
	// Free the first slab's records: retired, it goes back at once.
	first := recs[0].Off &^ mem.Off(p.ps-1)
	n := 0
	for _, r := range recs {
		if r.Off&^mem.Off(p.ps-1) < first+mem.Off(p.slabSize) && r.Off >= first {
			if err := p.Free(r.Off); err != nil {
				t.Fatal(err)
			}
			n++
		}
	}
	if s := poolStats(t, p); s.Slabs != maxSpares+2 || s.RetiredSlabs != 1 {
		t.Fatalf("after freeing the %d records of the first slab: %+v", n, s)
	}
	if err := p.Free(recs[0].Off); !errors.Is(err, ErrDoubleFree) {
		t.Fatalf("free of a record of a returned slab: %v", err)
	}
	for _, r := range recs[n:] {
		if err := p.Free(r.Off); err != nil {
			t.Fatal(err)
		}
	}
	if s := poolStats(t, p); s.Slabs != maxSpares+1 || s.ActiveSlabs != maxSpares+1 {
		t.Fatalf("the spares and the current slab should stay: %+v", s)
	}
	mustCheck(t, p, "all free, the handle open")
	hd.Trim()
	if s := poolStats(t, p); s.Slabs != 1 || s.ActiveSlabs != 1 {
		t.Fatalf("Trim should give the free spares back: %+v", s)
	}
	hd.Close()
	if h := heapStats(t, p); h.FreeBytes != h0.FreeBytes {
		t.Fatalf("closing a handle with no live records should return its slabs")
	}
}

// cycle allocates n records of size bytes from hd, freeing each once lag
// newer ones are live and checking it intact first, and fails if the pool
// ever has more slabs than the handle keeps. It returns the records still
// live and the number of places records were allocated at.
func cycle(t *testing.T, p *Pool, hd *Handle, n, size, lag int) (live []Record, places int) {
	t.Helper()
	seen := map[mem.Off]bool{}
	var q []Record
	for i := 0; i < n; i++ {
		r, err := hd.Alloc(size)
		if err != nil {
			t.Fatal(err)
		}
		fill(r)
		seen[r.Off] = true
		q = append(q, r)
		if len(q) > lag {
			if !intact(q[0].Data, q[0].Off) {
				t.Fatalf("record %#x overwritten", q[0].Off)
			}
			if err := p.Free(q[0].Off); err != nil {
				t.Fatal(err)
			}
			q = q[1:]
		}
		if s := poolStats(t, p); s.Slabs > maxSpares+1 {
			t.Fatalf("%d-byte record %d: %d slabs: %+v", size, i, s.Slabs, s)
		}
	}
	return q, len(seen)
}

// TestSparesStartOver: a handle whose small records are freed a little
// behind its allocation (a consumer lagging by up to two slabs) cycles
// through its own slabs: it takes no slab from the heap after the first
// three, and every record it hands out is intact until freed; so does one
// of records a slab holds only fifteen of.
func TestSparesStartOver(t *testing.T) {
	p := newPool(t, heapCombo, 4<<20, Options{SlabSize: 16 << 10})
	h0 := heapStats(t, p)
	hd := p.NewHandle()
	// Records of 16 bytes, about 1.8 slabs of 16 KiB behind.
	q, _ := cycle(t, p, hd, 20000, 16, 900)
	mustCheck(t, p, "cycling")
	for _, r := range q {
		if err := p.Free(r.Off); err != nil {
			t.Fatal(err)
		}
	}
	// Records of which a slab holds only fifteen cycle the same way when
	// freed a little behind (a lag of about 1.3 slabs): fifteen records
	// in each of the three slabs, not a walk through the heap's fresh
	// pages...
	q, places := cycle(t, p, hd, 600, 1000, 20)
	if places > (maxSpares+1)*16 {
		t.Fatalf("600 records of 1000 bytes at %d places", places)
	}
	// ... and when they queue up over more slabs than the handle keeps,
	// the oldest full slabs are retired.
	for range 80 { // about five more slabs
		r, err := hd.Alloc(1000)
		if err != nil {
			t.Fatal(err)
		}
		q = append(q, r)
	}
	if s := poolStats(t, p); s.ActiveSlabs != maxSpares+1 || s.RetiredSlabs < 3 {
		t.Fatalf("queued 1000-byte records: %+v", s)
	}
	for _, r := range q {
		if err := p.Free(r.Off); err != nil {
			t.Fatal(err)
		}
	}
	hd.Close()
	mustCheck(t, p, "closed")
	if h := heapStats(t, p); h.FreeBytes != h0.FreeBytes {
		t.Fatalf("heap free %d, was %d", h.FreeBytes, h0.FreeBytes)
	}
}

// TestFreeErrors: double frees, offsets and views that are not records,
// records of another buffer: each is an error and nothing changes.
func TestFreeErrors(t *testing.T) {
	p := newPool(t, heapCombo, 4<<20, Options{})
	other := newPool(t, heapCombo, 1<<20, Options{})
	hd := p.NewHandle()
	defer hd.Close()
	oh := other.NewHandle()
	defer oh.Close()
	var live []Record
	for _, n := range []int{64, 64, 200, 64, 50 << 10} {
		r, err := hd.Alloc(n)
		if err != nil {
			t.Fatal(err)
		}
		fill(r)
		live = append(live, r)
	}
	small, freedSmall := live[0], live[1]
	large, _ := hd.Alloc(100 << 10)
	if err := p.Free(freedSmall.Off); err != nil {
		t.Fatal(err)
	}
	if err := p.FreeRecord(large); err != nil {
		t.Fatal(err)
	}
	live = append(live[:1], live[2:]...)
	foreign, _ := oh.Alloc(64)
	before := poolStats(t, p)
	lo, hi := p.heap.Range()
	slabOff := small.Off &^ mem.Off(p.ps-1)
	cases := []struct {
		name string
		err  error
		want error
	}{
		{"double free", p.Free(freedSmall.Off), ErrDoubleFree},
		{"double free by view", p.FreeBytes(freedSmall.Data), ErrDoubleFree},
		{"double free of a large record", p.Free(large.Off), ErrDoubleFree},
		{"inside a record", p.Free(small.Off + 16), ErrNotAllocated},
		{"inside a large record", p.Free(live[3].Off + 4096), ErrNotAllocated},
		{"misaligned", p.Free(small.Off + 1), ErrNotAllocated},
		{"the header", p.Free(small.Off - 16), ErrNotAllocated},
		{"the slab header", p.Free(slabOff + 16), ErrNotAllocated},
		{"past the allocated records", p.Free(live[2].Off + 1024), ErrNotAllocated},
		{"heap metadata", p.Free(lo - 4096 + 64), ErrNotAllocated},
		{"region header", p.Free(64), ErrNotAllocated},
		{"zero", p.Free(0), ErrNotAllocated},
		{"past the end", p.Free(hi + 64), ErrNotAllocated},
		{"huge", p.Free(^mem.Off(15)), ErrNotAllocated},
		{"sub-slice view", p.FreeBytes(live[1].Data[16:]), ErrNotAllocated},
		{"shortened view", p.FreeBytes(live[1].Data[:10]), ErrNotAllocated},
		{"view of another buffer", p.FreeBytes(foreign.Data), ErrForeign},
		{"record of another buffer", p.FreeRecord(foreign), ErrForeign},
		{"Go memory", p.FreeBytes(make([]byte, 64)), ErrForeign},
		{"empty view", p.FreeBytes(nil), ErrNotAllocated},
		{"record with a mismatched view", p.FreeRecord(Record{Off: live[1].Off, Data: live[2].Data}), ErrNotAllocated},
	}
	for _, c := range cases {
		if !errors.Is(c.err, c.want) {
			t.Errorf("%s: %v, want %v", c.name, c.err, c.want)
		}
	}
	// A foreign offset that happens to be a record here is not
	// detectable: offsets carry no buffer identity (views do).
	if _, err := p.Bytes(freedSmall.Off); !errors.Is(err, ErrNotAllocated) {
		t.Errorf("Bytes of a freed record: %v", err)
	}
	if s := poolStats(t, p); s != before {
		t.Fatalf("failed frees changed the pool:\n%+v\n%+v", s, before)
	}
	for _, r := range live {
		if !intact(r.Data, r.Off) {
			t.Fatalf("record %#x damaged", r.Off)
		}
	}
	mustCheck(t, p, "after failed frees")
	mustCheck(t, other, "other buffer")
	for _, r := range live {
		if err := p.FreeRecord(r); err != nil {
			t.Fatal(err)
		}
	}
	other.FreeRecord(foreign)
}

func TestOptions(t *testing.T) {
	p := newPool(t, heapCombo, 1<<20, Options{})
	for _, o := range []Options{{SlabSize: 1000}, {SlabSize: -4096}, {SlabSize: 128 << 20}, {Align: 8}, {Align: 48}, {Align: 8192}} {
		if _, err := New(p.heap, o); !errors.Is(err, ErrInvalidArgument) {
			t.Errorf("options %+v: %v", o, err)
		}
	}
	if p.MaxSmall() < 7<<10 || p.MaxSmall() > 8<<10 {
		t.Errorf("records up to %d bytes stay in 64 KiB slabs", p.MaxSmall())
	}
	hd := p.NewHandle()
	if _, err := hd.Alloc(-1); !errors.Is(err, ErrInvalidSize) {
		t.Errorf("alloc(-1): %v", err)
	}
	if _, err := hd.Alloc(2 << 20); !errors.Is(err, ErrNoSpace) {
		t.Errorf("alloc of more than the heap: %v", err)
	}
	hd.Close()
}

// TestExhaustion: when the heap cannot give a new slab, Alloc fails with
// ErrNoSpace and nothing changes; the current slab still serves records
// that fit.
func TestExhaustion(t *testing.T) {
	p := newPool(t, heapCombo, 1<<20, Options{SlabSize: 16 << 10})
	hd := p.NewHandle()
	var recs []Record
	for {
		r, err := hd.Alloc(1000)
		if errors.Is(err, ErrNoSpace) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		recs = append(recs, r)
	}
	before := poolStats(t, p)
	if _, err := hd.Alloc(1000); !errors.Is(err, ErrNoSpace) {
		t.Fatal(err)
	}
	if _, err := hd.Alloc(200 << 10); !errors.Is(err, ErrNoSpace) {
		t.Fatal(err)
	}
	if s := poolStats(t, p); s != before {
		t.Fatalf("failed allocations changed the pool")
	}
	if before.Heap.FreeBytes >= 16<<10 {
		t.Fatalf("heap not exhausted: %+v", before.Heap)
	}
	// Small records still fit in the current slab's tail.
	if r, err := hd.Alloc(16); err == nil {
		recs = append(recs, r)
	}
	mustCheck(t, p, "exhausted")
	for _, r := range recs {
		p.Free(r.Off)
	}
	hd.Close()
	if s := heapStats(t, p); s.AllocExtents != 0 {
		t.Fatalf("%+v", s)
	}
}

// TestReclaimHalfDone: a slab taken by a process that died before writing
// its header, and a slab whose returner died, are given back by Recover.
func TestReclaimHalfDone(t *testing.T) {
	p := newPool(t, heapCombo, 4<<20, Options{})
	h0 := heapStats(t, p)
	dead := testutil.DeadIdentity(t)
	if _, err := p.heap.AllocFor(t.Context(), int(p.slabSize), alloc.KindSlab, dead); err != nil {
		t.Fatal(err)
	}
	if _, err := p.heap.AllocFor(t.Context(), 3*4096, alloc.KindLarge, dead); err != nil {
		t.Fatal(err)
	}
	hd := p.NewHandle()
	r, _ := hd.Alloc(64)
	hd.Close()
	// The last free would return the slab; pretend a dead process won the
	// returner's CAS and died before freeing the extent.
	sh := &p.slabs[(r.Off&^mem.Off(p.ps-1))/slabHeaderSize]
	sh.Returner.Store(uint64(dead))
	if err := p.Free(r.Off); err != nil {
		t.Fatal(err)
	}
	if s := poolStats(t, p); s.Slabs != 2 {
		t.Fatalf("%+v", s)
	}
	if err := p.Check(); err == nil {
		t.Fatalf("check passes with a half-made slab")
	}
	rc, err := p.Recover(nil)
	if err != nil || rc.Returned != 3 {
		t.Fatalf("recover: %+v %v", rc, err)
	}
	if h := heapStats(t, p); h.FreeBytes != h0.FreeBytes {
		t.Fatalf("heap %+v", h)
	}
	mustCheck(t, p, "end")
}

// TestReclaimReturnCut: a returner that died inside the heap's critical
// section, after its check had cleared the slab's magic and before the
// heap freed the extent, leaves a slab that Recover gives back although
// its allocator (this process) is alive. A slab being made whose memory
// still holds that header, taken but not yet initialised, is left alone.
func TestReclaimReturnCut(t *testing.T) {
	p := newPool(t, heapCombo, 4<<20, Options{})
	h0 := heapStats(t, p)
	dead := testutil.DeadIdentity(t)
	hd := p.NewHandle()
	r, err := hd.Alloc(64)
	require.NoError(t, err)
	hd.Close()
	slab := r.Off &^ mem.Off(p.ps-1)
	sh := &p.slabs[slab/slabHeaderSize]
	// The last free would return the slab: a dead process won the
	// returner's CAS, its check cleared the magic (as finishReturn's
	// does), and it died before the heap freed the extent.
	sh.Returner.Store(uint64(dead))
	require.NoError(t, p.Free(r.Off))
	sh.Ident.Store(sh.Ident.Load() &^ (1<<32 - 1))
	require.Equal(t, 1, int(heapStats(t, p).AllocExtents), "the extent is left allocated")
	require.ErrorIs(t, p.Check(), ErrCorrupt, "Check reports the cut return")
	rc, err := p.Recover(nil)
	require.NoError(t, err)
	require.Equal(t, Reclaimed{Returned: 1}, rc)
	require.Equal(t, h0.FreeBytes, heapStats(t, p).FreeBytes)
	mustCheck(t, p, "after recover")

	// The extent's memory still holds the cut header; a slab taken there
	// has its header zeroed before anyone can see the extent, so Recover
	// does not take it from its maker before the maker writes it.
	off, err := p.takeSlab()
	require.NoError(t, err)
	require.Equal(t, slab, off, "the heap gives the same extent back")
	require.Zero(t, sh.Ident.Load())
	require.Zero(t, sh.Returner.Load())
	rc, err = p.Recover(nil)
	require.NoError(t, err)
	require.Equal(t, Reclaimed{}, rc)
	require.Equal(t, 1, int(heapStats(t, p).AllocExtents))
	require.NoError(t, p.heap.Free(off))
	mustCheck(t, p, "end")
}

// TestReclaimInProcess drives Reclaim against slabs whose owner is made to
// look dead: the active slab is retired on its behalf, the records not
// kept are freed, the kept ones stay intact and are handed over.
func TestReclaimInProcess(t *testing.T) {
	p := newPool(t, heapCombo, 4<<20, Options{SlabSize: 16 << 10})
	h0 := heapStats(t, p)
	dead := testutil.DeadIdentity(t)
	if _, err := p.Reclaim(p.self, nil); !errors.Is(err, ErrBusy) {
		t.Fatalf("reclaim of a live process: %v", err)
	}
	hd := p.NewHandle()
	var recs []Record
	for range 400 {
		r, err := hd.Alloc(100)
		if err != nil {
			t.Fatal(err)
		}
		fill(r)
		recs = append(recs, r)
	}
	big, _ := hd.Alloc(50 << 10)
	// Make this process's slabs and large record look like a dead one's,
	// and forget the handle (as a crash would).
	playDead(t, p, dead)
	before := poolStats(t, p)
	if before.ActiveSlabs < 1 || before.ActiveSlabs > 1+maxSpares || before.LiveRecords != 400 {
		t.Fatalf("before reclaim: %+v", before)
	}
	kept := map[mem.Off]bool{}
	for i := 0; i < len(recs); i += 7 {
		kept[recs[i].Off] = true
	}
	kept[big.Off] = true
	rc, err := p.Reclaim(dead, func(off mem.Off) bool { return kept[off] })
	if err != nil || rc.Slabs != before.ActiveSlabs || rc.Records != 400-len(kept)+1 || rc.Large != 0 {
		t.Fatalf("reclaim keeping %d: %+v %v", len(kept), rc, err)
	}
	if s := poolStats(t, p); s.ActiveSlabs != 0 || s.LiveRecords != len(kept)-1 || s.LargeRecords != 1 {
		t.Fatalf("after reclaim: %+v", s)
	}
	// The kept records were handed over: reclaiming again frees nothing.
	if rc, err := p.Reclaim(dead, nil); err != nil || rc != (Reclaimed{}) {
		t.Fatalf("second reclaim: %+v %v", rc, err)
	}
	for _, r := range recs {
		if kept[r.Off] {
			if b, err := p.Bytes(r.Off); err != nil || !intact(b, r.Off) {
				t.Fatalf("kept record %#x: %v", r.Off, err)
			}
		} else if err := p.Free(r.Off); !errors.Is(err, ErrDoubleFree) {
			t.Fatalf("record freed by reclaim: %v", err)
		}
	}
	mustCheck(t, p, "after reclaim with keep")
	for off := range kept {
		if err := p.Free(off); err != nil {
			t.Fatal(err)
		}
	}
	if h := heapStats(t, p); h.FreeBytes != h0.FreeBytes {
		t.Fatalf("after freeing the kept records: %+v", h)
	}
	mustCheck(t, p, "end")
}

// setOwner rewrites the heap-level owner of this process's slab and
// large extents (a test-only stand-in for a crashed allocator).
// playDead makes this process's slabs and large records look like those
// of dead, a process that crashed: the slab headers' owner and the
// extents' owner.
func playDead(t *testing.T, p *Pool, dead sys.Identity) {
	t.Helper()
	exts, _ := p.heap.Allocated()
	for _, e := range exts {
		if e.Kind == alloc.KindSlab {
			sh := &p.slabs[e.Off/slabHeaderSize]
			if sh.Owner.Load() == uint64(p.self) {
				sh.Owner.Store(uint64(dead))
			}
		}
	}
	setOwner(t, p, dead)
}

func setOwner(t *testing.T, p *Pool, to sys.Identity) {
	t.Helper()
	exts, _ := p.heap.Allocated()
	for _, e := range exts {
		if e.Owner == p.self && (e.Kind == alloc.KindSlab || e.Kind == alloc.KindLarge) {
			if err := p.heap.SetOwner(e.Off, p.self, to); err != nil {
				t.Fatal(err)
			}
		}
	}
}

// TestRestart: a handle whose full slab has no live record left starts it
// over instead of taking a new one; one live record anywhere (here in the
// first word, with the slab filled exactly to its end, so that its last
// bitmap word completes) prevents that.
func TestRestart(t *testing.T) {
	p := newPool(t, heapCombo, 4<<20, Options{SlabSize: 16 << 10})
	g := p.geo
	bits := uint64(g.limit - g.recBase)
	// A slot that divides the record area exactly.
	k := uint64(0)
	for c := uint64(20); c < bits/4; c++ {
		if bits%c == 0 {
			k = c
			break
		}
	}
	if k == 0 {
		t.Skipf("no slot size divides %d granules", bits)
	}
	size := int(k*granule - HeaderSize)
	n := int(bits / k)
	hd := p.NewHandle()
	defer hd.Close()
	var recs []Record
	for range n {
		r, err := hd.Alloc(size)
		if err != nil {
			t.Fatal(err)
		}
		fill(r)
		recs = append(recs, r)
	}
	slab := recs[0].Off &^ mem.Off(p.ps-1)
	for _, r := range recs[1:] {
		if err := p.Free(r.Off); err != nil {
			t.Fatal(err)
		}
	}
	before := heapStats(t, p)
	next, err := hd.Alloc(size)
	if err != nil {
		t.Fatal(err)
	}
	if next.Off&^mem.Off(p.ps-1) == slab {
		t.Fatalf("the slab restarted while record %#x was live", recs[0].Off)
	}
	if b, err := p.Bytes(recs[0].Off); err != nil || !intact(b, recs[0].Off) {
		t.Fatalf("live record after the refill: %v", err)
	}
	if h := heapStats(t, p); h.AllocExtents != before.AllocExtents+1 {
		t.Fatalf("a new slab should have come from the heap")
	}
	p.Free(recs[0].Off) // the retired slab goes back
	p.Free(next.Off)
	// Now fill the new slab, free everything, and allocate again: it
	// restarts in place.
	recs = nil
	for range n - 1 { // the first slot went to next
		r, err := hd.Alloc(size)
		if err != nil {
			t.Fatal(err)
		}
		recs = append(recs, r)
	}
	slab = next.Off &^ mem.Off(p.ps-1)
	for _, r := range recs {
		if r.Off-slab >= mem.Off(p.slabSize) {
			t.Fatalf("the slab did not fill as planned")
		}
	}
	for _, r := range recs {
		if err := p.Free(r.Off); err != nil {
			t.Fatal(err)
		}
	}
	before = heapStats(t, p)
	again, err := hd.Alloc(size)
	if err != nil {
		t.Fatal(err)
	}
	if again.Off != next.Off || heapStats(t, p) != before {
		t.Fatalf("a fully free slab should restart in place: %#x, first was %#x", again.Off, next.Off)
	}
	if err := p.Free(recs[1].Off); !errors.Is(err, ErrNotAllocated) {
		t.Fatalf("a record of the earlier generation: %v, want ErrNotAllocated", err)
	}
	mustCheck(t, p, "after the restart")
	p.Free(again.Off)
}

// TestFreeSlot: a record that Handle.Locate found is freed through its
// slot (FreeSlot) as Free would free it: once, then ErrDoubleFree; and a
// slot kept past its slab's restart, when a record of another size lies
// at the same offset, frees that record by its own header, not by the
// stale slot.
func TestFreeSlot(t *testing.T) {
	p := newPool(t, heapCombo, 4<<20, Options{SlabSize: 16 << 10})
	bits := uint64(p.geo.limit - p.geo.recBase)
	k := uint64(0) // a slot that divides the record area exactly
	for c := uint64(20); c < bits/4 && k == 0; c++ {
		if bits%c == 0 {
			k = c
		}
	}
	if k == 0 {
		t.Skipf("no slot size divides %d granules", bits)
	}
	size := int(k*granule - HeaderSize)
	hd := p.NewHandle()
	defer hd.Close()
	fr := p.NewHandle() // the freer: another handle, as a consumer's
	defer fr.Close()

	var recs []Record
	for range bits / k { // exactly one slab
		r, err := hd.Alloc(size)
		if err != nil {
			t.Fatal(err)
		}
		recs = append(recs, r)
	}
	var s, stale Slot
	if !fr.Locate(recs[1].Off, &s) || s.Off() != recs[1].Off || s.Size() != size || !p.Live(&s) {
		t.Fatalf("Locate %#x: %+v", recs[1].Off, s)
	}
	if err := fr.FreeSlot(&s); err != nil {
		t.Fatal(err)
	}
	if p.Live(&s) {
		t.Fatal("freed through its slot, the record is still live")
	}
	if err := fr.FreeSlot(&s); !errors.Is(err, ErrDoubleFree) {
		t.Fatalf("second FreeSlot: %v, want ErrDoubleFree", err)
	}
	if fr.Locate(recs[0].Off+8, &s) || s != (Slot{}) {
		t.Fatal("Locate accepted an offset inside a record")
	}

	if !fr.Locate(recs[0].Off, &stale) {
		t.Fatal("Locate of the first record failed")
	}
	for i, r := range recs {
		if i != 1 {
			if err := fr.Free(r.Off); err != nil {
				t.Fatal(err)
			}
		}
	}
	// The full slab is all free: the next allocation, of another size,
	// starts it over in place and lands where the first record was.
	again, err := hd.Alloc(size + 2*granule)
	if err != nil {
		t.Fatal(err)
	}
	if again.Off != recs[0].Off {
		t.Fatalf("the slab did not restart in place: %#x, first was %#x", again.Off, recs[0].Off)
	}
	if err := fr.FreeSlot(&stale); err != nil {
		t.Fatalf("FreeSlot with a slot of the earlier generation: %v", err)
	}
	mustCheck(t, p, "after freeing by a stale slot")
	if err := p.Free(again.Off); !errors.Is(err, ErrDoubleFree) {
		t.Fatalf("the record at the stale slot's offset: %v, want ErrDoubleFree (freed once, by its header)", err)
	}
}
