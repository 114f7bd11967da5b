package ipc

import (
	"context"
	"encoding/binary"
	"io"
	"math"
	"testing"
	"time"
	"unsafe"

	"github.com/heapipc/ipc/internal/mem"
	"github.com/heapipc/ipc/internal/sys"
	"github.com/stretchr/testify/require"
)

func stampEach(b []byte, i int) {
	binary.LittleEndian.PutUint64(b, uint64(i))
	for j := 8; j < len(b); j++ {
		b[j] = byte(i) ^ byte(j)
	}
}

func checkEach(t *testing.T, b []byte, want int) {
	t.Helper()
	require.GreaterOrEqual(t, len(b), 8)
	require.Equal(t, uint64(want), binary.LittleEndian.Uint64(b), "record order")
	for j := 8; j < len(b); j++ {
		if b[j] != byte(want)^byte(j) {
			t.Fatalf("record %d: byte %d is %#x", want, j, b[j])
		}
	}
}

// liveRecords is how many records of the buffer are allocated (in slabs
// and large).
func liveRecords(t *testing.T, b *Buffer) int64 {
	t.Helper()
	s, err := b.Stats()
	require.NoError(t, err)
	return int64(s.Records.LiveRecords + s.Records.LargeRecords)
}

// TestEachOrder: SendEach and ReceiveEach carry records through in order,
// mixed with the other forms on both sides (Receive's records taken ahead
// are not skipped), calls of every size (large records, which get their
// own extents, too), then io.EOF; every record is freed.
func TestEachOrder(t *testing.T) {
	b := heapBuf(t)
	hp, err := b.NewHandle()
	require.NoError(t, err)
	hc, err := b.NewHandle()
	require.NoError(t, err)
	p, err := hp.Producer(1, WithCapacity(256))
	require.NoError(t, err)
	c, err := hc.Consumer(1)
	require.NoError(t, err)
	ctx := t.Context()

	const calls = 300
	total := 0
	sizes := []int{}
	go func() {
		seq := 0
		for k := range calls {
			n, size := 1+k*13%150, 8+k*37%293
			if k%50 == 7 {
				n, size = 5, 20000 // large records
			}
			if k%3 == 1 { // one at a time, between the calls
				r, err := hp.Allocate(size)
				if err != nil {
					t.Error(err)
					return
				}
				stampEach(r.Bytes(), seq)
				if err := p.Send(ctx, r); err != nil {
					t.Error(err)
					return
				}
				seq++
			}
			first := seq
			sent, err := p.SendEach(ctx, n, size, func(i int, b []byte) {
				if len(b) != size || cap(b) != size {
					t.Errorf("fill got %d bytes (cap %d), want %d", len(b), cap(b), size)
				}
				stampEach(b, first+i)
			})
			if err != nil || sent != n {
				t.Errorf("SendEach sent %d of %d: %v", sent, n, err)
				return
			}
			seq += n
		}
		if err := p.Close(); err != nil {
			t.Error(err)
		}
	}()
	want := 0
	for k := 0; ; k++ {
		if k%4 == 1 {
			r, err := c.Receive(ctx)
			if err == io.EOF {
				break
			}
			require.NoError(t, err)
			checkEach(t, r.Bytes(), want)
			want++
			require.NoError(t, hc.Free(r))
			continue
		}
		n, err := c.ReceiveEach(ctx, 1+k%100, func(b []byte) {
			checkEach(t, b, want)
			sizes = append(sizes, len(b))
			want++
		})
		if err == io.EOF {
			require.Zero(t, n)
			break
		}
		require.NoError(t, err)
		require.Positive(t, n)
		total += n
	}
	require.Positive(t, total)
	require.Contains(t, sizes, 20000, "large records went through ReceiveEach")
	n, err := c.ReceiveEach(ctx, 10, func([]byte) { t.Error("use called after EOF") })
	require.ErrorIs(t, err, io.EOF)
	require.Zero(t, n)
	require.NoError(t, c.Close())
	require.NoError(t, b.Check())
	require.Zero(t, liveRecords(t, b), "every record was freed")
	require.NoError(t, hp.Close())
	require.NoError(t, hc.Close())
}

