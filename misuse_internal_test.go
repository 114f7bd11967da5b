package ipc

import (
	"context"
	"fmt"
	"math"
	"strconv"
	"testing"
	"time"
	"unsafe"

	"github.com/heapipc/ipc/channel"
	"github.com/stretchr/testify/require"
)

// mpscLoopback opens both ends of MPSC channel id on one new handle,
// closed when the test ends.
func mpscLoopback(t *testing.T, b *Buffer, id ChannelID) (*Handle, *MPSCProducer, *MPSCConsumer) {
	t.Helper()
	h := testHandle(t, b)
	p, err := h.MPSCProducer(id)
	require.NoError(t, err)
	t.Cleanup(func() { p.Close() })
	c, err := h.MPSCConsumer(id)
	require.NoError(t, err)
	t.Cleanup(func() { c.Close() })
	return h, p, c
}

// receivedAs checks that got is the record sent as sent: the same place,
// tag and view, one hand on (see liveMagic: the sender's Record no longer
// holds it).
func receivedAs(t *testing.T, sent, got Record) {
	t.Helper()
	require.Equal(t, sent.off(), got.off(), "the record's place")
	require.Equal(t, sent.tag(), got.tag(), "its tag")
	require.Equal(t, unsafe.SliceData(sent.b), unsafe.SliceData(got.b), "its view")
	require.Len(t, got.b, len(sent.b))
	require.Equal(t, nextHand(sent.hand()), got.hand(), "one hand on")
}

// TestFreeOtherBuffersRecord: a Record of another buffer, at the same
// offset as a live record of this one, is refused by every free, and the
// record of this buffer stays live.
func TestFreeOtherBuffersRecord(t *testing.T) {
	a, b := heapBuf(t), heapBuf(t)
	ha, hb := testHandle(t, a), testHandle(t, b)
	ra, err := ha.Allocate(64)
	require.NoError(t, err)
	rb, err := hb.Allocate(64)
	require.NoError(t, err)
	require.Equal(t, ra.off(), rb.off(), "the test needs both records at one offset")
	require.ErrorIs(t, hb.Free(ra), ErrForeign)
	require.ErrorIs(t, b.Free(ra), ErrForeign)
	require.ErrorIs(t, hb.FreeBatch([]Record{ra}), ErrForeign)
	require.NoError(t, hb.Free(rb), "b's record was left alone")
	require.NoError(t, ha.Free(ra))
}

// TestStaleViewAfterSlabRestart: a record received on a handle (whose
// slab cache keeps its slot for Free) is freed through the Buffer; its
// slab starts over, and records of another size take its place. A Free
// of one of them through the handle must not use the kept slot (it would
// find, and mark freed, the trailer of another live record), and a second
// Free of the stale view must not free what lies at its offset now.
func TestStaleViewAfterSlabRestart(t *testing.T) {
	b := heapBuf(t)
	h, p, co := loopback(t, b, 1)
	ctx := context.Background()
	x, err := h.Allocate(64)
	require.NoError(t, err)
	require.NoError(t, p.Send(ctx, x))
	got, err := co.Receive(ctx)
	require.NoError(t, err)
	require.NoError(t, b.Free(got))
	var nx Record
	for range 1 << 20 {
		r, err := h.Allocate(16)
		require.NoError(t, err)
		if r.off() == x.off() {
			nx = r
			break
		}
		require.NoError(t, b.Free(r))
	}
	require.Equal(t, x.off(), nx.off(), "the slab never started over")
	// The next record of 16 bytes has its trailer where x's was.
	y, err := h.Allocate(16)
	require.NoError(t, err)
	require.Equal(t, uint64(x.off())+uint64(allocSize(64)), uint64(y.off())+uint64(allocSize(16)))
	require.ErrorIs(t, b.Free(got), ErrNotAllocated, "the stale view frees nothing")
	require.NoError(t, h.Free(nx))
	require.NoError(t, p.TrySend(y), "a live record is still sendable")
	r, err := co.Receive(ctx)
	require.NoError(t, err)
	require.NoError(t, h.Free(r))
	require.NoError(t, b.Check())
}

