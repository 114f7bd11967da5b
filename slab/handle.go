package slab

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"fmt"
	"slices"
	"sync/atomic"
	"unsafe"

	"github.com/heapipc/ipc/alloc"
	"github.com/heapipc/ipc/internal/mem"
)

// Handle carves records from slabs it takes from the heap: RaftLib's
// per-thread allocation structure. A Handle must be used by one goroutine
// at a time (it is not locked); Free may be called on any Pool, from any
// goroutine or process.
//
// Allocation from the current slab takes no lock and does no atomic
// read-modify-write: it bumps a local cursor and writes the record's
// header, the only shared write. When the slab is full the handle starts
// over one of its slabs whose records are all free (see the package
// documentation), or takes a new one under the heap lock. Records too
// large for a slab get an extent of their own.
type Handle struct {
	_     mem.Pad
	p     *Pool
	slab  mem.Off // current slab, 0: none
	sh    *slabHeader
	base  uint64 // granule index of the slab in the region
	cur   uint32 // next slot (granule from the slab start)
	limit uint32
	// carving is the carving Reserve handed out last, while it may have
	// records left to carve: limit is then cur, so that every allocation
	// goes through makeRoom, which writes those records' headers first
	// (carvedLimit is the limit to go back to). Every walk of a slab stops
	// at the first slot without a header, so a record carved after an
	// uncarved one would be taken for free (recovery, Check).
	carving     *Carving
	carvedLimit uint32
	key         uint32  // salt ^ the slab's generation
	spares      []spare // full slabs kept to start over, oldest first
	seen        slabSeen
	closed      bool
	_           mem.Pad
}

// NewHandle returns a handle that allocates in this process's name.
func (p *Pool) NewHandle() *Handle { return &Handle{p: p} }

// Pool is the pool the handle allocates from.
func (h *Handle) Pool() *Pool { return h.p }

// Alloc returns a record of size bytes (size ≥ 0), aligned to the pool's
// alignment. Its bytes are not zeroed, except a large record's last 16,
// so that a record whose header is valid never shows there what an
// earlier one left (the records layer keeps its trailer there).
// ErrNoSpace: the heap has no room for a new slab or a large record;
// nothing changed.
func (h *Handle) Alloc(size int) (Record, error) {
	if h.closed {
		return Record{}, fmt.Errorf("slab: allocate: %w", ErrClosed)
	}
	if size < 0 {
		return Record{}, fmt.Errorf("slab: allocate %d bytes: %w", size, ErrInvalidSize)
	}
	p := h.p
	k := slotGranules(uint64(size), p.align)
	if k > p.maxSmall {
		return h.allocLarge(uint64(size))
	}
	if uint64(h.cur)+k > uint64(h.limit) {
		if err := h.makeRoom(k); err != nil {
			return Record{}, err
		}
		if uint64(h.cur)+k > uint64(h.limit) {
			return Record{}, fmt.Errorf("slab: allocate %d bytes: a refilled slab has no room: %w", size, ErrCorrupt)
		}
	}
	// Room is there: AllocOff carves at once.
	off, err := h.AllocOff(size)
	if err != nil {
		return Record{}, err
	}
	return Record{Off: off, Data: p.view(off, uint64(size))}, nil
}

// AllocOff is Alloc that returns the record's offset alone (Pool.Bytes
// gives its bytes).
func (h *Handle) AllocOff(size int) (mem.Off, error) {
	off, _, err := h.AllocKeyed(size)
	return off, err
}

// AllocKeyed is AllocOff that also returns the record's key: what
// Pool.RecordKey reads in its header, without the
// load.
func (h *Handle) AllocKeyed(size int) (mem.Off, uint32, error) {
	p := h.p
	k := slotGranules(uint64(max(size, 0)), p.align)
	if h.closed || size < 0 || k > p.maxSmall || uint64(h.cur)+k > uint64(h.limit) {
		r, err := h.Alloc(size)
		if err != nil {
			return 0, 0, err
		}
		return r.Off, p.RecordKey(r.Off), nil
	}
	// Carved at the cursor: two word stores, the words the readers load
	// (slabRecord; a load that spans several smaller stores still in
	// flight would stall store forwarding).
	pos, ln := h.cur, uint32(k)
	h.cur += ln
	g := h.base + uint64(pos)
	key := recCheck(pos, ln, uint32(size), h.key)
	p.plain[2*g] = packHalves(pos, ln)
	p.plain[2*g+1] = packHalves(uint32(size), key)
	if a := uint64(h.cur) + writeAhead; a < uint64(h.limit) {
		mem.PrefetchWrite(unsafe.Pointer(&p.plain[2*(h.base+a)]))
	}
	return mem.Off((g + 1) * granule), key, nil
}

