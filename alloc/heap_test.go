package alloc

import (
	"encoding/binary"
	"errors"
	"sync"
	"testing"
	"unsafe"

	"github.com/heapipc/ipc/backend"
	"github.com/heapipc/ipc/internal/mem"
	"github.com/heapipc/ipc/internal/sys"
	"github.com/heapipc/ipc/internal/testutil"
)

// TestLayout pins the shared structures: they are an ABI between
// processes (and versions).
func TestLayout(t *testing.T) {
	var rt root
	var lw LockWord
	testutil.RequirePortableLayouts(t, &rt, &lw, &logEntry{}, &pageEnt{})
	cases := []struct {
		name      string
		got, want uintptr
	}{
		{"sizeof(root)", unsafe.Sizeof(rt), RootSize},
		{"root.Magic", unsafe.Offsetof(rt.Magic), 0},
		{"root.Version", unsafe.Offsetof(rt.Version), 8},
		{"root.PageSize", unsafe.Offsetof(rt.PageSize), 12},
		{"root.Pages", unsafe.Offsetof(rt.Pages), 16},
		{"root.MapOff", unsafe.Offsetof(rt.MapOff), 24},
		{"root.HeapOff", unsafe.Offsetof(rt.HeapOff), 32},
		{"root.HeapCap", unsafe.Offsetof(rt.HeapCap), 40},
		{"root.FirstOff", unsafe.Offsetof(rt.FirstOff), 48},
		{"root.Salt", unsafe.Offsetof(rt.Salt), 56},
		{"root.Creator", unsafe.Offsetof(rt.Creator), 64},
		{"root.MetaEnd", unsafe.Offsetof(rt.MetaEnd), 72},
		{"root.Checksum", unsafe.Offsetof(rt.Checksum), 124},
		{"root.Lock", unsafe.Offsetof(rt.Lock), 128},
		{"root.FreePages", unsafe.Offsetof(rt.FreePages), 256},
		{"root.AllocPages", unsafe.Offsetof(rt.AllocPages), 264},
		{"root.HeapLen", unsafe.Offsetof(rt.HeapLen), 272},
		{"root.AllocExtents", unsafe.Offsetof(rt.AllocExtents), 280},
		{"root.Repairs", unsafe.Offsetof(rt.Repairs), 288},
		{"root.LogState", unsafe.Offsetof(rt.LogState), 296},
		{"root.LogN", unsafe.Offsetof(rt.LogN), 300},
		{"root.NeedRepair", unsafe.Offsetof(rt.NeedRepair), 304},
		{"root.Log", unsafe.Offsetof(rt.Log), 312},
		{"sizeof(LockWord)", unsafe.Sizeof(lw), mem.CacheLine},
		{"LockWord.owner", unsafe.Offsetof(lw.owner), 0},
		{"LockWord.waiters", unsafe.Offsetof(lw.waiters), 8},
		{"LockWord.takeovers", unsafe.Offsetof(lw.takeovers), 12},
		{"sizeof(pageEnt)", unsafe.Sizeof(pageEnt{}), 16},
		{"sizeof(logEntry)", unsafe.Sizeof(logEntry{}), 16},
	}
	for _, c := range cases {
		if c.got != c.want {
			t.Errorf("%s = %d, want %d", c.name, c.got, c.want)
		}
	}
	if (backend.ExtOffset+unsafe.Offsetof(rt.Lock))%mem.CacheLine != 0 {
		t.Errorf("the lock word is not on its own cache line")
	}
}

func TestTags(t *testing.T) {
	for _, n := range []uint64{1, 2, 3, 1 << 20, maxPages} {
		for _, st := range []uint64{tagFree, tagAlloc} {
			for _, k := range []Kind{KindPlain, KindSlab, 255} {
				kind := k
				if st == tagFree {
					kind = 0
				}
				h, tl := headTag(st, n, kind), tailTag(st, n, kind)
				if !tagValid(h) || !tagValid(tl) || tagLen(h) != n || tagState(h) != st || tagKind(h) != kind || !isHead(h) || !isTail(tl) {
					t.Errorf("tags of %d pages state %#x kind %d: head %#x tail %#x", n, st, kind, h, tl)
				}
				if (n == 1) != (h == tl) {
					t.Errorf("one-page extents share one tag: n=%d head %#x tail %#x", n, h, tl)
				}
			}
		}
	}
	for _, bad := range []uint64{0, 1, tagMarker | tagFree | tagHead, tagMarker | tagHead | 1, tagFree | tagHead | 1, tagMarker | 3<<32 | tagHead | 1, tagMarker | tagFree | tagHead | 1 | 1<<40} {
		if tagValid(bad) {
			t.Errorf("tag %#x accepted", bad)
		}
	}
	k := makeKey(7, 12345)
	if keyLen(k) != 7 || keyStart(k) != 12345 || makeKey(7, 1) <= makeKey(7, 2) || makeKey(8, 100) <= makeKey(7, 0) {
		t.Errorf("key order broken")
	}
}

