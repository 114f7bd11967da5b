package slab

import (
	"errors"
	"fmt"
	"sync/atomic"
	"unsafe"

	"github.com/heapipc/ipc/alloc"
	"github.com/heapipc/ipc/internal/errs"
	"github.com/heapipc/ipc/internal/mem"
	"github.com/heapipc/ipc/internal/sys"
)

// Sentinel errors returned by this package (the same values as package
// ipc's).
var (
	ErrNoSpace         = errs.ErrNoSpace
	ErrInvalidSize     = errs.ErrInvalidSize
	ErrInvalidArgument = errs.ErrInvalidArgument
	ErrCorrupt         = errs.ErrCorrupt
	ErrDoubleFree      = errs.ErrDoubleFree
	ErrNotAllocated    = errs.ErrNotAllocated
	ErrForeign         = errs.ErrForeign
	ErrClosed          = errs.ErrClosed
	ErrBusy            = errs.ErrBusy
)

// DefaultSlabSize is the size of the slabs handles take from the heap:
// 64 KiB. One heap allocation (about 0.1 µs under the lock) then serves
// some 800 records of 64 bytes, so the lock costs nothing per record; the
// free bitmap is 512 bytes (0.8%), one word per KiB of records; a handle
// pins at most three slabs (its current one and two spares, 192 KiB), one
// long-lived record one slab; and records up to
// an eighth of a slab (about 8 KiB) stay in slabs, where the page
// rounding of a heap extent would waste up to half of them.
const DefaultSlabSize = 64 << 10

// CacheLineAlign is the record alignment that puts every record's data at
// the start of a cache line (64 bytes on the machines heapipc runs on).
const CacheLineAlign = 64

// DefaultAlign is the default record alignment.
const DefaultAlign = 16

// Options configure a Pool. The zero value means defaults.
type Options struct {
	// SlabSize is the size of a slab in bytes: a multiple of the heap's
	// page size, at most 64 MiB (default DefaultSlabSize, or one page if
	// pages are larger).
	SlabSize int
	// Align is the alignment of records' data: a power of two from 16 to
	// the page size (default 16; CacheLineAlign for a cache line).
	Align int
}

const maxSlabSize = 64 << 20

// Pool allocates records from slabs of one buffer's heap. It is one
// process's view; every process attached to the buffer makes its own.
// Its methods are safe for concurrent use; Handles are not (one per
// goroutine).
type Pool struct {
	heap     *alloc.Heap
	b        []byte
	hdrs     []recHeader     // the region in 16-byte granules
	words    []atomic.Uint64 // the region in words
	plain    []uint64        // the same words, for the owner's header stores
	slabs    []slabHeader    // the region in 256-byte blocks
	lo, hi   mem.Off         // the heap's allocatable range
	ps       uint64
	salt     uint32
	self     sys.Identity
	slabSize uint64
	align    uint64
	geo      geometry
	maxSmall uint64    // largest slot (granules) carved from a slab
	want     [3]uint64 // words 1, 3, 4 of the header of a slab of this pool's options
}