// TestEachBadUse: bad arguments, closed ends, and a callback that calls
// its own form again get their errors and change nothing; a callback may
// use the handle otherwise.
func TestEachBadUse(t *testing.T) {
	b := heapBuf(t)
	h, p, c := loopback(t, b, 1)
	ctx := t.Context()
	nop := func(int, []byte) {}

	_, err := p.SendEach(ctx, -1, 8, nop)
	require.ErrorIs(t, err, ErrInvalidSize)
	_, err = p.SendEach(ctx, 1, -8, nop)
	require.ErrorIs(t, err, ErrInvalidSize)
	_, err = p.SendEach(ctx, 1, 8, nil)
	require.ErrorIs(t, err, ErrInvalidArgument)
	fillNot := func(int, []byte) { t.Error("fill called for a record that cannot be") }
	_, err = p.SendEach(ctx, 2, math.MaxInt, fillNot)
	require.ErrorIs(t, err, ErrInvalidSize)
	_, err = p.SendEach(ctx, 2, 1<<30, fillNot) // the buffer is 32 MiB
	require.ErrorIs(t, err, ErrNoSpace)
	_, err = c.ReceiveEach(ctx, 1, nil)
	require.ErrorIs(t, err, ErrInvalidArgument)
	n, err := c.ReceiveEach(ctx, 0, func([]byte) {})
	require.NoError(t, err)
	require.Zero(t, n)
	n, err = p.SendEach(ctx, 0, 8, nop)
	require.NoError(t, err)
	require.Zero(t, n)
	require.Zero(t, liveRecords(t, b))

	// Called again from its own callback: ErrBusy, and the outer call
	// goes on; the handle itself may be used.
	var inner error
	useHandle := func() {
		r, err := h.Allocate(100)
		require.NoError(t, err)
		require.NoError(t, h.Free(r))
	}
	n, err = p.SendEach(ctx, 3, 16, func(i int, b []byte) {
		stampEach(b, i)
		if i == 1 {
			_, inner = p.SendEach(ctx, 1, 8, nop)
			useHandle()
		}
	})
	require.NoError(t, err)
	require.Equal(t, 3, n)
	require.ErrorIs(t, inner, ErrBusy)
	got := 0
	n, err = c.ReceiveEach(ctx, 10, func(b []byte) {
		checkEach(t, b, got)
		got++
		_, inner = c.ReceiveEach(ctx, 1, func([]byte) { t.Error("nested use called") })
		useHandle()
	})
	require.NoError(t, err)
	require.Equal(t, 3, n)
	require.ErrorIs(t, inner, ErrBusy)
	require.Zero(t, liveRecords(t, b))

	// Nothing queued: the context ends the wait.
	short, cancel := context.WithTimeout(ctx, 20*time.Millisecond)
	n, err = c.ReceiveEach(short, 10, func([]byte) { t.Error("use called") })
	cancel()
	require.ErrorIs(t, err, context.DeadlineExceeded)
	require.Zero(t, n)

	require.NoError(t, p.Close())
	require.NoError(t, c.Close())
	_, err = p.SendEach(ctx, 1, 8, nop)
	require.ErrorIs(t, err, ErrClosed)
	_, err = c.ReceiveEach(ctx, 1, func([]byte) {})
	require.ErrorIs(t, err, ErrClosed)
	require.NoError(t, h.Close())
	_, err = p.SendEach(ctx, 1, 8, nop)
	require.ErrorIs(t, err, ErrClosed)
	require.NoError(t, b.Check())
	require.Zero(t, liveRecords(t, b))
}

// TestEachPanics: a fill or use that panics loses nothing: the records of
// the chunk or batch are freed, the panic reaches the caller, and the
// channel goes on with the next records.
func TestEachPanics(t *testing.T) {
	b := heapBuf(t)
	h, p, c := loopback(t, b, 1)
	ctx := t.Context()

	// 100 records: the first chunk (64) is queued, the panic comes in
	// the second, whose records are freed unsent.
	require.PanicsWithValue(t, "fill", func() {
		_, _ = p.SendEach(ctx, 100, 40, func(i int, b []byte) {
			if i == 70 {
				panic("fill")
			}
			stampEach(b, i)
		})
	})
	require.EqualValues(t, 64, liveRecords(t, b), "the records of the chunk fill panicked in were freed")
	n, err := p.SendEach(ctx, 10, 40, func(i int, b []byte) { stampEach(b, 64+i) })
	require.NoError(t, err)
	require.Equal(t, 10, n)

	want := 0
	var last mem.Off // the record use panicked on
	require.PanicsWithValue(t, "use", func() {
		_, _ = c.ReceiveEach(ctx, 20, func(r []byte) {
			checkEach(t, r, want)
			if want++; want == 5 {
				last = mem.Off(uintptr(unsafe.Pointer(unsafe.SliceData(r))) - b.recs.base)
				panic("use")
			}
		})
	})
	require.EqualValues(t, 54, liveRecords(t, b), "the batch use panicked in was freed, all of it")
	tr := &b.recs.trailers[(uint64(last)+uint64(allocSize(40)))/trailerSize-1]
	require.Equal(t, b.recs.freedMark(last), tr.Magic, "the record use panicked on has its freed mark")
	// The rest of that batch went with the panic.
	drainEach(t, b, c, 20, 74)
	require.NoError(t, h.Close())
}

