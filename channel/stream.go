package channel

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"runtime"
	"structs"
	"sync"
	"sync/atomic"
	"time"

	"github.com/heapipc/ipc/backend"
	"github.com/heapipc/ipc/internal/errs"
	"github.com/heapipc/ipc/internal/mem"
	"github.com/heapipc/ipc/internal/sys"
)

// A stream channel is a byte ring of any length shared by one writer end
// and one reader end (libshbuf's shared buffer). Its control block and its
// ring are one heap extent:
//
//	0    immutable: Magic, Cap                        (creator)
//	128  W, Writer, Written, WClosed                  (writer end)
//	256  R, Low, Read, Backlog                        (reader end)
//	384  Gen, ZeroBy, Reader, RClosed                 (either end; the
//	                                                   reader's claim and
//	                                                   close, which the
//	                                                   writer reads at
//	                                                   every write, off
//	                                                   the line the reader
//	                                                   writes at every
//	                                                   read)
//	512  DataWaiting, SpaceWaiting, ResetWaiting      (parking: set by a
//	                                                   waiter, cleared by
//	                                                   its waker)
//	640  ring [Cap]byte                               (writer writes
//	                                                   [W, Low+Cap), reader
//	                                                   reads [Low, W))
//
// Positions. W (end of committed data), R (next byte to read) and Low
// (oldest byte kept as backlog) are positions modulo 2*Cap, so that every
// distance between them (at most Cap) is unambiguous for any Cap, not only
// powers of two; a position p is ring byte p mod Cap. Low <= R <= W in
// ring order and W - Low <= Cap: the writer may write only up to Low+Cap.
//
// Generations. Each position word packs a generation (its top 23 bits)
// with the position (its low 41 bits). Gen counts resets. A reset (from
// either end, at any time) adds one to Gen and then brings each position
// word of an older generation to (new generation, 0) with a CAS; anyone who
// finds the words of mixed generations finishes that work (so a resetter
// that dies half-way leaves nothing broken). The writer publishes a commit
// and the reader a consume with a CAS from the word they computed their
// spans from: after a reset the generation differs, the CAS fails and the
// operation is dropped with ErrReset — never applied to the new state.
//
// Backlog. The reader asks the ring to keep up to Backlog consumed bytes
// (Low trails R by at most Backlog). The writer never overwrites them: its
// room is Cap - (W - Low). That keeps every byte handed out as a span —
// readable or backlog — stable while the reader holds it, so look-back and
// Rewind need no torn-read detection, at the price of Backlog bytes of the
// capacity once that much has been read. The reader lowers the backlog with
// SetBacklog to give the writer room at once.
type streamCB struct {
	_            structs.HostLayout
	Magic        uint64
	Cap          uint64 // ring bytes, 1..MaxStreamCapacity
	_            [112]byte
	W            atomic.Uint64 // gen|pos: end of committed data (writer; resets)
	Writer       atomic.Uint64 // sys.Identity of the writer end, 0: none
	Written      atomic.Uint64 // bytes committed, ever (writer)
	WClosed      atomic.Uint32 // 1: the writer closed; EOF once drained
	_            [100]byte
	R            atomic.Uint64 // gen|pos: next byte to read (reader; resets)
	Low          atomic.Uint64 // gen|pos: oldest byte kept (reader; resets)
	Read         atomic.Uint64 // bytes consumed, ever (reader)
	Backlog      atomic.Uint64 // consumed bytes to keep, < Cap (reader)
	_            [96]byte
	Gen          atomic.Uint64 // resets so far (either end)
	ZeroBy       atomic.Uint64 // sys.Identity of an end zeroing the ring, 0: none
	Reader       atomic.Uint64 // sys.Identity of the reader end, 0: none
	RClosed      atomic.Uint32 // 1: the reader closed
	_            [100]byte
	DataWaiting  atomic.Uint32 // someone waits for data (or EOF)
	SpaceWaiting atomic.Uint32 // someone waits for room
	ResetWaiting atomic.Uint32 // someone waits for a reset
	_            [116]byte
}

const streamCBSize = 640

var streamMagic = binary.LittleEndian.Uint64([]byte("HIPCSTRM"))

const (
	streamPosBits = 41
	streamPosMask = 1<<streamPosBits - 1
	streamGenBits = 64 - streamPosBits
	streamGenMask = 1<<streamGenBits - 1
	// MaxStreamCapacity is the largest stream ring (positions run modulo
	// twice the capacity in 41 bits).
	MaxStreamCapacity = 1 << (streamPosBits - 1)
)

func streamPack(g, p uint64) uint64 { return (g&streamGenMask)<<streamPosBits | p }
func streamGen(w uint64) uint64     { return w >> streamPosBits }
func streamPos(w uint64) uint64     { return w & streamPosMask }

// genNewer reports whether generation a is after b (modulo 2^23).
func streamGenNewer(a, b uint64) bool {
	d := (a - b) & streamGenMask
	return d != 0 && d < 1<<(streamGenBits-1)
}

// StreamControlSize is the size of the control block plus ring of a stream
// of capacity n.
func StreamControlSize(n uint64) uint64 { return streamCBSize + n }

// InitStream lays out a stream control block of capacity n keeping backlog
// consumed bytes.
func InitStream(b []byte, n, backlog uint64) error {
	if n == 0 || n > MaxStreamCapacity {
		return fmt.Errorf("stream capacity %d (1..%d): %w", n, uint64(MaxStreamCapacity), errs.ErrInvalidSize)
	}
	if backlog >= n {
		return fmt.Errorf("stream backlog %d (below the capacity %d): %w", backlog, n, errs.ErrInvalidArgument)
	}
	cb, err := mem.At[streamCB](b, 0)
	if err != nil {
		return err
	}
	if uint64(len(b)) < StreamControlSize(n) {
		return fmt.Errorf("stream control block of %d bytes for capacity %d: %w", len(b), n, errs.ErrInvalidSize)
	}
	cb.Cap = n
	cb.Backlog.Store(backlog)
	cb.Magic = streamMagic
	return nil
}

// Stream is a process's view of a stream channel: what both ends share.
type Stream struct {
	cb     *streamCB
	ring   []byte
	c, c2  uint64
	cbOff  mem.Off
	region *backend.Region
	opts   WaitOptions
}