// reusePlace allocates and frees records of stale's size on h until one
// comes at its place again (its slab started over) with another tag (one
// in 2^18 has the same by chance: the next generation's will do) and
// returns that one, live.
func reusePlace(t *testing.T, h *Handle, stale Record) Record {
	t.Helper()
	for range 1 << 20 {
		r, err := h.Allocate(stale.Len())
		require.NoError(t, err)
		if r.off() == stale.off() && r.tag() != stale.tag() {
			return r
		}
		require.NoError(t, h.Free(r))
	}
	t.Fatalf("no record of %d bytes came at %#x again: the slab never started over", stale.Len(), uint64(stale.off()))
	return Record{}
}

// TestStaleRecordSameSize: a Record kept after its record was freed,
// once a record of the same size has taken its place (its slab started
// over), is refused by every free (ErrDoubleFree) and every send
// (ErrNotAllocated) — through the handle that allocated it, the one that
// received it (whose slab cache keeps the new record's slot), a batch
// received as one (FreeBatch's received path), the Buffer — and the new
// record stays live, its Records working as before. Before Records
// carried a tag, each of these freed or sent the new record.
func TestStaleRecordSameSize(t *testing.T) {
	ctx := context.Background()
	refused := func(t *testing.T, h *Handle, p *Producer, stale Record) {
		t.Helper()
		require.ErrorIs(t, h.Free(stale), ErrDoubleFree, "Handle.Free")
		require.ErrorIs(t, h.buf.Free(stale), ErrDoubleFree, "Buffer.Free")
		require.ErrorIs(t, h.FreeBatch([]Record{stale}), ErrDoubleFree, "FreeBatch")
		require.ErrorIs(t, p.TrySend(stale), ErrNotAllocated, "TrySend")
		require.ErrorIs(t, p.Send(ctx, stale), ErrNotAllocated, "Send")
		k, err := p.SendBatch(ctx, []Record{stale})
		require.ErrorIs(t, err, ErrNotAllocated, "SendBatch")
		require.Zero(t, k, "SendBatch")
	}
	// sentOne makes a buffer, a producer's handle and a consumer's, and
	// x, a record of 64 bytes the producer sent.
	sentOne := func(t *testing.T) (*Buffer, *Handle, *Handle, *Producer, *Consumer, Record) {
		b := heapBuf(t)
		ph, ch := testHandle(t, b), testHandle(t, b)
		p, co := ends(t, ph, ch, 1)
		x, err := ph.Allocate(64)
		require.NoError(t, err)
		require.NoError(t, p.Send(ctx, x))
		return b, ph, ch, p, co, x
	}
	t.Run("allocated", func(t *testing.T) {
		b := heapBuf(t)
		h, p, co := loopback(t, b, 1)
		x, err := h.Allocate(64)
		require.NoError(t, err)
		require.NoError(t, h.Free(x))
		nx := reusePlace(t, h, x)
		refused(t, h, p, x)
		require.NoError(t, p.Send(ctx, nx), "the new record is still this process's")
		got, err := co.Receive(ctx)
		require.NoError(t, err)
		receivedAs(t, nx, got)
		require.NoError(t, h.Free(got))
		require.ErrorIs(t, h.Free(nx), ErrDoubleFree)
		require.NoError(t, b.Check())
	})
	t.Run("received", func(t *testing.T) {
		b, ph, ch, p, co, x := sentOne(t)
		got, err := co.Receive(ctx)
		require.NoError(t, err)
		require.NoError(t, ch.Free(got))
		nx := reusePlace(t, ph, x)
		require.NoError(t, p.Send(ctx, nx))
		gotN, err := co.Receive(ctx)
		require.NoError(t, err)
		receivedAs(t, nx, gotN)
		require.Equal(t, gotN.off(), ch.sh.takenOff(), "the consumer's handle keeps the new record's slot")
		require.ErrorIs(t, ch.Free(got), ErrDoubleFree, "the kept slot is the new record's")
		refused(t, ch, p, got)
		require.NoError(t, ch.Free(gotN))
		require.NoError(t, b.Check())
	})
	t.Run("large", func(t *testing.T) {
		// A large record (its own extent) has a key that differs from
		// the large record before it at its place (an incarnation in its
		// header): its stale Records are refused too, sent one at a time
		// or in a batch, and the new record goes on working.
		b := heapBuf(t)
		h, p, co := loopback(t, b, 1)
		n := b.recs.pool.MaxSmall() + 1
		for _, batch := range []bool{false, true} {
			r, err := h.Allocate(n)
			require.NoError(t, err)
			send := func(r Record) {
				if batch {
					k, err := p.SendBatch(ctx, []Record{r})
					require.NoError(t, err)
					require.Equal(t, 1, k)
				} else {
					require.NoError(t, p.Send(ctx, r))
				}
			}
			send(r)
			got, err := co.Receive(ctx)
			require.NoError(t, err)
			receivedAs(t, r, got)
			require.NoError(t, h.Free(got))
			require.ErrorIs(t, h.Free(r), ErrDoubleFree)
			nr := reusePlace(t, h, r)
			refused(t, h, p, r)
			send(nr)
			got, err = co.Receive(ctx)
			require.NoError(t, err)
			receivedAs(t, nr, got)
			require.NoError(t, h.Free(got))
		}
		require.NoError(t, b.Check())
	})
	t.Run("batch", func(t *testing.T) {
		b, ph, ch, p, co, x := sentOne(t)
		rs := make([]Record, 1)
		k, err := co.ReceiveBatch(ctx, rs)
		require.NoError(t, err)
		require.Equal(t, 1, k)
		got := rs[0]
		require.NoError(t, ch.FreeBatch(rs))
		nx := reusePlace(t, ph, x)
		require.NoError(t, p.Send(ctx, nx))
		k, err = co.ReceiveBatch(ctx, rs)
		require.NoError(t, err)
		require.Equal(t, 1, k)
		receivedAs(t, nx, rs[0])
		require.ErrorIs(t, ch.FreeBatch([]Record{got}), ErrDoubleFree, "the batch received last is the new record")
		require.NoError(t, ch.FreeBatch(rs))
		require.NoError(t, b.Check())
	})
}

