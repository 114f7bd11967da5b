package channel

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"runtime"
	"structs"
	"sync/atomic"
	"time"

	"github.com/heapipc/ipc/backend"
	"github.com/heapipc/ipc/internal/errs"
	"github.com/heapipc/ipc/internal/mem"
	"github.com/heapipc/ipc/internal/sys"
)

// recordCB is the control block of a record channel, followed by the ring
// of Cap slots (8 bytes each: a record's offset and length, see PackSlot). Producer-written and
// consumer-written words sit on separate 128-byte lines.
//
//	0    immutable: magic, capacity            (creator, before publishing)
//	128  Tail, Producer, ProdClosed            (producer end)
//	256  Head, Consumer, ConsClosed, Doorbell  (consumer end)
//	384  ConsWaiting, ProdWaiting              (waiting: set by the waiter,
//	                                            see waitSoon)
//	512  ring [Cap]uint64                      (slots: producer writes
//	                                            [Head+Cap..Tail), consumer
//	                                            reads [Head..Tail))
type recordCB struct {
	_           structs.HostLayout
	Magic       uint64
	Cap         uint64
	_           [112]byte
	Tail        atomic.Uint64 // next sequence the producer writes
	Producer    atomic.Uint64 // sys.Identity of the producer end, 0: none
	ProdClosed  atomic.Uint32 // 1: the producer closed; EOF once drained
	_           uint32
	ProdSince   atomic.Uint64 // 1 + the Tail when the producer end attached; 0 once it closed (see SentHere)
	_           [96]byte
	Head        atomic.Uint64 // next sequence the consumer reads
	Consumer    atomic.Uint64 // sys.Identity of the consumer end, 0: none
	ConsClosed  atomic.Uint32 // 1: the consumer closed
	_           uint32
	Doorbell    atomic.Uint64 // region offset of the consumer's doorbell word, 0: none
	_           [96]byte
	ConsWaiting atomic.Uint32 // waitSoon, waitSelf, waitLocal, waitBell: the consumer waits (see waitSoon)
	ProdWaiting atomic.Uint32 // waitSoon, waitSelf, waitLocal: the producer waits
	_           [120]byte
}

const recordCBSize = 512

var recordMagic = binary.LittleEndian.Uint64([]byte("HIPCRING"))

// A ring slot holds a record's offset in its low SlotOffBits bits (every
// offset of a segment fits: segments are smaller than 2^46 bytes) and, in
// the bits above, the record's payload length if it is below SlotLenNone:
// the consumer then finds the record's trailer without reading the
// record's slab (see package ipc). SlotLenNone means "not recorded".
const (
	SlotOffBits = 46
	SlotLenNone = 1<<(64-SlotOffBits) - 1
)

// PackSlot makes the slot of the record at off with an n-byte payload
// (n < 0: length not recorded). ok is false if off does not fit.
func PackSlot(off mem.Off, n int) (slot uint64, ok bool) {
	l := uint64(SlotLenNone)
	if n >= 0 && n < SlotLenNone {
		l = uint64(n)
	}
	return uint64(off) | l<<SlotOffBits, uint64(off)>>SlotOffBits == 0
}

// SlotOff is the offset in a slot.
func SlotOff(slot uint64) mem.Off { return mem.Off(slot & (1<<SlotOffBits - 1)) }

// SlotLen is the payload length in a slot, if it is recorded.
func SlotLen(slot uint64) (n int, ok bool) {
	l := slot >> SlotOffBits
	return int(l), l != SlotLenNone
}

// RecordControlSize is the control block size of a ring of capacity n.
func RecordControlSize(n uint64) uint64 { return recordCBSize + 8*n }

// InitRecord lays out a record channel control block of capacity n.
func InitRecord(b []byte, n uint64) error {
	cb, err := mem.At[recordCB](b, 0)
	if err != nil {
		return err
	}
	cb.Cap = n
	cb.Magic = recordMagic
	return nil
}

// Ring is one end's view of a record channel.
type Ring struct {
	buf    []byte
	cb     *recordCB
	ring   []uint64
	mask   uint64
	cbOff  mem.Off
	region *backend.Region
	opts   WaitOptions
}

// WaitOptions tune blocking calls.
type WaitOptions struct {
	// Spin is how long a blocking call keeps re-checking before it
	// parks (negative: park at once). A peer running on another core
	// answers within microseconds, far cheaper than a futex sleep and
	// wake-up; a peer that is descheduled costs at most this much CPU.
	// A record channel end that spins less than 5 µs (announceLead)
	// makes its peer fence every publication (see publish).
	Spin time.Duration
	// CheckInterval bounds each park; after it the waiter checks the
	// peer's liveness and the buffer's state.
	CheckInterval time.Duration
}

func (o WaitOptions) norm() WaitOptions {
	if o.Spin == 0 {
		o.Spin = DefaultSpin
	}
	if o.CheckInterval <= 0 {
		o.CheckInterval = 50 * time.Millisecond
	}
	return o
}

