package ipc

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"

	"github.com/heapipc/ipc/channel"
	"github.com/heapipc/ipc/internal/mem"
)

// ChannelID is the user-chosen id of a channel.
type ChannelID = channel.ID

// Record is a block of shared memory allocated from the buffer: the unit
// record channels carry without copying. Bytes is a view into shared
// memory; it stays valid until the record is freed (by whoever holds it
// last) or the Buffer is closed. A Record kept after its record was freed
// stays refused by Free and Send when a new record has taken the place of
// the old (one in 2^18 is missed). A Record kept after it was sent is
// refused by Send and Free (ErrNotAllocated: the record is the
// consumer's), while the record is queued and after a consumer has
// received it, in this process or another; the one exception is a
// record that came back to this process's hands after 16 sends since
// (a pipeline of 16 stages in one process), whose first Record is not
// told from its last.
type Record struct {
	// ref is the record's offset in the region, with a tag above it
	// and its hand below it (see makeRef). Record stays four words: Go passes and returns structs of
	// at most four words in registers, and a fifth cost the per-record
	// calls ~10 ns a record.
	ref uint64
	b   []byte
}

// A Record's tag tells the record it was made for from a later one at the
// same place (after the first was freed and its slab started over, or a
// large record's extent was given to another): it is the top refTagBits
// bits of the record's key (slab.Pool.RecordKey, the check in its header,
// which changes with a slab's generation and from one large record to the
// next), so a stale Record — freed, and its place reused — is refused by
// Free and Send instead of freeing or sending the record that lies there
// now. One stale Record in 2^refTagBits carries the new record's tag by
// chance.
//
// A Record's hand (see records.go) is in the low 4 bits of its ref, below
// the offset, which is a multiple of 16.
const (
	refOffBits = channel.SlotOffBits // offsets are below 2^46 (backend's maxSegmentSize)
	refTagBits = 64 - refOffBits
	refOffMask = 1<<refOffBits - 1 - refHand
)

// makeRef is the ref of the record at off whose key is key, of hand h.
func makeRef(off mem.Off, key, h uint32) uint64 {
	return uint64(off) | uint64(h) | uint64(tagOf(key))<<refOffBits
}

// tagOf is the tag of a record whose key is key.
func tagOf(key uint32) uint32 { return key >> (32 - refTagBits) }

// off is the record's offset in the region.
func (r Record) off() mem.Off { return mem.Off(r.ref & refOffMask) }

// tag is the record's tag (see makeRef).
func (r Record) tag() uint32 { return uint32(r.ref >> refOffBits) }

// hand is the record's hand as this Record knows it.
func (r Record) hand() uint32 { return uint32(r.ref) & refHand }

// Bytes is the record's payload in shared memory.
func (r Record) Bytes() []byte { return r.b }

// Len is the payload's length.
func (r Record) Len() int { return len(r.b) }

// IsZero reports whether r is the zero Record.
func (r Record) IsZero() bool { return r.b == nil }

// Handle is a goroutine's access to a buffer (RaftLib's TLS structure): it
// owns a slab cache to allocate records from with no lock (up to three
// slabs of the heap, 192 KiB with the default slab size, so that a
// producer cycles through memory still in the cache), and the channel
// ends it opened. A Handle must be used by one goroutine at a time (see
// WithDebug for a check); records may be freed through any handle, in any
// process.
type Handle struct {
	_    mem.Pad // calls is written at every call: no other handle's goroutine shares its line
	buf  *Buffer
	sh   *slabHandle
	busy atomic.Int32
	// calls is how many calls of the handle's goroutine are in progress
	// on the buffer (on the handle, its ends and its Selects; a call made
	// inside another counts too): written by that goroutine alone, with
	// plain stores (setCalls), and read by Buffer.Close, which waits for
	// every handle's to be 0 before it closes the handles and unmaps.
	calls atomic.Int32

	mu       sync.Mutex
	ends     map[end]struct{}
	closed   bool
	isClosed atomic.Bool // closed, for the hot paths
	_        mem.Pad
}

