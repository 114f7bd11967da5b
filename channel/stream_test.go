package channel

import (
	"bytes"
	"context"
	"errors"
	"hash/crc32"
	"io"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"
	"unsafe"

	"github.com/heapipc/ipc/backend"
	"github.com/heapipc/ipc/internal/errs"
	"github.com/heapipc/ipc/internal/mem"
	"github.com/heapipc/ipc/internal/sys"
	"github.com/heapipc/ipc/internal/testutil"
	"github.com/stretchr/testify/require"
)

func TestStreamLayout(t *testing.T) {
	var cb streamCB
	require.Equal(t, uintptr(streamCBSize), unsafe.Sizeof(cb))
	for _, f := range []struct {
		name string
		got  uintptr
		want uintptr
	}{
		{"Magic", unsafe.Offsetof(cb.Magic), 0},
		{"Cap", unsafe.Offsetof(cb.Cap), 8},
		{"W", unsafe.Offsetof(cb.W), 128},
		{"Writer", unsafe.Offsetof(cb.Writer), 136},
		{"Written", unsafe.Offsetof(cb.Written), 144},
		{"WClosed", unsafe.Offsetof(cb.WClosed), 152},
		{"R", unsafe.Offsetof(cb.R), 256},
		{"Low", unsafe.Offsetof(cb.Low), 264},
		{"Read", unsafe.Offsetof(cb.Read), 272},
		{"Backlog", unsafe.Offsetof(cb.Backlog), 280},
		{"Gen", unsafe.Offsetof(cb.Gen), 384},
		{"ZeroBy", unsafe.Offsetof(cb.ZeroBy), 392},
		{"Reader", unsafe.Offsetof(cb.Reader), 400},
		{"RClosed", unsafe.Offsetof(cb.RClosed), 408},
		{"DataWaiting", unsafe.Offsetof(cb.DataWaiting), 512},
		{"SpaceWaiting", unsafe.Offsetof(cb.SpaceWaiting), 516},
		{"ResetWaiting", unsafe.Offsetof(cb.ResetWaiting), 520},
	} {
		require.Equal(t, f.want, f.got, "streamCB.%s", f.name)
	}
	// Writer-written and reader-written words on separate 128-byte lines.
	require.Equal(t, unsafe.Offsetof(cb.W)/mem.CacheLine, unsafe.Offsetof(cb.WClosed)/mem.CacheLine)
	require.NotEqual(t, unsafe.Offsetof(cb.W)/mem.CacheLine, unsafe.Offsetof(cb.R)/mem.CacheLine)
	// The reader's claim and close, which the writer reads at every
	// write, are off the line the reader writes at every read.
	require.Equal(t, unsafe.Offsetof(cb.R)/mem.CacheLine, unsafe.Offsetof(cb.Backlog)/mem.CacheLine)
	require.NotEqual(t, unsafe.Offsetof(cb.R)/mem.CacheLine, unsafe.Offsetof(cb.RClosed)/mem.CacheLine)
	require.NotEqual(t, unsafe.Offsetof(cb.R)/mem.CacheLine, unsafe.Offsetof(cb.Reader)/mem.CacheLine)
}

func streamSpec(n, backlog uint64) Spec {
	return Spec{Type: TypeStream, Size: n, Control: StreamControlSize(n),
		Init: func(_ mem.Off, b []byte) error { return InitStream(b, n, backlog) }}
}

type streamFixture struct {
	*fixture
	en *Entry
	s  *Stream
}

func newStream(t *testing.T, k backend.Kind, n, backlog uint64, opts WaitOptions) *streamFixture {
	t.Helper()
	f := newFixture(t, k)
	en, created, err := f.reg.LookupOrCreate(context.Background(), 1, streamSpec(n, backlog))
	require.NoError(t, err)
	require.True(t, created)
	s, err := OpenStream(f.r, en, opts)
	require.NoError(t, err)
	sf := &streamFixture{fixture: f, en: en, s: s}
	t.Cleanup(func() {
		_, err := f.reg.Remove(context.Background(), en, nil, nil)
		require.NoError(t, err)
	})
	return sf
}

func (sf *streamFixture) ends(t *testing.T) (*StreamWriter, *StreamReader) {
	t.Helper()
	w, err := sf.s.AttachWriter()
	require.NoError(t, err)
	r, err := sf.s.AttachReader()
	require.NoError(t, err)
	t.Cleanup(func() { w.Close(); r.Close() })
	return w, r
}

func join(a, b []byte) []byte { return append(append([]byte{}, a...), b...) }

