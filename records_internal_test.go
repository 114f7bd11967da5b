package ipc

import (
	"context"
	"os"
	"reflect"
	"sync/atomic"
	"testing"

	"github.com/heapipc/ipc/alloc"
	"github.com/heapipc/ipc/channel"
	"github.com/heapipc/ipc/internal/mem"
	"github.com/heapipc/ipc/internal/sys"
	"github.com/heapipc/ipc/internal/testutil"
	"github.com/heapipc/ipc/slab"
	"github.com/stretchr/testify/require"
)

// TestDamagedQueuedRecord: a consumer takes a queued record with the cheap
// check (the slot's length leads to the trailer); a record whose trailer
// was damaged while it was queued is reported as corrupt, taken off the
// channel, and the records behind it are delivered.
func TestDamagedQueuedRecord(t *testing.T) {
	for _, c := range []struct {
		name   string
		damage func(t *trailer)
	}{
		{"magic", func(t *trailer) { t.Magic = 0xbad }},
		{"length", func(t *trailer) { t.Len = 60 }}, // same allocation size as 64
	} {
		t.Run(c.name, func(t *testing.T) {
			b := heapBuf(t)
			h, p, co := loopback(t, b, 1)
			ctx := context.Background()
			sent := sendRecords(t, h, p, 3, func(b []byte, i int) { b[0] = byte(i) })
			// Damage the first record's trailer while it is queued.
			tr := mem.MustAt[trailer](b.recs.b, sent[0].off()+mem.Off(allocSize(64)-trailerSize))
			c.damage(tr)

			_, err := co.Receive(ctx)
			require.ErrorIs(t, err, ErrCorrupt)
			rs := make([]Record, 4)
			k, err := co.ReceiveBatch(ctx, rs)
			require.NoError(t, err)
			require.Equal(t, 2, k, "the records behind it")
			for i, r := range rs[:k] {
				require.Equal(t, byte(i+1), r.Bytes()[0])
				require.Len(t, r.Bytes(), 64)
			}
			require.NoError(t, h.FreeBatch(rs[:k]))
			// Its memory still comes back: Free locates it in its slab.
			require.NoError(t, h.Free(sent[0]))
			require.ErrorIs(t, h.Free(sent[0]), ErrDoubleFree)
		})
	}
}

// holderOf is the holder its trailer names of the record at off with an
// n-byte payload.
func holderOf(b *Buffer, off mem.Off, n int) sys.Identity {
	return sys.Identity(b.recs.trailers[(uint64(off)+uint64(allocSize(n)))/trailerSize-1].holder().Load())
}

// otherProcess attaches b a second time as if from another process: the
// records its handle allocates carry another identity (this test's parent
// process, alive). The attachment is closed when the test ends.
func otherProcess(t *testing.T, b *Buffer) (*Handle, sys.Identity) {
	t.Helper()
	pb, err := Open(b.Name(), WithBackends("heap", "heap"), AttachOnly())
	require.NoError(t, err)
	other, err := sys.IdentityOf(os.Getppid())
	require.NoError(t, err)
	pb.recs.self = other
	ph, err := pb.NewHandle()
	require.NoError(t, err)
	t.Cleanup(func() {
		ph.Close()
		pb.Close()
	})
	return ph, other
}

// TestTakeMakesHolder: a record stays its sender's until a consumer in
// another process takes it, and the taker becomes its holder before the
// channel publishes the receipt; a record queued before the consumer
// attached is taken the same way.
func TestTakeMakesHolder(t *testing.T) {
	b := heapBuf(t)
	ph, other := otherProcess(t, b)
	p, err := ph.Producer(1, WithCapacity(2))
	require.NoError(t, err)
	defer p.Close()
	holder := func(r Record) sys.Identity { return holderOf(b, r.off(), len(r.b)) }
	var rs [3]Record
	for i := range rs {
		rs[i], err = ph.Allocate(8 + i)
		require.NoError(t, err)
		rs[i].Bytes()[0] = byte(i)
		require.Equal(t, other, holder(rs[i]))
	}
	n, err := p.SendBatch(context.Background(), rs[:2])
	require.NoError(t, err)
	require.Equal(t, 2, n)
	require.ErrorIs(t, p.TrySend(rs[2]), ErrWouldBlock)
	require.Equal(t, other, holder(rs[0]), "queued: still the sender's")

	ch, err := b.NewHandle()
	require.NoError(t, err)
	defer ch.Close()
	co, err := ch.Consumer(1)
	require.NoError(t, err)
	defer co.Close()
	got, err := co.TryReceive()
	require.NoError(t, err)
	require.Equal(t, rs[0].off(), got.off())
	require.Equal(t, sys.Self(), holder(got), "taken")
	require.NoError(t, p.TrySend(rs[2]), "room again")
	require.NoError(t, ch.Free(got))
	for i := 1; i < 3; i++ {
		r, err := co.TryReceive()
		require.NoError(t, err)
		require.Equal(t, byte(i), r.Bytes()[0])
		require.Len(t, r.Bytes(), 8+i)
		require.Equal(t, sys.Self(), holder(r))
		require.NoError(t, ch.Free(r))
	}
}

