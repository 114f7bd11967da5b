package ipc

import (
	"errors"
	"fmt"
	"math"
	"structs"
	"sync/atomic"
	"unsafe"

	"github.com/heapipc/ipc/alloc"
	"github.com/heapipc/ipc/backend"
	"github.com/heapipc/ipc/channel"
	"github.com/heapipc/ipc/internal/errs"
	"github.com/heapipc/ipc/internal/mem"
	"github.com/heapipc/ipc/internal/sys"
	"github.com/heapipc/ipc/slab"
)

// Records are slab records (package slab) with a 16-byte trailer after the
// payload (rounded up to 16 bytes) that names the record's holder: the
// process responsible for it now. The allocator holds a record until it is
// sent; a consumer takes it over before the channel publishes that it was
// received (Receive may take over up to aheadMax records still queued,
// which it then delivers one by one). So whoever dies, Recover knows which records died with it: a
// record whose holder is dead and that is not queued in a channel is
// freed, whichever process allocated it. The trailer is at the end so
// that the payload keeps the pool's alignment (cache-line records stay
// cache-line aligned).
//
// A record in a channel is marked queued (queuedMagic): its sender
// writes the mark before it publishes the ring slot, the consumer puts the
// live magic back as it takes the record over. While it is queued, Send
// and Free of it are refused: its sender's view is no longer its own. The
// mark carries the record's next hand (see liveMagic), so that the
// sender's Record stays refused after the consumer took the record over.
//
// The holder frees a record in two steps: it overwrites the magic with
// the record's freed mark (freedMark), so that a later Send or Free of
// the same view is caught cheaply, then sets the record's bits in its
// slab (the free proper). A holder killed between the two leaves a
// record that is allocated, held by a dead process and marked freed:
// Recover completes its free. The mark is derived from the record's
// header check, which changes with its slab's generation, so that the
// trailer of an earlier record at the same place (what a record just
// carved and not yet stamped still shows) is never taken for it.
type trailer struct {
	_      structs.HostLayout
	Holder uint64 // sys.Identity of the holder: written plainly at allocation, then through holder()
	Len    uint32 // payload bytes
	Magic  uint32 // live (liveMagic), queued (queuedMagicOf) or freed (freedMark)
}

// holder is the Holder word as an atomic: once a record has been handed
// out, other processes read it and receivers write it.
func (t *trailer) holder() *atomic.Uint64 { return mem.AtomicUint64(&t.Holder) }

const (
	trailerSize  = 16
	trailerMagic = 0x48524543 // "HREC"
	// queuedMagic is the magic of a record sent and not yet received,
	// of the hand of a record never sent before (see the hands below;
	// queuedMagicOf is any hand's): a sender writes it before the ring
	// slot is published and puts the live magic back if the send fails;
	// the consumer puts the live magic back as it takes the record over. So a second Send of a queued
	// record, or a Free of it (by the sender, who keeps its view), is
	// refused and the record goes on to the consumer. It differs from
	// the live magic in one bit (queuedBit), so that a taker accepts
	// both in one compare (takeable), and its low bit is set (never a
	// freed mark).
	queuedMagic  = trailerMagic &^ queuedBit
	queuedBit    = 0x100
	trailerFreed = 0x46524543 // "FREC", mixed with the header check into the freed mark
)

// A record's hand counts the sends it went through (modulo 16): each
// send marks the record queued with the next hand, and a Record carries
// the hand of the holder it was handed to (in the low bits of its ref,
// which a record's offset, a multiple of 16, leaves free). So the Record
// its sender kept is no longer the record's once a consumer has taken it
// over in the same process: Send and Free of it are refused
// (ErrNotAllocated), and the consumer's record is safe from them. The
// kept Record of a record that went through 16 sends in this process
// since (a pipeline of 16 stages) is the only one let through.
//
// The hand is the top 4 bits of the magic (a record never sent has
// trailerMagic's, freshHand), so that the hot paths compute with it in
// one or two operations: the next hand's queued magic is the live one
// plus a constant (wrapping in 32 bits), and a shift drops the hand.
const (
	handShift = 28
	handMask  = 0xf << handShift
	refHand   = 0xf                       // a Record's hand, in its ref
	freshHand = trailerMagic >> handShift // the hand of a record never sent
	// handStep turns a live magic into its next hand's queued magic.
	handStep = 1<<handShift - queuedBit
)

// liveMagic is the magic of a live record whose hand is h (trailerMagic
// for a record never sent); the bits of h above the hand's 4 are ignored.
func liveMagic(h uint32) uint32 { return trailerMagic&^handMask | h<<handShift }

// queuedMagicOf is the magic of a record queued with hand h.
func queuedMagicOf(h uint32) uint32 { return liveMagic(h) &^ queuedBit }

// handOf is the hand in a live or queued record's magic m.
func handOf(m uint32) uint32 { return m >> handShift }

// nextHand is the hand a send of a record of hand h queues it with.
func nextHand(h uint32) uint32 { return (h + 1) & refHand }

// sendMagics are the magics a send of a record of hand h writes: queued
// with the next hand (queuedMagicOf(nextHand(h))), and live as it is, if
// the send fails.
func sendMagics(h uint32) (queued, live uint32) {
	live = liveMagic(h)
	return live + handStep, live
}

// takeable reports whether a record whose trailer has magic m may be
// taken off a ring: queued (the common case), or live (a consumer that
// died between taking it and moving the head past it had put the magic
// back already; the record is delivered again); of any hand.
func takeable(m uint32) bool {
	return (m|queuedBit)<<(32-handShift) == trailerMagic<<(32-handShift)&math.MaxUint32
}

// isQueued reports whether m is the magic of a queued record (any hand).
func isQueued(m uint32) bool {
	return m<<(32-handShift) == queuedMagic<<(32-handShift)&math.MaxUint32
}