// New returns a Pool over the heap h.
func New(h *alloc.Heap, opts Options) (*Pool, error) {
	ps := uint64(h.PageSize())
	size := uint64(opts.SlabSize)
	if opts.SlabSize == 0 {
		size = max(DefaultSlabSize, ps)
	}
	if opts.SlabSize < 0 || size%ps != 0 || size > maxSlabSize {
		return nil, fmt.Errorf("slab: slab size %d (want a multiple of the %d-byte page, at most %d): %w", opts.SlabSize, ps, maxSlabSize, ErrInvalidArgument)
	}
	align := uint64(opts.Align)
	if align == 0 {
		align = DefaultAlign
	}
	if align < granule || align > ps || align&(align-1) != 0 {
		return nil, fmt.Errorf("slab: alignment %d (want a power of two from 16 to %d): %w", opts.Align, ps, ErrInvalidArgument)
	}
	b := h.Region().Bytes()
	hdrs, err := mem.Slice[recHeader](b, 0, len(b)/granule)
	if err != nil {
		return nil, err
	}
	words, err := mem.Slice[atomic.Uint64](b, 0, len(b)/8)
	if err != nil {
		return nil, err
	}
	plain, err := mem.Slice[uint64](b, 0, len(b)/8)
	if err != nil {
		return nil, err
	}
	slabs, err := mem.Slice[slabHeader](b, 0, len(b)/slabHeaderSize)
	if err != nil {
		return nil, err
	}
	lo, hi := h.Range()
	geo := slabGeometry(size, align)
	p := &Pool{
		heap: h, b: b, hdrs: hdrs, words: words, plain: plain, slabs: slabs, lo: lo, hi: hi, ps: ps,
		salt: uint32(h.Salt()), self: sys.Self(), slabSize: size, align: align, geo: geo,
	}
	p.maxSmall = uint64(geo.limit-geo.recBase) / 8
	p.want = [3]uint64{
		packHalves(p.salt, uint32(size/ps)),
		packHalves(geo.recBase, geo.limit),
		packHalves(geo.words, uint32(align)),
	}
	if p.maxSmall < slotGranules(1, align) {
		return nil, fmt.Errorf("slab: slab size %d too small for %d-byte alignment: %w", size, align, ErrInvalidArgument)
	}
	return p, nil
}

// Heap is the heap the pool takes slabs from.
func (p *Pool) Heap() *alloc.Heap { return p.heap }

// MaxSmall is the largest record size carved from a slab; larger records
// get their own heap extent.
func (p *Pool) MaxSmall() int { return int(p.maxSmall*granule/p.align*p.align - HeaderSize) }

// Record is an allocated record: its offset from the region base (what
// crosses process boundaries) and its bytes in this process.
type Record struct {
	Off  mem.Off
	Data []byte
}

// view is the bytes of a record of size bytes at off (a zero-size record
// gets capacity 1, so that the view still leads back to the offset).
func (p *Pool) view(off mem.Off, size uint64) []byte {
	return p.b[off : uint64(off)+size : uint64(off)+max(size, 1)]
}

// record locates the record whose data starts at off: for a record of a
// slab, the slab, its header and the record's bits; for a large record,
// the extent.
type located struct {
	large  bool
	slab   mem.Off
	sh     *slabHeader
	hd     recHeader
	bit    uint32 // first bitmap bit of the record's slot
	gen    uint32 // the slab's generation
	size   uint64
	extent mem.Off // large: the extent
}

func notRecord(off mem.Off, why string) error {
	return fmt.Errorf("slab: %#x is not a record (%s): %w", uint64(off), why, ErrNotAllocated)
}

// locate validates everything the record at off leads to, without
// changing anything, and fills loc.
func (p *Pool) locate(off mem.Off, loc *located) error {
	if off&(granule-1) != 0 || off < p.lo+HeaderSize || off >= p.hi {
		return notRecord(off, "outside the heap or misaligned")
	}
	g := uint64(off)/granule - 1
	hd := p.header(g)
	if hd.Pos == 0 {
		return p.locateLarge(off, hd, loc)
	}
	if uint64(hd.Pos) > g {
		return notRecord(off, "bad header")
	}
	slab := mem.Off((g - uint64(hd.Pos)) * granule)
	if slab < p.lo || uint64(slab-p.lo)&(p.ps-1) != 0 {
		return notRecord(off, "bad header")
	}
	sw := uint64(slab) / 8 // the slab header's first word
	ident := p.words[sw].Load()
	if recCheck(hd.Pos, hd.Len, hd.Size, p.salt^uint32(ident>>32)) != hd.Check {
		return notRecord(off, "bad header")
	}
	sh := &p.slabs[slab/slabHeaderSize]
	if uint32(ident) != slabMagic {
		return fmt.Errorf("slab: record %#x: its slab went back to the heap: %w", uint64(off), ErrDoubleFree)
	}
	// The slab header's words: salt|pages, self, recbase|limit,
	// words|align. A slab made with this pool's options matches them
	// word for word; any other is checked field by field.
	if p.words[sw+2].Load() != uint64(slab) {
		return notRecord(off, "slab header does not match")
	}
	if p.words[sw+1].Load() != p.want[0] || p.words[sw+3].Load() != p.want[1] || p.words[sw+4].Load() != p.want[2] {
		if err := p.checkGeometry(slab, sh); err != nil {
			return err
		}
	} else if uint64(slab)+p.slabSize > uint64(p.hi) {
		return notRecord(off, "slab header beyond the heap")
	}
	if hd.Pos < sh.RecBase || uint64(hd.Pos)+uint64(hd.Len) > uint64(sh.Limit) ||
		uint64(hd.Len) != slotGranules(uint64(hd.Size), uint64(sh.Align)) {
		return notRecord(off, "header does not fit its slab")
	}
	loc.slab, loc.sh, loc.hd, loc.bit, loc.gen, loc.size = slab, sh, hd, hd.Pos-sh.RecBase, genOf(ident), uint64(hd.Size)
	return nil
}

