package channel

import (
	"bytes"
	"context"
	"errors"
	"hash/crc32"
	"io"
	"math/rand/v2"
	"testing"
	"time"
	"unsafe"

	"github.com/heapipc/ipc/backend"
	"github.com/heapipc/ipc/internal/errs"
	"github.com/heapipc/ipc/internal/mem"
	"github.com/heapipc/ipc/internal/testutil"
	"github.com/stretchr/testify/require"
)

func TestMailboxLayout(t *testing.T) {
	var cb mailboxCB
	require.Equal(t, uintptr(mailboxCBSize), unsafe.Sizeof(cb))
	var h mbChunkHeader
	require.Equal(t, uintptr(128), unsafe.Sizeof(h))
	for _, f := range []struct {
		name      string
		got, want uintptr
	}{
		{"Magic", unsafe.Offsetof(cb.Magic), 0},
		{"Window", unsafe.Offsetof(cb.Window), 8},
		{"Requester", unsafe.Offsetof(cb.Requester), 128},
		{"ReqBusy", unsafe.Offsetof(cb.ReqBusy), 136},
		{"ReqClosed", unsafe.Offsetof(cb.ReqClosed), 140},
		{"Want", unsafe.Offsetof(cb.Want), 144},
		{"Seq", unsafe.Offsetof(cb.Seq), 152},
		{"Responder", unsafe.Offsetof(cb.Responder), 256},
		{"RespBusy", unsafe.Offsetof(cb.RespBusy), 264},
		{"RespClosed", unsafe.Offsetof(cb.RespClosed), 268},
		{"Epoch", unsafe.Offsetof(cb.Epoch), 384},
		{"Req", unsafe.Offsetof(cb.Req), 512},
		{"Rep", unsafe.Offsetof(cb.Rep), 640},
		{"hdr.Seq", unsafe.Offsetof(h.Seq), 0},
		{"hdr.Total", unsafe.Offsetof(h.Total), 8},
		{"hdr.Index", unsafe.Offsetof(h.Index), 16},
		{"hdr.Len", unsafe.Offsetof(h.Len), 24},
		{"hdr.Flags", unsafe.Offsetof(h.Flags), 32},
	} {
		require.Equal(t, f.want, f.got, "mailboxCB.%s", f.name)
	}
	require.LessOrEqual(t, len(MailboxSemNames(string(bytes.Repeat([]byte("n"), backend.MaxNameLen)), ID(^uint64(0)))[0]), backend.MaxObjectNameLen)
}

type mbFixture struct {
	*fixture
	en *Entry
	m  *Mailbox
}

func mailboxSpec(f *fixture, id ID, window uint64) Spec {
	sems, err := backend.Semaphores(f.r.SemaphoreKind())
	if err != nil {
		panic(err)
	}
	return Spec{Type: TypeMailbox, Size: window, Control: MailboxControlSize(window),
		Init: func(_ mem.Off, b []byte) error { return InitMailbox(b, window, sems, f.r.Name(), id) }}
}

func newMailbox(t *testing.T, k backend.Kind, window uint64) *mbFixture {
	t.Helper()
	f := newFixture(t, k)
	en, created, err := f.reg.LookupOrCreate(context.Background(), 1, mailboxSpec(f, 1, window))
	require.NoError(t, err)
	require.True(t, created)
	m, err := OpenMailbox(f.reg, en, WaitOptions{CheckInterval: 5 * time.Millisecond})
	require.NoError(t, err)
	mf := &mbFixture{fixture: f, en: en, m: m}
	t.Cleanup(func() {
		_, err := f.reg.Remove(context.Background(), mf.en, nil, mf.m.RemoveSems)
		require.NoError(t, err)
	})
	return mf
}

func (mf *mbFixture) ends(t *testing.T) (*MailboxRequester, *MailboxResponder) {
	t.Helper()
	ctx := context.Background()
	q, err := mf.m.AttachRequester(ctx)
	require.NoError(t, err)
	r, err := mf.m.AttachResponder(ctx)
	require.NoError(t, err)
	t.Cleanup(func() { q.Close(); r.Close() })
	return q, r
}

