package ipc

import (
	"context"
	"errors"
	"fmt"
	"io"
	"unsafe"

	"github.com/heapipc/ipc/channel"
	"github.com/heapipc/ipc/internal/mem"
	"github.com/heapipc/ipc/slab"
)

// Producer is the sending end of a record channel. It belongs to the
// Handle that opened it and, like it, to one goroutine at a time.
type Producer struct {
	h      *Handle
	en     *channel.Entry
	p      *channel.RecordProducer
	id     ChannelID
	batch  []uint64 // SendBatch's slots
	each   eachScratch
	closed bool
}

// ID is the channel's id.
func (p *Producer) ID() ChannelID { return p.id }

func (p *Producer) wrap(op string, err error) error {
	if err == nil || err == ErrWouldBlock {
		return err
	}
	return fmt.Errorf("ipc: %s on channel %d: %w", op, p.id, err)
}

// slot validates r (this process must hold it: allocated, or received and
// not sent on; not queued) and returns its ring slot and its trailer.
func (p *Producer) slot(r Record) (uint64, *trailer, error) {
	if r.b == nil {
		return 0, nil, fmt.Errorf("zero record: %w", ErrNotAllocated)
	}
	return p.h.buf.recs.slot(r)
}

// push is the common case of a send, in one pass: a record this process
// holds, on a ring with room by the cached Head. false: nothing was
// queued, and the general path says why (or waits).
func (p *Producer) push(r Record) bool {
	if p.closed {
		return false
	}
	t, _ := p.h.buf.recs.heldFast(r)
	if t == nil {
		return false
	}
	s, ok := channel.PackSlot(r.off(), len(r.b))
	q, l := sendMagics(r.hand())
	return ok && pushMarked(p.p, t, s, q, l)
}

// pushMarked pushes slot s, the record whose trailer is t, marking the
// record queued (queued: its magic queued with the next hand, sendMagics)
// before the slot is published, and live again (live) if it is not.
func pushMarked(p *channel.RecordProducer, t *trailer, s uint64, queued, live uint32) bool {
	t.Magic = queued
	if p.Push(s) {
		return true
	}
	t.Magic = live
	return false
}

// sendMarked is send, the record of hand h whose trailer is t marked
// queued with the next hand while send runs and live again if send fails.
func sendMarked(t *trailer, h uint32, send func() error) error {
	q, l := sendMagics(h)
	t.Magic = q
	err := send()
	if err != nil {
		t.Magic = l
	}
	return err
}

// TrySend queues r without waiting: ErrWouldBlock if the ring is full.
// After a successful send the record belongs to the consumer: do not touch
// or free it. Sending a record that was freed is an error (ErrDoubleFree
// or ErrNotAllocated, also once another record has taken its place) and
// sends nothing; so is sending or freeing one that is queued in a channel
// (ErrNotAllocated). A send that fails leaves the record the caller's.
func (p *Producer) TrySend(r Record) error {
	if !p.h.in() {
		return p.h.closedErr("try send")
	}
	defer p.h.out()
	return p.wrap("send", p.send1(r))
}

// send1 is TrySend with the channel's errors unwrapped.
func (p *Producer) send1(r Record) error {
	if p.push(r) {
		return nil
	}
	if p.closed {
		return ErrClosed
	}
	s, t, err := p.slot(r)
	if err != nil {
		return err
	}
	return sendMarked(t, r.hand(), func() error { return p.p.TrySend(s) })
}

// Send queues r, waiting while the ring is full: spinning briefly, then
// parked on a futex. It returns ErrPeerDead if the consumer dies,
// ErrDestroyed if the buffer is destroyed, or ctx's error. A consumer that
// closed its end is not dead: the channel keeps its records for the next
// consumer, and Send waits for room as long as ctx lets it.
func (p *Producer) Send(ctx context.Context, r Record) error {
	h := p.h
	// push, written out (a call less on the producer's path), outside
	// in and out: see Buffer.Close.
	if !h.buf.isClosed.Load() && !p.closed {
		if t, _ := h.buf.recs.heldFast(r); t != nil {
			q, l := sendMagics(r.hand())
			if s, ok := channel.PackSlot(r.off(), len(r.b)); ok && pushMarked(p.p, t, s, q, l) {
				return nil
			}
		}
	}
	if !h.in() {
		return h.closedErr("send")
	}
	defer h.out()
	if p.closed {
		return p.wrap("send", ErrClosed)
	}
	s, t, err := p.slot(r)
	if err != nil {
		return p.wrap("send", err)
	}
	return p.wrap("send", sendMarked(t, r.hand(), func() error { return p.p.Send(ctx, s) }))
}