// DefaultSpin is the default spin time of blocking calls.
const DefaultSpin = 20 * time.Microsecond

// testBeforePark, if set (by tests), runs when a waiter has armed its
// waiting word and found nothing, just before it parks.
var testBeforePark func()

// announceLead is how long before its last look at the peer's index a
// waiter announces that it may park (waitSoon): see publish. An end whose
// spin is shorter is announced all the time it is open (its idle value
// is waitSoon, not 0), and its peer fences every publication.
const announceLead = 5 * time.Microsecond

// idleValue is the waiting word of an end that is not waiting: 0, or
// waitSoon for an end that spins less than announceLead (announced for as
// long as it is open).
func idleValue(opts WaitOptions) uint32 {
	if opts.Spin < announceLead {
		return waitSoon
	}
	return 0
}

// SpinAnnounced is a waiter's spin: done polled for d, with announce
// called announceLead before its end (the waiter's word, or a Select's
// ends, announced: see publish). A spin shorter than the lead announces
// at once and is stretched, if need be, to end a lead after since, when
// the announcement began (an end that spins less than the lead is
// announced from its attach on: idleValue). It reports whether done
// returned true. The caller puts the words back to idle when it stops
// waiting.
func SpinAnnounced(d time.Duration, since time.Time, announce func(), done func() bool) bool {
	if d >= announceLead {
		if spin(d-announceLead, done) {
			return true
		}
		announce()
		return spin(announceLead, done)
	}
	announce()
	return spin(max(d, announceLead-time.Since(since)), done)
}

// announceWord is the announce of SpinAnnounced for an end's waiting word.
func announceWord(w *atomic.Uint32) func() { return func() { settle(w, waitSoon) } }

// settle puts a waiting word back to the end's idle value, with no store
// if it is idle already (the peer reads the word at every publication:
// a store takes its cache line away).
func settle(w *atomic.Uint32, idle uint32) {
	if w.Load() != idle {
		w.Store(idle)
	}
}

// notifyRing is notify for a record channel, whose waiters announce
// themselves before they park: a parked waiter is woken, and its word
// left announced (waitSoon: publishers go on fencing until the waiter,
// awake, puts it back to idle); an announced waiter that has not parked
// needs nothing more (the caller fenced: it will see the publication).
func (r *Ring) notifyRing(waiting *atomic.Uint32) {
	switch v := waiting.Load(); v {
	case waitSelf, waitLocal:
		r.wakeParked(waiting, 1)
	case waitBell:
		if waiting.CompareAndSwap(v, waitSoon) {
			ringBell(r.buf, r.cb.Doorbell.Load())
		}
	}
}

// wakeParked wakes up to n waiters (n <= 0: all) parked on a waiting
// word itself (waitSelf), or the waiter of this process parked in the
// scheduler (waitLocal), leaving the word announced (waitSoon) for the
// woken waiter to settle; a word that says anything else is left alone.
func (r *Ring) wakeParked(w *atomic.Uint32, n int) {
	switch w.Load() {
	case waitSelf:
		if w.CompareAndSwap(waitSelf, waitSoon) {
			backend.Wake(w, n)
		}
	case waitLocal:
		if w.CompareAndSwap(waitLocal, waitSoon) {
			wakeLocal(r.wordKey(w))
		}
	}
}

// armWord arms a waiting word w for a park and returns what it stored:
// waitLocal if the peer end (its owner word, peer) is held by this
// process, checked again after the store (see local.go), else waitSelf.
func armWord(w *atomic.Uint32, peer *atomic.Uint64, self sys.Identity) uint32 {
	if peer.Load() == uint64(self) {
		w.Store(waitLocal)
		if peer.Load() == uint64(self) {
			return waitLocal
		}
	}
	w.Store(waitSelf)
	return waitSelf
}

// spin calls done until it returns true or d has passed, and reports
// whether it returned true. Every 64 calls it reads the clock and yields:
// to other goroutines (a peer goroutine waiting for a P when there are
// more busy goroutines than GOMAXPROCS) and to other threads (a peer
// process waiting for a core on a loaded machine), so that a spinner
// never keeps its peer from running.
func spin(d time.Duration, done func() bool) bool {
	if d <= 0 {
		return false
	}
	var deadline time.Time
	for i := 0; ; i++ {
		if done() {
			return true
		}
		if i&63 == 63 {
			now := time.Now()
			if deadline.IsZero() {
				deadline = now.Add(d)
			} else if now.After(deadline) {
				return false
			}
			runtime.Gosched()
			sys.Yield()
		}
	}
}

// relax is a short pause between two polls of a word that the peer
// writes (Go has no pause instruction): a few dozen dependent operations.
//
//go:noinline
func relax(x uint64) uint64 {
	for range 48 {
		x = x*0x9e3779b97f4a7c15 + 1
	}
	return x
}