// TestTakeWritesOnlyLiveRecords: a slot that names a freed record whose
// trailer still looks valid (damage, or a stale slot) is refused, and
// nothing is written to that memory.
func TestTakeWritesOnlyLiveRecords(t *testing.T) {
	b := heapBuf(t)
	ph, other := otherProcess(t, b)
	keep, err := ph.Allocate(32) // keeps the slab from going back to the heap
	require.NoError(t, err)
	r, err := ph.Allocate(32)
	require.NoError(t, err)
	require.NoError(t, ph.buf.recs.freeOff(r.off())) // by offset: the trailer stays
	tr := &b.recs.trailers[(int(r.off())+allocSize(32))/trailerSize-1]
	require.Equal(t, uint32(trailerMagic), tr.Magic)

	slot, ok := channel.PackSlot(r.off(), 32)
	require.True(t, ok)
	_, err = b.recs.take(slot)
	require.ErrorIs(t, err, ErrNotAllocated)
	require.Equal(t, other, sys.Identity(tr.holder().Load()), "nothing written")
	require.NoError(t, ph.Free(keep))
}

// TestReceiveKeepsSlotForFree: the consumer's handle keeps the slot of the
// record it took last, and frees it through that slot; a record received
// earlier is freed the ordinary way; a record the handle took and that was
// freed elsewhere (sent on, freed by the next consumer) is a double free,
// not a second free through the kept slot.
func TestReceiveKeepsSlotForFree(t *testing.T) {
	b := heapBuf(t)
	h1, h2, h3 := testHandle(t, b), testHandle(t, b), testHandle(t, b)
	p, err := h1.Producer(1)
	require.NoError(t, err)
	c, err := h2.Consumer(1)
	require.NoError(t, err)
	fwd, err := h2.Producer(2)
	require.NoError(t, err)
	c3, err := h3.Consumer(2)
	require.NoError(t, err)
	ctx := context.Background()
	for i := range 3 {
		r, err := h1.Allocate(64)
		require.NoError(t, err)
		r.Bytes()[0] = byte(i)
		require.NoError(t, p.Send(ctx, r))
	}
	a, err := c.Receive(ctx)
	require.NoError(t, err)
	bb, err := c.TryReceive()
	require.NoError(t, err)
	require.Equal(t, []byte{0, 1}, []byte{a.Bytes()[0], bb.Bytes()[0]})
	require.Equal(t, bb.off(), h2.sh.takenOff(), "the slot of the record taken last")
	require.NoError(t, h2.Free(a), "an earlier record: located afresh")
	require.Equal(t, bb.off(), h2.sh.takenOff())
	require.NoError(t, h2.Free(bb), "through the kept slot")
	require.Equal(t, mem.Off(0), h2.sh.takenOff(), "a slot is used once")
	require.ErrorIs(t, h2.Free(bb), ErrDoubleFree)

	cc, err := c.Receive(ctx)
	require.NoError(t, err)
	require.NoError(t, fwd.Send(ctx, cc), "sent on, zero-copy")
	got, err := c3.Receive(ctx)
	require.NoError(t, err)
	require.Equal(t, cc.off(), got.off())
	require.Equal(t, byte(2), got.Bytes()[0])
	require.NoError(t, h3.Free(got))
	require.Equal(t, cc.off(), h2.sh.takenOff(), "h2 still keeps the slot of the record it took last")
	require.ErrorIs(t, h2.Free(cc), ErrDoubleFree)

	st, err := b.Stats()
	require.NoError(t, err)
	require.Zero(t, st.Records.LiveRecords, "every record came back once")
	require.NoError(t, b.Check())
}

// TestPortableLayouts: a record's trailer and a pack's header are laid
// out alike on 32-bit and 64-bit machines.
func TestPortableLayouts(t *testing.T) {
	testutil.RequirePortableLayouts(t, &trailer{}, &packHeader{})
}