// SendBatch queues all of rs in order, publishing as many as fit at a time
// and waiting for room as Send does. It returns how many were queued
// (those belong to the consumer now) and an error if not all were. A
// record that is not this process's to send fails the batch before any is
// queued.
func (p *Producer) SendBatch(ctx context.Context, rs []Record) (int, error) {
	if !p.h.in() {
		return 0, p.h.closedErr("send batch")
	}
	defer p.h.out()
	if p.closed {
		return 0, p.wrap("send batch", ErrClosed)
	}
	if cap(p.batch) < len(rs) {
		p.batch = make([]uint64, len(rs))
	}
	slots := p.batch[:len(rs)]
	recs := p.h.buf.recs
	// Each record is marked queued as it passes (slots, slot), so that
	// one that is in the batch twice fails the batch.
	for i := recs.slots(rs, slots); i < len(rs); {
		// A record the quick check leaves to the full one; the quick
		// check goes on after it.
		s, t, err := p.slot(rs[i])
		if err != nil {
			recs.unsent(rs[:i])
			return 0, p.wrap("send batch", fmt.Errorf("record %d: %w", i, err))
		}
		t.Magic, _ = sendMagics(rs[i].hand())
		slots[i] = s
		i++
		i += recs.slots(rs[i:], slots[i:])
	}
	sent := 0
	for sent < len(slots) {
		n, err := p.p.TrySendBatch(slots[sent:])
		sent += n
		if err == nil && sent < len(slots) && n == 0 {
			err = p.p.WaitRoom(ctx)
		}
		if err != nil {
			recs.unsent(rs[sent:])
			return sent, p.wrap("send batch", err)
		}
	}
	return sent, nil
}

// Close closes the producer end: the consumer receives what is queued,
// then io.EOF. A channel whose both ends have closed and that is drained
// is removed from the buffer.
func (p *Producer) Close() error {
	if !p.h.in() {
		return nil
	}
	defer p.h.out()
	if p.closed {
		return nil
	}
	p.h.dropEnd(p)
	return p.close()
}

func (p *Producer) close() error {
	if p.closed {
		return nil
	}
	p.closed = true
	return p.wrap("close", p.h.buf.closeEnd(p.en, func() bool { p.p.Close(); return p.p.Removable() }, nil))
}

// Consumer is the receiving end of a record channel. It belongs to the
// Handle that opened it and, like it, to one goroutine at a time.
type Consumer struct {
	recvEnd
	h     *Handle
	en    *channel.Entry
	c     *channel.RecordConsumer
	batch []uint64
	each  eachScratch
	ahead *ahead // records taken ahead: Receive delivers them first
}