// OpenStream validates a stream channel's control block.
func OpenStream(region *backend.Region, en *Entry, opts WaitOptions) (*Stream, error) {
	b := region.Bytes()
	cb, err := mem.At[streamCB](b, en.Control)
	if err != nil {
		return nil, err
	}
	if cb.Magic != streamMagic {
		return nil, errs.Corrupt("stream magic", uint64(en.Control), "magic %#x", cb.Magic)
	}
	c := cb.Cap
	if c == 0 || c > MaxStreamCapacity || c != en.Size {
		return nil, errs.Corrupt("stream capacity", uint64(en.Control)+8, "capacity %d (registry says %d)", c, en.Size)
	}
	ring, err := mem.Bytes(b, en.Control+streamCBSize, c)
	if err != nil {
		return nil, err
	}
	return &Stream{cb: cb, ring: ring, c: c, c2: 2 * c, cbOff: en.Control, region: region, opts: opts.norm()}, nil
}

// Cap is the ring's capacity in bytes.
func (s *Stream) Cap() int { return int(s.c) }

func (s *Stream) adv(p, n uint64) uint64 {
	if p += n; p >= s.c2 {
		p -= s.c2
	}
	return p
}

func (s *Stream) back(p, n uint64) uint64 {
	if p >= n {
		return p - n
	}
	return p + s.c2 - n
}

func (s *Stream) dist(a, b uint64) uint64 {
	if b >= a {
		return b - a
	}
	return b + s.c2 - a
}

// spans returns the n ring bytes from position p as one or two slices.
func (s *Stream) spans(p, n uint64) (a, b []byte) {
	i := p
	if i >= s.c {
		i -= s.c
	}
	first := min(n, s.c-i)
	a = s.ring[i : i+first : i+first]
	if n > first {
		b = s.ring[: n-first : n-first]
	}
	return a, b
}

// streamSnap is a consistent snapshot of the position words.
type streamSnap struct {
	gen                   uint64
	w, r, low             uint64
	wWord, rWord, lowWord uint64
}

// state reads the position words. Words of mixed generations mean a reset
// is under way (or its maker died): state finishes it and reads again.
// Positions out of range are ErrCorrupt.
func (s *Stream) state() (streamSnap, error) {
	for i := 0; ; i++ {
		g := s.cb.Gen.Load() & streamGenMask
		w0 := s.cb.W.Load()
		// Low before R before W: each only moves forward within a
		// generation (a Rewind never goes below Low), so the snapshot
		// keeps Low <= R <= W even while both ends run.
		lw := s.cb.Low.Load()
		rw := s.cb.R.Load()
		ww := s.cb.W.Load()
		if streamGen(ww) != g || streamGen(rw) != g || streamGen(lw) != g {
			if err := s.settle(g, false); err != nil {
				return streamSnap{}, err
			}
			if i&63 == 63 {
				runtime.Gosched()
			}
			continue
		}
		st := streamSnap{gen: g, w: streamPos(ww), r: streamPos(rw), low: streamPos(lw), wWord: ww, rWord: rw, lowWord: lw}
		if st.w >= s.c2 || st.r >= s.c2 || st.low >= s.c2 || s.dist(st.low, st.r)+s.dist(st.r, st.w) > s.c {
			if w0 != ww && i < 1000 {
				continue // the writer moved on while we read (an observer): read again
			}
			return st, errs.Corrupt("stream positions", uint64(s.cbOff)+128,
				"write %d, read %d, low %d for capacity %d", st.w, st.r, st.low, s.c)
		}
		return st, nil
	}
}

// settle brings every position word to generation g (a reset starts all of
// them at position 0), unless a newer reset got there first. A word of a
// generation after the stream's (Gen is bumped before any word moves, so
// that is no race) is corrupt: reported, or with repair (a reset) replaced.
func (s *Stream) settle(g uint64, repair bool) error {
	for _, w := range [...]*atomic.Uint64{&s.cb.W, &s.cb.R, &s.cb.Low} {
		for {
			cur := w.Load()
			cg := streamGen(cur)
			if cg == g {
				break
			}
			if streamGenNewer(cg, g) {
				now := s.cb.Gen.Load() & streamGenMask
				if cg == now || !streamGenNewer(cg, now) {
					break // a newer reset got there first
				}
				if !repair {
					return errs.Corrupt("stream generation", uint64(s.cbOff)+384, "a position word has generation %d, the stream %d", cg, now)
				}
			}
			if w.CompareAndSwap(cur, streamPack(g, 0)) {
				break
			}
		}
	}
	return nil
}

// Generation is the number of resets so far.
func (s *Stream) Generation() uint64 { return s.cb.Gen.Load() }

// reset empties the stream: everything unread and the backlog are dropped,
// and commits or consumes in flight fail with ErrReset.
func (s *Stream) reset() error {
	g := s.cb.Gen.Add(1) & streamGenMask
	err := s.settle(g, true)
	s.wakeAll()
	return err
}

// zero resets the stream and clears the ring's bytes. The writer gets no
// room while the bytes are cleared.
func (s *Stream) zero(self sys.Identity) error {
	for {
		cur := s.cb.ZeroBy.Load()
		if cur == 0 {
			if s.cb.ZeroBy.CompareAndSwap(0, uint64(self)) {
				break
			}
			continue
		}
		if cur != uint64(self) && !sys.Alive(sys.Identity(cur)) {
			if s.cb.ZeroBy.CompareAndSwap(cur, uint64(self)) {
				break
			}
			continue
		}
		return fmt.Errorf("stream: %v is zeroing it: %w", sys.Identity(cur), errs.ErrBusy)
	}
	err := s.reset()
	clear(s.ring)
	s.cb.ZeroBy.Store(0)
	s.wakeAll()
	return err
}

// releaseDeadZeroer clears ZeroBy if the end zeroing the ring died there.
func (s *Stream) releaseDeadZeroer() {
	if z := s.cb.ZeroBy.Load(); z != 0 && !sys.Alive(sys.Identity(z)) {
		s.cb.ZeroBy.CompareAndSwap(z, 0)
	}
}

func streamWake(w *atomic.Uint32) {
	if w.Load() != 0 && w.Swap(0) != 0 {
		backend.Wake(w, 0)
	}
}

func (s *Stream) wakeAll() {
	streamWake(&s.cb.DataWaiting)
	streamWake(&s.cb.SpaceWaiting)
	streamWake(&s.cb.ResetWaiting)
}