type end interface {
	close() error
}

// NewHandle returns a new handle on the buffer.
func (b *Buffer) NewHandle() (*Handle, error) {
	if err := b.check("new handle"); err != nil {
		return nil, err
	}
	sh, err := b.recs.newHandle()
	if err != nil {
		return nil, fmt.Errorf("ipc: new handle on %q: %w", b.name, err)
	}
	h := &Handle{buf: b, sh: sh, ends: map[end]struct{}{}}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		sh.close()
		return nil, fmt.Errorf("ipc: new handle on %q: %w", b.name, ErrClosed)
	}
	b.handles[h] = struct{}{}
	return h, nil
}

// enter and leave bracket every call in debug mode to catch concurrent
// use of one handle.
func (h *Handle) enter() {
	if h.buf.cfg.debug && h.busy.Add(1) != 1 {
		panic("ipc: a Handle was used by two goroutines at once; use one Handle per goroutine")
	}
}

func (h *Handle) leave() {
	if h.buf.cfg.debug {
		h.busy.Add(-1)
	}
}

// in marks a call of the handle's goroutine as in progress and reports
// whether the buffer is open; a call that gets true calls out when it is
// done, a call that gets false touches nothing and returns closedErr.
// The count is stored before isClosed is read; Buffer.Close stores
// isClosed before it reads the count, and a process-wide barrier
// (sys.Barrier) between its store and its reads makes the count's plain
// store visible to it: either the call sees the buffer closed, or Close
// sees the call and waits for it.
func (h *Handle) in() bool {
	setCalls(&h.calls, h.calls.Load()+1)
	if h.buf.isClosed.Load() {
		h.out()
		return false
	}
	return true
}

// out ends what in began.
func (h *Handle) out() { setCalls(&h.calls, h.calls.Load()-1) }

// closedErr is the error of a call made on a closed buffer.
func (h *Handle) closedErr(op string) error { return h.buf.closedErr(op) }

// closedChan is what Notify returns on a closed buffer: a closed channel.
func closedChan() <-chan struct{} {
	ch := make(chan struct{})
	close(ch)
	return ch
}

func (h *Handle) check(op string) error {
	if h.isClosed.Load() {
		return fmt.Errorf("ipc: %s: handle: %w", op, ErrClosed)
	}
	return h.buf.checkFast(op)
}

// Allocate returns a record of n bytes (0 ≤ n < 4 GiB: a record's
// length is kept in 32 bits; ErrInvalidSize beyond) from this handle's
// slabs, or from its own extent if it is large. Its bytes are not zeroed.
// ErrNoSpace: the buffer is full (nothing changed).
func (h *Handle) Allocate(n int) (Record, error) {
	if h.buf.cfg.debug {
		h.enter()
		defer h.leave()
	}
	// A per-record call: outside in and out (see Buffer.Close).
	if !payloadOK(n) {
		return Record{}, fmt.Errorf("ipc: allocate %d bytes: %w", n, ErrInvalidSize)
	}
	if h.isClosed.Load() || h.buf.isClosed.Load() {
		return Record{}, h.check("allocate")
	}
	// The handle's slab cache carves the record, and its trailer is
	// written here (one call on the producer's path).
	sh := h.sh
	size := allocSize(n)
	off, key, err := sh.h.AllocKeyed(size)
	if err != nil {
		return Record{}, fmt.Errorf("ipc: allocate %d bytes: %w", n, err)
	}
	rs := sh.rs
	// The record is not handed out yet: plain stores (no fence) will do.
	rs.trailers[(uint64(off)+uint64(size))/trailerSize-1] = trailer{Holder: uint64(rs.self), Len: uint32(n), Magic: trailerMagic}
	// The pool carved size bytes at off, in the region.
	return Record{ref: makeRef(off, key, freshHand), b: rs.view(off, n)}, nil
}