// checkGeometry validates the header of a slab made with other options
// than this pool's: what the bit arithmetic relies on, so that a damaged
// header cannot send it out of range.
func (p *Pool) checkGeometry(slab mem.Off, sh *slabHeader) error {
	if sh.Salt != p.salt {
		return notRecord(slab, "slab header of another buffer")
	}
	end := uint64(slab) + uint64(sh.Pages)*p.ps
	if end > uint64(p.hi) || uint64(sh.Limit)*granule > uint64(sh.Pages)*p.ps || sh.RecBase >= sh.Limit ||
		slabHeaderSize+8*uint64(sh.Words) > uint64(sh.RecBase)*granule || uint64(sh.Words)*64 < uint64(sh.Limit-sh.RecBase) ||
		sh.Align < granule || uint64(sh.Align) > p.ps || sh.Align&(sh.Align-1) != 0 {
		return errs.Corrupt("slab.header", uint64(slab), "geometry pages %d base %d limit %d words %d align %d", sh.Pages, sh.RecBase, sh.Limit, sh.Words, sh.Align)
	}
	return nil
}

func (p *Pool) locateLarge(off mem.Off, hd recHeader, loc *located) error {
	size := largeBytes(hd)
	extent := mem.Off(uint64(off-HeaderSize) &^ (p.ps - 1))
	if extent < p.lo || size > uint64(p.hi-off) {
		return notRecord(off, "bad header")
	}
	switch hd.Check {
	case p.largeCheck(hd.Len, hd.Size, largeKey):
		loc.large, loc.hd, loc.size, loc.extent = true, hd, size, extent
		return nil
	case p.largeCheck(hd.Len, hd.Size, freedKey):
		return fmt.Errorf("slab: large record %#x: %w", uint64(off), ErrDoubleFree)
	}
	return notRecord(off, "bad header")
}

// Bytes returns the view of the live record whose data starts at off.
// It takes no lock.
func (p *Pool) Bytes(off mem.Off) ([]byte, error) {
	if sl, ok := p.slotOf(off, &slabSeen{}); ok && p.bitsClear(sl.slab, sl.bit, sl.n) {
		return p.view(off, sl.size), nil
	}
	var loc located
	if err := p.locate(off, &loc); err != nil {
		return nil, err
	}
	if !loc.large && !p.live(loc) {
		return nil, fmt.Errorf("slab: record %#x was freed: %w", uint64(off), ErrNotAllocated)
	}
	return p.view(off, loc.size), nil
}

// RecordKey is the Check of the header before off as it stands (0 for an
// off outside the region). Nothing is validated: it is meant for a record
// the caller has located. The check changes with a slab's generation, and
// from one large record to the next (largeLenBits), so a mark derived
// from it by the record's holder (the records layer's freed trailer, a
// Record's tag) tells this record from whatever an earlier record left at
// the same place.
func (p *Pool) RecordKey(off mem.Off) uint32 {
	g := uint64(off)/granule - 1 // wraps for an off below 16: out of range
	if g >= uint64(len(p.words))/2 {
		return 0
	}
	h := (*[4]atomic.Uint32)(unsafe.Pointer(&p.words[2*g])) // recHeader's four fields
	return h[3].Load()
}