// TestRecoverUnmarkedExtent: Buffer.Recover frees a speculo extent that a
// writer died with before marking it (channel.RecoverExtents; the channel
// package's tests cover which extents count as marked).
func TestRecoverUnmarkedExtent(t *testing.T) {
	b := heapBuf(t)
	h, err := b.NewHandle()
	require.NoError(t, err)
	defer h.Close()
	sp, err := h.AddSpeculo(9, 4096) // so that the walk has an area
	require.NoError(t, err)
	dead := testutil.DeadIdentity(t)
	before, err := b.heap.Stats()
	require.NoError(t, err)
	_, err = b.heap.AllocZeroed(t.Context(), 8192, alloc.KindExtent, dead, 256)
	require.NoError(t, err)
	n, err := b.Recover()
	require.NoError(t, err)
	require.Equal(t, uint64(8192), n)
	after, err := b.heap.Stats()
	require.NoError(t, err)
	require.Equal(t, before.FreeBytes, after.FreeBytes)
	require.NoError(t, b.Check())
	require.NoError(t, sp.Remove(t.Context()))
}

// TestHotStructsPadded: the Go structures that one goroutine writes on
// every record (channel ends' cached indices, a handle's allocation
// cursor and located slots) start and end with a mem.Pad, so that no
// other Go object shares their cache lines (mem.Pad says what that cost).
func TestHotStructsPadded(t *testing.T) {
	for _, v := range []any{channel.RecordProducer{}, channel.RecordConsumer{}, channel.MPSCConsumer{}, channel.StreamWriter{}, channel.StreamReader{}, slab.Handle{}, slabHandle{}} {
		typ := reflect.TypeOf(v)
		first, last := typ.Field(0), typ.Field(typ.NumField()-1)
		require.Equal(t, reflect.TypeFor[mem.Pad](), first.Type, "%v does not start with a mem.Pad", typ)
		require.Equal(t, reflect.TypeFor[mem.Pad](), last.Type, "%v does not end with a mem.Pad", typ)
	}
}

// TestFreeReceivedBatch: FreeBatch of the batch a handle's consumer
// received last frees it by the runs ReceiveBatch located, and is used
// only for exactly that batch of records still held: a record of it freed
// since is reported by its index (the others freed), a reordered batch or
// a part of it is freed the ordinary way, and a freed record's view can no
// longer be sent. A batch of another process's records in which one was
// freed while queued (its trailer intact) is taken record by record: the
// freed one is reported and not written to.
func TestFreeReceivedBatch(t *testing.T) {
	b := heapBuf(t)
	h, p, co := loopback(t, b, 1)
	ctx := context.Background()
	live := func() int {
		st, err := b.Stats()
		require.NoError(t, err)
		return st.Records.LiveRecords
	}
	receive := func(n int) []Record {
		rs := make([]Record, n)
		require.NoError(t, h.AllocateBatch(80, rs))
		for i, r := range rs {
			r.Bytes()[0] = byte(i)
		}
		k, err := p.SendBatch(ctx, rs)
		require.NoError(t, err)
		require.Equal(t, n, k)
		got := make([]Record, n)
		k, err = co.ReceiveBatch(ctx, got)
		require.NoError(t, err)
		require.Equal(t, n, k)
		require.Equal(t, n, h.sh.recvN, "taken as a batch")
		for i, r := range got {
			require.Equal(t, rs[i].off(), r.off())
			require.Equal(t, byte(i), r.Bytes()[0])
		}
		return got
	}

	rs := receive(40)
	require.NoError(t, h.FreeBatch(rs))
	for i, r := range rs {
		require.Equal(t, b.recs.freedMark(r.off()), b.recs.trailers[(int(r.off())+allocSize(80))/trailerSize-1].Magic, "record %d's freed mark", i)
	}
	require.Zero(t, h.sh.recvN, "used once")
	require.Zero(t, live())
	require.ErrorIs(t, p.Send(ctx, rs[3]), ErrNotAllocated, "a freed record's view")
	require.ErrorIs(t, h.FreeBatch(rs), ErrDoubleFree)

	rs = receive(40)
	require.NoError(t, h.Free(rs[13]))
	err := h.FreeBatch(rs)
	require.ErrorIs(t, err, ErrDoubleFree)
	require.Contains(t, err.Error(), "record 13:")
	require.NotContains(t, err.Error(), "\n", "one error")
	require.Zero(t, live())

	// Freed by offset (as another process would: the trailer stays
	// intact): the batch's runs report it.
	rs = receive(40)
	require.NoError(t, b.recs.freeOff(rs[13].off()))
	err = h.FreeBatch(rs)
	require.ErrorIs(t, err, ErrDoubleFree)
	require.Contains(t, err.Error(), "record 13:")
	require.NotContains(t, err.Error(), "\n", "one error")
	require.Zero(t, live())

	rs = receive(40)
	rs[0], rs[39] = rs[39], rs[0]
	require.NoError(t, h.FreeBatch(rs))
	require.Zero(t, live())
	rs = receive(40)
	require.NoError(t, h.FreeBatch(rs[:20]))
	require.NoError(t, h.FreeBatch(rs[20:]))
	require.Zero(t, live())
	require.NoError(t, b.Check())

	// Another process's records: this one becomes their holder.
	ph, other := otherProcess(t, b)
	pp1, c1 := ends(t, ph, h, 3)
	theirs := make([]Record, 20)
	require.NoError(t, ph.AllocateBatch(80, theirs))
	k, err := pp1.SendBatch(ctx, theirs)
	require.NoError(t, err)
	require.Equal(t, 20, k)
	mine := make([]Record, 20)
	k, err = c1.ReceiveBatch(ctx, mine)
	require.NoError(t, err)
	require.Equal(t, 20, k)
	for _, r := range mine {
		require.Equal(t, sys.Self(), holderOf(b, r.off(), 80))
	}
	require.NoError(t, h.FreeBatch(mine))

	// One freed while queued, by offset (its trailer stays intact):
	// ReceiveBatch refuses it alone.
	pp, c2 := ends(t, ph, h, 2)
	sent := make([]Record, 3)
	require.NoError(t, ph.AllocateBatch(80, sent))
	k, err = pp.SendBatch(ctx, sent)
	require.NoError(t, err)
	require.Equal(t, 3, k)
	require.NoError(t, b.recs.freeOff(sent[1].off()))
	got := make([]Record, 3)
	k, err = c2.ReceiveBatch(ctx, got)
	require.ErrorIs(t, err, ErrNotAllocated)
	require.Equal(t, 2, k)
	require.Equal(t, []mem.Off{sent[0].off(), sent[2].off()}, []mem.Off{got[0].off(), got[1].off()})
	require.True(t, got[2].IsZero(), "nothing past the records returned")
	tr := &b.recs.trailers[(int(sent[1].off())+allocSize(80))/trailerSize-1]
	require.Equal(t, other, sys.Identity(tr.holder().Load()), "nothing written to the freed record")
	require.NoError(t, h.FreeBatch(got[:2]))
	require.Zero(t, live())
}

