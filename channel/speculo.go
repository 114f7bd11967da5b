package channel

import (
	"container/heap"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
	"math/bits"
	"structs"
	"sync/atomic"
	"time"

	"github.com/heapipc/ipc/alloc"
	"github.com/heapipc/ipc/backend"
	"github.com/heapipc/ipc/internal/errs"
	"github.com/heapipc/ipc/internal/mem"
	"github.com/heapipc/ipc/internal/sys"
)

// A speculo area: one writer, any number of readers, in any processes.
//
// The area is a control block (the registry's Spec.Control) and a chain of
// extents taken from the heap. Exactly one extent is current; older ones
// were retired by a GC and wait until no reader is left on them.
//
//	control block (512 + 32×Slots bytes)
//	0    immutable: magic, version, slots, capacity, index slots,
//	     max blocks, data offset                       (creator)
//	128  Current, Epoch, GCs                           (writer, at a GC)
//	256  Writer, Closed, Threshold, Oldest, Pending,
//	     LastSeq, LastEpoch, LastBlock, Freeing,
//	     WriterGen                                     (writer)
//	384  Notify, Sleepers                              (Sleepers: set by
//	                                                    parking readers,
//	                                                    cleared by the
//	                                                    writer as it wakes
//	                                                    them; Notify: the
//	                                                    writer)
//	512  reader slots [Slots]{Owner, Epoch}            (each its reader;
//	                                                    the writer reclaims
//	                                                    dead readers' slots)
//
//	extent (DataOff + Capacity bytes, whole heap pages)
//	0    immutable: magic, area (control block offset), epoch, capacity,
//	     index slots, data offset                      (writer, before
//	                                                    publishing)
//	128  Committed, Next                               (writer)
//	256  index [IndexSlots]uint64: 0, or a 32-bit tag  (writer; one
//	     of the block id | chunk offset/8 + 1           atomic store per
//	                                                    update)
//	DataOff chunks: {Seq, Block, Expiry, Size|Flags<<32} + payload,
//	     8-byte aligned, in sequence order             (writer; Flags
//	                                                    change after commit)
//
// Visibility: a chunk is written past Committed and published by a store
// of Committed (release); readers load Committed (acquire) and never look
// past it, so a writer that dies in the middle of an append leaves nothing
// half-visible. Apart from the Flags half of the fourth header word,
// committed bytes never change.
//
// Obsoletion (never invisible): Replace writes the new version, commits
// it, points the block's index slot at it, and only then marks the old
// version obsolete. A reader that finds the version the index gave it
// obsolete loads the index again and finds the newer one.
//
// GC: the writer copies the valid chunks (same sequence numbers, same
// block ids) into a new extent, builds its index, links it as the old
// extent's Next and switches Current (then Epoch) with a store. Readers
// see the switch on their next call and move, resuming after the last
// sequence number they returned.
//
// Reader pinning: a reader publishes in its slot the epoch of the extent
// it reads; it loads Epoch, stores it in its slot, and only then loads
// Current, so the extent it dereferences is never older than its pin. The
// writer frees a retired extent (oldest first) after unlinking it from
// Oldest and finding no slot pinning an epoch at or below its own; a slot
// held by a dead process is reclaimed (sys.Alive) instead of pinning
// forever. Every offset and length read from shared memory is checked: a
// bad one is ErrCorrupt, never a panic or an out-of-range access.
type speculoCB struct {
	_          structs.HostLayout
	Magic      uint64        // 0
	Version    uint32        // 8
	Slots      uint32        // 12: reader slots
	Capacity   uint64        // 16: data bytes of every extent
	IndexSlots uint64        // 24: power of two
	MaxBlocks  uint64        // 32: blocks an extent may index
	DataOff    uint64        // 40: offset of the data in an extent
	_          [80]byte      // 48
	Current    atomic.Uint64 // 128: offset of the current extent (0: none yet)
	Epoch      atomic.Uint64 // 136: epoch of the current extent, stored after Current
	GCs        atomic.Uint64 // 144: completed GCs
	_          [104]byte     // 152
	Writer     atomic.Uint64 // 256: sys.Identity of the writer end, 0: none
	Closed     atomic.Uint32 // 264: 1: the last writer closed its end
	Threshold  atomic.Uint32 // 268: GC threshold, percent of capacity (0: only when full)
	Oldest     atomic.Uint64 // 272: oldest extent not yet freed
	Pending    atomic.Uint64 // 280: extent a GC is filling (0: none)
	LastSeq    atomic.Uint64 // 288: a sequence number at least as high as any a GC dropped (stored at GC and Close)
	LastEpoch  atomic.Uint64 // 296: last epoch given to an extent
	LastBlock  atomic.Uint64 // 304: last Append block id as of the last GC or Close
	Freeing    atomic.Uint64 // 312: retired extent unlinked from Oldest, being freed
	WriterGen  atomic.Uint64 // 320: bumped by every writer attach
	_          [56]byte      // 328
	Notify     atomic.Uint32 // 384: futex word readers park on
	Sleepers   atomic.Uint32 // 388: 1: a reader is (about to be) parked on Notify
	_          [120]byte     // 392
}

// speculoSlot is one reader's slot.
type speculoSlot struct {
	_     structs.HostLayout
	Owner atomic.Uint64 // 0: sys.Identity of the reader, 0: free
	Epoch atomic.Uint64 // 8: epoch of the extent it may read, 0: none
	_     uint64        // 16
	_     uint64        // 24
}

// extentHdr opens every extent. All words are atomics: a checker may read
// the header of an extent that is being retired.
type spExtentHdr struct {
	_          structs.HostLayout
	Magic      atomic.Uint64 // 0
	Area       atomic.Uint64 // 8: offset of the area's control block
	Epoch      atomic.Uint64 // 16: unique, increasing along the chain
	Capacity   atomic.Uint64 // 24
	IndexSlots atomic.Uint64 // 32
	DataOff    atomic.Uint64 // 40
	_          [80]byte      // 48
	Committed  atomic.Uint64 // 128: data bytes committed (release store)
	Next       atomic.Uint64 // 136: the extent that replaced it (0: current)
	_          [112]byte     // 144
}

// chunkHdr documents the chunk header; the code reads it as four words.
type spChunkHdr struct {
	_      structs.HostLayout
	Seq    atomic.Uint64 // 0: unique, increasing, kept by GC
	Block  atomic.Uint64 // 8: block id, kept by GC and updates
	Expiry atomic.Int64  // 16: Unix ns after which it is invalid (0: never)
	Meta   atomic.Uint64 // 24: payload size (low 32 bits) | flags << 32
}

const (
	speculoCBSize   = 512
	speculoSlotSize = 32
	spExtHdrSize    = 256
	spChunkHdrSize  = 32

	spObsolete = 1 // a newer version of the block is committed
	spCounted  = 2 // the writer has counted the chunk as invalid

	speculoVersion = 1

	// SpeculoAutoBlock is the first block id Append assigns; ids below
	// it are free for Replace to use as well-known ids.
	SpeculoAutoBlock = 1 << 63
	// MaxSpeculoSlots bounds the reader slots of an area.
	MaxSpeculoSlots = 1 << 16
	// MaxSpeculoCapacity bounds an area's capacity.
	MaxSpeculoCapacity = 1 << 34
	// MinSpeculoCapacity is the smallest capacity.
	MinSpeculoCapacity = 64
	// DefaultSpeculoSlots is the number of reader slots by default.
	DefaultSpeculoSlots = 64
	// DefaultSpeculoThreshold is the default GC threshold in percent.
	DefaultSpeculoThreshold = 50
)

var (
	speculoMagic  = binary.LittleEndian.Uint64([]byte("HIPCSPEC"))
	spExtentMagic = binary.LittleEndian.Uint64([]byte("HIPCSPEX"))
)

// speculoHook, when set by a test, is called at the crash points of the
// writer's protocols.
var speculoHook func(point string)

func spHook(point string) {
	if speculoHook != nil {
		speculoHook(point)
	}
}

// SpeculoConfig describes an area to create. Zero fields take defaults.
type SpeculoConfig struct {
	// Slots is the number of reader slots (concurrent readers).
	Slots int
	// MaxBlocks bounds the distinct blocks one extent may hold (default
	// capacity/128, at least 16: enough for chunks of 96 payload bytes
	// or more); the index costs 11-21 bytes per block.
	MaxBlocks int
	// Threshold is the GC threshold in percent of the capacity (0: GC
	// only when full); negative: DefaultSpeculoThreshold.
	Threshold int
}

type speculoGeom struct {
	capacity   uint64
	indexSlots uint64
	shift      uint // 64 - log2(indexSlots)
	maxBlocks  uint64
	dataOff    uint64
	extBytes   uint64
	slots      int
}

// SpeculoCapacity rounds a requested capacity to what an area stores.
func SpeculoCapacity(n uint64) uint64 { return (n + 7) &^ 7 }

func speculoGeometry(capacity uint64, slots int, maxBlocks uint64) (speculoGeom, error) {
	if capacity < MinSpeculoCapacity || capacity > MaxSpeculoCapacity || capacity%8 != 0 {
		return speculoGeom{}, fmt.Errorf("speculo capacity %d (want a multiple of 8 in [%d, %d]): %w", capacity, MinSpeculoCapacity, uint64(MaxSpeculoCapacity), errs.ErrInvalidSize)
	}
	if slots < 1 || slots > MaxSpeculoSlots {
		return speculoGeom{}, fmt.Errorf("speculo reader slots %d (want 1..%d): %w", slots, MaxSpeculoSlots, errs.ErrInvalidArgument)
	}
	if maxBlocks == 0 {
		// At most what the capacity holds: a small area's default must
		// pass the check below.
		maxBlocks = min(max(16, capacity/128), capacity/spChunkHdrSize)
	}
	if maxBlocks > capacity/spChunkHdrSize || maxBlocks > 1<<32 {
		return speculoGeom{}, fmt.Errorf("speculo max blocks %d (at most %d for %d bytes): %w", maxBlocks, min(capacity/spChunkHdrSize, 1<<32), capacity, errs.ErrInvalidArgument)
	}
	n := uint64(16)
	for n < maxBlocks+maxBlocks/3+1 {
		n <<= 1
	}
	g := speculoGeom{capacity: capacity, indexSlots: n, maxBlocks: maxBlocks, slots: slots}
	g.shift = uint(64 - bits.TrailingZeros64(n))
	g.dataOff = (spExtHdrSize + 8*n + 127) &^ 127
	g.extBytes = g.dataOff + capacity
	return g, nil
}