func (s *Stream) destroyed() error {
	return fmt.Errorf("stream: %w", errs.ErrDestroyed)
}

// checkPeer reports ErrDestroyed if the buffer was destroyed and
// ErrPeerDead if the end in w is held by a dead process.
func (s *Stream) checkPeer(w *atomic.Uint64, what string) error {
	if s.region.Closing() {
		return fmt.Errorf("stream: %w", errs.ErrClosed)
	}
	if s.region.State() == backend.StateDestroyed {
		return s.destroyed()
	}
	if id := sys.Identity(w.Load()); id != 0 && !sys.Alive(id) {
		return fmt.Errorf("stream: the %s (%v) died: %w", what, id, errs.ErrPeerDead)
	}
	return nil
}

// await waits until ready reports true (returning its error): spinning
// first when spinFirst, then parked on word, checking check after every
// park.
func (s *Stream) await(ctx context.Context, word *atomic.Uint32, spinFirst bool, ready func() (bool, error), check func() error) error {
	var rerr error
	if spinFirst && spin(s.opts.Spin, func() bool {
		ok, err := ready()
		rerr = err
		return ok
	}) {
		return rerr
	}
	for {
		// Announce only when not ready (a notifier coming back from
		// delivering must not make every commit pay a wake-up).
		if ok, err := ready(); ok {
			return err
		}
		// Several waiters may share word (a blocking call and a Notify
		// goroutine): a waiter never clears it, its waker does.
		word.Store(1)
		if ok, err := ready(); ok {
			return err
		}
		err := backend.Park(ctx, word, 1, s.opts.CheckInterval)
		if err != nil && !errors.Is(err, errs.ErrTimeout) {
			return err
		}
		if ok, err := ready(); ok {
			return err
		}
		if err := check(); err != nil {
			if ok, rerr := ready(); ok {
				return rerr // deliver what is there first
			}
			return err
		}
	}
}

// Removable reports whether both ends have closed and nothing is unread.
func (s *Stream) Removable() bool {
	if s.cb.WClosed.Load() == 0 || s.cb.RClosed.Load() == 0 || s.cb.Writer.Load() != 0 || s.cb.Reader.Load() != 0 {
		return false
	}
	st, err := s.state()
	return err == nil && st.r == st.w
}

// Idle reports whether no live process holds either end.
func (s *Stream) Idle() bool {
	return !heldByLive(&s.cb.Writer, &s.cb.Reader)
}

// Abandoned reports whether no live process holds either end and both
// ends have gone (closed, or held by a process that died): nobody will
// read what is left. Recovery may remove the stream.
func (s *Stream) Abandoned() bool {
	if !s.Idle() {
		return false
	}
	wGone := s.cb.WClosed.Load() != 0 || s.cb.Writer.Load() != 0
	rGone := s.cb.RClosed.Load() != 0 || s.cb.Reader.Load() != 0
	return wGone && rGone
}

// Check reports what is wrong with the stream's words, without changing
// them.
func (s *Stream) Check() error {
	var all []error
	off := uint64(s.cbOff)
	lw, rw, ww := s.cb.Low.Load(), s.cb.R.Load(), s.cb.W.Load()
	for _, w := range []struct {
		v  uint64
		at uint64
	}{{ww, 128}, {rw, 256}, {lw, 264}} { // W, R, Low (streamCB)
		if streamPos(w.v) >= s.c2 {
			all = append(all, errs.Corrupt("stream position", off+w.at, "position %d for capacity %d", streamPos(w.v), s.c))
		}
	}
	g := s.cb.Gen.Load() & streamGenMask
	if len(all) == 0 && streamGen(ww) == g && streamGen(rw) == g && streamGen(lw) == g {
		if d := s.dist(streamPos(lw), streamPos(rw)) + s.dist(streamPos(rw), streamPos(ww)); d > s.c {
			all = append(all, errs.Corrupt("stream positions", off+128, "write %d, read %d, low %d span %d bytes, capacity %d", streamPos(ww), streamPos(rw), streamPos(lw), d, s.c))
		}
	}
	for _, w := range []uint64{ww, rw, lw} {
		if cg := streamGen(w); cg != g && streamGenNewer(cg, g) {
			all = append(all, errs.Corrupt("stream generation", off+384, "a position word has generation %d, the stream %d", cg, g))
		}
	}
	if n := s.cb.Backlog.Load(); n >= s.c {
		all = append(all, errs.Corrupt("stream backlog", off+280, "backlog %d for capacity %d", n, s.c))
	}
	if v := s.cb.WClosed.Load(); v > 1 {
		all = append(all, errs.Corrupt("stream WClosed", off+152, "value %d", v))
	}
	if v := s.cb.RClosed.Load(); v > 1 {
		all = append(all, errs.Corrupt("stream RClosed", off+408, "value %d", v))
	}
	return errors.Join(all...)
}

// StreamStats is a snapshot of a stream.
type StreamStats struct {
	Capacity     int    // ring bytes
	Buffered     int    // bytes written and not yet read
	Free         int    // room for the writer now
	Backlog      int    // consumed bytes kept for look-back and Rewind
	BacklogLimit int    // the most consumed bytes the reader asked to keep
	Generation   uint64 // resets so far
	Written      uint64 // bytes committed, ever
	Read         uint64 // bytes consumed, ever (re-read after Rewind counts again)
	WriterClosed bool
	ReaderClosed bool
}

// Stats returns a snapshot of the stream.
func (s *Stream) Stats() (StreamStats, error) {
	st, err := s.state()
	if err != nil {
		return StreamStats{}, err
	}
	free := s.c - s.dist(st.low, st.w)
	if s.cb.ZeroBy.Load() != 0 {
		free = 0
	}
	return StreamStats{
		Capacity:     int(s.c),
		Buffered:     int(s.dist(st.r, st.w)),
		Free:         int(free),
		Backlog:      int(s.dist(st.low, st.r)),
		BacklogLimit: int(s.cb.Backlog.Load()),
		Generation:   s.cb.Gen.Load(),
		Written:      s.cb.Written.Load(),
		Read:         s.cb.Read.Load(),
		WriterClosed: s.cb.WClosed.Load() != 0,
		ReaderClosed: s.cb.RClosed.Load() != 0,
	}, nil
}