// OpenRing validates a record channel's control block.
func OpenRing(region *backend.Region, en *Entry, opts WaitOptions) (*Ring, error) {
	b := region.Bytes()
	cb, err := mem.At[recordCB](b, en.Control)
	if err != nil {
		return nil, err
	}
	if cb.Magic != recordMagic {
		return nil, errs.Corrupt("record channel magic", uint64(en.Control), "magic %#x", cb.Magic)
	}
	n := cb.Cap
	if n == 0 || n&(n-1) != 0 || n != en.Size || n > 1<<40 {
		return nil, errs.Corrupt("record channel capacity", uint64(en.Control)+8, "capacity %d (registry says %d)", n, en.Size)
	}
	ring, err := mem.SliceN[uint64](b, en.Control+recordCBSize, n)
	if err != nil {
		return nil, err
	}
	return &Ring{buf: b, cb: cb, ring: ring, mask: n - 1, cbOff: en.Control, region: region, opts: opts.norm()}, nil
}

// Cap is the ring's capacity.
func (r *Ring) Cap() int { return len(r.ring) }

// Len is the number of records queued (a snapshot): 0 if the Head read
// is past the Tail read before it (the consumer took records in
// between) or the words are damaged (Check reports that).
func (r *Ring) Len() int {
	t := r.cb.Tail.Load()
	n := t - r.cb.Head.Load()
	if n > uint64(len(r.ring)) {
		return 0
	}
	return int(n)
}

// heldByLive reports whether any of the owner words (a sys.Identity, 0
// for none) names a process that is alive.
func heldByLive(owners ...*atomic.Uint64) bool {
	for _, w := range owners {
		if id := sys.Identity(w.Load()); id != 0 && sys.Alive(id) {
			return true
		}
	}
	return false
}

// claim makes self the owner of an end word: free (0), or held by a dead
// process (taken over). A live owner is ErrBusy.
func claim(w *atomic.Uint64, self sys.Identity, what string) (takenOver sys.Identity, err error) {
	for {
		cur := w.Load()
		if cur == uint64(self) {
			return 0, fmt.Errorf("%s is already held by this process: %w", what, errs.ErrBusy)
		}
		if cur != 0 && sys.Alive(sys.Identity(cur)) {
			return 0, fmt.Errorf("%s is held by %v: %w", what, sys.Identity(cur), errs.ErrBusy)
		}
		if w.CompareAndSwap(cur, uint64(self)) {
			return sys.Identity(cur), nil
		}
	}
}

// ---- producer ----

// RecordProducer is the producer end. Its methods must be called from one
// goroutine at a time.
type RecordProducer struct {
	_ mem.Pad
	*Ring
	self      sys.Identity
	tail      uint64 // local copy of Tail
	headCache uint64
	relaxed   uint64    // relax's results, kept so that its work is not elided
	idle      uint32    // ProdWaiting when not waiting (idleValue)
	since     time.Time // when the end was announced, if idle is waitSoon
	lw        *localWaiter
	closed    bool
	_         mem.Pad
}

// AttachProducer claims the producer end (ErrBusy if a live process holds
// it; a dead holder's end is taken over).
func (r *Ring) AttachProducer() (*RecordProducer, error) {
	self := sys.Self()
	if _, err := claim(&r.cb.Producer, self, "producer end"); err != nil {
		return nil, err
	}
	// A refused attach puts the previous producer's close back: the
	// consumer's EOF, and the channel's removal once both ends are
	// gone, depend on it.
	closed := r.cb.ProdClosed.Swap(0)
	t := r.cb.Tail.Load()
	h := r.cb.Head.Load()
	if t-h > uint64(len(r.ring)) {
		r.cb.ProdClosed.Store(closed)
		r.cb.Producer.Store(0)
		return nil, errs.Corrupt("record channel head/tail", uint64(r.cbOff)+128, "tail %d head %d capacity %d", t, h, len(r.ring))
	}
	r.cb.ProdSince.Store(t + 1)
	idle := idleValue(r.opts)
	r.cb.ProdWaiting.Store(idle)
	return &RecordProducer{Ring: r, self: self, tail: t, headCache: h, idle: idle, since: time.Now(),
		lw: r.newLocalWaiter(&r.cb.ProdWaiting)}, nil
}

var errClosedEnd = fmt.Errorf("channel end: %w", errs.ErrClosed)

// TrySend queues a slot (PackSlot), or returns ErrWouldBlock if the ring
// is full.
func (p *RecordProducer) TrySend(slot uint64) error {
	if p.closed {
		return errClosedEnd
	}
	if !p.Push(slot) {
		if err := p.loadHead(); err != nil {
			return err
		}
		if !p.Push(slot) {
			return errs.ErrWouldBlock
		}
	}
	return nil
}

