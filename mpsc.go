package ipc

import (
	"context"
	"fmt"

	"github.com/heapipc/ipc/channel"
	"github.com/heapipc/ipc/internal/mem"
)

// MPSCProducer is one of the many producers of a multi-producer,
// single-consumer record channel. Producers may be goroutines (each with
// its own Handle) and processes, in any mix; each producer's records
// arrive in the order it sent them. It belongs to one goroutine at a time.
type MPSCProducer struct {
	h      *Handle
	en     *channel.Entry
	p      *channel.MPSCProducer
	id     ChannelID
	closed bool
}

// MPSCConsumer is the single consumer of an MPSC channel.
type MPSCConsumer struct {
	recvEnd
	h     *Handle
	en    *channel.Entry
	c     *channel.MPSCConsumer
	taken taken // what the channel's Take hook found
}

// taken is what the consumer's Take hook took: the record an MPSC
// consumer received (the channel calls the hook before it publishes the
// receipt).
type taken struct {
	rec Record
	err error
	ok  bool
}

// WithProducers sets how many producers an MPSC channel to create can
// have attached at once (default 64, at most 4096).
func WithProducers(n int) ChannelOption {
	return func(c *chanConfig) error {
		if n <= 0 || n > channel.MaxMPSCProducers {
			return fmt.Errorf("producers %d (want 1..%d): %w", n, channel.MaxMPSCProducers, ErrInvalidArgument)
		}
		c.producers = uint64(n)
		return nil
	}
}

// attachMPSC opens MPSC channel id, creating it if needed, and claims an
// end with claim (see attachChannel).
func (h *Handle) attachMPSC(id ChannelID, cfg chanConfig, claim func(*channel.Entry, *channel.MPSC) error) (*channel.Entry, error) {
	capacity := cfg.capacity
	if capacity == 0 {
		capacity = DefaultCapacity
	}
	if capacity < channel.MinMPSCCapacity {
		return nil, fmt.Errorf("capacity %d: an mpsc channel has at least %d slots: %w", capacity, channel.MinMPSCCapacity, ErrInvalidSize)
	}
	prods := cfg.producers
	if prods == 0 {
		prods = channel.DefaultProducers
	}
	spec := channel.Spec{
		Type:    channel.TypeMPSC,
		Name:    cfg.name,
		Size:    capacity,
		Control: channel.MPSCControlSize(capacity, prods),
		Init:    func(_ mem.Off, b []byte) error { return channel.InitMPSC(b, capacity, prods) },
	}
	return attachEnd(h.buf, id, spec, cfg.capacity, func(en *channel.Entry) (*channel.MPSC, error) {
		return channel.OpenMPSC(h.buf.region, en, channel.WaitOptions{Spin: cfg.spin, CheckInterval: h.buf.cfg.checkInterval})
	}, claim)
}

// MPSCProducer attaches a producer to MPSC channel id, creating the
// channel if needed. ErrBusy: every producer slot is held by a live
// producer.
func (h *Handle) MPSCProducer(id ChannelID, opts ...ChannelOption) (*MPSCProducer, error) {
	if !h.in() {
		return nil, h.closedErr("m p s c producer")
	}
	defer h.out()
	h.enter()
	defer h.leave()
	cfg, err := h.chanConfig(opts)
	if err != nil {
		return nil, fmt.Errorf("ipc: mpsc producer %d: %w", id, err)
	}
	if err := h.check("mpsc producer"); err != nil {
		return nil, err
	}
	var p *channel.MPSCProducer
	en, err := h.attachMPSC(id, cfg, claimUnder(h.buf, (*channel.MPSC).AttachProducer, &p))
	if err != nil {
		return nil, fmt.Errorf("ipc: mpsc producer %d: %w", id, err)
	}
	pr := &MPSCProducer{h: h, en: en, p: p, id: id}
	if err := h.addEnd(pr); err != nil {
		p.Close()
		return nil, err
	}
	return pr, nil
}

// MPSCConsumer attaches the consumer of MPSC channel id, creating the
// channel if needed. ErrBusy: a live process holds the consumer end.
func (h *Handle) MPSCConsumer(id ChannelID, opts ...ChannelOption) (*MPSCConsumer, error) {
	if !h.in() {
		return nil, h.closedErr("m p s c consumer")
	}
	defer h.out()
	h.enter()
	defer h.leave()
	cfg, err := h.chanConfig(opts)
	if err != nil {
		return nil, fmt.Errorf("ipc: mpsc consumer %d: %w", id, err)
	}
	if err := h.check("mpsc consumer"); err != nil {
		return nil, err
	}
	var c *channel.MPSCConsumer
	en, err := h.attachMPSC(id, cfg, claimUnder(h.buf, (*channel.MPSC).AttachConsumer, &c))
	if err != nil {
		return nil, fmt.Errorf("ipc: mpsc consumer %d: %w", id, err)
	}
	co := &MPSCConsumer{recvEnd: recvEnd{id: id, kind: "mpsc channel"}, h: h, en: en, c: c}
	c.Take = co.take
	if err := h.addEnd(co); err != nil {
		c.Close()
		return nil, err
	}
	return co, nil
}

func (p *MPSCProducer) wrap(op string, err error) error {
	if err == nil || err == ErrWouldBlock {
		return err
	}
	return fmt.Errorf("ipc: %s on mpsc channel %d: %w", op, p.id, err)
}

// ID is the channel's id.
func (p *MPSCProducer) ID() ChannelID { return p.id }