// Peek returns the view of the record of a slab whose data starts at off
// if its header is one that the slab's current generation wrote: the
// cheap check of a consumer taking a record from a channel (no lock, no
// write). It checks neither that the record is live nor the
// slab's geometry; Bytes and Free do. ok false means: use Bytes.
func (p *Pool) Peek(off mem.Off) (b []byte, ok bool) {
	_, w1, _, _, ok := p.slabRecord(off)
	size, _ := unpackHalves(w1)
	if !ok || uint64(size) > uint64(p.hi-off) {
		return nil, false
	}
	return p.view(off, uint64(size)), true
}

// live reports whether a located small record's bits are clear.
func (p *Pool) live(loc located) bool {
	return p.bitsClear(uint64(loc.slab), uint64(loc.bit), uint64(loc.hd.Len))
}

// bitsClear reports whether the bits [bit, bit+n) of a slab's bitmap are
// all clear: the slot is live.
func (p *Pool) bitsClear(slab, bit, n uint64) bool {
	base := slab/8 + bitmapWord
	for n > 0 {
		w, b := bit/64, bit%64
		m := min(n, 64-b)
		if p.words[base+w].Load()&maskOf(b, m) != 0 {
			return false
		}
		bit += m
		n -= m
	}
	return true
}

// header reads the record header at granule g with two atomic loads: a
// large record's header changes when it is freed, while other processes
// may be reading it.
func (p *Pool) header(g uint64) recHeader {
	w0, w1 := p.words[2*g].Load(), p.words[2*g+1].Load()
	pos, ln := unpackHalves(w0)
	size, check := unpackHalves(w1)
	return recHeader{Pos: pos, Len: ln, Size: size, Check: check}
}

// unpackHalves splits a word into its first and second uint32 in memory
// order; packHalves is the inverse.
func unpackHalves(w uint64) (first, second uint32) {
	if littleEndian {
		return uint32(w), uint32(w >> 32)
	}
	return uint32(w >> 32), uint32(w)
}

func packHalves(first, second uint32) uint64 {
	if littleEndian {
		return uint64(first) | uint64(second)<<32
	}
	return uint64(first)<<32 | uint64(second)
}

// maskOf is m bits from bit b.
func maskOf(b, m uint64) uint64 {
	if m == 64 {
		return ^uint64(0)
	}
	return (1<<m - 1) << b
}

// OffsetOf maps a record's view (from Alloc or Bytes) back to the record's
// offset. A view outside this buffer is ErrForeign.
func (p *Pool) OffsetOf(b []byte) (mem.Off, error) {
	if cap(b) == 0 {
		return 0, fmt.Errorf("slab: empty view: %w", ErrNotAllocated)
	}
	off, ok := mem.OffsetOf(p.b, &b[:1][0])
	if !ok {
		return 0, fmt.Errorf("slab: view is not in this buffer: %w", ErrForeign)
	}
	return off, nil
}

// Free frees the record whose data starts at off, from any goroutine of
// any process. A record of a slab costs one atomic operation in the common
// case (two when its slot completes a 1 KiB word of the bitmap; the last
// free of a retired slab returns it to the heap under the heap lock); a
// large record goes back to the heap under the lock. Double frees return
// ErrDoubleFree, offsets that are not live records ErrNotAllocated;
// nothing changes then.
func (p *Pool) Free(off mem.Off) error {
	if ok, err := p.freeFast(off, &slabSeen{}); ok {
		return err
	}
	return p.free(off)
}

// slot is a record's slot as slotOf finds it: its slab, its first bit in
// the slab's bitmap, its length in bits (granules) and the record's size.
type slot struct {
	slab, bit, n, size uint64
	gen                uint32 // the slab's generation
}

// slotOf validates, in the common case, a record of a slab made with this
// pool's options: the same checks as locate, specialised. ok false means
// "take the general path" (which reports every error). c remembers the
// last slab whose geometry was checked: a caller locating several records
// (FreeBatch) checks each slab's header once while its identity word
// stays the same.
func (p *Pool) slotOf(off mem.Off, c *slabSeen) (sl slot, ok bool) {
	w0, w1, slab, ident, ok := p.slabRecord(off)
	if !ok {
		return sl, false
	}
	if slab != c.slab || ident != c.ident {
		sh := p.words[slab/8 : slab/8+5 : slab/8+5]
		if sh[2].Load() != slab || sh[1].Load() != p.want[0] || sh[3].Load() != p.want[1] || sh[4].Load() != p.want[2] ||
			slab+p.slabSize > uint64(p.hi) {
			return sl, false
		}
		c.slab, c.ident = slab, ident
	}
	pos, ln := unpackHalves(w0)
	size, _ := unpackHalves(w1)
	// The slab has this pool's geometry.
	if pos < p.geo.recBase || uint64(pos)+uint64(ln) > uint64(p.geo.limit) || uint64(ln) != slotGranules(uint64(size), p.align) {
		return sl, false
	}
	return slot{slab: slab, bit: uint64(pos - p.geo.recBase), n: uint64(ln), size: uint64(size), gen: genOf(ident)}, true
}