// writeAhead is how far ahead of its cursor, in granules (768 bytes: 8
// records of 64 bytes and their header and trailer), AllocOff asks for
// the lines it will carve next (mem.PrefetchWrite). A producer's slabs
// come round again within a ring-full or two, and their lines were last
// in its consumer's cache: without the hint each record's stores waited
// for its lines to come over from the consumer's core, and with it the
// lines are on their way eight records early (two goroutines, one record
// at a time, on an Intel Xeon VM: ~60 -> ~40 ns a record,
// BenchmarkRecordInProcess).
const writeAhead = 768 / granule

// AllocBatch allocates len(offs) records of size bytes each, as Alloc
// would one by one, and stores their offsets in offs (Pool.Bytes gives
// their bytes). It returns how many it allocated: all of them, or fewer
// and Alloc's error. The records of a slab are carved in one pass that
// writes their headers back to back.
func (h *Handle) AllocBatch(size int, offs []mem.Off) (int, error) {
	return h.allocBatch(size, offs, nil, nil)
}

// AllocBatchStamped is AllocBatch for records whose last 16 bytes the
// caller would fill with the same two words (a trailer): it writes tail
// there (plain stores: the records are not handed out yet) in the pass
// that writes the headers, so that the records' memory is gone over once.
// size must be a multiple of 16 (ErrInvalidSize otherwise).
// keys (as long as offs) gets the records' keys, as AllocKeyed returns
// them.
func (h *Handle) AllocBatchStamped(size int, offs []mem.Off, keys []uint32, tail [2]uint64) (int, error) {
	if size < granule || size%granule != 0 {
		return 0, fmt.Errorf("slab: allocate records of %d bytes with a 16-byte tail: not a multiple of 16: %w", size, ErrInvalidSize)
	}
	if len(keys) != len(offs) {
		return 0, fmt.Errorf("slab: allocate %d records with %d keys: %w", len(offs), len(keys), ErrInvalidSize)
	}
	return h.allocBatch(size, offs, keys, &tail)
}

// allocBatch is AllocBatch, and AllocBatchStamped if tail is not nil
// (then keys is as long as offs: see AllocBatchStamped).
func (h *Handle) allocBatch(size int, offs []mem.Off, keys []uint32, tail *[2]uint64) (int, error) {
	p := h.p
	k := slotGranules(uint64(max(size, 0)), p.align)
	if h.closed || size < 0 || k > p.maxSmall {
		for i := range offs {
			r, err := h.Alloc(size)
			if err != nil {
				return i, err
			}
			offs[i] = r.Off
			if tail != nil {
				g := (uint64(r.Off)+uint64(size))/granule - 1
				p.plain[2*g], p.plain[2*g+1] = tail[0], tail[1]
				keys[i] = p.RecordKey(r.Off)
			}
		}
		return len(offs), nil
	}
	ln, sz := uint32(k), uint32(size)
	for i := 0; i < len(offs); {
		if uint64(h.cur)+k > uint64(h.limit) {
			if err := h.makeRoom(k); err != nil {
				return i, err
			}
		}
		n := min(len(offs)-i, int((h.limit-h.cur)/ln))
		if tail == nil {
			h.cur = carve(p.plain, offs[i:i+n], h.base, h.cur, ln, sz, recCheckOf(ln, sz, h.key))
		} else {
			h.cur = carveStamped(p.plain, offs[i:i+n], keys[i:i+n], h.base, h.cur, ln, sz, recCheckOf(ln, sz, h.key), tail[0], tail[1])
		}
		i += n
	}
	return len(offs), nil
}

// carveStamped is carve, writing t0 and t1 into each record's last 16
// bytes (the granule sz/16 after its header's) and its key into keys
// (as long as offs) as it goes.
func carveStamped(plain []uint64, offs []mem.Off, keys []uint32, base uint64, pos, ln, sz uint32, of uint64, t0, t1 uint64) uint32 {
	n := min(len(offs), len(keys))
	if n == 0 {
		return pos
	}
	// The records' slots lie in the slab (the caller's room): one
	// bounds check for the last, then stores through pointers.
	_ = plain[2*(base+uint64(pos)+uint64(n)*uint64(ln))-1]
	h := unsafe.Pointer(&plain[2*(base+uint64(pos))])
	_, _, pos = stampRun(h, mem.Off((base+uint64(pos)+1)*granule), pos, ln, sz, of, offs[:n], keys[:n], t0, t1)
	return pos
}