// TestSendBatchChecksEach: SendBatch checks every record before it sends
// any: a batch with a freed record in it sends nothing and names it; a
// batch with records that the quick check leaves to the full one (empty,
// and too long for a slot to carry the length) is sent whole, in order.
func TestSendBatchChecksEach(t *testing.T) {
	b := heapBuf(t, WithSize(64<<20))
	h, p, co := loopback(t, b, 1)
	ctx := context.Background()

	rs := make([]Record, 5)
	require.NoError(t, h.AllocateBatch(48, rs))
	require.NoError(t, h.Free(rs[2]))
	n, err := p.SendBatch(ctx, rs)
	require.ErrorIs(t, err, ErrNotAllocated)
	require.Contains(t, err.Error(), "record 2:")
	require.Zero(t, n)
	_, err = co.TryReceive()
	require.ErrorIs(t, err, ErrWouldBlock, "nothing sent")
	require.NoError(t, h.FreeBatch(append(rs[:2:2], rs[3:]...)))

	require.NoError(t, h.AllocateBatch(48, rs))
	empty, err := h.Allocate(0)
	require.NoError(t, err)
	long, err := h.Allocate(channel.SlotLenNone + 100)
	require.NoError(t, err)
	batch := []Record{rs[0], empty, rs[1], long, rs[2], rs[3], rs[4]}
	n, err = p.SendBatch(ctx, batch)
	require.NoError(t, err)
	require.Equal(t, len(batch), n)
	got := make([]Record, len(batch))
	k, err := co.ReceiveBatch(ctx, got)
	require.NoError(t, err)
	require.Equal(t, len(batch), k)
	for i, r := range got {
		require.Equal(t, batch[i].off(), r.off())
		require.Equal(t, batch[i].Len(), r.Len())
	}
	require.NoError(t, h.FreeBatch(got))
	st, err := b.Stats()
	require.NoError(t, err)
	require.Zero(t, st.Records.LiveRecords)
}