// liveOf is the live magic of a record taken with magic m (takeable): its
// hand kept, the queued bit set.
func liveOf(m uint32) uint32 { return m | queuedBit }

// takeOver makes the record of a takeable trailer live again, as its
// taker does, and returns its hand (the taker's Record's).
func (t *trailer) takeOver() uint32 {
	m := t.Magic
	t.Magic = liveOf(m)
	return handOf(m)
}

// errHandedOver is the error for a Send or Free of the record at off
// through a Record that no longer holds it: the record was sent, and a
// consumer of this process took it over.
func errHandedOver(off mem.Off) error {
	return fmt.Errorf("record %#x was sent and taken over by a consumer: this Record no longer holds it: %w", uint64(off), ErrNotAllocated)
}

// errQueued is the error for a Send or Free of the record at off while it
// is queued in a channel.
func errQueued(off mem.Off) error {
	return fmt.Errorf("record %#x is queued in a channel (sent and not received yet): %w", uint64(off), ErrNotAllocated)
}

// freedMark is the magic a holder leaves in the trailer of a record it
// frees, for a record with header check key (slab.Pool.RecordKey): never
// trailerMagic (its low bit is clear) nor 0. The check changes from one
// record at a place to the next (a slab's generation, a large record's
// incarnation), and a large record's trailer is also zeroed before its
// header is written (slab.Handle.Alloc): an earlier record's mark never
// shows in a record whose header is valid.
func freedMark(key uint32) uint32 { return (key^trailerFreed)&^1 | 2 }

// freedMark is the freed mark of the located record at off.
func (rs *records) freedMark(off mem.Off) uint32 { return freedMark(rs.pool.RecordKey(off)) }

// allocSize is the slab allocation of a record of n payload bytes: the
// payload rounded up to 16 bytes, so that the trailer is 16-byte aligned
// (records are, and their slots are whole 16-byte granules anyway), and
// the trailer.
func allocSize(n int) int { return (n+15)&^15 + trailerSize }

// slotSize is allocSize for a length in a ring slot (below
// channel.SlotLenNone) or a view's, as the record paths hold it.
func slotSize(l uint64) uint64 { return (l+15)&^15 + trailerSize }

// maxPayload is the largest payload a record can have: its trailer
// records the length in 32 bits.
const maxPayload = math.MaxUint32

// payloadOK reports whether a record can have a payload of n bytes: not
// negative, within maxPayload, and with room for allocSize in an int (on
// 32-bit machines, n near math.MaxInt would wrap it negative).
func payloadOK(n int) bool {
	return n >= 0 && uint64(n) <= maxPayload && n <= math.MaxInt-2*trailerSize
}

// RecordStats describes the record allocator (see slab.Stats).
type RecordStats = slab.Stats

type records struct {
	pool     *slab.Pool
	b        []byte
	trailers []trailer // the region in 16-byte blocks: trailer i is at 16*i
	lo, hi   mem.Off   // the heap's range: where records are
	self     sys.Identity
	base     uintptr // the address of b[0]: a view's offset is its address minus base
}

// view is the payload view of n bytes of the record at off. Every Record's
// view is made here (or as here, with unsafe.Slice): its data pointer is
// the record's address even when n is 0, where a view made by slicing
// would point at the start of the region (Go does not point a slice of
// capacity 0 past its array's start), so that the checks of a view's
// address (held, heldFast, free, slots, unstamp) hold for zero-length
// records too, and a zero-length Record of another buffer is told apart.
func (rs *records) view(off mem.Off, n int) []byte {
	return unsafe.Slice((*byte)(unsafe.Add(unsafe.Pointer(unsafe.SliceData(rs.b)), off)), n)
}

// at reports whether b, a record's payload view, starts at off of this
// buffer (see view; a nil view starts nowhere).
func (rs *records) at(off mem.Off, b []byte) bool {
	return b != nil && uintptr(unsafe.Pointer(unsafe.SliceData(b))) == rs.base+uintptr(off)
}

func newRecords(r *backend.Region, h *alloc.Heap, cfg config) (*records, error) {
	p, err := slab.New(h, slab.Options{SlabSize: cfg.slabSize, Align: cfg.recordAlign})
	if err != nil {
		return nil, err
	}
	lo, hi := h.Range()
	b := r.Bytes()
	if lo < trailerSize || uint64(hi) > uint64(len(b)) || lo > hi {
		// The record paths (slots, unstamp, checkSpan) address headers
		// and trailers of records in [lo, hi) without bounds checks.
		return nil, errs.Corrupt("heap range", uint64(lo), "heap [%#x, %#x) in a region of %d bytes", uint64(lo), uint64(hi), len(b))
	}
	ts, err := mem.Slice[trailer](b, 0, len(b)/trailerSize)
	if err != nil {
		return nil, err
	}
	base := uintptr(unsafe.Pointer(unsafe.SliceData(b)))
	return &records{pool: p, b: b, trailers: ts, lo: lo, hi: hi, self: sys.Self(), base: base}, nil
}

func initRecords(r *backend.Region, h *alloc.Heap, cfg config) (*records, error) {
	return newRecords(r, h, cfg)
}

func attachRecords(r *backend.Region, h *alloc.Heap, cfg config) (*records, error) {
	return newRecords(r, h, cfg)
}