// StreamEvent is a change a stream end can wait for or be notified of.
type StreamEvent int

// The events.
const (
	EventData  StreamEvent = iota + 1 // bytes to read (or EOF)
	EventSpace                        // room to write
	EventReset                        // a reset or zero since the watch began (or since the last notification)
)

func (e StreamEvent) String() string {
	switch e {
	case EventData:
		return "data"
	case EventSpace:
		return "space"
	case EventReset:
		return "reset"
	}
	return fmt.Sprintf("event(%d)", int(e))
}

// ---- the parts both ends share ----

// streamEnd is what both ends have: identity, notifiers, full access.
type streamEnd struct {
	*Stream
	self      sys.Identity
	closed    bool
	ctx       context.Context // done at Close: stops the notifiers
	cancel    context.CancelFunc
	notifiers sync.WaitGroup
	lastCheck time.Time
}

func newStreamEnd(s *Stream, self sys.Identity) streamEnd {
	ctx, cancel := context.WithCancel(context.Background())
	return streamEnd{Stream: s, self: self, ctx: ctx, cancel: cancel}
}

func (e *streamEnd) stop() {
	e.cancel()
	e.notifiers.Wait()
}

// due reports whether a rate-limited liveness check is due (non-blocking
// calls check at most once per check interval).
func (e *streamEnd) due() bool {
	now := time.Now()
	if now.Sub(e.lastCheck) < e.opts.CheckInterval {
		return false
	}
	e.lastCheck = now
	return true
}

// Reset empties the stream (from either end, at any time): unread bytes
// and the backlog are dropped, and a commit or consume computed before the
// reset fails with ErrReset.
func (e *streamEnd) Reset() error {
	if e.closed {
		return errClosedEnd
	}
	return e.reset()
}

// Zero is Reset that also clears every byte of the ring. The writer gets
// no room until the bytes are cleared. ErrBusy if another end is zeroing.
func (e *streamEnd) Zero() error {
	if e.closed {
		return errClosedEnd
	}
	return e.zero(e.self)
}

// Peek copies up to len(p) unread bytes without consuming them. It
// returns ErrReset if a reset tore the copy.
func (e *streamEnd) Peek(p []byte) (int, error) {
	if e.closed {
		return 0, errClosedEnd
	}
	st, err := e.state()
	if err != nil {
		return 0, err
	}
	a, b := e.spans(st.r, e.dist(st.r, st.w))
	n := copy(p, a)
	n += copy(p[n:], b)
	if e.cb.Gen.Load()&streamGenMask != st.gen {
		return 0, fmt.Errorf("stream peek: %w", errs.ErrReset)
	}
	return n, nil
}

// WaitReset waits until the stream's generation differs from since (see
// Generation).
func (e *streamEnd) WaitReset(ctx context.Context, since uint64) error {
	if e.closed {
		return errClosedEnd
	}
	return e.await(ctx, &e.cb.ResetWaiting, false,
		func() (bool, error) { return e.cb.Gen.Load() != since, nil },
		func() error {
			if e.region.Closing() {
				return fmt.Errorf("stream: %w", errs.ErrClosed)
			}
			if e.region.State() == backend.StateDestroyed {
				return e.destroyed()
			}
			return nil
		})
}

// notify runs a notifier goroutine: it parks on word until ready holds,
// then delivers one value on the returned channel (capacity 1), and goes
// on. The channel is closed when ready or check report an error, ctx is
// done or the end is closed.
func (e *streamEnd) notify(ctx context.Context, word *atomic.Uint32, ready func() (bool, error), delivered func(), check func() error) <-chan struct{} {
	ch := make(chan struct{}, 1)
	if e.closed {
		close(ch)
		return ch
	}
	ctx, cancel := context.WithCancel(ctx)
	stop := context.AfterFunc(e.ctx, cancel)
	e.notifiers.Add(1)
	go func() {
		defer e.notifiers.Done()
		defer close(ch)
		defer stop()
		defer cancel()
		for {
			if err := e.await(ctx, word, false, ready, check); err != nil {
				return
			}
			select {
			case ch <- struct{}{}:
			case <-ctx.Done():
				return
			}
			if delivered != nil {
				delivered()
			}
		}
	}()
	return ch
}

// notifyReset is the EventReset notifier, for either end.
func (e *streamEnd) notifyReset(ctx context.Context) <-chan struct{} {
	last := e.cb.Gen.Load()
	var seen uint64
	return e.notify(ctx, &e.cb.ResetWaiting,
		func() (bool, error) {
			seen = e.cb.Gen.Load()
			return seen != last, nil
		},
		func() { last = seen },
		func() error {
			if e.region.Closing() {
				return fmt.Errorf("stream: %w", errs.ErrClosed)
			}
			if e.region.State() == backend.StateDestroyed {
				return e.destroyed()
			}
			return nil
		})
}

// ---- writer ----

// StreamWriter is the writer end. Its methods must be called from one
// goroutine at a time (Notify's goroutines only read shared words).
type StreamWriter struct {
	_ mem.Pad
	streamEnd
	span    streamWSpan
	staging []byte
	staged  int
	// known: span's generation, W word and position are still the
	// stream's as far as this end knows (set by a Spans that read the
	// words, kept by Commit), and knownLow is Low as that Spans read it:
	// Low only moves forward within a generation, so the room it gives
	// is there (see Spans).
	known    bool
	knownLow uint64
	// wasClosed is WClosed before the attach (see Refuse).
	wasClosed uint32
	_         mem.Pad
}

// streamWSpan is what the last Spans call handed out.
type streamWSpan struct {
	valid bool
	gen   uint64
	word  uint64 // W as the spans were computed
	pos   uint64
	free  uint64
}

// AttachWriter claims the writer end (ErrBusy if a live process holds it;
// a dead holder's end is taken over).
func (s *Stream) AttachWriter() (*StreamWriter, error) {
	self := sys.Self()
	if _, err := claim(&s.cb.Writer, self, "stream writer end"); err != nil {
		return nil, err
	}
	closed := s.cb.WClosed.Swap(0) // put back if refused: the reader's EOF depends on it
	if _, err := s.state(); err != nil {
		s.cb.WClosed.Store(closed)
		s.cb.Writer.CompareAndSwap(uint64(self), 0)
		return nil, err
	}
	return &StreamWriter{streamEnd: newStreamEnd(s, self), wasClosed: closed}, nil
}