// loadHead re-reads the Head into headCache. The consumer's Head is
// never ahead of the Tail it read, which is never ahead of the
// producer's: a Head ahead of the producer's tail, or more than a ring
// behind it, was damaged, and is reported (ErrCorrupt) rather than
// believed: the room computed from it would wrap, and the producer would
// queue over slots not yet taken, or wait for room that never comes. The
// cached Head is left as it was.
func (p *RecordProducer) loadHead() error {
	h := p.cb.Head.Load()
	if d := p.tail - h; d > uint64(len(p.ring)) {
		return errs.Corrupt("record channel head", uint64(p.cbOff)+256, "head %d, producer's tail %d (capacity %d)", h, p.tail, len(p.ring))
	}
	p.headCache = h
	return nil
}

// Push is TrySend without re-reading Head: it queues the slot if the
// ring has room by the cached Head and reports true, or does nothing and
// reports false (a closed end, or a ring full as far as the cached Head
// tells), and then TrySend or Send says what to do.
func (p *RecordProducer) Push(slot uint64) bool {
	if p.closed || p.tail-p.headCache >= uint64(len(p.ring)) {
		return false
	}
	p.ring[p.tail&p.mask] = slot
	p.tail++
	publish(&p.cb.Tail, p.tail)
	if p.cb.ConsWaiting.Load() != 0 {
		p.wakeConsumer()
	}
	return true
}

// wakeConsumer is the producer's side of a consumer that announced a
// wait: the tail is stored again, with a fence (publish did not fence),
// and a parked consumer is woken.
func (p *RecordProducer) wakeConsumer() {
	p.cb.Tail.Store(p.tail)
	p.notifyRing(&p.cb.ConsWaiting)
}

// TrySendBatch queues as many of slots as fit, publishing once, and
// returns how many it queued.
func (p *RecordProducer) TrySendBatch(slots []uint64) (int, error) {
	if p.closed {
		return 0, errClosedEnd
	}
	room := uint64(len(p.ring)) - (p.tail - p.headCache)
	if room < uint64(len(slots)) {
		if err := p.loadHead(); err != nil {
			return 0, err
		}
		room = uint64(len(p.ring)) - (p.tail - p.headCache)
	}
	n := min(uint64(len(slots)), room)
	if n == 0 {
		return 0, nil
	}
	// In at most two copies: up to the ring's end, then from its start.
	i := p.tail & p.mask
	k := copy(p.ring[i:], slots[:n])
	copy(p.ring, slots[k:n])
	p.tail += n
	publish(&p.cb.Tail, p.tail)
	if p.cb.ConsWaiting.Load() != 0 {
		p.wakeConsumer()
	}
	return int(n), nil
}

// Room is how many slots the producer may queue without waiting: by the
// cached Head, re-read when that leaves fewer than want. A damaged Head
// gives 0, and WaitRoom reports it.
func (p *RecordProducer) Room(want int) int {
	if p.closed {
		return 0
	}
	room := uint64(len(p.ring)) - (p.tail - p.headCache)
	if room < uint64(max(want, 1)) {
		if p.loadHead() != nil {
			return 0
		}
		room = uint64(len(p.ring)) - (p.tail - p.headCache)
	}
	return int(room)
}

// roomPolls is how many times a producer spinning for room reads the
// Head in the time its consumer takes to free the run of slots it waits
// for, counting a relax (~70 ns) as the consumer's time per record: a
// read every run/roomPolls relaxes, about every microsecond for a run of
// 64. Each read brings the Head's line over to the producer; the
// consumer's next publication of its head must take it back, and the
// locked instruction that follows (the free of the record it took)
// waits for that store. Read after every relax, nearly every record the
// consumer took paid for it: one record at a time through a full ring
// of 1024, two goroutines on an Intel Xeon VM, the consumer went from
// 41-46 to 37-38 ns a record when the reads were spaced, and across
// processes from 48-52 to 44-47 ns.
const roomPolls = 4

// WaitRoom blocks until the ring has room for at least one record: spin,
// then park; it returns ErrPeerDead if the consumer died, ErrDestroyed if
// the buffer was destroyed, or the context's error.
func (p *RecordProducer) WaitRoom(ctx context.Context) error {
	if p.closed {
		return errClosedEnd
	}
	// room re-reads Head and reports whether k slots are free; a damaged
	// Head ends the wait (herr).
	var herr error
	room := func(k uint64) bool {
		if herr = p.loadHead(); herr != nil {
			return true
		}
		return uint64(len(p.ring))-(p.tail-p.headCache) >= k
	}
	hasRoom := func() bool { return room(1) }
	// While it spins, the producer waits for a run of free slots (an
	// eighth of the ring, at most 64) rather than for one, and reads the
	// Head a few times in the time the consumer takes to free them
	// (roomPolls): a consumer that frees one slot at a time would
	// otherwise hand the Head line over at every record, and both sides
	// would wait for it each time.
	run := max(min(uint64(len(p.ring))/8, 64), 1)
	every, polls := max(run/roomPolls, 1), uint64(0)
	roomy := func() bool {
		if polls++; polls%every == 0 && room(run) {
			return true
		}
		p.relaxed += relax(p.headCache)
		return false
	}
	// Every return puts the waiting word back to idle.
	defer settle(&p.cb.ProdWaiting, p.idle)
	if SpinAnnounced(p.opts.Spin, p.since, announceWord(&p.cb.ProdWaiting), roomy) || hasRoom() {
		return herr
	}
	for {
		word := armWord(&p.cb.ProdWaiting, &p.cb.Consumer, p.self)
		if hasRoom() {
			return herr
		}
		if testBeforePark != nil {
			testBeforePark()
		}
		err := parkWord(ctx, &p.cb.ProdWaiting, p.lw, word, p.opts.CheckInterval)
		if err != nil && !errors.Is(err, errs.ErrTimeout) {
			return err
		}
		if hasRoom() {
			return herr
		}
		if err := p.checkPeer(&p.cb.Consumer, "consumer"); err != nil {
			return err
		}
	}
}

