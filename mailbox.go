package ipc

import (
	"context"
	"errors"
	"fmt"
	"io"

	"github.com/heapipc/ipc/backend"
	"github.com/heapipc/ipc/channel"
	"github.com/heapipc/ipc/internal/mem"
)

// Mailboxes: request/reply between a Requester and a Responder, in any
// processes.
//
//	q, err := h.Requester(9)                         // the client
//	reply, err := q.Request(ctx, []byte("ping"))
//
//	r, err := h2.Responder(9)                        // the server, in any process
//	err = r.Serve(ctx, func(ctx context.Context, req []byte) ([]byte, error) {
//		return handle(req), nil
//	})
//
// Each direction has a window in the buffer (WithWindow, 4 MiB by
// default) and two semaphores of the buffer's semaphore backend forming a
// split binary semaphore (write starts at 1, read at 0), so the window's
// writes and reads strictly alternate and it is never cleared. A message
// of any length, zero included, travels as window-sized chunks, each with
// a header (message sequence number, chunk index, total length) the
// receiver checks; one requester at a time (a second one gets ErrBusy),
// so each message's chunks stay together and in order.
//
// Timeouts and cancellation come from the context. A request given up is
// recognised by its sequence number: the responder skips it, or drops its
// reply, and the mailbox stays usable. A dead peer is reported as
// ErrPeerDead within the buffer's check interval. The semaphores are
// created exclusively with the channel (a stale one of a crashed earlier
// run under the same name is removed and made anew), renewed when an end
// is taken over from a process that died holding one, removed with the
// channel and by Destroy, and made 0600.

// DefaultWindow is the window of a mailbox created without WithWindow:
// 4 MiB each way.
const DefaultWindow = channel.DefaultMailboxWindow

// MailboxOption configures a mailbox end: WithWindow, and any
// ChannelOption (WithName).
type MailboxOption interface {
	applyMailbox(*mailboxConfig) error
}

type mailboxConfig struct {
	ch     chanConfig
	window uint64
}

func (o ChannelOption) applyMailbox(c *mailboxConfig) error { return o(&c.ch) }

type mailboxOption func(*mailboxConfig) error

func (o mailboxOption) applyMailbox(c *mailboxConfig) error { return o(c) }

// WithWindow sets the window of a mailbox to create, in bytes (64 B to
// 4 GiB), for each direction: messages larger than it travel in several
// chunks. Attaching with another window is ErrSizeMismatch.
func WithWindow(n int) MailboxOption {
	return mailboxOption(func(c *mailboxConfig) error {
		if n < channel.MinMailboxWindow || uint64(n) > channel.MaxMailboxWindow {
			return fmt.Errorf("mailbox window %d (%d..%d): %w", n, channel.MinMailboxWindow, uint64(channel.MaxMailboxWindow), ErrInvalidSize)
		}
		c.window = uint64(n)
		return nil
	})
}

// openMailbox finds or creates mailbox id and attaches an end of it
// (attach) (see attachChannel).
func (h *Handle) openMailbox(id ChannelID, opts []MailboxOption, attach func(*channel.Mailbox) error) (*channel.Entry, error) {
	var cfg mailboxConfig
	for _, o := range opts {
		if err := o.applyMailbox(&cfg); err != nil {
			return nil, err
		}
	}
	window := cfg.window
	if window == 0 {
		window = DefaultWindow
	}
	b := h.buf
	sems, err := b.region.Semaphores()
	if err != nil {
		return nil, err
	}
	spec := channel.Spec{
		Type:    channel.TypeMailbox,
		Name:    cfg.ch.name,
		Size:    window,
		Control: channel.MailboxControlSize(window),
		Init: func(_ mem.Off, bytes []byte) error {
			return channel.InitMailbox(bytes, window, sems, b.region.Name(), id)
		},
	}
	open := func(en *channel.Entry) (*channel.Mailbox, error) {
		return channel.OpenMailbox(b.reg, en, channel.WaitOptions{CheckInterval: b.cfg.checkInterval})
	}
	// The mailbox's attach claims under the registry lock itself.
	return attachEnd(b, id, spec, cfg.window, open,
		func(_ *channel.Entry, m *channel.Mailbox) error { return attach(m) })
}

