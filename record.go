package ipc

import (
	"context"
	"errors"
	"fmt"
	"io"

	"github.com/heapipc/ipc/channel"
	"github.com/heapipc/ipc/internal/mem"
)

// Producer is the sending end of a record channel. It belongs to the
// Handle that opened it and, like it, to one goroutine at a time.
type Producer struct {
	h      *Handle
	en     *channel.Entry
	p      *channel.RecordProducer
	id     ChannelID
	batch  []mem.Off
	closed bool
}

// ID is the channel's id.
func (p *Producer) ID() ChannelID { return p.id }

func (p *Producer) wrap(op string, err error) error {
	if err == nil {
		return nil
	}
	return fmt.Errorf("ipc: %s on channel %d: %w", op, p.id, err)
}

func (p *Producer) validate(r Record) error {
	if r.b == nil {
		return fmt.Errorf("zero record: %w", ErrNotAllocated)
	}
	return p.h.buf.recs.validate(r.off, r.b)
}

// TrySend queues r without waiting: ErrWouldBlock if the ring is full.
// After a successful send the record belongs to the consumer: do not touch
// or free it. Sending a record that was freed is an error (ErrDoubleFree
// or ErrNotAllocated) and sends nothing.
func (p *Producer) TrySend(r Record) error {
	if p.closed {
		return p.wrap("send", ErrClosed)
	}
	if err := p.validate(r); err != nil {
		return p.wrap("send", err)
	}
	return p.wrap("send", p.p.TrySend(r.off))
}

// Send queues r, waiting while the ring is full: spinning briefly, then
// parked on a futex. It returns ErrPeerDead if the consumer dies,
// ErrDestroyed if the buffer is destroyed, or ctx's error.
func (p *Producer) Send(ctx context.Context, r Record) error {
	if p.closed {
		return p.wrap("send", ErrClosed)
	}
	if err := p.validate(r); err != nil {
		return p.wrap("send", err)
	}
	return p.wrap("send", p.p.Send(ctx, r.off))
}

// SendBatch queues all of rs in order, publishing as many as fit at a time
// and waiting for room as Send does. It returns how many were queued
// (those belong to the consumer now) and an error if not all were.
func (p *Producer) SendBatch(ctx context.Context, rs []Record) (int, error) {
	if p.closed {
		return 0, p.wrap("send batch", ErrClosed)
	}
	if cap(p.batch) < len(rs) {
		p.batch = make([]mem.Off, len(rs))
	}
	offs := p.batch[:len(rs)]
	for i, r := range rs {
		if err := p.validate(r); err != nil {
			return 0, p.wrap("send batch", fmt.Errorf("record %d: %w", i, err))
		}
		offs[i] = r.off
	}
	sent := 0
	for sent < len(offs) {
		n, err := p.p.TrySendBatch(offs[sent:])
		sent += n
		if err != nil {
			return sent, p.wrap("send batch", err)
		}
		if sent < len(offs) && n == 0 {
			if err := p.p.WaitRoom(ctx); err != nil {
				return sent, p.wrap("send batch", err)
			}
		}
	}
	return sent, nil
}

// Close closes the producer end: the consumer receives what is queued,
// then io.EOF. A channel whose both ends have closed and that is drained
// is removed from the buffer.
func (p *Producer) Close() error {
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
	if p.p.Close() {
		return p.wrap("close", p.h.buf.removeRecordChannel(context.Background(), p.en, true))
	}
	return nil
}

// Consumer is the receiving end of a record channel. It belongs to the
// Handle that opened it and, like it, to one goroutine at a time.
type Consumer struct {
	recvEnd
	h     *Handle
	en    *channel.Entry
	c     *channel.RecordConsumer
	batch []mem.Off
}

// recvEnd is what the receiving ends (Consumer, MPSCConsumer) share: the
// id, the closed flag, and the views the channel's Take hook collected.
type recvEnd struct {
	id     ChannelID
	kind   string // "channel" or "mpsc channel", for errors
	taken  takenViews
	closed bool
}