func (r *Ring) checkPeer(w *atomic.Uint64, what string) error {
	if r.region.Closing() {
		return fmt.Errorf("record channel: %w", errs.ErrClosed)
	}
	if r.region.State() == backend.StateDestroyed {
		return fmt.Errorf("record channel: %w", errs.ErrDestroyed)
	}
	if id := sys.Identity(w.Load()); id != 0 && !sys.Alive(id) {
		return fmt.Errorf("record channel: the %s (%v) died: %w", what, id, errs.ErrPeerDead)
	}
	return nil
}

// Send queues a slot, waiting for room as WaitRoom does.
func (p *RecordProducer) Send(ctx context.Context, slot uint64) error {
	for {
		err := p.TrySend(slot)
		if err != errs.ErrWouldBlock {
			return err
		}
		if err := p.WaitRoom(ctx); err != nil {
			return err
		}
	}
}

// Close releases the producer end: the consumer drains what is queued and
// then reads EOF. It reports whether the consumer end is closed too.
//
// Close writes to the control block after it lets go of the end (the
// wake-up): that is safe only while nobody can remove the channel in
// between, so call it under the registry lock against a valid entry, as
// the ipc package's ends do (Buffer.closeEnd). The same holds for every
// end's Close in this package.
func (p *RecordProducer) Close() (consumerClosed bool) {
	if p.closed {
		return false
	}
	p.closed = true
	p.cb.ProdClosed.Store(1)
	p.cb.ProdWaiting.Store(0) // no producer waits any more
	p.lw.release()
	if p.cb.Producer.Load() == uint64(p.self) {
		p.cb.ProdSince.Store(0) // before the end is let go (SentHere)
	}
	p.cb.Producer.CompareAndSwap(uint64(p.self), 0)
	// Wake a parked consumer so it sees EOF.
	p.notifyRing(&p.cb.ConsWaiting)
	return p.cb.ConsClosed.Load() != 0
}

// ---- consumer ----

// RecordConsumer is the consumer end. Its methods must be called from one
// goroutine at a time.
//
// A receive is in two steps when the caller must act on a record before
// the producer may learn that it was taken (the holder hand-over of
// package ipc): Next or PeekBatch read slots without consuming them, and
// Advance consumes them. TryReceive and TryReceiveBatch do both.
type RecordConsumer struct {
	_ mem.Pad
	*Ring
	self      sys.Identity
	head      uint64
	tailCache uint64
	relaxed   uint64    // relax's results, kept so that its work is not elided
	idle      uint32    // ConsWaiting when not waiting (idleValue)
	since     time.Time // when the end was announced, if idle is waitSoon
	lw        *localWaiter
	closed    bool
	_         mem.Pad
}

// AttachConsumer claims the consumer end (ErrBusy if a live process holds
// it; a dead holder's end is taken over).
func (r *Ring) AttachConsumer() (*RecordConsumer, error) {
	self := sys.Self()
	if _, err := claim(&r.cb.Consumer, self, "consumer end"); err != nil {
		return nil, err
	}
	closed := r.cb.ConsClosed.Swap(0) // put back if refused, as in AttachProducer
	h := r.cb.Head.Load()
	t := r.cb.Tail.Load()
	if t-h > uint64(len(r.ring)) {
		r.cb.ConsClosed.Store(closed)
		r.cb.Consumer.Store(0)
		return nil, errs.Corrupt("record channel head/tail", uint64(r.cbOff)+256, "tail %d head %d capacity %d", t, h, len(r.ring))
	}
	idle := idleValue(r.opts)
	r.cb.ConsWaiting.Store(idle)
	return &RecordConsumer{Ring: r, self: self, head: h, tailCache: t, idle: idle, since: time.Now(),
		lw: r.newLocalWaiter(&r.cb.ConsWaiting)}, nil
}

// available returns how many records are readable, re-reading the tail
// when the cached one is used up.
func (c *RecordConsumer) available() (uint64, error) {
	if c.tailCache == c.head {
		if err := c.loadTail(); err != nil {
			return 0, err
		}
	}
	return c.tailCache - c.head, nil
}