func TestStreamSpansWrapAround(t *testing.T) {
	sf := newStream(t, backend.Heap, 10, 0, WaitOptions{}) // not a power of two
	w, r := sf.ends(t)
	_, err := sf.s.AttachWriter()
	require.ErrorIs(t, err, errs.ErrBusy, "one writer")
	_, err = sf.s.AttachReader()
	require.ErrorIs(t, err, errs.ErrBusy, "one reader")

	a, b, err := w.Spans()
	require.NoError(t, err)
	require.Len(t, a, 10)
	require.Empty(t, b)
	copy(a, "0123456")
	require.NoError(t, w.Commit(3))
	require.NoError(t, w.Commit(4), "consecutive commits after one Spans")
	require.ErrorIs(t, w.Commit(4), errs.ErrInvalidArgument, "more than the spans held")

	a, b, err = r.Spans()
	require.NoError(t, err)
	require.Equal(t, "0123456", string(join(a, b)))
	require.NoError(t, r.Consume(7))

	// Room is now positions 7..16: 3 bytes before the end of the ring, 7
	// after the wrap.
	a, b, err = w.Spans()
	require.NoError(t, err)
	require.Len(t, a, 3)
	require.Len(t, b, 7)
	copy(a, "abc")
	copy(b, "defghij")
	require.NoError(t, w.Commit(6))

	a, b, err = r.Spans()
	require.NoError(t, err)
	require.Equal(t, "abc", string(a))
	require.Equal(t, "def", string(b))
	v, err := r.View(5) // across the wrap: a private copy
	require.NoError(t, err)
	require.Equal(t, "abcde", string(v))
	_, err = r.View(7)
	require.ErrorIs(t, err, errs.ErrWouldBlock)
	require.NoError(t, r.Consume(5))
	v, err = r.View(1) // within the ring: zero-copy
	require.NoError(t, err)
	require.Equal(t, "f", string(v))
	require.Equal(t, &sf.s.ring[2], &v[0], "a view that does not wrap is the ring itself")
	require.NoError(t, r.Consume(1))

	// Reserve across the wrap: staged, copied in at Commit.
	for i := 0; i < 3; i++ { // bring W to position 8 of the ring
		_, err := w.TryWrite([]byte("x"))
		require.NoError(t, err)
	}
	buf := make([]byte, 3)
	n, err := r.TryRead(buf)
	require.NoError(t, err)
	require.Equal(t, "xxx", string(buf[:n]))
	res, err := w.Reserve(5)
	require.NoError(t, err)
	copy(res, "WRAPS")
	require.NoError(t, w.Commit(5))
	a, b, err = r.Spans()
	require.NoError(t, err)
	require.Equal(t, "WRAPS", string(join(a, b)))
	require.NotEmpty(t, b, "the reserved bytes wrapped")
	require.NoError(t, r.Consume(5))

	_, err = w.Reserve(11)
	require.ErrorIs(t, err, errs.ErrInvalidSize)
	n, err = w.TryWrite(bytes.Repeat([]byte("z"), 12))
	require.NoError(t, err)
	require.Equal(t, 10, n, "TryWrite writes what fits")
	_, err = w.TryWrite([]byte("z"))
	require.ErrorIs(t, err, errs.ErrWouldBlock)
	_, err = w.Reserve(1)
	require.ErrorIs(t, err, errs.ErrWouldBlock)

	st, err := sf.s.Stats()
	require.NoError(t, err)
	require.Equal(t, StreamStats{Capacity: 10, Buffered: 10, Written: 31, Read: 21}, st)
	require.NoError(t, sf.s.Check())
}

func TestStreamBacklogLookBackAndRewind(t *testing.T) {
	sf := newStream(t, backend.Heap, 16, 6, WaitOptions{Spin: -1, CheckInterval: 5 * time.Millisecond})
	w, r := sf.ends(t)
	require.Equal(t, 6, r.BacklogLimit())
	ctx := testutil.Context(t, time.Minute)

	_, err := w.Write(ctx, []byte("abcdefghij"))
	require.NoError(t, err)
	buf := make([]byte, 8)
	n, err := r.Read(ctx, buf)
	require.NoError(t, err)
	require.Equal(t, "abcdefgh", string(buf[:n]))
	a, b, err := r.Backlog()
	require.NoError(t, err)
	require.Equal(t, "cdefgh", string(join(a, b)), "the last 6 consumed bytes are kept")

	// The writer never overwrites the backlog: of 16 bytes, 2 are unread
	// and 6 kept, so it has 8.
	st, err := sf.s.Stats()
	require.NoError(t, err)
	require.Equal(t, 8, st.Free)
	require.Equal(t, 6, st.Backlog)
	n, err = w.TryWrite([]byte("0123456789"))
	require.NoError(t, err)
	require.Equal(t, 8, n)
	_, err = w.TryWrite([]byte("8"))
	require.ErrorIs(t, err, errs.ErrWouldBlock, "full: unread plus backlog")
	a, b, err = r.Backlog()
	require.NoError(t, err)
	require.Equal(t, "cdefgh", string(join(a, b)), "intact after the writer filled the ring")

	// Rewind into the backlog and read it again.
	require.ErrorIs(t, r.Rewind(7), errs.ErrInvalidArgument, "more than is kept")
	require.NoError(t, r.Rewind(4))
	n, err = r.Read(ctx, buf[:6])
	require.NoError(t, err)
	require.Equal(t, "efghij", string(buf[:n]), "rewound bytes come again, then the rest")

	// A writer blocked on the full ring is woken when the reader gives up
	// its backlog.
	done := make(chan error, 1)
	go func() {
		_, err := w.Write(ctx, []byte("89ABCD"))
		done <- err
	}()
	time.Sleep(10 * time.Millisecond)
	require.NoError(t, r.SetBacklog(0))
	require.NoError(t, <-done)
	a, b, err = r.Backlog()
	require.NoError(t, err)
	require.Empty(t, join(a, b))
	all := make([]byte, 0, 16)
	for len(all) < 14 {
		n, err := r.Read(ctx, buf)
		require.NoError(t, err)
		all = append(all, buf[:n]...)
	}
	require.Equal(t, "0123456789ABCD", string(all))
	require.ErrorIs(t, r.SetBacklog(16), errs.ErrInvalidArgument, "the backlog stays below the capacity")

	// A larger backlog does not bring back bytes already given to the
	// writer: it grows as the reader reads.
	require.NoError(t, r.SetBacklog(12))
	a, b, _ = r.Backlog()
	require.Empty(t, join(a, b))
	_, err = w.Write(ctx, []byte("klmnop"))
	require.NoError(t, err)
	_, err = r.Read(ctx, buf)
	require.NoError(t, err)
	a, b, _ = r.Backlog()
	require.Equal(t, "klmnop", string(join(a, b)))
	require.NoError(t, sf.s.Check())
}