func (mf *mbFixture) values(t *testing.T) [4]int {
	t.Helper()
	var v [4]int
	for i, name := range mf.m.names {
		s, err := mf.m.sems.Open(name, backend.SemOptions{})
		require.NoError(t, err)
		v[i], err = s.Value()
		require.NoError(t, err)
		s.Close()
	}
	return v
}

// answer is what the test responders reply: the request's CRC, then the
// request reversed.
func answer(req []byte) []byte {
	out := make([]byte, 4+len(req))
	c := crc32.ChecksumIEEE(req)
	out[0], out[1], out[2], out[3] = byte(c), byte(c>>8), byte(c>>16), byte(c>>24)
	for i, b := range req {
		out[len(out)-1-i] = b
	}
	return out
}

func serve(ctx context.Context, r *MailboxResponder, n int) error {
	var buf []byte
	for i := 0; n < 0 || i < n; i++ {
		req, err := r.Receive(ctx, buf)
		if err != nil {
			return err
		}
		buf = req
		if err := r.Reply(ctx, answer(req)); err != nil {
			return err
		}
	}
	return nil
}

func TestMailboxSizes(t *testing.T) {
	for _, k := range []backend.Kind{backend.Heap, backend.POSIX, backend.SysV} {
		t.Run(string(k), func(t *testing.T) {
			const w = 256
			mf := newMailbox(t, k, w)
			q, r := mf.ends(t)
			require.Equal(t, [4]int{1, 0, 1, 0}, mf.values(t))
			ctx := testutil.Context(t, time.Minute)
			sizes := []int{0, 1, w - 1, w, w + 1, 3*w + 7}
			done := make(chan error, 1)
			go func() { done <- serve(ctx, r, len(sizes)) }()
			rng := rand.New(rand.NewPCG(1, 2))
			var reply []byte
			for _, n := range sizes {
				msg := make([]byte, n)
				for i := range msg {
					msg[i] = byte(rng.Uint32())
				}
				var err error
				reply, err = q.Request(ctx, msg, reply)
				require.NoError(t, err, "size %d", n)
				require.Equal(t, answer(msg), reply, "size %d", n)
			}
			require.NoError(t, <-done)
			require.Equal(t, [4]int{1, 0, 1, 0}, mf.values(t), "every unit back where it started")
			require.NoError(t, mf.m.Check())
		})
	}
}

// TestMailboxAlternationStress sends many messages of random sizes through
// a small window between two goroutines on the heap backend: the race
// detector sees every window access, so a sender writing while the
// receiver reads would be reported; every chunk's header is checked
// (index and sequence), so a lost or doubled turn would be ErrCorrupt;
// the semaphores end with their initial values.
func TestMailboxAlternationStress(t *testing.T) {
	seed := uint64(time.Now().UnixNano())
	t.Logf("seed %d", seed)
	mf := newMailbox(t, backend.Heap, 64)
	q, r := mf.ends(t)
	ctx := testutil.Context(t, time.Minute)
	const n = 2000
	done := make(chan error, 1)
	go func() { done <- serve(ctx, r, n) }()
	rng := rand.New(rand.NewPCG(seed, 3))
	var reply []byte
	for i := 0; i < n; i++ {
		msg := make([]byte, rng.IntN(300))
		for j := range msg {
			msg[j] = byte(rng.Uint32())
		}
		var err error
		reply, err = q.Request(ctx, msg, reply)
		require.NoError(t, err)
		require.Equal(t, answer(msg), reply)
	}
	require.NoError(t, <-done)
	require.Equal(t, [4]int{1, 0, 1, 0}, mf.values(t))
	require.Equal(t, uint64(n), mf.m.cb.Seq.Load())
}

