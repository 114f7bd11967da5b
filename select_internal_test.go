package ipc

import (
	"context"
	"testing"
	"time"

	"github.com/heapipc/ipc/alloc"
	"github.com/heapipc/ipc/internal/mem"
	"github.com/heapipc/ipc/internal/testutil"
	"github.com/stretchr/testify/require"
)

// TestClosedSelectDoorbell: a closed Select's doorbell stays a doorbell
// (the buffer gives it to its next Select), so a producer that read its
// offset before the Select took it out of the channels and rings it late
// writes into a doorbell, not into memory handed out again; the buffer's
// Close frees it.
func TestClosedSelectDoorbell(t *testing.T) {
	b := heapBuf(t)
	h, c, sel := selectOne(t, b)
	off := sel.bell.Off()
	require.NoError(t, sel.Close())

	// Memory handed out after the Close, then the late ring.
	var recs []Record
	for range 1000 {
		r, err := h.Allocate(64)
		require.NoError(t, err)
		recs = append(recs, r)
	}
	w, err := mem.Uint32(b.region.Bytes(), off)
	require.NoError(t, err)
	w.Store(1)
	require.NoError(t, b.Check(), "the late ring landed in a doorbell")
	e, err := b.heap.Extent(off)
	require.NoError(t, err)
	require.Equal(t, alloc.KindDoorbell, e.Kind)

	sel2, err := h.NewSelect(c)
	require.NoError(t, err)
	require.Equal(t, off, sel2.bell.Off(), "the next Select gets the doorbell")
	require.NoError(t, sel2.Close())
	for _, r := range recs {
		require.NoError(t, h.Free(r))
	}
	require.NoError(t, b.freeBells()) // as Close does
	_, err = b.heap.Extent(off)
	require.ErrorIs(t, err, ErrDoubleFree, "freed: its page starts a free extent")
	require.NoError(t, b.Check())
}

// TestUnclosedSelect: a Select nobody closed is closed by its handle's
// Close (its doorbell goes back to the buffer for the next Select), and
// by the buffer's Close if its handle was not closed either (the
// doorbell is freed). A closed Select refuses Receive and Add with
// ErrClosed; Add on one used to dereference its given-back doorbell.
func TestUnclosedSelect(t *testing.T) {
	b := heapBuf(t)
	h, c, sel := selectOne(t, b)
	off := sel.bell.Off()
	require.NoError(t, h.Close())
	_, _, err := sel.Receive(t.Context())
	require.ErrorIs(t, err, ErrClosed)
	require.ErrorIs(t, sel.Add(c), ErrClosed)
	require.NoError(t, sel.Close(), "closed already: nothing to do")

	h2, _, sel2 := selectOne(t, b)
	require.Equal(t, off, sel2.bell.Off(), "the next Select gets the doorbell back")

	// Neither sel2 nor h2 closed: the buffer's Close frees the doorbell.
	other, err := Open(b.Name(), WithBackends("heap", "heap"), AttachOnly())
	require.NoError(t, err)
	defer other.Close()
	require.NoError(t, b.Close())
	_, err = other.heap.Extent(off)
	require.ErrorIs(t, err, ErrDoubleFree, "freed: its page starts a free extent")
	require.NoError(t, other.Check())
	_, _, err = sel2.Receive(t.Context())
	require.ErrorIs(t, err, ErrClosed)
	require.NoError(t, h2.Close())
}

// TestRecoverBellGraceUnlocked: Recover waits out the doorbell grace
// before it frees a dead process's doorbell with the registry lock let
// go (it used to sleep inside the lock, and every process's channel
// attach and removal waited with it), and then frees it.
func TestRecoverBellGraceUnlocked(t *testing.T) {
	b := heapBuf(t)
	dead := testutil.DeadIdentity(t)
	off, err := b.heap.AllocFor(t.Context(), mem.CacheLine, alloc.KindDoorbell, dead)
	require.NoError(t, err)
	var graces int
	var lockErr error
	graceSleep = func(d time.Duration) {
		graces++
		// The lock is free: taking it does not time out.
		ctx, cancel := context.WithTimeout(t.Context(), 2*time.Second)
		defer cancel()
		_, lockErr = b.reg.FinishRemovals(ctx, nil)
		time.Sleep(d)
	}
	t.Cleanup(func() { graceSleep = time.Sleep })
	got, err := b.Recover()
	require.NoError(t, err)
	require.Equal(t, 1, graces, "Recover waited out the grace once")
	require.NoError(t, lockErr, "the registry lock was free during the grace")
	require.GreaterOrEqual(t, got, uint64(mem.CacheLine), "the doorbell came back")
	_, err = b.heap.Extent(off)
	require.ErrorIs(t, err, ErrDoubleFree, "freed: its page starts a free extent")
	require.NoError(t, b.Check())
}