func TestStreamResetDropsInFlightCommitAndConsume(t *testing.T) {
	sf := newStream(t, backend.Heap, 64, 8, WaitOptions{})
	w, r := sf.ends(t)
	ctx := testutil.Context(t, time.Minute)
	_, err := w.Write(ctx, []byte("before the reset"))
	require.NoError(t, err)

	// The writer fills spans; the reader resets; the commit is dropped.
	a, _, err := w.Spans()
	require.NoError(t, err)
	copy(a, "lost")
	gen := sf.s.Generation()
	require.NoError(t, r.Reset())
	require.Equal(t, gen+1, sf.s.Generation())
	require.ErrorIs(t, w.Commit(4), errs.ErrReset)
	require.ErrorIs(t, w.Commit(0), errs.ErrInvalidArgument, "the spans are gone after ErrReset")
	st, err := sf.s.Stats()
	require.NoError(t, err)
	require.Zero(t, st.Buffered, "nothing of the old state or the dropped commit")
	require.Zero(t, st.Backlog)

	// The reader holds spans; the writer resets; the consume is dropped.
	_, err = w.Write(ctx, []byte("new data"))
	require.NoError(t, err)
	a, b, err := r.Spans()
	require.NoError(t, err)
	require.Equal(t, "new data", string(join(a, b)))
	require.NoError(t, w.Reset())
	require.ErrorIs(t, r.Consume(3), errs.ErrReset)
	_, err = w.Write(ctx, []byte("after"))
	require.NoError(t, err)
	buf := make([]byte, 16)
	n, err := r.Read(ctx, buf)
	require.NoError(t, err)
	require.Equal(t, "after", string(buf[:n]), "the dropped consume did not eat the new data")

	// A staged reservation across a reset is dropped too.
	res, err := w.Reserve(3)
	require.NoError(t, err)
	copy(res, "xyz")
	require.NoError(t, r.Reset())
	require.ErrorIs(t, w.Commit(3), errs.ErrReset)

	// A resetter that died half-way (Gen bumped, only W moved): the next
	// operation of anyone finishes the reset.
	sf.cutReset(t, w, r)

	// Zero clears the bytes as well.
	_, err = w.Write(ctx, []byte("secret"))
	require.NoError(t, err)
	require.NoError(t, w.Zero())
	require.Equal(t, make([]byte, 64), sf.s.ring)
	n, err = w.Peek(buf)
	require.NoError(t, err)
	require.Zero(t, n)
	require.NoError(t, sf.s.Check())
}

