package ipc

import (
	"context"
	"encoding/binary"
	"fmt"
	"math"
	"testing"

	"github.com/stretchr/testify/require"
)

// fillPack writes payload i of p as bytes seq+i+j; checkPack verifies it
// (from any goroutine: it returns what is wrong).
func fillPack(p Pack, seq byte) {
	for i, b := range p.All() {
		for j := range b {
			b[j] = seq + byte(i) + byte(j)
		}
	}
}

func checkPack(p Pack, seq byte) error {
	n := 0
	for i, b := range p.All() {
		if i != n || len(b) != p.Size() || cap(b) != p.Size() {
			return fmt.Errorf("pack %d: payload %d (the %dth) of %d bytes, capacity %d", seq, i, n, len(b), cap(b))
		}
		if a := p.At(i); &a[0] != &b[0] || cap(a) != p.Size() {
			return fmt.Errorf("pack %d: At(%d) is not the payload All yields", seq, i)
		}
		for j := range b {
			if b[j] != seq+byte(i)+byte(j) {
				return fmt.Errorf("pack %d: payload %d byte %d is %d", seq, i, j, b[j])
			}
		}
		n++
	}
	if n != p.Len() {
		return fmt.Errorf("pack %d: %d payloads of %d", seq, n, p.Len())
	}
	return nil
}

// TestPackRoundTrip: packs of every shape go through a record channel
// between two handles intact, one ring slot each, and every byte comes
// back when they are freed.
func TestPackRoundTrip(t *testing.T) {
	b := heapBuf(t)
	ph, err := b.NewHandle()
	require.NoError(t, err)
	defer ph.Close()
	ch, err := b.NewHandle()
	require.NoError(t, err)
	defer ch.Close()
	p, err := ph.Producer(1, WithCapacity(16))
	require.NoError(t, err)
	c, err := ch.Consumer(1)
	require.NoError(t, err)
	ctx := t.Context()
	before, err := b.Stats()
	require.NoError(t, err)

	shapes := []struct{ count, size int }{{1, 1}, {64, 64}, {3, 13}, {100, 8}, {7, 1000}, {2, 20000}, {1000, 3}}
	done := make(chan error, 1)
	go func() {
		for i, s := range shapes {
			r, err := c.Receive(ctx)
			if err != nil {
				done <- err
				return
			}
			pk, err := PackOf(r)
			if err != nil {
				done <- err
				return
			}
			if pk.Len() != s.count || pk.Size() != s.size {
				done <- fmt.Errorf("pack %d: %d payloads of %d bytes, sent %d of %d", i, pk.Len(), pk.Size(), s.count, s.size)
				return
			}
			if err := checkPack(pk, byte(i)); err != nil {
				done <- err
				return
			}
			if err := ch.Free(pk.Record()); err != nil {
				done <- err
				return
			}
		}
		done <- nil
	}()
	for i, s := range shapes {
		pk, err := ph.AllocatePack(s.count, s.size)
		require.NoError(t, err)
		require.Equal(t, s.count, pk.Len())
		require.Equal(t, s.size, pk.Size())
		require.False(t, pk.IsZero())
		fillPack(pk, byte(i))
		require.NoError(t, p.Send(ctx, pk.Record()))
	}
	require.NoError(t, <-done)
	require.NoError(t, p.Close())
	require.NoError(t, c.Close())
	require.NoError(t, b.Check())
	after, err := b.Stats()
	require.NoError(t, err)
	require.Zero(t, after.Records.LiveRecords+after.Records.LargeRecords, "every pack was freed")
	require.LessOrEqual(t, before.Heap.FreeBytes-after.Heap.FreeBytes, uint64(3*64<<10), "at most the handles' slabs stay taken")
}

// TestPackForward: a received pack is sent on down other channels (a
// record channel, an MPSC channel) as it is, zero-copy, and freed by the
// last stage.
func TestPackForward(t *testing.T) {
	b := heapBuf(t)
	h, err := b.NewHandle()
	require.NoError(t, err)
	defer h.Close()
	ctx := t.Context()
	p1, err := h.Producer(1)
	require.NoError(t, err)
	c1, err := h.Consumer(1)
	require.NoError(t, err)
	p2, err := h.Producer(2)
	require.NoError(t, err)
	c2, err := h.Consumer(2)
	require.NoError(t, err)
	p3, err := h.MPSCProducer(3)
	require.NoError(t, err)
	c3, err := h.MPSCConsumer(3)
	require.NoError(t, err)
	pk, err := h.AllocatePack(32, 24)
	require.NoError(t, err)
	fillPack(pk, 9)
	require.NoError(t, p1.Send(ctx, pk.Record()))
	r, err := c1.Receive(ctx)
	require.NoError(t, err)
	require.NoError(t, p2.Send(ctx, r))
	r, err = c2.Receive(ctx)
	require.NoError(t, err)
	require.NoError(t, p3.Send(ctx, r), "an MPSC channel carries packs too")
	r, err = c3.Receive(ctx)
	require.NoError(t, err)
	got, err := PackOf(r)
	require.NoError(t, err)
	require.Equal(t, &pk.At(0)[0], &got.At(0)[0], "the same bytes, not a copy")
	require.NoError(t, checkPack(got, 9))
	require.NoError(t, h.Free(got.Record()))
	require.ErrorIs(t, h.Free(pk.Record()), ErrDoubleFree, "the pack is one record: freed once")
	for _, e := range []interface{ Close() error }{p1, c1, p2, c2, p3, c3} {
		require.NoError(t, e.Close())
	}
}

