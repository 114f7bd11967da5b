package ipc

import (
	"context"
	"fmt"
	"io"

	"github.com/heapipc/ipc/channel"
	"github.com/heapipc/ipc/internal/errs"
	"github.com/heapipc/ipc/internal/mem"
)

// Stream channels: a byte ring of any length between one writer end and
// one reader end, in the buffer (libshbuf's shared buffer).
//
//	w, err := h.StreamWriter(7, ipc.WithStreamCapacity(1<<20))
//	r, err := h2.StreamReader(7, ipc.WithBacklog(64<<10)) // in any process
//	io.Copy(w, src)                                        // w.ReadFrom: straight into the ring
//	io.Copy(dst, r)                                        // r.WriteTo: straight from the ring
//
// Zero-copy: the writer asks for its writable Spans (two when the room
// wraps around the end of the ring, or Reserve for n contiguous bytes),
// fills them and Commits n bytes; the reader asks for its readable Spans
// (or View for n contiguous bytes), uses them and Consumes n bytes.
//
// Backlog: the reader may keep up to n consumed bytes (WithBacklog,
// SetBacklog), look back at them (Backlog) and Rewind into them. The writer
// never overwrites the backlog: a span handed out stays valid while it is
// held, and a Rewind of up to what Backlog reports always succeeds. The
// price is capacity: once that much has been read, the writer has
// capacity - backlog bytes of room; the reader gives room back at once by
// lowering the backlog.
//
// Full access: either end may Peek, Reset (drop everything) or Zero (reset
// and clear every byte) at any time. A commit or consume computed before a
// reset fails with ErrReset and is dropped, never applied to the new state
// (each position word carries the stream's generation).
//
// Notification: WaitData, WaitSpace and WaitReset block with a context;
// Notify gives a channel to select on. The other end pays a futex wake-up
// only when someone waits. A dead peer is reported as ErrPeerDead within
// the buffer's check interval (WithCheckInterval); a reader gets what the
// dead writer committed first.

// StreamEvent is what Notify watches: StreamData, StreamSpace or
// StreamReset.
type StreamEvent = channel.StreamEvent

// Stream events.
const (
	StreamData  = channel.EventData  // bytes to read (the reader's)
	StreamSpace = channel.EventSpace // room to write (the writer's)
	StreamReset = channel.EventReset // a reset or zero (either end's)
)

// StreamStats is a snapshot of a stream: capacity, bytes buffered, room,
// backlog, generation (resets so far) and the written and read counters.
type StreamStats = channel.StreamStats

// DefaultStreamCapacity is the ring size of a stream created without
// WithStreamCapacity: 1 MiB.
const DefaultStreamCapacity = 1 << 20

// MaxStreamCapacity is the largest stream ring (1 TiB).
const MaxStreamCapacity = channel.MaxStreamCapacity

// StreamOption configures a stream end: WithStreamCapacity, WithBacklog,
// and any ChannelOption (WithName, WithSpin; WithCapacity sets a
// power-of-two capacity).
type StreamOption interface {
	applyStream(*streamConfig) error
}

type streamConfig struct {
	ch         chanConfig
	capacity   uint64
	backlog    uint64
	backlogSet bool
}

func (o ChannelOption) applyStream(c *streamConfig) error { return o(&c.ch) }

type streamOption func(*streamConfig) error

func (o streamOption) applyStream(c *streamConfig) error { return o(c) }

// WithStreamCapacity sets the ring size of a stream to create, in bytes
// (any length from 1 to MaxStreamCapacity). Attaching with another
// capacity is ErrSizeMismatch.
func WithStreamCapacity(n int) StreamOption {
	return streamOption(func(c *streamConfig) error {
		if n <= 0 || uint64(n) > channel.MaxStreamCapacity {
			return fmt.Errorf("stream capacity %d (1..%d): %w", n, uint64(channel.MaxStreamCapacity), ErrInvalidSize)
		}
		c.capacity = uint64(n)
		return nil
	})
}