// TestReceiveTakesAhead: when records are queued, Receive takes a run of
// them at once and delivers them one per call, in order, each freed
// with its window (or through the slot it was taken with, one taken
// alone); they stay queued until delivered,
// so that a consumer closed with records taken ahead, or a ReceiveBatch
// after them, loses and repeats none. Another process's records are taken
// ahead only if all are live: one freed while queued fails alone, and is
// not written to.
func TestReceiveTakesAhead(t *testing.T) {
	b := heapBuf(t)
	h, h2 := testHandle(t, b), testHandle(t, b)
	p, err := h.Producer(1)
	require.NoError(t, err)
	defer p.Close()
	co, err := h2.Consumer(1)
	require.NoError(t, err)
	ctx := context.Background()
	var seq byte
	send := func(n int) {
		for range n {
			r, err := h.Allocate(40)
			require.NoError(t, err)
			r.Bytes()[0] = seq
			seq++
			require.NoError(t, p.Send(ctx, r))
		}
	}
	var want byte
	receive := func(c *Consumer, hd *Handle) {
		r, err := c.Receive(ctx)
		require.NoError(t, err)
		require.Equal(t, want, r.Bytes()[0], "in order")
		require.Len(t, r.Bytes(), 40)
		if w := hd.sh.win; w != nil && w.freed < w.next && w.recs[w.freed].ref == r.ref {
			// Taken ahead: freed with its window.
			before, n := w.freed, w.n
			require.NoError(t, hd.Free(r))
			if before+1 < n {
				require.Equal(t, before+1, w.freed, "held back with its window")
			} else {
				require.Zero(t, w.freed+w.n, "the last of its window: the window freed")
			}
		} else {
			require.Equal(t, r.off(), hd.sh.takenOff(), "freed through its slot")
			require.NoError(t, hd.Free(r))
		}
		want++
	}
	n := aheadMax + 24
	send(n)
	receive(co, h2) // reads the tail: n-1 more known
	receive(co, h2)
	require.Equal(t, aheadMax, co.ahead.n, "taken ahead")
	require.Equal(t, n-2, co.c.Len(), "still queued")
	for range 10 {
		receive(co, h2)
	}
	require.Equal(t, n-12, co.c.Len())
	// Closed with records taken ahead: the next consumer gets them.
	require.NoError(t, co.Close())
	h3 := testHandle(t, b)
	co, err = h3.Consumer(1)
	require.NoError(t, err)
	defer co.Close()
	receive(co, h3)
	receive(co, h3)
	require.Positive(t, co.ahead.n)
	// A batch after records taken ahead starts at the first not delivered.
	rs := make([]Record, n)
	k, err := co.ReceiveBatch(ctx, rs)
	require.NoError(t, err)
	require.Equal(t, n-14, k)
	for _, r := range rs[:k] {
		require.Equal(t, want, r.Bytes()[0])
		want++
	}
	require.NoError(t, h3.FreeBatch(rs[:k]))
	send(3) // and Receive after the batch: none of those again
	for range 3 {
		receive(co, h3)
	}
	st, err := b.Stats()
	require.NoError(t, err)
	require.Zero(t, st.Records.LiveRecords)

	// Another process's records, one freed (by offset) while queued.
	ph, other := otherProcess(t, b)
	pp, c2 := ends(t, ph, h3, 2)
	m := aheadMax + 4
	sent := make([]Record, m)
	require.NoError(t, ph.AllocateBatch(40, sent))
	for i, r := range sent {
		r.Bytes()[0] = byte(i)
	}
	k, err = pp.SendBatch(ctx, sent)
	require.NoError(t, err)
	require.Equal(t, m, k)
	require.NoError(t, b.recs.freeOff(sent[10].off()))
	for i := range m {
		r, err := c2.Receive(ctx)
		if i == 10 {
			require.ErrorIs(t, err, ErrNotAllocated)
			continue
		}
		require.NoError(t, err)
		require.Equal(t, byte(i), r.Bytes()[0])
		require.NoError(t, h3.Free(r))
	}
	tr := &b.recs.trailers[(int(sent[10].off())+allocSize(40))/trailerSize-1]
	require.Equal(t, other, sys.Identity(tr.holder().Load()), "nothing written to the freed record")

	// All live: the records taken ahead become this process's before
	// they are delivered, while still queued.
	k, err = pp.SendBatch(ctx, func() []Record {
		require.NoError(t, ph.AllocateBatch(40, sent))
		return sent
	}())
	require.NoError(t, err)
	require.Equal(t, m, k)
	for range 2 {
		r, err := c2.Receive(ctx)
		require.NoError(t, err)
		require.NoError(t, h3.Free(r))
	}
	require.Equal(t, aheadMax, c2.ahead.n)
	require.Equal(t, m-2, c2.c.Len(), "still queued")
	holder := func(r Record) sys.Identity { return holderOf(b, r.off(), 40) }
	for _, r := range sent[2 : 1+aheadMax] {
		require.Equal(t, sys.Self(), holder(r), "taken ahead")
	}
	require.Equal(t, other, holder(sent[1+aheadMax]), "not taken yet")
	for range m - 2 {
		r, err := c2.Receive(ctx)
		require.NoError(t, err)
		require.NoError(t, h3.Free(r))
	}

	// A record the batch check leaves to the full one among small ones:
	// one too long for a slot to carry its length (counted as more than
	// a window may hold, so no window reaches it), and a large one (its
	// own heap extent, not a slab's: the window that holds it fails the
	// checks). Delivered in order; the window that held the large one is
	// not checked again at every call.
	for _, long := range []int{channel.SlotLenNone + 100, b.recs.pool.MaxSmall() + 100} {
		var order []int
		for i := range 30 {
			n := 40
			if i == 12 {
				n = long
			}
			r, err := h.Allocate(n)
			require.NoError(t, err)
			r.Bytes()[0] = byte(i)
			require.NoError(t, p.Send(ctx, r))
		}
		skipped := false
		for range 30 {
			r, err := co.Receive(ctx)
			require.NoError(t, err)
			order = append(order, int(r.Bytes()[0]))
			skipped = skipped || co.ahead.skip > 0
			if r.Len() == long {
				require.Zero(t, co.ahead.n, "the long record taken alone")
			}
			require.NoError(t, h3.Free(r))
		}
		for i, v := range order {
			require.Equal(t, i, v)
		}
		require.Len(t, order, 30)
		require.Equal(t, long < channel.SlotLenNone, skipped, "the window with the record of %d bytes was skipped", long)
	}
	st, err = b.Stats()
	require.NoError(t, err)
	require.Zero(t, st.Records.LiveRecords)
}

