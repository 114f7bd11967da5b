package channel

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"structs"
	"sync/atomic"
	"time"

	"github.com/heapipc/ipc/backend"
	"github.com/heapipc/ipc/internal/errs"
	"github.com/heapipc/ipc/internal/mem"
	"github.com/heapipc/ipc/internal/sys"
)

// mpscCB is the control block of a multi-producer, single-consumer record
// channel, followed by the producer table and the ring of slots.
//
//	0     immutable: magic, capacity, producer slots   (creator)
//	128   Tail: next sequence to claim                  (producers, CAS)
//	256   Head, Consumer, ConsClosed, Doorbell, Attached (consumer; Attached by producers)
//	384   ConsWaiting, ProdWaiting                      (parking)
//	512   producers [MaxProd]prodSlot, 128 bytes each   (each by its producer)
//	...   slots [Cap]mpscSlot, 16 bytes each
//
// A producer claims sequence t by CAS on Tail once t-Head < Cap (it reads
// Head only when the Head it read last says the ring is full), writes the
// record's slot (PackSlot: offset and length) and publishes it with
// Seq = t+1; the consumer takes the slot at Head once its Seq is Head+1
// and moves Head on. Each producer's records keep their order (its claims
// are increasing). The consumer writes nothing in the slots: the lines of
// the ring go from the producers to the consumer only, and the consumer's
// one store a record, Head, is on a line that producers read only when
// the ring looks full to them. A slot's Seq of an earlier lap (or 0, as
// made) is never Head+1, so only a publication of this lap shows.
//
// Head is the consumer's only state in the ring: a consumer killed at any
// point leaves a Head that the next consumer takes over as it is (a
// record the dead one was taking is still at Head, or was its process's
// once Head had passed it).
//
// Before it claims t a producer writes t+1 to its Claiming word, and
// clears it after publishing. So if the slot at the consumer's head stays
// unpublished while Tail is past it, the claimant is a producer whose
// Claiming is head+1; when every such producer is dead, the claimant died
// between claim and publish, and the consumer skips the slot instead of
// waiting forever.
type mpscCB struct {
	_           structs.HostLayout
	Magic       uint64
	Cap         uint64
	MaxProd     uint64
	_           [104]byte
	Tail        atomic.Uint64
	_           [120]byte
	Head        atomic.Uint64
	Consumer    atomic.Uint64
	ConsClosed  atomic.Uint32
	_           uint32
	Doorbell    atomic.Uint64
	Attached    atomic.Int64  // producers attached now
	EverAttach  atomic.Uint32 // 1 once any producer attached
	_           [84]byte
	ConsWaiting atomic.Uint32
	ProdWaiting atomic.Uint32
	_           [120]byte
}

// prodSlot is one producer's entry in the producer table.
type prodSlot struct {
	_        structs.HostLayout
	Owner    atomic.Uint64 // sys.Identity of the producer using the slot, 0: free
	Claiming atomic.Uint64 // t+1 while claiming/publishing sequence t, else 0
	_        [112]byte
}

type mpscSlot struct {
	_    structs.HostLayout
	Seq  atomic.Uint64 // t+1: published for sequence t
	Slot atomic.Uint64 // the record (PackSlot)
}

const (
	mpscCBSize        = 512
	prodSlotSize      = 128
	mpscSlotSize      = 16
	DefaultProducers  = 64
	MaxMPSCProducers  = 4096
	mpscSkipAfterIdle = 2 // check intervals a dead claimant's slot is awaited
	// MinMPSCCapacity is the smallest MPSC ring: with one slot every
	// producer would wait for the consumer between any two records.
	MinMPSCCapacity = 2
)

var mpscMagic = binary.LittleEndian.Uint64([]byte("HIPCMPSC"))

// MPSCControlSize is the control block size for capacity n and p producer
// slots.
func MPSCControlSize(n, p uint64) uint64 {
	return mpscCBSize + p*prodSlotSize + n*mpscSlotSize
}