// drainEach receives records from to end with ReceiveEach, in order, and
// then requires that every record was freed and the buffer checks out.
func drainEach(t *testing.T, b *Buffer, c *Consumer, from, end int) {
	t.Helper()
	for from < end {
		_, err := c.ReceiveEach(t.Context(), 64, func(b []byte) { checkEach(t, b, from); from++ })
		require.NoError(t, err)
	}
	require.Zero(t, liveRecords(t, b))
	require.NoError(t, b.Check())
}

// TestEachFullBuffer: SendEach into a buffer that fills up returns
// ErrNoSpace with what it sent, frees what it could not, and the records
// sent are all delivered.
func TestEachFullBuffer(t *testing.T) {
	b := heapBuf(t, WithSize(2<<20))
	h, p, c := loopback(t, b, 1, WithCapacity(1<<14))
	ctx := t.Context()
	n, err := p.SendEach(ctx, 1<<14, 1000, func(i int, b []byte) { stampEach(b, i) })
	require.ErrorIs(t, err, ErrNoSpace)
	require.Positive(t, n)
	require.Less(t, n, 1<<14)
	require.EqualValues(t, n, liveRecords(t, b), "only the records sent are allocated")
	drainEach(t, b, c, 0, n)
	require.NoError(t, h.Close())
}

// TestEachWaitsForRoom: SendEach on a full ring waits for room and ends
// with the context's error, having sent what fit; the records it could
// not send are freed.
func TestEachWaitsForRoom(t *testing.T) {
	b := heapBuf(t)
	h, p, c := loopback(t, b, 1, WithCapacity(64))
	short, cancel := context.WithTimeout(t.Context(), 50*time.Millisecond)
	defer cancel()
	n, err := p.SendEach(short, 100, 24, func(i int, b []byte) { stampEach(b, i) })
	require.ErrorIs(t, err, context.DeadlineExceeded)
	require.Equal(t, 64, n)
	require.EqualValues(t, 64, liveRecords(t, b))
	got := 0
	k, err := c.ReceiveEach(t.Context(), 100, func(b []byte) { checkEach(t, b, got); got++ })
	require.NoError(t, err)
	require.Equal(t, 64, k)
	require.Zero(t, liveRecords(t, b))
	require.NoError(t, h.Close())
}

// TestEachDamagedRecord: ReceiveEach reports a queued record whose
// trailer was damaged as corrupt, takes it off the channel and hands the
// records behind it to use; the damaged record's memory still comes back.
func TestEachDamagedRecord(t *testing.T) {
	b := heapBuf(t)
	h, p, co := loopback(t, b, 1)
	ctx := t.Context()
	sent := sendRecords(t, h, p, 3, stampEach)
	mem.MustAt[trailer](b.recs.b, sent[0].off()+mem.Off(allocSize(64)-trailerSize)).Magic = 0xbad
	want := 1
	n, err := co.ReceiveEach(ctx, 10, func(b []byte) { checkEach(t, b, want); want++ })
	require.ErrorIs(t, err, ErrCorrupt)
	require.Equal(t, 2, n, "the records behind it")
	require.Equal(t, 3, want)
	require.NoError(t, h.Free(sent[0]), "its memory comes back: Free locates it in its slab")
	require.Zero(t, liveRecords(t, b))

	// In the middle of a batch: the record before it is delivered by the
	// fused pass, it and the one after it are taken one by one, and the
	// head moves past the batch once.
	sent = sent[:0]
	for i := range 3 {
		r, err := h.Allocate(64)
		require.NoError(t, err)
		stampEach(r.Bytes(), 10+i)
		require.NoError(t, p.Send(ctx, r))
		sent = append(sent, r)
	}
	r, err := h.Allocate(64) // queued after the batch ReceiveEach takes
	require.NoError(t, err)
	stampEach(r.Bytes(), 13)
	mem.MustAt[trailer](b.recs.b, sent[1].off()+mem.Off(allocSize(64)-trailerSize)).Magic = 0xbad
	var got []int
	n, err = co.ReceiveEach(ctx, 3, func(b []byte) { got = append(got, int(binary.LittleEndian.Uint32(b))) })
	require.ErrorIs(t, err, ErrCorrupt)
	require.Equal(t, 2, n)
	require.Equal(t, []int{10, 12}, got)
	require.NoError(t, p.Send(ctx, r))
	require.Equal(t, 1, co.c.Len(), "the head moved past the three records, once")
	want = 13
	n, err = co.ReceiveEach(ctx, 10, func(b []byte) { checkEach(t, b, want); want++ })
	require.NoError(t, err)
	require.Equal(t, 1, n)
	require.NoError(t, h.Free(sent[1]))
	require.Zero(t, liveRecords(t, b))
}

