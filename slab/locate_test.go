package slab

import (
	"math/rand/v2"
	"testing"

	"github.com/heapipc/ipc/internal/mem"
	"github.com/stretchr/testify/require"
)

// spanLocate locates offs as a caller of Span does (the ipc package's
// batch checks): the records that continue the cursor's run by their
// place, size and Span.Check, then Took, and the first that does not
// with Next. It returns how many it located.
func spanLocate(c *RunCursor, offs []mem.Off, sizes, keys []uint32) int {
	for i := 0; i < len(offs); i++ {
		if sp := c.Span(); sp.Want != 0 {
			pos, want, j := sp.Pos, sp.Want, i
			for ; j < len(offs) && offs[j] == want && sizes[j] == sp.Size && pos <= sp.Lim; j++ {
				key, ok := sp.Check(pos)
				if !ok {
					break
				}
				keys[j] = key
				pos += sp.Slot
				want += mem.Off(sp.Slot * granule)
			}
			c.Took(j - i)
			if i = j; i == len(offs) {
				break
			}
		}
		key, ok := c.Next(offs[i], sizes[i])
		if !ok {
			return i
		}
		keys[i] = key
	}
	return len(offs)
}

// TestRunCursorLocate: Locate, and a caller of Span (spanLocate), over batches of any length, locates what
// Next does record by record: the same header checks and the same runs,
// across slabs, sizes that change within a run and records of two
// handles; and it stops where Next refuses (a damaged header in a run's
// middle, a record of another size at a run's next place, a large record),
// with the runs as Next leaves them.
func TestRunCursorLocate(t *testing.T) {
	p := newPool(t, heapCombo, 16<<20, Options{})
	hd, other := p.NewHandle(), p.NewHandle()
	defer hd.Close()
	defer other.Close()
	var offs []mem.Off
	var sizes []uint32
	add := func(h *Handle, size int) {
		r, err := h.Alloc(size)
		require.NoError(t, err)
		offs, sizes = append(offs, r.Off), append(sizes, uint32(size))
	}
	rng := rand.New(rand.NewPCG(1, 2))
	for i := range 1200 {
		switch {
		case i%97 == 96:
			add(other, 80) // another handle's: a run of its own
		case i%50 == 49:
			add(hd, 16+16*rng.IntN(6)) // another size within the run
		default:
			add(hd, 80)
		}
	}
	want := make([]uint32, len(offs))
	k, wantRuns := locateAll(p, offs, sizes, want)
	require.Equal(t, len(offs), k)

	for _, chunk := range []int{1, 3, 16, 64, len(offs)} {
		var c RunCursor
		c.Reset(p, nil)
		keys := make([]uint32, len(offs))
		for i := 0; i < len(offs); i += chunk {
			j := min(i+chunk, len(offs))
			require.Equal(t, j-i, c.Locate(offs[i:j], sizes[i:j], keys[i:j]), "chunk %d at %d", chunk, i)
		}
		require.Equal(t, want, keys, "chunks of %d", chunk)
		require.Equal(t, wantRuns, c.Runs(), "chunks of %d", chunk)

		var sc RunCursor
		sc.Reset(p, nil)
		clear(keys)
		for i := 0; i < len(offs); i += chunk {
			j := min(i+chunk, len(offs))
			require.Equal(t, j-i, spanLocate(&sc, offs[i:j], sizes[i:j], keys[i:j]), "span, chunk %d at %d", chunk, i)
		}
		require.Equal(t, want, keys, "span, chunks of %d", chunk)
		require.Equal(t, wantRuns, sc.Runs(), "span, chunks of %d", chunk)
	}

	// Refusals: Locate stops where Next does, with Next's runs.
	large, err := hd.Alloc(p.MaxSmall() + 1)
	require.NoError(t, err)
	defer p.Free(large.Off)
	g := uint64(offs[10])/granule - 1
	w1 := p.plain[2*g+1]
	for _, tc := range []struct {
		name  string
		spoil func(offs []mem.Off, sizes []uint32) func()
	}{
		{"a damaged header in a run", func([]mem.Off, []uint32) func() {
			p.plain[2*g+1] ^= 1 << 40
			return func() { p.plain[2*g+1] = w1 }
		}},
		{"another size at the run's next place", func(_ []mem.Off, sizes []uint32) func() {
			sizes[10] = 64
			return func() {}
		}},
		{"a large record", func(offs []mem.Off, sizes []uint32) func() {
			offs[10], sizes[10] = large.Off, uint32(p.MaxSmall()+1)
			return func() {}
		}},
		{"not a record", func(offs []mem.Off, _ []uint32) func() {
			offs[10] += 16
			return func() {}
		}},
	} {
		o, s := append([]mem.Off(nil), offs[:20]...), append([]uint32(nil), sizes[:20]...)
		undo := tc.spoil(o, s)
		var byNext RunCursor
		byNext.Reset(p, nil)
		n := 0
		for ; n < len(o); n++ {
			if _, ok := byNext.Next(o[n], s[n]); !ok {
				break
			}
		}
		var c RunCursor
		c.Reset(p, nil)
		got := c.Locate(o, s, make([]uint32, len(o)))
		var sc RunCursor
		sc.Reset(p, nil)
		bySpan := spanLocate(&sc, o, s, make([]uint32, len(o)))
		undo()
		require.Equal(t, 10, n, tc.name)
		require.Equal(t, n, got, tc.name)
		require.Equal(t, byNext.Runs(), c.Runs(), tc.name)
		require.Equal(t, n, bySpan, tc.name)
		require.Equal(t, byNext.Runs(), sc.Runs(), tc.name)
	}
	require.NoError(t, p.FreeRuns(wantRuns, offs))
	mustCheck(t, p, "at the end")
}