// slabHandle is a Handle's slab cache.
type slabHandle struct {
	_    mem.Pad
	rs   *records
	h    *slab.Handle
	offs []mem.Off // allocBatch's and freeBatch's scratch
	keys []uint32  // allocBatch's scratch
	// The slots of the last two records take located: slots[cur] the
	// last (where the next one is expected, and, if taken, the record
	// take returned last, for Handle.Free). take locates into the other one
	// and flips cur, so that no slot is copied (a copy right after the
	// slot was written stalled the store buffer; see slab's slotAfter).
	slots [2]slab.Slot
	cur   uint8
	taken bool
	// win is the window of records taken ahead (see ahead) that the
	// record Receive returned last came from, if it did: Handle.Free
	// looks there first.
	win *ahead
	key uint32 // if taken, the key of the record at slots[cur] (slab.Pool.Key)
	// The batch takeBatch returned last, for freeBatch: its slots, the
	// records' offsets and allocation sizes (what the RunCursor located), their
	// header checks (the keys of their freed marks) and their runs. recvN
	// is 0 when there is none (freed, or the last take failed).
	recvSlots []uint64
	recvOffs  []mem.Off
	recvSizes []uint32
	recvKeys  []uint32
	recvRuns  []slab.Run
	recvN     int
	cursor    slab.RunCursor // takeRecords's
	_         mem.Pad
}

// takenOff is the offset of the record whose slot Handle.Free can use, or 0.
func (sh *slabHandle) takenOff() mem.Off {
	if !sh.taken {
		return 0
	}
	return sh.slots[sh.cur].Off()
}

func (rs *records) newHandle() (*slabHandle, error) {
	return &slabHandle{rs: rs, h: rs.pool.NewHandle()}, nil
}

// allocBatch fills rs with records of n bytes; on error it gives back
// what it allocated and leaves rs zeroed.
func (sh *slabHandle) allocBatch(n int, rs []Record) error {
	offs := sh.offsets(len(rs))
	if cap(sh.keys) < len(rs) {
		sh.keys = make([]uint32, len(rs))
	}
	keys := sh.keys[:len(rs)]
	size := allocSize(n)
	// Each record's trailer is written as its header is (one pass over
	// the records' memory; in two, ~0.4 ns a record more in
	// BenchmarkRecordBatchInProcess).
	tr := trailer{Holder: uint64(sh.rs.self), Len: uint32(n), Magic: trailerMagic}
	got, err := sh.h.AllocBatchStamped(size, offs, keys, *(*[2]uint64)(unsafe.Pointer(&tr)))
	if err != nil {
		clear(rs)
		ferr := sh.rs.pool.FreeBatch(offs[:got])
		sh.h.Trim() // the slabs the batch filled go back too
		return errors.Join(err, ferr)
	}
	base := unsafe.Pointer(unsafe.SliceData(sh.rs.b))
	for i, off := range offs {
		rs[i] = Record{ref: makeRef(off, keys[i], freshHand), b: unsafe.Slice((*byte)(unsafe.Add(base, off)), n)} // as view
	}
	return nil
}

func (sh *slabHandle) offsets(n int) []mem.Off {
	if cap(sh.offs) < n {
		sh.offs = make([]mem.Off, n)
	}
	return sh.offs[:n]
}

// freeBatch frees rs as free frees each; records of one slab share the
// atomic operations on its bitmap (slab.Pool.FreeBatch).
func (sh *slabHandle) freeBatch(rs []Record) error {
	if sh.recvN > 0 && sh.recvN == len(rs) {
		if ok, err := sh.freeReceived(rs); ok {
			return err
		}
	}
	offs := sh.offsets(len(rs))
	for i, r := range rs {
		t, key := sh.rs.heldFast(r)
		if t == nil {
			// Not a record this process holds (a zero record, one
			// freed already, another process's, another buffer's, a
			// stale Record of one whose place was reused): each is
			// freed, or refused, as free does it, after the marks made
			// so far are put back.
			for _, q := range rs[:i] {
				sh.rs.trailers[(uint64(q.off())+uint64(allocSize(len(q.b))))/trailerSize-1].Magic = liveMagic(q.hand())
			}
			return sh.freeEach(rs)
		}
		offs[i] = r.off()
		t.Magic = freedMark(key) // as in free
	}
	return sh.rs.pool.FreeBatch(offs)
}

// freeReceived is freeBatch's common case: rs is the batch takeBatch
// returned last, every record of it still live and held by this process
// (its trailer's magic intact: not freed since through a view). It frees
// the records by the runs takeBatch located, without locating them again.
// ok false means "free them as freeBatch does" (nothing changed).
func (sh *slabHandle) freeReceived(rs []Record) (ok bool, err error) {
	rcs := sh.rs
	sizes := sh.recvSizes[:len(rs)]
	if k := rcs.unstamp(rs, sh.recvSlots[:len(rs)], sizes, sh.recvKeys[:len(rs)]); k < len(rs) {
		// Not this batch as received: the magics cleared so far are
		// put back, and freeBatch takes its usual path.
		for j := range k {
			rcs.trailers[(uint64(rs[j].off())+uint64(sizes[j]))/trailerSize-1].Magic = liveMagic(rs[j].hand())
		}
		return false, nil
	}
	sh.recvN = 0
	return true, rcs.pool.FreeRuns(sh.recvRuns, sh.recvOffs[:len(rs)])
}