// loadTail re-reads the Tail into tailCache, or reports it damaged
// (ErrCorrupt) if it is behind the consumer's head or more than a ring
// ahead of it; the cached Tail is then left as it was.
func (c *RecordConsumer) loadTail() error {
	t := c.cb.Tail.Load()
	if d := t - c.head; d > uint64(len(c.ring)) {
		return errs.Corrupt("record channel tail", uint64(c.cbOff)+128, "tail %d, consumer's head %d (capacity %d)", t, c.head, len(c.ring))
	}
	c.tailCache = t
	return nil
}

// Next returns the next slot without consuming it, or ErrWouldBlock
// (empty), or io.EOF (empty and the producer closed).
func (c *RecordConsumer) Next() (uint64, error) {
	if s, ok := c.Peek(); ok {
		return s, nil
	}
	if c.closed {
		return 0, errClosedEnd
	}
	n, err := c.available()
	if err != nil {
		return 0, err
	}
	if n == 0 {
		if c.cb.ProdClosed.Load() == 0 {
			return 0, errs.ErrWouldBlock
		}
		// The producer stores Tail before ProdClosed: re-read.
		if n, err = c.available(); err != nil || n == 0 {
			if err == nil {
				err = io.EOF
			}
			return 0, err
		}
	}
	return c.ring[c.head&c.mask], nil
}

// Peek is Next's common case: the next slot, if the consumer end is open
// and the ring holds one; false means "ask Next" (which also reports
// EOF, a closed end and a damaged Tail).
func (c *RecordConsumer) Peek() (uint64, bool) {
	if c.closed {
		return 0, false
	}
	if c.tailCache == c.head {
		t := c.cb.Tail.Load()
		if t == c.head || t-c.head > uint64(len(c.ring)) {
			return 0, false
		}
		c.tailCache = t
	}
	return c.ring[c.head&c.mask], true
}

// PeekKnown copies into slots the slots queued that the consumer knows
// of already (up to the tail it read last, without reading it again) and
// returns how many; they are consumed by Advance, as PeekBatch's are.
func (c *RecordConsumer) PeekKnown(slots []uint64) int {
	n := min(c.Known(), len(slots))
	i := c.head & c.mask
	k := copy(slots[:n], c.ring[i:])
	copy(slots[k:n], c.ring)
	return int(n)
}

// Known is how many slots PeekKnown would return at most.
func (c *RecordConsumer) Known() int {
	if c.closed || c.tailCache-c.head > uint64(len(c.ring)) {
		return 0
	}
	return int(c.tailCache - c.head)
}

// Advance consumes n slots that Peek, Next, PeekKnown or PeekBatch
// returned, publishing that they were taken.
func (c *RecordConsumer) Advance(n int) {
	if n <= 0 {
		return
	}
	c.head += uint64(n)
	publish(&c.cb.Head, c.head)
	if c.cb.ProdWaiting.Load() != 0 {
		c.wakeProducer()
	}
}

// TryReceive takes the next slot (Next, then Advance).
func (c *RecordConsumer) TryReceive() (uint64, error) {
	s, err := c.Next()
	if err == nil {
		c.Advance(1)
	}
	return s, err
}

// wakeProducer is the consumer's side of a producer that announced a
// wait (wakeConsumer's counterpart): the head is stored again with a
// fence, and a parked producer is woken (its word left announced).
func (c *RecordConsumer) wakeProducer() {
	c.cb.Head.Store(c.head)
	c.wakeParked(&c.cb.ProdWaiting, 1)
}

// SentHere reports whether the records queued from the head on, up to
// the Tail the consumer last read (PeekBatch, Next), were all sent by a
// producer end of this process, so that this process holds them (package
// ipc: a record is held by the process that sent it until a consumer
// takes it over) or their holder died: a producer end of this process
// holds the channel, and has since before the head. Every sender writes
// ProdSince after it claims the end and clears it before it lets go, so
// a ProdSince read while the end is this process's is that end's, or one
// left by a producer that died: whose records' holder is dead.
//
// Read after the Tail: a producer end that held the channel from before
// the head until after the Tail was read sent everything in between.
func (c *RecordConsumer) SentHere() bool {
	s := c.cb.ProdSince.Load()
	return s != 0 && s-1 <= c.head && c.cb.Producer.Load() == uint64(c.self)
}

// PeekBatch copies up to len(slots) queued slots without consuming them
// and returns how many: 0 with a nil error if none is queued, io.EOF if
// none is and the producer closed.
func (c *RecordConsumer) PeekBatch(slots []uint64) (int, error) {
	if c.closed {
		return 0, errClosedEnd
	}
	n, err := c.available()
	if err != nil {
		return 0, err
	}
	if n < uint64(len(slots)) {
		if err := c.loadTail(); err != nil {
			return 0, err
		}
		n = c.tailCache - c.head
	}
	n = min(n, uint64(len(slots)))
	if n == 0 {
		if c.cb.ProdClosed.Load() != 0 && c.cb.Tail.Load() == c.head {
			return 0, io.EOF
		}
		return 0, nil
	}
	i := c.head & c.mask
	k := copy(slots[:n], c.ring[i:])
	copy(slots[k:n], c.ring)
	return int(n), nil
}