// sendRecords allocates n records of 64 bytes on h, stamps each (its
// bytes and its number) and sends them on p; it returns them.
func sendRecords(t *testing.T, h *Handle, p *Producer, n int, stamp func(b []byte, i int)) []Record {
	t.Helper()
	sent := make([]Record, 0, n)
	for i := range n {
		r, err := h.Allocate(64)
		require.NoError(t, err)
		stamp(r.Bytes(), i)
		require.NoError(t, p.Send(context.Background(), r))
		sent = append(sent, r)
	}
	return sent
}

// recordTrailer is the trailer of r, a record of b.
func recordTrailer(b *Buffer, r Record) *trailer {
	return &b.recs.trailers[(int(r.off())+allocSize(len(r.b)))/trailerSize-1]
}

// allocRecords allocates n records of size bytes on h.
func allocRecords(t *testing.T, h *Handle, n, size int) []Record {
	t.Helper()
	rs := make([]Record, n)
	for i := range rs {
		var err error
		rs[i], err = h.Allocate(size)
		require.NoError(t, err)
	}
	return rs
}

// testHandle is a new handle on b, closed when the test ends.
func testHandle(t *testing.T, b *Buffer) *Handle {
	t.Helper()
	h, err := b.NewHandle()
	require.NoError(t, err)
	t.Cleanup(func() { h.Close() })
	return h
}

// loopback opens both ends of record channel id (made with opts) on one
// new handle: all are closed when the test ends.
func loopback(t *testing.T, b *Buffer, id ChannelID, opts ...ChannelOption) (*Handle, *Producer, *Consumer) {
	t.Helper()
	h := testHandle(t, b)
	p, co := ends(t, h, h, id, opts...)
	return h, p, co
}

// ends opens the producer end of record channel id on ph and its
// consumer end on ch, closed when the test ends.
func ends(t *testing.T, ph, ch *Handle, id ChannelID, opts ...ChannelOption) (*Producer, *Consumer) {
	t.Helper()
	p, err := ph.Producer(id, opts...)
	require.NoError(t, err)
	t.Cleanup(func() { p.Close() })
	co, err := ch.Consumer(id)
	require.NoError(t, err)
	t.Cleanup(func() { co.Close() })
	return p, co
}