// AllocateBatch fills rs with records of n bytes each, as Allocate
// would one by one but with one check for all: the producer's side of
// SendBatch. On error (ErrNoSpace: the buffer is full) nothing is
// allocated, rs is zeroed, and the slabs the attempt filled go back to
// the heap.
func (h *Handle) AllocateBatch(n int, rs []Record) error {
	if !h.in() {
		return h.closedErr("allocate batch")
	}
	defer h.out()
	h.enter()
	defer h.leave()
	if !payloadOK(n) {
		return fmt.Errorf("ipc: allocate %d bytes: %w", n, ErrInvalidSize)
	}
	if err := h.check("allocate"); err != nil {
		return err
	}
	if err := h.sh.allocBatch(n, rs); err != nil {
		return fmt.Errorf("ipc: allocate %d records of %d bytes: %w", len(rs), n, err)
	}
	return nil
}

// FreeBatch gives back every record of rs, as Free would one by one; the
// records of a slab that lie together (as a channel delivers them) share
// one atomic operation. Every record is freed or reported: the error
// joins those of the records that were not, each with its index.
func (h *Handle) FreeBatch(rs []Record) error {
	if !h.in() {
		return h.closedErr("free batch")
	}
	defer h.out()
	h.enter()
	defer h.leave()
	if err := h.check("free"); err != nil {
		return err
	}
	if err := h.sh.freeBatch(rs); err != nil {
		return fmt.Errorf("ipc: free batch: %w", err)
	}
	return nil
}

// Free gives a record back: ErrDoubleFree if it was freed already (also
// once another record has taken its place: a Record knows the record it
// was made for, see Record), ErrNotAllocated or ErrForeign if it is not a
// live record of this buffer (nothing changes then). Any handle may free
// any record that this process holds (allocated, or received and not sent
// on), and a record whose holder died; a record another live process
// holds is its own (one sent there and received, say) and is
// ErrNotAllocated here, and so is a record queued in a channel (sent and
// not received yet: the consumer's).
//
// Records that a Consumer of this handle received one by one from a run
// already queued (Receive takes up to 64 of them, 64 KiB, ahead) and that this handle
// frees in the order they came are freed together, when the last of the
// run is: until then they are marked freed (a second Free or a Send of
// them is refused at once) and Stats counts them in use. They are freed
// anyway by that Consumer's next Receive once the run is delivered, or
// before it waits, and by its ReceiveBatch, ReceiveEach and Close.
func (h *Handle) Free(r Record) error {
	// The common case: the next record to be freed of the window
	// Receive took ahead, whose bits are set with the window's (see
	// ahead). A per-record call: outside in and out (see Buffer.Close).
	if w := h.sh.win; w != nil && w.freed < w.next && !h.buf.isClosed.Load() {
		if ok, err := w.free(r); ok {
			return err
		}
	}
	return h.free(r)
}

// free is Free's general path.
func (h *Handle) free(r Record) error {
	// The common case in one pass: a record this process holds, freed
	// through the handle's slab cache (which remembers the slab whose
	// header it checked last). A per-record call: outside in and out
	// (see Buffer.Close); Buffer.Free has its own.
	if h.buf.isClosed.Load() {
		return h.buf.Free(r)
	}
	var err error
	off, b, sh := r.off(), r.b, h.sh
	if s := &sh.slots[sh.cur]; sh.taken && s.Off() == off {
		// The record take returned last: its slot leads to its trailer
		// (heldFast's checks, less the bounds that the located slot
		// already implies) if the view is of a record of the slot's
		// size, and to its key, which a Record of an earlier record at
		// the same place (before its slab started over) does not carry.
		// The record may have been freed since by another path (FreeBatch,
		// Buffer.Free), and a new one made at its place: the header's
		// check, which is the key of the record there now, must still be
		// the kept one, else a stale Record would pass for the new record.
		rs := sh.rs
		t := &rs.trailers[(uint64(off)+uint64(s.Size()))/trailerSize-1]
		key := sh.key
		if allocSize(len(b)) != s.Size() || !rs.at(off, b) || tagOf(key) != r.tag() || rs.headerCheck(off) != key ||
			t.Magic != liveMagic(r.hand()) || t.Len != uint32(len(b)) || t.holder().Load() != uint64(rs.self) {
			return h.buf.Free(r)
		}
		t.Magic = freedMark(key) // as records.free does
		sh.taken = false
		err = sh.h.FreeSlot(s)
	} else if t, key := sh.rs.heldFast(r); t != nil {
		t.Magic = freedMark(key) // as records.free does
		err = sh.h.Free(off)
	} else {
		return h.buf.Free(r)
	}
	if err != nil {
		return fmt.Errorf("ipc: free: %w", err)
	}
	return nil
}