// Refuse lets go of a writer end just attached that its opener refuses:
// the stream is left as it was before the attach (WClosed included, on
// which the reader's EOF depends).
func (w *StreamWriter) Refuse() {
	if w.closed {
		return
	}
	w.closed = true
	w.stop()
	w.cb.WClosed.Store(w.wasClosed)
	w.cb.Writer.CompareAndSwap(uint64(w.self), 0)
}

var errStreamReaderClosed = fmt.Errorf("stream: the reader closed its end: %w", io.ErrClosedPipe)

func (w *StreamWriter) readerClosed() bool {
	return w.cb.RClosed.Load() != 0 && w.cb.Reader.Load() == 0
}

// Spans returns the writable bytes: one span, or two when the room wraps
// around the end of the ring (fill a, then b). Commit publishes what was
// filled. Empty spans mean the ring is full (see WaitSpace). It returns
// io.ErrClosedPipe once the reader has closed its end.
func (w *StreamWriter) Spans() (a, b []byte, err error) { return w.spansFor(0) }

// spansFor is Spans for a caller that needs need bytes of room (0: all
// there is). While the room by the Low read last is at least need, the
// spans are that room, and the reader's words are not read again: their
// line is the reader's, written at every consume, so reading them would
// take it away at every write. Low only moves forward within a
// generation, so that room is there; no reset has begun (Gen is bumped
// first), and one that comes later fails Commit's CAS.
func (w *StreamWriter) spansFor(need uint64) (a, b []byte, err error) {
	if w.closed {
		return nil, nil, errClosedEnd
	}
	w.span.valid = false
	w.staged = 0
	if w.readerClosed() {
		return nil, nil, errStreamReaderClosed
	}
	if need > 0 && w.known && w.cb.Gen.Load()&streamGenMask == w.span.gen && w.cb.ZeroBy.Load() == 0 {
		if free := w.c - w.dist(w.knownLow, w.span.pos); free >= need {
			w.span.valid, w.span.free = true, free
			a, b = w.spans(w.span.pos, free)
			return a, b, nil
		}
	}
	w.known = false
	st, err := w.state()
	if err != nil {
		return nil, nil, err
	}
	free := w.c - w.dist(st.low, st.w)
	if w.cb.ZeroBy.Load() != 0 {
		free = 0
		if w.due() {
			w.releaseDeadZeroer()
		}
	}
	w.span = streamWSpan{valid: true, gen: st.gen, word: st.wWord, pos: st.w, free: free}
	w.known, w.knownLow = true, st.low
	a, b = w.spans(st.w, free)
	return a, b, nil
}

// Reserve returns n contiguous writable bytes: a span of the ring when
// they do not wrap, otherwise a private staging buffer that Commit copies
// into the ring; Commit then publishes at most those n. ErrWouldBlock if
// there is not that much room now (what was handed out before stays so).
func (w *StreamWriter) Reserve(n int) ([]byte, error) {
	if n <= 0 || uint64(n) > w.c {
		return nil, fmt.Errorf("stream reserve of %d bytes (1..%d): %w", n, w.c, errs.ErrInvalidSize)
	}
	prev, prevStaged := w.span, w.staged
	a, _, err := w.spansFor(uint64(n))
	if err != nil {
		return nil, err
	}
	if uint64(n) > w.span.free {
		// Refused: what the caller held stays as it was (and the
		// stream's words are read again next time).
		w.span, w.staged, w.known = prev, prevStaged, false
		return nil, errs.ErrWouldBlock
	}
	w.span.free = uint64(n) // Commit publishes at most the reservation
	if len(a) >= n {
		return a[:n:n], nil
	}
	if cap(w.staging) < n {
		w.staging = make([]byte, n)
	}
	w.staged = n
	return w.staging[:n:n], nil
}

// Commit publishes the first n bytes of the spans (or of the reserved
// view) to the reader. After Spans it may be called several times for
// consecutive parts. ErrReset: the stream was reset since the spans were
// handed out; nothing was published.
func (w *StreamWriter) Commit(n int) error {
	if w.closed {
		return errClosedEnd
	}
	if !w.span.valid {
		return fmt.Errorf("stream commit of %d bytes without spans: %w", n, errs.ErrInvalidArgument)
	}
	if n < 0 || uint64(n) > w.span.free || (w.staged > 0 && n > w.staged) {
		return fmt.Errorf("stream commit of %d bytes, %d available: %w", n, w.span.free, errs.ErrInvalidArgument)
	}
	if w.staged > 0 {
		w.staged = 0
		w.span.valid = false
		if w.cb.Gen.Load()&streamGenMask != w.span.gen {
			w.known = false
			return fmt.Errorf("stream commit: %w", errs.ErrReset)
		}
		a, b := w.spans(w.span.pos, uint64(n))
		k := copy(a, w.staging[:n])
		copy(b, w.staging[k:n])
	}
	if n == 0 {
		return nil
	}
	nw := streamPack(w.span.gen, w.adv(w.span.pos, uint64(n)))
	if !w.cb.W.CompareAndSwap(w.span.word, nw) {
		w.span.valid, w.known = false, false
		return fmt.Errorf("stream commit: %w", errs.ErrReset)
	}
	w.span.word, w.span.pos, w.span.free = nw, streamPos(nw), w.span.free-uint64(n)
	w.cb.Written.Add(uint64(n))
	streamWake(&w.cb.DataWaiting)
	return nil
}

// TryWrite copies as much of p as fits now and commits it. ErrWouldBlock
// if nothing fits.
func (w *StreamWriter) TryWrite(p []byte) (int, error) {
	a, b, err := w.spansFor(uint64(len(p)))
	if err != nil {
		return 0, err
	}
	// The spans are TryWrite's own: it leaves none armed, so that a
	// later Commit of the caller's publishes nothing it did not fill.
	n := copy(a, p)
	n += copy(b, p[n:])
	if n == 0 {
		w.span.valid = false
		if len(p) == 0 {
			return 0, nil
		}
		return 0, errs.ErrWouldBlock
	}
	err = w.Commit(n)
	w.span.valid = false
	if err != nil {
		return 0, err
	}
	return n, nil
}