// TestReceiveAheadDamagedRecord: a record whose trailer is scribbled on
// while it is queued is reported when it comes to be received, also when
// the consumer had taken it ahead already (before the damage), and the
// records behind it come; its memory comes back through the sender's
// view.
func TestReceiveAheadDamagedRecord(t *testing.T) {
	b := heapBuf(t)
	h, p, co := loopback(t, b, 1)
	ctx := context.Background()
	sent := sendRecords(t, h, p, 8, func(b []byte, i int) { b[0] = byte(i) })
	for i := range 2 {
		r, err := co.Receive(ctx)
		require.NoError(t, err)
		require.Equal(t, byte(i), r.Bytes()[0])
		require.NoError(t, h.Free(r))
	}
	require.Positive(t, co.ahead.n-co.ahead.next, "the next records were taken ahead")
	b.recs.trailers[(uint64(sent[2].off())+uint64(allocSize(64)))/trailerSize-1].Magic = 0xbad
	_, err := co.Receive(ctx)
	require.ErrorIs(t, err, ErrCorrupt, "the damaged record is not delivered")
	for i := 3; i < 8; i++ {
		r, err := co.Receive(ctx)
		require.NoError(t, err)
		require.Equal(t, byte(i), r.Bytes()[0])
		require.NoError(t, h.Free(r))
	}
	require.NoError(t, h.Free(sent[2]))
	require.NoError(t, b.Check())
}

// TestSendEachHugeSlabRecords: SendEach of records too long for a ring
// slot's length field (slabs of 4 MiB hold records of 300000 bytes) marks
// their length as not recorded, as Send does, and they are received whole.
func TestSendEachHugeSlabRecords(t *testing.T) {
	b := heapBuf(t, WithSlabSize(4<<20))
	h, p, co := loopback(t, b, 1)
	const size = 300000
	require.Greater(t, size, channel.SlotLenNone)
	ctx := context.Background()
	n, err := p.SendEach(ctx, 2, size, func(i int, b []byte) { b[0], b[size-1] = byte(i), byte(i) })
	require.NoError(t, err)
	require.Equal(t, 2, n)
	for i := range 2 {
		r, err := co.Receive(ctx)
		require.NoError(t, err)
		require.Len(t, r.Bytes(), size)
		require.Equal(t, byte(i), r.Bytes()[size-1])
		require.NoError(t, h.Free(r))
	}
}