// SpeculoControlSize is the control block size of an area with n reader
// slots (0: the default).
func SpeculoControlSize(slots int) uint64 {
	if slots <= 0 {
		slots = DefaultSpeculoSlots
	}
	return speculoCBSize + speculoSlotSize*uint64(slots)
}

// SpeculoExtentSize is the heap allocation one extent of an area takes:
// the same for every extent (a GC briefly holds two, plus those readers
// still pin).
func SpeculoExtentSize(capacity uint64, cfg SpeculoConfig) (uint64, error) {
	cfg = cfg.norm()
	g, err := speculoGeometry(capacity, cfg.Slots, uint64(cfg.MaxBlocks))
	return g.extBytes, err
}

func (c SpeculoConfig) norm() SpeculoConfig {
	if c.Slots <= 0 {
		c.Slots = DefaultSpeculoSlots
	}
	if c.MaxBlocks < 0 {
		c.MaxBlocks = 0
	}
	if c.Threshold < 0 {
		c.Threshold = DefaultSpeculoThreshold
	}
	return c
}

// InitSpeculo lays out an area's control block (the zeroed bytes the
// registry allocated, of SpeculoControlSize(cfg.Slots) bytes). The first
// extent is allocated by the first writer.
func InitSpeculo(b []byte, capacity uint64, cfg SpeculoConfig) error {
	cfg = cfg.norm()
	if cfg.Threshold > 100 {
		return fmt.Errorf("speculo GC threshold %d%%: %w", cfg.Threshold, errs.ErrInvalidArgument)
	}
	g, err := speculoGeometry(capacity, cfg.Slots, uint64(cfg.MaxBlocks))
	if err != nil {
		return err
	}
	if uint64(len(b)) < SpeculoControlSize(cfg.Slots) {
		return fmt.Errorf("speculo control block of %d bytes: %w", len(b), errs.ErrInvalidSize)
	}
	cb, err := mem.At[speculoCB](b, 0)
	if err != nil {
		return err
	}
	cb.Version = speculoVersion
	cb.Slots = uint32(g.slots)
	cb.Capacity = g.capacity
	cb.IndexSlots = g.indexSlots
	cb.MaxBlocks = g.maxBlocks
	cb.DataOff = g.dataOff
	cb.Threshold.Store(uint32(cfg.Threshold))
	cb.Magic = speculoMagic
	return nil
}

// SpeculoEnv is the process-local environment of an opened area.
type SpeculoEnv struct {
	// Clock returns the current time in Unix nanoseconds; expiry times
	// are compared with it. nil: the wall clock, which every process on
	// the host shares.
	Clock func() int64
	// Wait tunes the blocking reads.
	Wait WaitOptions
}

// Speculo is one process's view of a speculo area.
type Speculo struct {
	en     *Entry
	region *backend.Region
	heap   *alloc.Heap
	buf    []byte
	cbOff  mem.Off
	cb     *speculoCB
	slots  []speculoSlot
	g      speculoGeom
	clock  func() int64
	wait   WaitOptions
}

func spWallClock() int64 { return time.Now().UnixNano() }

// OpenSpeculo validates the control block of a speculo area.
func OpenSpeculo(region *backend.Region, h *alloc.Heap, en *Entry, env SpeculoEnv) (*Speculo, error) {
	b := region.Bytes()
	cb, err := mem.At[speculoCB](b, en.Control)
	if err != nil {
		return nil, err
	}
	at := uint64(en.Control)
	if cb.Magic != speculoMagic {
		return nil, errs.Corrupt("speculo magic", at, "magic %#x", cb.Magic)
	}
	if cb.Version != speculoVersion {
		return nil, fmt.Errorf("speculo area layout version %d: %w", cb.Version, errs.ErrVersion)
	}
	if cb.Capacity != en.Size {
		return nil, errs.Corrupt("speculo capacity", at+16, "capacity %d (registry says %d)", cb.Capacity, en.Size)
	}
	g, err := speculoGeometry(cb.Capacity, int(cb.Slots), cb.MaxBlocks)
	if err != nil {
		return nil, errs.Corrupt("speculo geometry", at+12, "%v", err)
	}
	if g.indexSlots != cb.IndexSlots || g.dataOff != cb.DataOff || g.maxBlocks != cb.MaxBlocks {
		return nil, errs.Corrupt("speculo geometry", at+24, "index slots %d, data offset %d (want %d, %d)", cb.IndexSlots, cb.DataOff, g.indexSlots, g.dataOff)
	}
	slots, err := mem.Slice[speculoSlot](b, en.Control+speculoCBSize, g.slots)
	if err != nil {
		return nil, err
	}
	if env.Clock == nil {
		env.Clock = spWallClock
	}
	return &Speculo{en: en, region: region, heap: h, buf: b, cbOff: en.Control, cb: cb, slots: slots, g: g, clock: env.Clock, wait: env.Wait.norm()}, nil
}

// Capacity is the data bytes of an extent.
func (s *Speculo) Capacity() uint64 { return s.g.capacity }

// MaxChunk is the largest payload a chunk may have: one chunk that fills
// the area.
func (s *Speculo) MaxChunk() uint64 { return min(s.g.capacity-spChunkHdrSize, math.MaxUint32) }

// MaxBlocks is how many distinct blocks an extent can hold.
func (s *Speculo) MaxBlocks() uint64 { return s.g.maxBlocks }

// SpeculoChunkSpace is the bytes a chunk of size payload bytes takes in an
// extent (header and padding included).
func SpeculoChunkSpace(size uint64) uint64 { return spChunkHdrSize + (size+7)&^7 }

func (s *Speculo) corrupt(where string, off uint64, format string, args ...any) error {
	return errs.Corrupt("speculo "+where, off, format, args...)
}

// ---- extents ----

// extent is a validated view of one extent.
type spExtent struct {
	off   mem.Off
	hdr   *spExtentHdr
	epoch uint64
	idx   []atomic.Uint64 // IndexSlots entries (spEntry)
	words []atomic.Uint64 // the data, as words
	data  []byte          // the data
	// Plain views of the same memory, for words nobody else can read
	// yet: the header of a chunk not yet committed, a whole extent not
	// yet published. Their bytes are published by the release store of
	// Committed or Current, and plain stores cost no locked instruction.
	plain    []uint64
	plainIdx []uint64
}

// openExtent validates the extent at off: only for extents the caller
// knows are not freed (pinned, or reached by the writer).
func (s *Speculo) openExtent(off uint64) (*spExtent, error) {
	if off == 0 {
		return nil, s.corrupt("extent", uint64(s.cbOff), "null extent offset")
	}
	h, err := mem.At[spExtentHdr](s.buf, mem.Off(off))
	if err != nil {
		return nil, fmt.Errorf("speculo extent: %w", err)
	}
	if uint64(len(s.buf))-off < s.g.extBytes {
		return nil, s.corrupt("extent", off, "extent of %d bytes runs past the region", s.g.extBytes)
	}
	if m := h.Magic.Load(); m != spExtentMagic {
		return nil, s.corrupt("extent magic", off, "magic %#x", m)
	}
	if a := h.Area.Load(); a != uint64(s.cbOff) {
		return nil, s.corrupt("extent area", off+8, "extent of area %#x, not %#x", a, uint64(s.cbOff))
	}
	if h.Capacity.Load() != s.g.capacity || h.IndexSlots.Load() != s.g.indexSlots || h.DataOff.Load() != s.g.dataOff {
		return nil, s.corrupt("extent geometry", off+24, "capacity %d, index slots %d, data offset %d", h.Capacity.Load(), h.IndexSlots.Load(), h.DataOff.Load())
	}
	e := h.Epoch.Load()
	if e == 0 {
		return nil, s.corrupt("extent epoch", off+16, "epoch 0")
	}
	x := &spExtent{off: mem.Off(off), hdr: h, epoch: e}
	if x.idx, err = mem.SliceN[atomic.Uint64](s.buf, mem.Off(off+spExtHdrSize), s.g.indexSlots); err != nil {
		return nil, err
	}
	if x.words, err = mem.SliceN[atomic.Uint64](s.buf, mem.Off(off+s.g.dataOff), s.g.capacity/8); err != nil {
		return nil, err
	}
	if x.data, err = mem.Bytes(s.buf, mem.Off(off+s.g.dataOff), s.g.capacity); err != nil {
		return nil, err
	}
	if x.plain, err = mem.SliceN[uint64](s.buf, mem.Off(off+s.g.dataOff), s.g.capacity/8); err != nil {
		return nil, err
	}
	if x.plainIdx, err = mem.SliceN[uint64](s.buf, mem.Off(off+spExtHdrSize), s.g.indexSlots); err != nil {
		return nil, err
	}
	return x, nil
}

// committed loads the extent's committed end (acquire) and checks it.
func (s *Speculo) committedOf(x *spExtent) (uint64, error) {
	c := x.hdr.Committed.Load()
	if c > s.g.capacity || c%8 != 0 {
		return 0, s.corrupt("extent committed", uint64(x.off)+128, "committed %d of capacity %d", c, s.g.capacity)
	}
	return c, nil
}

// chunk is a validated chunk header.
type spChunk struct {
	off    uint64 // in the extent's data
	n      uint64 // bytes taken: header, payload, padding
	seq    uint64
	block  uint64
	expiry int64
	size   uint64
	flags  uint32
}

func (c spChunk) expired(now int64) bool { return c.expiry != 0 && c.expiry <= now }

// chunkAt reads into c the chunk header at data offset p of x, which
// must lie wholly below committed.
func (s *Speculo) chunkAt(x *spExtent, p, committed uint64, c *spChunk) error {
	if p%8 != 0 || p >= committed || committed-p < spChunkHdrSize {
		return s.badChunk(x, p, committed, nil)
	}
	w := x.words[p/8 : p/8+4 : p/8+4]
	meta := w[3].Load()
	c.off, c.seq, c.block, c.expiry = p, w[0].Load(), w[1].Load(), int64(w[2].Load())
	c.size, c.flags = meta&math.MaxUint32, uint32(meta>>32)
	c.n = SpeculoChunkSpace(c.size)
	if c.n > committed-p || c.seq == 0 || c.block == 0 {
		return s.badChunk(x, p, committed, c)
	}
	return nil
}