// TestStreamGenWrap: the generation in the position words is Gen modulo
// 2^23; across the wrap (from the last generation to 0) a reset still
// drops the commit in flight, a reset cut short after moving only W is
// finished by the next operation, and the stream goes on working.
func TestStreamGenWrap(t *testing.T) {
	sf := newStream(t, backend.Heap, 64, 8, WaitOptions{})
	w, r := sf.ends(t)
	ctx := testutil.Context(t, time.Minute)
	last := uint64(streamGenMask)
	sf.s.cb.Gen.Store(last)
	for _, word := range []*atomic.Uint64{&sf.s.cb.W, &sf.s.cb.R, &sf.s.cb.Low} {
		word.Store(streamPack(last, 0))
	}
	require.NoError(t, sf.s.Check(), "a stream at the last generation")
	_, err := w.Write(ctx, []byte("before"))
	require.NoError(t, err)
	a, _, err := w.Spans()
	require.NoError(t, err)
	copy(a, "lost")
	require.NoError(t, r.Reset())
	require.Equal(t, last+1, sf.s.Generation(), "Gen counts on")
	require.Equal(t, streamPack(0, 0), sf.s.cb.W.Load(), "the words wrap to generation 0")
	require.ErrorIs(t, w.Commit(4), errs.ErrReset, "the commit of the last generation is dropped")

	_, err = w.Write(ctx, []byte("after"))
	require.NoError(t, err)
	buf := make([]byte, 16)
	n, err := r.Read(ctx, buf)
	require.NoError(t, err)
	require.Equal(t, "after", string(buf[:n]))

	// Back at the last generation, a resetter that dies after bumping
	// Gen (to generation 0) and moving only W: the next operation
	// finishes the reset across the wrap.
	sf.s.cb.Gen.Store(last)
	for _, word := range []*atomic.Uint64{&sf.s.cb.W, &sf.s.cb.R, &sf.s.cb.Low} {
		word.Store(streamPack(last, 0))
	}
	require.Zero(t, sf.cutReset(t, w, r), "the cut reset went to generation 0")
	require.NoError(t, sf.s.Check())
}

// cutReset plays a resetter that died half-way, with bytes buffered: Gen
// bumped and only W moved to the new generation. It checks that the next
// operation of anyone (Stats) finishes the reset, and that the stream
// goes on working, and returns the generation the reset went to.
func (sf *streamFixture) cutReset(t *testing.T, w *StreamWriter, r *StreamReader) uint64 {
	t.Helper()
	ctx := testutil.Context(t, time.Minute)
	buf := make([]byte, 16)
	_, err := w.Write(ctx, []byte("0123456789"))
	require.NoError(t, err)
	_, err = r.Read(ctx, buf[:4])
	require.NoError(t, err)
	g := sf.s.cb.Gen.Add(1) & streamGenMask
	sf.s.cb.W.Store(streamPack(g, 0))
	st, err := sf.s.Stats()
	require.NoError(t, err)
	require.Zero(t, st.Buffered)
	require.Equal(t, streamPack(g, 0), sf.s.cb.R.Load())
	require.Equal(t, streamPack(g, 0), sf.s.cb.Low.Load())
	_, err = w.Write(ctx, []byte("ok"))
	require.NoError(t, err)
	n, err := r.Read(ctx, buf)
	require.NoError(t, err)
	require.Equal(t, "ok", string(buf[:n]))
	return g
}

// TestStreamKnownPositions: small writes and reads use the peer's
// position as last read (the writer Low, the reader W) while it covers
// what they need, and read the words again when it does not, after a
// reset by either end, and when the ring is being zeroed; neither end
// ever goes past the peer's real position.
func TestStreamKnownPositions(t *testing.T) {
	sf := newStream(t, backend.Heap, 16, 4, WaitOptions{})
	w, r := sf.ends(t)
	buf := make([]byte, 16)
	write := func(s string) {
		t.Helper()
		n, err := w.TryWrite([]byte(s))
		require.NoError(t, err)
		require.Equal(t, len(s), n)
	}
	read := func(want string) {
		t.Helper()
		n, err := r.TryRead(buf[:len(want)])
		require.NoError(t, err)
		require.Equal(t, want, string(buf[:n]))
	}
	write("aaaa")
	read("aa") // the reader knows of 4 bytes
	write("bbbb")
	read("aa")
	read("bb") // read again: 2 known were fewer than asked
	require.True(t, w.known && r.known)

	// A reset by the reader: the writer's next write is the new
	// generation's first bytes, not an ErrReset of the old one.
	require.NoError(t, r.Reset())
	write("cccc")
	read("cccc")
	// A reset by the writer while the reader knows of unread bytes: they
	// are gone, and the reader reads the new generation's.
	write("dddd")
	read("dd")
	require.NoError(t, w.Reset())
	write("eeee")
	read("ee")
	read("ee")

	// The writer's known room never covers unread or kept bytes: of 16,
	// 4 are kept (backlog) once read.
	write("0123456789ab") // 12 bytes: all the room there is
	_, err := w.TryWrite([]byte("x"))
	require.ErrorIs(t, err, errs.ErrWouldBlock)
	read("0123456789ab")
	a, b, err := r.Backlog()
	require.NoError(t, err)
	require.Equal(t, "89ab", string(join(a, b)))
	write("ABCDEFGHIJKL")
	_, err = w.TryWrite([]byte("x"))
	require.ErrorIs(t, err, errs.ErrWouldBlock, "the backlog is not overwritten")
	a, b, err = r.Backlog()
	require.NoError(t, err)
	require.Equal(t, "89ab", string(join(a, b)))
	read("ABCDEFGHIJKL")

	// While the ring is being zeroed the writer gets no room, known or
	// not.
	_, _, err = w.Spans() // the writer knows of the room again
	require.NoError(t, err)
	require.Equal(t, uint64(12), w.span.free)
	sf.s.cb.ZeroBy.Store(uint64(sys.Self()))
	_, err = w.TryWrite([]byte("z"))
	require.ErrorIs(t, err, errs.ErrWouldBlock)
	sf.s.cb.ZeroBy.Store(0)
	write("z")
	read("z")
	require.NoError(t, sf.s.Check())
}

