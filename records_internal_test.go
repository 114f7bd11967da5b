package ipc

import (
	"context"
	"testing"

	"github.com/heapipc/ipc/internal/mem"
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