// slabSeen is a slab whose header slotOf checked, by its offset and
// its identity word (a slab returned and made again has another).
type slabSeen struct{ slab, ident uint64 }

// slotAfter is slotOf for the record expected right after the slot prev
// of a slab whose identity word was ident when prev was located: the
// next slot of the same slab, as a handle carves records back to back
// and a channel delivers them. It accepts the record only if its header
// is at the granule where prev's slot ends and is one the slab's
// generation wrote, the slab still has that identity, and the slot fits
// the slab's geometry: what slotOf checks, less what the position in a
// slab already checked implies (alignment, bounds, the slab's own
// header). It fills out (which may be prev) and reports true, or leaves
// it alone and reports false: ask slotOf.
//
// It writes out field by field rather than returning a slot: the caller's
// copy of a returned slot re-read the words just stored with wider loads,
// which the store buffer cannot forward, and stalled on every record
// (perf annotate, BenchmarkRecordBatchInProcess).
func (p *Pool) slotAfter(prev *slot, off mem.Off, ident uint64, out *slot) bool {
	bit := prev.bit + prev.n
	pos := bit + uint64(p.geo.recBase) // granule of the next header in the slab
	if pos >= uint64(p.geo.limit) || uint64(off) != prev.slab+(pos+1)*granule {
		return false
	}
	g := uint64(off)/granule - 1
	w0, w1 := p.plain[2*g], p.plain[2*g+1]
	hpos, ln := unpackHalves(w0)
	size, check := unpackHalves(w1)
	if uint64(hpos) != pos || pos+uint64(ln) > uint64(p.geo.limit) || uint64(ln) != slotGranules(uint64(size), p.align) ||
		p.words[prev.slab/8].Load() != ident || recCheck(hpos, ln, size, p.salt^uint32(ident>>32)) != check {
		return false
	}
	out.slab, out.gen = prev.slab, prev.gen
	out.bit, out.n, out.size = bit, uint64(ln), uint64(size)
	return true
}

// slabRecord reads the header of the slab record whose data starts at
// off and checks it against the slab it names: page aligned in the heap,
// existing, and of the generation that wrote the header. ok false: not
// such a record (a large one, or not a record at all). Plain loads: a
// header with Pos != 0 is immutable once handed out; only large records'
// headers (Pos 0) change, and those are refused here. It returns the
// header's two words (Pos|Len, Size|Check), the slab's offset and its
// identity word.
func (p *Pool) slabRecord(off mem.Off) (w0, w1, slab, ident uint64, ok bool) {
	if off&(granule-1) != 0 || off < p.lo+HeaderSize || off >= p.hi {
		return 0, 0, 0, 0, false
	}
	// The header as the two words Alloc stored (so that the loads are
	// forwarded from its stores when they are still in flight): Pos|Len
	// and Size|Check.
	g := uint64(off)/granule - 1
	w0 = p.plain[2*g]
	pos, _ := unpackHalves(w0)
	if pos == 0 || uint64(pos) > g {
		return 0, 0, 0, 0, false
	}
	w1 = p.plain[2*g+1]
	slab = (g - uint64(pos)) * granule
	if slab < uint64(p.lo) || (slab-uint64(p.lo))&(p.ps-1) != 0 {
		return 0, 0, 0, 0, false
	}
	ident = p.words[slab/8].Load()
	_, ln := unpackHalves(w0)
	size, check := unpackHalves(w1)
	if uint32(ident) != slabMagic || recCheck(pos, ln, size, p.salt^uint32(ident>>32)) != check {
		return 0, 0, 0, 0, false
	}
	return w0, w1, slab, ident, true
}