func TestStreamPeekFromBothEnds(t *testing.T) {
	sf := newStream(t, backend.Heap, 8, 0, WaitOptions{})
	w, r := sf.ends(t)
	_, err := w.TryWrite([]byte("peek"))
	require.NoError(t, err)
	buf := make([]byte, 8)
	for _, e := range []*streamEnd{&w.streamEnd, &r.streamEnd} {
		n, err := e.Peek(buf)
		require.NoError(t, err)
		require.Equal(t, "peek", string(buf[:n]))
	}
	n, err := r.TryRead(buf)
	require.NoError(t, err)
	require.Equal(t, 4, n, "peeking consumed nothing")
}

func recv(t *testing.T, ch <-chan struct{}, what string) {
	t.Helper()
	select {
	case _, ok := <-ch:
		require.True(t, ok, "%s: channel closed", what)
	case <-time.After(10 * time.Second):
		t.Fatalf("%s: no notification", what)
	}
}

func TestStreamNotifySelect(t *testing.T) {
	sf := newStream(t, backend.Heap, 8, 0, WaitOptions{Spin: -1, CheckInterval: 10 * time.Millisecond})
	w, r := sf.ends(t)
	ctx, cancel := context.WithCancel(context.Background())
	data := r.Notify(ctx, EventData)
	space := w.Notify(ctx, EventSpace)
	resets := r.Notify(ctx, EventReset)

	recv(t, space, "room at the start")
	select {
	case <-data:
		t.Fatal("data notified on an empty stream")
	case <-time.After(20 * time.Millisecond):
	}
	// The writer pays no wake-up when nobody waits; here the notifier
	// waits, so the commit wakes it.
	_, err := w.TryWrite([]byte("12345678"))
	require.NoError(t, err)
	recv(t, data, "data after a write")
	// The space channel is level-triggered: a value sent while there was
	// room may still be queued or in flight. Drop what comes until the
	// ring is seen full, then a read must bring a notification with room.
	buf := make([]byte, 8)
	_, err = r.TryRead(buf)
	require.NoError(t, err)
	for {
		recv(t, space, "space after a read")
		if a, _, err := w.Spans(); err == nil && len(a) > 0 {
			break
		}
	}

	require.NoError(t, w.Reset())
	recv(t, resets, "a reset")
	select {
	case <-resets:
		t.Fatal("one reset notified twice")
	case <-time.After(20 * time.Millisecond):
	}

	// Cancelling closes the channels and ends the goroutines.
	cancel()
	for _, ch := range []<-chan struct{}{data, space, resets} {
		require.Eventually(t, func() bool {
			select {
			case _, ok := <-ch:
				return !ok
			default:
				return false
			}
		}, 10*time.Second, time.Millisecond)
	}
	// Closing an end stops its notifiers too.
	d2 := r.Notify(context.Background(), EventData)
	r.Close()
	for range d2 {
	}
	// The writer's EOF closes a reader's data channel.
	r2, err := sf.s.AttachReader()
	require.NoError(t, err)
	d3 := r2.Notify(context.Background(), EventData)
	w.Close()
	for range d3 {
	}
	_, err = r2.Read(context.Background(), buf)
	require.ErrorIs(t, err, io.EOF)
	require.True(t, r2.Close(), "both closed and drained: removable")
}