func TestInitAttach(t *testing.T) {
	for _, c := range inProcess() {
		t.Run(c.String(), func(t *testing.T) {
			h := newHeap(t, c, 1<<20)
			s0 := mustStats(t, h)
			if s0.FreeBytes != s0.TotalBytes || s0.LargestFree != s0.TotalBytes || s0.FreeExtents != 1 || s0.AllocExtents != 0 {
				t.Fatalf("new heap: %s of %d", describe(s0), s0.TotalBytes)
			}
			if s0.PageSize != 4096 || s0.TotalBytes+s0.MetadataBytes+4096 != 1<<20 {
				t.Fatalf("geometry: page %d total %d metadata %d", s0.PageSize, s0.TotalBytes, s0.MetadataBytes)
			}
			h2 := attachHeap(t, h.Region().Name(), c)
			off, err := h.Alloc(10000)
			if err != nil {
				t.Fatal(err)
			}
			b, err := h2.Bytes(off)
			if err != nil {
				t.Fatalf("attached handle does not see the extent: %v", err)
			}
			if len(b) != 3*4096 {
				t.Fatalf("extent of %d bytes, want 3 pages", len(b))
			}
			copy(b, "hello")
			b1, _ := h.Bytes(off)
			if string(b1[:5]) != "hello" {
				t.Fatalf("views differ")
			}
			if err := h2.Free(off); err != nil {
				t.Fatal(err)
			}
			mustCheck(t, h, "after free through the other handle")
			if s := mustStats(t, h); s.FreeBytes != s0.FreeBytes || s.FreeExtents != 1 {
				t.Fatalf("after free: %s", describe(s))
			}
		})
	}
}

func TestAllocFree(t *testing.T) {
	h := newHeap(t, combo{backend.Heap, backend.Heap}, 1<<20)
	s0 := mustStats(t, h)
	var offs []mem.Off
	for _, n := range []int{1, 4096, 4097, 3 * 4096, 100000} {
		off, err := h.Alloc(n)
		if err != nil {
			t.Fatalf("alloc %d: %v", n, err)
		}
		if uint64(off)%4096 != 0 {
			t.Fatalf("offset %#x not page aligned", off)
		}
		b, err := h.Bytes(off)
		if err != nil || len(b) < n || len(b)%4096 != 0 || len(b)-n >= 4096 {
			t.Fatalf("extent of %d bytes for %d: %v", len(b), n, err)
		}
		for i := range b {
			b[i] = byte(len(offs) + 1)
		}
		offs = append(offs, off)
		mustCheck(t, h, "after alloc")
	}
	for i, off := range offs {
		b, _ := h.Bytes(off)
		for _, c := range b {
			if c != byte(i+1) {
				t.Fatalf("extent %d overwritten", i)
			}
		}
	}
	// Free in an order that exercises every coalescing case.
	for _, i := range []int{1, 3, 2, 0, 4} {
		if err := h.Free(offs[i]); err != nil {
			t.Fatalf("free %d: %v", i, err)
		}
		mustCheck(t, h, "after free")
	}
	if s := mustStats(t, h); s != s0 {
		t.Fatalf("after freeing everything: %+v, want %+v", s, s0)
	}
}