// stampRun is the loop of carveStamped and Carving.Stamp: from the header
// at h (of the record whose data are at off, at granule pos of its slab),
// it writes the headers of len(offs) records of sz bytes, ln granules
// each, back to back (of: recCheckOf for them), t0 and t1 into each one's
// last 16 bytes, their offsets into offs and their keys into keys (as
// long as offs). It returns the header, offset and
// granule after the last.
func stampRun(h unsafe.Pointer, off mem.Off, pos, ln, sz uint32, of uint64, offs []mem.Off, keys []uint32, t0, t1 uint64) (unsafe.Pointer, mem.Off, uint32) {
	step, tail := uintptr(ln)*granule, uintptr(sz)
	w0, w1 := packHalves(0, ln), packHalves(sz, 0)
	keys = keys[:len(offs)]
	for j := range offs {
		key := recCheckAt(pos, of)
		w := (*[2]uint64)(h)
		w[0], w[1] = w0|packHalves(pos, 0), w1|packHalves(0, key)
		t := (*[2]uint64)(unsafe.Add(h, tail))
		t[0], t[1] = t0, t1
		offs[j], keys[j] = off, key
		h = unsafe.Add(h, step)
		off += mem.Off(step)
		pos += ln
	}
	return h, off, pos
}

// carve is AllocBatch's inner loop, apart so that it makes no call: it
// writes the headers of len(offs) records of sz bytes (ln granules each)
// back to back from granule pos of the slab at granule base (of:
// recCheckOf for them), stores their offsets in offs and returns the
// granule after the last.
func carve(plain []uint64, offs []mem.Off, base uint64, pos, ln, sz uint32, of uint64) uint32 {
	for j := range offs {
		g := base + uint64(pos)
		// Two word stores, the words the readers load (slabRecord).
		plain[2*g] = packHalves(pos, ln)
		plain[2*g+1] = packHalves(sz, recCheckAt(pos, of))
		offs[j] = mem.Off((g + 1) * granule)
		pos += ln
	}
	return pos
}

// Free frees a record (of any handle), as Pool.Free does. The handle
// remembers the last slab whose header it checked, so that a run of frees
// in one slab (a consumer's) checks that header once.
func (h *Handle) Free(off mem.Off) error {
	if ok, err := h.p.freeFast(off, &h.seen); ok {
		return err
	}
	return h.p.free(off)
}

// Slot is where a record of a slab lies, as Handle.Locate found it: what
// FreeSlot needs to free it without reading its header again. The zero
// Slot is no record's.
type Slot struct {
	off   mem.Off
	sl    slot
	ident uint64 // the slab's identity word when it was located
}

// Off is the offset of the record's data.
func (s *Slot) Off() mem.Off { return s.off }

// Size is the record's size in bytes.
func (s *Slot) Size() int { return int(s.sl.size) }

// Key is what Pool.RecordKey reads in the header of the record located at
// s, worked out from the slot instead (no load: a freer about to store a
// mark derived from it does not wait for the header's line).
func (p *Pool) Key(s *Slot) uint32 {
	return recCheck(uint32(s.sl.bit)+p.geo.recBase, uint32(s.sl.n), uint32(s.sl.size), p.salt^s.sl.gen)
}

// Locate validates the record of a slab whose data starts at off as
// Free would (a header of its slab's current generation, a slab of this
// pool's geometry) and fills s with its slot, without checking that it
// is live (Pool.Live does). ok false: not such a record (s is zeroed);
// Pool.Bytes and Free say what it is.
func (h *Handle) Locate(off mem.Off, s *Slot) (ok bool) {
	if s.sl, ok = h.p.slotOf(off, &h.seen); !ok {
		*s = Slot{}
		return false
	}
	s.off, s.ident = off, h.seen.ident
	return true
}

// LocateNext is Locate for a record expected right after the one prev
// holds (located before, and possibly freed since: only its place
// counts), as records of one handle follow each other through a channel:
// it checks the record's header against the slot that follows prev in
// its slab and takes Locate's full path if that is not where the record
// is. It fills s (which may be prev) as Locate does.
func (h *Handle) LocateNext(prev *Slot, off mem.Off, s *Slot) (ok bool) {
	if prev.ident != 0 && h.p.slotAfter(&prev.sl, off, prev.ident, &s.sl) {
		s.off, s.ident = off, prev.ident
		return true
	}
	return h.Locate(off, s)
}