// TestStreamConcurrent moves many bytes through a small ring between two
// goroutines with random span sizes, on the heap backend so the race
// detector sees every access; it checks order and checksum.
func TestStreamConcurrent(t *testing.T) {
	seed := uint64(time.Now().UnixNano())
	t.Logf("seed %d", seed)
	sf := newStream(t, backend.Heap, 1000, 100, WaitOptions{Spin: time.Microsecond, CheckInterval: 10 * time.Millisecond})
	w, r := sf.ends(t)
	ctx := testutil.Context(t, time.Minute)
	const total = 2 << 20
	var sent uint32
	go func() {
		rng := rand.New(rand.NewPCG(seed, 1))
		h := crc32.NewIEEE()
		left := total
		for left > 0 {
			var err error
			switch rng.IntN(3) {
			case 0: // spans
				var a, b []byte
				if a, b, err = w.Spans(); err == nil {
					if len(a) == 0 {
						err = w.WaitSpace(ctx)
						break
					}
					n := min(left, len(a)+len(b), 1+rng.IntN(300))
					for i := 0; i < n; i++ {
						v := byte(rng.Uint32())
						if i < len(a) {
							a[i] = v
						} else {
							b[i-len(a)] = v
						}
					}
					h.Write(join(a, b)[:n])
					err = w.Commit(n)
					left -= n
				}
			case 1: // reserve
				n := min(left, 1+rng.IntN(200))
				var v []byte
				if v, err = w.Reserve(n); err == errs.ErrWouldBlock {
					err = w.WaitSpace(ctx)
				} else if err == nil {
					for i := range v {
						v[i] = byte(rng.Uint32())
					}
					h.Write(v)
					err = w.Commit(n)
					left -= n
				}
			default: // write
				p := make([]byte, min(left, 1+rng.IntN(700)))
				for i := range p {
					p[i] = byte(rng.Uint32())
				}
				h.Write(p)
				_, err = w.Write(ctx, p)
				left -= len(p)
			}
			if err != nil {
				t.Error(err)
				return
			}
		}
		sent = h.Sum32()
		w.Close()
	}()
	rng := rand.New(rand.NewPCG(seed, 2))
	h := crc32.NewIEEE()
	got := 0
	buf := make([]byte, 600)
	for {
		var err error
		switch rng.IntN(4) {
		case 0:
			var a, b []byte
			if a, b, err = r.Spans(); err == nil {
				if len(a) == 0 {
					if err = r.WaitData(ctx); err == io.EOF {
						goto end
					}
					break
				}
				n := 1 + rng.IntN(len(a)+len(b))
				h.Write(join(a, b)[:n])
				err = r.Consume(n)
				got += n
			}
		case 1:
			n := 1 + rng.IntN(300)
			var v []byte
			if v, err = r.View(n); err == errs.ErrWouldBlock {
				if err = r.WaitData(ctx); err == io.EOF {
					// fewer than n left: read the rest below
					err = nil
				}
			} else if err == nil {
				h.Write(v)
				err = r.Consume(n)
				got += n
			}
		case 2: // look back and rewind a little
			a, b, berr := r.Backlog()
			if berr == nil && len(a)+len(b) > 10 {
				require.NoError(t, r.Rewind(10))
				n, err := r.Read(ctx, buf[:10])
				require.NoError(t, err)
				require.Equal(t, join(a, b)[len(a)+len(b)-10:][:n], buf[:n], "rewound bytes are the backlog's")
				if n < 10 { // read the rest of the rewound bytes
					_, err = io.ReadFull(readerOf(ctx, r), buf[n:10])
					require.NoError(t, err)
				}
			}
			err = berr
		default:
			var n int
			n, err = r.Read(ctx, buf[:1+rng.IntN(len(buf))])
			if err == io.EOF {
				goto end
			}
			h.Write(buf[:n])
			got += n
		}
		require.NoError(t, err)
	}
end:
	require.Equal(t, total, got)
	require.Equal(t, sent, h.Sum32(), "checksums match")
	st, err := sf.s.Stats()
	require.NoError(t, err)
	require.Equal(t, uint64(total), st.Written)
}

type ctxReader struct {
	ctx context.Context
	r   *StreamReader
}

func (c ctxReader) Read(p []byte) (int, error) { return c.r.Read(c.ctx, p) }

func readerOf(ctx context.Context, r *StreamReader) io.Reader { return ctxReader{ctx, r} }

// TestStreamConcurrentResets runs a writer and a reader while a third
// goroutine resets and zeroes: every commit and consume either applies or
// fails with ErrReset, and the invariants hold throughout. The ends touch
// only the protocol words here: a reset lets the writer rewrite bytes a
// reader is still copying (which its failing Consume then reports), a race
// by design that the race detector would flag on the heap backend; the
// bytes are checked across processes in tests/.
func TestStreamConcurrentResets(t *testing.T) {
	sf := newStream(t, backend.Heap, 256, 32, WaitOptions{Spin: time.Microsecond, CheckInterval: 5 * time.Millisecond})
	w, r := sf.ends(t)
	ctx := testutil.Context(t, time.Minute)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var commits, writeResets int
	wg.Add(2)
	go func() { // writer
		defer wg.Done()
		for i := 1; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			a, b, err := w.Spans()
			if err != nil {
				t.Error(err)
				return
			}
			if len(a) == 0 {
				c, cancel := context.WithTimeout(ctx, time.Millisecond)
				w.WaitSpace(c)
				cancel()
				continue
			}
			if i%5 == 0 {
				time.Sleep(20 * time.Microsecond) // widen the window for a reset
			}
			err = w.Commit(min(len(a)+len(b), i%37+1))
			if errors.Is(err, errs.ErrReset) {
				writeResets++
			} else if err != nil {
				t.Error(err)
				return
			} else {
				commits++
			}
		}
	}()
	go func() { // resetter
		defer wg.Done()
		defer close(stop)
		for i := 0; i < 300; i++ {
			time.Sleep(50 * time.Microsecond)
			if i%7 == 0 {
				if err := w.Zero(); err != nil && !errors.Is(err, errs.ErrBusy) {
					t.Error(err)
				}
			} else if err := r.Reset(); err != nil {
				t.Error(err)
			}
		}
	}()
	consumes, readResets := 0, 0
	for i := 1; ; i++ {
		select {
		case <-stop:
			wg.Wait()
			t.Logf("%d commits and %d consumes applied, %d and %d dropped by resets", commits, consumes, writeResets, readResets)
			require.NoError(t, sf.s.Check())
			st, err := sf.s.Stats()
			require.NoError(t, err)
			require.LessOrEqual(t, st.Buffered+st.Backlog+st.Free, 256)
			return
		default:
		}
		a, b, err := r.Spans()
		require.NoError(t, err)
		if len(a) == 0 {
			c, cancel := context.WithTimeout(ctx, time.Millisecond)
			r.WaitData(c)
			cancel()
			continue
		}
		if i%11 == 0 {
			if err := r.Rewind(1); err != nil && !errors.Is(err, errs.ErrInvalidArgument) && !errors.Is(err, errs.ErrReset) {
				require.NoError(t, err)
			}
			continue
		}
		if i%5 == 0 {
			time.Sleep(20 * time.Microsecond)
		}
		err = r.Consume(min(len(a)+len(b), i%23+1))
		if errors.Is(err, errs.ErrReset) {
			readResets++
		} else {
			require.NoError(t, err)
			consumes++
		}
		require.NoError(t, sf.s.Check())
	}
}