// TestRecoverCutRecordFree: a holder killed between marking a record
// freed (its trailer) and setting its bits (or freeing a large record's
// extent) leaves it allocated; Recover frees it, whoever allocated it
// (here a live process), and leaves a
// record whose trailer holds the freed mark of an earlier generation (a
// record carved and not stamped yet) and one whose holder is alive (a
// freer on its way).
func TestRecoverCutRecordFree(t *testing.T) {
	b := heapBuf(t)
	h := testHandle(t, b)
	rs := allocRecords(t, h, 3, 64)
	tr := func(r Record) *trailer { return recordTrailer(b, r) }
	dead := testutil.DeadIdentity(t)
	key := b.recs.pool.RecordKey(rs[0].off())
	require.NotZero(t, key)
	tr(rs[0]).holder().Store(uint64(dead))
	tr(rs[0]).Magic = b.recs.freedMark(rs[0].off())
	tr(rs[1]).holder().Store(uint64(dead))
	tr(rs[1]).Magic = freedMark(b.recs.pool.RecordKey(rs[1].off()) ^ 0x100) // another generation's
	tr(rs[2]).Magic = b.recs.freedMark(rs[2].off())                         // held here: on its way

	large, err := h.Allocate(10000)
	require.NoError(t, err)
	require.Greater(t, large.Len(), b.recs.pool.MaxSmall(), "a large record")
	tr(large).holder().Store(uint64(dead))
	tr(large).Magic = b.recs.freedMark(large.off())

	_, err = b.Recover()
	require.NoError(t, err)
	_, err = b.recs.pool.Bytes(rs[0].off())
	require.ErrorIs(t, err, ErrNotAllocated, "the cut free is finished")
	_, err = b.recs.pool.Bytes(large.off())
	require.ErrorIs(t, err, ErrDoubleFree, "the large record's too")
	_, err = b.recs.pool.Bytes(rs[1].off())
	require.NoError(t, err, "another generation's mark: not this record's free")
	_, err = b.recs.pool.Bytes(rs[2].off())
	require.NoError(t, err, "a live holder finishes its own free")

	require.NoError(t, b.recs.pool.Free(rs[2].off()), "the live freer gets there")
	tr(rs[1]).holder().Store(uint64(b.recs.self))
	tr(rs[1]).Magic = trailerMagic
	require.NoError(t, h.Free(rs[1]))
	require.ErrorIs(t, h.Free(rs[0]), ErrDoubleFree)
}

// TestRecoverQueuedMark: a sender killed between marking a record queued
// and publishing its slot leaves it marked queued, held by a dead
// process and in no ring: Recover frees it. A record marked queued whose
// holder is alive (a send on its way) stays, and so does one in a ring
// whose sender died (it is delivered, and the consumer's Free of it
// works).
func TestRecoverQueuedMark(t *testing.T) {
	b := heapBuf(t)
	h, p, co := loopback(t, b, 1)
	rs := allocRecords(t, h, 2, 64)
	tr := func(r Record) *trailer { return recordTrailer(b, r) }
	dead := testutil.DeadIdentity(t)
	sent := sendRecords(t, h, p, 1, func(b []byte, _ int) { b[0] = 7 })[0]
	require.Equal(t, queuedMagicOf(nextHand(freshHand)), tr(sent).Magic, "a sent record is marked queued, one hand on")
	tr(sent).holder().Store(uint64(dead))
	tr(rs[0]).holder().Store(uint64(dead))
	tr(rs[0]).Magic = queuedMagic
	tr(rs[1]).Magic = queuedMagic // held here: on its way

	_, err := b.Recover()
	require.NoError(t, err)
	_, err = b.recs.pool.Bytes(rs[0].off())
	require.ErrorIs(t, err, ErrNotAllocated, "the unsent record is freed")
	_, err = b.recs.pool.Bytes(rs[1].off())
	require.NoError(t, err, "a live sender's record stays")
	got, err := co.Receive(context.Background())
	require.NoError(t, err, "the queued record of a dead sender is delivered")
	require.Equal(t, byte(7), got.Bytes()[0])
	require.Equal(t, liveMagic(nextHand(freshHand)), tr(got).Magic, "and is live again")
	require.NoError(t, h.Free(got))
	tr(rs[1]).Magic = trailerMagic
	require.NoError(t, h.Free(rs[1]))
}

// TestFreedMark: the freed mark is never a live magic, nor a queued one
// (of any hand), nor 0.
func TestFreedMark(t *testing.T) {
	keys := []uint32{0, 1, 2, 3, trailerFreed, trailerFreed ^ trailerMagic, trailerFreed ^ trailerMagic ^ 1, 1<<32 - 1}
	for i := range 1000 {
		keys = append(keys, uint32(i)*0x9e3779b9|1)
	}
	for _, k := range keys {
		m := freedMark(k)
		require.False(t, takeable(m), "key %#x", k)
		require.False(t, isQueued(m), "key %#x", k)
		require.NotZero(t, m, "key %#x", k)
	}
}

// TestFreeMarks: every way of freeing a record leaves the freed mark
// Recover recognises (the one its header's check gives) in its trailer.
func TestFreeMarks(t *testing.T) {
	b := heapBuf(t)
	h, p, co := loopback(t, b, 1)
	ctx := context.Background()
	mark := func(r Record) uint32 {
		return recordTrailer(b, r).Magic
	}
	frees := map[string]func(r Record) error{
		"Handle.Free, the record received last": h.Free,
		"Buffer.Free":                           b.Free,
		"Handle.FreeBatch":                      func(r Record) error { return h.FreeBatch([]Record{r}) },
	}
	for name, free := range frees {
		r, err := h.Allocate(50)
		require.NoError(t, err)
		require.NoError(t, p.Send(ctx, r))
		got, err := co.Receive(ctx)
		require.NoError(t, err)
		require.NoError(t, free(got))
		require.Equal(t, b.recs.freedMark(got.off()), mark(got), name)
		require.NotZero(t, mark(got), name)
	}
	// Not received: freed through the handle's general path; a large
	// record (whose header the free marks freed too: the mark is the one
	// its live header gives, what Recover sees of a free cut short).
	for _, n := range []int{50, 10000} {
		r, err := h.Allocate(n)
		require.NoError(t, err)
		want := b.recs.freedMark(r.off())
		require.NoError(t, h.Free(r))
		require.Equal(t, want, mark(r), "%d bytes", n)
		require.NotZero(t, mark(r), "%d bytes", n)
	}
}