// Write copies all of p into the stream, waiting for room as WaitSpace
// does. It returns how many bytes were committed.
func (w *StreamWriter) Write(ctx context.Context, p []byte) (int, error) {
	done := 0
	for {
		n, err := w.TryWrite(p[done:])
		done += n
		if done == len(p) && err == nil {
			return done, nil
		}
		if err != nil && err != errs.ErrWouldBlock {
			return done, err
		}
		if err := w.WaitSpace(ctx); err != nil {
			return done, err
		}
	}
}

// ReadFrom reads src into the stream's free spans (no intermediate
// buffer) until src returns io.EOF, waiting for room as WaitSpace does.
func (w *StreamWriter) ReadFrom(ctx context.Context, src io.Reader) (int64, error) {
	defer func() { w.span.valid = false }() // as TryWrite
	var total int64
	chunk := max(w.c/4, 64<<10)
	for {
		a, _, err := w.Spans()
		if err != nil {
			return total, err
		}
		if len(a) == 0 {
			if err := w.WaitSpace(ctx); err != nil {
				return total, err
			}
			continue
		}
		if uint64(len(a)) > chunk {
			a = a[:chunk]
		}
		n, rerr := src.Read(a)
		if n > 0 {
			if err := w.Commit(n); err != nil {
				return total, err
			}
			total += int64(n)
		}
		if rerr == io.EOF {
			return total, nil
		}
		if rerr != nil {
			return total, rerr
		}
	}
}

// WaitSpace waits until the writer has room: spinning briefly, then
// parked. It returns io.ErrClosedPipe if the reader closed its end,
// ErrPeerDead if it died, ErrDestroyed, or ctx's error.
func (w *StreamWriter) WaitSpace(ctx context.Context) error {
	if w.closed {
		return errClosedEnd
	}
	return w.await(ctx, &w.cb.SpaceWaiting, true, w.spaceReady, w.spaceCheck)
}

func (w *StreamWriter) spaceReady() (bool, error) {
	if w.readerClosed() {
		return true, errStreamReaderClosed
	}
	if w.cb.ZeroBy.Load() != 0 {
		return false, nil
	}
	st, err := w.state()
	if err != nil {
		return true, err
	}
	return w.dist(st.low, st.w) < w.c, nil
}

func (w *StreamWriter) spaceCheck() error {
	w.releaseDeadZeroer()
	return w.checkPeer(&w.cb.Reader, "reader")
}

// Notify returns a channel that receives a value whenever ev holds:
// EventSpace (room to write) or EventReset. It is level-triggered (a value
// may be spurious: check with Spans). A goroutine feeds it, parked on a
// futex while ev does not hold (one OS thread blocked in the kernel, woken
// every check interval to check the peer); the reader pays a wake-up only
// while it waits. The channel is closed, and the goroutine ends, when ctx
// is done, the end is closed, the reader closed or died, or the buffer
// was destroyed.
func (w *StreamWriter) Notify(ctx context.Context, ev StreamEvent) <-chan struct{} {
	switch ev {
	case EventSpace:
		return w.notify(ctx, &w.cb.SpaceWaiting, w.spaceReady, nil, w.spaceCheck)
	case EventReset:
		return w.notifyReset(ctx)
	}
	ch := make(chan struct{})
	close(ch)
	return ch
}

// Close releases the writer end: the reader reads what is buffered and
// then io.EOF. It stops the end's notifiers and reports whether the stream
// can be removed (the reader closed too and read everything).
func (w *StreamWriter) Close() (removable bool) {
	if w.closed {
		return false
	}
	w.closed = true
	w.stop()
	w.cb.WClosed.Store(1)
	w.cb.Writer.CompareAndSwap(uint64(w.self), 0)
	w.cb.DataWaiting.Store(0)
	backend.Wake(&w.cb.DataWaiting, 0)
	return w.Removable()
}

// ---- reader ----

// StreamReader is the reader end. Its methods must be called from one
// goroutine at a time (Notify's goroutines only read shared words).
type StreamReader struct {
	_ mem.Pad
	streamEnd
	span    streamRSpan
	scratch []byte
	backlog uint64
	// wasClosed is RClosed before the attach (see Refuse).
	wasClosed uint32
	// known: span's generation, R and Low words and positions are still
	// the stream's as far as this end knows (set by a Spans that read the
	// words, kept by Consume and trim), and knownW is W as that Spans
	// read it: W only moves forward within a generation, so the bytes
	// up to it are there (see Spans).
	known  bool
	knownW uint64
	_      mem.Pad
}

// streamRSpan is what the last Spans call handed out.
type streamRSpan struct {
	valid        bool
	gen          uint64
	word, pos    uint64 // R
	lowWord, low uint64
	avail        uint64
}

// AttachReader claims the reader end (ErrBusy if a live process holds it;
// a dead holder's end is taken over).
func (s *Stream) AttachReader() (*StreamReader, error) {
	self := sys.Self()
	if _, err := claim(&s.cb.Reader, self, "stream reader end"); err != nil {
		return nil, err
	}
	closed := s.cb.RClosed.Swap(0) // put back if refused: the writer's ErrClosedPipe depends on it
	fail := func(err error) (*StreamReader, error) {
		s.cb.RClosed.Store(closed)
		s.cb.Reader.CompareAndSwap(uint64(self), 0)
		return nil, err
	}
	if _, err := s.state(); err != nil {
		return fail(err)
	}
	n := s.cb.Backlog.Load()
	if n >= s.c {
		return fail(errs.Corrupt("stream backlog", uint64(s.cbOff)+280, "backlog %d for capacity %d", n, s.c))
	}
	return &StreamReader{streamEnd: newStreamEnd(s, self), backlog: n, wasClosed: closed}, nil
}

// Refuse lets go of a reader end just attached that its opener refuses:
// the stream is left as it was before the attach (RClosed included).
func (r *StreamReader) Refuse() {
	if r.closed {
		return
	}
	r.closed = true
	r.stop()
	r.cb.RClosed.Store(r.wasClosed)
	r.cb.Reader.CompareAndSwap(uint64(r.self), 0)
}

// Spans returns the unread bytes: one span, or two when they wrap around
// the end of the ring (a, then b). Consume releases what was used. Empty
// spans mean nothing is buffered (see WaitData).
func (r *StreamReader) Spans() (a, b []byte, err error) { return r.spansFor(0) }