// Free gives a record back (see Handle.Free); safe from any goroutine.
func (b *Buffer) Free(r Record) error {
	if !b.in() {
		return b.closedErr("free")
	}
	defer b.out()
	if r.b == nil {
		return fmt.Errorf("ipc: free: zero record: %w", ErrNotAllocated)
	}
	if err := b.recs.free(r); err != nil {
		return fmt.Errorf("ipc: free: %w", err)
	}
	return nil
}

// Close closes the handle's channel ends and retires its slabs (their
// memory goes back to the heap once every record in them is freed).
func (h *Handle) Close() error {
	if !h.in() {
		return nil
	}
	defer h.out()
	// The handle leaves the buffer's set after it is closed: a
	// Buffer.Close meanwhile finds it there and waits for this call (its
	// count) before it unmaps, instead of unmapping under it.
	err := h.close()
	h.buf.mu.Lock()
	delete(h.buf.handles, h)
	h.buf.mu.Unlock()
	return err
}

func (h *Handle) close() error {
	h.mu.Lock()
	if h.closed {
		h.mu.Unlock()
		return nil
	}
	h.closed = true
	h.isClosed.Store(true)
	ends := make([]end, 0, len(h.ends))
	for e := range h.ends {
		ends = append(ends, e)
	}
	h.ends = nil
	h.mu.Unlock()
	var all []error
	for _, e := range ends {
		all = append(all, e.close())
	}
	all = append(all, h.sh.close())
	return errors.Join(all...)
}

// interrupter is an end whose waits Buffer.Close can cut short: it wakes
// the threads parked in them, which then find the region closing.
type interrupter interface{ interrupt() }

func (p *Producer) interrupt()      { p.p.Interrupt() }
func (c *Consumer) interrupt()      { c.c.Interrupt() }
func (p *MPSCProducer) interrupt()  { p.p.Interrupt() }
func (c *MPSCConsumer) interrupt()  { c.c.Interrupt() }
func (s *Select) interrupt()        { s.wake.Interrupt() }
func (w *StreamWriter) interrupt()  { w.w.Interrupt() }
func (r *StreamReader) interrupt()  { r.r.Interrupt() }
func (r *SpeculoReader) interrupt() { r.r.Interrupt() }

// interrupt wakes the handle's ends' waiters (Buffer.Close, while it
// waits for the handle's calls to end). The ends' channel objects do not
// change after they are opened; a doorbell a Select gave back is still
// the buffer's, and waking one is harmless.
func (h *Handle) interrupt() {
	h.mu.Lock()
	defer h.mu.Unlock()
	for e := range h.ends {
		if i, ok := e.(interrupter); ok {
			i.interrupt()
		}
	}
}

func (h *Handle) addEnd(e end) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closed {
		return fmt.Errorf("ipc: handle: %w", ErrClosed)
	}
	h.ends[e] = struct{}{}
	return nil
}

func (h *Handle) dropEnd(e end) {
	h.mu.Lock()
	defer h.mu.Unlock()
	delete(h.ends, e)
}

func (h *Handle) chanConfig(opts []ChannelOption) (chanConfig, error) {
	cfg := chanConfig{}
	for _, o := range opts {
		if err := o(&cfg); err != nil {
			return cfg, err
		}
	}
	return cfg, nil
}