// WithBacklog sets how many consumed bytes the stream keeps for look-back
// and Rewind (below the capacity): the initial value for a stream being
// created; a reader opening an existing stream with it sets it
// (StreamReader.SetBacklog), and a writer's is then only checked (at or
// above the stream's capacity: ErrInvalidArgument, as at creation).
func WithBacklog(n int) StreamOption {
	return streamOption(func(c *streamConfig) error {
		if n < 0 {
			return fmt.Errorf("backlog %d: %w", n, ErrInvalidArgument)
		}
		c.backlog, c.backlogSet = uint64(n), true
		return nil
	})
}

// attachStream opens stream id, creating it if needed, and claims an end
// with claim (see attachChannel).
func (h *Handle) attachStream(id ChannelID, opts []StreamOption, claim func(*channel.Entry, *channel.Stream) error) (*channel.Entry, streamConfig, error) {
	var cfg streamConfig
	for _, o := range opts {
		if err := o.applyStream(&cfg); err != nil {
			return nil, cfg, err
		}
	}
	capacity := cfg.capacity
	if capacity == 0 {
		capacity = cfg.ch.capacity
	}
	want := capacity
	if capacity == 0 {
		capacity = DefaultStreamCapacity
	}
	backlog := cfg.backlog // checked against the capacity by InitStream
	spec := channel.Spec{
		Type:    channel.TypeStream,
		Name:    cfg.ch.name,
		Size:    capacity,
		Control: channel.StreamControlSize(capacity),
		Init:    func(_ mem.Off, b []byte) error { return channel.InitStream(b, capacity, backlog) },
	}
	en, err := attachEnd(h.buf, id, spec, want, func(en *channel.Entry) (*channel.Stream, error) {
		return channel.OpenStream(h.buf.region, en, channel.WaitOptions{Spin: cfg.ch.spin, CheckInterval: h.buf.cfg.checkInterval})
	}, claim)
	return en, cfg, err
}

// StreamWriter opens the writer end of stream id, creating the stream if
// it does not exist. ErrBusy: a live process holds the writer end (a dead
// one's is taken over); ErrWrongType: id is a channel of another type.
func (h *Handle) StreamWriter(id ChannelID, opts ...StreamOption) (*StreamWriter, error) {
	if !h.in() {
		return nil, h.closedErr("stream writer")
	}
	defer h.out()
	h.enter()
	defer h.leave()
	if err := h.check("stream writer"); err != nil {
		return nil, err
	}
	var w *channel.StreamWriter
	en, cfg, err := h.attachStream(id, opts, claimUnder(h.buf, (*channel.Stream).AttachWriter, &w))
	if err != nil {
		return nil, fmt.Errorf("ipc: stream writer %d: %w", id, err)
	}
	// The backlog is the stream's to keep (the reader sets it); a writer's
	// is the initial one of a stream it creates, and one the stream could
	// not have is refused as it is at creation.
	if cfg.backlogSet && cfg.backlog >= uint64(w.Cap()) {
		w.Refuse()
		return nil, fmt.Errorf("ipc: stream writer %d: backlog %d (below the capacity %d): %w", id, cfg.backlog, w.Cap(), ErrInvalidArgument)
	}
	sw := &StreamWriter{streamEnd: streamEnd{h: h, en: en, id: id, ctx: context.Background()}, w: w}
	sw.streamEnd.e = w
	if err := h.addEnd(sw); err != nil {
		w.Refuse() // as if it had not opened
		return nil, err
	}
	return sw, nil
}

