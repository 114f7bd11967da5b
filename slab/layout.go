package slab

import (
	"structs"
	"sync/atomic"
)

// Version is the layout version of slab headers and record headers (2:
// the count carries the slab's generation).
const Version = 2

const (
	// HeaderSize is the size of the inline header before every record.
	HeaderSize = 16
	// granule is the unit of record slots and of the free bitmap.
	granule = 16
	// slabHeaderSize is the fixed part of a slab header; the free bitmap
	// follows it.
	slabHeaderSize = 256
	// bitmapWord is the index, in words from the slab start, of the first
	// bitmap word.
	bitmapWord = slabHeaderSize / 8
	// slabMagic marks a slab that exists (cleared, under the heap lock,
	// when it goes back to the heap).
	slabMagic = 0x534c4231 // "SLB1"
	// active is added to a slab's count while its owner may still carve
	// records from it; retiring subtracts it.
	active = 1 << 31
	// largeKey is mixed into the check of large records' headers, and
	// freedKey marks the header of a large record that was freed.
	largeKey = 0x4c415247 // "LARG"
	freedKey = 0x46524545 // "FREE"
)

// slabHeader opens every slab (page aligned; exactly 256 bytes, so that
// the region viewed as []slabHeader indexes it by offset/256). The free
// bitmap follows: bit i of word w covers granule RecBase+64w+i of the
// slab; a set bit is a freed (or never allocated, after retirement)
// granule.
//
//	line 0, read by every freer; written once by the creator before the
//	slab's first record is handed out (Ident also when it is returned)
//	line 1, written rarely: Owner and Retired by the owner (or by a
//	reclaimer on behalf of a dead owner), Returner by the process that
//	returns the slab, Count by freers that complete a bitmap word (and
//	by Recover when it returns a stalled slab, see returnStalled)
type slabHeader struct {
	_       structs.HostLayout
	Ident   atomic.Uint64 // 0: gen<<32 | slabMagic; the magic half is zeroed when the slab is returned
	Salt    uint32        // 8: low half of the heap's salt
	Pages   uint32        // 12: slab length in pages
	Self    uint64        // 16: region offset of this header
	RecBase uint32        // 24: granule (from the slab start) of the first record slot
	Limit   uint32        // 28: granule where record slots end
	Words   uint32        // 32: bitmap words
	Align   uint32        // 36: record alignment in bytes
	Version uint32        // 40
	_       [84]byte      // 44

	Owner    atomic.Uint64 // 128: sys.Identity of the process driving the slab (owner, or a reclaimer)
	Returner atomic.Uint64 // 136: sys.Identity of the process returning the slab to the heap
	Count    atomic.Uint64 // 144: gen<<32 | bitmap words not yet complete (+ active until retired)
	Retired  atomic.Uint64 // 152: 1 + the granule where allocation stopped, written at retirement
	_        [96]byte      // 160
}

// A slab's count is tagged with the generation of the slab it counts
// (Ident's upper half): every change to it is a CAS of a count with the
// tag the changer saw when it located the slab. So a count that Recover
// has taken over (tag 0: the slab was stalled, see returnStalled) or that
// a restart has reset is never changed by a freer or retirer that was
// still on its way to it.
func count(gen, n uint32) uint64 { return uint64(gen)<<32 | uint64(n) }

// genOf is the generation in a slab's identity word.
func genOf(ident uint64) uint32 { return uint32(ident >> 32) }

// ident is the identity word of an existing slab of generation gen.
func ident(gen uint32) uint64 { return uint64(gen)<<32 | slabMagic }

// countUp adds one to the count of a slab of generation gen (finishCut's
// pin) and reports whether it did: not if the slab is no longer one of
// generation gen, or its count is of another generation.
func (sh *slabHeader) countUp(gen uint32) bool {
	for {
		if sh.Ident.Load() != ident(gen) {
			return false
		}
		old := sh.Count.Load()
		if genOf(old) != gen || uint32(old+1) == 0 {
			return false
		}
		if sh.Count.CompareAndSwap(old, old+1) {
			return true
		}
	}
}