// InitMPSC lays out an MPSC control block.
func InitMPSC(b []byte, n, p uint64) error {
	if n < MinMPSCCapacity || n&(n-1) != 0 {
		return fmt.Errorf("mpsc channel: capacity %d: %w", n, errs.ErrInvalidSize)
	}
	cb, err := mem.At[mpscCB](b, 0)
	if err != nil {
		return err
	}
	slots, err := mem.Slice[mpscSlot](b, mem.Off(mpscCBSize+p*prodSlotSize), int(n))
	if err != nil {
		return err
	}
	clear(slots) // Seq 0: no slot is published for sequence 0 (Seq 1)
	cb.Cap = n
	cb.MaxProd = p
	cb.Magic = mpscMagic
	return nil
}

// MPSC is one end's view of an MPSC channel.
type MPSC struct {
	buf    []byte
	cb     *mpscCB
	prods  []prodSlot
	slots  []mpscSlot
	mask   uint64
	off    mem.Off
	region *backend.Region
	opts   WaitOptions
}

// OpenMPSC validates an MPSC channel's control block.
func OpenMPSC(region *backend.Region, en *Entry, opts WaitOptions) (*MPSC, error) {
	b := region.Bytes()
	cb, err := mem.At[mpscCB](b, en.Control)
	if err != nil {
		return nil, err
	}
	if cb.Magic != mpscMagic {
		return nil, errs.Corrupt("mpsc magic", uint64(en.Control), "magic %#x", cb.Magic)
	}
	n, p := cb.Cap, cb.MaxProd
	if n == 0 || n&(n-1) != 0 || n != en.Size || n > 1<<40 || p == 0 || p > MaxMPSCProducers {
		return nil, errs.Corrupt("mpsc geometry", uint64(en.Control)+8, "capacity %d (registry says %d), %d producer slots", n, en.Size, p)
	}
	prods, err := mem.SliceN[prodSlot](b, en.Control+mpscCBSize, p)
	if err != nil {
		return nil, err
	}
	slots, err := mem.SliceN[mpscSlot](b, en.Control+mem.Off(mpscCBSize+p*prodSlotSize), n)
	if err != nil {
		return nil, err
	}
	return &MPSC{buf: b, cb: cb, prods: prods, slots: slots, mask: n - 1, off: en.Control, region: region, opts: opts.norm()}, nil
}

func (m *MPSC) checkRegion() error {
	if m.region.Closing() {
		return fmt.Errorf("mpsc channel: %w", errs.ErrClosed)
	}
	if m.region.State() == backend.StateDestroyed {
		return fmt.Errorf("mpsc channel: %w", errs.ErrDestroyed)
	}
	return nil
}

// ---- producers ----

// MPSCProducer is one producer of an MPSC channel (one goroutine at a time;
// many producers, in any processes, may send at once).
type MPSCProducer struct {
	*MPSC
	me        *prodSlot
	self      sys.Identity
	headCache uint64
	closed    bool
}

// AttachProducer takes a free producer slot (or a dead producer's).
func (m *MPSC) AttachProducer() (*MPSCProducer, error) {
	self := sys.Self()
	for i := range m.prods {
		s := &m.prods[i]
		cur := s.Owner.Load()
		if cur != 0 && (sys.Identity(cur) == self || sys.Alive(sys.Identity(cur))) {
			continue
		}
		// A dead producer's slot keeps its Claiming word until the
		// consumer has passed the sequence it names.
		if cl := s.Claiming.Load(); cur != 0 && cl > m.cb.Head.Load() {
			continue
		}
		if s.Owner.CompareAndSwap(cur, uint64(self)) {
			s.Claiming.Store(0)
			// A dead producer's slot keeps its attachment for this one:
			// Attached never reads 0 on the way (the consumer would take
			// that for the last producer gone, and read EOF).
			if cur == 0 {
				m.cb.Attached.Add(1)
			}
			m.cb.EverAttach.Store(1)
			return &MPSCProducer{MPSC: m, me: s, self: self}, nil
		}
	}
	return nil, fmt.Errorf("mpsc channel: all %d producer slots are held by live producers: %w", len(m.prods), errs.ErrBusy)
}