func (s *Speculo) badChunk(x *spExtent, p, committed uint64, c *spChunk) error {
	at := uint64(x.off) + s.g.dataOff + p
	switch {
	case c == nil:
		return s.corrupt("chunk offset", at, "chunk at %d of %d committed bytes", p, committed)
	case c.n > committed-p:
		return s.corrupt("chunk size", at+24, "payload of %d bytes at %d runs past %d committed bytes", c.size, p, committed)
	}
	return s.corrupt("chunk header", at, "sequence %d, block %d", c.seq, c.block)
}

func (s *Speculo) payload(x *spExtent, c *spChunk) []byte {
	start := c.off + spChunkHdrSize
	return x.data[start : start+c.size : start+c.size]
}

// An index entry is 0 (empty) or a 32-bit tag of the block id (a hash
// that spares most mismatches a look at the chunk) above the chunk's data
// offset/8 + 1. The block id itself is in the chunk header; a slot only
// ever holds versions of one block, so one atomic store updates it.
func spTag(block uint64) uint64 { return (block * 0xBF58476D1CE4E5B9) >> 32 }

func spEntry(block, off uint64) uint64 { return spTag(block)<<32 | (off/8 + 1) }

// spEntryOff is the chunk offset of a non-empty entry.
func spEntryOff(e uint64) uint64 { return (e&math.MaxUint32 - 1) * 8 }

// probe finds block in x's index, reading the chunks it points at (which
// lie below committed): its slot, the chunk offset and true, or the
// empty slot where it would go and false. A full table without it is
// corrupt.
func (s *Speculo) probe(x *spExtent, block, committed uint64) (slot, off uint64, found bool, err error) {
	mask := s.g.indexSlots - 1
	tag := spTag(block)
	i := (block * 0x9E3779B97F4A7C15) >> s.g.shift
	for n := uint64(0); n < s.g.indexSlots; n++ {
		e := x.idx[i].Load()
		if e == 0 {
			return i, 0, false, nil
		}
		if e>>32 == tag {
			off := spEntryOff(e)
			if off >= committed || committed-off < spChunkHdrSize {
				// A reader's committed may predate the entry (stored
				// after Committed): look again.
				if c := x.hdr.Committed.Load(); c > committed && c <= s.g.capacity {
					committed = c
				}
				if off >= committed || committed-off < spChunkHdrSize {
					return 0, 0, false, s.corrupt("index", uint64(x.off)+spExtHdrSize+8*i, "entry %#x points at %d of %d committed bytes", e, off, committed)
				}
			}
			if x.words[off/8+1].Load() == block {
				return i, off, true, nil
			}
		}
		i = (i + 1) & mask
	}
	return 0, 0, false, s.corrupt("index", uint64(x.off)+spExtHdrSize, "index of %d slots full", s.g.indexSlots)
}

// mark sets flags on the chunk at p and reports whether the chunk was not
// counted as invalid before.
func spMark(x *spExtent, p uint64, flags uint32) bool {
	old := x.words[p/8+3].Or(uint64(flags) << 32)
	return uint32(old>>32)&spCounted == 0
}

// ---- the writer ----

// SpeculoWriter is the writer end. Its methods must be called from one
// goroutine at a time.
type SpeculoWriter struct {
	*Speculo
	self      sys.Identity
	x         *spExtent // the current extent
	committed uint64    // its committed end
	seq       uint64    // last sequence number given
	lastBlock uint64
	invalid   uint64 // bytes of invalid chunks counted in x
	used      uint64 // index slots used in x
	threshold uint64 // invalid bytes that trigger a GC (0: off)
	pend      spPending
	exp       spExpHeap
	ops       uint64
	gcRetryAt uint64
	retired   int // extents before the current one not yet freed
	lastLive  time.Time
	gen       uint64 // WriterGen of this attach
	closed    bool
}

type spPending struct {
	active bool
	fresh  bool // a new block id from Append
	off, n uint64
	seq    uint64
	block  uint64
	slot   uint64
	found  bool
	expiry int64
}

// AttachWriter claims the writer end: ErrBusy if a live process holds it;
// a dead holder's end is taken over and what it left half-done is
// finished or undone (a GC that did not switch, an index update or an
// obsoletion that did not happen).
func (s *Speculo) AttachWriter() (*SpeculoWriter, error) {
	self := sys.Self()
	if _, err := claim(&s.cb.Writer, self, "speculo writer end"); err != nil {
		return nil, err
	}
	w := &SpeculoWriter{Speculo: s, self: self, lastLive: time.Now(), gen: s.cb.WriterGen.Add(1)}
	if err := w.recover(); err != nil {
		s.cb.Writer.CompareAndSwap(uint64(self), 0)
		return nil, err
	}
	s.cb.Closed.Store(0)
	return w, nil
}

func (w *SpeculoWriter) recover() error {
	cb := w.cb
	w.setThreshold(int(cb.Threshold.Load()))
	w.seq = cb.LastSeq.Load()
	w.lastBlock = max(cb.LastBlock.Load(), SpeculoAutoBlock)
	cur, pend := cb.Current.Load(), cb.Pending.Load()
	if pend != 0 && pend != cur {
		// A GC (or the first extent) that never switched: undo it.
		if cur != 0 {
			x, err := w.openExtent(cur)
			if err != nil {
				return err
			}
			if err := w.checkPending(pend, x); err != nil {
				return err // freeing it would free an extent readers may be on
			}
			if x.hdr.Next.Load() == pend {
				x.hdr.Next.Store(0)
			}
		} else if cb.Oldest.Load() == pend {
			cb.Oldest.Store(0) // the first extent, killed before Current
		}
		// An extent that does not validate (freed already: its magic
		// is cleared as it is freed; or clobbered) is left alone.
		w.freeExtent(pend)
	}
	cb.Pending.Store(0)
	if f := cb.Freeing.Load(); f != 0 {
		// A reap that unlinked an extent and died before freeing it:
		// link it back (its magic is cleared as it is freed).
		if f != cb.Oldest.Load() {
			if h, err := mem.At[spExtentHdr](w.buf, mem.Off(f)); err == nil && h.Magic.Load() == spExtentMagic &&
				h.Area.Load() == uint64(w.cbOff) && h.Next.Load() == cb.Oldest.Load() {
				cb.Oldest.Store(f)
			}
		}
		cb.Freeing.Store(0)
	}
	if cur == 0 {
		if cb.Oldest.Load() != 0 || cb.Epoch.Load() != 0 {
			return w.corrupt("current extent", uint64(w.cbOff)+128, "no current extent but oldest %#x, epoch %d", cb.Oldest.Load(), cb.Epoch.Load())
		}
		x, err := w.newExtent()
		if err != nil {
			return err
		}
		cb.Oldest.Store(uint64(x.off))
		spHook("first:oldest")
		cb.Current.Store(uint64(x.off))
		cb.Epoch.Store(x.epoch)
		cb.Pending.Store(0)
		w.x = x
		return nil
	}
	x, err := w.openExtent(cur)
	if err != nil {
		return err
	}
	if e := cb.Epoch.Load(); e > x.epoch {
		return w.corrupt("epoch", uint64(w.cbOff)+136, "epoch %d, current extent's %d", e, x.epoch)
	} else if e < x.epoch {
		cb.Epoch.Store(x.epoch) // died between storing Current and Epoch
	}
	if x.hdr.Next.Load() != 0 {
		x.hdr.Next.Store(0)
	}
	if cb.Oldest.Load() == 0 {
		cb.Oldest.Store(cur)
	}
	w.x = x
	n, err := w.walkChain(cur, func(*spExtent) error { return nil })
	if err != nil {
		return err
	}
	w.retired = n - 1
	return w.rescan()
}

// rescan rebuilds the writer's view of the current extent: committed end,
// invalid bytes, expiry queue, used index slots, last sequence number;
// and repairs what a writer that died between commit and obsoletion left:
// the index points at the newest version of each block and older
// versions are obsolete.
func (w *SpeculoWriter) rescan() error {
	x := w.x
	committed, err := w.committedOf(x)
	if err != nil {
		return err
	}
	w.committed = committed
	w.invalid, w.exp = 0, w.exp[:0]
	now := w.clock()
	var last uint64
	for p := uint64(0); p < committed; {
		var c spChunk
		if err := w.chunkAt(x, p, committed, &c); err != nil {
			return err
		}
		if c.block > SpeculoAutoBlock {
			w.lastBlock = max(w.lastBlock, c.block)
		}
		if c.seq <= last {
			return w.corrupt("chunk sequence", uint64(x.off)+w.g.dataOff+p, "sequence %d after %d", c.seq, last)
		}
		last = c.seq
		if c.flags&spObsolete == 0 {
			if err := w.repairIndex(x, c, committed); err != nil {
				return err
			}
			c.flags = uint32(x.words[p/8+3].Load() >> 32)
		}
		if c.flags&(spObsolete|spCounted) != 0 || c.expired(now) {
			spMark(x, p, spCounted)
			w.invalid += c.n
		} else if c.expiry != 0 {
			heap.Push(&w.exp, spExpEntry{at: c.expiry, off: p, n: c.n})
		}
		p += c.n
	}
	w.seq = max(w.seq, last)
	w.cb.LastSeq.Store(w.seq)
	w.used = 0
	for i := uint64(0); i < w.g.indexSlots; i++ {
		if x.idx[i].Load() != 0 {
			w.used++
		}
	}
	return nil
}

// repairIndex makes the index point at c if c is the newest version of
// its block seen so far, obsoleting the one it pointed at; an older c
// than the indexed one is obsoleted itself. Either way the newer version
// is indexed before the older is marked.
func (w *SpeculoWriter) repairIndex(x *spExtent, c spChunk, committed uint64) error {
	i, prev, found, err := w.probe(x, c.block, committed)
	if err != nil {
		return err
	}
	if !found {
		x.idx[i].Store(spEntry(c.block, c.off))
		return nil
	}
	if prev == c.off {
		return nil
	}
	var pc spChunk
	perr := w.chunkAt(x, prev, committed, &pc)
	if perr == nil && pc.block == c.block && pc.seq > c.seq {
		spMark(x, c.off, spObsolete) // counted by the caller
		return nil
	}
	x.idx[i].Store(spEntry(c.block, c.off))
	if perr == nil && pc.block == c.block && spMark(x, pc.off, spObsolete|spCounted) {
		w.invalid += pc.n
	}
	return nil
}