// TestSelectIdleParks: an idle Select parks for the check interval at a
// time (the default one when the buffer was opened without
// WithCheckInterval); it used to pass a zero timeout and spin on the
// futex.
func TestSelectIdleParks(t *testing.T) {
	b, err := Open(testutil.Name(t), WithBackends("heap", "heap"), WithSize(8<<20))
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, b.Destroy()) })
	h, _, sel := selectOne(t, b)
	ctx, cancel := context.WithTimeout(t.Context(), 300*time.Millisecond)
	defer cancel()
	_, _, err = sel.Receive(ctx)
	require.ErrorIs(t, err, context.DeadlineExceeded)
	// 50 ms parks: 6 in 300 ms, far fewer than a loop that does not
	// sleep.
	require.LessOrEqual(t, sel.parks, 30, "parks in 300 ms")
	require.NoError(t, sel.Close())
	require.NoError(t, h.Close())
}

// TestSelectAnnouncedEnds: a producer that publishes while the Select is
// parked rings its doorbell and leaves the end announced (a record
// channel's waiting word; see channel.publish); the Select puts its ends
// back to idle when it wakes.
func TestSelectAnnouncedEnds(t *testing.T) {
	b := heapBuf(t, WithCheckInterval(time.Hour))
	h, c, sel := selectOne(t, b)
	ph, err := b.NewHandle()
	require.NoError(t, err)
	p, err := ph.Producer(1)
	require.NoError(t, err)
	r, err := ph.Allocate(8)
	require.NoError(t, err)
	waiting := func() uint32 { return c.c.Ring.Waiting() }
	var armed, woke uint32
	testSelectBeforePark = func() {
		testSelectBeforePark = nil
		armed = waiting()
		require.NoError(t, p.TrySend(r))
		woke = waiting()
	}
	t.Cleanup(func() { testSelectBeforePark = nil })
	from, got, err := sel.Receive(testutil.Context(t, 10*time.Second))
	require.NoError(t, err)
	require.Equal(t, 1, sel.parks, "the Select parked")
	// The channel package's waitBell (armed) and waitSoon (announced).
	require.Equal(t, uint32(2), armed, "armed")
	require.Equal(t, uint32(3), woke, "rung, and left announced")
	require.Zero(t, waiting(), "idle after the wait")
	require.Equal(t, Receiver(c), from)
	require.Equal(t, r.off(), got.off())
	require.NoError(t, h.Free(got))
	require.NoError(t, sel.Close())
	require.NoError(t, ph.Close())
	require.NoError(t, h.Close())
}

// selectOne opens a handle on b, the consumer end of channel 1 on it, and
// a Select over that end.
func selectOne(t *testing.T, b *Buffer) (*Handle, *Consumer, *Select) {
	t.Helper()
	h, err := b.NewHandle()
	require.NoError(t, err)
	c, err := h.Consumer(1)
	require.NoError(t, err)
	sel, err := h.NewSelect(c)
	require.NoError(t, err)
	return h, c, sel
}

// TestSelectSpinPoll: the spin's poll looks at the next spinPollEnds
// ends a call, in turn and wrapping, so that a ready end among many is
// found in the call that reaches it, wherever the poll starts, and
// nothing is found when no end is ready.
func TestSelectSpinPoll(t *testing.T) {
	b := heapBuf(t)
	h, err := b.NewHandle()
	require.NoError(t, err)
	defer h.Close()
	const ends = 2*spinPollEnds + 3
	var rs []Receiver
	for i := range ends {
		c, err := h.Consumer(ChannelID(i + 1))
		require.NoError(t, err)
		rs = append(rs, c)
	}
	sel, err := h.NewSelect(rs...)
	require.NoError(t, err)
	defer sel.Close()
	for range 3 * ends {
		require.False(t, sel.spinPoll(), "no end is ready")
	}
	for _, ready := range []int{0, spinPollEnds, ends - 1} {
		p, err := h.Producer(ChannelID(ready + 1))
		require.NoError(t, err)
		r, err := h.Allocate(8)
		require.NoError(t, err)
		require.NoError(t, p.TrySend(r))
		for start := range ends {
			sel.poll = start
			want := (ready-start+ends)%ends/spinPollEnds + 1
			calls := 0
			for calls < ends && !sel.spinPoll() {
				calls++
			}
			require.Equal(t, want, calls+1, "end %d ready, the poll starting at end %d", ready, start)
		}
		got, err := rs[ready].(*Consumer).TryReceive()
		require.NoError(t, err)
		require.NoError(t, h.Free(got))
		// p stays open (the handle's Close closes it): a closed
		// producer's end is ready, with its end of stream.
	}
}