// spansFor is Spans for a caller that takes at most need bytes (0: all
// there are). While the bytes up to the W read last are at least need,
// the spans are those, and the writer's words are not read again (their
// line is the writer's, written at every commit). W only moves forward
// within a generation, so those bytes are committed; no reset has begun
// (Gen is bumped first), and one that comes later fails Consume's CAS.
func (r *StreamReader) spansFor(need uint64) (a, b []byte, err error) {
	if r.closed {
		return nil, nil, errClosedEnd
	}
	r.span.valid = false
	if need > 0 && r.known && r.cb.Gen.Load()&streamGenMask == r.span.gen {
		if avail := r.dist(r.span.pos, r.knownW); avail >= need {
			r.span.valid, r.span.avail = true, avail
			a, b = r.spans(r.span.pos, avail)
			return a, b, nil
		}
	}
	r.known = false
	st, err := r.state()
	if err != nil {
		return nil, nil, err
	}
	avail := r.dist(st.r, st.w)
	r.span = streamRSpan{valid: true, gen: st.gen, word: st.rWord, pos: st.r, lowWord: st.lowWord, low: st.low, avail: avail}
	r.known, r.knownW = true, st.w
	a, b = r.spans(st.r, avail)
	return a, b, nil
}

// View returns the next n unread bytes contiguously: a span of the ring
// when they do not wrap, otherwise a private copy; Consume releases at
// most those n. ErrWouldBlock if fewer than n are buffered (what was
// handed out before stays so).
func (r *StreamReader) View(n int) ([]byte, error) {
	if n <= 0 || uint64(n) > r.c {
		return nil, fmt.Errorf("stream view of %d bytes (1..%d): %w", n, r.c, errs.ErrInvalidSize)
	}
	prev := r.span
	a, b, err := r.spansFor(uint64(n))
	if err != nil {
		return nil, err
	}
	if uint64(n) > r.span.avail {
		// Refused: what the caller held stays as it was (and the
		// stream's words are read again next time).
		r.span, r.known = prev, false
		return nil, errs.ErrWouldBlock
	}
	r.span.avail = uint64(n) // Consume releases at most the view
	if len(a) >= n {
		return a[:n:n], nil
	}
	if cap(r.scratch) < n {
		r.scratch = make([]byte, n)
	}
	k := copy(r.scratch[:n], a)
	copy(r.scratch[k:n], b)
	if r.cb.Gen.Load()&streamGenMask != r.span.gen {
		r.span.valid, r.known = false, false
		return nil, fmt.Errorf("stream view: %w", errs.ErrReset)
	}
	return r.scratch[:n:n], nil
}

// Consume releases the first n bytes of the spans (or view) to the
// writer, keeping up to the backlog limit of consumed bytes for look-back.
// After Spans it may be called several times for consecutive parts.
// ErrReset: the stream was reset since the spans were handed out; nothing
// was consumed (and what was read from them may be torn: drop it).
func (r *StreamReader) Consume(n int) error {
	if r.closed {
		return errClosedEnd
	}
	if !r.span.valid {
		return fmt.Errorf("stream consume of %d bytes without spans: %w", n, errs.ErrInvalidArgument)
	}
	if n < 0 || uint64(n) > r.span.avail {
		return fmt.Errorf("stream consume of %d bytes, %d available: %w", n, r.span.avail, errs.ErrInvalidArgument)
	}
	if n == 0 {
		return nil
	}
	nr := streamPack(r.span.gen, r.adv(r.span.pos, uint64(n)))
	if !r.cb.R.CompareAndSwap(r.span.word, nr) {
		r.span.valid, r.known = false, false
		return fmt.Errorf("stream consume: %w", errs.ErrReset)
	}
	r.span.word, r.span.pos, r.span.avail = nr, streamPos(nr), r.span.avail-uint64(n)
	r.cb.Read.Add(uint64(n))
	r.trim()
	return nil
}

// trim advances Low so that at most the backlog limit of consumed bytes
// is kept, and wakes a writer waiting for room.
func (r *StreamReader) trim() {
	if r.dist(r.span.low, r.span.pos) <= r.backlog {
		return
	}
	nl := streamPack(r.span.gen, r.back(r.span.pos, r.backlog))
	if !r.cb.Low.CompareAndSwap(r.span.lowWord, nl) {
		// A reset came after the consume: it starts everything anew.
		r.span.valid, r.known = false, false
		return
	}
	r.span.lowWord, r.span.low = nl, streamPos(nl)
	streamWake(&r.cb.SpaceWaiting)
}

// Backlog returns the consumed bytes still kept, oldest first (one span,
// or two when they wrap). They stay valid until the next Consume or
// SetBacklog (the writer never overwrites them), or a reset.
func (r *StreamReader) Backlog() (a, b []byte, err error) {
	if r.closed {
		return nil, nil, errClosedEnd
	}
	st, err := r.state()
	if err != nil {
		return nil, nil, err
	}
	a, b = r.spans(st.low, r.dist(st.low, st.r))
	return a, b, nil
}

// Rewind makes the last n consumed bytes unread again (n at most the
// backlog kept). ErrReset if a reset intervened.
func (r *StreamReader) Rewind(n int) error {
	if r.closed {
		return errClosedEnd
	}
	r.span.valid, r.known = false, false
	st, err := r.state()
	if err != nil {
		return err
	}
	if n < 0 || uint64(n) > r.dist(st.low, st.r) {
		return fmt.Errorf("stream rewind of %d bytes, %d kept: %w", n, r.dist(st.low, st.r), errs.ErrInvalidArgument)
	}
	if n == 0 {
		return nil
	}
	if !r.cb.R.CompareAndSwap(st.rWord, streamPack(st.gen, r.back(st.r, uint64(n)))) {
		return fmt.Errorf("stream rewind: %w", errs.ErrReset)
	}
	streamWake(&r.cb.DataWaiting) // this end's data notifiers
	return nil
}

// SetBacklog sets how many consumed bytes the stream keeps (below its
// capacity). Lowering it frees the writer's room at once.
func (r *StreamReader) SetBacklog(n int) error {
	if r.closed {
		return errClosedEnd
	}
	if n < 0 || uint64(n) >= r.c {
		return fmt.Errorf("stream backlog %d (0..%d): %w", n, r.c-1, errs.ErrInvalidArgument)
	}
	r.backlog = uint64(n)
	r.cb.Backlog.Store(uint64(n))
	r.known = false // Spans reads the words
	if _, _, err := r.Spans(); err != nil {
		return err
	}
	r.trim()
	r.span.valid = false
	return nil
}