// Requester opens the requester end of mailbox id, creating the mailbox
// if it does not exist. ErrBusy: a live process holds the requester end
// (a dead one's is taken over); ErrWrongType: id is a channel of another
// type.
func (h *Handle) Requester(id ChannelID, opts ...MailboxOption) (*Requester, error) {
	if !h.in() {
		return nil, h.closedErr("requester")
	}
	defer h.out()
	h.enter()
	defer h.leave()
	if err := h.check("requester"); err != nil {
		return nil, err
	}
	var q *channel.MailboxRequester
	en, err := h.openMailbox(id, opts, func(m *channel.Mailbox) (err error) {
		q, err = m.AttachRequester(context.Background())
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("ipc: requester %d: %w", id, err)
	}
	rq := &Requester{mailboxEnd: mailboxEnd{h: h, en: en, id: id}, q: q}
	if err := h.addEnd(rq); err != nil {
		q.Close()
		return nil, err
	}
	return rq, nil
}

// Responder opens the responder end of mailbox id, creating the mailbox
// if it does not exist. ErrBusy: a live process holds the responder end
// (a dead one's is taken over); ErrWrongType: id is a channel of another
// type.
func (h *Handle) Responder(id ChannelID, opts ...MailboxOption) (*Responder, error) {
	if !h.in() {
		return nil, h.closedErr("responder")
	}
	defer h.out()
	h.enter()
	defer h.leave()
	if err := h.check("responder"); err != nil {
		return nil, err
	}
	var r *channel.MailboxResponder
	en, err := h.openMailbox(id, opts, func(m *channel.Mailbox) (err error) {
		r, err = m.AttachResponder(context.Background())
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("ipc: responder %d: %w", id, err)
	}
	rs := &Responder{mailboxEnd: mailboxEnd{h: h, en: en, id: id}, r: r}
	if err := h.addEnd(rs); err != nil {
		r.Close()
		return nil, err
	}
	return rs, nil
}

// RemoveMailbox removes mailbox id and its semaphores for everyone. Its
// ends must be closed (ErrBusy if a live process holds one).
func (h *Handle) RemoveMailbox(ctx context.Context, id ChannelID) error {
	if !h.in() {
		return h.closedErr("remove mailbox")
	}
	defer h.out()
	return h.removeChannel(ctx, id, channel.TypeMailbox, func(en *channel.Entry) (bool, func() error, error) {
		m, err := channel.OpenMailbox(h.buf.reg, en, channel.WaitOptions{})
		if err != nil {
			return false, nil, err
		}
		return m.Idle(), func() error {
			if removeHook != nil {
				removeHook("mailbox:sems")
			}
			return m.RemoveSems()
		}, nil
	})
}

// mailboxEnd is what both facade ends share.
type mailboxEnd struct {
	h      *Handle
	en     *channel.Entry
	id     ChannelID
	closed bool
}

// ID is the mailbox's channel id.
func (e *mailboxEnd) ID() ChannelID { return e.id }

func (e *mailboxEnd) wrap(op string, err error) error {
	if err == nil || err == io.EOF || err == ErrWouldBlock {
		return err
	}
	return fmt.Errorf("ipc: %s on mailbox %d: %w", op, e.id, err)
}

// Requester is the requesting end of a mailbox. It belongs to the Handle
// that opened it and, like it, to one goroutine at a time.
type Requester struct {
	mailboxEnd
	q *channel.MailboxRequester
}

// Request sends msg (any length, zero included) and returns the reply, in
// a new slice. It returns ErrPeerDead if the responder dies before the
// reply is through, io.ErrClosedPipe if a responder attached during the
// request closes its end without answering, ErrAborted if the responder's
// handler failed, ErrDestroyed, or ctx's error (while no responder is
// attached, it waits for one). After an error the
// mailbox stays usable: a late reply to a request given up is dropped.
func (q *Requester) Request(ctx context.Context, msg []byte) ([]byte, error) {
	if !q.h.in() {
		return nil, q.h.closedErr("request")
	}
	defer q.h.out()
	return q.RequestInto(ctx, msg, nil)
}

// RequestInto is Request with the reply appended to dst[:0] (reusing its
// memory when it is large enough).
func (q *Requester) RequestInto(ctx context.Context, msg, dst []byte) ([]byte, error) {
	if !q.h.in() {
		return nil, q.h.closedErr("request into")
	}
	defer q.h.out()
	if q.closed {
		return nil, q.wrap("request", ErrClosed)
	}
	reply, err := q.q.Request(ctx, msg, dst)
	return reply, q.wrap("request", err)
}

// Close closes the requester end: the responder's Receive (or Serve)
// ends with io.EOF (nil). A mailbox whose both ends have closed is
// removed with its semaphores.
func (q *Requester) Close() error {
	if !q.h.in() {
		return nil
	}
	defer q.h.out()
	if q.closed {
		return nil
	}
	q.h.dropEnd(q)
	return q.close()
}

func (q *Requester) close() error {
	if q.closed {
		return nil
	}
	q.closed = true
	return q.wrap("close", q.h.buf.closeEnd(q.en, q.q.Close, q.q.RemoveSems))
}

// Responder is the responding end of a mailbox. It belongs to the Handle
// that opened it and, like it, to one goroutine at a time.
type Responder struct {
	mailboxEnd
	r   *channel.MailboxResponder
	req []byte
}

// Handler answers a request. req is valid until it returns. An error
// aborts the reply: the request fails with ErrAborted and Serve returns
// the error.
type Handler func(ctx context.Context, req []byte) (reply []byte, err error)

// Serve answers requests with handler until the requester closes its end
// (nil), the handler fails (its error), the requester dies (ErrPeerDead,
// once per dead requester: call Serve again to wait for the next one),
// the buffer is destroyed, or ctx is done.
func (r *Responder) Serve(ctx context.Context, handler Handler) error {
	for {
		req, err := r.Receive(ctx, r.req)
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
		r.req = req
		reply, herr := handler(ctx, req)
		if herr != nil {
			aerr := r.r.ReplyFrom(ctx, 0, func([]byte, uint64) error { return herr })
			if !errors.Is(aerr, herr) {
				return errors.Join(herr, r.wrap("reply", aerr))
			}
			return herr
		}
		if err := r.Reply(ctx, reply); err != nil {
			return err
		}
	}
}

// Receive waits for the next request and returns it appended to dst[:0];
// answer it with Reply or ReplyFrom before the next Receive. It returns
// io.EOF when the requester closed its end, ErrPeerDead once per
// requester that died (mid-message or idle; a new one may attach),
// ErrDestroyed, or ctx's error.
func (r *Responder) Receive(ctx context.Context, dst []byte) ([]byte, error) {
	if !r.h.in() {
		return nil, r.h.closedErr("receive")
	}
	defer r.h.out()
	if r.closed {
		return nil, r.wrap("receive", ErrClosed)
	}
	req, err := r.r.Receive(ctx, dst)
	return req, r.wrap("receive", err)
}

// Reply answers the request Receive returned. If the requester gave up
// waiting meanwhile, the reply is dropped and nil returned. ErrPeerDead:
// the requester died before the reply was through.
func (r *Responder) Reply(ctx context.Context, msg []byte) error {
	if !r.h.in() {
		return r.h.closedErr("reply")
	}
	defer r.h.out()
	if r.closed {
		return r.wrap("reply", ErrClosed)
	}
	return r.wrap("reply", r.r.Reply(ctx, msg))
}

// ReplyFrom answers the request Receive returned with n bytes read from
// src straight into the window, chunk by chunk (a large reply need not be
// in memory). If src fails or ends early, the reply is aborted (the
// request fails with ErrAborted) and the error returned.
func (r *Responder) ReplyFrom(ctx context.Context, n int64, src io.Reader) error {
	if !r.h.in() {
		return r.h.closedErr("reply from")
	}
	defer r.h.out()
	if r.closed {
		return r.wrap("reply", ErrClosed)
	}
	if n < 0 {
		return r.wrap("reply", fmt.Errorf("reply of %d bytes: %w", n, ErrInvalidSize))
	}
	return r.wrap("reply", r.r.ReplyFrom(ctx, uint64(n), func(dst []byte, _ uint64) error {
		_, err := io.ReadFull(src, dst)
		return err
	}))
}

// Close closes the responder end: requests fail with io.ErrClosedPipe. A
// mailbox whose both ends have closed is removed with its semaphores.
func (r *Responder) Close() error {
	if !r.h.in() {
		return nil
	}
	defer r.h.out()
	if r.closed {
		return nil
	}
	r.h.dropEnd(r)
	return r.close()
}

func (r *Responder) close() error {
	if r.closed {
		return nil
	}
	r.closed = true
	return r.wrap("close", r.h.buf.closeEnd(r.en, r.r.Close, r.r.RemoveSems))
}

func mailboxSems(b *Buffer) (backend.SemaphoreBackend, error) {
	return b.region.Semaphores()
}

func init() {
	registerType(channel.TypeMailbox, typeOps{
		check: func(b *Buffer, en *channel.Entry) error {
			m, err := channel.OpenMailbox(b.reg, en, channel.WaitOptions{})
			if err != nil {
				return err
			}
			ext, err := b.heap.Extent(en.Control)
			if err != nil {
				return err
			}
			if ext.Size < channel.MailboxControlSize(en.Size) {
				return fmt.Errorf("mailbox extent of %d bytes for a window of %d: %w", ext.Size, en.Size, ErrCorrupt)
			}
			return m.Check()
		},
		abandoned: func(b *Buffer, en *channel.Entry) bool {
			m, err := channel.OpenMailbox(b.reg, en, channel.WaitOptions{})
			return err == nil && m.Abandoned()
		},
		idle: func(b *Buffer, en *channel.Entry) (bool, error) {
			m, err := channel.OpenMailbox(b.reg, en, channel.WaitOptions{})
			return err == nil && m.Idle(), err
		},
		free: func(b *Buffer, en *channel.Entry) error {
			sems, err := mailboxSems(b)
			if err != nil {
				return err
			}
			return channel.RemoveMailboxSems(sems, channel.MailboxSemNames(b.region.Name(), en.ID))
		},
		destroy: func(b *Buffer, en *channel.Entry) error {
			sems, err := mailboxSems(b)
			if err != nil {
				return err
			}
			return channel.RemoveMailboxSems(sems, channel.MailboxSemNames(b.region.Name(), en.ID))
		},
	})
}