func TestMailboxTimeouts(t *testing.T) {
	mf := newMailbox(t, backend.Heap, 64)
	q, r := mf.ends(t)
	ctx := testutil.Context(t, time.Minute)
	short := func() context.Context {
		c, cancel := context.WithTimeout(ctx, 20*time.Millisecond)
		t.Cleanup(cancel)
		return c
	}
	// Nobody serves: the request times out (its first chunk waits in the
	// window), and so does a Receive with nothing sent.
	_, err := q.Request(short(), []byte("first"), nil)
	require.ErrorIs(t, err, context.DeadlineExceeded)
	// A request larger than the window times out mid-message too.
	_, err = q.Request(short(), make([]byte, 200), nil)
	require.ErrorIs(t, err, context.DeadlineExceeded)

	// A responder arriving late finds only chunks of abandoned requests:
	// it drops them, and the next request is answered correctly.
	done := make(chan error, 1)
	go func() { done <- serve(ctx, r, 1) }()
	reply, err := q.Request(ctx, []byte("third"), nil)
	require.NoError(t, err)
	require.Equal(t, answer([]byte("third")), reply)
	require.NoError(t, <-done)
	_, err = r.Receive(short(), nil)
	require.ErrorIs(t, err, context.DeadlineExceeded)

	// A slow responder: the requester gives up; the late reply (larger
	// than the window) is dropped by the responder or the requester, and
	// the next exchange is right.
	slow := make(chan error, 1)
	go func() {
		req, err := r.Receive(ctx, nil)
		if err != nil {
			slow <- err
			return
		}
		time.Sleep(50 * time.Millisecond)
		slow <- r.Reply(ctx, append(bytes.Repeat([]byte("late"), 100), req...))
	}()
	_, err = q.Request(short(), []byte("slow"), nil)
	require.ErrorIs(t, err, context.DeadlineExceeded)
	require.NoError(t, <-slow, "a reply nobody waits for is dropped quietly")
	go func() { done <- serve(ctx, r, 1) }()
	reply, err = q.Request(ctx, []byte("fourth"), nil)
	require.NoError(t, err)
	require.Equal(t, answer([]byte("fourth")), reply)
	require.NoError(t, <-done)

	// A requester that gives up mid-reply: the responder stops sending,
	// at most one stale chunk is left, and the next request skips it.
	mid := make(chan error, 1)
	inFill, gaveUp := make(chan struct{}), make(chan struct{})
	go func() {
		_, err := r.Receive(ctx, nil)
		if err != nil {
			mid <- err
			return
		}
		mid <- r.ReplyFrom(ctx, 1000, func(dst []byte, off uint64) error {
			if off == 128 { // the third chunk: hold it until the requester gave up
				close(inFill)
				<-gaveUp
			}
			return nil
		})
	}()
	c, cancel := context.WithCancel(ctx)
	go func() { <-inFill; cancel() }()
	_, err = q.Request(c, []byte("big"), nil)
	require.ErrorIs(t, err, context.Canceled)
	close(gaveUp)
	require.NoError(t, <-mid, "the responder stops quietly")
	go func() { done <- serve(ctx, r, 1) }()
	reply, err = q.Request(ctx, []byte("fifth"), nil)
	require.NoError(t, err)
	require.Equal(t, answer([]byte("fifth")), reply)
	require.NoError(t, <-done)
	require.Equal(t, [4]int{1, 0, 1, 0}, mf.values(t))
}

