package slab

import (
	"errors"
	"testing"

	"github.com/heapipc/ipc/internal/mem"
	"github.com/stretchr/testify/require"
)

// TestReserve: a carving's records are what AllocBatch carves (located
// by their headers, of their size, back to back), a carving never
// crosses its slab's end (the next Reserve refills), the handle's own
// allocations between two carved records land after the carving, Rest
// carves what is left, and every record frees; bad arguments are refused
// with nothing changed, and a full heap gives ErrNoSpace.
func TestReserve(t *testing.T) {
	p := newPool(t, heapCombo, 16<<20, Options{})
	hd := p.NewHandle()
	const n = 1500 // 96-byte slots: three slabs
	var offs []mem.Off
	var cv Carving
	reserves := 0
	for len(offs) < n {
		require.NoError(t, hd.Reserve(80, n-len(offs), &cv))
		reserves++
		k := cv.Len()
		require.True(t, k >= 1 && k <= n-len(offs), "Reserve gave %d records of %d asked", k, n-len(offs))
		for cv.Len() > 0 {
			off := cv.Next()
			offs = append(offs, off)
			if len(offs)%100 == 0 {
				// The handle allocates meanwhile: after the carving.
				r, err := hd.Alloc(80)
				require.NoError(t, err)
				var s Slot
				require.True(t, hd.Locate(r.Off, &s))
				require.NoError(t, p.Free(r.Off))
			}
		}
		require.Zero(t, cv.Next(), "Next on an exhausted carving")
	}
	require.Greater(t, reserves, 2, "1500 records of 96 bytes span three slabs")
	sizes, keys := make([]uint32, n), make([]uint32, n)
	for i := range sizes {
		sizes[i] = 80
	}
	k, runs := locateAll(p, offs, sizes, keys)
	require.Equal(t, n, k, "located %d of the carved records", k)
	for i, off := range offs {
		b, err := p.Bytes(off)
		require.NoError(t, err, "record %d", i)
		require.Len(t, b, 80)
		require.Equal(t, p.RecordKey(off), keys[i])
	}
	require.LessOrEqual(t, len(runs), 2*reserves, "carved records lie back to back")

	// Rest carves what a carving has left, up to what offs holds.
	require.NoError(t, hd.Reserve(48, 10, &cv))
	first := cv.Next()
	rest := make([]mem.Off, 4)
	require.Equal(t, 4, cv.Rest(rest))
	require.Equal(t, 5, cv.Len())
	more := make([]mem.Off, 16)
	require.Equal(t, 5, cv.Rest(more))
	require.Equal(t, 0, cv.Len())
	all := append(append([]mem.Off{first}, rest...), more[:5]...)
	for i, off := range all {
		b, err := p.Bytes(off)
		require.NoError(t, err, "rest record %d", i)
		require.Len(t, b, 48)
	}
	require.NoError(t, p.FreeBatch(all))
	require.NoError(t, p.FreeRuns(runs, offs))

	// Bad arguments.
	before := poolStats(t, p)
	for _, c := range []struct {
		size, n int
		want    error
	}{{-1, 1, ErrInvalidSize}, {p.MaxSmall() + 1, 1, ErrInvalidSize}, {64, 0, ErrInvalidArgument}, {64, -3, ErrInvalidArgument}} {
		err := hd.Reserve(c.size, c.n, &cv)
		require.ErrorIs(t, err, c.want, "Reserve(%d, %d)", c.size, c.n)
	}
	require.Equal(t, before, poolStats(t, p))
	require.NoError(t, hd.Close())
	require.ErrorIs(t, hd.Reserve(64, 1, &cv), ErrClosed)
	require.Zero(t, poolStats(t, p).LiveRecords)
	mustCheck(t, p, "after the carvings")

	// A full heap.
	small := newPool(t, heapCombo, 1<<20, Options{})
	sh := small.NewHandle()
	defer sh.Close()
	var got []mem.Off
	var err error
	for err == nil {
		if err = sh.Reserve(64, 64, &cv); err == nil {
			for cv.Len() > 0 {
				got = append(got, cv.Next())
			}
		}
	}
	require.True(t, errors.Is(err, ErrNoSpace), "Reserve on a full heap: %v", err)
	require.NotEmpty(t, got)
	require.NoError(t, small.FreeBatch(got))
	mustCheck(t, small, "after the full heap")
}

