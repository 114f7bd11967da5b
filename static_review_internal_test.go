package ipc

import (
	"context"
	"testing"
	"time"

	"github.com/heapipc/ipc/internal/mem"
	"github.com/heapipc/ipc/internal/testutil"
	"github.com/stretchr/testify/require"
)

func staticBuffer(t *testing.T) *Buffer {
	t.Helper()
	b, err := Open(testutil.Name(t), WithBackends("heap", "heap"), WithSize(4<<20), WithCheckInterval(10*time.Millisecond), WithReadyTimeout(50*time.Millisecond))
	require.NoError(t, err)
	t.Cleanup(func() { _ = b.Destroy() })
	return b
}

// TestStaticDamagedEntry: a static segment's registry entry whose Size
// or Control was damaged gives ErrCorrupt from Static, AttachStatic and
// Check, never a view past the segment's control block or over another
// extent (a write through it corrupted whatever lay there).
func TestStaticDamagedEntry(t *testing.T) {
	for _, tc := range []struct {
		name  string
		field mem.Off // offset in the entry
		value func(b *Buffer, st *Static, other mem.Off) uint64
	}{
		{"size past the block", 32, func(_ *Buffer, st *Static, _ mem.Off) uint64 { return 1 << 20 }},
		{"control of another extent", 24, func(_ *Buffer, _ *Static, other mem.Off) uint64 { return uint64(other) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := staticBuffer(t)
			ctx := t.Context()
			st, err := b.Static(ctx, "cfg", 100, nil)
			require.NoError(t, err)
			require.NoError(t, b.Check())
			// Another extent: a record channel's control block would be
			// KindControl too; take a plain allocation (a large record).
			h, err := b.NewHandle()
			require.NoError(t, err)
			defer h.Close()
			big, err := h.Allocate(256 << 10)
			require.NoError(t, err)
			defer h.Free(big)
			x, err := b.heap.Allocated()
			require.NoError(t, err)
			var other mem.Off
			for _, e := range x {
				if e.Off != st.en.Control && e.Size >= 256<<10 {
					other = e.Off
				}
			}
			require.NotZero(t, other)
			w, err := mem.Uint64(b.region.Bytes(), st.en.Off+tc.field)
			require.NoError(t, err)
			old := w.Load()
			w.Store(tc.value(b, st, other))

			_, err = b.AttachStatic("cfg")
			require.ErrorIs(t, err, ErrCorrupt, "AttachStatic")
			if tc.field == 24 {
				_, err = b.Static(ctx, "cfg", 100, nil)
			} else {
				_, err = b.Static(ctx, "cfg", 1<<20, nil)
			}
			require.ErrorIs(t, err, ErrCorrupt, "Static")
			require.ErrorIs(t, b.Check(), ErrCorrupt, "Check")

			w.Store(old)
			require.NoError(t, b.Check())
			again, err := b.AttachStatic("cfg")
			require.NoError(t, err)
			require.Len(t, again.Bytes(), 100)
		})
	}
}

// TestStaticInitPanics: a panicking init lets the panic go on and leaves
// nothing behind: not an entry that stays initializing by a live creator
// (every later Static waited on it until its context ended) nor its block.
func TestStaticInitPanics(t *testing.T) {
	b := staticBuffer(t)
	_, err := b.Static(t.Context(), "first", 8, nil) // the registry's first block of entries
	require.NoError(t, err)
	before, err := b.heap.Allocated()
	require.NoError(t, err)
	require.PanicsWithValue(t, "init failed", func() {
		_, _ = b.Static(t.Context(), "cfg", 100, func([]byte) error { panic("init failed") })
	})
	after, err := b.heap.Allocated()
	require.NoError(t, err)
	require.Equal(t, before, after, "extents after the panic")
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	st, err := b.Static(ctx, "cfg", 100, func(p []byte) error { p[0] = 7; return nil })
	require.NoError(t, err, "a Static after the panic")
	require.Equal(t, byte(7), st.Bytes()[0], "init ran for the new segment")
	require.NoError(t, b.Check())
}

// TestStaticRemovedView: a Static removed through another Static of the
// same segment is no longer Valid, and StaticAt refuses it.
func TestStaticRemovedView(t *testing.T) {
	b := staticBuffer(t)
	a, err := b.Static(t.Context(), "flags", 64, nil)
	require.NoError(t, err)
	c, err := b.AttachStatic("flags")
	require.NoError(t, err)
	require.True(t, a.Valid())
	_, err = StaticAt[uint64](a, 8)
	require.NoError(t, err)
	require.NoError(t, c.Remove(t.Context()))
	require.False(t, c.Valid())
	require.False(t, a.Valid(), "removed by another Static")
	_, err = StaticAt[uint64](a, 8)
	require.ErrorIs(t, err, ErrNotExist)
	require.ErrorIs(t, a.Remove(t.Context()), ErrNotExist)
}