// TestPackBadInput: shapes a pack cannot have, records that are not
// packs and pack headers overwritten with nonsense are errors, never a
// panic or a view outside the record; the record stays the caller's.
func TestPackBadInput(t *testing.T) {
	b := heapBuf(t)
	h, err := b.NewHandle()
	require.NoError(t, err)
	defer h.Close()
	for _, s := range []struct{ count, size int }{{0, 8}, {-1, 8}, {8, 0}, {8, -3}, {math.MaxInt, 1}, {1, math.MaxInt}, {math.MaxInt / 2, 1 << 20}} {
		_, err := h.AllocatePack(s.count, s.size)
		require.ErrorIs(t, err, ErrInvalidSize, "%d payloads of %d bytes", s.count, s.size)
	}
	_, err = h.AllocatePack(1<<20, 1<<10)
	require.ErrorIs(t, err, ErrNoSpace, "1 GiB in a 32 MiB buffer")

	_, err = PackOf(Record{})
	require.ErrorIs(t, err, ErrNotAllocated)
	for _, n := range []int{0, 5, 16, 64} {
		r, err := h.Allocate(n)
		require.NoError(t, err)
		clear(r.Bytes())
		_, err = PackOf(r)
		require.ErrorIs(t, err, ErrWrongType, "a plain record of %d bytes", n)
		require.NoError(t, h.Free(r))
	}

	// A pack whose header was overwritten: each field out of line.
	hdr := func(r Record) []byte { return r.Bytes()[r.Len()-packHeaderSize:] }
	for _, c := range []struct {
		name  string
		field int // byte offset in the header
		value uint32
	}{
		{"count too large", 4, 1 << 20},
		{"count zero", 4, 0},
		{"count one less", 4, 9},
		{"size zero", 8, 0},
		{"size beyond the stride", 8, 33},
		{"stride below the size", 12, 31},
		{"stride beyond the rounding", 12, 40},
		{"stride huge", 12, 1<<32 - 1},
	} {
		pk, err := h.AllocatePack(10, 32)
		require.NoError(t, err)
		binary.LittleEndian.PutUint32(hdr(pk.Record())[c.field:], c.value)
		_, err = PackOf(pk.Record())
		require.ErrorIs(t, err, ErrCorrupt, c.name)
		require.NoError(t, h.Free(pk.Record()), "%s: still a record to free", c.name)
	}

	pk, err := h.AllocatePack(4, 8)
	require.NoError(t, err)
	require.Panics(t, func() { pk.At(4) })
	require.Panics(t, func() { pk.At(-1) })
	require.True(t, Pack{}.IsZero())
	require.Zero(t, Pack{}.Len())
	for range (Pack{}).All() {
		t.Fatal("the zero Pack has no payloads")
	}
	require.NoError(t, h.Free(pk.Record()))
	require.NoError(t, b.Check())
}

type point struct {
	X, Y int32
	Tag  [3]byte
}

// TestPackTyped: a slice of Go values in shared memory, sent as a pack
// and read back as the same slice type; another type is refused.
func TestPackTyped(t *testing.T) {
	b := heapBuf(t)
	h, err := b.NewHandle()
	require.NoError(t, err)
	defer h.Close()
	tp, err := NewTyped[point](h)
	require.NoError(t, err)
	pts, pk, err := tp.AllocateSlice(100)
	require.NoError(t, err)
	require.Len(t, pts, 100)
	require.Equal(t, 100, cap(pts), "appending cannot run into the header")
	for i := range pts {
		pts[i] = point{X: int32(i), Y: -int32(i), Tag: [3]byte{byte(i), 1, 2}}
	}
	ctx := context.Background()
	p, err := h.Producer(1)
	require.NoError(t, err)
	c, err := h.Consumer(1)
	require.NoError(t, err)
	require.NoError(t, p.Send(ctx, pk.Record()))
	r, err := c.Receive(ctx)
	require.NoError(t, err)
	got, err := PackOf(r)
	require.NoError(t, err)
	s, err := SliceOf[point](got)
	require.NoError(t, err)
	require.Equal(t, pts, s)
	require.Equal(t, &pts[0], &s[0])
	_, err = SliceOf[int64](got)
	require.ErrorIs(t, err, ErrSizeMismatch)
	_, err = SliceOf[[]byte](got)
	require.ErrorIs(t, err, ErrInvalidArgument)
	bytesPack, err := h.AllocatePack(4, 12) // 12-byte payloads 16 apart
	require.NoError(t, err)
	_, err = SliceOf[point](bytesPack)
	require.ErrorIs(t, err, ErrSizeMismatch, "payloads of a point's size, but not packed as points are")
	require.NoError(t, h.Free(bytesPack.Record()))
	_, err = SliceOf[point](Pack{})
	require.ErrorIs(t, err, ErrSizeMismatch)
	_, _, err = tp.AllocateSlice(0)
	require.ErrorIs(t, err, ErrInvalidSize)
	empty, err := NewTyped[struct{}](h)
	require.NoError(t, err)
	_, _, err = empty.AllocateSlice(3)
	require.ErrorIs(t, err, ErrInvalidSize)
	require.NoError(t, h.Free(r))
	require.NoError(t, p.Close())
	require.NoError(t, c.Close())
}