// TrySend queues r without waiting (ErrWouldBlock when full).
func (p *MPSCProducer) TrySend(r Record) error {
	if !p.h.in() {
		return p.h.closedErr("try send")
	}
	defer p.h.out()
	s, t, err := p.slot(r)
	if err != nil {
		return p.wrap("send", err)
	}
	return p.wrap("send", sendMarked(t, r.hand(), func() error { return p.p.TrySend(s) }))
}

// Send queues r, waiting while the ring is full (ErrPeerDead if the
// consumer died).
func (p *MPSCProducer) Send(ctx context.Context, r Record) error {
	if !p.h.in() {
		return p.h.closedErr("send")
	}
	defer p.h.out()
	s, t, err := p.slot(r)
	if err != nil {
		return p.wrap("send", err)
	}
	return p.wrap("send", sendMarked(t, r.hand(), func() error { return p.p.Send(ctx, s) }))
}

// slot validates r (this process must hold it, as for a record channel:
// the cheap check first) and returns its ring slot, which carries the
// record's length as a record channel's does (the consumer's take finds
// the trailer by it), and its trailer.
func (p *MPSCProducer) slot(r Record) (uint64, *trailer, error) {
	if p.closed {
		return 0, nil, ErrClosed
	}
	if r.b == nil {
		return 0, nil, fmt.Errorf("zero record: %w", ErrNotAllocated)
	}
	if t, _ := p.h.buf.recs.heldFast(r); t != nil {
		if s, ok := channel.PackSlot(r.off(), len(r.b)); ok {
			return s, t, nil
		}
	}
	return p.h.buf.recs.slot(r)
}

// Close detaches the producer; when the last producer has closed, the
// consumer reads io.EOF once it has received everything.
func (p *MPSCProducer) Close() error {
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

func (p *MPSCProducer) close() error {
	if p.closed {
		return nil
	}
	p.closed = true
	return p.wrap("close", p.h.buf.closeEnd(p.en, func() bool { p.p.Close(); return p.p.Removable() }, nil))
}

// TryReceive takes the next record without waiting: ErrWouldBlock, or
// io.EOF when no producer is attached (after one was) and all is received.
func (c *MPSCConsumer) TryReceive() (Record, error) {
	if !c.h.in() {
		return Record{}, c.h.closedErr("try receive")
	}
	defer c.h.out()
	if err := c.begin(); err != nil {
		return Record{}, err
	}
	return c.finish(c.c.TryReceive())
}

// begin opens a receive: ErrClosed on a closed end, else the Take hook's
// result is cleared.
func (c *MPSCConsumer) begin() error {
	if c.closed {
		return c.wrap("receive", ErrClosed)
	}
	c.taken = taken{}
	return nil
}

// take is the channel's Take hook: this process becomes the holder of the
// record in slot, as a record channel's consumer takes one (the handle's
// slab cache first, which keeps the record's place for Free).
func (c *MPSCConsumer) take(slot uint64) {
	c.taken.ok = true
	if r, ok := c.h.sh.take(slot); ok {
		c.taken.rec, c.taken.err = r, nil
		return
	}
	r, err := c.h.buf.recs.take(slot)
	c.taken.rec, c.taken.err = r, err
}

// finish turns what the channel returned into a Record.
func (c *MPSCConsumer) finish(slot uint64, err error) (Record, error) {
	if err != nil {
		return Record{}, c.wrap("receive", err)
	}
	if !c.taken.ok {
		return Record{}, c.wrap("receive", fmt.Errorf("assertion failed: record %#x received but not taken", uint64(channel.SlotOff(slot))))
	}
	if c.taken.err != nil {
		// records.take names the record.
		return Record{}, c.wrap("receive", c.taken.err)
	}
	return c.taken.rec, nil
}

// Receive takes the next record, waiting as needed. A producer that died
// between claiming a slot and publishing it is detected and its slot
// skipped within about two check intervals.
func (c *MPSCConsumer) Receive(ctx context.Context) (Record, error) {
	if !c.h.in() {
		return Record{}, c.h.closedErr("receive")
	}
	defer c.h.out()
	if err := c.begin(); err != nil {
		return Record{}, err
	}
	return c.finish(c.c.Receive(ctx))
}

// Close detaches the consumer.
func (c *MPSCConsumer) Close() error {
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

func (c *MPSCConsumer) close() error {
	if c.closed {
		return nil
	}
	c.closed = true
	return c.wrap("close", c.h.buf.closeEnd(c.en, func() bool { c.c.Close(); return c.c.Removable() }, nil))
}

func init() {
	open := func(b *Buffer, en *channel.Entry) (*channel.MPSC, error) {
		return channel.OpenMPSC(b.region, en, channel.WaitOptions{})
	}
	registerType(channel.TypeMPSC, typeOps{
		check: func(b *Buffer, en *channel.Entry) error {
			m, err := open(b, en)
			if err != nil {
				return err
			}
			return m.Check()
		},
		pending: func(b *Buffer, en *channel.Entry) ([]mem.Off, error) {
			m, err := open(b, en)
			if err != nil {
				return nil, err
			}
			return m.Pending()
		},
		abandoned: func(b *Buffer, en *channel.Entry) bool {
			m, err := open(b, en)
			return err == nil && m.Abandoned()
		},
		idle: func(b *Buffer, en *channel.Entry) (bool, error) {
			m, err := open(b, en)
			return err == nil && m.Idle(), err
		},
		bell: func(b *Buffer, en *channel.Entry) mem.Off {
			m, err := open(b, en)
			if err != nil {
				return 0
			}
			return m.LiveDoorbell(b.heap, en.Valid)
		},
	})
}