// TestSelectEndOfAnotherBufferOrSelect: a Select takes only ends of its
// own Buffer (another buffer's producers would ring a doorbell in their
// own memory), and an end that is in one Select is refused by another
// (an end has one doorbell word: the second Select would take it, and the
// first one's Close clear it), until it is removed from the first.
func TestSelectEndOfAnotherBufferOrSelect(t *testing.T) {
	a, b := heapBuf(t, WithCheckInterval(time.Hour)), heapBuf(t)
	ha, hb, ph := testHandle(t, a), testHandle(t, b), testHandle(t, a)
	pa, ca := ends(t, ph, ha, 1)
	_, cb := ends(t, hb, hb, 1)
	s1, err := ha.NewSelect(ca)
	require.NoError(t, err)
	defer s1.Close()
	require.ErrorIs(t, s1.Add(cb), ErrInvalidArgument)
	s2, err := ha.NewSelect()
	require.NoError(t, err)
	defer s2.Close()
	require.ErrorIs(t, s2.Add(ca), ErrBusy)
	s1.Remove(ca)
	require.NoError(t, s2.Add(ca))
	require.NoError(t, s1.Close())
	// s1's Close left s2's doorbell in place: a record sent while s2 is
	// parked wakes it (its check interval is an hour).
	parked := make(chan struct{}, 1)
	testSelectBeforePark = func() {
		select {
		case parked <- struct{}{}:
		default:
		}
	}
	defer func() { testSelectBeforePark = nil }()
	r, err := ph.Allocate(8)
	require.NoError(t, err)
	done := make(chan error, 1)
	go func() {
		_, got, err := s2.Receive(t.Context())
		if err == nil {
			err = ha.Free(got)
		}
		done <- err
	}()
	<-parked
	require.NoError(t, pa.TrySend(r))
	select {
	case err := <-done:
		require.NoError(t, err)
	case <-time.After(10 * time.Second):
		t.Fatal("the parked Select was not woken: its doorbell is gone")
	}
}

// TestZeroLengthRecordOfAnotherBuffer: a zero-length Record says where it
// is as any other does: one of another buffer, at the offset of a live
// zero-length record of this one, is refused by every free and send (it
// used to pass, and the send queued this buffer's record), whether it was
// allocated or received there; this buffer's records stay live.
func TestZeroLengthRecordOfAnotherBuffer(t *testing.T) {
	ctx := context.Background()
	a, b := heapBuf(t), heapBuf(t)
	ha, pa, ca := loopback(t, a, 1)
	hb, pb, cb := loopback(t, b, 1)
	// A zero-length record of each buffer, at one offset, received.
	x, err := ha.Allocate(0)
	require.NoError(t, err)
	require.NoError(t, pa.Send(ctx, x))
	ra, err := ca.Receive(ctx)
	require.NoError(t, err)
	y, err := hb.Allocate(0)
	require.NoError(t, err)
	require.NoError(t, pb.Send(ctx, y))
	rb, err := cb.Receive(ctx)
	require.NoError(t, err)
	// And one of each allocated, at another offset.
	xa, err := ha.Allocate(0)
	require.NoError(t, err)
	xb, err := hb.Allocate(0)
	require.NoError(t, err)
	require.Equal(t, ra.off(), rb.off(), "the test needs both received records at one offset")
	require.Equal(t, xa.off(), xb.off(), "the test needs both allocated records at one offset")
	for _, r := range []Record{ra, xa} {
		require.ErrorIs(t, hb.Free(r), ErrForeign)
		require.ErrorIs(t, b.Free(r), ErrForeign)
		require.ErrorIs(t, hb.FreeBatch([]Record{r}), ErrForeign)
		require.ErrorIs(t, pb.TrySend(r), ErrForeign)
		_, err := pb.SendBatch(ctx, []Record{r})
		require.ErrorIs(t, err, ErrForeign)
	}
	_, err = cb.TryReceive()
	require.ErrorIs(t, err, ErrWouldBlock, "nothing was queued on b")
	require.NoError(t, hb.Free(rb), "b's records were left alone")
	require.NoError(t, hb.Free(xb))
	require.NoError(t, ha.Free(ra))
	require.NoError(t, ha.Free(xa))
	require.NoError(t, a.Check())
	require.NoError(t, b.Check())
}