// freeFast frees, in the common case, a record that slotOf finds (c as
// there). ok false means "take the general path" (which also reports
// every error); err is from returning the slab to the heap, or, for a slot
// across bitmap words, freeBits's.
func (p *Pool) freeFast(off mem.Off, c *slabSeen) (ok bool, err error) {
	sl, ok := p.slotOf(off, c)
	if !ok {
		return false, nil
	}
	return p.freeSlot(&sl)
}

// freeSlot is freeFast for a slot found already.
func (p *Pool) freeSlot(sl *slot) (ok bool, err error) {
	b := sl.bit % 64
	if b+sl.n > 64 {
		return true, p.freeBits(mem.Off(sl.slab), &p.slabs[sl.slab/slabHeaderSize], sl.gen, sl.bit, sl.n, true)
	}
	word, mask := &p.words[sl.slab/8+bitmapWord+sl.bit/64], maskOf(b, sl.n)
	old := word.Load()
	if old&mask != 0 || !word.CompareAndSwap(old, old|mask) {
		return false, nil
	}
	if old|mask == ^uint64(0) {
		return true, p.wordDone(mem.Off(sl.slab), sl.gen, 1)
	}
	return true, nil
}

// wordDone counts n completed bitmap words off the count of a slab of
// generation gen; the count reaching zero returns the slab to the heap.
func (p *Pool) wordDone(slab mem.Off, gen uint32, n uint64) error {
	h := &p.slabs[slab/slabHeaderSize]
	if h.countDown(gen, n) {
		return p.returnSlab(slab, h, gen)
	}
	return nil
}

// free is Free's general path.
func (p *Pool) free(off mem.Off) error {
	var loc located
	if err := p.locate(off, &loc); err != nil {
		return err
	}
	if loc.large {
		return p.freeLarge(off, loc, 0)
	}
	return p.freeBits(loc.slab, loc.sh, loc.gen, uint64(loc.bit), uint64(loc.hd.Len), true)
}

// FreeBytes frees the record b is the view of (see Free). A view of
// another buffer is ErrForeign; a view that is not exactly a record's
// ErrNotAllocated.
func (p *Pool) FreeBytes(b []byte) error {
	off, err := p.OffsetOf(b)
	if err != nil {
		return err
	}
	var loc located
	if err := p.locate(off, &loc); err != nil {
		return err
	}
	if uint64(len(b)) != loc.size {
		return fmt.Errorf("slab: view of %d bytes, record %#x has %d: %w", len(b), uint64(off), loc.size, ErrNotAllocated)
	}
	if loc.large {
		return p.freeLarge(off, loc, 0)
	}
	return p.freeBits(loc.slab, loc.sh, loc.gen, uint64(loc.bit), uint64(loc.hd.Len), true)
}

// FreeRecord frees r (see FreeBytes).
func (p *Pool) FreeRecord(r Record) error {
	if cap(r.Data) == 0 {
		return p.Free(r.Off)
	}
	if off, err := p.OffsetOf(r.Data); err != nil || off != r.Off {
		if err != nil {
			return err
		}
		return fmt.Errorf("slab: record %#x with the view of %#x: %w", uint64(r.Off), uint64(off), ErrNotAllocated)
	}
	return p.FreeBytes(r.Data)
}