// unstamp is freeReceived's loop, apart so that it makes no call: it
// marks freed the trailer (as free does) of each record of recs that is
// the one received in slots (sizes[i] bytes in all, keys[i] its header's
// check, as the RunCursor found it, which the Record's tag and the
// header's check now must match: not freed since by another path and
// another record made at its place), held here and not freed since, up
// to the first that is not, and returns how many it marked.
func (rs *records) unstamp(recs []Record, slots []uint64, sizes, keys []uint32) int {
	b, base, self := unsafe.Pointer(unsafe.SliceData(rs.b)), rs.base, uint64(rs.self)
	n := min(len(recs), len(slots), len(sizes), len(keys))
	for i := range n {
		r := &recs[i]
		off, l := r.ref&refOffMask, uint64(len(r.b))
		// The record as received (slots[i]: its offset and length,
		// which takeRecords checked, and so its header and trailer are
		// in the heap's range): the Record's view, its tag and the
		// header's check are still that record's.
		if off|l<<channel.SlotOffBits != slots[i] || r.b == nil || uintptr(unsafe.Pointer(unsafe.SliceData(r.b))) != base+uintptr(off) ||
			uint32(r.ref>>refOffBits) != tagOf(keys[i]) || (*trailer)(unsafe.Add(b, off-trailerSize)).Magic != keys[i] { // headerCheck
			return i
		}
		t := (*trailer)(unsafe.Add(b, off+uint64(sizes[i])-trailerSize))
		if t.Magic != liveMagic(uint32(r.ref)) || uint64(t.Len) != l || t.holder().Load() != self {
			return i
		}
		t.Magic = freedMark(keys[i])
	}
	return n
}

// takeBatch is ReceiveBatch's common case, without the error: it takes
// the records of slots into rs as records.take takes each, and remembers
// them for freeBatch. ok false means "take them one by one" (nothing
// changed): a slot without the length, a record that is not where a
// record of that length must be, a trailer that does not say so, or a
// record another process holds that is not live.
//
// The records are located together (a slab.RunCursor), which checks
// the header of a record that follows the last one against its place and
// finds the runs of records that lie back to back; freeBatch frees those
// runs if it is given this batch.
func (sh *slabHandle) takeBatch(slots []uint64, rs []Record) bool {
	sh.recvN = 0
	n := len(slots)
	if cap(sh.recvOffs) < n {
		sh.recvSlots = make([]uint64, n)
		sh.recvOffs = make([]mem.Off, n)
		sh.recvSizes = make([]uint32, n)
		sh.recvKeys = make([]uint32, n)
		sh.recvRuns = make([]slab.Run, 0, n)
	}
	runs, ok := sh.takeRecords(slots, rs, sh.recvOffs[:n], sh.recvSizes[:n], sh.recvKeys[:n], sh.recvRuns[:0], false)
	sh.recvRuns = runs
	if !ok {
		return false
	}
	sh.rs.unqueue(sh.recvOffs[:n], sh.recvSizes[:n])
	copy(sh.recvSlots[:n], slots)
	sh.recvN = n
	return true
}

// unqueue puts the live magic back in the trailers of records taken off a
// ring and handed over (offs and sizes as takeRecords found them), of the
// hand the queued mark has, which the Records takeRecords made carry.
func (rs *records) unqueue(offs []mem.Off, sizes []uint32) {
	ts := rs.trailers
	sizes = sizes[:len(offs)]
	for i, off := range offs {
		t := &ts[(uint64(off)+uint64(sizes[i]))/trailerSize-1]
		t.Magic = liveOf(t.Magic)
	}
}

// takeRecords is takeBatch's taking, with the caller's scratch: offs,
// sizes and keys (len(slots) each) get the records' offsets, allocation
// sizes and header checks, and the records' runs are appended to runs.
// Each record's trailer and header are checked (checkEach: in one pass,
// or with together the headers located together after the trailers).
func (sh *slabHandle) takeRecords(slots []uint64, rs []Record, offs []mem.Off, sizes, keys []uint32, runs []slab.Run, together bool) ([]slab.Run, bool) {
	rcs := sh.rs
	cur := &sh.cursor
	cur.Continue(rcs.pool, runs) // a batch usually begins where the last one ended
	ok, foreign := rcs.checkEach(cur, slots, rs, offs, sizes, keys, together)
	runs = cur.Runs()
	cur.Forget() // holds none of the caller's memory between batches
	if !ok {
		return runs, false
	}
	if foreign {
		// Before this process writes itself in as the holder: the
		// records are live (a damaged slot never leads to a write into
		// memory that is no longer that record).
		for i := range runs {
			if !rcs.pool.RunLive(&runs[i]) {
				return runs, false
			}
		}
		for i := range slots {
			if t := rcs.trailers[(uint64(offs[i])+uint64(sizes[i]))/trailerSize-1].holder(); t.Load() != uint64(rcs.self) {
				t.Store(uint64(rcs.self))
			}
		}
	}
	return runs, true
}

// checkEach is takeRecords's check: each record of slots (of the length
// its slot says) has a trailer that says so and the header of a record
// of its size (cur, which gathers the records' runs), and out, offs,
// sizes and keys get the records, their offsets, allocation sizes and
// header checks (after a failure the caller clears out). foreign:
// another process holds one of them.
//
// It checks each record's trailer and header in turn, in one pass: the
// records that continue the cursor's run in checkSpan's loop, which
// makes no call (ReceiveBatch 7.8 -> 5.6 ns a record on one goroutine,
// against a RunCursor.Next call per record), the others with Next; with
// together, the trailers first, then the headers in one call
// (RunCursor.Locate), then the Records' tags. Measured on this VM, one
// pass suits ReceiveBatch (64 records; in a buffer that holds little
// more than a ring of them, which the producer fills again at once,
// ipcbench's batch throughput was 16% lower with the passes apart),
// and the passes apart suit Receive's window (the consumer alone 0.8
// ns a record faster).
func (rs *records) checkEach(cur *slab.RunCursor, slots []uint64, out []Record, offs []mem.Off, sizes, keys []uint32, together bool) (ok, foreign bool) {
	ts, self := rs.trailers, uint64(rs.self)
	base := unsafe.Pointer(unsafe.SliceData(rs.b))
	n := len(slots)
	out, offs, sizes, keys = out[:n], offs[:n], sizes[:n], keys[:n]
	for i := 0; i < n; i++ {
		if !together {
			// The records that continue the cursor's run, in a loop
			// that checks their headers (Span.Check) with their
			// trailers and makes no call; the first that does not
			// is checked below, in full.
			var f bool
			j := rs.checkSpan(cur, i, slots, out, offs, sizes, keys, &f)
			foreign = foreign || f
			if i = j; i == n {
				break
			}
		}
		s := slots[i]
		off, l := channel.SlotOff(s), s>>channel.SlotOffBits
		if l >= channel.SlotLenNone {
			return false, false
		}
		as := slotSize(l)
		j := (uint64(off)+as)/trailerSize - 1
		if j >= uint64(len(ts)) {
			return false, false
		}
		t := &ts[j]
		if !takeable(t.Magic) || uint64(t.Len) != l {
			return false, false
		}
		var key uint32
		if !together {
			k, ok := cur.Next(off, uint32(as))
			if !ok {
				return false, false
			}
			key, keys[i] = k, k
		}
		foreign = foreign || t.holder().Load() != self
		offs[i], sizes[i] = off, uint32(as)
		// The record is located (in the heap) with a size that holds l
		// bytes and the trailer; with together, its tag comes below.
		out[i] = Record{ref: makeRef(off, key, handOf(t.Magic)), b: unsafe.Slice((*byte)(unsafe.Add(base, off)), l)}
	}
	if together {
		if cur.Locate(offs, sizes, keys) != n {
			return false, false
		}
		for i := range out {
			out[i].ref |= uint64(tagOf(keys[i])) << refOffBits
		}
	}
	return true, foreign
}