// ahead is what a Consumer took ahead of Receive: when a run of records
// is queued already (aheadMin or more that the consumer knows of, without
// reading the producer's index again), Receive takes up to aheadMax of
// them at once, as ReceiveBatch does (their runs located together), and
// delivers them one per call. The records stay queued (the head does not
// move) until each is delivered: one not yet delivered when the consumer
// closes is still the channel's, and ReceiveBatch, which takes from the
// head, drops them and takes them again.
//
// The window's records are freed together too. Handle.Free of the next
// record of the window to be freed, in delivery order (recs[freed]),
// writes its freed mark and leaves its bits for later: once the whole
// window is freed so, its runs are freed at once (slab.Pool.FreeRuns,
// one CAS per bitmap word instead of one per record). A record freed out
// of that order (one kept, or sent on) is freed on its own, and the
// window's records freed in order before it are freed by their offsets
// when the window is dropped: at the next Receive once the window is
// delivered (or before it waits), at ReceiveBatch, ReceiveEach and
// Close. Until then they are counted in use (Stats), as a free under way
// is: marked freed by a live holder (see trailer), which Recover leaves
// to it, and completes if it dies.
type ahead struct {
	_ mem.Pad
	// What the hot paths reach through: the buffer's trailers, the
	// handle's slab cache, the channel's consumer end, this process.
	ts   []trailer
	sh   *slabHandle
	cc   *channel.RecordConsumer
	self uint64
	// recs[next:n] are to be delivered; recs[:freed] were freed in
	// order (their bits not set yet); runs hold recs[:whole].
	next, n, freed, whole int
	// skip: records to deliver one by one before taking ahead again,
	// after a window that failed the checks (a large record, say), so
	// that the window is not checked again at every call.
	skip   int
	runs   []slab.Run // on runBuf
	recs   [aheadMax]Record
	offs   [aheadMax]mem.Off
	sizes  [aheadMax]uint32
	keys   [aheadMax]uint32
	raw    [aheadMax]uint64
	runBuf [aheadMax]slab.Run
	_      mem.Pad
}

// aheadMax is a power of two. A window of 64 rather than 16 records
// spreads its fixed costs (locating its first record, freeing its runs)
// wider: the consumer alone 22.5 -> 20.3 ns a record, and two goroutines
// 43.6 -> 40.6 ns on a slow day (the heapipc side of
// BenchmarkRecordInProcess); the records a handle holds back to free
// with their window are at most 64, and at most aheadBytes.
const (
	aheadMin   = 4
	aheadMax   = 64
	aheadBytes = 64 << 10 // at most this much in records (header and trailer each counted)
)

// quick is Receive's and TryReceive's common case, without the error: a
// record taken ahead, or the next one if it passes the cheap checks
// (slabHandle.take). ok false means "take the general path" (nothing
// taken ahead is left then), which also drops a delivered window whose
// records were not all freed in order (dropAhead).
func (c *Consumer) quick() (Record, bool) {
	if c.closed {
		return Record{}, false
	}
	a := c.ahead
	if a.next == a.n {
		if a.freed != 0 {
			return Record{}, false
		}
		if a.skip == 0 && a.cc.Known() >= aheadMin {
			c.takeAhead()
		}
	}
	if i := a.next; i < a.n {
		i &= aheadMax - 1
		// Changed since it was taken ahead (its trailer damaged, or
		// the record freed through a view by another process: nothing
		// of this process's frees a queued record): the rest of the
		// window goes one by one, through take, which reports it.
		// Else it is the consumer's now: live again.
		t := &a.ts[(uint64(a.offs[i])+uint64(a.sizes[i]))/trailerSize-1]
		if !takeable(t.Magic) {
			a.skip = a.n - i
			a.n = i
			return Record{}, false
		}
		t.Magic = liveMagic(a.recs[i].hand())
		a.next++
		sh := a.sh
		sh.win, sh.taken = a, false
		a.cc.Advance(1)
		return a.recs[i], true
	}
	if s, ok := c.c.Peek(); ok {
		if r, ok := c.h.sh.take(s); ok {
			c.c.Advance(1)
			a.skip = max(a.skip-1, 0)
			return r, true
		}
	}
	return Record{}, false
}

// takeAhead takes up to aheadMax of the records the consumer knows are
// queued, if they all pass ReceiveBatch's checks. The window before has
// no record freed in order and not freed yet (quick sees to it).
func (c *Consumer) takeAhead() {
	a := c.ahead
	a.next, a.n, a.whole = 0, 0, 0
	k := a.cc.PeekKnown(a.raw[:])
	// At most aheadBytes of records: what a handle holds back is bounded
	// in bytes too (a slot without the length counts as too long; such a
	// record fails the checks anyway).
	sum := uint64(0)
	for i, s := range a.raw[:k] {
		if sum += min(s>>channel.SlotOffBits, aheadBytes) + 2*trailerSize; sum > aheadBytes {
			k = i
			break
		}
	}
	if k < aheadMin {
		return
	}
	runs, ok := a.sh.takeRecords(a.raw[:k], a.recs[:k], a.offs[:k], a.sizes[:k], a.keys[:k], a.runBuf[:0], true)
	a.runs = runs
	if !ok {
		clear(a.recs[:k])
		a.skip = k
		return
	}
	a.n, a.whole = k, k
}