func TestFreeErrors(t *testing.T) {
	h := newHeap(t, combo{backend.Heap, backend.Heap}, 1<<20)
	a, _ := h.Alloc(3 * 4096)
	b, _ := h.Alloc(4096)
	if err := h.Free(b); err != nil {
		t.Fatal(err)
	}
	before := mustStats(t, h)
	first := h.first
	cases := []struct {
		name string
		off  mem.Off
		want error
	}{
		{"double free", b, ErrDoubleFree}, // b coalesced with the free tail: it starts a free run
		{"inside a free run", b + 10*4096, ErrNotAllocated},
		{"inside an extent", a + 4096, ErrNotAllocated},
		{"not page aligned", a + 16, ErrNotAllocated},
		{"header page", 0, ErrNotAllocated},
		{"metadata", first - 4096, ErrNotAllocated},
		{"past the end", first + mem.Off(h.n*4096), ErrNotAllocated},
		{"huge", ^mem.Off(0) &^ 4095, ErrNotAllocated},
	}
	for _, c := range cases {
		if err := h.Free(c.off); !errors.Is(err, c.want) {
			t.Errorf("%s: free(%#x) = %v, want %v", c.name, c.off, err, c.want)
		}
	}
	// The start of a free extent is reported as a double free.
	c, _ := h.Alloc(4096)
	if err := h.Free(c); err != nil {
		t.Fatal(err)
	}
	if s := mustStats(t, h); s.FreeExtents != 1 {
		// c was carved from the start of the only free run and coalesced back.
		t.Fatalf("%s", describe(s))
	}
	if err := h.Free(c); !errors.Is(err, ErrDoubleFree) {
		t.Errorf("free of the start of a free run: %v, want ErrDoubleFree", err)
	}
	if err := h.FreeIf(a, func(e Extent) error {
		if e.Kind != KindSlab {
			return errors.New("not a slab")
		}
		return nil
	}); err == nil {
		t.Errorf("FreeIf ignored its check")
	}
	if s := mustStats(t, h); s != before {
		t.Fatalf("failed frees changed the heap: %+v, want %+v", s, before)
	}
	mustCheck(t, h, "after failed frees")
	if _, err := h.Alloc(0); !errors.Is(err, ErrInvalidSize) {
		t.Errorf("alloc(0): %v", err)
	}
	if _, err := h.Alloc(-1); !errors.Is(err, ErrInvalidSize) {
		t.Errorf("alloc(-1): %v", err)
	}
}

// TestLargestRun checks the allocation policy: the largest free run, the
// lowest of equal ones, carved from its start.
func TestLargestRun(t *testing.T) {
	h := newHeap(t, combo{backend.Heap, backend.Heap}, 1<<20)
	ps := 4096
	var offs []mem.Off
	for range 20 {
		off, err := h.Alloc(ps)
		if err != nil {
			t.Fatal(err)
		}
		offs = append(offs, off)
	}
	// Free runs: [1,3) (2 pages), [5,10) (5 pages), [12,16) (4 pages), and the tail.
	for _, i := range []int{1, 2, 5, 6, 7, 8, 9, 12, 13, 14, 15} {
		h.Free(offs[i])
	}
	tail, err := h.Alloc(int(mustStats(t, h).LargestFree)) // takes the tail run
	if err != nil {
		t.Fatal(err)
	}
	if tail != offs[19]+mem.Off(ps) {
		t.Fatalf("largest run at %#x, got %#x", offs[19]+mem.Off(ps), tail)
	}
	if off, _ := h.Alloc(ps); off != offs[5] {
		t.Fatalf("1 page came from %#x, want the start of the 5-page run %#x", off, offs[5])
	}
	// Now runs of 2, 4 (at 6) and 4 (at 12): the lower 4-page run wins.
	if off, _ := h.Alloc(ps); off != offs[6] {
		t.Fatalf("tie: got %#x, want %#x", off, offs[6])
	}
	s := mustStats(t, h)
	if s.FreeExtents != 3 || s.LargestFree != 4*uint64(ps) || s.FreeBytes != 9*uint64(ps) {
		t.Fatalf("%s", describe(s))
	}
	mustCheck(t, h, "end")
}