// countDown takes n off the count of a slab of generation gen and
// reports whether it reached zero (the caller then returns the slab). A
// count of another generation is left as it is, as is one smaller than n
// (damaged: Check reports it), and so is the count of a slab that is no
// longer one of generation gen (returned, or restarted: the memory may
// be something else by now).
func (sh *slabHeader) countDown(gen uint32, n uint64) bool {
	for {
		if sh.Ident.Load() != ident(gen) {
			return false
		}
		old := sh.Count.Load()
		if genOf(old) != gen || uint64(uint32(old)) < n {
			return false
		}
		if sh.Count.CompareAndSwap(old, old-n) {
			return uint32(old-n) == 0
		}
	}
}

// recHeader is the inline header before every record's data.
//
// A record in a slab: Pos is the granule of the header from the slab
// start (so the slab is at header - 16*Pos), Len the slot's length in
// granules (header, data and alignment padding), Size the bytes asked
// for, Check a hash of the three with the buffer's salt and the slab's
// generation. A large record (its own extent): Pos is 0, Len:Size the
// size in bytes (Len's high bits an incarnation: see largeLenBits), Check
// a hash with largeKey (freedKey once freed) and the incarnation.
//
// The header is written once, by the allocating handle, before the
// record is handed out, and is read-only afterwards (a large record's
// Check is rewritten under the heap lock when it is freed).
type recHeader struct {
	_     structs.HostLayout
	Pos   uint32
	Len   uint32
	Size  uint32
	Check uint32
}

// A large record's header keeps its size's high bits in the low
// largeLenBits of Len (sizes are below 2^46, backend's maxSegmentSize),
// and above them an incarnation: a number that differs from one large
// record to the next that this process makes (largeIncarnation), mixed
// into the header's Check. So a large record's Check, its key
// (Pool.RecordKey), tells it from an earlier large record of the same
// size at the same place, as a slab's generation does for slab records.
const (
	largeLenBits = 14
	largeLenMask = 1<<largeLenBits - 1
)

// largeCheck is the Check of a large record's header whose Len and Size
// fields are ln and size, with key largeKey (live) or freedKey (freed).
func (p *Pool) largeCheck(ln, size, key uint32) uint32 {
	return recCheck(0, ln&largeLenMask, size, p.salt^key^(ln>>largeLenBits)*0x9e3779b1)
}

// largeBytes is the size in bytes a large record's header gives.
func largeBytes(hd recHeader) uint64 { return uint64(hd.Len&largeLenMask)<<32 | uint64(hd.Size) }

// recCheck mixes a header's fields with a key; it is never 0.
func recCheck(pos, ln, size, key uint32) uint32 { return recCheckAt(pos, recCheckOf(ln, size, key)) }

// recCheckOf and recCheckAt are recCheck in two steps, for a loop over
// the records of one slab and one size: recCheckOf is the part that does
// not depend on the position.
func recCheckOf(ln, size, key uint32) uint64 {
	return uint64(size)<<32 ^ (uint64(ln)<<20 | uint64(key)<<40 | uint64(key)>>12)
}

func recCheckAt(pos uint32, of uint64) uint32 {
	x := (uint64(pos) ^ of) * 0x9e3779b97f4a7c15
	return uint32(x>>32) | 1
}

// geometry of a slab of the given size and alignment.
type geometry struct {
	recBase, limit, words uint32
}

func slabGeometry(bytes, align uint64) geometry {
	g := bytes / granule
	w0 := (g + 63) / 64
	hdr := slabHeaderSize + 8*w0
	// The data after the first header must be aligned: (recBase+1)*16 is
	// a multiple of align.
	recBase := (hdr+HeaderSize+align-1)/align*align/granule - 1
	bits := g - recBase
	return geometry{recBase: uint32(recBase), limit: uint32(g), words: uint32((bits + 63) / 64)}
}

// slotGranules is the slot of a record of size bytes: header, data, and
// padding to the alignment (size 0 takes the slot of size 1).
func slotGranules(size, align uint64) uint64 {
	return (HeaderSize + max(size, 1) + align - 1) &^ (align - 1) / granule
}