// checkSpan is checkEach's loop over the records of slots from i on that
// continue cur's run (cur.Span): each one's trailer is checked as
// checkEach checks it and its header with Span.Check, and out, offs,
// sizes and keys get what checkEach gives them. It stops at the first
// record that does not continue the run or fails a check, tells cur how
// many did (RunCursor.Took) and returns that record's index (len(slots)
// if none); foreign is set if another process holds one of them.
func (rs *records) checkSpan(cur *slab.RunCursor, i int, slots []uint64, out []Record, offs []mem.Off, sizes, keys []uint32, foreign *bool) int {
	sp := cur.Span()
	if sp.Want == 0 {
		return i
	}
	base := unsafe.Pointer(unsafe.SliceData(rs.b))
	self := uint64(rs.self)
	as, want, pos := uint64(sp.Size), sp.Want, sp.Pos
	step := mem.Off(sp.Slot * 16)
	n := len(slots)
	out, offs, sizes, keys = out[:n], offs[:n], sizes[:n], keys[:n]
	var other uint64 // not 0: another process holds one
	j := i
	for ; j < n; j++ {
		off, l, ok := continues(slots[j], want, as, pos, &sp)
		if !ok {
			break
		}
		key, ok := sp.Check(pos)
		t := spanTrailer(base, off, as)
		m := t.Magic
		if !ok || !takeable(m) || uint64(t.Len) != l {
			break
		}
		other |= t.holder().Load() ^ self
		offs[j], sizes[j], keys[j] = off, uint32(as), key
		out[j] = Record{ref: makeRef(off, key, handOf(m)), b: unsafe.Slice((*byte)(unsafe.Add(base, off)), l)}
		want += step
		pos += sp.Slot
	}
	cur.Took(j - i)
	*foreign = other != 0
	return j
}

// continues reports whether the record of ring slot s continues the span
// sp at want, the header at pos, with as bytes in all (checkSpan,
// useFused), and returns its offset and payload length.
func continues(s uint64, want mem.Off, as, pos uint64, sp *slab.Span) (mem.Off, uint64, bool) {
	off, l := channel.SlotOff(s), s>>channel.SlotOffBits
	return off, l, off == want && l < channel.SlotLenNone && slotSize(l) == as && pos <= sp.Lim
}

// spanTrailer is the trailer of the record of as bytes at off that
// continues a span (continues): it is in the record's slot, which is in
// the region (slab.Span), so it is addressed without a bounds check.
func spanTrailer(base unsafe.Pointer, off mem.Off, as uint64) *trailer {
	return (*trailer)(unsafe.Add(base, uint64(off)+as-trailerSize))
}

// freeEach is freeBatch one record at a time, for a batch with a zero
// record in it.
func (sh *slabHandle) freeEach(rs []Record) error {
	var all []error
	for i, r := range rs {
		err := fmt.Errorf("zero record: %w", ErrNotAllocated)
		if r.b != nil {
			err = sh.rs.free(r)
		}
		if err != nil {
			all = append(all, fmt.Errorf("record %d: %w", i, err))
		}
	}
	return errors.Join(all...)
}

func (sh *slabHandle) close() error { return sh.h.Close() }

// trailerOf validates the live record at off and returns its trailer and
// its whole allocation.
func (rs *records) trailerOf(off mem.Off) (*trailer, []byte, error) {
	data, err := rs.pool.Bytes(off)
	if err != nil {
		return nil, nil, err
	}
	return rs.trailerIn(off, data)
}

// trailerIn validates the trailer at the end of data, the whole
// allocation of the record at off: live, or queued (takeable; a caller
// that needs a live record checks the magic).
func (rs *records) trailerIn(off mem.Off, data []byte) (*trailer, []byte, error) {
	if len(data) < trailerSize || len(data)%trailerSize != 0 {
		return nil, nil, errs.Corrupt("record trailer", uint64(off), "record of %d bytes has no room for a trailer", len(data))
	}
	t, err := mem.At[trailer](data, mem.Off(len(data)-trailerSize))
	if err != nil {
		return nil, nil, err
	}
	if !takeable(t.Magic) || allocSize(int(t.Len)) != len(data) {
		return nil, nil, errs.Corrupt("record trailer", uint64(off)+uint64(len(data)-trailerSize), "magic %#x, length %d in a record of %d bytes", t.Magic, t.Len, len(data))
	}
	return t, data, nil
}