// Live reports whether a located record's bits are all clear: it has not
// been freed.
func (p *Pool) Live(s *Slot) bool { return p.bitsClear(s.sl.slab, s.sl.bit, s.sl.n) }

// FreeSlot frees the record that Locate found at s, as Free(s.Off())
// would, without reading its header again if its slab still has the
// identity it had then (a slab started over since has another, and the
// record is then located afresh).
func (h *Handle) FreeSlot(s *Slot) error {
	p := h.p
	if s.ident != 0 && p.words[s.sl.slab/8].Load() == s.ident {
		// freeSlot's common case, written out (a call less on the
		// consumer's path): the slot's bits in one word, which the free
		// does not complete.
		if b := s.sl.bit % 64; b+s.sl.n <= 64 {
			word, mask := &p.words[s.sl.slab/8+bitmapWord+s.sl.bit/64], maskOf(b, s.sl.n)
			if old := word.Load(); old&mask == 0 && old|mask != ^uint64(0) && word.CompareAndSwap(old, old|mask) {
				return nil
			}
		}
		if ok, err := p.freeSlot(&s.sl); ok {
			return err
		}
	}
	return h.Free(s.off)
}

func (h *Handle) allocLarge(size uint64) (Record, error) {
	p := h.p
	hdrOff := p.largeData()
	if size > uint64(p.hi-p.lo) {
		return Record{}, fmt.Errorf("slab: allocate %d bytes: larger than the heap: %w", size, ErrNoSpace)
	}
	ext, err := p.takeLarge(hdrOff + size)
	if err != nil {
		return Record{}, fmt.Errorf("slab: allocate %d bytes: %w", size, err)
	}
	off := ext + mem.Off(hdrOff)
	// The last 16 bytes are zeroed before the header makes the record
	// one (see Alloc): whatever an earlier record left there never shows
	// in a record whose header is valid.
	clear(p.view(off+mem.Off(size-HeaderSize), HeaderSize))
	ln, sz := uint32(size>>32)|largeIncarnation.Add(1)<<largeLenBits, uint32(size)
	g := uint64(off)/granule - 1
	p.plain[2*g] = packHalves(0, ln)
	p.words[2*g+1].Store(packHalves(sz, p.largeCheck(ln, sz, largeKey))) // after the zeroes
	return Record{Off: off, Data: p.view(off, size)}, nil
}

// largeIncarnation numbers the large records this process makes (the
// incarnation in their headers: see largeLenBits), from a random start,
// so that two processes rarely count alike.
var largeIncarnation atomic.Uint32

func init() {
	var b [4]byte
	_, _ = rand.Read(b[:]) // never fails (crypto/rand); a zero start would do
	largeIncarnation.Store(binary.LittleEndian.Uint32(b[:]))
}

// largeData is where a large record's data start in its extent: after
// its header, at the pool's alignment.
func (p *Pool) largeData() uint64 { return max(HeaderSize, p.align) }

// takeLarge takes the extent of a large record of n bytes in all (its
// header and data) from the heap, the place of the header zeroed under
// the heap lock: a record being made never shows the freed header an
// earlier record left there, which Recover takes for a free cut short
// (finishCutLargeFrees).
func (p *Pool) takeLarge(n uint64) (mem.Off, error) {
	return p.heap.AllocZeroed(context.Background(), int(n), alloc.KindLarge, p.self, int(p.largeData()))
}

// refill gives the handle a slab with room for any small record: the
// current one or a spare started over if all their records are free, else
// a new one from the heap; the current slab is shelved (kept as a spare;
// the oldest spare beyond maxSpares is retired). If the heap is full
// nothing changes (smaller records may still fit the current slab).
// makeRoom makes room at the cursor for a record of k granules: it
// settles a carving in progress, and refills if the slab has no room.
func (h *Handle) makeRoom(k uint64) error {
	if h.carving != nil {
		h.settle()
		if uint64(h.cur)+k <= uint64(h.limit) {
			return nil
		}
	}
	return h.refill()
}

// settle writes the headers of the records the last carving has left
// (those Next writes again, alike), so that nothing the handle carves or
// does after it leaves a slot without a header below allocated records.
func (h *Handle) settle() {
	if c := h.carving; c != nil {
		c.writeLeft()
		h.carving, h.limit = nil, h.carvedLimit
	}
}

