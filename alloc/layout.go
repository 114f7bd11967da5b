package alloc

import (
	"encoding/binary"
	"structs"
	"sync/atomic"
)

// Version is the layout version of the heap's shared structures (root,
// page map, index). A heap of another version is refused by Attach.
const Version = 1

// rootMagic is "HIPCHEAP" read as a little-endian word.
var rootMagic = binary.LittleEndian.Uint64([]byte("HIPCHEAP"))

// RootSize is the number of bytes of the region's extension area
// (backend.Region.Ext) the heap uses for its root: Ext()[0:RootSize].
const RootSize = 512

// maxPages bounds the number of allocatable pages so that a page number
// and a length fit in 32 bits each (the index keys pack both in a word).
// With 4 KiB pages that is 16 TiB; larger regions need larger pages.
const maxPages = 1<<32 - 2

// logCap is the number of page-map word writes one operation may journal.
const logCap = 12

// root is the heap's control block, at Ext()[0:512] of the region.
//
//	0    immutable geometry, written by the creator before publishing
//	128  the robust lock (its own line: written by every acquirer)
//	256  heap state and the redo log, written only by the lock holder
type root struct {
	_        structs.HostLayout
	Magic    uint64   // 0: rootMagic
	Version  uint32   // 8: Version
	PageSize uint32   // 12: bytes per page (= the region's page size)
	Pages    uint64   // 16: allocatable pages (N)
	MapOff   uint64   // 24: region offset of the page map, [N]pageEnt
	HeapOff  uint64   // 32: region offset of the index, [HeapCap]uint64
	HeapCap  uint64   // 40: capacity of the index (N/2+1)
	FirstOff uint64   // 48: region offset of allocatable page 0
	Salt     uint64   // 56: random per buffer, for the layers above
	Creator  uint64   // 64: sys.Identity of the initializer
	MetaEnd  uint64   // 72: region offset where the metadata ends (= FirstOff)
	_        [44]byte // 80
	Checksum uint32   // 124: CRC-32C of bytes [0,124)

	Lock LockWord // 128: the heap lock

	// Written by the lock holder only; read under the lock.
	FreePages    uint64        // 256: pages in free extents
	AllocPages   uint64        // 264: pages in allocated extents
	HeapLen      uint64        // 272: entries in the index (= free extents)
	AllocExtents uint64        // 280: allocated extents
	Repairs      uint64        // 288: index rebuilds after a takeover or an inconsistency
	LogState     atomic.Uint32 // 296: 1 while the log below holds an operation not yet fully applied
	LogN         uint32        // 300: entries in Log
	NeedRepair   uint32        // 304: 1 after a takeover until the index is rebuilt
	_            uint32        // 308
	Log          [logCap]logEntry
	_            [8]byte // 504
}

// logEntry is one journaled write: page-map word Idx (page*2 + 0 for the
// tag, + 1 for the aux word) gets Val.
type logEntry struct {
	_   structs.HostLayout
	Idx uint64
	Val uint64
}

// pageEnt is the page map entry of one allocatable page.
//
// Tag is a boundary tag on the first and last page of every extent and
// zero on the pages between. Aux, on the first page of an allocated
// extent, is the owner's sys.Identity (0: no owner); on the first page of
// a free extent it is the extent's position in the index plus one
// (derived: rebuilt on repair); elsewhere zero.
type pageEnt struct {
	_   structs.HostLayout
	Tag uint64
	Aux uint64
}

// Boundary tag bits.
const (
	tagLenMask    = 1<<32 - 1 // extent length in pages
	tagFree       = 1 << 32
	tagAlloc      = 2 << 32
	tagStateMask  = 3 << 32
	tagHead       = 1 << 34 // first page of the extent
	tagTail       = 1 << 35 // last page of the extent (both on a 1-page extent)
	tagKindShift  = 40      // 8 bits: the Kind of an allocated extent
	tagKindMask   = 0xff << tagKindShift
	tagMarker     = 0xa11c << 48
	tagMarkerMask = 0xffff << 48
	tagReserved   = 0xf<<36 | 0xff<<40 // must be zero (kind bits only on allocated)
)

func makeTag(state uint64, n uint64, head, tail bool, kind Kind) uint64 {
	t := tagMarker | state | n
	if head {
		t |= tagHead
	}
	if tail {
		t |= tagTail
	}
	if state == tagAlloc {
		t |= uint64(kind) << tagKindShift
	}
	return t
}

// headTag and tailTag of an extent of n pages; for n == 1 they are one.
func headTag(state, n uint64, kind Kind) uint64 { return makeTag(state, n, true, n == 1, kind) }
func tailTag(state, n uint64, kind Kind) uint64 { return makeTag(state, n, n == 1, true, kind) }

func tagLen(t uint64) uint64   { return t & tagLenMask }
func tagState(t uint64) uint64 { return t & tagStateMask }
func tagKind(t uint64) Kind    { return Kind(t >> tagKindShift & 0xff) }
func isHead(t uint64) bool     { return t&tagHead != 0 }
func isTail(t uint64) bool     { return t&tagTail != 0 }

// tagValid reports whether a nonzero tag is well formed.
func tagValid(t uint64) bool {
	if t&tagMarkerMask != tagMarker || t&(tagHead|tagTail) == 0 || tagLen(t) == 0 {
		return false
	}
	switch tagState(t) {
	case tagFree:
		return t&tagReserved == 0
	case tagAlloc:
		return t&(0xf<<36) == 0
	}
	return false
}

// Index keys: the length in the high half (the max-heap orders by it) and
// the complement of the start page in the low half, so that among equal
// lengths the lowest start wins.
func makeKey(n, start uint64) uint64 { return n<<32 | (0xffffffff - start) }
func keyLen(k uint64) uint64         { return k >> 32 }
func keyStart(k uint64) uint64       { return 0xffffffff - k&0xffffffff }

// metaBytes is the size of the page map and index for n pages.
func metaBytes(n uint64) uint64 { return n*16 + (n/2+1)*8 }
