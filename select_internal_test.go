package ipc

import (
	"testing"

	"github.com/heapipc/ipc/alloc"
	"github.com/heapipc/ipc/internal/mem"
	"github.com/stretchr/testify/require"
)

// TestClosedSelectDoorbell: a closed Select's doorbell stays a doorbell
// (the buffer gives it to its next Select), so a producer that read its
// offset before the Select took it out of the channels and rings it late
// writes into a doorbell, not into memory handed out again; the buffer's
// Close frees it.
func TestClosedSelectDoorbell(t *testing.T) {
	b := heapBuf(t)
	h, err := b.NewHandle()
	require.NoError(t, err)
	c, err := h.Consumer(1)
	require.NoError(t, err)
	sel, err := h.NewSelect(c)
	require.NoError(t, err)
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