// TryReceiveBatch takes up to len(slots) slots, publishing once
// (PeekBatch, then Advance).
func (c *RecordConsumer) TryReceiveBatch(slots []uint64) (int, error) {
	n, err := c.PeekBatch(slots)
	c.Advance(n)
	return n, err
}

// WaitData blocks until a record is readable, the producer closed (then
// io.EOF once drained), the producer died (ErrPeerDead, after what it
// queued is delivered), the buffer was destroyed, or ctx is done.
func (c *RecordConsumer) WaitData(ctx context.Context) error {
	if c.closed {
		return errClosedEnd
	}
	ready := func() (bool, error) {
		n, err := c.available()
		if err != nil || n > 0 {
			return true, err
		}
		if c.cb.ProdClosed.Load() != 0 {
			if err := c.loadTail(); err != nil {
				return true, err
			}
			if c.tailCache == c.head {
				return true, io.EOF
			}
			return true, nil
		}
		return false, nil
	}
	// Every return puts the waiting word back to idle.
	defer settle(&c.cb.ConsWaiting, c.idle)
	// While it spins, the consumer lets a little time pass between polls
	// of the tail (as WaitRoom does for the head): polled back to back,
	// the tail's line was taken from the producer as often as the
	// producer wrote it, and the producer waited for it each time (busy
	// ping-pong, BenchmarkRecordPingPong: ~1.0 -> ~0.7 µs per round trip).
	var rerr error
	if SpinAnnounced(c.opts.Spin, c.since, announceWord(&c.cb.ConsWaiting), func() bool {
		ok, err := ready()
		rerr = err
		if !ok {
			c.relaxed += relax(c.head)
		}
		return ok
	}) {
		return rerr
	}
	for {
		word := armWord(&c.cb.ConsWaiting, &c.cb.Producer, c.self)
		if ok, err := ready(); ok {
			return err
		}
		if testBeforePark != nil {
			testBeforePark()
		}
		err := parkWord(ctx, &c.cb.ConsWaiting, c.lw, word, c.opts.CheckInterval)
		if err != nil && !errors.Is(err, errs.ErrTimeout) {
			return err
		}
		if ok, err := ready(); ok {
			return err
		}
		if err := c.checkPeer(&c.cb.Producer, "producer"); err != nil {
			// Deliver what the dead producer queued first.
			if ok, rerr := ready(); ok {
				return rerr
			}
			return err
		}
	}
}

// Receive takes the next slot, waiting as WaitData does.
func (c *RecordConsumer) Receive(ctx context.Context) (uint64, error) {
	for {
		off, err := c.TryReceive()
		if err != errs.ErrWouldBlock {
			return off, err
		}
		if err := c.WaitData(ctx); err != nil {
			return 0, err
		}
	}
}

// Close releases the consumer end. It reports whether the producer has
// closed and everything was consumed, i.e. the channel can be removed.
func (c *RecordConsumer) Close() (drainedAndDone bool) {
	if c.closed {
		return false
	}
	c.closed = true
	c.cb.ConsClosed.Store(1)
	c.cb.ConsWaiting.Store(0) // no consumer waits any more
	c.lw.release()
	c.cb.Doorbell.Store(0)
	c.cb.Consumer.CompareAndSwap(uint64(c.self), 0)
	// Wake a parked producer, so that it looks at the channel again (a
	// closed consumer is not a dead one: it waits on for the next
	// consumer or its context); its word stays announced (notifyRing).
	c.wakeParked(&c.cb.ProdWaiting, 0)
	return c.cb.ProdClosed.Load() != 0 && c.cb.Tail.Load() == c.cb.Head.Load()
}

// Waiting is the consumer's waiting word (for tests of the packages that
// wait on it).
func (r *Ring) Waiting() uint32 { return r.cb.ConsWaiting.Load() }

// Removable reports whether both ends have closed and the ring is empty.
func (r *Ring) Removable() bool {
	return r.cb.ProdClosed.Load() != 0 && r.cb.ConsClosed.Load() != 0 &&
		r.cb.Producer.Load() == 0 && r.cb.Consumer.Load() == 0 && r.cb.Tail.Load() == r.cb.Head.Load()
}

// Abandoned reports whether no live process holds either end (each end
// is closed or its holder died) and the ring is empty: the channel can be
// reclaimed by recovery.
func (r *Ring) Abandoned() bool {
	if !r.Idle() {
		return false
	}
	prodGone := r.cb.ProdClosed.Load() != 0 || r.cb.Producer.Load() != 0
	consGone := r.cb.ConsClosed.Load() != 0 || r.cb.Consumer.Load() != 0
	return prodGone && consGone && r.cb.Tail.Load() == r.cb.Head.Load()
}