// TestRunCursor: a cursor gives each record's header check, and gathers
// records into runs as they lie: one run per stretch of one slab,
// whatever the sizes (the records of the other handle each a run of its
// own), every run live and freeable by FreeRuns. A record that is not
// the one claimed (a damaged header, another size, a large record, not a
// record) is refused with nothing changed, the cursor going on with the
// next good one. (TestLocateRuns covers the runs' fields.)
func TestRunCursor(t *testing.T) {
	p := newPool(t, heapCombo, 16<<20, Options{})
	hd := p.NewHandle()
	defer hd.Close()
	other := p.NewHandle()
	defer other.Close()
	var offs []mem.Off
	var sizes []uint32
	slabs := map[uint64]bool{}
	add := func(h *Handle, size int) {
		r, err := h.Alloc(size)
		require.NoError(t, err)
		offs, sizes = append(offs, r.Off), append(sizes, uint32(size))
		var s Slot
		require.True(t, h.Locate(r.Off, &s))
		if h == hd {
			slabs[s.sl.slab] = true
		}
	}
	for i := range 1500 { // three slabs of 96-byte slots
		add(hd, 80)
		if i%300 == 299 {
			for j := range 7 { // sizes change within a run
				add(hd, 16+24*j)
			}
		}
	}
	for range 4 { // alternating handles: a run each
		add(hd, 80)
		add(other, 80)
	}
	keys := make([]uint32, len(offs))
	k, want := locateAll(p, offs, sizes, keys)
	require.Equal(t, len(offs), k)
	for i, off := range offs {
		require.Equal(t, p.RecordKey(off), keys[i], "record %d", i)
	}
	require.Len(t, want, len(slabs)+7, "a run per slab of hd's, then one per record from the fourth-last of hd's on")
	n := 0
	for _, r := range want {
		require.True(t, p.RunLive(&r))
		n += r.Count
	}
	require.Equal(t, len(offs), n)

	var c RunCursor
	// Refused records change nothing.
	large, err := hd.Alloc(p.MaxSmall() + 1)
	require.NoError(t, err)
	g := uint64(offs[10])/granule - 1
	w1 := p.plain[2*g+1]
	c.Reset(p, c.Runs())
	for i := range 10 {
		_, ok := c.Next(offs[i], sizes[i])
		require.True(t, ok)
	}
	runs := append([]Run(nil), c.Runs()...)
	p.plain[2*g+1] ^= 1 << 40
	_, ok := c.Next(offs[10], sizes[10])
	p.plain[2*g+1] = w1
	require.False(t, ok, "a damaged header")
	for _, bad := range []struct {
		off  mem.Off
		size uint32
	}{{offs[10], 64}, {offs[10], 96}, {large.Off, uint32(p.MaxSmall() + 1)}, {offs[10] + 16, 64}, {0, 80}} {
		_, ok := c.Next(bad.off, bad.size)
		require.False(t, ok, "record %#x of %d bytes", bad.off, bad.size)
		require.Equal(t, runs, c.Runs())
	}
	// The good record after them continues the run.
	key, ok := c.Next(offs[10], sizes[10])
	require.True(t, ok)
	require.Equal(t, keys[10], key)
	require.Len(t, c.Runs(), 1)
	require.Equal(t, 11, c.Runs()[0].Count)

	require.NoError(t, p.Free(large.Off))
	require.NoError(t, p.FreeRuns(want, offs))
	require.Zero(t, poolStats(t, p).LiveRecords)
	mustCheck(t, p, "at the end")
}
