package slab

import (
	"math/rand/v2"
	"testing"

	"github.com/heapipc/ipc/internal/mem"
	"github.com/stretchr/testify/require"
)

// TestRunCursorLocate: Locate, over batches of any length, locates what
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
		undo()
		require.Equal(t, 10, n, tc.name)
		require.Equal(t, n, got, tc.name)
		require.Equal(t, byNext.Runs(), c.Runs(), tc.name)
	}
	require.NoError(t, p.FreeRuns(wantRuns, offs))
	mustCheck(t, p, "at the end")
}