// StreamReader opens the reader end of stream id, creating the stream if
// it does not exist. ErrBusy: a live process holds the reader end (a dead
// one's is taken over); ErrWrongType: id is a channel of another type.
func (h *Handle) StreamReader(id ChannelID, opts ...StreamOption) (*StreamReader, error) {
	if !h.in() {
		return nil, h.closedErr("stream reader")
	}
	defer h.out()
	h.enter()
	defer h.leave()
	if err := h.check("stream reader"); err != nil {
		return nil, err
	}
	var r *channel.StreamReader
	en, cfg, err := h.attachStream(id, opts, claimUnder(h.buf, (*channel.Stream).AttachReader, &r))
	if err != nil {
		return nil, fmt.Errorf("ipc: stream reader %d: %w", id, err)
	}
	if cfg.backlogSet && uint64(r.BacklogLimit()) != cfg.backlog {
		if err := r.SetBacklog(int(cfg.backlog)); err != nil {
			r.Refuse()
			return nil, fmt.Errorf("ipc: stream reader %d: %w", id, err)
		}
	}
	sr := &StreamReader{streamEnd: streamEnd{h: h, en: en, id: id, ctx: context.Background()}, r: r}
	sr.streamEnd.e = r
	if err := h.addEnd(sr); err != nil {
		r.Refuse() // as if it had not opened
		return nil, err
	}
	return sr, nil
}

// RemoveStream removes stream id for everyone, dropping what is buffered.
// Its ends must be closed (ErrBusy if a live process holds one).
func (h *Handle) RemoveStream(ctx context.Context, id ChannelID) error {
	if !h.in() {
		return h.closedErr("remove stream")
	}
	defer h.out()
	return h.removeChannel(ctx, id, channel.TypeStream, func(en *channel.Entry) (bool, func() error, error) {
		s, err := channel.OpenStream(h.buf.region, en, channel.WaitOptions{})
		if err != nil {
			return false, nil, err
		}
		return s.Idle(), nil, nil
	})
}

// streamOps is what both stream ends share in the channel layer.
type streamOps interface {
	Reset() error
	Zero() error
	Peek(p []byte) (int, error)
	Generation() uint64
	WaitReset(ctx context.Context, since uint64) error
	Stats() (channel.StreamStats, error)
}

// streamEnd is what both facade ends share.
type streamEnd struct {
	h      *Handle
	en     *channel.Entry
	id     ChannelID
	e      streamOps
	ctx    context.Context
	closed bool
	gen    uint64 // the generation when the end closed (Generation)
}

// ID is the stream's channel id.
func (e *streamEnd) ID() ChannelID { return e.id }

func (e *streamEnd) wrap(op string, err error) error {
	if err == nil || err == io.EOF || err == ErrWouldBlock {
		return err
	}
	return fmt.Errorf("ipc: %s on stream %d: %w", op, e.id, err)
}

func (e *streamEnd) check(op string) error {
	if e.closed {
		return e.wrap(op, ErrClosed)
	}
	return nil
}

// SetContext sets the context the io methods (Write and ReadFrom, Read
// and WriteTo), which take none, wait under; the default is
// context.Background(): they wait until there is room or data, the peer
// closes or dies, or the buffer is destroyed.
func (e *streamEnd) SetContext(ctx context.Context) { e.ctx = ctx }

// Reset empties the stream, from either end, at any time: unread bytes
// and the backlog are dropped, and a commit or consume in flight fails
// with ErrReset.
func (e *streamEnd) Reset() error {
	if !e.h.in() {
		return e.h.closedErr("reset")
	}
	defer e.h.out()
	if err := e.check("reset"); err != nil {
		return err
	}
	return e.wrap("reset", e.e.Reset())
}

// Zero resets the stream and clears every byte of its ring. The writer
// gets no room until the bytes are cleared; ErrBusy if another end is
// zeroing it now.
func (e *streamEnd) Zero() error {
	if !e.h.in() {
		return e.h.closedErr("zero")
	}
	defer e.h.out()
	if err := e.check("zero"); err != nil {
		return err
	}
	return e.wrap("zero", e.e.Zero())
}