// take makes this process the holder of the record in a ring slot that is
// being received (the channel publishes the receipt after it) and returns
// the record.
//
// A record that a producer sent was checked at Send (it held it), and the
// slot carries its length, which leads to its trailer: the taker checks
// the record's slab header (of the slab's current generation, the size
// the length makes) and the trailer, and before it writes itself in as
// the holder (a consumer in another process than the producer's) that
// the record is live, so that a damaged slot never leads to a write into
// memory that is not that record. Free checks the rest. A slot without the
// length (payloads of SlotLenNone bytes or more), or whose record fails
// the cheap checks, is located in full, which reports what is wrong. A
// record that fails its check is not returned, and keeps its holder.
func (rs *records) take(slot uint64) (Record, error) {
	off := channel.SlotOff(slot)
	n, known := channel.SlotLen(slot)
	if known {
		if t := rs.queuedAt(off, n); t != nil {
			if t.holder().Load() == uint64(rs.self) {
				if data, ok := rs.pool.Peek(off); ok && len(data) == allocSize(n) {
					return Record{ref: makeRef(off, rs.pool.RecordKey(off), t.takeOver()), b: rs.view(off, n)}, nil
				}
			} else if data, err := rs.pool.Bytes(off); err == nil && len(data) == allocSize(n) {
				t.holder().Store(uint64(rs.self))
				return Record{ref: makeRef(off, rs.pool.RecordKey(off), t.takeOver()), b: rs.view(off, n)}, nil
			}
		}
	}
	b, h, err := rs.takeOff(off, n, known)
	if err != nil {
		return Record{}, fmt.Errorf("queued record at %#x: %w", uint64(off), err)
	}
	return Record{ref: makeRef(off, rs.pool.RecordKey(off), h), b: b}, nil
}

// take is records.take's common case, without the error (ok false means
// "ask records.take", which reports what is wrong): a slot with the
// length, whose record's trailer and slab header check out and, if
// another process holds it, is live. The record is looked for first
// where the last one taken ended (a handle carves records back to back
// and the channel delivers them in order, slab.Handle.LocateNext), which
// checks its header against that place instead of locating its slab
// afresh. The handle keeps the record's slot, so that Handle.Free, the likely
// next call, does not locate it again. Batches (ReceiveBatch, and
// Receive when it takes ahead) are located together instead
// (takeRecords), and records.take is the fallback of both.
func (sh *slabHandle) take(slot uint64) (Record, bool) {
	rs := sh.rs
	off := channel.SlotOff(slot)
	n, known := channel.SlotLen(slot)
	if !known {
		return Record{}, false
	}
	t := rs.queuedAt(off, n)
	if t == nil {
		return Record{}, false
	}
	prev := &sh.slots[sh.cur]
	sh.cur ^= 1
	s := &sh.slots[sh.cur]
	sh.taken = false
	if !sh.h.LocateNext(prev, off, s) || s.Size() != allocSize(n) {
		return Record{}, false
	}
	if t.holder().Load() != uint64(rs.self) {
		if !rs.pool.Live(s) {
			return Record{}, false
		}
		t.holder().Store(uint64(rs.self))
	}
	h := t.takeOver()
	sh.taken = true
	sh.key = rs.pool.Key(s)
	return Record{ref: makeRef(off, sh.key, h), b: rs.view(off, n)}, true
}

// takeOff is take for a record located in full (the fallback of take,
// and MPSC channels, whose slots are offsets): its header, its slab and
// its trailer are checked, and its length against n if known. It returns
// the record's bytes and its hand.
func (rs *records) takeOff(off mem.Off, n int, known bool) ([]byte, uint32, error) {
	t, _, err := rs.trailerOf(off)
	if err != nil {
		return nil, 0, err
	}
	if known && uint32(n) != t.Len {
		return nil, 0, errs.Corrupt("record channel slot", uint64(off), "length %d, the record has %d", n, t.Len)
	}
	if t.holder().Load() != uint64(rs.self) {
		t.holder().Store(uint64(rs.self))
	}
	h := t.takeOver()
	return rs.view(off, int(t.Len)), h, nil
}

// trailerAt returns the trailer of a record at off with an n-byte payload
// if it is in the heap and says so (length, and magic live, the live
// magic of the hand the caller's Record has: not queued, not freed, not
// handed over since), else nil.
func (rs *records) trailerAt(off mem.Off, n int, live uint32) *trailer {
	t := rs.trailerPlace(off, n)
	if t == nil || t.Magic != live || t.Len != uint32(n) {
		return nil
	}
	return t
}

// queuedAt is trailerAt for a record being taken off a ring: its trailer
// may say queued or live (takeable).
func (rs *records) queuedAt(off mem.Off, n int) *trailer {
	t := rs.trailerPlace(off, n)
	if t == nil || !takeable(t.Magic) || t.Len != uint32(n) {
		return nil
	}
	return t
}

// trailerPlace is where the trailer of a record at off with an n-byte
// payload is, if that is in the heap, else nil.
func (rs *records) trailerPlace(off mem.Off, n int) *trailer {
	if n < 0 || off < rs.lo || off%trailerSize != 0 {
		return nil
	}
	end := uint64(off) + uint64(allocSize(n))
	if end > uint64(rs.hi) {
		return nil
	}
	return &rs.trailers[end/trailerSize-1]
}