func TestExhaustionAndFragmentation(t *testing.T) {
	h := newHeap(t, combo{backend.Heap, backend.Heap}, 1<<20)
	s0 := mustStats(t, h)
	if _, err := h.Alloc(int(s0.FreeBytes) + 1); !errors.Is(err, ErrNoSpace) {
		t.Fatalf("alloc of more than the heap: %v", err)
	}
	if s := mustStats(t, h); s != s0 {
		t.Fatalf("failed alloc changed the heap")
	}
	// Fill with one-page extents, then free every other one.
	var offs []mem.Off
	for {
		off, err := h.Alloc(4096)
		if errors.Is(err, ErrNoSpace) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		offs = append(offs, off)
	}
	if uint64(len(offs))*4096 != s0.TotalBytes {
		t.Fatalf("%d pages allocated of %d", len(offs), s0.TotalBytes/4096)
	}
	full := mustStats(t, h)
	if full.FreeBytes != 0 || full.FreeExtents != 0 || full.LargestFree != 0 || full.Fragmentation() != 0 {
		t.Fatalf("full heap: %s", describe(full))
	}
	for i := 0; i < len(offs); i += 2 {
		if err := h.Free(offs[i]); err != nil {
			t.Fatal(err)
		}
	}
	s := mustStats(t, h)
	half := uint64((len(offs) + 1) / 2)
	if s.FreeBytes != half*4096 || s.LargestFree != 4096 || s.FreeExtents != half || s.Fragmentation() < 0.9 {
		t.Fatalf("checkerboard: %s, fragmentation %.2f", describe(s), s.Fragmentation())
	}
	if _, err := h.Alloc(2 * 4096); !errors.Is(err, ErrNoSpace) {
		t.Fatalf("2 pages from a checkerboard: %v", err)
	}
	if s2 := mustStats(t, h); s2 != s {
		t.Fatalf("failed alloc changed the heap")
	}
	mustCheck(t, h, "checkerboard")
	for i := 1; i < len(offs); i += 2 {
		h.Free(offs[i])
	}
	if s := mustStats(t, h); s.FreeBytes != s0.FreeBytes || s.FreeExtents != 1 {
		t.Fatalf("after freeing all: %s", describe(s))
	}
}

// TestNoSizeLimit allocates one extent of the whole heap (tens of MiB: no
// RaftLib-style 2 MiB cap), then many odd sizes.
func TestNoSizeLimit(t *testing.T) {
	h := newHeap(t, combo{backend.Heap, backend.Heap}, 64<<20)
	s0 := mustStats(t, h)
	off, err := h.Alloc(int(s0.TotalBytes))
	if err != nil {
		t.Fatalf("alloc of the whole heap (%d bytes): %v", s0.TotalBytes, err)
	}
	b, _ := h.Bytes(off)
	if uint64(len(b)) != s0.TotalBytes || s0.TotalBytes < 60<<20 {
		t.Fatalf("extent of %d bytes", len(b))
	}
	b[len(b)-1] = 1
	h.Free(off)
	a1, err := h.Alloc(40 << 20)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := h.Alloc(30 << 20); !errors.Is(err, ErrNoSpace) {
		t.Fatalf("30 MiB after 40 of 64: %v", err)
	}
	h.Free(a1)
	mustCheck(t, h, "end")
}

// TestConcurrent runs goroutines that allocate, stamp, and hand extents to
// other goroutines that verify and free them (under -race on the heap
// backend, whose memory the race detector sees).
func TestConcurrent(t *testing.T) {
	h := newHeap(t, combo{backend.Heap, backend.Heap}, 8<<20)
	s0 := mustStats(t, h)
	const workers, ops = 8, 400
	chans := make([]chan mem.Off, workers)
	for i := range chans {
		chans[i] = make(chan mem.Off, 64)
	}
	rnd := seed(t)
	var prod, cons sync.WaitGroup
	errc := make(chan error, 2*workers)
	for w := range workers {
		prod.Add(1)
		go func() {
			defer prod.Done()
			r := newRand(rnd + uint64(w))
			for range ops {
				n := 16 + r.IntN(5*4096)
				off, err := h.Alloc(n)
				if errors.Is(err, ErrNoSpace) {
					continue
				}
				if err != nil {
					errc <- err
					return
				}
				b, err := h.View(off, uint64(n))
				if err != nil {
					errc <- err
					return
				}
				binary.LittleEndian.PutUint64(b, uint64(off))
				if n >= 16 {
					binary.LittleEndian.PutUint64(b[n-8:], ^uint64(off))
				}
				chans[r.IntN(workers)] <- off
			}
		}()
		cons.Add(1)
		go func() {
			defer cons.Done()
			for off := range chans[w] {
				b, err := h.View(off, 8)
				if err != nil || binary.LittleEndian.Uint64(b) != uint64(off) {
					errc <- errors.New("extent stamp overwritten: overlapping extents")
					return
				}
				if err := h.Free(off); err != nil {
					errc <- err
					return
				}
			}
		}()
	}
	prod.Wait()
	for _, c := range chans {
		close(c)
	}
	cons.Wait()
	close(errc)
	for err := range errc {
		t.Fatal(err)
	}
	mustCheck(t, h, "after the storm")
	if s := mustStats(t, h); s.FreeBytes != s0.FreeBytes || s.FreeExtents != 1 {
		t.Fatalf("after the storm: %s", describe(s))
	}
}

