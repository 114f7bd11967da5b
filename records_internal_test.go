package ipc

import (
	"context"
	"os"
	"testing"

	"github.com/heapipc/ipc/internal/mem"
	"github.com/heapipc/ipc/internal/sys"
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
			h, err := b.NewHandle()
			require.NoError(t, err)
			defer h.Close()
			p, err := h.Producer(1)
			require.NoError(t, err)
			defer p.Close()
			co, err := h.Consumer(1)
			require.NoError(t, err)
			defer co.Close()
			ctx := context.Background()
			var sent []Record
			for i := 0; i < 3; i++ {
				r, err := h.Allocate(64)
				require.NoError(t, err)
				r.Bytes()[0] = byte(i)
				require.NoError(t, p.Send(ctx, r))
				sent = append(sent, r)
			}
			// Damage the first record's trailer while it is queued.
			tr := mem.MustAt[trailer](b.recs.b, sent[0].off+mem.Off(allocSize(64)-trailerSize))
			c.damage(tr)

			_, err = co.Receive(ctx)
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

// TestSendHandsOver: a record sent to a consumer in another process is
// handed over to that process before it is queued (the consumer then
// writes nothing to it when it takes it); a send that finds the ring full
// hands nothing over, so the sender still holds the record and can send
// it later.
func TestSendHandsOver(t *testing.T) {
	b := heapBuf(t)
	// A second attachment stands for the producer's process: its records
	// carry another identity (this test's parent process, alive).
	pb, err := Open(b.Name(), WithBackends("heap", "heap"), AttachOnly())
	require.NoError(t, err)
	defer pb.Close()
	other, err := sys.IdentityOf(os.Getppid())
	require.NoError(t, err)
	pb.recs.self = other

	ph, err := pb.NewHandle()
	require.NoError(t, err)
	defer ph.Close()
	ch, err := b.NewHandle()
	require.NoError(t, err)
	defer ch.Close()
	co, err := ch.Consumer(1, WithCapacity(2))
	require.NoError(t, err)
	defer co.Close()
	p, err := ph.Producer(1)
	require.NoError(t, err)
	defer p.Close()

	holder := func(r Record) sys.Identity {
		return sys.Identity(mem.MustAt[trailer](b.recs.b, r.off+mem.Off(allocSize(len(r.b))-trailerSize)).holder().Load())
	}
	var rs [3]Record
	for i := range rs {
		rs[i], err = ph.Allocate(8)
		require.NoError(t, err)
		require.Equal(t, other, holder(rs[i]))
	}
	n, err := p.SendBatch(context.Background(), rs[:2])
	require.NoError(t, err)
	require.Equal(t, 2, n)
	require.Equal(t, sys.Self(), holder(rs[0]), "handed over before it was queued")
	require.Equal(t, sys.Self(), holder(rs[1]))
	require.ErrorIs(t, p.TrySend(rs[2]), ErrWouldBlock)
	require.Equal(t, other, holder(rs[2]), "a full ring hands nothing over")

	got, err := co.TryReceive()
	require.NoError(t, err)
	require.Equal(t, rs[0].off, got.off)
	require.NoError(t, p.TrySend(rs[2]), "the sender still holds it")
	require.Equal(t, sys.Self(), holder(rs[2]))
	require.NoError(t, ch.Free(got))
	for i := 0; i < 2; i++ {
		r, err := co.TryReceive()
		require.NoError(t, err)
		require.NoError(t, ch.Free(r))
	}
}
