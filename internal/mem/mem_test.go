package mem

import (
	"errors"
	"math"
	"sync/atomic"
	"testing"
	"unsafe"

	"github.com/heapipc/ipc/internal/errs"
	"github.com/stretchr/testify/require"
)

type pair struct {
	A uint64
	B uint32
	_ uint32
}

func TestAtBoundsAndAlignment(t *testing.T) {
	b := Aligned(64, 64)
	p, err := At[pair](b, 0)
	require.NoError(t, err)
	p.A = 7
	q, err := At[pair](b, 0)
	require.NoError(t, err)
	require.Equal(t, uint64(7), q.A)

	_, err = At[pair](b, 56) // runs past the end
	require.ErrorIs(t, err, errs.ErrCorrupt)
	_, err = At[pair](b, 4) // misaligned for uint64
	require.ErrorIs(t, err, errs.ErrCorrupt)
	_, err = At[pair](b, Off(^uint64(0)-3)) // overflowing offset
	require.ErrorIs(t, err, errs.ErrCorrupt)
	var ce *errs.CorruptError
	require.True(t, errors.As(err, &ce))

	require.Panics(t, func() { MustAt[pair](b, 60) })
}

func TestSliceAndBytes(t *testing.T) {
	b := Aligned(64, 64)
	s, err := Slice[uint32](b, 8, 14)
	require.NoError(t, err)
	require.Len(t, s, 14)
	_, err = Slice[uint32](b, 8, 15)
	require.ErrorIs(t, err, errs.ErrCorrupt)
	_, err = Slice[uint64](b, 0, math.MaxInt/4) // more bytes than int holds
	require.ErrorIs(t, err, errs.ErrCorrupt)
	_, err = Slice[uint32](b, 0, -1)
	require.ErrorIs(t, err, errs.ErrCorrupt)
	// Counts read from shared memory: one that wraps as an int on a
	// 32-bit platform (1<<32 is 0 there) is still refused.
	for _, n := range []uint64{1 << 32, 1<<32 + 2, 1 << 63, math.MaxUint64} {
		_, err = SliceN[uint32](b, 8, n)
		require.ErrorIs(t, err, errs.ErrCorrupt, "%d elements", n)
	}
	sn, err := SliceN[uint32](b, 8, 14)
	require.NoError(t, err)
	require.Len(t, sn, 14)
	e, err := Slice[uint32](b, 64, 0)
	require.NoError(t, err)
	require.Len(t, e, 0)

	v, err := Bytes(b, 60, 4)
	require.NoError(t, err)
	require.Len(t, v, 4)
	require.Equal(t, 4, cap(v), "views cannot be extended past their range")
	_, err = Bytes(b, 60, 5)
	require.ErrorIs(t, err, errs.ErrCorrupt)
	_, err = Bytes(b, 65, 0)
	require.ErrorIs(t, err, errs.ErrCorrupt)
}

func TestOffsetOf(t *testing.T) {
	b := Aligned(128, 64)
	off, ok := OffsetOf(b, &b[77])
	require.True(t, ok)
	require.Equal(t, Off(77), off)
	other := make([]byte, 8)
	_, ok = OffsetOf(b, &other[0])
	require.False(t, ok)
	_, ok = OffsetOf(b, nil)
	require.False(t, ok)
}

func TestAligned(t *testing.T) {
	for _, a := range []int{8, 64, 128, 4096} {
		b := Aligned(100, a)
		require.Len(t, b, 100)
		require.Zero(t, uintptr(unsafe.Pointer(&b[0]))%uintptr(a))
	}
	require.Panics(t, func() { Aligned(10, 3) })
}

// ZeroWords zeroes exactly the n words it is given: not the one before
// nor the one after, and n = 0 stores nothing.
func TestZeroWords(t *testing.T) {
	for _, n := range []int{0, 1, 7, 64} {
		w := make([]atomic.Uint64, n+2)
		for i := range w {
			w[i].Store(^uint64(i))
		}
		ZeroWords(&w[1], n)
		for i := range w {
			want := uint64(0)
			if i == 0 || i == n+1 {
				want = ^uint64(i)
			}
			require.Equal(t, want, w[i].Load(), "n %d, word %d", n, i)
		}
	}
}