func TestMailboxEndsAndClose(t *testing.T) {
	mf := newMailbox(t, backend.Heap, 64)
	ctx := testutil.Context(t, time.Minute)
	q, err := mf.m.AttachRequester(ctx)
	require.NoError(t, err)
	_, err = mf.m.AttachRequester(ctx)
	require.ErrorIs(t, err, errs.ErrBusy, "one requester")
	r, err := mf.m.AttachResponder(ctx)
	require.NoError(t, err)
	_, err = mf.m.AttachResponder(ctx)
	require.ErrorIs(t, err, errs.ErrBusy, "one responder")
	require.ErrorIs(t, r.Reply(ctx, nil), errs.ErrInvalidArgument, "no request to reply to")

	// The requester closes: the responder's Receive ends with io.EOF.
	require.False(t, q.Close())
	_, err = r.Receive(ctx, nil)
	require.ErrorIs(t, err, io.EOF)
	// The responder closes while a request waits for its reply: the
	// request fails with io.ErrClosedPipe.
	q, err = mf.m.AttachRequester(ctx)
	require.NoError(t, err)
	done := make(chan error, 1)
	go func() { _, err := q.Request(ctx, []byte("x"), nil); done <- err }()
	require.Eventually(t, func() bool { return mf.values(t)[mbReqRead] == 1 }, 10*time.Second, time.Millisecond, "the request is in the window")
	require.False(t, r.Close())
	require.ErrorIs(t, <-done, io.ErrClosedPipe)
	// With no responder attached (the last one closed before the
	// request), a request waits for one.
	_, err = q.Request(shortCtx(t, 30*time.Millisecond), []byte("y"), nil)
	require.ErrorIs(t, err, context.DeadlineExceeded)
	require.True(t, q.Close(), "both closed: removable")
	_, err = q.Request(ctx, nil, nil)
	require.ErrorIs(t, err, errs.ErrClosed)

	// Attaching to a removed mailbox is ErrNotExist.
	_, err = mf.reg.Remove(ctx, mf.en, nil, mf.m.RemoveSems)
	require.NoError(t, err)
	_, err = mf.m.AttachRequester(ctx)
	require.ErrorIs(t, err, errs.ErrNotExist)
	en, _, err := mf.reg.LookupOrCreate(ctx, 1, mailboxSpec(mf.fixture, 1, 64))
	require.NoError(t, err)
	mf.en = en
	mf.m, err = OpenMailbox(mf.reg, en, WaitOptions{CheckInterval: 5 * time.Millisecond})
	require.NoError(t, err)
}

func TestMailboxReplyFromAbort(t *testing.T) {
	mf := newMailbox(t, backend.Heap, 64)
	q, r := mf.ends(t)
	ctx := testutil.Context(t, time.Minute)
	boom := errors.New("boom")
	done := make(chan error, 1)
	go func() {
		if _, err := r.Receive(ctx, nil); err != nil {
			done <- err
			return
		}
		done <- r.ReplyFrom(ctx, 500, func(dst []byte, off uint64) error {
			if off >= 128 {
				return boom
			}
			for i := range dst {
				dst[i] = byte(off) + byte(i)
			}
			return nil
		})
	}()
	_, err := q.Request(ctx, []byte("stream it"), nil)
	require.ErrorIs(t, err, errMbReplyAborted)
	require.ErrorIs(t, <-done, boom)
	go func() { done <- serve(ctx, r, 1) }()
	reply, err := q.Request(ctx, []byte("next"), nil)
	require.NoError(t, err)
	require.Equal(t, answer([]byte("next")), reply)
	require.NoError(t, <-done)
}