// TestRecordSizeLimit: a payload of 4 GiB or more cannot be recorded in
// a trailer (its length is 32 bits: such a record was allocated in a
// large enough buffer and every receive of it said ErrCorrupt), and one
// near math.MaxInt would wrap the allocation size on 32-bit machines:
// both are ErrInvalidSize in every allocating call, not ErrNoSpace.
func TestRecordSizeLimit(t *testing.T) {
	b := heapBuf(t)
	h, p, _ := loopback(t, b, 1)
	bad := []int{-1, math.MaxInt, math.MaxInt - 20}
	if strconv.IntSize == 64 {
		big := uint64(maxPayload) + 1 // a variable: the constant overflows a 32-bit int
		bad = append(bad, int(big))
	}
	for _, n := range bad {
		_, err := h.Allocate(n)
		require.ErrorIs(t, err, ErrInvalidSize, "Allocate(%d)", n)
		require.ErrorIs(t, h.AllocateBatch(n, make([]Record, 2)), ErrInvalidSize, "AllocateBatch(%d)", n)
		_, err = p.SendEach(context.Background(), 1, n, func(int, []byte) {})
		require.ErrorIs(t, err, ErrInvalidSize, "SendEach(%d)", n)
	}
	_, err := h.Allocate(64 << 20)
	require.ErrorIs(t, err, ErrNoSpace, "a size within the limit that does not fit is ErrNoSpace")
	require.NoError(t, b.Check())
}

// TestQueuedRecordRefused: a record that is queued (sent, not received
// yet) is not the sender's any more: sending it again (Send, TrySend, in
// a SendBatch, twice in one batch, on an MPSC channel) and freeing it
// (Handle.Free, Buffer.Free, FreeBatch) are refused with ErrNotAllocated
// and change nothing, also once the consumer has taken it ahead; the
// consumer receives each record once. A send that fails leaves the
// record the sender's (its Free works).
func TestQueuedRecordRefused(t *testing.T) {
	ctx := context.Background()
	queued := func(t *testing.T, err error) {
		t.Helper()
		require.ErrorIs(t, err, ErrNotAllocated)
		require.ErrorContains(t, err, "queued in a channel")
	}
	refused := func(t *testing.T, b *Buffer, h *Handle, p *Producer, r Record) {
		t.Helper()
		queued(t, p.Send(ctx, r))
		queued(t, p.TrySend(r))
		_, err := p.SendBatch(ctx, []Record{r})
		queued(t, err)
		queued(t, h.Free(r))
		queued(t, b.Free(r))
		queued(t, h.FreeBatch([]Record{r}))
	}
	live := func(t *testing.T, b *Buffer) int {
		t.Helper()
		st, err := b.Stats()
		require.NoError(t, err)
		return st.Records.LiveRecords
	}
	t.Run("record channel", func(t *testing.T) {
		b := heapBuf(t)
		h, p, co := loopback(t, b, 1)
		sent := sendRecords(t, h, p, 3, func(b []byte, i int) { b[0] = byte(i) })
		for _, r := range sent {
			refused(t, b, h, p, r)
		}
		// A batch with a queued record in it, and one with a record in
		// it twice, send nothing; their other records stay the sender's.
		fresh := make([]Record, 2)
		require.NoError(t, h.AllocateBatch(64, fresh))
		fresh[0].Bytes()[0], fresh[1].Bytes()[0] = 3, 4
		n, err := p.SendBatch(ctx, []Record{fresh[0], sent[1]})
		queued(t, err)
		require.Zero(t, n)
		n, err = p.SendBatch(ctx, []Record{fresh[1], fresh[0], fresh[1]})
		queued(t, err)
		require.Zero(t, n)
		n, err = p.SendBatch(ctx, fresh)
		require.NoError(t, err)
		require.Equal(t, 2, n)
		for i := range 5 {
			r, err := co.Receive(ctx)
			require.NoError(t, err)
			require.Equal(t, byte(i), r.Bytes()[0], "each record once, in order")
			require.NoError(t, h.Free(r))
		}
		_, err = co.TryReceive()
		require.ErrorIs(t, err, ErrWouldBlock, "nothing was sent twice")
		require.Zero(t, live(t, b))
	})
	t.Run("taken ahead", func(t *testing.T) {
		b := heapBuf(t)
		h, p, co := loopback(t, b, 1)
		sent := sendRecords(t, h, p, 8, func(b []byte, i int) { b[0] = byte(i) })
		for range 2 {
			r, err := co.Receive(ctx)
			require.NoError(t, err)
			require.NoError(t, h.Free(r))
		}
		require.Positive(t, co.ahead.n-co.ahead.next, "the next records were taken ahead")
		refused(t, b, h, p, sent[3])
		for i := 2; i < 8; i++ {
			r, err := co.Receive(ctx)
			require.NoError(t, err)
			require.Equal(t, byte(i), r.Bytes()[0])
			require.NoError(t, h.Free(r))
		}
		require.Zero(t, live(t, b))
	})
	t.Run("failed send", func(t *testing.T) {
		b := heapBuf(t)
		h, p, _ := loopback(t, b, 1, WithCapacity(2))
		sendRecords(t, h, p, 2, func([]byte, int) {})
		r, err := h.Allocate(64)
		require.NoError(t, err)
		require.ErrorIs(t, p.TrySend(r), ErrWouldBlock)
		short, cancel := context.WithTimeout(ctx, 20*time.Millisecond)
		defer cancel()
		require.ErrorIs(t, p.Send(short, r), context.DeadlineExceeded)
		rs := make([]Record, 2)
		require.NoError(t, h.AllocateBatch(64, rs))
		n, err := p.SendBatch(short, rs)
		require.ErrorIs(t, err, context.DeadlineExceeded)
		require.Zero(t, n)
		require.NoError(t, h.Free(r), "a record whose send failed is the sender's")
		require.NoError(t, h.FreeBatch(rs))
	})
	t.Run("mpsc", func(t *testing.T) {
		b := heapBuf(t)
		h, p, c := mpscLoopback(t, b, 1)
		r, err := h.Allocate(64)
		require.NoError(t, err)
		require.NoError(t, p.Send(ctx, r))
		queued(t, p.Send(ctx, r))
		queued(t, p.TrySend(r))
		queued(t, h.Free(r))
		got, err := c.Receive(ctx)
		require.NoError(t, err)
		receivedAs(t, r, got)
		_, err = c.TryReceive()
		require.ErrorIs(t, err, ErrWouldBlock)
		require.NoError(t, h.Free(got))
		require.Zero(t, live(t, b))
	})
}