// freeBits sets the bits of a slot [bit, bit+n) of a slab of generation
// gen: the first word with a CAS that fails on any bit already set (a
// double free loses there and changes nothing), the others after it (a
// later word whose bits of the slot are all set already was finished by
// Recover). A word that becomes complete is counted off the slab's count;
// the count reaching zero returns the slab to the heap.
func (p *Pool) freeBits(slab mem.Off, sh *slabHeader, gen uint32, bit, n uint64, first bool) error {
	base := uint64(slab)/8 + bitmapWord
	var done uint64
	var bad error
	for n > 0 {
		w, b := bit/64, bit%64
		m := min(n, 64-b)
		mask := maskOf(b, m)
		word := &p.words[base+w]
		for {
			old := word.Load()
			if old&mask != 0 {
				if first {
					if old&mask == mask {
						return fmt.Errorf("slab: record in slab %#x: %w", uint64(slab), ErrDoubleFree)
					}
					return errs.Corrupt("slab.bitmap", (base+w)*8, "record slot partly free (bits %#x of %#x)", old&mask, mask)
				}
				if old&mask == mask {
					// A later word of a slot whose first word we
					// won, set already: Recover finished this free
					// (finishCutFrees), taking us for a freer that
					// died, and counted the word if it completed it.
					break
				}
				// Partly set: damaged bitmap. Finish the rest,
				// report it.
				bad = errs.Corrupt("slab.bitmap", (base+w)*8, "bits %#x of a slot being freed were already set", old&mask)
			}
			if word.CompareAndSwap(old, old|mask) {
				if old != ^uint64(0) && old|mask == ^uint64(0) {
					done++
				}
				break
			}
		}
		first = false
		bit += m
		n -= m
	}
	if done > 0 {
		if sh.countDown(gen, done) {
			if err := p.returnSlab(slab, sh, gen); err != nil {
				return errors.Join(bad, err)
			}
		}
	}
	return bad
}

// returnSlab gives a retired slab of generation gen whose records are
// all free back to the heap, if nobody else is doing so. A caller that
// was slow getting here may find the slab returned already by Recover
// (returnStalled) and the memory made into another slab, whose Returner
// is clear: the generation keeps it from returning that one.
func (p *Pool) returnSlab(slab mem.Off, sh *slabHeader, gen uint32) error {
	if sh.Ident.Load() != ident(gen) || !sh.Returner.CompareAndSwap(0, uint64(p.self)) {
		return nil
	}
	err := p.finishReturn(slab, sh, gen)
	if errors.Is(err, errOtherGeneration) {
		// Made again between the check and the claim: not ours.
		sh.Returner.CompareAndSwap(uint64(p.self), 0)
		return nil
	}
	return err
}

var errOtherGeneration = errors.New("slab of another generation")

// finishReturn frees the extent of a slab of generation gen whose return
// this process claimed; the magic is cleared in the same critical section
// of the heap lock, so that a slab extent seen under the lock either has
// its magic or was never initialised.
func (p *Pool) finishReturn(slab mem.Off, sh *slabHeader, gen uint32) error {
	err := p.heap.FreeIf(slab, func(e alloc.Extent) error {
		id := sh.Ident.Load()
		if e.Kind != alloc.KindSlab || uint32(id) != slabMagic || sh.Returner.Load() != uint64(p.self) {
			return fmt.Errorf("slab %#x: not a slab being returned by this process (kind %v): %w", uint64(slab), e.Kind, ErrNotAllocated)
		}
		if genOf(id) != gen {
			return errOtherGeneration
		}
		sh.Ident.Store(id &^ (1<<32 - 1))
		return nil
	})
	if err != nil {
		return fmt.Errorf("slab: return slab %#x: %w", uint64(slab), err)
	}
	return nil
}

// freeLarge frees a large record; owner, if nonzero, must be the
// extent's recorded owner (reclaim).
func (p *Pool) freeLarge(off mem.Off, loc located, owner sys.Identity) error {
	g := uint64(off)/granule - 1
	err := p.heap.FreeIf(loc.extent, func(e alloc.Extent) error {
		hd := p.header(g)
		switch {
		case e.Kind != alloc.KindLarge:
			return fmt.Errorf("extent of kind %v: %w", e.Kind, ErrNotAllocated)
		case hd != loc.hd:
			return fmt.Errorf("header changed: %w", ErrDoubleFree)
		case uint64(off)+loc.size > uint64(e.Off)+e.Size || off-e.Off > mem.Off(p.ps):
			return fmt.Errorf("record of %d bytes does not fit extent of %d: %w", loc.size, e.Size, ErrNotAllocated)
		case owner != 0 && e.Owner != owner:
			return fmt.Errorf("owner %v, not %v: %w", e.Owner, owner, ErrNotAllocated)
		}
		// A freer in another goroutine may be reading the header: the
		// word is stored atomically (and read so by header).
		p.words[2*g+1].Store(packHalves(hd.Size, p.largeCheck(hd.Len, hd.Size, freedKey)))
		return nil
	})
	if err != nil {
		if errors.Is(err, alloc.ErrDoubleFree) || errors.Is(err, alloc.ErrNotAllocated) {
			return fmt.Errorf("slab: large record %#x: %w", uint64(off), err)
		}
		return err
	}
	return nil
}