// TestEachTakesForeignRecords: records another process allocated and
// sent become this process's before ReceiveEach moves the head past them
// (its kill-anywhere tests rely on it), and are freed after use.
func TestEachTakesForeignRecords(t *testing.T) {
	b := heapBuf(t)
	ph, other := otherProcess(t, b)
	p, err := ph.Producer(1)
	require.NoError(t, err)
	defer p.Close()
	n, err := p.SendEach(t.Context(), 100, 48, func(i int, b []byte) { stampEach(b, i) })
	require.NoError(t, err)
	require.Equal(t, 100, n)
	co, err := testHandle(t, b).Consumer(1)
	require.NoError(t, err)
	defer co.Close()
	got := 0
	var queued []int // what the ring held as use saw each record
	for got < 100 {
		_, err := co.ReceiveEach(t.Context(), 64, func(bs []byte) {
			queued = append(queued, co.c.Len())
			checkEach(t, bs, got)
			got++
			off, ok := mem.OffsetOf(b.recs.b, &bs[0])
			require.True(t, ok)
			require.Equal(t, sys.Self(), holderOf(b, off, 48), "not the sender's (%v) any more", other)
		})
		require.NoError(t, err)
	}
	// The head moved past a batch before use saw its first record.
	require.Equal(t, 36, queued[0])
	require.Equal(t, 0, queued[64])
	require.Zero(t, liveRecords(t, b))
	require.NoError(t, b.Check())
}

// TestEachOf: SendEachOf and ReceiveEachOf carry values of a plain type
// in order through records of exactly its size, in place; a record of
// another size among them is freed unread and reported (ErrSizeMismatch)
// while the values around it are delivered; a type with pointers, and a
// nil fill or use, are refused before anything is sent or taken; a
// zero-size type works. Every record is freed.
func TestEachOf(t *testing.T) {
	type point struct {
		X, Y float64
		Seq  uint32
		Tag  [5]byte
	}
	b := heapBuf(t)
	hp, err := b.NewHandle()
	require.NoError(t, err)
	hc, err := b.NewHandle()
	require.NoError(t, err)
	p, err := hp.Producer(1, WithCapacity(64))
	require.NoError(t, err)
	c, err := hc.Consumer(1)
	require.NoError(t, err)
	ctx := t.Context()

	const n = 1000
	done := make(chan error, 1)
	go func() {
		k, err := SendEachOf(ctx, p, 500, func(i int, v *point) {
			*v = point{X: float64(i), Y: -float64(i), Seq: uint32(i), Tag: [5]byte{byte(i)}}
		})
		if err == nil && k != 500 {
			err = io.ErrShortWrite
		}
		if err == nil { // an odd record between the values
			var r Record
			if r, err = hp.Allocate(3); err == nil {
				err = p.Send(ctx, r)
			}
		}
		if err == nil {
			k, err = SendEachOf(ctx, p, n-500, func(i int, v *point) {
				i += 500
				v.X, v.Y, v.Seq, v.Tag = float64(i), -float64(i), uint32(i), [5]byte{byte(i)}
			})
			if err == nil && k != n-500 {
				err = io.ErrShortWrite
			}
		}
		done <- err
	}()
	got, mismatches, total := 0, 0, 0
	for got < n {
		k, err := ReceiveEachOf(ctx, c, 64, func(v *point) {
			require.Equal(t, point{X: float64(got), Y: -float64(got), Seq: uint32(got), Tag: [5]byte{byte(got)}}, *v)
			got++
		})
		if err != nil {
			require.ErrorIs(t, err, ErrSizeMismatch)
			require.Contains(t, err.Error(), "1 records did not hold one (the last of 3 bytes)")
			mismatches++
		}
		total += k
	}
	require.NoError(t, <-done)
	require.Equal(t, n, got)
	require.Equal(t, n, total, "ReceiveEachOf counts the values use got, not the odd record")
	require.Equal(t, 1, mismatches)

	// Refused before anything moves.
	_, err = SendEachOf(ctx, p, 1, func(int, *struct{ P *int }) {})
	require.ErrorIs(t, err, ErrInvalidArgument)
	_, err = ReceiveEachOf(ctx, c, 1, func(*[]int) {})
	require.ErrorIs(t, err, ErrInvalidArgument)
	_, err = SendEachOf[point](ctx, p, 1, nil)
	require.ErrorIs(t, err, ErrInvalidArgument)
	_, err = ReceiveEachOf[point](ctx, c, 1, nil)
	require.ErrorIs(t, err, ErrInvalidArgument)

	// A zero-size type: records of no bytes.
	k, err := SendEachOf(ctx, p, 3, func(int, *struct{}) {})
	require.NoError(t, err)
	require.Equal(t, 3, k)
	seen := 0
	k, err = ReceiveEachOf(ctx, c, 8, func(*struct{}) { seen++ })
	require.NoError(t, err)
	require.Equal(t, 3, k)
	require.Equal(t, 3, seen)

	require.NoError(t, p.Close())
	_, err = ReceiveEachOf(ctx, c, 8, func(*point) {})
	require.ErrorIs(t, err, io.EOF)
	require.NoError(t, c.Close())
	require.NoError(t, hp.Close())
	require.NoError(t, hc.Close())
	require.Zero(t, liveRecords(t, b))
	require.NoError(t, b.Check())
}