func TestMailboxPeerDeathAndRenewal(t *testing.T) {
	mf := newMailbox(t, backend.Heap, 64)
	q, r := mf.ends(t)
	ctx := testutil.Context(t, time.Minute)
	dead := testutil.DeadIdentity(t)

	// A dead responder: the request fails within a check interval or so.
	mf.m.cb.Responder.Store(uint64(dead))
	_, err := q.Request(ctx, []byte("hello"), nil)
	require.ErrorIs(t, err, errs.ErrPeerDead)
	mf.m.cb.Responder.Store(uint64(r.self))
	// The request's chunk is in the window with no one waiting for its
	// reply: the responder drops it.
	_, err = r.Receive(shortCtx(t, 30*time.Millisecond), nil)
	require.ErrorIs(t, err, context.DeadlineExceeded)

	// A requester that died mid-message: the responder, holding part of
	// it, gets ErrPeerDead.
	c, cancel := context.WithTimeout(ctx, 20*time.Millisecond)
	_, err = q.Request(c, make([]byte, 200), nil) // 4 chunks; only the first fits
	cancel()
	require.ErrorIs(t, err, context.DeadlineExceeded)
	q.cb.Want.Store(q.cb.Seq.Load()) // as if it had died waiting, not given up
	mf.m.cb.Requester.Store(uint64(dead))
	_, err = r.Receive(ctx, nil)
	require.ErrorIs(t, err, errs.ErrPeerDead)
	// Reported once: the next Receive waits for a new requester.
	_, err = r.Receive(shortCtx(t, 30*time.Millisecond), nil)
	require.ErrorIs(t, err, context.DeadlineExceeded)

	// The dead requester held a unit (it died between its wait and its
	// post): a new requester renews the semaphores, the live responder
	// follows, and exchanges work again.
	q.Close()
	mf.m.cb.Requester.Store(uint64(dead))
	mf.m.cb.ReqBusy.Store(1)
	s, err := mf.m.sems.Open(mf.m.names[mbReqWrite], backend.SemOptions{})
	require.NoError(t, err)
	if err := s.TryWait(); err != nil { // the lost unit
		require.ErrorIs(t, err, errs.ErrWouldBlock)
	}
	s.Close()
	epoch := mf.m.cb.Epoch.Load()
	q2, err := mf.m.AttachRequester(ctx)
	require.NoError(t, err)
	defer q2.Close()
	require.Equal(t, epoch+1, mf.m.cb.Epoch.Load(), "renewed")
	require.Equal(t, [4]int{1, 0, 1, 0}, mf.values(t))
	done := make(chan error, 1)
	go func() { done <- serve(ctx, r, 3) }()
	for _, msg := range []string{"a", "bb", string(make([]byte, 150))} {
		reply, err := q2.Request(ctx, []byte(msg), nil)
		require.NoError(t, err)
		require.Equal(t, answer([]byte(msg)), reply)
	}
	require.NoError(t, <-done)

	// A dead responder that held a unit: renewed when a new one attaches;
	// the live requester follows.
	r.Close()
	mf.m.cb.Responder.Store(uint64(dead))
	mf.m.cb.RespBusy.Store(1)
	r2, err := mf.m.AttachResponder(ctx)
	require.NoError(t, err)
	defer r2.Close()
	require.Equal(t, epoch+2, mf.m.cb.Epoch.Load())
	go func() { done <- serve(ctx, r2, 1) }()
	reply, err := q2.Request(ctx, []byte("after"), nil)
	require.NoError(t, err)
	require.Equal(t, answer([]byte("after")), reply)
	require.NoError(t, <-done)
}

func shortCtx(t *testing.T, d time.Duration) context.Context {
	c, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return c
}

func TestMailboxStaleSemaphoresAtCreate(t *testing.T) {
	for _, k := range []backend.Kind{backend.Heap, backend.POSIX, backend.SysV} {
		t.Run(string(k), func(t *testing.T) {
			f := newFixture(t, k)
			sems, err := backend.Semaphores(f.r.SemaphoreKind())
			require.NoError(t, err)
			// A crashed earlier run left the semaphores with a message
			// half-way: request window taken, a request chunk pending.
			names := MailboxSemNames(f.r.Name(), 9)
			for i, v := range []int{0, 1, 0, 1} {
				s, err := sems.Create(names[i], v, backend.SemOptions{})
				require.NoError(t, err)
				s.Close()
			}
			en, _, err := f.reg.LookupOrCreate(context.Background(), 9, mailboxSpec(f, 9, 64))
			require.NoError(t, err)
			m, err := OpenMailbox(f.reg, en, WaitOptions{})
			require.NoError(t, err)
			mf := &mbFixture{fixture: f, en: en, m: m}
			require.Equal(t, [4]int{1, 0, 1, 0}, mf.values(t), "made anew, not reused")
			_, err = f.reg.Remove(context.Background(), en, nil, m.RemoveSems)
			require.NoError(t, err)
			for _, name := range names {
				_, err := sems.Open(name, backend.SemOptions{})
				require.ErrorIs(t, err, errs.ErrNotExist, "removed with the channel")
			}
		})
	}
}