// TestRecoverWithUnreadableChannel: when a channel's queue cannot be read
// (its tail is damaged), Recover reports it and frees no record, not even
// one a dead process held that is not queued anywhere else (the damaged
// channel may queue any record: freeing a queued one would hand its
// consumer freed memory). Once the channel reads again, the loose record
// is freed and the queued one kept.
func TestRecoverWithUnreadableChannel(t *testing.T) {
	b := heapBuf(t)
	h := testHandle(t, b)
	p, err := h.Producer(1)
	require.NoError(t, err)
	queued, err := h.Allocate(64)
	require.NoError(t, err)
	require.NoError(t, p.Send(context.Background(), queued))
	loose, err := h.Allocate(64)
	require.NoError(t, err)
	dead := testutil.DeadIdentity(t)
	for _, r := range []Record{queued, loose} {
		recordTrailer(b, r).holder().Store(uint64(dead))
	}
	en, err := b.reg.Lookup(1)
	require.NoError(t, err)
	tail := mem.AtomicUint64(mem.MustAt[uint64](b.recs.b, en.Control+128))
	good := tail.Load()
	tail.Store(good + 1<<20)

	_, err = b.Recover()
	require.ErrorIs(t, err, ErrCorrupt)
	for _, r := range []Record{queued, loose} {
		_, err := b.recs.pool.Bytes(r.off())
		require.NoError(t, err, "no record freed while a queue is unreadable")
	}

	tail.Store(good)
	_, err = b.Recover()
	require.NoError(t, err)
	_, err = b.recs.pool.Bytes(queued.off())
	require.NoError(t, err, "queued: kept")
	_, err = b.recs.pool.Bytes(loose.off())
	require.ErrorIs(t, err, ErrNotAllocated, "held by a dead process, queued nowhere: freed")
	require.NoError(t, p.Close())
}

// TestRecoverReturnsSlabCompletedByItsFrees: Recover's own frees (records
// a dead process held) can complete a retired slab whose count a dead
// freer left one too high; the slab then goes back within the same
// Recover, so that Check passes after it. Here: slots of 8 granules,
// eight records a bitmap word; the first word completed by a freer that
// died before counting it, the second completed by Recover freeing the
// record a dead process held.
func TestRecoverReturnsSlabCompletedByItsFrees(t *testing.T) {
	b := heapBuf(t)
	free0 := func() uint64 { st, err := b.Stats(); require.NoError(t, err); return st.Heap.FreeBytes }
	before := free0()
	h, err := b.NewHandle()
	require.NoError(t, err)
	rs := make([]Record, 16)
	for i := range rs {
		rs[i], err = h.Allocate(96) // 96 + trailer 16 + header 16: 128 bytes
		require.NoError(t, err)
	}
	// The slab bitmap word of record r, and r's bits in it.
	bits := func(r Record) (*atomic.Uint64, uint64) {
		pos := uint64(*mem.MustAt[uint32](b.recs.b, r.off()-16))
		slab := r.off() - 16 - mem.Off(16*pos)
		bit := pos - uint64(*mem.MustAt[uint32](b.recs.b, slab+24))
		require.Zero(t, bit%8, "slots of 8 granules from the first")
		return mem.AtomicUint64(mem.MustAt[uint64](b.recs.b, slab+256+mem.Off(8*(bit/64)))), 0xff << (bit % 64)
	}
	for i, r := range rs {
		switch i {
		case 7: // freed by a freer that died after its bitmap CAS
			w, m := bits(r)
			require.Zero(t, w.Load()&m, "its bits clear")
			w.Or(m)
			require.Equal(t, ^uint64(0), w.Load(), "the first word complete")
		case 15: // held by a process that died
			recordTrailer(b, r).holder().Store(uint64(testutil.DeadIdentity(t)))
		default:
			require.NoError(t, h.Free(r))
		}
	}
	require.NoError(t, h.Close()) // retires the slab
	_, err = b.Recover()
	require.NoError(t, err)
	require.NoError(t, b.Check())
	require.Equal(t, before, free0(), "the slab went back")
}