// free is Handle.Free of the record r, the next of window a to be
// freed in order (recs[freed], r's very ref and view), if it is still
// the consumer's as delivered (its header's check the one found when it
// was taken, its trailer live of r's hand, of its length and held
// here): it writes the freed mark and, if that completes the window,
// frees its records' bits (freeWindow). ok false means "free it as
// Handle.Free does otherwise" (nothing changed).
func (a *ahead) free(r Record) (ok bool, err error) {
	i := a.freed & (aheadMax - 1)
	q := &a.recs[i]
	if q.ref != r.ref || unsafe.SliceData(q.b) != unsafe.SliceData(r.b) || len(q.b) != len(r.b) {
		return false, nil
	}
	off, key := uint64(a.offs[i]), a.keys[i]
	t := &a.ts[(off+uint64(a.sizes[i]))/trailerSize-1]
	if a.ts[off/trailerSize-1].Magic != key || // headerCheck
		t.Magic != liveMagic(r.hand()) || t.Len != uint32(len(r.b)) || t.holder().Load() != a.self {
		return false, nil
	}
	t.Magic = freedMark(key)
	if a.freed++; a.freed == a.n {
		if err := a.sh.rs.freeWindow(a); err != nil {
			return true, fmt.Errorf("ipc: free: the records received with it: %w", err)
		}
	}
	return true, nil
}

// freeWindow sets the bits of the records of window a freed in order
// (recs[:freed]), by the window's runs if they are all of it, and
// forgets the window: what was not delivered of it is still queued.
func (rs *records) freeWindow(a *ahead) error {
	k := a.freed
	a.next, a.n, a.freed = 0, 0, 0
	if k == 0 {
		return nil
	}
	if k == a.whole {
		a.whole = 0
		return rs.pool.FreeRuns(a.runs, a.offs[:k])
	}
	a.whole = 0
	return rs.pool.FreeBatch(a.offs[:k])
}

// dropAhead forgets the records taken ahead (those not delivered are
// still queued) after it frees those freed in order (freeWindow).
func (c *Consumer) dropAhead() error {
	if err := c.h.sh.rs.freeWindow(c.ahead); err != nil {
		return fmt.Errorf("freeing records received earlier: %w", err)
	}
	return nil
}

func newAhead(sh *slabHandle, cc *channel.RecordConsumer) *ahead {
	return &ahead{ts: sh.rs.trailers, sh: sh, cc: cc, self: uint64(sh.rs.self)}
}

// recvEnd is what the receiving ends (Consumer, MPSCConsumer) share: the
// id and the closed flag.
type recvEnd struct {
	id     ChannelID
	kind   string // "channel" or "mpsc channel", for errors
	closed bool
	sel    *Select // the Select the end is in (its doorbell is the end's), if any
}

// ID is the channel's id.
func (e *recvEnd) ID() ChannelID { return e.id }

func (e *recvEnd) wrap(op string, err error) error {
	if err == nil || err == io.EOF || err == ErrWouldBlock {
		return err
	}
	return fmt.Errorf("ipc: %s on %s %d: %w", op, e.kind, e.id, err)
}

// TryReceive takes the next record without waiting: ErrWouldBlock if none
// is queued, io.EOF if none is and the producer has closed. The record is
// the caller's: free it, or send it on (zero-copy).
func (c *Consumer) TryReceive() (Record, error) {
	if !c.h.in() {
		return Record{}, c.h.closedErr("try receive")
	}
	defer c.h.out()
	if r, ok := c.quick(); ok {
		return r, nil
	}
	r, err := c.receive1()
	return r, c.wrap("receive", err)
}