// TestSentRecordHandedOver: the Record a sender kept is refused (Send,
// TrySend, SendBatch, Handle.Free, Buffer.Free, FreeBatch:
// ErrNotAllocated, "taken over") once a consumer of the same process has
// received the record — by Receive (one by one, or taken ahead),
// ReceiveBatch or an MPSC consumer, from the sender's own handle or
// another — and the consumer's record is untouched: its bytes stay, and
// its Free works once. A record forwarded down a pipeline leaves every
// earlier stage's Record refused. Before records carried a hand, the
// sender's Free freed the consumer's record under it.
func TestSentRecordHandedOver(t *testing.T) {
	ctx := context.Background()
	refused := func(t *testing.T, b *Buffer, h *Handle, p *Producer, r Record) {
		t.Helper()
		for _, err := range []error{
			p.Send(ctx, r), p.TrySend(r), h.Free(r), b.Free(r), h.FreeBatch([]Record{r}),
			func() error { _, err := p.SendBatch(ctx, []Record{r}); return err }(),
		} {
			require.ErrorIs(t, err, ErrNotAllocated)
			require.ErrorContains(t, err, "taken over")
		}
	}
	// keep checks that the consumer's record got (sent as sent, with
	// payload byte v) is intact and frees it.
	keep := func(t *testing.T, b *Buffer, h *Handle, sent, got Record, v byte) {
		t.Helper()
		receivedAs(t, sent, got)
		require.Equal(t, v, got.Bytes()[0], "the consumer's bytes are intact")
		require.NoError(t, h.Free(got))
		require.ErrorIs(t, h.Free(got), ErrDoubleFree)
		require.NoError(t, b.Check())
	}
	for _, c := range []struct {
		name string
		recv func(t *testing.T, co *Consumer, n int) []Record
	}{
		{"receive", func(t *testing.T, co *Consumer, n int) []Record {
			var got []Record
			for range n {
				r, err := co.Receive(ctx)
				require.NoError(t, err)
				got = append(got, r)
			}
			return got
		}},
		{"receive batch", func(t *testing.T, co *Consumer, n int) []Record {
			got := make([]Record, n)
			k, err := co.ReceiveBatch(ctx, got)
			require.NoError(t, err)
			require.Equal(t, n, k)
			return got
		}},
	} {
		for _, same := range []bool{true, false} {
			t.Run(fmt.Sprintf("%s/same handle %v", c.name, same), func(t *testing.T) {
				b := heapBuf(t)
				ph, ch := testHandle(t, b), testHandle(t, b)
				if same {
					ch = ph
				}
				p, co := ends(t, ph, ch, 1)
				// Eight records: Receive takes the later ones ahead.
				sent := sendRecords(t, ph, p, 8, func(b []byte, i int) { b[0] = byte(i) })
				got := c.recv(t, co, len(sent))
				for i := range sent {
					refused(t, b, ph, p, sent[i])
				}
				for i := range sent {
					keep(t, b, ch, sent[i], got[i], byte(i))
				}
				require.Zero(t, liveRecords(t, b))
			})
		}
	}
	t.Run("mpsc", func(t *testing.T) {
		b := heapBuf(t)
		h, p, c := mpscLoopback(t, b, 1)
		r, err := h.Allocate(64)
		require.NoError(t, err)
		r.Bytes()[0] = 9
		require.NoError(t, p.Send(ctx, r))
		got, err := c.Receive(ctx)
		require.NoError(t, err)
		for _, err := range []error{p.Send(ctx, r), p.TrySend(r), h.Free(r), b.Free(r)} {
			require.ErrorIs(t, err, ErrNotAllocated)
			require.ErrorContains(t, err, "taken over")
		}
		keep(t, b, h, r, got, 9)
		require.Zero(t, liveRecords(t, b))
	})
	t.Run("pipeline", func(t *testing.T) {
		// Three stages of one process on channels 1 and 2: the record the
		// last stage holds is safe from the Records of the first two;
		// 16 sends bring the hand round (the documented exception).
		b := heapBuf(t)
		h := testHandle(t, b)
		p1, c1 := ends(t, h, h, 1)
		p2, c2 := ends(t, h, h, 2)
		x, err := h.Allocate(64)
		require.NoError(t, err)
		x.Bytes()[0] = 5
		require.NoError(t, p1.Send(ctx, x))
		y, err := c1.Receive(ctx)
		require.NoError(t, err)
		require.NoError(t, p2.Send(ctx, y))
		z, err := c2.Receive(ctx)
		require.NoError(t, err)
		refused(t, b, h, p1, x)
		refused(t, b, h, p2, y)
		all := []Record{x, y, z}
		for range 14 {
			require.NoError(t, p1.Send(ctx, all[len(all)-1]))
			r, err := c1.Receive(ctx)
			require.NoError(t, err)
			all = append(all, r)
		}
		require.Equal(t, x.hand(), all[16].hand(), "16 sends: the hand came round")
		for _, r := range all[1:16] {
			refused(t, b, h, p1, r)
		}
		keep(t, b, h, all[15], all[16], 5)
		require.Zero(t, liveRecords(t, b))
	})
}