func TestMailboxCorruptHeader(t *testing.T) {
	mf := newMailbox(t, backend.Heap, 64)
	q, r := mf.ends(t)
	ctx := testutil.Context(t, time.Minute)
	// A hostile requester: a chunk longer than the window.
	require.NoError(t, q.acquire(ctx, mbReqWrite, mbPhase{}))
	mf.m.cb.Req.Len.Store(1 << 40)
	mf.m.cb.Req.Flags.Store(mbChunkLast)
	require.ErrorIs(t, mf.m.Check(), errs.ErrCorrupt)
	require.NoError(t, q.post(mbReqRead))
	_, err := r.Receive(ctx, nil)
	require.ErrorIs(t, err, errs.ErrCorrupt)
	require.Equal(t, [4]int{1, 0, 1, 0}, mf.values(t), "the unit went back")
	// Chunks out of order.
	got := make(chan error, 1)
	go func() { _, err := r.Receive(ctx, nil); got <- err }()
	for _, idx := range []uint64{0, 2} {
		require.NoError(t, q.acquire(ctx, mbReqWrite, mbPhase{}))
		h := &mf.m.cb.Req
		h.Seq.Store(77)
		h.Total.Store(200)
		h.Index.Store(idx)
		h.Len.Store(64)
		h.Flags.Store(0)
		require.NoError(t, q.post(mbReqRead))
	}
	require.ErrorIs(t, <-got, errs.ErrCorrupt)
	mf.m.cb.Req.Len.Store(0)
	require.NoError(t, mf.m.Check())
	mf.m.cb.Window = 7
	_, err = OpenMailbox(mf.reg, mf.en, WaitOptions{})
	require.ErrorIs(t, err, errs.ErrCorrupt)
	mf.m.cb.Window = 64
	mf.m.cb.Magic = 0
	_, err = OpenMailbox(mf.reg, mf.en, WaitOptions{})
	require.ErrorIs(t, err, errs.ErrCorrupt)
	mf.m.cb.Magic = mailboxMagic
}

// FuzzMailboxHeader plants arbitrary chunk headers: Receive returns a
// message consistent with the header or an error — never a panic or a read
// outside the window — and the request window's unit always comes back.
func FuzzMailboxHeader(f *testing.F) {
	f.Add(uint64(1), uint64(10), uint64(0), uint64(10), uint32(mbChunkLast))
	f.Add(uint64(0), uint64(1<<62), uint64(5), uint64(64), uint32(0))
	f.Add(^uint64(0), uint64(0), uint64(0), uint64(1<<40), uint32(7))
	f.Add(uint64(3), uint64(64), uint64(0), uint64(64), uint32(mbChunkAbort))
	f.Fuzz(func(t *testing.T, seq, total, index, n uint64, flags uint32) {
		mf := newMailbox(t, backend.Heap, 64)
		q, r := mf.ends(t)
		ctx := shortCtx(t, 20*time.Millisecond)
		require.NoError(t, q.acquire(ctx, mbReqWrite, mbPhase{}))
		h := &mf.m.cb.Req
		h.Seq.Store(seq)
		h.Total.Store(total)
		h.Index.Store(index)
		h.Len.Store(n)
		h.Flags.Store(flags)
		mf.m.cb.Want.Store(seq)
		require.NoError(t, q.post(mbReqRead))
		msg, err := r.Receive(ctx, nil)
		if err == nil {
			require.Equal(t, total, uint64(len(msg)))
			require.LessOrEqual(t, total, uint64(64))
		}
		v := mf.values(t)
		require.Equal(t, 1, v[mbReqWrite]+v[mbReqRead], "the unit is not lost")
	})
}