// Peek copies up to len(p) unread bytes into p without consuming them
// (either end may peek).
func (e *streamEnd) Peek(p []byte) (int, error) {
	if !e.h.in() {
		return 0, e.h.closedErr("peek")
	}
	defer e.h.out()
	if err := e.check("peek"); err != nil {
		return 0, err
	}
	n, err := e.e.Peek(p)
	return n, e.wrap("peek", err)
}

// Generation is the number of resets (and zeroes) so far; on a closed
// end, the number when it closed (the stream may be gone since).
func (e *streamEnd) Generation() uint64 {
	if !e.h.in() {
		return e.gen
	}
	defer e.h.out()
	if e.closed {
		return e.gen
	}
	return e.e.Generation()
}

// WaitReset waits until the stream is reset, i.e. until its generation
// differs from since (a value of Generation).
func (e *streamEnd) WaitReset(ctx context.Context, since uint64) error {
	if !e.h.in() {
		return e.h.closedErr("wait reset")
	}
	defer e.h.out()
	if err := e.check("wait reset"); err != nil {
		return err
	}
	return e.wrap("wait reset", e.e.WaitReset(ctx, since))
}

// Stats returns a snapshot of the stream.
func (e *streamEnd) Stats() (StreamStats, error) {
	if !e.h.in() {
		return StreamStats{}, e.h.closedErr("stats")
	}
	defer e.h.out()
	if err := e.check("stats"); err != nil {
		return StreamStats{}, err
	}
	st, err := e.e.Stats()
	return st, e.wrap("stats", err)
}

// StreamWriter is the writer end of a stream. It belongs to the Handle
// that opened it and, like it, to one goroutine at a time (the channels
// Notify returns may be received from anywhere). It is an io.Writer and an
// io.ReaderFrom, so io.Copy(w, src) fills the ring straight from src.
type StreamWriter struct {
	streamEnd
	w *channel.StreamWriter
}

// Spans returns the writable bytes: one span, or two when the room wraps
// around the end of the ring (fill a, then b), views into shared memory
// valid until the next call on this end. Commit publishes what was
// filled. Empty spans: the ring is full (WaitSpace). io.ErrClosedPipe: the
// reader closed its end.
func (w *StreamWriter) Spans() (a, b []byte, err error) {
	if !w.h.in() {
		return nil, nil, w.h.closedErr("spans")
	}
	defer w.h.out()
	if err := w.check("spans"); err != nil {
		return nil, nil, err
	}
	a, b, err = w.w.Spans()
	return a, b, w.wrap("spans", err)
}

// Reserve returns n contiguous writable bytes: a span of the ring when
// they do not wrap, otherwise a staging buffer that Commit copies in.
// Commit then publishes at most those n. ErrWouldBlock: less room than n
// now; what Spans or Reserve handed out before stays the caller's.
func (w *StreamWriter) Reserve(n int) ([]byte, error) {
	if !w.h.in() {
		return nil, w.h.closedErr("reserve")
	}
	defer w.h.out()
	if err := w.check("reserve"); err != nil {
		return nil, err
	}
	v, err := w.w.Reserve(n)
	if err == ErrWouldBlock {
		return nil, err
	}
	return v, w.wrap("reserve", err)
}

// Commit publishes the first n bytes of the spans (or of the reserved
// view) to the reader; after Spans it may be called several times for
// consecutive parts. ErrInvalidArgument: more than was handed out, or
// nothing is (TryWrite, Write and ReadFrom leave nothing handed out).
// ErrReset: the stream was reset since the spans were handed out, and
// nothing was published.
func (w *StreamWriter) Commit(n int) error {
	if !w.h.in() {
		return w.h.closedErr("commit")
	}
	defer w.h.out()
	if err := w.check("commit"); err != nil {
		return err
	}
	return w.wrap("commit", w.w.Commit(n))
}