// newExtent allocates and lays out an empty extent with the next epoch
// and records it as Pending (so a writer that dies before switching to it
// has it freed by the next writer). The extent is the writer's in the
// heap (alloc.KindExtent, owned by this process) and is recorded as
// Pending, then marked as this area's (area, then magic), right after the
// allocation and before the rest is laid out (the index is cleared: as
// long as the area's capacity is large). A writer killed on the way
// leaves either an extent without the magic, which the buffer's Recover
// frees as its dead owner's orphan (RecoverExtents, which also clears
// Pending if it names it), or one with the magic that Pending names,
// which the next writer frees. Nothing reads a Pending extent but the
// writer and the recovery.
func (w *SpeculoWriter) newExtent() (*spExtent, error) {
	// The header is zeroed in the allocation's critical section: memory
	// that held an extent (or anything) before may show the magic, and
	// RecoverExtents must not take such an extent for a marked one.
	off, err := w.heap.AllocZeroed(context.Background(), int(w.g.extBytes), alloc.KindExtent, w.self, spExtHdrSize)
	if err != nil {
		return nil, fmt.Errorf("speculo: new extent of %d bytes: %w", w.g.extBytes, err)
	}
	spHook("extent:alloc")
	h, err := mem.At[spExtentHdr](w.buf, off)
	if err != nil {
		w.heap.Free(off)
		return nil, err
	}
	idx, err := mem.Bytes(w.buf, off+spExtHdrSize, w.g.dataOff-spExtHdrSize)
	if err != nil {
		w.heap.Free(off)
		return nil, err
	}
	w.cb.Pending.Store(uint64(off))
	spHook("extent:noted")
	h.Area.Store(uint64(w.cbOff))
	h.Magic.Store(spExtentMagic)
	spHook("extent:pending")
	clear(idx)
	epoch := w.cb.LastEpoch.Load() + 1
	h.Epoch.Store(epoch)
	h.Capacity.Store(w.g.capacity)
	h.IndexSlots.Store(w.g.indexSlots)
	h.DataOff.Store(w.g.dataOff)
	h.Committed.Store(0)
	h.Next.Store(0)
	w.cb.LastEpoch.Store(epoch)
	return w.openExtent(uint64(off))
}

// RecoverExtents frees the extents that speculo writers which died left
// before marking them as their area's (alloc.KindExtent extents of a dead
// owner without the extent magic: see newExtent), and clears the Pending
// word of any of areas that names one, in the heap's critical section
// that frees it (so the word cannot name a new extent at that offset
// yet). An extent with the magic is its area's: Pending or the chain
// names it, and the area's next writer (or its removal) frees it. (The
// magic is never stale: newExtent has the header zeroed in the critical
// section of the allocation.)
func RecoverExtents(heap *alloc.Heap, buf []byte, areas []*Speculo) (alloc.Reclaimed, error) {
	return heap.RecoverKind(alloc.KindExtent, func(e alloc.Extent) bool {
		h, err := mem.At[spExtentHdr](buf, e.Off)
		if err != nil || h.Magic.Load() == spExtentMagic {
			return false
		}
		for _, a := range areas {
			// The area's control block cannot be freed while the heap
			// lock is held: if its entry is still valid now, the word
			// is still the area's.
			if a.en.Valid() {
				a.cb.Pending.CompareAndSwap(uint64(e.Off), 0)
			}
		}
		return true
	})
}

// checkPending returns ErrCorrupt if pend (the Pending word, not the
// current extent cur) names an extent of this area older than the
// pending one can be: one with an epoch at or below cur's, which is in
// the chain (or a reap's Freeing), where readers may be on it. newExtent
// gives a pending extent the next epoch (above cur's), or none yet (0)
// if its writer died before storing it, and no crash leaves Pending on an
// extent of the chain but cur: such a Pending was scribbled over, and
// freeing what it names would free memory under readers. Anything that
// is not an extent of this area is left to freeExtent, which refuses it.
func (s *Speculo) checkPending(pend uint64, cur *spExtent) error {
	h, err := mem.At[spExtentHdr](s.buf, mem.Off(pend))
	if err != nil || h.Magic.Load() != spExtentMagic || h.Area.Load() != uint64(s.cbOff) {
		return nil
	}
	if e := h.Epoch.Load(); e != 0 && e <= cur.epoch {
		return s.corrupt("pending extent", uint64(s.cbOff)+280, "names extent %#x of epoch %d, not newer than the current extent's %d", pend, e, cur.epoch)
	}
	return nil
}

// pendingInChain is checkPending against the current extent at cur, if
// there is one and it opens (what is wrong with it is reported apart).
func (s *Speculo) pendingInChain(pend, cur uint64) error {
	if cur == 0 {
		return nil
	}
	x, err := s.openExtent(cur)
	if err != nil {
		return nil
	}
	return s.checkPending(pend, x)
}

// dropPending frees the extent a failed GC was filling.
func (w *SpeculoWriter) dropPending(nx *spExtent) {
	// Freed first: a writer killed in between leaves Pending naming a
	// freed extent, which the next one's freeExtent refuses (its magic
	// was cleared as it was freed); cleared first, it would leak.
	w.freeExtent(uint64(nx.off))
	w.cb.Pending.Store(0)
}

// freeExtent gives an extent of this area back to the heap, after
// checking that it is one (an offset read from shared memory must not
// free someone else's memory). The check and clearing the magic are in
// the heap's critical section that frees the extent: an extent of this
// area either still has its magic or is free (or someone else's), so a
// writer that dies freeing it leaves nothing that a later one could not
// finish, nor free twice.
func (s *Speculo) freeExtent(off uint64) error { return s.freeExtentThen(off, nil) }

// freeExtentThen is freeExtent that also runs detach, if not nil, in the
// critical section of the heap lock that frees the extent, once it has
// validated.
func (s *Speculo) freeExtentThen(off uint64, detach func()) error {
	h, err := mem.At[spExtentHdr](s.buf, mem.Off(off))
	if err != nil {
		return err
	}
	return s.heap.FreeIf(mem.Off(off), func(e alloc.Extent) error {
		// KindPlain: an extent of a buffer that an older version made.
		if h.Magic.Load() != spExtentMagic || h.Area.Load() != uint64(s.cbOff) || (e.Kind != alloc.KindExtent && e.Kind != alloc.KindPlain) {
			return s.corrupt("extent", off, "not an extent of this area (magic %#x, area %#x, %v)", h.Magic.Load(), h.Area.Load(), e.Kind)
		}
		h.Magic.Store(0)
		if detach != nil {
			detach()
		}
		return nil
	})
}

func (w *SpeculoWriter) setThreshold(pct int) {
	w.threshold = w.g.capacity * uint64(pct) / 100
	if pct > 0 && w.threshold == 0 {
		w.threshold = 1
	}
}

// SetThreshold sets the GC threshold: a GC runs before an append once
// invalid (expired or obsoleted) chunks take percent of the capacity; 0:
// only when the area is full. Obsoleted chunks count at once, expired ones
// once the writer reads the clock: every 64 appends, and when a chunk does
// not fit (a clock read at every append would cost more than the lag).
// The setting is kept in the area for later writers.
func (w *SpeculoWriter) SetThreshold(percent int) error {
	if percent < 0 || percent > 100 {
		return fmt.Errorf("speculo GC threshold %d%% (want 0..100): %w", percent, errs.ErrInvalidArgument)
	}
	if w.closed {
		return errClosedEnd
	}
	w.cb.Threshold.Store(uint32(percent))
	w.setThreshold(percent)
	return nil
}

// Append reserves a chunk of size payload bytes for a new block (a fresh
// id, returned by Commit) and returns its bytes in shared memory for the
// caller to fill. Nothing is visible to readers until Commit. expiry is
// in Unix ns (0: never). The area is collected first when invalid chunks
// reach the threshold, or when the chunk does not fit; ErrNoSpace if it
// still does not (the area is full of valid chunks, or the heap has no
// room for a new extent).
func (w *SpeculoWriter) Append(size int, expiry int64) ([]byte, error) {
	if w.lastBlock == math.MaxUint64 {
		return nil, fmt.Errorf("speculo: block ids exhausted: %w", errs.ErrOverflow)
	}
	return w.reserve(w.lastBlock+1, true, size, expiry)
}

// Replace reserves a new version of block (an id Append returned, or any
// id below SpeculoAutoBlock the caller chooses). Once committed it is the
// block's latest version and the previous one is obsoleted; if the block
// has no valid version it simply becomes its first.
func (w *SpeculoWriter) Replace(id BlockID, size int, expiry int64) ([]byte, error) {
	if w.closed {
		return nil, errClosedEnd // before the id, which a later writer may have given
	}
	block := uint64(id)
	if block == 0 || (block > SpeculoAutoBlock && block > w.lastBlock) || block == SpeculoAutoBlock {
		return nil, fmt.Errorf("speculo: block id %#x was never given: %w", block, errs.ErrInvalidArgument)
	}
	return w.reserve(block, false, size, expiry)
}

var errSpeculoPending = fmt.Errorf("speculo: a chunk is pending (Commit or Abort it first): %w", errs.ErrInvalidArgument)