// TrySend queues slot (PackSlot), or returns ErrWouldBlock if the ring
// is full.
func (p *MPSCProducer) TrySend(slot uint64) error {
	if p.closed {
		return errClosedEnd
	}
	for {
		t := p.cb.Tail.Load()
		if t-p.headCache > p.mask {
			p.headCache = p.cb.Head.Load()
			switch d := t - p.headCache; {
			case int64(d) < 0:
				// Head is past the Tail read before it: other
				// producers claimed and the consumer took since, so
				// look again; Head is never past Tail, so a Tail still
				// at t means damaged words.
				if p.cb.Tail.Load() == t {
					return errs.Corrupt("mpsc head", uint64(p.off)+256, "head %d past tail %d", p.headCache, t)
				}
				continue
			case d > p.mask+1:
				return errs.Corrupt("mpsc tail", uint64(p.off)+128, "tail %d head %d capacity %d", t, p.headCache, p.mask+1)
			case d > p.mask:
				return errs.ErrWouldBlock
			}
		}
		s := &p.slots[t&p.mask]
		if seq := s.Seq.Load(); seq > t {
			// Published for t or later: another producer claimed t and
			// moved Tail on since we read it, so look again. A Tail still
			// at t means damaged words (looking again would spin
			// forever).
			if p.cb.Tail.Load() == t {
				return errs.Corrupt("mpsc slot", uint64(p.off), "slot %d has sequence %d at tail %d", t&p.mask, seq, t)
			}
			continue
		}
		// Claiming is stored before the claim (the CAS, a locked
		// instruction, orders the plain store before it; see publish).
		publish(&p.me.Claiming, t+1)
		if !p.cb.Tail.CompareAndSwap(t, t+1) {
			// Another producer claimed t: Claiming must not name it
			// any more (the consumer, finding a live producer that
			// names t, would wait for it forever if the one that
			// claimed it died before publishing).
			publish(&p.me.Claiming, 0)
			continue
		}
		publish(&s.Slot, slot)
		publish(&s.Seq, t+1)
		// The atomic store fences the publication before notify reads
		// the consumer's waiting word (Dekker with WaitData).
		p.me.Claiming.Store(0)
		notify(p.buf, &p.cb.ConsWaiting, &p.cb.Doorbell)
		return nil
	}
}

// Send queues slot, waiting while the ring is full.
func (p *MPSCProducer) Send(ctx context.Context, slot uint64) error {
	for {
		err := p.TrySend(slot)
		if err != errs.ErrWouldBlock {
			return err
		}
		if err := p.waitRoom(ctx); err != nil {
			return err
		}
	}
}

// hasRoom reports whether a slot is free (or the words are damaged, which
// TrySend reports).
func (p *MPSCProducer) hasRoom() bool {
	return p.cb.Tail.Load()-p.cb.Head.Load() != p.mask+1
}

func (p *MPSCProducer) waitRoom(ctx context.Context) error {
	if spin(p.opts.Spin, p.hasRoom) {
		return nil
	}
	for {
		p.cb.ProdWaiting.Store(waitSelf)
		if p.hasRoom() {
			return nil
		}
		err := backend.Park(ctx, &p.cb.ProdWaiting, waitSelf, p.opts.CheckInterval)
		if err != nil && !errors.Is(err, errs.ErrTimeout) {
			return err
		}
		if p.hasRoom() {
			return nil
		}
		if err := p.checkRegion(); err != nil {
			return err
		}
		if id := sys.Identity(p.cb.Consumer.Load()); id != 0 && !sys.Alive(id) {
			return fmt.Errorf("mpsc channel: the consumer (%v) died: %w", id, errs.ErrPeerDead)
		}
	}
}

// Close releases the producer slot. When no producer is attached any
// more, the consumer reads EOF once the ring is drained.
func (p *MPSCProducer) Close() {
	if p.closed {
		return
	}
	p.closed = true
	if p.me.Owner.CompareAndSwap(uint64(p.self), 0) {
		p.cb.Attached.Add(-1)
	}
	notify(p.buf, &p.cb.ConsWaiting, &p.cb.Doorbell)
}

// ---- consumer ----