// TryWrite writes as much of p as fits now: ErrWouldBlock if nothing
// does.
func (w *StreamWriter) TryWrite(p []byte) (int, error) {
	if !w.h.in() {
		return 0, w.h.closedErr("try write")
	}
	defer w.h.out()
	if err := w.check("write"); err != nil {
		return 0, err
	}
	n, err := w.w.TryWrite(p)
	if err == ErrWouldBlock {
		return 0, err
	}
	return n, w.wrap("write", err)
}

// Write writes all of p, waiting for room under the end's context (see
// SetContext). It implements io.Writer.
func (w *StreamWriter) Write(p []byte) (int, error) { return w.WriteContext(w.ctx, p) }

// WriteContext writes all of p, waiting for room as WaitSpace does.
func (w *StreamWriter) WriteContext(ctx context.Context, p []byte) (int, error) {
	if !w.h.in() {
		return 0, w.h.closedErr("write context")
	}
	defer w.h.out()
	if err := w.check("write"); err != nil {
		return 0, err
	}
	n, err := w.w.Write(ctx, p)
	return n, w.wrap("write", err)
}

// ReadFrom reads src straight into the ring until io.EOF, waiting for
// room under the end's context. It implements io.ReaderFrom.
func (w *StreamWriter) ReadFrom(src io.Reader) (int64, error) {
	if !w.h.in() {
		return 0, w.h.closedErr("read from")
	}
	defer w.h.out()
	if err := w.check("read from"); err != nil {
		return 0, err
	}
	n, err := w.w.ReadFrom(w.ctx, src)
	return n, w.wrap("read from", err)
}

// WaitSpace waits until the writer has room: spinning briefly (WithSpin),
// then parked on a futex. It returns io.ErrClosedPipe if the reader
// closed its end, ErrPeerDead if it died, ErrDestroyed, or ctx's error.
func (w *StreamWriter) WaitSpace(ctx context.Context) error {
	if !w.h.in() {
		return w.h.closedErr("wait space")
	}
	defer w.h.out()
	if err := w.check("wait space"); err != nil {
		return err
	}
	return w.wrap("wait space", w.w.WaitSpace(ctx))
}

// Notify returns a channel to select on that receives a value whenever ev
// holds: StreamSpace (room to write) or StreamReset. It is level-triggered
// and a value may be spurious (check with Spans or TryWrite). A goroutine
// feeds it; while ev does not hold it is parked on a futex — one OS thread
// blocked in the kernel, woken every check interval to check the reader —
// and the reader pays a wake-up syscall only then. The channel is closed
// and the goroutine ends when ctx is done, this end is closed, the reader
// closed or died, or the buffer was destroyed: cancel ctx to stop it.
func (w *StreamWriter) Notify(ctx context.Context, ev StreamEvent) <-chan struct{} {
	if !w.h.in() {
		return closedChan()
	}
	defer w.h.out()
	return w.w.Notify(ctx, ev)
}

// Close closes the writer end: the reader reads what is buffered, then
// io.EOF. A stream whose both ends have closed and that is drained is
// removed from the buffer.
func (w *StreamWriter) Close() error {
	if !w.h.in() {
		return nil
	}
	defer w.h.out()
	if w.closed {
		return nil
	}
	w.h.dropEnd(w)
	return w.close()
}

func (w *StreamWriter) close() error {
	if w.closed {
		return nil
	}
	w.gen, w.closed = w.w.Generation(), true
	return w.wrap("close", w.h.buf.closeEnd(w.en, w.w.Close, nil))
}

// StreamReader is the reader end of a stream. It belongs to the Handle
// that opened it and, like it, to one goroutine at a time (the channels
// Notify returns may be received from anywhere). It is an io.Reader and an
// io.WriterTo, so io.Copy(dst, r) writes straight from the ring.
type StreamReader struct {
	streamEnd
	r *channel.StreamReader
}