func (w *SpeculoWriter) reserve(block uint64, fresh bool, size int, expiry int64) ([]byte, error) {
	if w.closed {
		return nil, errClosedEnd
	}
	if w.pend.active {
		return nil, errSpeculoPending
	}
	if size < 0 || uint64(size) > w.MaxChunk() {
		return nil, fmt.Errorf("speculo: chunk of %d bytes (at most %d): %w", size, w.MaxChunk(), errs.ErrInvalidSize)
	}
	n := SpeculoChunkSpace(uint64(size))
	w.ops++
	if w.ops&63 == 0 {
		if err := w.housekeep(); err != nil {
			return nil, err
		}
	}
	if w.threshold > 0 && w.invalid >= w.threshold && w.ops >= w.gcRetryAt {
		if err := w.gc(); err != nil {
			if !errors.Is(err, errs.ErrNoSpace) {
				return nil, err
			}
			w.gcRetryAt = w.ops + 1024 // no heap room now: go on while it fits
		}
	}
	slot, _, found, err := w.probe(w.x, block, w.committed)
	if err != nil {
		return nil, err
	}
	if w.committed+n > w.g.capacity || (!found && w.used >= w.g.maxBlocks) {
		w.drainExpired(w.clock())
		if w.invalid > 0 {
			if err := w.gc(); err != nil {
				return nil, err
			}
			if slot, _, found, err = w.probe(w.x, block, w.committed); err != nil {
				return nil, err
			}
		}
		if w.committed+n > w.g.capacity {
			return nil, fmt.Errorf("speculo: area full: %d of %d bytes hold valid chunks, %d more asked: %w", w.committed, w.g.capacity, n, errs.ErrNoSpace)
		}
		if !found && w.used >= w.g.maxBlocks {
			return nil, fmt.Errorf("speculo: area holds its maximum of %d valid blocks: %w", w.g.maxBlocks, errs.ErrNoSpace)
		}
	}
	p := w.committed
	seq := w.seq + 1
	wd := p / 8
	h := w.x.plain[wd : wd+4 : wd+4] // not visible until Commit
	h[0], h[1], h[2], h[3] = seq, block, uint64(expiry), uint64(size)
	w.pend = spPending{active: true, fresh: fresh, off: p, n: n, seq: seq, block: block, slot: slot, found: found, expiry: expiry}
	start := p + spChunkHdrSize
	return w.x.data[start : start+uint64(size) : start+uint64(size)], nil
}

// Pending reports the block id and sequence number of the chunk reserved
// and not yet committed.
func (w *SpeculoWriter) Pending() (block BlockID, seq uint64, ok bool) {
	return BlockID(w.pend.block), w.pend.seq, w.pend.active
}

// Commit makes the pending chunk visible to readers (one release store)
// and returns its block id. For a Replace, the previous version is
// obsoleted after the new one is visible and indexed, so the block is
// never invisible. Readers parked waiting are woken; with none parked
// this costs no system call.
func (w *SpeculoWriter) Commit() (BlockID, error) {
	if w.closed {
		return 0, errClosedEnd
	}
	p := w.pend
	if !p.active {
		return 0, fmt.Errorf("speculo: nothing to commit: %w", errs.ErrInvalidArgument)
	}
	w.pend = spPending{}
	w.seq = p.seq
	if p.fresh {
		w.lastBlock = p.block
	}
	end := p.off + p.n
	w.x.hdr.Committed.Store(end) // publish
	w.committed = end
	spHook("commit:published")
	var err error
	i := p.slot
	if !p.found {
		w.x.idx[i].Store(spEntry(p.block, p.off))
		w.used++
	} else {
		old := spEntryOff(w.x.idx[i].Load())
		w.x.idx[i].Store(spEntry(p.block, p.off))
		spHook("commit:indexed")
		if old != p.off {
			err = w.obsolete(old, p.block)
		}
	}
	if p.expiry != 0 {
		heap.Push(&w.exp, spExpEntry{at: p.expiry, off: p.off, n: p.n})
	}
	w.notify()
	return BlockID(p.block), err
}

// obsolete marks the chunk at p (the version an index slot pointed at).
func (w *SpeculoWriter) obsolete(p, block uint64) error {
	var c spChunk
	if err := w.chunkAt(w.x, p, w.committed, &c); err != nil {
		return err
	}
	if c.block != block {
		return w.corrupt("index", uint64(w.x.off)+spExtHdrSize, "slot of block %#x points at a chunk of block %#x", block, c.block)
	}
	if spMark(w.x, p, spObsolete|spCounted) {
		w.invalid += c.n
	}
	return nil
}

// Abort drops the pending chunk: readers never see it.
func (w *SpeculoWriter) Abort() { w.pend = spPending{} }

// notify wakes the parked readers, if any: an eventcount. A reader sets
// Sleepers, loads Notify, checks for news and that Sleepers is still set
// (this clear may have come after its store), then parks while Notify is
// unchanged; the writer, after publishing, wakes only if Sleepers is set,
// and clears it, so it pays one wake per sleep, not one per commit until
// the woken readers get to run.
func (w *SpeculoWriter) notify() {
	if w.cb.Sleepers.Load() != 0 {
		spHook("notify:seen")
		w.cb.Sleepers.Store(0)
		w.cb.Notify.Add(1)
		backend.Wake(&w.cb.Notify, 0)
	}
}

func (w *SpeculoWriter) housekeep() error {
	if len(w.exp) > 0 {
		w.drainExpired(w.clock())
	}
	if w.retired > 0 {
		if _, err := w.reap(false); err != nil {
			return err
		}
	}
	return nil
}

// drainExpired counts the chunks that expired by now as invalid.
func (w *SpeculoWriter) drainExpired(now int64) {
	for len(w.exp) > 0 && w.exp[0].at <= now {
		e := heap.Pop(&w.exp).(spExpEntry)
		if spMark(w.x, e.off, spCounted) {
			w.invalid += e.n
		}
	}
}

// InvalidBytes is what the writer has counted as invalid in the current
// extent (expired chunks are counted when it next looks at the clock).
func (w *SpeculoWriter) InvalidBytes() uint64 { return w.invalid }

// GC copies the valid chunks into a new extent and switches readers to
// it, whatever the threshold. Old extents are freed once no reader is
// left on them.
func (w *SpeculoWriter) GC() error {
	if w.closed {
		return errClosedEnd
	}
	if w.pend.active {
		return errSpeculoPending
	}
	return w.gc()
}

// MaxSpeculoRetired bounds the old extents readers may keep from being freed:
// with that many, the writer does not collect (a GC by threshold waits,
// one the append needs fails with ErrNoSpace) until readers move on. A
// reader that stays behind (descheduled, or idle without parking or
// Release) would otherwise make every GC cost a new extent.
const MaxSpeculoRetired = 4

func (w *SpeculoWriter) gc() error {
	if w.retired >= MaxSpeculoRetired {
		if _, err := w.reap(false); err != nil {
			return err
		}
		if w.retired >= MaxSpeculoRetired {
			return fmt.Errorf("speculo: readers are still on %d old extents: %w", w.retired, errs.ErrNoSpace)
		}
	}
	now := w.clock()
	old := w.x
	nx, err := w.newExtent()
	if err != nil {
		return err
	}
	var (
		np, used, invalid uint64
		exp               spExpHeap
	)
	for p := uint64(0); p < w.committed; {
		var c spChunk
		if err := w.chunkAt(old, p, w.committed, &c); err != nil {
			w.dropPending(nx)
			return err
		}
		p += c.n
		if c.flags&(spObsolete|spCounted) != 0 || c.expired(now) {
			continue
		}
		q := np
		h := nx.plain[q/8 : q/8+4 : q/8+4] // the extent is not published yet
		h[0], h[1], h[2], h[3] = c.seq, c.block, uint64(c.expiry), c.size
		copy(nx.data[q+spChunkHdrSize:q+spChunkHdrSize+c.size], w.payload(old, &c))
		np += c.n
		i, prev, found, err := w.probe(nx, c.block, q)
		if err != nil {
			w.dropPending(nx)
			return err
		}
		nx.plainIdx[i] = spEntry(c.block, q) // not published yet
		if found {
			// Two valid versions (cannot happen after recover; kept
			// correct anyway): the older one goes.
			nx.plain[prev/8+3] |= uint64(spObsolete|spCounted) << 32
			invalid += SpeculoChunkSpace(nx.plain[prev/8+3] & math.MaxUint32)
		} else {
			used++
		}
		if c.expiry != 0 {
			exp = append(exp, spExpEntry{at: c.expiry, off: q, n: c.n})
		}
	}
	heap.Init(&exp)
	nx.hdr.Committed.Store(np)
	// Chunks the copy dropped may hold the highest sequence number and
	// block id given so far: keep both for a later writer.
	w.cb.LastSeq.Store(w.seq)
	w.cb.LastBlock.Store(w.lastBlock)
	spHook("gc:copied")
	old.hdr.Next.Store(uint64(nx.off))
	spHook("gc:linked")
	w.cb.Current.Store(uint64(nx.off))
	spHook("gc:current")
	w.cb.Epoch.Store(nx.epoch)
	spHook("gc:switched")
	w.cb.Pending.Store(0)
	w.cb.GCs.Add(1)
	w.x, w.committed, w.used, w.invalid, w.exp = nx, np, used, invalid, exp
	w.retired++
	_, err = w.reap(false)
	return err
}

// Reclaim frees the retired extents no live reader is on, checking the
// liveness of readers that pin one now (a dead reader's slot is
// reclaimed). It returns how many extents went back to the heap. The
// writer also does this by itself, at every GC and every 64 appends
// (liveness at most every check interval).
func (w *SpeculoWriter) Reclaim() (int, error) {
	if w.closed {
		return 0, errClosedEnd
	}
	return w.reap(true)
}

// reap frees retired extents, oldest first, while no slot pins them. Each
// is unlinked from Oldest before the slots are read, so a checker that
// pins everything and then loads Oldest never walks into a freed extent.
func (w *SpeculoWriter) reap(force bool) (int, error) {
	if w.retired == 0 {
		return 0, nil
	}
	live := force || time.Since(w.lastLive) >= w.wait.CheckInterval
	if live {
		w.lastLive = time.Now()
	}
	freed := 0
	cur := uint64(w.x.off)
	o := w.cb.Oldest.Load()
	for steps := 0; o != cur; steps++ {
		if steps > w.maxChain() {
			return freed, w.corrupt("extent chain", o, "cycle or overlong chain")
		}
		z, err := w.openExtent(o)
		if err != nil {
			return freed, err
		}
		next := z.hdr.Next.Load()
		if next == 0 || next == o {
			return freed, w.corrupt("extent next", o+136, "retired extent links to %#x", next)
		}
		w.cb.Freeing.Store(o)
		w.cb.Oldest.Store(next)
		spHook("reap:unlinked")
		if m := w.minPinned(live); m != 0 && m <= z.epoch {
			w.cb.Oldest.Store(o)
			w.cb.Freeing.Store(0)
			return freed, nil
		}
		err = w.freeExtent(uint64(z.off))
		w.cb.Freeing.Store(0)
		if err != nil {
			return freed, fmt.Errorf("speculo: free retired extent: %w", err)
		}
		freed++
		w.retired--
		o = next
	}
	w.retired = 0
	return freed, nil
}