// BacklogLimit is the most consumed bytes the stream keeps.
func (r *StreamReader) BacklogLimit() int { return int(r.backlog) }

// eof reports whether the writer closed and everything is read.
func (r *StreamReader) eof() (bool, error) {
	if r.cb.WClosed.Load() == 0 {
		return false, nil
	}
	st, err := r.state() // the writer commits before it closes: read again
	if err != nil {
		return false, err
	}
	return st.r == st.w, nil
}

// TryRead copies up to len(p) unread bytes into p and consumes them.
// ErrWouldBlock if nothing is buffered, io.EOF if nothing is and the
// writer closed, ErrPeerDead if nothing is and the writer died (checked
// at most once per check interval).
func (r *StreamReader) TryRead(p []byte) (int, error) {
	n, err := r.tryRead(p)
	// The spans were TryRead's own: it leaves none armed, so that a
	// later Consume of the caller's releases nothing it did not read.
	r.span.valid = false
	return n, err
}

func (r *StreamReader) tryRead(p []byte) (int, error) {
	a, b, err := r.spansFor(uint64(len(p)))
	if err != nil {
		return 0, err
	}
	if r.span.avail == 0 {
		if eof, err := r.eof(); eof || err != nil {
			if err == nil {
				err = io.EOF
			}
			return 0, err
		}
		if r.due() {
			if err := r.checkPeer(&r.cb.Writer, "writer"); err != nil {
				if a, _, _ := r.Spans(); len(a) == 0 {
					// A writer that closed and then exited between
					// the EOF check above and the liveness check is
					// not dead: its end says so now.
					if eof, eerr := r.eof(); eof || eerr != nil {
						if eerr == nil {
							eerr = io.EOF
						}
						return 0, eerr
					}
					return 0, err
				}
				return r.tryRead(p)
			}
		}
		return 0, errs.ErrWouldBlock
	}
	if len(p) == 0 {
		return 0, nil
	}
	n := copy(p, a)
	n += copy(p[n:], b)
	if err := r.Consume(n); err != nil {
		return 0, err
	}
	return n, nil
}

// Read copies at least one byte into p (up to len(p)), waiting as
// WaitData does while nothing is buffered.
func (r *StreamReader) Read(ctx context.Context, p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	for {
		n, err := r.TryRead(p)
		if err != errs.ErrWouldBlock {
			return n, err
		}
		if err := r.WaitData(ctx); err != nil {
			return 0, err
		}
	}
}

// WriteTo writes everything the stream delivers to dst, straight from the
// ring's spans, until io.EOF (returned as nil) or an error.
func (r *StreamReader) WriteTo(ctx context.Context, dst io.Writer) (int64, error) {
	defer func() { r.span.valid = false }() // as TryRead
	var total int64
	chunk := max(r.c/4, 64<<10)
	for {
		a, _, err := r.Spans()
		if err != nil {
			return total, err
		}
		if len(a) == 0 {
			err := r.WaitData(ctx)
			if err == io.EOF {
				return total, nil
			}
			if err != nil {
				return total, err
			}
			continue
		}
		if uint64(len(a)) > chunk {
			a = a[:chunk]
		}
		n, werr := dst.Write(a)
		if n > 0 {
			if err := r.Consume(n); err != nil {
				return total, err
			}
			total += int64(n)
		}
		if werr != nil {
			return total, werr
		}
		if n < len(a) {
			return total, io.ErrShortWrite
		}
	}
}

// WaitData waits until bytes are buffered: spinning briefly, then parked.
// It returns io.EOF if the writer closed and everything is read,
// ErrPeerDead if the writer died (after what it wrote is read),
// ErrDestroyed, or ctx's error.
func (r *StreamReader) WaitData(ctx context.Context) error {
	if r.closed {
		return errClosedEnd
	}
	return r.await(ctx, &r.cb.DataWaiting, true, r.dataReady, r.dataCheck)
}

func (r *StreamReader) dataReady() (bool, error) {
	st, err := r.state()
	if err != nil {
		return true, err
	}
	if st.r != st.w {
		return true, nil
	}
	if eof, err := r.eof(); eof || err != nil {
		if err == nil {
			err = io.EOF
		}
		return true, err
	}
	return false, nil
}

func (r *StreamReader) dataCheck() error { return r.checkPeer(&r.cb.Writer, "writer") }

// Notify returns a channel that receives a value whenever ev holds:
// EventData (bytes to read) or EventReset. It is level-triggered (a value
// may be spurious: check with Spans or TryRead). A goroutine feeds it,
// parked on a futex while ev does not hold (one OS thread blocked in the
// kernel, woken every check interval to check the peer); the writer pays
// a wake-up only while it waits. The channel is closed, and the goroutine
// ends, when ctx is done, the end is closed, the writer closed and
// everything is read (EOF) or it died, or the buffer was destroyed.
func (r *StreamReader) Notify(ctx context.Context, ev StreamEvent) <-chan struct{} {
	switch ev {
	case EventData:
		return r.notify(ctx, &r.cb.DataWaiting, r.dataReady, nil, r.dataCheck)
	case EventReset:
		return r.notifyReset(ctx)
	}
	ch := make(chan struct{})
	close(ch)
	return ch
}

// Close releases the reader end (unread bytes stay for a later reader;
// the writer gets io.ErrClosedPipe). It stops the end's notifiers and
// reports whether the stream can be removed (the writer closed too and
// everything was read).
func (r *StreamReader) Close() (removable bool) {
	if r.closed {
		return false
	}
	r.closed = true
	r.stop()
	r.cb.RClosed.Store(1)
	r.cb.Reader.CompareAndSwap(uint64(r.self), 0)
	r.cb.SpaceWaiting.Store(0)
	backend.Wake(&r.cb.SpaceWaiting, 0)
	return r.Removable()
}

// Interrupt wakes every thread parked on the stream's waiting words (a
// blocking call or a notifier of either end), so that it checks again (a
// closing buffer, say); the words are left as they are.
func (e *streamEnd) Interrupt() {
	backend.Wake(&e.cb.DataWaiting, 0)
	backend.Wake(&e.cb.SpaceWaiting, 0)
	backend.Wake(&e.cb.ResetWaiting, 0)
}