// Spans returns the unread bytes: one span, or two when they wrap around
// the end of the ring (a, then b), views into shared memory valid until
// the next call on this end. Consume releases what was used. Empty spans:
// nothing is buffered (WaitData).
func (r *StreamReader) Spans() (a, b []byte, err error) {
	if !r.h.in() {
		return nil, nil, r.h.closedErr("spans")
	}
	defer r.h.out()
	if err := r.check("spans"); err != nil {
		return nil, nil, err
	}
	a, b, err = r.r.Spans()
	return a, b, r.wrap("spans", err)
}

// View returns the next n unread bytes contiguously: a span of the ring
// when they do not wrap, otherwise a private copy; Consume releases at
// most those n. ErrWouldBlock: fewer than n are buffered; what Spans or
// View handed out before stays the caller's.
func (r *StreamReader) View(n int) ([]byte, error) {
	if !r.h.in() {
		return nil, r.h.closedErr("view")
	}
	defer r.h.out()
	if err := r.check("view"); err != nil {
		return nil, err
	}
	v, err := r.r.View(n)
	if err == ErrWouldBlock {
		return nil, err
	}
	return v, r.wrap("view", err)
}

// Consume releases the first n bytes of the spans (or view) to the
// writer, keeping up to the backlog limit of them for look-back; after
// Spans it may be called several times for consecutive parts.
// ErrInvalidArgument: more than was handed out, or nothing is (TryRead,
// Read and WriteTo leave nothing handed out). ErrReset:
// the stream was reset since the spans were handed out; nothing was
// consumed, and what was read from them may be torn.
func (r *StreamReader) Consume(n int) error {
	if !r.h.in() {
		return r.h.closedErr("consume")
	}
	defer r.h.out()
	if err := r.check("consume"); err != nil {
		return err
	}
	return r.wrap("consume", r.r.Consume(n))
}

// TryRead reads up to len(p) bytes without waiting: ErrWouldBlock if none
// are buffered, io.EOF if none are and the writer closed.
func (r *StreamReader) TryRead(p []byte) (int, error) {
	if !r.h.in() {
		return 0, r.h.closedErr("try read")
	}
	defer r.h.out()
	if err := r.check("read"); err != nil {
		return 0, err
	}
	n, err := r.r.TryRead(p)
	if err == ErrWouldBlock {
		return 0, err
	}
	return n, r.wrap("read", err)
}

// Read reads up to len(p) bytes, waiting under the end's context (see
// SetContext) while none are buffered. It implements io.Reader: io.EOF
// once the writer closed and everything was read.
func (r *StreamReader) Read(p []byte) (int, error) { return r.ReadContext(r.ctx, p) }

// ReadContext reads up to len(p) bytes, waiting as WaitData does.
func (r *StreamReader) ReadContext(ctx context.Context, p []byte) (int, error) {
	if !r.h.in() {
		return 0, r.h.closedErr("read context")
	}
	defer r.h.out()
	if err := r.check("read"); err != nil {
		return 0, err
	}
	n, err := r.r.Read(ctx, p)
	return n, r.wrap("read", err)
}

// WriteTo writes what the stream delivers to dst straight from the ring
// until the writer closes (io.EOF, returned as nil), waiting under the
// end's context. It implements io.WriterTo.
func (r *StreamReader) WriteTo(dst io.Writer) (int64, error) {
	if !r.h.in() {
		return 0, r.h.closedErr("write to")
	}
	defer r.h.out()
	if err := r.check("write to"); err != nil {
		return 0, err
	}
	n, err := r.r.WriteTo(r.ctx, dst)
	return n, r.wrap("write to", err)
}

// WaitData waits until bytes are buffered: spinning briefly (WithSpin),
// then parked on a futex. It returns io.EOF if the writer closed and
// everything was read, ErrPeerDead if the writer died (after what it
// committed was read), ErrDestroyed, or ctx's error.
func (r *StreamReader) WaitData(ctx context.Context) error {
	if !r.h.in() {
		return r.h.closedErr("wait data")
	}
	defer r.h.out()
	if err := r.check("wait data"); err != nil {
		return err
	}
	return r.wrap("wait data", r.r.WaitData(ctx))
}