// TestRunCursorContinue: a cursor that continues where it left off
// (Continue, after Forget) locates the next batch's first record against
// its place and begins the batch's first run there: the same keys as
// locating each batch afresh, runs that FreeRuns frees, a first run that
// starts where the last batch's ended. A batch that does not begin there,
// or whose slab started over since (another generation), is located in
// full.
func TestRunCursorContinue(t *testing.T) {
	p := newPool(t, heapCombo, 16<<20, Options{SlabSize: 16 << 10})
	hd, other := p.NewHandle(), p.NewHandle()
	defer other.Close()
	alloc := func(h *Handle, n, size int) ([]mem.Off, []uint32) {
		offs, sizes := make([]mem.Off, n), make([]uint32, n)
		for i := range offs {
			r, err := h.Alloc(size)
			require.NoError(t, err)
			offs[i], sizes[i] = r.Off, uint32(size)
		}
		return offs, sizes
	}
	offs, sizes := alloc(hd, 700, 80) // several slabs
	want := make([]uint32, len(offs))
	k, _ := locateAll(p, offs, sizes, want)
	require.Equal(t, len(offs), k)

	var c RunCursor
	var all []Run
	keys := make([]uint32, len(offs))
	buf := make([]Run, 0, 16)
	prevEnd := uint64(0)
	for i := 0; i < len(offs); i += 16 {
		j := min(i+16, len(offs))
		c.Continue(p, buf)
		require.Equal(t, j-i, c.Locate(offs[i:j], sizes[i:j], keys[i:j]))
		runs := c.Runs()
		n := 0
		for _, r := range runs {
			require.Positive(t, r.Count, "no empty run")
			n += r.Count
		}
		require.Equal(t, j-i, n)
		if i > 0 && runs[0].bit != 0 {
			require.Equal(t, prevEnd, runs[0].bit, "the batch's first run begins where the last one ended")
		}
		prevEnd = runs[len(runs)-1].bit + runs[len(runs)-1].n
		all = append(all, runs...)
		c.Forget()
		require.Len(t, c.runs, 1, "Forget keeps the last run, in the cursor")
		require.Equal(t, &c.last[0], &c.runs[0], "and none of the caller's memory")
	}
	require.Equal(t, want, keys)

	// Another handle's records: located in full, their own run.
	o2, s2 := alloc(other, 3, 80)
	c.Continue(p, buf)
	k2 := make([]uint32, 3)
	require.Equal(t, 3, c.Locate(o2, s2, k2))
	require.Len(t, c.Runs(), 1)
	for i, off := range o2 {
		require.Equal(t, p.RecordKey(off), k2[i])
	}
	all = append(all, c.Runs()...)
	c.Forget()
	require.NoError(t, p.FreeRuns(all, append(append([]mem.Off(nil), offs...), o2...)))
	require.Zero(t, poolStats(t, p).LiveRecords)

	// The slab started over since, and its new records lie where the
	// cursor left off: the one at its place, of the new generation, is
	// located in full (not refused as a damaged header) and begins a run.
	require.NoError(t, hd.Close())
	h2 := p.NewHandle()
	offs, sizes = alloc(h2, 16, 80)
	c.Continue(p, buf)
	require.Equal(t, 16, c.Locate(offs, sizes, make([]uint32, 16)))
	require.NoError(t, p.FreeRuns(c.Runs(), offs))
	c.Forget()
	require.NoError(t, h2.Close()) // its slab goes back: all free
	h3 := p.NewHandle()
	defer h3.Close()
	again, sizes := alloc(h3, 40, 80)
	require.Equal(t, offs, again[:16], "the slab started over at the same place")
	c.Continue(p, buf)
	keys = make([]uint32, 24)
	require.Equal(t, 24, c.Locate(again[16:], sizes[16:], keys))
	for i, off := range again[16:] {
		require.Equal(t, p.RecordKey(off), keys[i], "record %d", 16+i)
	}
	require.Len(t, c.Runs(), 1)
	require.Equal(t, 24, c.Runs()[0].Count)
	require.NoError(t, p.FreeRuns(c.Runs(), again[16:]))
	require.NoError(t, p.FreeBatch(again[:16]))
	mustCheck(t, p, "at the end")
}