func TestStreamPeerDeath(t *testing.T) {
	sf := newStream(t, backend.Heap, 16, 0, WaitOptions{Spin: -1, CheckInterval: 5 * time.Millisecond})
	r, err := sf.s.AttachReader()
	require.NoError(t, err)
	defer r.Close()
	ctx := testutil.Context(t, 10*time.Second)

	// A writer that died: what it wrote is read, then ErrPeerDead.
	dead := testutil.DeadIdentity(t)
	sf.s.cb.Writer.Store(uint64(dead))
	copy(sf.s.ring, "last")
	sf.s.cb.W.Store(streamPack(0, 4))
	buf := make([]byte, 8)
	n, err := r.Read(ctx, buf)
	require.NoError(t, err)
	require.Equal(t, "last", string(buf[:n]))
	_, err = r.Read(ctx, buf)
	require.ErrorIs(t, err, errs.ErrPeerDead)
	r.lastCheck = time.Time{}
	_, err = r.TryRead(buf)
	require.ErrorIs(t, err, errs.ErrPeerDead, "TryRead checks too")
	dch := r.Notify(ctx, EventData)
	for range dch {
	} // closed: the writer is dead

	// A new writer takes the dead one's end over.
	w, err := sf.s.AttachWriter()
	require.NoError(t, err)
	_, err = w.TryWrite([]byte("again"))
	require.NoError(t, err)
	n, err = r.Read(ctx, buf)
	require.NoError(t, err)
	require.Equal(t, "again", string(buf[:n]))

	// A reader that died: a writer waiting for room learns it.
	r.Close()
	sf.s.cb.Reader.Store(uint64(dead))
	sf.s.cb.RClosed.Store(0)
	_, err = w.TryWrite(make([]byte, 16))
	require.NoError(t, err)
	_, err = w.Write(ctx, []byte("x"))
	require.ErrorIs(t, err, errs.ErrPeerDead)

	// A reader that closed: io.ErrClosedPipe at once.
	sf.s.cb.Reader.Store(0)
	sf.s.cb.RClosed.Store(1)
	_, err = w.TryWrite([]byte("x"))
	require.ErrorIs(t, err, io.ErrClosedPipe)
	require.False(t, w.Close(), "unread bytes: not removable")
	require.True(t, sf.s.Abandoned())
}

func TestStreamDestroyedWakesWaiter(t *testing.T) {
	sf := newStream(t, backend.Heap, 16, 0, WaitOptions{Spin: -1, CheckInterval: 5 * time.Millisecond})
	_, r := sf.ends(t)
	done := make(chan error, 1)
	go func() { _, err := r.Read(context.Background(), make([]byte, 4)); done <- err }()
	time.Sleep(10 * time.Millisecond)
	sf.r.MarkDestroyed()
	select {
	case err := <-done:
		require.ErrorIs(t, err, errs.ErrDestroyed)
	case <-time.After(10 * time.Second):
		t.Fatal("a destroyed buffer left its reader hanging")
	}
}