// held returns the trailer of the record r, if this process holds it
// through r: the cheap check of Send and Free, which know the payload's
// length from the view and so find the trailer without locating the
// record in its slab.
func (rs *records) held(r Record) (*trailer, error) {
	off, b := r.off(), r.b
	if o, ok := mem.OffsetOf(rs.b, unsafe.SliceData(b)); !ok {
		return nil, fmt.Errorf("record: %w", ErrForeign)
	} else if o != off {
		return nil, fmt.Errorf("record %#x: view at %#x: %w", uint64(off), uint64(o), ErrNotAllocated)
	}
	t := rs.trailerAt(off, len(b), liveMagic(r.hand()))
	if t == nil {
		if t := rs.trailerPlace(off, len(b)); t != nil && t.Len == uint32(len(b)) {
			if isQueued(t.Magic) {
				return nil, errQueued(off)
			}
			if takeable(t.Magic) && t.holder().Load() == uint64(rs.self) {
				return nil, errHandedOver(off)
			}
		}
		return nil, fmt.Errorf("record %#x: not a live record (freed?): %w", uint64(off), ErrNotAllocated)
	}
	if h := t.holder().Load(); h != uint64(rs.self) {
		return nil, fmt.Errorf("record %#x is held by %v, not by this process: %w", uint64(off), sys.Identity(h), ErrNotAllocated)
	}
	return t, nil
}

// heldFast is held's common case for a Record, without the error: a
// record this process holds whose view starts at its offset and whose key
// (returned) matches its tag. nil means "ask held and current" (which say
// what is wrong, if anything).
func (rs *records) heldFast(r Record) (*trailer, uint32) {
	off, b := r.off(), r.b
	if !rs.at(off, b) {
		return nil, 0
	}
	t := rs.trailerAt(off, len(b), liveMagic(r.hand()))
	if t == nil || t.holder().Load() != uint64(rs.self) {
		return nil, 0
	}
	key := rs.headerCheck(off)
	if tagOf(key) != r.tag() {
		return nil, 0 // or a large record: see headerCheck
	}
	return t, key
}

// headerCheck is the Check of the slab header before the record at off
// (at least lo: the header is in the region), read through the trailers'
// view of the region: the 16-byte header (slab's recHeader: Pos, Len,
// Size, Check) seen as a trailer, whose Magic is at Check's place. It is
// the record's key (slab.Pool.RecordKey), a slab record's or a large
// one's.
func (rs *records) headerCheck(off mem.Off) uint32 { return rs.trailers[off/trailerSize-1].Magic }

// current returns the key of the located record at r's offset if r's tag
// matches it; if not, r is a stale Record: the record it was made for was
// freed, and the one at its place now is another. The error wraps
// sentinel (ErrNotAllocated for a Send, ErrDoubleFree for a Free).
func (rs *records) current(r Record, sentinel error) (uint32, error) {
	key := rs.pool.RecordKey(r.off())
	if tagOf(key) != r.tag() {
		return 0, fmt.Errorf("record %#x: a stale Record: its record was freed and another took its place: %w", uint64(r.off()), sentinel)
	}
	return key, nil
}

// slot validates the record as held and current do and returns its ring
// slot and its trailer (which the sender marks queued).
func (rs *records) slot(r Record) (uint64, *trailer, error) {
	off, b := r.off(), r.b
	t, err := rs.held(r)
	if err != nil {
		return 0, nil, err
	}
	if _, err := rs.current(r, ErrNotAllocated); err != nil {
		return 0, nil, err
	}
	s, ok := channel.PackSlot(off, len(b))
	if !ok {
		return 0, nil, fmt.Errorf("record %#x: offset beyond any segment: %w", uint64(off), ErrNotAllocated)
	}
	return s, t, nil
}

// unsent puts the live magic back in the trailers of recs, which the
// sender marked queued and did not queue after all (sent off refused, or
// the send failed). They were validated: held here, in the heap.
func (rs *records) unsent(recs []Record) {
	for i := range recs {
		rs.trailers[(uint64(recs[i].off())+uint64(allocSize(len(recs[i].b))))/trailerSize-1].Magic = liveMagic(recs[i].hand())
	}
}

// validateQueued checks a record channel's slot: a live record whose
// length is the slot's, if the slot records it.
func (rs *records) validateQueued(slot uint64) error {
	t, _, err := rs.trailerOf(channel.SlotOff(slot))
	if err != nil {
		return err
	}
	if n, ok := channel.SlotLen(slot); ok && uint32(n) != t.Len {
		return errs.Corrupt("record channel slot", uint64(channel.SlotOff(slot)), "length %d, the record has %d", n, t.Len)
	}
	return nil
}

// free frees the record r. One this process holds is marked freed in its
// trailer (a later Send or Free of the view is caught cheaply). Any other
// view goes to the pool (which reports a double free or what else is
// wrong) only if it is this buffer's view of a record at its offset, of
// the view's size and of its tag, that no other live process holds: a
// Record of another buffer, or a view whose record has given way to
// another (a stale Record: ErrDoubleFree), would have the pool free
// whatever record lies there now, and a record another live process
// holds is that process's (this view was kept after the record was sent
// and received there: freeing it would free the other process's record
// under it). A record whose holder died, or whose trailer was damaged,
// still comes back through its view.
func (rs *records) free(r Record) error {
	off, b := r.off(), r.b
	t, err := rs.held(r)
	if err == nil {
		key, kerr := rs.current(r, ErrDoubleFree)
		if kerr != nil {
			return kerr
		}
		t.Magic = freedMark(key)
		return rs.pool.Free(off)
	}
	if !rs.at(off, b) {
		return err
	}
	if data, derr := rs.pool.Bytes(off); derr == nil {
		if len(data) != allocSize(len(b)) {
			return err
		}
		key, kerr := rs.current(r, ErrDoubleFree)
		if kerr != nil {
			return kerr
		}
		// Its own freed mark, by a live holder: a free under way (the
		// mark is written before the bits are set, and ReceiveEach sets
		// a batch's bits after its last use returns). Only a dead
		// holder's cut-short free is finished through a view.
		if t := &rs.trailers[(uint64(off)+uint64(len(data)))/trailerSize-1]; t.Magic == freedMark(key) {
			if h := sys.Identity(t.holder().Load()); h == rs.self || sys.Alive(h) {
				return fmt.Errorf("record %#x: freed already (its holder's free is under way): %w", uint64(off), ErrDoubleFree)
			}
		}
		if t, _, terr := rs.trailerIn(off, data); terr == nil {
			if isQueued(t.Magic) && t.Len == uint32(len(b)) {
				return err // in a channel (held said so): the consumer's
			}
			h := sys.Identity(t.holder().Load())
			if h != rs.self && sys.Alive(h) {
				return err // held by another live process (held said so)
			}
			if h == rs.self && t.Len == uint32(len(b)) {
				return err // handed over to another holder here (held said so)
			}
		}
	}
	return rs.pool.Free(off)
}