// TestHandMagics: each hand's live and queued magics are distinct,
// takeable, and carry their hand; taking a queued one gives the live
// one; a record never sent has the plain magic.
func TestHandMagics(t *testing.T) {
	require.Equal(t, uint32(trailerMagic), liveMagic(freshHand))
	require.Equal(t, uint32(queuedMagic), queuedMagicOf(freshHand))
	seen := map[uint32]bool{}
	for h := range uint32(16) {
		l, q := liveMagic(h), queuedMagicOf(h)
		sq, sl := sendMagics(h)
		require.Equal(t, l, sl, "hand %d", h)
		require.Equal(t, queuedMagicOf(nextHand(h)), sq, "hand %d: a send queues it with the next hand", h)
		require.Equal(t, l, liveMagic(h|0xfff0), "hand %d: bits above the hand are ignored", h)
		require.True(t, takeable(l), "hand %d", h)
		require.True(t, takeable(q), "hand %d", h)
		require.False(t, isQueued(l), "hand %d", h)
		require.True(t, isQueued(q), "hand %d", h)
		require.Equal(t, h, handOf(l))
		require.Equal(t, h, handOf(q))
		require.Equal(t, l, liveOf(q))
		require.Equal(t, l, liveOf(l))
		require.Equal(t, uint32(1), l&1, "a freed mark's low bit is clear")
		require.Equal(t, (h+1)%16, nextHand(h))
		seen[l], seen[q] = true, true
	}
	require.Len(t, seen, 32)
}