// ID is the channel's id.
func (e *recvEnd) ID() ChannelID { return e.id }

func (e *recvEnd) wrap(op string, err error) error {
	if err == nil || err == io.EOF {
		return err
	}
	return fmt.Errorf("ipc: %s on %s %d: %w", op, e.kind, e.id, err)
}

// begin opens a receive: ErrClosed on a closed end, else the collected
// views are cleared for the channel's Take hook.
func (e *recvEnd) begin() error {
	if e.closed {
		return e.wrap("receive", ErrClosed)
	}
	e.taken.reset()
	return nil
}

// finish turns what the channel returned into a Record.
func (e *recvEnd) finish(off mem.Off, err error) (Record, error) {
	if err != nil {
		return Record{}, e.wrap("receive", err)
	}
	r, err := e.taken.record(0, off)
	return r, e.wrap("receive", err)
}

// takenViews collects what records.take returned for the records a
// channel consumer took, in order.
type takenViews struct {
	views [][]byte
	errs  []error
}

func (t *takenViews) reset() {
	clear(t.views)
	t.views, t.errs = t.views[:0], t.errs[:0]
}

func (t *takenViews) hook(rs *records) func(mem.Off) {
	return func(off mem.Off) { t.take(rs, off) }
}

// batchHook is hook for a batch of offsets at once.
func (t *takenViews) batchHook(rs *records) func([]mem.Off) {
	return func(offs []mem.Off) {
		for _, off := range offs {
			t.take(rs, off)
		}
	}
}

func (t *takenViews) take(rs *records, off mem.Off) {
	v, err := rs.take(off)
	t.views = append(t.views, v)
	t.errs = append(t.errs, err)
}

func (t *takenViews) record(i int, off mem.Off) (Record, error) {
	if i >= len(t.views) {
		return Record{}, fmt.Errorf("assertion failed: record %d of %d taken", i, len(t.views))
	}
	if err := t.errs[i]; err != nil {
		return Record{}, fmt.Errorf("queued record at %#x: %w", uint64(off), err)
	}
	return Record{off: off, b: t.views[i]}, nil
}

// TryReceive takes the next record without waiting: ErrWouldBlock if none
// is queued, io.EOF if none is and the producer has closed. The record is
// the caller's: free it, or send it on (zero-copy).
func (c *Consumer) TryReceive() (Record, error) {
	if err := c.begin(); err != nil {
		return Record{}, err
	}
	return c.finish(c.c.TryReceive())
}

// Receive takes the next record, waiting while none is queued: spinning
// briefly, then parked on a futex. It returns io.EOF once the producer has
// closed and everything is received, ErrPeerDead if the producer died
// (after what it queued), ErrDestroyed, or ctx's error.
func (c *Consumer) Receive(ctx context.Context) (Record, error) {
	if err := c.begin(); err != nil {
		return Record{}, err
	}
	return c.finish(c.c.Receive(ctx))
}

// ReceiveBatch waits as Receive does until at least one record is queued,
// then takes up to len(rs) of them at once and returns how many.
func (c *Consumer) ReceiveBatch(ctx context.Context, rs []Record) (int, error) {
	if c.closed {
		return 0, c.wrap("receive batch", ErrClosed)
	}
	if len(rs) == 0 {
		return 0, nil
	}
	if cap(c.batch) < len(rs) {
		c.batch = make([]mem.Off, len(rs))
	}
	offs := c.batch[:len(rs)]
	for {
		c.taken.reset()
		n, err := c.c.TryReceiveBatch(offs)
		if err != nil {
			return 0, c.wrap("receive batch", err)
		}
		if n > 0 {
			var all []error
			k := 0
			for i, off := range offs[:n] {
				r, err := c.taken.record(i, off)
				if err != nil {
					all = append(all, err)
					continue
				}
				rs[k] = r
				k++
			}
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
	if c.c.Close() {
		return c.wrap("close", c.h.buf.removeRecordChannel(context.Background(), c.en, true))
	}
	return nil
}