func TestReclaim(t *testing.T) {
	h := newHeap(t, combo{backend.Heap, backend.Heap}, 1<<20)
	s0 := mustStats(t, h)
	dead := testutil.DeadIdentity(t)
	var keep mem.Off
	for i := range 6 {
		kind := KindPlain
		if i%2 == 1 {
			kind = KindSlab
		}
		off, err := h.AllocFor(t.Context(), 4096*(i+1), kind, dead)
		if err != nil {
			t.Fatal(err)
		}
		if i == 0 {
			keep, _ = h.Alloc(4096) // unowned: never reclaimed
		}
		e, err := h.Extent(off)
		if err != nil || e.Owner != dead || e.Kind != kind || e.Size != uint64(4096*(i+1)) {
			t.Fatalf("extent %+v, %v", e, err)
		}
	}
	// Extents of a kind with its own rule (RecoverKind): the orphan of a
	// dead owner goes; one the layer above claims, and a live owner's,
	// stay.
	var ext3 [3]mem.Off
	for i, owner := range []sys.Identity{dead, dead, selfIdentity()} {
		off, err := h.AllocFor(t.Context(), 4096*(7+i), KindExtent, owner)
		if err != nil {
			t.Fatal(err)
		}
		ext3[i] = off
	}
	if _, err := h.Reclaim(selfIdentity(), nil); !errors.Is(err, ErrBusy) {
		t.Fatalf("reclaim of a live owner: %v", err)
	}
	rc, err := h.Recover()
	if err != nil || rc.Extents != 3 || rc.Bytes != 4096*(1+3+5) {
		t.Fatalf("recover: %+v %v", rc, err)
	}
	rc, err = h.RecoverKind(KindExtent, func(e Extent) bool { return e.Off != ext3[1] })
	if err != nil || rc.Extents != 1 || rc.Bytes != 4096*7 {
		t.Fatalf("recover extents: %+v %v", rc, err)
	}
	for _, off := range ext3[1:] {
		if err := h.Free(off); err != nil {
			t.Fatal(err)
		}
	}
	rc, err = h.Reclaim(dead, func(e Extent) bool { return e.Kind == KindSlab })
	if err != nil || rc.Extents != 3 || rc.Bytes != 4096*(2+4+6) {
		t.Fatalf("reclaim: %+v %v", rc, err)
	}
	ext, err := h.Allocated()
	if err != nil || len(ext) != 1 || ext[0].Off != keep {
		t.Fatalf("left: %+v %v", ext, err)
	}
	h.Free(keep)
	if s := mustStats(t, h); s.FreeBytes != s0.FreeBytes {
		t.Fatalf("%s", describe(s))
	}
	mustCheck(t, h, "end")
}

// TestAllocZeroedBeforeCommit: AllocZeroed's bytes are zero by the time
// the page map says the extent is allocated, so an owner killed right
// after the commit leaves no stale mark there for a recovery to trust (it
// used to zero after the commit, and the extent of a dead owner whose old
// bytes looked like a mark was never freed).
func TestAllocZeroedBeforeCommit(t *testing.T) {
	h := newHeap(t, combo{backend.Heap, backend.Heap}, 1<<20)
	const mark = 0xAB
	off, err := h.Alloc(4096)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := h.View(off, 64)
	for i := range b {
		b[i] = mark
	}
	if err := h.Free(off); err != nil {
		t.Fatal(err)
	}
	dead := testutil.DeadIdentity(t)
	if err := h.acquire(t.Context()); err != nil {
		t.Fatal(err)
	}
	var first byte // the extent's first byte when the allocation committed
	testAllocCommitted = func(o mem.Off) { v, _ := h.View(o, 1); first = v[0] }
	t.Cleanup(func() { testAllocCommitted = nil })
	got, err := h.allocLocked(1, KindExtent, dead, 64)
	if err != nil || got != off {
		t.Fatalf("alloc: %#x %v (want %#x)", got, err, off)
	}
	// Killed right after the commit, holding the lock: what the extent
	// held then is what the recovery finds.
	b[0] = first
	h.rt.Lock.owner.Store(uint64(dead))
	rc, err := h.RecoverKind(KindExtent, func(e Extent) bool {
		v, _ := h.View(e.Off, 64)
		return v[0] != mark // no mark: an orphan
	})
	if err != nil {
		t.Fatal(err)
	}
	if rc.Extents != 1 {
		t.Fatalf("the dead owner's extent was not recovered (%d freed): its first bytes were not zeroed", rc.Extents)
	}
	if err := h.Check(); err != nil {
		t.Fatal(err)
	}
}