func (h *Handle) refill() error {
	p := h.p
	if h.slab != 0 && p.allFree(h.slab, h.sh, h.cur) {
		// Every record of the full slab was freed already: start it
		// over, with a new generation, instead of trading it for
		// another (no heap lock; its memory is still in the cache).
		h.start(h.slab, true)
		return nil
	}
	for i, s := range h.spares {
		if p.allFree(s.slab, s.sh, s.cur) {
			// A spare's records are all free: it becomes the current
			// slab again.
			h.spares = slices.Delete(h.spares, i, i+1)
			h.shelve()
			h.start(s.slab, true)
			return nil
		}
	}
	off, err := p.takeSlab()
	if err != nil {
		h.Trim() // a spare that became free since: for others
		return fmt.Errorf("slab: new slab: %w", err)
	}
	h.shelve()
	h.start(off, false)
	return nil
}

// takeSlab takes the extent of a new slab from the heap, its header
// zeroed under the heap lock: a slab being made never shows what a slab
// whose return was cut short shows (Pool.returnCut), whatever the memory
// held before.
func (p *Pool) takeSlab() (mem.Off, error) {
	return p.heap.AllocZeroed(context.Background(), int(p.slabSize), alloc.KindSlab, p.self, slabHeaderSize)
}

// shelve puts the current slab away before the handle moves on to
// another: as the newest spare, the oldest beyond maxSpares retired. This
// holds for records of every slab size class: a handle whose records are
// a sizeable part of a slab (a few per slab) and whose consumer keeps up
// cycles through the same three slabs as one of small records; when its
// records queue up over more slabs, no spare is free when wanted and the
// oldest goes back to the heap two refills later than it would if it were
// retired at once, which costs nothing but the allFree checks.
func (h *Handle) shelve() {
	p := h.p
	if h.slab == 0 {
		return
	}
	if len(h.spares) == maxSpares {
		s := h.spares[0]
		p.retire(s.slab, s.sh, s.cur)
		h.spares = slices.Delete(h.spares, 0, 1)
	}
	h.spares = append(h.spares, spare{h.slab, h.sh, h.cur})
}

// Trim retires the spares whose records are all free, giving them back to
// the heap: what a handle that will not allocate for a while, or that
// just failed for want of room, should not keep.
func (h *Handle) Trim() {
	k := 0
	for _, s := range h.spares {
		if h.p.allFree(s.slab, s.sh, s.cur) {
			h.p.retire(s.slab, s.sh, s.cur)
			continue
		}
		h.spares[k] = s
		k++
	}
	h.spares = h.spares[:k]
}

// maxSpares is how many full slabs a handle keeps besides its current
// one, to start over once their records are all free: enough to cover a
// channel's lag (a ring of 1024 records of 64 bytes spans about a slab and
// a half), so that a producer cycles through a few slabs that stay in the
// cache instead of walking the heap.
const maxSpares = 2

// spare is a full slab a handle keeps (still active: not retired).
type spare struct {
	slab mem.Off
	sh   *slabHeader
	cur  uint32 // where allocation stopped
}

// allFree reports whether every record carved from a slab below cur has
// been freed. Once true it stays true: no live record is left to free (a
// late double free finds its bits set, or, after the restart, a header of
// another generation).
func (p *Pool) allFree(slab mem.Off, sh *slabHeader, cur uint32) bool {
	g := p.geo
	e := uint64(cur - g.recBase)
	wp, r := e/64, e%64
	// All free means: every word below the allocation point complete,
	// the allocated bits of the word it falls in set, and the count
	// showing exactly those completions (a freer decrements after its
	// CAS, so a count not yet caught up only delays the restart). The
	// word at the allocation point completes too when it is the last one
	// and allocation reached its preset tail.
	complete := wp
	if r != 0 {
		w := p.words[uint64(slab)/8+bitmapWord+wp].Load()
		if low := uint64(1)<<r - 1; w&low != low {
			return false
		}
		if w == ^uint64(0) {
			complete++
		}
	}
	return sh.Count.Load() == count(genOf(sh.Ident.Load()), active+g.words-uint32(complete))
}