// receive1 is TryReceive's general path, after quick, with the channel's
// errors unwrapped.
func (c *Consumer) receive1() (Record, error) {
	if c.closed {
		return Record{}, ErrClosed
	}
	if a := c.ahead; a.next == a.n && a.n != 0 {
		// Delivered, and not all freed in order (quick).
		if err := c.dropAhead(); err != nil {
			return Record{}, err
		}
	}
	s, err := c.c.Next()
	if err != nil {
		return Record{}, err
	}
	// This process becomes the record's holder before the producer can
	// learn that it was taken.
	r, err := c.h.buf.recs.take(s)
	c.c.Advance(1)
	c.ahead.skip = max(c.ahead.skip-1, 0)
	return r, err
}

// Receive takes the next record, waiting while none is queued: spinning
// briefly, then parked on a futex. It returns io.EOF once the producer has
// closed and everything is received, ErrPeerDead if the producer died
// (after what it queued), ErrDestroyed, or ctx's error.
func (c *Consumer) Receive(ctx context.Context) (Record, error) {
	// The common case, outside in and out (see Buffer.Close).
	if !c.h.buf.isClosed.Load() {
		if r, ok := c.quick(); ok {
			return r, nil
		}
	}
	return c.receive(ctx)
}

// receive is Receive's general path.
func (c *Consumer) receive(ctx context.Context) (Record, error) {
	h := c.h
	if !h.in() {
		return Record{}, h.closedErr("receive")
	}
	defer h.out()
	for {
		if r, ok := c.quick(); ok {
			return r, nil
		}
		r, err := c.receive1()
		if err != ErrWouldBlock {
			return r, c.wrap("receive", err)
		}
		if err := c.c.WaitData(ctx); err != nil {
			return Record{}, c.wrap("receive", err)
		}
	}
}

// ReceiveBatch waits as Receive does until at least one record is queued,
// then takes up to len(rs) of them at once and returns how many. A queued
// record that fails its check is taken off the channel and reported in
// the error (the others are returned).
func (c *Consumer) ReceiveBatch(ctx context.Context, rs []Record) (int, error) {
	if !c.h.in() {
		return 0, c.h.closedErr("receive batch")
	}
	defer c.h.out()
	if c.closed {
		return 0, c.wrap("receive batch", ErrClosed)
	}
	if len(rs) == 0 {
		return 0, nil
	}
	if cap(c.batch) < len(rs) {
		c.batch = make([]uint64, len(rs))
	}
	slots := c.batch[:len(rs)]
	// Records taken ahead and not delivered are still at the head:
	// taken again below.
	if err := c.dropAhead(); err != nil {
		return 0, c.wrap("receive batch", err)
	}
	for {
		n, err := c.c.PeekBatch(slots)
		if err != nil {
			return 0, c.wrap("receive batch", err)
		}
		if n > 0 {
			// The common case: every record passes the cheap checks.
			if c.h.sh.takeBatch(slots[:n], rs[:n]) {
				c.c.Advance(n)
				return n, nil
			}
			// Not all pass: what takeBatch wrote past the records
			// taken below is cleared.
			clear(rs[:n])
			var all []error
			k := 0
			for _, s := range slots[:n] {
				r, err := c.h.buf.recs.take(s)
				if err != nil {
					all = append(all, err)
					continue
				}
				rs[k] = r
				k++
			}
			c.c.Advance(n)
			return k, c.wrap("receive batch", errors.Join(all...))
		}
		if err := c.c.WaitData(ctx); err != nil {
			return 0, c.wrap("receive batch", err)
		}
	}
}

// Close closes the consumer end. Records still queued stay in the channel
// for a later consumer; a channel whose both ends have closed and that is
// drained is removed from the buffer.
func (c *Consumer) Close() error {
	if !c.h.in() {
		return nil
	}
	defer c.h.out()
	if c.closed {
		return nil
	}
	c.h.dropEnd(c)
	return c.close()
}

func (c *Consumer) close() error {
	if c.closed {
		return nil
	}
	c.closed = true
	ferr := c.dropAhead() // what was not delivered is still queued
	return c.wrap("close", errors.Join(ferr, c.h.buf.closeEnd(c.en, func() bool { c.c.Close(); return c.c.Removable() }, nil)))
}