// FreeBatch frees the records at offs as Free frees each, in order. The
// slots of a run of records that lie back to back in one slab (as
// AllocBatch carves them and a channel delivers them) are freed together:
// one atomic operation per bitmap word the run covers. Every record is
// freed or reported: the error joins those of the records that were not
// freed (each names the record's index).
func (p *Pool) FreeBatch(offs []mem.Off) error {
	var all []error
	var seen slabSeen
	var run bitRun // the pending run
	start := 0     // index of the run's first record
	var last slot  // the run's last slot
	for i, off := range offs {
		if run.n > 0 {
			// The common case: the next record of the run's slab.
			if p.slotAfter(&last, off, seen.ident, &last) {
				run.n += last.n
				continue
			}
		}
		sl, ok := p.slotOf(off, &seen)
		if ok && run.n > 0 && sl.slab == run.slab && sl.gen == run.gen && sl.bit == run.bit+run.n {
			run.n += sl.n
			last = sl
			continue
		}
		all = p.freeRun(run, offs[start:i], start, all)
		run.n = 0
		if !ok {
			if err := p.free(off); err != nil {
				all = append(all, fmt.Errorf("record %d: %w", i, err))
			}
			continue
		}
		run, start, last = bitRun{slab: sl.slab, bit: sl.bit, n: sl.n, gen: sl.gen}, i, sl
	}
	all = p.freeRun(run, offs[start:], start, all)
	return errors.Join(all...)
}

// bitRun is a run of FreeBatch: the bits [bit, bit+n) of a slab's bitmap,
// the slots of records that lie back to back, of a slab of generation
// gen.
type bitRun struct {
	slab, bit, n uint64
	gen          uint32
}

// freeRun sets the bits of a run of FreeBatch (the records offs, the
// first of which is record number first of the batch) word by word, each
// with one CAS that fails on any bit already set. If a word has a bit of
// the run set already, the records from that word on are freed one by one
// so that the right one is reported (a record whose slot began in the
// words already done is finished first). It returns all with the run's
// errors added.
func (p *Pool) freeRun(run bitRun, offs []mem.Off, first int, all []error) []error {
	if run.n == 0 {
		return all
	}
	base := run.slab/8 + bitmapWord
	bit, end := run.bit, run.bit+run.n
	var done uint64
	for bit < end {
		w, b := bit/64, bit%64
		m := min(end-bit, 64-b)
		mask := maskOf(b, m)
		word := &p.words[base+w]
		old := word.Load()
		for old&mask == 0 && !word.CompareAndSwap(old, old|mask) {
			old = word.Load()
		}
		if old&mask != 0 {
			break
		}
		if old|mask == ^uint64(0) {
			done++
		}
		bit += m
	}
	if done > 0 {
		if err := p.wordDone(mem.Off(run.slab), run.gen, done); err != nil {
			all = append(all, fmt.Errorf("record %d: %w", first+len(offs)-1, err))
		}
	}
	if bit == end {
		return all
	}
	// The word at bit had a bit of the run set: the records whose slots
	// begin at or after bit are freed one by one; one that began before
	// it has its remaining bits set.
	sh := &p.slabs[run.slab/slabHeaderSize]
	slabBase := run.slab/granule + uint64(p.geo.recBase)
	for j, off := range offs {
		rb := uint64(off)/granule - 1 - slabBase
		if rb >= bit {
			if err := p.Free(off); err != nil {
				all = append(all, fmt.Errorf("record %d: %w", first+j, err))
			}
			continue
		}
		re := end
		if j+1 < len(offs) {
			re = uint64(offs[j+1])/granule - 1 - slabBase
		}
		if re > bit {
			if err := p.freeBits(mem.Off(run.slab), sh, run.gen, bit, re-bit, false); err != nil {
				all = append(all, fmt.Errorf("record %d: %w", first+j, err))
			}
		}
	}
	return all
}