// Pending returns the offsets of the records still queued (for freeing
// them when the channel is removed). Call only when no end is active.
func (r *Ring) Pending() ([]mem.Off, error) {
	slots, err := r.PendingSlots()
	out := make([]mem.Off, len(slots))
	for i, s := range slots {
		out[i] = SlotOff(s)
	}
	return out, err
}

// Drain takes the queued slots off the ring one at a time, for freeing
// their records when the channel is removed (call only when no end is
// active): take is called with each slot before Head moves past it, and
// release after. So a removal that dies in the middle and is run again
// (Registry.FinishRemovals) neither skips a record that is still queued
// nor frees one twice: take makes the remover the record's holder, so a
// record whose slot is gone but that was not freed yet is a dead
// holder's, which Recover frees. An error from take drops the slot
// (reported) without release.
func (r *Ring) Drain(take func(slot uint64) error, release func(slot uint64) error) error {
	var all []error
	for {
		h, t := r.cb.Head.Load(), r.cb.Tail.Load()
		if t-h > uint64(len(r.ring)) {
			return errors.Join(append(all, errs.Corrupt("record channel head/tail", uint64(r.cbOff)+128, "tail %d head %d", t, h))...)
		}
		if h == t {
			return errors.Join(all...)
		}
		s := r.ring[h&r.mask]
		err := take(s)
		r.cb.Head.Store(h + 1)
		if err == nil {
			err = release(s)
		}
		if err != nil {
			all = append(all, err)
		}
	}
}

// PendingSlots returns the slots still queued, in order.
func (r *Ring) PendingSlots() ([]uint64, error) {
	h, t := r.cb.Head.Load(), r.cb.Tail.Load()
	if t-h > uint64(len(r.ring)) {
		return nil, errs.Corrupt("record channel head/tail", uint64(r.cbOff)+128, "tail %d head %d", t, h)
	}
	out := make([]uint64, 0, t-h)
	for s := h; s != t; s++ {
		out = append(out, r.ring[s&r.mask])
	}
	return out, nil
}

// Check reports what is wrong with the ring's words.
func (r *Ring) Check() error {
	var all []error
	h, t := r.cb.Head.Load(), r.cb.Tail.Load()
	if t-h > uint64(len(r.ring)) {
		all = append(all, errs.Corrupt("record channel head/tail", uint64(r.cbOff)+128, "tail %d head %d capacity %d", t, h, len(r.ring)))
	}
	if v := r.cb.ProdClosed.Load(); v > 1 {
		all = append(all, errs.Corrupt("record channel ProdClosed", uint64(r.cbOff)+144, "value %d", v))
	}
	if v := r.cb.ConsClosed.Load(); v > 1 {
		all = append(all, errs.Corrupt("record channel ConsClosed", uint64(r.cbOff)+272, "value %d", v))
	}
	return errors.Join(all...)
}

// Idle reports whether no live process holds either end.
func (r *Ring) Idle() bool {
	return !heldByLive(&r.cb.Producer, &r.cb.Consumer)
}

// The RecordConsumer is Selectable: a Select waits on its doorbell.

// Ready reports whether TryReceive would not return ErrWouldBlock.
func (c *RecordConsumer) Ready() bool {
	n, err := c.available()
	return err != nil || n > 0 || c.cb.ProdClosed.Load() != 0
}

// SetDoorbell registers (off != 0) or removes (0) the consumer's doorbell.
func (c *RecordConsumer) SetDoorbell(off mem.Off) { c.cb.Doorbell.Store(uint64(off)) }

// Arm announces that the consumer is about to park on its doorbell.
func (c *RecordConsumer) Arm() { c.cb.ConsWaiting.Store(waitBell) }

// Disarm withdraws Arm.
func (c *RecordConsumer) Disarm() { settle(&c.cb.ConsWaiting, c.idle) }

// Announce says that the consumer may soon park (waitSoon): see publish.
func (c *RecordConsumer) Announce() { c.cb.ConsWaiting.Store(waitSoon) }

// CheckPeer returns ErrPeerDead if the producer died, ErrDestroyed if the
// buffer was destroyed.
func (c *RecordConsumer) CheckPeer() error { return c.checkPeer(&c.cb.Producer, "producer") }

// Interrupt wakes every thread parked on the producer's waiting word, so
// that it checks again (a closing buffer, say); the word is left as it is.
func (p *RecordProducer) Interrupt() {
	backend.Wake(&p.cb.ProdWaiting, 0)
	p.lw.signal()
}

// Interrupt wakes every thread parked on the consumer's waiting word, as
// RecordProducer.Interrupt does.
func (c *RecordConsumer) Interrupt() {
	backend.Wake(&c.cb.ConsWaiting, 0)
	c.lw.signal()
}