func TestStreamCorruptWords(t *testing.T) {
	sf := newStream(t, backend.Heap, 16, 0, WaitOptions{})
	w, r := sf.ends(t)
	sf.s.cb.W.Store(streamPack(0, 1000)) // a hostile writer
	_, _, err := r.Spans()
	require.ErrorIs(t, err, errs.ErrCorrupt)
	_, err = r.TryRead(make([]byte, 4))
	require.ErrorIs(t, err, errs.ErrCorrupt)
	require.ErrorIs(t, sf.s.Check(), errs.ErrCorrupt)
	sf.s.cb.W.Store(streamPack(0, 20)) // in range, but 20 unread bytes in a ring of 16
	_, _, err = w.Spans()
	require.ErrorIs(t, err, errs.ErrCorrupt)
	require.ErrorIs(t, sf.s.Check(), errs.ErrCorrupt)
	sf.s.cb.W.Store(streamPack(5, 0)) // a generation from the future
	_, _, err = r.Spans()
	require.ErrorIs(t, err, errs.ErrCorrupt)
	sf.s.cb.W.Store(0)
	require.NoError(t, sf.s.Check())
	// Check names the offset of the word that is out of range.
	for _, c := range []struct {
		w  *atomic.Uint64
		at uintptr
	}{{&sf.s.cb.W, unsafe.Offsetof(sf.s.cb.W)}, {&sf.s.cb.R, unsafe.Offsetof(sf.s.cb.R)}, {&sf.s.cb.Low, unsafe.Offsetof(sf.s.cb.Low)}} {
		old := c.w.Load()
		c.w.Store(streamPack(0, 1000))
		var ce *errs.CorruptError
		require.ErrorAs(t, sf.s.Check(), &ce)
		require.Equal(t, uint64(sf.en.Control)+uint64(c.at), ce.Off)
		c.w.Store(old)
	}
	sf.s.cb.Backlog.Store(99)
	require.ErrorIs(t, sf.s.Check(), errs.ErrCorrupt)
	r.Close()
	_, err = sf.s.AttachReader()
	require.ErrorIs(t, err, errs.ErrCorrupt)
	sf.s.cb.Backlog.Store(0)

	sf.s.cb.Cap = 17
	_, err = OpenStream(sf.r, sf.en, WaitOptions{})
	require.ErrorIs(t, err, errs.ErrCorrupt)
	sf.s.cb.Cap = 16
	sf.s.cb.Magic = 1
	_, err = OpenStream(sf.r, sf.en, WaitOptions{})
	require.ErrorIs(t, err, errs.ErrCorrupt)
	sf.s.cb.Magic = streamMagic
}

// FuzzStreamWords sets the shared words of a stream to arbitrary values:
// every operation returns an error or works, and never panics or reads
// outside the ring.
func FuzzStreamWords(f *testing.F) {
	f.Add(uint64(0), uint64(0), uint64(0), uint64(0), uint64(0), 3)
	f.Add(streamPack(1, 5), streamPack(1, 3), streamPack(1, 2), uint64(1), uint64(4), 7)
	f.Add(uint64(1)<<63, uint64(7), ^uint64(0), uint64(1)<<40, uint64(99), 15)
	f.Fuzz(func(t *testing.T, W, R, low, gen, backlog uint64, n int) {
		sf := newStream(t, backend.Heap, 16, 0, WaitOptions{Spin: -1, CheckInterval: time.Millisecond})
		w, r := sf.ends(t)
		sf.s.cb.W.Store(W)
		sf.s.cb.R.Store(R)
		sf.s.cb.Low.Store(low)
		sf.s.cb.Gen.Store(gen)
		sf.s.cb.Backlog.Store(backlog)
		n = n & 31
		buf := make([]byte, n)
		sf.s.Check()
		sf.s.Stats()
		w.TryWrite(buf)
		w.Reserve(max(n, 1))
		w.Commit(n)
		r.TryRead(buf)
		r.View(max(n, 1))
		r.Consume(n)
		r.Backlog()
		r.Rewind(n)
		r.SetBacklog(n)
		r.Peek(buf)
		if err := sf.s.Check(); err != nil {
			require.ErrorIs(t, err, errs.ErrCorrupt)
		}
		// A reset raises every word of an older generation and replaces
		// one of a later generation; a second one also clears a word
		// that was planted with the first reset's generation.
		require.NoError(t, r.Reset())
		require.NoError(t, w.Reset())
		sf.s.cb.Backlog.Store(0)
		require.NoError(t, sf.s.Check(), "two resets repair any positions")
	})
}

// TestStreamRefusedAttachKeepsClose: an attach refused for damage puts the
// other end's view of the previous holder's close back (the reader's EOF
// after a writer's close, the writer's ErrClosedPipe after a reader's).
func TestStreamRefusedAttachKeepsClose(t *testing.T) {
	sf := newStream(t, backend.Heap, 64, 8, WaitOptions{})
	w, r := sf.ends(t)
	w.Close()
	r.Close()
	cb := sf.s.cb
	require.Equal(t, uint32(1), cb.WClosed.Load())
	require.Equal(t, uint32(1), cb.RClosed.Load())

	backlog := cb.Backlog.Load()
	cb.Backlog.Store(1 << 20)
	_, err := sf.s.AttachReader()
	require.ErrorIs(t, err, errs.ErrCorrupt)
	require.Equal(t, uint32(1), cb.RClosed.Load(), "reader's close mark after a refused reader attach")
	cb.Backlog.Store(backlog)

	wword := cb.W.Load()
	cb.W.Store(wword + sf.s.c2) // a position beyond the ring's
	_, err = sf.s.AttachWriter()
	require.ErrorIs(t, err, errs.ErrCorrupt)
	require.Equal(t, uint32(1), cb.WClosed.Load(), "writer's close mark after a refused writer attach")
	cb.W.Store(wword)

	require.Zero(t, cb.Writer.Load())
	require.Zero(t, cb.Reader.Load())
}