// Notify returns a channel to select on that receives a value whenever ev
// holds: StreamData (bytes to read) or StreamReset. It is level-triggered
// and a value may be spurious (check with Spans or TryRead). A goroutine
// feeds it; while ev does not hold it is parked on a futex — one OS thread
// blocked in the kernel, woken every check interval to check the writer —
// and the writer pays a wake-up syscall only then. The channel is closed
// and the goroutine ends when ctx is done, this end is closed, the writer
// closed and everything was read (EOF) or it died, or the buffer was
// destroyed: cancel ctx to stop it.
func (r *StreamReader) Notify(ctx context.Context, ev StreamEvent) <-chan struct{} {
	if !r.h.in() {
		return closedChan()
	}
	defer r.h.out()
	return r.r.Notify(ctx, ev)
}

// Backlog returns the consumed bytes the stream still keeps, oldest first
// (one span, or two when they wrap), valid until the next Consume,
// SetBacklog or reset: the writer never overwrites them.
func (r *StreamReader) Backlog() (a, b []byte, err error) {
	if !r.h.in() {
		return nil, nil, r.h.closedErr("backlog")
	}
	defer r.h.out()
	if err := r.check("backlog"); err != nil {
		return nil, nil, err
	}
	a, b, err = r.r.Backlog()
	return a, b, r.wrap("backlog", err)
}

// Rewind makes the last n consumed bytes unread again (n at most what
// Backlog returns).
func (r *StreamReader) Rewind(n int) error {
	if !r.h.in() {
		return r.h.closedErr("rewind")
	}
	defer r.h.out()
	if err := r.check("rewind"); err != nil {
		return err
	}
	return r.wrap("rewind", r.r.Rewind(n))
}

// SetBacklog sets how many consumed bytes the stream keeps (below its
// capacity). Lowering it gives the writer room at once; raising it does
// not bring back bytes the writer may already have reused.
func (r *StreamReader) SetBacklog(n int) error {
	if !r.h.in() {
		return r.h.closedErr("set backlog")
	}
	defer r.h.out()
	if err := r.check("set backlog"); err != nil {
		return err
	}
	return r.wrap("set backlog", r.r.SetBacklog(n))
}

// BacklogLimit is the most consumed bytes the stream keeps.
func (r *StreamReader) BacklogLimit() int { return r.r.BacklogLimit() }

// Close closes the reader end: unread bytes stay for a later reader, and
// the writer gets io.ErrClosedPipe. A stream whose both ends have closed
// and that is drained is removed from the buffer.
func (r *StreamReader) Close() error {
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

func (r *StreamReader) close() error {
	if r.closed {
		return nil
	}
	r.gen, r.closed = r.r.Generation(), true
	return r.wrap("close", r.h.buf.closeEnd(r.en, r.r.Close, nil))
}

func init() {
	registerType(channel.TypeStream, typeOps{
		check: func(b *Buffer, en *channel.Entry) error {
			s, err := channel.OpenStream(b.region, en, channel.WaitOptions{})
			if err != nil {
				return err
			}
			ext, err := b.heap.Extent(en.Control)
			if err != nil {
				return err
			}
			if ext.Size < channel.StreamControlSize(en.Size) {
				return errs.Corrupt("stream extent", uint64(en.Control), "%d bytes for a stream of %d", ext.Size, en.Size)
			}
			return s.Check()
		},
		abandoned: func(b *Buffer, en *channel.Entry) bool {
			s, err := channel.OpenStream(b.region, en, channel.WaitOptions{})
			return err == nil && s.Abandoned()
		},
		idle: func(b *Buffer, en *channel.Entry) (bool, error) {
			s, err := channel.OpenStream(b.region, en, channel.WaitOptions{})
			return err == nil && s.Idle(), err
		},
	})
}