func (s *Speculo) maxChain() int {
	return int(uint64(len(s.buf))/max(s.g.extBytes, 1)) + 2
}

// minPinned returns the lowest epoch a reader slot pins (0: none). With
// live, a slot pinning a retired extent whose owner is dead is reclaimed
// instead.
func (w *SpeculoWriter) minPinned(live bool) uint64 {
	var m uint64
	for i := range w.slots {
		sl := &w.slots[i]
		e := sl.Epoch.Load()
		if e == 0 {
			continue
		}
		own := sl.Owner.Load()
		if own == 0 {
			continue
		}
		if live && e < w.x.epoch && sys.Identity(own) != w.self && !sys.Alive(sys.Identity(own)) {
			if w.reclaimSlot(sl, own) {
				continue
			}
		}
		if m == 0 || e < m {
			m = e
		}
	}
	return m
}

// reclaimSlot frees the slot of a dead reader: taken over by one CAS (so
// that no two reclaimers or a new reader race on its words), reset, then
// released.
func (s *Speculo) reclaimSlot(sl *speculoSlot, dead uint64) bool {
	self := uint64(sys.Self())
	if !sl.Owner.CompareAndSwap(dead, self) {
		return false
	}
	s.resetSlot(sl)
	sl.Owner.Store(0)
	return true
}

// resetSlot clears a slot the caller owns.
func (s *Speculo) resetSlot(sl *speculoSlot) { sl.Epoch.Store(0) }

// Close releases the writer end (a pending chunk is dropped) after
// freeing what no reader pins. The area and its chunks stay for readers
// and later writers; readers waiting for news get io.EOF once they have
// read what was committed.
func (w *SpeculoWriter) Close() error {
	if w.closed {
		return nil
	}
	if w.cb.WriterGen.Load() != w.gen {
		// Taken over (this object outlived its end, as after a
		// takeover within one process): touch nothing.
		w.closed = true
		return nil
	}
	_, err := w.reap(true)
	w.cb.LastSeq.Store(w.seq)
	w.cb.LastBlock.Store(w.lastBlock)
	w.closed = true
	w.pend = spPending{}
	w.cb.Closed.Store(1)
	w.cb.Writer.CompareAndSwap(uint64(w.self), 0)
	// Readers waiting for news get io.EOF: wake them all (whatever
	// Sleepers says; a Close is rare). After the stores above, so that
	// a reader that loaded them before sees Notify change and looks
	// again.
	w.cb.Notify.Add(1)
	backend.Wake(&w.cb.Notify, 0)
	return err
}

// expHeap orders the current extent's valid chunks that carry an expiry.
type spExpEntry struct {
	at  int64
	off uint64
	n   uint64
}

type spExpHeap []spExpEntry

func (h spExpHeap) Len() int           { return len(h) }
func (h spExpHeap) Less(i, j int) bool { return h[i].at < h[j].at }
func (h spExpHeap) Swap(i, j int)      { h[i], h[j] = h[j], h[i] }
func (h *spExpHeap) Push(x any)        { *h = append(*h, x.(spExpEntry)) }
func (h *spExpHeap) Pop() any {
	old := *h
	e := old[len(old)-1]
	*h = old[:len(old)-1]
	return e
}

// ---- readers ----

// SpeculoReader is a reader. It takes no lock and writes nothing but its
// own slot (and, to park, the waiter count). Its methods must be called
// from one goroutine at a time.
type SpeculoReader struct {
	*Speculo
	self    sys.Identity
	slot    *speculoSlot
	x       *spExtent // the extent it reads (valid while pinned)
	pinned  bool
	pos     uint64 // next chunk offset in x
	lastSeq uint64 // last sequence number returned
	closed  bool
}

// BlockID names a block of a speculo area: the chunks that are versions
// of one changeable piece of data. Ids from SpeculoAutoBlock up are given
// by Append; ids below it are free for Replace to use as well-known ids.
type BlockID uint64

// SpeculoChunk is a chunk a reader returned.
type SpeculoChunk struct {
	Block BlockID
	Seq   uint64 // unique and increasing over the area's life
	// Data is a view into shared memory, valid until the reader's next
	// call of TryNext, Next, Latest, Rewind, Wait, Release or Close.
	Data   []byte
	expiry int64 // Unix ns, 0: never
}

// Expiry is when the chunk stops being valid (zero: never).
func (c SpeculoChunk) Expiry() time.Time {
	if c.expiry == 0 {
		return time.Time{}
	}
	return time.Unix(0, c.expiry)
}

// ExpiryNs is Expiry in Unix nanoseconds (0: never).
func (c SpeculoChunk) ExpiryNs() int64 { return c.expiry }

// Clone returns the chunk with Data copied to Go memory.
func (c SpeculoChunk) Clone() SpeculoChunk {
	c.Data = append([]byte(nil), c.Data...)
	return c
}

// AttachReader claims a reader slot: a free one, or one whose owner is
// dead. ErrBusy: every slot is held by a live reader.
func (s *Speculo) AttachReader() (*SpeculoReader, error) {
	self := sys.Self()
	sl := s.claimSlot(self, true)
	if sl == nil {
		return nil, fmt.Errorf("speculo: all %d reader slots are held by live readers: %w", len(s.slots), errs.ErrBusy)
	}
	return &SpeculoReader{Speculo: s, self: self, slot: sl}, nil
}

func (s *Speculo) claimSlot(self sys.Identity, reclaim bool) *speculoSlot {
	for i := range s.slots {
		sl := &s.slots[i]
		if sl.Owner.Load() == 0 && sl.Owner.CompareAndSwap(0, uint64(self)) {
			s.resetSlot(sl)
			return sl
		}
	}
	if !reclaim {
		return nil
	}
	for i := range s.slots {
		sl := &s.slots[i]
		own := sl.Owner.Load()
		if own != 0 && sys.Identity(own) != self && !sys.Alive(sys.Identity(own)) && sl.Owner.CompareAndSwap(own, uint64(self)) {
			s.resetSlot(sl)
			return sl
		}
	}
	return nil
}

func (r *SpeculoReader) unpin() {
	r.slot.Epoch.Store(0)
	r.pinned = false
}

// refresh makes sure the reader is pinned on the current extent, moving
// it there if a GC switched.
func (r *SpeculoReader) refresh() error {
	if r.closed {
		return errClosedEnd
	}
	if r.pinned && r.x != nil && r.cb.Current.Load() == uint64(r.x.off) {
		return nil
	}
	return r.pin()
}

func (r *SpeculoReader) pin() error {
	cb := r.cb
	for tries := 0; ; tries++ {
		if tries > 1<<16 {
			return r.corrupt("current extent", uint64(r.cbOff)+128, "current extent and epoch never agree")
		}
		e := cb.Epoch.Load()
		if e == 0 {
			if cb.Current.Load() == 0 {
				r.unpin()
				r.x = nil
				return nil
			}
			// The first extent is being published (or its writer died
			// before storing Epoch): pin everything, tightened below.
			e = 1
		}
		r.slot.Epoch.Store(e)
		cur := cb.Current.Load()
		if r.x != nil && cur == uint64(r.x.off) && r.pinned {
			r.slot.Epoch.Store(r.x.epoch)
			return nil
		}
		x, err := r.openExtent(cur)
		if err != nil {
			if cb.Current.Load() != cur {
				continue
			}
			r.unpin()
			return err
		}
		if x.epoch < e {
			if cb.Current.Load() != cur {
				continue
			}
			r.unpin()
			return r.corrupt("extent epoch", cur+16, "current extent has epoch %d, below the published %d", x.epoch, e)
		}
		r.slot.Epoch.Store(x.epoch)
		r.pinned = true
		if r.x != nil && r.x.off == x.off && r.x.epoch == x.epoch {
			return nil // the same extent as before parking: keep the position
		}
		r.x = x
		return r.seek()
	}
}

// seek positions the reader on the first chunk of x after the last one it
// returned (chunks are in sequence order in every extent).
func (r *SpeculoReader) seek() error {
	r.pos = 0
	if r.lastSeq == 0 {
		return nil
	}
	committed, err := r.committedOf(r.x)
	if err != nil {
		return err
	}
	for r.pos < committed {
		var c spChunk
		if err := r.chunkAt(r.x, r.pos, committed, &c); err != nil {
			return err
		}
		if c.seq > r.lastSeq {
			return nil
		}
		r.pos += c.n
	}
	return nil
}

func (r *SpeculoReader) view(c *spChunk) SpeculoChunk {
	return SpeculoChunk{Seq: c.seq, Block: BlockID(c.block), expiry: c.expiry, Data: r.payload(r.x, c)}
}

// TryNext returns the next valid chunk after the last one returned (in
// sequence order; obsoleted and expired chunks are skipped), or
// ErrWouldBlock. Data stays valid until the reader's next call of
// TryNext, Next, Latest, Rewind, Wait, Release or Close.
func (r *SpeculoReader) TryNext() (SpeculoChunk, error) {
	if err := r.refresh(); err != nil {
		return SpeculoChunk{}, err
	}
	if r.x == nil {
		return SpeculoChunk{}, errs.ErrWouldBlock
	}
	committed, err := r.committedOf(r.x)
	if err != nil {
		return SpeculoChunk{}, err
	}
	var now int64
	var c spChunk
	for r.pos < committed {
		if err := r.chunkAt(r.x, r.pos, committed, &c); err != nil {
			return SpeculoChunk{}, err
		}
		r.pos += c.n
		if c.seq <= r.lastSeq {
			continue
		}
		r.lastSeq = c.seq
		if c.flags&spObsolete != 0 {
			continue
		}
		if c.expiry != 0 {
			if now == 0 {
				now = r.clock()
			}
			if c.expiry <= now {
				continue
			}
		}
		return r.view(&c), nil
	}
	return SpeculoChunk{}, errs.ErrWouldBlock
}

// Next returns the next valid chunk, waiting as Wait does when there is
// none.
func (r *SpeculoReader) Next(ctx context.Context) (SpeculoChunk, error) {
	for {
		c, err := r.TryNext()
		if err != errs.ErrWouldBlock {
			return c, err
		}
		if err := r.Wait(ctx); err != nil {
			return SpeculoChunk{}, err
		}
	}
}