// MPSCConsumer is the consumer (one goroutine at a time).
type MPSCConsumer struct {
	_ mem.Pad
	*MPSC
	// Take, if set, is called with each record's slot before the
	// consumer moves Head past it (the holder hand-over).
	Take    func(slot uint64)
	self    sys.Identity
	head    uint64
	closed  bool
	stuckAt uint64    // head+1 while the head slot is claimed but unpublished
	stuckT  time.Time // when that was first seen
	empty   uint32    // TryReceive's calls that found the ring empty (reapDue)
	reaped  time.Time // when reapDue last let dead producers be detached
	_       mem.Pad
}

// AttachConsumer claims the consumer end.
func (m *MPSC) AttachConsumer() (*MPSCConsumer, error) {
	self := sys.Self()
	if _, err := claim(&m.cb.Consumer, self, "mpsc consumer end"); err != nil {
		return nil, err
	}
	m.cb.ConsClosed.Store(0)
	return &MPSCConsumer{MPSC: m, self: self, head: m.cb.Head.Load()}, nil
}

// ConsumerDead reports whether the consumer end is held by a process that
// died.
func (m *MPSC) ConsumerDead() bool {
	id := sys.Identity(m.cb.Consumer.Load())
	return id != 0 && !sys.Alive(id)
}

// TryReceive takes the next record's slot: ErrWouldBlock if none is
// published, io.EOF if none is and no producer is attached (after one
// was).
func (c *MPSCConsumer) TryReceive() (uint64, error) {
	if c.closed {
		return 0, errClosedEnd
	}
	for {
		h := c.head
		s := &c.slots[h&c.mask]
		if s.Seq.Load() == h+1 {
			slot := s.Slot.Load()
			if c.Take != nil {
				c.Take(slot)
			}
			c.advance(h)
			return slot, nil
		}
		t := c.cb.Tail.Load()
		if t == h {
			if c.eof(h) {
				return 0, io.EOF
			}
			if c.reapDue() {
				c.reapDead()
				if c.eof(h) {
					return 0, io.EOF
				}
			}
			return 0, errs.ErrWouldBlock
		}
		if t-h > c.mask+1 {
			return 0, errs.Corrupt("mpsc tail", uint64(c.off)+128, "tail %d head %d capacity %d", t, h, c.mask+1)
		}
		// Claimed, not yet published.
		if c.claimantGone(h) {
			c.releaseClaims(h)
			c.advance(h) // skip the slot
			continue
		}
		return 0, errs.ErrWouldBlock
	}
}

// eof reports, for a ring found empty at h, whether no producer is
// attached any more (after one was). A producer publishes before it
// closes: Tail is read again after Attached, so that a record sent and
// followed by the last Close since Tail was read is received, not lost
// behind an EOF.
func (c *MPSCConsumer) eof(h uint64) bool {
	return c.cb.EverAttach.Load() != 0 && c.cb.Attached.Load() <= 0 && c.cb.Tail.Load() == h
}

// reapDue paces reapDead for a caller that polls TryReceive (rather than
// waiting in WaitData, which reaps after each park): at most once a check
// interval, the clock read once every 256 empty polls.
func (c *MPSCConsumer) reapDue() bool {
	if c.empty++; c.empty%256 != 0 || c.cb.EverAttach.Load() == 0 {
		return false
	}
	now := time.Now()
	if now.Sub(c.reaped) < c.opts.CheckInterval {
		return false
	}
	c.reaped = now
	return true
}

// advance moves Head past h. The atomic store fences it before the
// producers' waiting word is read (Dekker with waitRoom); every parked
// producer is woken (they share the word, and each looks again).
func (c *MPSCConsumer) advance(h uint64) {
	c.head = h + 1
	c.cb.Head.Store(c.head)
	c.stuckAt = 0
	if w := &c.cb.ProdWaiting; w.Load() != 0 && w.Swap(0) == waitSelf {
		backend.Wake(w, 0)
	}
}