// freeOff frees a record; the pool detects double frees and offsets that
// are not records.
func (rs *records) freeOff(off mem.Off) error { return rs.pool.Free(off) }

func (rs *records) check() error { return rs.pool.Check() }

func (rs *records) stats() RecordStats {
	s, _ := rs.pool.Stats()
	return s
}

// recover frees the records whose holder died, except those queued (in a
// channel: they will be delivered), and gives back what dead processes
// left of the slabs. unknown: a channel's queue could not be read (it is
// damaged), so any record may be queued in it: none is freed then (dead
// allocators' slabs are still retired and their records handed over, as
// slab.KeepAll does).
func (rs *records) recover(queued map[mem.Off]bool, unknown bool) (uint64, error) {
	before, _ := rs.pool.Heap().Stats()
	alive := map[sys.Identity]bool{rs.self: true}
	isAlive := func(id sys.Identity) bool {
		a, ok := alive[id]
		if !ok {
			a = sys.Alive(id)
			alive[id] = a
		}
		return a
	}
	keep := func(off mem.Off) bool {
		if unknown || queued[off] {
			return true
		}
		t := rs.stamped(off)
		if t == nil {
			return false // never stamped: its allocator died first
		}
		// A live holder keeps its record, and completes its own free
		// if it marked the record freed.
		h := sys.Identity(t.holder().Load())
		return h != 0 && isAlive(h)
	}
	// Records of dead allocators: freed unless kept.
	_, err := rs.pool.Recover(keep)
	// Records of live allocators held by dead processes.
	var all []error
	all = append(all, err)
	all = append(all, rs.pool.Walk(func(off mem.Off) {
		if keep(off) {
			return
		}
		t := rs.stamped(off)
		if t == nil {
			return
		}
		if h := sys.Identity(t.holder().Load()); h != 0 && !isAlive(h) {
			if ferr := rs.pool.Free(off); ferr != nil && !errors.Is(ferr, ErrDoubleFree) {
				all = append(all, ferr)
			}
		}
	}))
	// A free above may have completed a slab whose count a dead freer
	// left one too high (stalled): pool.Recover looked for those before.
	_, serr := rs.pool.ReturnStalled()
	all = append(all, serr)
	after, _ := rs.pool.Heap().Stats()
	var n uint64
	if after.FreeBytes > before.FreeBytes {
		n = after.FreeBytes - before.FreeBytes
	}
	return n, errors.Join(all...)
}

// stamped returns the trailer of the live record at off if it is one its
// allocator stamped: a valid trailer, or one its holder marked freed (a
// free cut short between the mark and the bitmap: see trailer). Else
// nil: a record not stamped yet, whose trailer's place still holds
// whatever was there before, or a damaged one.
func (rs *records) stamped(off mem.Off) *trailer {
	data, err := rs.pool.Bytes(off)
	if err != nil {
		return nil
	}
	if t, _, err := rs.trailerIn(off, data); err == nil {
		return t
	}
	if len(data) < trailerSize || len(data)%trailerSize != 0 {
		return nil
	}
	t := &rs.trailers[(uint64(off)+uint64(len(data)))/trailerSize-1]
	if t.Magic != rs.freedMark(off) || allocSize(int(t.Len)) != len(data) {
		return nil
	}
	return t
}

func (rs *records) close() error  { return nil }
func (rs *records) unlink() error { return nil }

// slots is SendBatch's check, heldFast's for a batch, apart so that it
// makes no call: it fills slots with the ring slots of the records of rs
// that this process holds, marking each queued, up to the first that is
// not (or whose slot cannot carry its length), and returns how many it
// did.
func (rs *records) slots(recs []Record, slots []uint64) int {
	b, base := unsafe.Pointer(unsafe.SliceData(rs.b)), rs.base
	self := uint64(rs.self)
	lo, hi := uint64(rs.lo), uint64(rs.hi)
	slots = slots[:len(recs)]
	for i := range recs {
		r := &recs[i]
		// A ref's offset is below 2^SlotOffBits and a multiple of 16
		// (refOffMask): the range and the view's address are left to
		// check.
		off, n := r.ref&refOffMask, uint64(len(r.b))
		end := off + slotSize(n)
		if r.b == nil || uintptr(unsafe.Pointer(unsafe.SliceData(r.b))) != base+uintptr(off) ||
			off < lo || end > hi || n >= channel.SlotLenNone {
			return i
		}
		// Its header and trailer are in the heap's range (lo is past
		// a header's room, see newRecords).
		t := (*trailer)(unsafe.Add(b, end-trailerSize))
		q, l := sendMagics(uint32(r.ref))
		if t.Magic != l || uint64(t.Len) != n || t.holder().Load() != self ||
			tagOf((*trailer)(unsafe.Add(b, off-trailerSize)).Magic) != uint32(r.ref>>refOffBits) { // headerCheck
			return i
		}
		t.Magic = q
		slots[i] = off | n<<channel.SlotOffBits
	}
	return len(recs)
}