// Latest returns the latest valid version of block: ErrNotExist if it has
// none (never written, or expired). It does not move the iteration.
func (r *SpeculoReader) Latest(id BlockID) (SpeculoChunk, error) {
	block := uint64(id)
	if err := r.refresh(); err != nil {
		return SpeculoChunk{}, err
	}
	if r.x == nil || block == 0 {
		return SpeculoChunk{}, fmt.Errorf("speculo: block %#x: %w", block, errs.ErrNotExist)
	}
	committed, err := r.committedOf(r.x)
	if err != nil {
		return SpeculoChunk{}, err
	}
	i, off, found, err := r.probe(r.x, block, committed)
	if err != nil {
		return SpeculoChunk{}, err
	}
	if !found {
		return SpeculoChunk{}, fmt.Errorf("speculo: block %#x: %w", block, errs.ErrNotExist)
	}
	where := uint64(r.x.off) + spExtHdrSize + 8*i
	prev := uint64(math.MaxUint64)
	for tries := 0; tries < 1<<20; tries++ {
		if tries > 0 {
			off = spEntryOff(r.x.idx[i].Load())
		}
		// The index is stored after Committed: load Committed after it.
		if committed, err = r.committedOf(r.x); err != nil {
			return SpeculoChunk{}, err
		}
		var c spChunk
		if err := r.chunkAt(r.x, off, committed, &c); err != nil {
			return SpeculoChunk{}, err
		}
		if c.block != block {
			return SpeculoChunk{}, r.corrupt("index", where, "slot of block %#x points at a chunk of block %#x", block, c.block)
		}
		if c.flags&spObsolete != 0 {
			// The writer indexes a new version before it obsoletes the
			// old one: read the slot again. The same obsolete chunk
			// twice means the index is stale for good.
			if off == prev {
				return SpeculoChunk{}, r.corrupt("index", where, "slot of block %#x stays on an obsolete version", block)
			}
			prev = off
			continue
		}
		if c.expiry != 0 && c.expired(r.clock()) {
			return SpeculoChunk{}, fmt.Errorf("speculo: block %#x expired: %w", block, errs.ErrNotExist)
		}
		return r.view(&c), nil
	}
	return SpeculoChunk{}, r.corrupt("index", where, "slot of block %#x never settles", block)
}

// Rewind makes the next TryNext or Next start again from the oldest valid
// chunk.
func (r *SpeculoReader) Rewind() error {
	if err := r.refresh(); err != nil {
		return err
	}
	r.lastSeq, r.pos = 0, 0
	return nil
}

// Release gives up the extent the reader is on, so that a GC can free it
// while the reader is idle; views it returned become invalid. Its next
// call moves it to the current extent and goes on where it was.
func (r *SpeculoReader) Release() {
	if !r.closed {
		r.unpin()
	}
}

// LastSeq is the sequence number of the last chunk Next returned.
func (r *SpeculoReader) LastSeq() uint64 { return r.lastSeq }

// Epoch is the epoch of the extent the reader is on (0: none).
func (r *SpeculoReader) Epoch() uint64 {
	if r.x == nil || !r.pinned {
		return 0
	}
	return r.x.epoch
}

// available reports whether TryNext may find something: a GC switched, or
// bytes were committed past the reader's position. Pinned only.
func (r *SpeculoReader) available() bool {
	cur := r.cb.Current.Load()
	if r.x == nil {
		return cur != 0
	}
	return cur != uint64(r.x.off) || r.x.hdr.Committed.Load() > r.pos
}

// Wait blocks until something may have been committed after the reader's
// position: spinning briefly, then parked on the area's futex word with
// no extent pinned (views from earlier calls are invalid after it). The
// writer pays a wake only when a reader is parked. It returns io.EOF if
// the writer closed its end (Close) and nothing was committed past the
// reader's position (not for good: a writer that attaches later commits
// chunks that are read as before), ErrPeerDead if the writer died,
// ErrDestroyed if the buffer was destroyed, or ctx's error.
func (r *SpeculoReader) Wait(ctx context.Context) error {
	if err := r.refresh(); err != nil {
		return err
	}
	if spin(r.wait.Spin, r.available) {
		return nil
	}
	cb := r.cb
	for {
		cb.Sleepers.Store(1)
		spHook("wait:armed")
		v := cb.Notify.Load()
		if r.available() {
			return nil // Sleepers stays set: at worst one spare wake
		}
		if r.writerClosed() {
			// Loaded after Notify: a Close after this load bumps
			// Notify, so the park below does not sleep through it.
			r.unpin()
			return io.EOF
		}
		if cb.Sleepers.Load() == 0 {
			// The writer cleared the flag after we set it, waking
			// readers that parked before us (notify saw the flag
			// before our store and clears it after), and we may have
			// loaded Notify after its bump: parked now, the next
			// commit would find the flag clear and not wake us. Arm
			// again. A clear that comes after this load is followed
			// by a bump of Notify, which the park sees.
			continue
		}
		r.unpin()
		spHook("wait:park")
		err := backend.Park(ctx, &cb.Notify, v, r.wait.CheckInterval)
		if err != nil && !errors.Is(err, errs.ErrTimeout) {
			return err // stays unpinned until its next call
		}
		if rerr := r.refresh(); rerr != nil {
			return rerr
		}
		if r.available() {
			return nil
		}
		if r.region.Closing() {
			return fmt.Errorf("speculo area: %w", errs.ErrClosed)
		}
		if r.region.State() == backend.StateDestroyed {
			return fmt.Errorf("speculo area: %w", errs.ErrDestroyed)
		}
		if id := sys.Identity(cb.Writer.Load()); id != 0 && !sys.Alive(id) {
			return fmt.Errorf("speculo area: the writer (%v) died: %w", id, errs.ErrPeerDead)
		}
	}
}

// writerClosed reports whether the last writer closed its end (Close) and
// no writer has attached since.
func (r *SpeculoReader) writerClosed() bool {
	return r.cb.Closed.Load() != 0 && r.cb.Writer.Load() == 0
}

// Close releases the reader's slot; the extent it was on may be freed.
func (r *SpeculoReader) Close() {
	if r.closed {
		return
	}
	r.closed = true
	r.unpin()
	r.resetSlot(r.slot)
	r.slot.Owner.CompareAndSwap(uint64(r.self), 0)
	r.x = nil
}

// ---- area-wide ----

// Idle reports whether no live process holds the writer end or a reader
// slot.
func (s *Speculo) Idle() bool {
	if heldByLive(&s.cb.Writer) {
		return false
	}
	for i := range s.slots {
		if heldByLive(&s.slots[i].Owner) {
			return false
		}
	}
	return true
}

// Abandoned reports whether the area can be reclaimed by recovery: its
// writer is gone (closed, or dead) and no live process holds a reader
// slot. An area never written is not abandoned.
func (s *Speculo) Abandoned() bool {
	gone := s.cb.Closed.Load() != 0 || s.cb.Writer.Load() != 0
	return gone && s.Idle()
}

// FreeExtents gives every extent of the area back to the heap: for
// removing the area, when no live process uses it. Extents that do not
// validate are reported and left alone. Each extent is detached from the
// area (Pending cleared, Oldest moved on, or Current cleared) in the
// critical section of the heap lock that frees it (and so is the extent
// a writer killed in a reap had unlinked, Freeing), so that a removal
// that dies in the middle and is run again picks up where it stopped
// (channel.Registry.FinishRemovals): it neither frees an extent twice
// nor loses the rest of the chain.
func (s *Speculo) FreeExtents() error {
	var all []error
	cb := s.cb
	cur := cb.Current.Load()
	if p := cb.Pending.Load(); p != 0 && p != cur {
		if inChain := s.pendingInChain(p, cur); inChain != nil {
			// Damage: the walk below frees that extent, once.
			all = append(all, inChain)
		} else if h, err := mem.At[spExtentHdr](s.buf, mem.Off(p)); err != nil || h.Magic.Load() == spExtentMagic {
			// One without the magic is a dead writer's unmarked
			// extent, not damage: RecoverExtents frees it.
			all = append(all, s.freeExtentThen(p, func() { cb.Pending.Store(0) }))
		}
		cb.Pending.CompareAndSwap(p, 0)
	}
	last := func() { cb.Current.Store(0); cb.Oldest.Store(0) }
	o := cb.Oldest.Load()
	if cur != 0 && o == 0 {
		o = cur
	}
	for steps := 0; o != 0; steps++ {
		if steps > s.maxChain() {
			all = append(all, s.corrupt("extent chain", o, "cycle or overlong chain"))
			break
		}
		x, err := s.openExtent(o)
		if err != nil {
			all = append(all, err)
			if o != cur && cur != 0 {
				all = append(all, s.freeExtentThen(cur, last))
			}
			break
		}
		next := x.hdr.Next.Load()
		if o == cur {
			all = append(all, s.freeExtentThen(o, last))
			break
		}
		if next == 0 {
			all = append(all, s.freeExtentThen(o, func() { cb.Oldest.Store(cur) }))
			if cur != 0 {
				all = append(all, s.corrupt("extent chain", o+136, "chain ends before the current extent"), s.freeExtentThen(cur, last))
			}
			break
		}
		if err := s.freeExtentThen(o, func() { cb.Oldest.Store(next) }); err != nil {
			all = append(all, err)
			cb.Oldest.Store(next)
		}
		spHook("free:one")
		o = next
	}
	if f := cb.Freeing.Load(); f != 0 {
		// A writer killed in a reap, between unlinking the oldest
		// extent and freeing it, left it out of the chain. Still an
		// extent of this area: free it; without its magic it was freed
		// (the writer died after that) and may be someone else's now.
		if h, err := mem.At[spExtentHdr](s.buf, mem.Off(f)); err == nil && h.Magic.Load() == spExtentMagic && h.Area.Load() == uint64(s.cbOff) {
			all = append(all, s.freeExtentThen(f, func() { cb.Freeing.Store(0) }))
		}
		cb.Freeing.Store(0)
	}
	cb.Current.Store(0)
	cb.Oldest.Store(0)
	cb.Epoch.Store(0)
	return errors.Join(all...)
}