// claimantGone reports whether the slot at h, claimed (Tail is past it)
// but not published, never will be: it has stayed so for
// mpscSkipAfterIdle check intervals, and no live producer names h in its
// Claiming word. A claimant names h from before its claim until after
// its publication, so a live one is always found; a slot that nobody
// names at all was claimed by a Tail damaged ahead of every claim. The
// first call for h starts the clock.
func (c *MPSCConsumer) claimantGone(h uint64) bool {
	if c.stuckAt != h+1 {
		c.stuckAt, c.stuckT = h+1, time.Now()
		return false
	}
	if time.Since(c.stuckT) < mpscSkipAfterIdle*c.opts.CheckInterval {
		return false
	}
	for i := range c.prods {
		ps := &c.prods[i]
		if ps.Claiming.Load() == h+1 && sys.Alive(sys.Identity(ps.Owner.Load())) {
			return false
		}
	}
	// A claimant publishes before it clears its Claiming word: one that
	// did so while the words were being read shows in the slot now.
	return c.slots[h&c.mask].Seq.Load() != h+1
}

// releaseClaims clears the Claiming words that name h, a slot skipped,
// of producers that are dead, so that their producer slots can be
// reused.
func (c *MPSCConsumer) releaseClaims(h uint64) {
	for i := range c.prods {
		ps := &c.prods[i]
		if ps.Claiming.Load() == h+1 && !sys.Alive(sys.Identity(ps.Owner.Load())) {
			ps.Claiming.Store(0)
		}
	}
}

// Ready reports whether TryReceive would not return ErrWouldBlock: a
// record is published at the head, the channel is finished or damaged, or
// the head slot, claimed and never to be published, is to be skipped. A
// slot claimed and not yet published is not ready: its claimant wakes the
// consumer when it publishes.
func (c *MPSCConsumer) Ready() bool {
	h := c.head
	if c.slots[h&c.mask].Seq.Load() == h+1 {
		return true
	}
	switch t := c.cb.Tail.Load(); {
	case t == h:
		return c.eof(h)
	case t-h > c.mask+1:
		return true // damaged: TryReceive reports it
	default:
		return c.claimantGone(h)
	}
}

// SetDoorbell registers (off != 0) or removes (0) the consumer's doorbell.
func (c *MPSCConsumer) SetDoorbell(off mem.Off) { c.cb.Doorbell.Store(uint64(off)) }

// Arm announces that the consumer is about to park on its doorbell.
func (c *MPSCConsumer) Arm() { c.cb.ConsWaiting.Store(waitBell) }

// Disarm withdraws Arm.
func (c *MPSCConsumer) Disarm() { c.cb.ConsWaiting.Store(0) }

// Announce does nothing: MPSC producers publish with a fence.
func (c *MPSCConsumer) Announce() {}

// CheckPeer returns ErrDestroyed if the buffer was destroyed. Producers
// dying is not an error for an MPSC consumer (their claimed slots are
// skipped); it detaches the dead ones (reapDead), and reads EOF when no
// producer is left.
func (c *MPSCConsumer) CheckPeer() error {
	c.reapDead()
	return c.checkRegion()
}

// WaitData blocks until TryReceive would not return ErrWouldBlock.
func (c *MPSCConsumer) WaitData(ctx context.Context) error {
	if c.closed {
		return errClosedEnd
	}
	if spin(c.opts.Spin, c.Ready) {
		return nil
	}
	// Every return puts the waiting word back to idle (producers read
	// it at every publication, and wake a waiter that it names).
	defer settle(&c.cb.ConsWaiting, 0)
	for {
		c.cb.ConsWaiting.Store(waitSelf)
		if c.Ready() {
			return nil
		}
		err := backend.Park(ctx, &c.cb.ConsWaiting, waitSelf, c.opts.CheckInterval)
		if err != nil && !errors.Is(err, errs.ErrTimeout) {
			return err
		}
		if c.Ready() {
			return nil
		}
		if err := c.checkRegion(); err != nil {
			return err
		}
		c.reapDead()
	}
}

// reapDead detaches producers that died without closing (once the
// consumer has passed whatever they claimed), so that EOF can come.
func (c *MPSCConsumer) reapDead() {
	for i := range c.prods {
		ps := &c.prods[i]
		id := ps.Owner.Load()
		if id == 0 || sys.Alive(sys.Identity(id)) || ps.Claiming.Load() > c.head {
			continue
		}
		if ps.Owner.CompareAndSwap(id, 0) {
			c.cb.Attached.Add(-1)
		}
	}
}