// attachRing opens record channel id, creating it if needed, and claims
// an end with claim (see attachChannel).
func (h *Handle) attachRing(id ChannelID, cfg chanConfig, claim func(*channel.Entry, *channel.Ring) error) (*channel.Entry, error) {
	capacity := cfg.capacity
	if capacity == 0 {
		capacity = DefaultCapacity
	}
	spec := channel.Spec{
		Type:    channel.TypeRecord,
		Name:    cfg.name,
		Size:    capacity,
		Control: channel.RecordControlSize(capacity),
		Init:    func(_ mem.Off, b []byte) error { return channel.InitRecord(b, capacity) },
	}
	return attachEnd(h.buf, id, spec, cfg.capacity, func(en *channel.Entry) (*channel.Ring, error) {
		return channel.OpenRing(h.buf.region, en, channel.WaitOptions{Spin: cfg.spin, CheckInterval: h.buf.cfg.checkInterval})
	}, claim)
}

// Producer opens the producer end of record channel id, creating the
// channel if it does not exist (RaftLib's add_spsc_lf_record_channel).
// ErrBusy: a live process holds the producer end (a dead one's is taken
// over); ErrWrongType: id is a channel of another type.
func (h *Handle) Producer(id ChannelID, opts ...ChannelOption) (*Producer, error) {
	if !h.in() {
		return nil, h.closedErr("producer")
	}
	defer h.out()
	h.enter()
	defer h.leave()
	cfg, err := h.chanConfig(opts)
	if err != nil {
		return nil, fmt.Errorf("ipc: producer %d: %w", id, err)
	}
	if err := h.check("producer"); err != nil {
		return nil, err
	}
	var p *channel.RecordProducer
	en, err := h.attachRing(id, cfg, claimUnder(h.buf, (*channel.Ring).AttachProducer, &p))
	if err != nil {
		return nil, fmt.Errorf("ipc: producer %d: %w", id, err)
	}
	pr := &Producer{h: h, en: en, p: p, id: id}
	if err := h.addEnd(pr); err != nil {
		p.Close()
		return nil, err
	}
	return pr, nil
}

// Consumer opens the consumer end of record channel id, creating the
// channel if it does not exist.
func (h *Handle) Consumer(id ChannelID, opts ...ChannelOption) (*Consumer, error) {
	if !h.in() {
		return nil, h.closedErr("consumer")
	}
	defer h.out()
	h.enter()
	defer h.leave()
	cfg, err := h.chanConfig(opts)
	if err != nil {
		return nil, fmt.Errorf("ipc: consumer %d: %w", id, err)
	}
	if err := h.check("consumer"); err != nil {
		return nil, err
	}
	var c *channel.RecordConsumer
	en, err := h.attachRing(id, cfg, claimUnder(h.buf, (*channel.Ring).AttachConsumer, &c))
	if err != nil {
		return nil, fmt.Errorf("ipc: consumer %d: %w", id, err)
	}
	co := &Consumer{recvEnd: recvEnd{id: id, kind: "channel"}, h: h, en: en, c: c, ahead: newAhead(h.sh, c)}
	if err := h.addEnd(co); err != nil {
		c.Close()
		return nil, err
	}
	return co, nil
}

// RemoveChannel removes record channel id for everyone, freeing the
// records still queued in it. Its ends must be closed (ErrBusy if a live
// process holds one).
func (h *Handle) RemoveChannel(ctx context.Context, id ChannelID) error {
	if !h.in() {
		return h.closedErr("remove channel")
	}
	defer h.out()
	return h.removeChannel(ctx, id, channel.TypeRecord, func(en *channel.Entry) (bool, func() error, error) {
		ring, err := channel.OpenRing(h.buf.region, en, channel.WaitOptions{})
		if err != nil {
			return false, nil, err
		}
		return ring.Idle(), func() error { return h.buf.drainRecords(ring) }, nil
	})
}