// withPin runs f with every extent pinned (a temporary slot at epoch 1),
// or unpinned (pinned false) when no slot is free.
func (s *Speculo) withPin(f func(pinned bool) error) error {
	sl := s.claimSlot(sys.Self(), false)
	if sl == nil {
		return f(false)
	}
	sl.Epoch.Store(1)
	defer func() {
		sl.Epoch.Store(0)
		sl.Owner.Store(0)
	}()
	return f(true)
}

// SpeculoStats describes an area.
type SpeculoStats struct {
	Capacity     uint64 // data bytes of an extent
	ExtentBytes  uint64 // heap bytes of an extent (whole pages)
	Epoch        uint64 // of the current extent
	GCs          uint64
	Extents      int    // not yet freed, the current one included
	Committed    uint64 // bytes committed in the current extent
	Chunks       int    // committed chunks in the current extent
	ValidChunks  int
	ValidBytes   uint64 // space taken by valid chunks
	InvalidBytes uint64 // space taken by obsolete or expired chunks
	Blocks       int    // blocks indexed in the current extent
	Readers      int    // reader slots held
	Sleepers     bool   // a reader is parked (or about to be)
	LastSeq      uint64
	Writer       bool // a live writer holds the end
}

// Stats walks the area (O(chunks)).
func (s *Speculo) Stats() (SpeculoStats, error) {
	ps := uint64(s.heap.PageSize())
	st := SpeculoStats{Capacity: s.g.capacity, ExtentBytes: (s.g.extBytes + ps - 1) / ps * ps, GCs: s.cb.GCs.Load(), LastSeq: s.cb.LastSeq.Load(), Sleepers: s.cb.Sleepers.Load() != 0}
	st.Writer = heldByLive(&s.cb.Writer)
	for i := range s.slots {
		if s.slots[i].Owner.Load() != 0 {
			st.Readers++
		}
	}
	err := s.withPin(func(pinned bool) error {
		if !pinned {
			return fmt.Errorf("speculo stats: no free reader slot: %w", errs.ErrBusy)
		}
		cur := s.cb.Current.Load()
		if cur == 0 {
			return nil
		}
		n, err := s.walkChain(cur, func(x *spExtent) error { return nil })
		st.Extents = n
		if err != nil {
			return err
		}
		x, err := s.openExtent(cur)
		if err != nil {
			return err
		}
		st.Epoch = x.epoch
		committed, err := s.committedOf(x)
		if err != nil {
			return err
		}
		st.Committed = committed
		now := s.clock()
		for p := uint64(0); p < committed; {
			var c spChunk
			if err := s.chunkAt(x, p, committed, &c); err != nil {
				return err
			}
			st.Chunks++
			if c.flags&(spObsolete|spCounted) != 0 || c.expired(now) {
				st.InvalidBytes += c.n
			} else {
				st.ValidChunks++
				st.ValidBytes += c.n
			}
			p += c.n
		}
		for i := uint64(0); i < s.g.indexSlots; i++ {
			if x.idx[i].Load() != 0 {
				st.Blocks++
			}
		}
		return nil
	})
	return st, err
}

// walkChain visits the extents from Oldest to cur (pinned by the caller)
// and returns how many there are.
func (s *Speculo) walkChain(cur uint64, f func(x *spExtent) error) (int, error) {
	o := s.cb.Oldest.Load()
	n := 0
	var last uint64
	for steps := 0; ; steps++ {
		if steps > s.maxChain() {
			return n, s.corrupt("extent chain", o, "cycle or overlong chain")
		}
		x, err := s.openExtent(o)
		if err != nil {
			return n, err
		}
		if x.epoch <= last {
			return n, s.corrupt("extent epoch", o+16, "epoch %d after %d", x.epoch, last)
		}
		last = x.epoch
		n++
		if err := f(x); err != nil {
			return n, err
		}
		if o == cur {
			return n, nil
		}
		next := x.hdr.Next.Load()
		if next == 0 {
			return n, s.corrupt("extent chain", o+136, "chain ends before the current extent %#x", cur)
		}
		o = next
	}
}

// Check walks the area and reports every violation it finds: the control
// block, the reader slots, the chain of extents (each one allocated in the
// heap, epochs increasing) and, in each extent, the chunks (bounds,
// increasing sequence numbers, flags, at most one valid version per block)
// and the index (every slot on a chunk of its block, no block twice). It
// is exact when the writer is idle; a writer committing meanwhile may
// make it see a chunk not yet indexed, which it allows for the last one.
func (s *Speculo) Check() error {
	var all []error
	cb := s.cb
	at := uint64(s.cbOff)
	if ext, err := s.heap.Extent(s.cbOff); err != nil {
		all = append(all, fmt.Errorf("speculo control block: %w", err))
	} else if ext.Size < SpeculoControlSize(s.g.slots) {
		all = append(all, s.corrupt("control block", at, "extent of %d bytes for %d", ext.Size, SpeculoControlSize(s.g.slots)))
	}
	if t := cb.Threshold.Load(); t > 100 {
		all = append(all, s.corrupt("threshold", at+268, "%d%%", t))
	}
	if v := cb.Closed.Load(); v > 1 {
		all = append(all, s.corrupt("closed", at+264, "value %d", v))
	}
	lastEpoch := cb.LastEpoch.Load()
	for i := range s.slots {
		sl := &s.slots[i]
		where := at + speculoCBSize + uint64(i)*speculoSlotSize
		if e := sl.Epoch.Load(); e > lastEpoch {
			all = append(all, s.corrupt("reader slot epoch", where+8, "epoch %d beyond the last %d", e, lastEpoch))
		}
	}
	if v := cb.Sleepers.Load(); v > 1 {
		all = append(all, s.corrupt("sleepers", at+388, "value %d", v))
	}
	err := s.withPin(func(pinned bool) error {
		if !pinned {
			return nil // every slot is taken: the extents cannot be walked safely
		}
		cur := cb.Current.Load()
		if cur == 0 {
			if cb.Oldest.Load() != 0 || cb.Epoch.Load() != 0 {
				return s.corrupt("current extent", at+128, "none, but oldest %#x and epoch %d", cb.Oldest.Load(), cb.Epoch.Load())
			}
			return nil
		}
		var bad []error
		if p := cb.Pending.Load(); p != 0 && p != cur {
			if _, err := s.heap.Extent(mem.Off(p)); err != nil {
				bad = append(bad, fmt.Errorf("speculo pending extent: %w", err))
			} else {
				bad = append(bad, s.pendingInChain(p, cur))
			}
		}
		_, err := s.walkChain(cur, func(x *spExtent) error {
			if ext, err := s.heap.Extent(x.off); err != nil {
				bad = append(bad, fmt.Errorf("speculo extent %#x: %w", uint64(x.off), err))
			} else if ext.Size < s.g.extBytes {
				bad = append(bad, s.corrupt("extent", uint64(x.off), "heap extent of %d bytes for %d", ext.Size, s.g.extBytes))
			}
			bad = append(bad, s.checkExtent(x, uint64(x.off) == cur))
			return nil
		})
		if e := cb.Epoch.Load(); err == nil && cb.Current.Load() == cur {
			if x, xerr := s.openExtent(cur); xerr == nil && e > x.epoch {
				bad = append(bad, s.corrupt("epoch", at+136, "epoch %d, current extent's %d", e, x.epoch))
			}
		}
		return errors.Join(append(bad, err)...)
	})
	return errors.Join(append(all, err)...)
}

func (s *Speculo) checkExtent(x *spExtent, current bool) error {
	var all []error
	committed, err := s.committedOf(x)
	if err != nil {
		return err
	}
	type ver struct{ valid, newest uint64 }
	blocks := map[uint64]*ver{}
	chunks := map[uint64]uint64{} // offset -> block
	var last, lastOff uint64
	for p := uint64(0); p < committed; {
		var c spChunk
		if err := s.chunkAt(x, p, committed, &c); err != nil {
			all = append(all, err)
			break
		}
		where := uint64(x.off) + s.g.dataOff + p
		if c.seq <= last {
			all = append(all, s.corrupt("chunk sequence", where, "sequence %d after %d", c.seq, last))
		}
		last = c.seq
		if c.flags&^(spObsolete|spCounted) != 0 {
			all = append(all, s.corrupt("chunk flags", where+28, "flags %#x", c.flags))
		}
		chunks[p] = c.block
		v := blocks[c.block]
		if v == nil {
			v = &ver{}
			blocks[c.block] = v
		}
		if c.flags&spObsolete == 0 {
			v.valid++
		}
		v.newest = p
		lastOff = p
		p += c.n
	}
	used := uint64(0)
	indexed := map[uint64]bool{}
	for i := uint64(0); i < s.g.indexSlots; i++ {
		e := x.idx[i].Load()
		if e == 0 {
			continue
		}
		used++
		where := uint64(x.off) + spExtHdrSize + 8*i
		off := spEntryOff(e)
		b, ok := chunks[off]
		if !ok || e>>32 != spTag(b) {
			all = append(all, s.corrupt("index", where, "entry %#x does not point at a chunk of its block", e))
			continue
		}
		if indexed[b] {
			all = append(all, s.corrupt("index", where, "block %#x indexed twice", b))
		}
		indexed[b] = true
		if v := blocks[b]; v != nil && v.newest != off && !(current && v.newest == lastOff) {
			all = append(all, s.corrupt("index", where, "block %#x points at %d, not at its newest version %d", b, off, v.newest))
		}
	}
	if used > s.g.maxBlocks {
		all = append(all, s.corrupt("index", uint64(x.off)+spExtHdrSize, "%d blocks, at most %d", used, s.g.maxBlocks))
	}
	for b, v := range blocks {
		inWindow := current && v.newest == lastOff // the commit being finished
		if v.valid > 1 && !inWindow {
			all = append(all, s.corrupt("block", uint64(x.off), "block %#x has %d valid versions", b, v.valid))
		}
		if !indexed[b] && !inWindow {
			all = append(all, s.corrupt("index", uint64(x.off)+spExtHdrSize, "block %#x is not indexed", b))
		}
	}
	return errors.Join(all...)
}

// Interrupt wakes every thread parked on the area's notification word, so
// that it checks again (a closing buffer, say); the word is left as it is.
func (r *SpeculoReader) Interrupt() { backend.Wake(&r.cb.Notify, 0) }