// Receive takes the next record, waiting as needed. A slot whose claimant
// died is skipped after about two check intervals; a claimant that is
// alive (descheduled between its claim and its publication) wakes the
// consumer when it publishes.
func (c *MPSCConsumer) Receive(ctx context.Context) (uint64, error) {
	for {
		slot, err := c.TryReceive()
		if err != errs.ErrWouldBlock {
			return slot, err
		}
		if err := c.WaitData(ctx); err != nil {
			return 0, err
		}
	}
}

// Close releases the consumer end.
func (c *MPSCConsumer) Close() {
	if c.closed {
		return
	}
	c.closed = true
	c.cb.ConsClosed.Store(1)
	c.cb.Doorbell.Store(0)
	c.cb.Consumer.CompareAndSwap(uint64(c.self), 0)
	notify(c.buf, &c.cb.ProdWaiting, &c.cb.Doorbell)
}

// Pending returns the offsets of the published records not yet consumed.
func (m *MPSC) Pending() ([]mem.Off, error) {
	h, t := m.cb.Head.Load(), m.cb.Tail.Load()
	if t-h > m.mask+1 {
		return nil, errs.Corrupt("mpsc head/tail", uint64(m.off)+128, "tail %d head %d", t, h)
	}
	var out []mem.Off
	for s := h; s != t; s++ {
		sl := &m.slots[s&m.mask]
		if sl.Seq.Load() == s+1 {
			out = append(out, SlotOff(sl.Slot.Load()))
		}
	}
	return out, nil
}

// Idle reports whether no live process holds an end of the channel.
func (m *MPSC) Idle() bool {
	if heldByLive(&m.cb.Consumer) {
		return false
	}
	for i := range m.prods {
		if heldByLive(&m.prods[i].Owner) {
			return false
		}
	}
	return true
}

// Abandoned reports whether no live process holds an end, the consumer
// end has gone (closed, or held by a process that died: a channel no
// consumer ever opened is waiting for one, not abandoned) and the ring is
// empty.
func (m *MPSC) Abandoned() bool {
	if heldByLive(&m.cb.Consumer) {
		return false
	}
	if m.cb.ConsClosed.Load() == 0 && m.cb.Consumer.Load() == 0 {
		return false
	}
	for i := range m.prods {
		if heldByLive(&m.prods[i].Owner) {
			return false
		}
	}
	return m.cb.Tail.Load() == m.cb.Head.Load()
}

// Removable reports whether the consumer closed, no producer is attached
// and the ring is empty.
func (m *MPSC) Removable() bool {
	return m.cb.ConsClosed.Load() != 0 && m.cb.Consumer.Load() == 0 && m.cb.Attached.Load() <= 0 &&
		m.cb.Tail.Load() == m.cb.Head.Load()
}

// Check reports what is wrong with the channel's words.
func (m *MPSC) Check() error {
	var all []error
	h, t := m.cb.Head.Load(), m.cb.Tail.Load()
	if t-h > m.mask+1 {
		all = append(all, errs.Corrupt("mpsc head/tail", uint64(m.off)+128, "tail %d head %d capacity %d", t, h, m.mask+1))
		return errors.Join(all...)
	}
	for i := range m.slots {
		// Each slot's sequence is 0 (never published) or one more than
		// a sequence claimed already, of the slot's place modulo the
		// capacity. One published for a claim made since Tail was read
		// is under the Tail read after it.
		seq := m.slots[i].Seq.Load()
		if seq > t {
			t = m.cb.Tail.Load()
		}
		if seq != 0 && ((seq-1)&m.mask != uint64(i) || seq > t) {
			all = append(all, errs.Corrupt("mpsc slot", uint64(m.off), "slot %d has sequence %d at tail %d", i, seq, t))
		}
	}
	return errors.Join(all...)
}

// Interrupt wakes every thread parked on the producers' waiting word, so
// that it checks again (a closing buffer, say); the word is left as it is.
func (p *MPSCProducer) Interrupt() { backend.Wake(&p.cb.ProdWaiting, 0) }

// Interrupt wakes every thread parked on the consumer's waiting word, as
// MPSCProducer.Interrupt does.
func (c *MPSCConsumer) Interrupt() { backend.Wake(&c.cb.ConsWaiting, 0) }
