package ipc

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// TestFreeWithWindow: records that Receive took ahead and that the
// consumer's handle frees in the order they were delivered are held back
// (marked freed, their bits not set) and freed together when the last of
// the window is; a record freed out of that order, kept, or sent on is
// freed on its own, and what was held back is freed when the window is
// dropped: at the next Receive once the window is delivered, before a
// Receive waits, at ReceiveBatch, ReceiveEach and Close. A held-back
// record cannot be freed or sent again, and nothing is lost or freed
// twice: Check passes and every record comes back.
func TestFreeWithWindow(t *testing.T) {
	ctx := context.Background()
	b := heapBuf(t)
	h, p, co := loopback(t, b, 1)
	send := func(n int) {
		t.Helper()
		for i := range n {
			r, err := h.Allocate(48)
			require.NoError(t, err)
			r.Bytes()[0] = byte(i)
			require.NoError(t, p.Send(ctx, r))
		}
	}
	recv := func() Record {
		t.Helper()
		r, err := co.Receive(ctx)
		require.NoError(t, err)
		return r
	}
	live := func() int64 { t.Helper(); return liveRecords(t, b) }
	a := co.ahead
	// window sends n records and one before them, which the first
	// Receive, reading the producer's index, takes alone; the next
	// Receive takes the n ahead.
	window := func(n int) {
		t.Helper()
		send(n + 1)
		require.NoError(t, h.Free(recv()))
		require.Zero(t, a.n, "taken alone")
	}

	// In order: held back, then the window's runs freed at once.
	window(aheadMax + 4)
	first := recv()
	require.Equal(t, aheadMax, a.n, "taken ahead")
	require.NoError(t, h.Free(first))
	require.Equal(t, 1, a.freed, "held back")
	require.Equal(t, int64(aheadMax+4), live(), "counted live until its window is freed")
	require.ErrorIs(t, h.Free(first), ErrDoubleFree, "freed already: its free is under way")
	require.ErrorIs(t, b.Free(first), ErrDoubleFree)
	require.ErrorIs(t, p.Send(ctx, first), ErrNotAllocated)
	require.Equal(t, 1, a.freed, "the refused calls changed nothing")
	for range aheadMax - 1 {
		require.NoError(t, h.Free(recv()))
	}
	require.Zero(t, a.freed+a.n, "the window freed")
	require.Equal(t, int64(4), live(), "the window's records came back; 4 still queued")
	for range 4 {
		require.NoError(t, h.Free(recv()))
	}
	require.Zero(t, live())

	// Out of order: the second of a window freed first (on its own),
	// then the first (held back), then the third, which no longer
	// follows in order (on its own). The held-back one is freed when the
	// window, delivered, is dropped by the next Receive.
	window(aheadMax)
	r0, r1, r2 := recv(), recv(), recv()
	require.NoError(t, h.Free(r1))
	require.Zero(t, a.freed)
	require.NoError(t, h.Free(r0))
	require.Equal(t, 1, a.freed)
	require.NoError(t, h.Free(r2))
	require.Equal(t, 1, a.freed, "out of order: freed on its own")
	require.Equal(t, int64(aheadMax-2), live())
	var rest []Record
	for range aheadMax - 3 {
		rest = append(rest, recv())
	}
	require.Equal(t, a.n, a.next, "delivered")
	// A Receive that waits drops the window first.
	wctx, cancel := context.WithTimeout(ctx, 20*time.Millisecond)
	_, err := co.Receive(wctx)
	cancel()
	require.ErrorIs(t, err, context.DeadlineExceeded)
	require.Zero(t, a.freed, "freed before the wait")
	require.Equal(t, int64(aheadMax-3), live())
	require.NoError(t, h.FreeBatch(rest))
	require.Zero(t, live())

	// Kept, or sent on: the window's frees in order stop there.
	_, p2, co2 := loopback(t, b, 2)
	window(aheadMax)
	r0, r1 = recv(), recv()
	require.NoError(t, h.Free(r0))
	require.NoError(t, p2.Send(ctx, r1)) // sent on: never freed here
	for range aheadMax - 2 {
		require.NoError(t, h.Free(recv()))
	}
	require.Equal(t, 1, a.freed, "r0 held back; the others freed on their own")
	send(5)
	r := recv() // the window delivered: dropped, r0 freed
	require.Zero(t, a.freed)
	require.Equal(t, int64(5+1), live(), "r, 4 queued, and r1 in channel 2")
	require.NoError(t, h.Free(r))
	fwd, err := co2.Receive(ctx)
	require.NoError(t, err)
	require.NoError(t, h.Free(fwd))
	for range 4 {
		require.NoError(t, h.Free(recv()))
	}
	require.Zero(t, live())

	// ReceiveBatch and ReceiveEach drop the window (what was not
	// delivered is taken again), and so does Close.
	window(aheadMax)
	require.NoError(t, h.Free(recv()))
	require.Equal(t, 1, a.freed)
	send(4)
	rs := make([]Record, 2*aheadMax)
	k, err := co.ReceiveBatch(ctx, rs)
	require.NoError(t, err)
	require.Equal(t, 4+aheadMax-1, k, "the 4 queued before, and the window's rest")
	require.Zero(t, a.freed)
	require.NoError(t, h.FreeBatch(rs[:k]))
	require.Zero(t, live())
	window(aheadMax)
	require.NoError(t, h.Free(recv()))
	got := 0
	n, err := co.ReceiveEach(ctx, 2*aheadMax, func([]byte) { got++ })
	require.NoError(t, err)
	require.Equal(t, aheadMax-1, n)
	require.Equal(t, n, got)
	require.Zero(t, a.freed)
	require.Zero(t, live())
	window(aheadMax)
	require.NoError(t, h.Free(recv()))
	require.Equal(t, 1, a.freed)
	require.NoError(t, co.Close())
	require.Equal(t, int64(aheadMax-1), live(), "freed at Close; the rest still queued")
	require.NoError(t, b.Check())
}

// TestWindowBytes: a window holds at most aheadBytes of records, so that
// what a handle holds back to free with it is bounded in bytes as well as
// in records; records so large that fewer than aheadMin fit are taken one
// by one.
func TestWindowBytes(t *testing.T) {
	ctx := context.Background()
	b := heapBuf(t)
	h, p, co := loopback(t, b, 1)
	for _, tc := range []struct{ size, want int }{
		{4000, aheadBytes / (4000 + 2*trailerSize)},
		{aheadBytes / 3, 0},
	} {
		for range 40 {
			r, err := h.Allocate(tc.size)
			require.NoError(t, err)
			require.NoError(t, p.Send(ctx, r))
		}
		got := 0
		for range 40 {
			r, err := co.Receive(ctx)
			require.NoError(t, err)
			got = max(got, co.ahead.n)
			require.NoError(t, h.Free(r))
		}
		require.Equal(t, tc.want, got, "the largest window of records of %d bytes", tc.size)
	}
	require.Zero(t, liveRecords(t, b))
}