// TestReceiveBatchDamagedRecord: ReceiveBatch checks the records that
// continue the cursor's run in one loop (checkSpan); a record in the
// middle of such a run whose trailer or header was damaged while it was
// queued is reported (corrupt; not a record) and taken off the channel, and the
// records before and after it are delivered, in order. The records of a
// batch that failed so are taken one by one: each frees, and a record
// with a damaged trailer comes back by Free.
func TestReceiveBatchDamagedRecord(t *testing.T) {
	b := heapBuf(t)
	h, p, co := loopback(t, b, 1)
	ctx := t.Context()
	for _, tc := range []struct {
		name  string
		want  error
		freed bool                  // the damaged record's memory comes back by Free
		spoil func(r Record) func() // returns the mending
	}{
		{"trailer", ErrCorrupt, true, func(r Record) func() {
			// Free locates such a record in its slab: nothing to mend.
			mem.MustAt[trailer](b.recs.b, r.off()+mem.Off(allocSize(64)-trailerSize)).Magic = 0xbad
			return func() {}
		}},
		// Not a record's header there: the record is not taken, and
		// stays queued (a record that fails its check keeps its
		// holder), so Free refuses it even once the header is mended.
		{"header", ErrNotAllocated, false, func(r Record) func() {
			hd := mem.MustAt[trailer](b.recs.b, r.off()-trailerSize)
			m := hd.Magic
			hd.Magic ^= 1 << 20
			return func() { hd.Magic = m }
		}},
	} {
		// A first batch, so that the next one continues the cursor's
		// run from its first record on.
		sendRecords(t, h, p, 4, stampEach)
		rs := make([]Record, 8)
		k, err := co.ReceiveBatch(ctx, rs)
		require.NoError(t, err, tc.name)
		require.Equal(t, 4, k, tc.name)
		require.NoError(t, h.FreeBatch(rs[:k]), tc.name)

		sent := sendRecords(t, h, p, 8, stampEach)
		mend := tc.spoil(sent[5])
		k, err = co.ReceiveBatch(ctx, rs)
		require.ErrorIs(t, err, tc.want, tc.name)
		require.Equal(t, 7, k, tc.name)
		var got []int
		for _, r := range rs[:k] {
			got = append(got, int(binary.LittleEndian.Uint32(r.Bytes())))
		}
		require.Equal(t, []int{0, 1, 2, 3, 4, 6, 7}, got, tc.name)
		require.Zero(t, co.c.Len(), "%s: the head moved past the batch", tc.name)
		require.NoError(t, h.FreeBatch(rs[:k]), tc.name)
		mend()
		if !tc.freed {
			require.ErrorIs(t, h.Free(sent[5]), ErrNotAllocated, tc.name)
			require.Equal(t, int64(1), liveRecords(t, b), tc.name)
			continue
		}
		require.NoError(t, h.Free(sent[5]), "%s: its memory comes back", tc.name)
		require.Zero(t, liveRecords(t, b), tc.name)
	}
	require.NoError(t, b.Check())
}