// start initialises the slab at off for this handle, or restarts one of
// its slabs (the current one or a spare): header, bitmap, count, a fresh
// generation (another than the slab had, so that the headers of earlier
// records there no longer validate), and the cursor. A new slab gets its
// owner first and its magic last; a restarted one gets its new generation
// first.
func (h *Handle) start(off mem.Off, restart bool) {
	p := h.p
	sh := &p.slabs[off/slabHeaderSize]
	old := uint32(sh.Ident.Load() >> 32)
	var gen uint32
	for gen == 0 || (restart && gen == old) {
		var r [4]byte
		rand.Read(r[:])
		gen = binary.LittleEndian.Uint32(r[:])
	}
	g := p.geo
	if restart {
		sh.Ident.Store(ident(gen))
	} else {
		sh.Owner.Store(uint64(p.self))
		sh.Salt = p.salt
		sh.Pages = uint32(p.slabSize / p.ps)
		sh.Self = uint64(off)
		sh.RecBase = g.recBase
		sh.Limit = g.limit
		sh.Words = g.words
		sh.Align = uint32(p.align)
		sh.Version = Version
		sh.Returner.Store(0)
		sh.Retired.Store(0)
	}
	base := uint64(off)/8 + bitmapWord
	_ = &p.words[base+uint64(g.words)-1]        // the words are in the region
	mem.ZeroWords(&p.words[base], int(g.words)) // published by the Count store below
	// Bits past the last granule are never allocated: set them now so
	// that the last word can complete.
	if bits := uint64(g.limit - g.recBase); bits%64 != 0 {
		p.words[base+uint64(g.words)-1].Store(^uint64(0) << (bits % 64))
	}
	sh.Count.Store(count(gen, active+g.words))
	if !restart {
		sh.Ident.Store(ident(gen))
	}
	h.slab, h.sh = off, sh
	h.base = uint64(off) / granule
	h.cur, h.limit = g.recBase, g.limit
	h.key = p.salt ^ gen
}

// retire gives up a slab of the handle's: it goes back to the heap once
// its records are all free (at once if they already are).
func (p *Pool) retire(slab mem.Off, sh *slabHeader, cur uint32) {
	sh.Retired.Store(uint64(cur) + 1)
	// The handle's own geometry, not the header's: shared memory may have
	// been damaged since the handle wrote it.
	g := p.geo
	p.retireSlab(slab, sh, g, cur-g.recBase, false)
}

// Close retires the handle's slabs. Their records stay valid until freed.
func (h *Handle) Close() error {
	if h.closed {
		return nil
	}
	h.settle()
	if h.slab != 0 {
		h.p.retire(h.slab, h.sh, h.cur)
		h.slab, h.sh = 0, nil
		h.cur, h.limit = 0, 0
	}
	for _, s := range h.spares {
		h.p.retire(s.slab, s.sh, s.cur)
	}
	h.spares = nil
	h.closed = true
	return nil
}

// retireSlab marks the granules from end bit e on as free and removes the
// active mark from the count. takeover is true when a reclaimer finishes
// the retirement of a dead owner, who may have set part of the bits
// already: a completion it cannot attribute is then left uncounted (the
// slab then stalls instead of being returned while a record is live, and
// Recover's returnStalled returns it once all is free).
func (p *Pool) retireSlab(slab mem.Off, sh *slabHeader, g geometry, e uint32, takeover bool) error {
	base := uint64(slab)/8 + bitmapWord
	words := uint64(g.words)
	wp, r := uint64(e)/64, uint64(e)%64
	gen := genOf(sh.Ident.Load())
	var done uint64
	if r != 0 {
		mask := ^uint64(0) << r
		word := &p.words[base+wp]
		for {
			old := word.Load()
			if takeover && old&mask == mask {
				break
			}
			if word.CompareAndSwap(old, old|mask) {
				if old != ^uint64(0) && old|mask == ^uint64(0) {
					done++
				}
				break
			}
		}
		wp++
	}
	for w := wp; w < words; w++ {
		p.words[base+w].Store(^uint64(0))
		done++
	}
	if takeover {
		if c := sh.Count.Load(); genOf(c) != gen {
			// The dead owner was starting the slab over: it stored the
			// new generation and died before the count. It handed out
			// nothing of the new generation (the walk found no record
			// of it), and every bit is set now: all is free.
			if sh.Count.CompareAndSwap(c, count(gen, 0)) {
				return p.returnSlab(slab, sh, gen)
			}
			return nil
		}
	}
	if sh.countDown(gen, active+done) {
		return p.returnSlab(slab, sh, gen)
	}
	return nil
}
