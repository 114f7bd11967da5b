package ipc

import (
	"context"
	"errors"
	"io"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/heapipc/ipc/internal/testutil"
	"github.com/stretchr/testify/require"
)

func TestMain(m *testing.M) { testutil.Main(m) }

// heapBuf is a buffer on the in-process backend, where the race detector
// sees every shared access.
func heapBuf(t *testing.T, opts ...Option) *Buffer {
	t.Helper()
	b, err := Open(testutil.Name(t), append([]Option{WithBackends("heap", "heap"), WithSize(32 << 20), WithCheckInterval(10 * time.Millisecond)}, opts...)...)
	require.NoError(t, err)
	t.Cleanup(func() {
		if err := b.Check(); err != nil && !errors.Is(err, ErrClosed) {
			t.Errorf("Check: %v", err)
		}
		if err := b.Destroy(); err != nil && !errors.Is(err, ErrClosed) {
			t.Errorf("Destroy: %v", err)
		}
	})
	return b
}

func TestOpenOptions(t *testing.T) {
	bad := []struct {
		opts []Option
		want error
	}{
		{[]Option{WithSize(0)}, ErrInvalidSize},
		{[]Option{WithSize(-5)}, ErrInvalidSize},
		{[]Option{WithBackends("shm", "")}, ErrInvalidArgument},
		{[]Option{WithMode(0)}, ErrInvalidArgument},
		{[]Option{WithMode(0o4755)}, ErrInvalidArgument},
		{[]Option{WithCheckInterval(0)}, ErrInvalidArgument},
		{[]Option{WithPageSize(1000)}, ErrInvalidSize},
		{[]Option{WithChannelBuckets(3)}, ErrInvalidArgument},
		{[]Option{WithSlabSize(1000)}, ErrInvalidArgument},
	}
	for _, c := range bad {
		_, err := Open(testutil.Name(t), append([]Option{WithBackends("heap", "heap")}, c.opts...)...)
		require.ErrorIs(t, err, c.want)
	}
	for _, name := range []string{"", "a/b", "..", ".x"} {
		_, err := Open(name)
		require.ErrorIs(t, err, ErrInvalidName)
	}
	_, err := Open(testutil.Name(t), AttachOnly())
	require.ErrorIs(t, err, ErrNotExist)

	b := heapBuf(t)
	_, err = Open(b.Name(), WithBackends("heap", "heap"), CreateOnly())
	require.ErrorIs(t, err, ErrExist)
	_, err = Open(b.Name(), WithBackends("heap", "heap"), WithSize(64<<20))
	require.ErrorIs(t, err, ErrSizeMismatch)
	a, err := Open(b.Name(), WithBackends("heap", "heap"), AttachOnly())
	require.NoError(t, err)
	require.False(t, a.Created())
	seg, sem := a.Backends()
	require.Equal(t, "heap", seg)
	require.Equal(t, "heap", sem)
	require.NoError(t, a.Close())
	require.NoError(t, a.Close(), "Close twice")
	_, err = a.NewHandle()
	require.ErrorIs(t, err, ErrClosed)
}

func TestRemoveByName(t *testing.T) {
	b, err := Open(testutil.Name(t), WithSize(1<<20))
	require.NoError(t, err)
	name := b.Name()
	require.NoError(t, b.Close())
	require.NoError(t, Remove(name, "", ""))
	require.ErrorIs(t, Remove(name, "", ""), ErrNotExist)
	_, err = Open(name, AttachOnly())
	require.ErrorIs(t, err, ErrNotExist)
	require.ErrorIs(t, Remove("../x", "", ""), ErrInvalidName)
}

func TestStatic(t *testing.T) {
	b := heapBuf(t)
	ctx := context.Background()
	var inits atomic.Int32
	type counters struct {
		Hits atomic.Uint64
		Cfg  [4]uint32
	}
	init := func(p []byte) error {
		inits.Add(1)
		c, err := StaticAtBytes[counters](p)
		if err != nil {
			return err
		}
		c.Cfg = [4]uint32{1, 2, 3, 4}
		return nil
	}
	var wg sync.WaitGroup
	for i := 0; i < 8; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s, err := b.Static(ctx, "counters", 64, init)
			if err != nil {
				t.Error(err)
				return
			}
			c, err := StaticAt[counters](s, 0)
			if err != nil {
				t.Error(err)
				return
			}
			if c.Cfg != [4]uint32{1, 2, 3, 4} {
				t.Errorf("attached before init finished: %v", c.Cfg)
			}
			for k := 0; k < 1000; k++ {
				c.Hits.Add(1)
			}
		}()
	}
	wg.Wait()
	require.Equal(t, int32(1), inits.Load(), "init runs exactly once")
	s, err := b.AttachStatic("counters")
	require.NoError(t, err)
	c, err := StaticAt[counters](s, 0)
	require.NoError(t, err)
	require.Equal(t, uint64(8000), c.Hits.Load())

	_, err = b.Static(ctx, "counters", 65, nil)
	require.ErrorIs(t, err, ErrSizeMismatch)
	_, err = b.Static(ctx, "bad name!", 8, nil)
	require.ErrorIs(t, err, ErrInvalidName)
	_, err = b.Static(ctx, "zero", 0, nil)
	require.ErrorIs(t, err, ErrInvalidSize)
	_, err = StaticAt[struct{ S string }](s, 0)
	require.ErrorIs(t, err, ErrInvalidArgument)
	_, err = StaticAt[uint64](s, 60)
	require.ErrorIs(t, err, ErrCorrupt, "past the end")
	h, err := b.NewHandle()
	require.NoError(t, err)
	defer h.Close()
	_, err = h.Consumer(StaticID("counters"))
	require.ErrorIs(t, err, ErrWrongType)
	boom := errors.New("boom")
	_, err = b.Static(ctx, "fails", 8, func([]byte) error { return boom })
	require.ErrorIs(t, err, boom)
	_, err = b.AttachStatic("fails")
	require.ErrorIs(t, err, ErrNotExist, "a failed init leaves nothing")
	require.NoError(t, s.Remove(ctx))
	_, err = b.AttachStatic("counters")
	require.ErrorIs(t, err, ErrNotExist)
}

func TestTyped(t *testing.T) {
	b := heapBuf(t)
	h, err := b.NewHandle()
	require.NoError(t, err)
	defer h.Close()
	type point struct {
		X, Y float64
		Tag  [8]byte
		N    atomic.Int32
	}
	tp, err := NewTyped[point](h)
	require.NoError(t, err)
	v, r, err := tp.Allocate()
	require.NoError(t, err)
	v.X, v.Y = 1.5, -2
	got, err := ValueOf[point](r)
	require.NoError(t, err)
	require.Equal(t, 1.5, got.X)
	// The type's check is kept: a ValueOf per record allocates nothing
	// (it walked the type's fields and named their paths, 8 allocations),
	// and the verdicts stay right when types alternate.
	require.Zero(t, testing.AllocsPerRun(100, func() { ValueOf[point](r) }))
	for range 3 {
		_, err = ValueOf[struct{ P *int }](r)
		require.ErrorIs(t, err, ErrInvalidArgument)
		_, err = ValueOf[point](r)
		require.NoError(t, err)
	}
	require.NoError(t, h.Free(r))

	for _, err := range []error{
		func() error { _, err := NewTyped[struct{ P *int }](h); return err }(),
		func() error { _, err := NewTyped[[]int](h); return err }(),
		func() error { _, err := NewTyped[string](h); return err }(),
		func() error { _, err := NewTyped[map[int]int](h); return err }(),
		func() error { _, err := NewTyped[any](h); return err }(),
		func() error { _, err := NewTyped[chan int](h); return err }(),
		func() error { _, err := NewTyped[struct{ A [2]struct{ F func() } }](h); return err }(),
	} {
		require.ErrorIs(t, err, ErrInvalidArgument)
	}
	r2, err := h.Allocate(3)
	require.NoError(t, err)
	_, err = ValueOf[point](r2)
	require.ErrorIs(t, err, ErrSizeMismatch)
	require.NoError(t, h.Free(r2))
}

func TestDebugCatchesConcurrentHandleUse(t *testing.T) {
	b := heapBuf(t, WithDebug())
	h, err := b.NewHandle()
	require.NoError(t, err)
	defer h.Close()
	h.enter() // another goroutine is inside a call
	require.PanicsWithValue(t, "ipc: a Handle was used by two goroutines at once; use one Handle per goroutine", func() { h.Allocate(8) })
	h.leave()
	h.busy.Store(0)
	r, err := h.Allocate(8)
	require.NoError(t, err)
	require.NoError(t, h.Free(r))
}

// TestRecordStressRace runs records through SPSC channels between many
// goroutine pairs on the in-process backend, with forwarding, under the
// race detector in `make race`.
func TestRecordStressRace(t *testing.T) {
	b := heapBuf(t)
	const pairs, n = 4, 3000
	ctx := testutil.Context(t, time.Minute)
	var wg sync.WaitGroup
	for i := 0; i < pairs; i++ {
		in, out := ChannelID(10+i), ChannelID(100+i)
		wg.Add(3)
		go func() { // source
			defer wg.Done()
			h, _ := b.NewHandle()
			defer h.Close()
			p, err := h.Producer(in, WithCapacity(16))
			if err != nil {
				t.Error(err)
				return
			}
			defer p.Close()
			for k := 0; k < n; k++ {
				r, err := h.Allocate(1 + k%200)
				if err != nil {
					t.Error(err)
					return
				}
				r.Bytes()[0] = byte(k)
				if err := p.Send(ctx, r); err != nil {
					t.Error(err)
					return
				}
			}
		}()
		go func() { // forwarder: zero-copy
			defer wg.Done()
			h, _ := b.NewHandle()
			defer h.Close()
			c, err := h.Consumer(in, WithCapacity(16))
			if err != nil {
				t.Error(err)
				return
			}
			defer c.Close()
			p, err := h.Producer(out, WithCapacity(16))
			if err != nil {
				t.Error(err)
				return
			}
			defer p.Close()
			rs := make([]Record, 5)
			for {
				k, err := c.ReceiveBatch(ctx, rs)
				if err == io.EOF {
					return
				}
				if err != nil {
					t.Error(err)
					return
				}
				if _, err := p.SendBatch(ctx, rs[:k]); err != nil {
					t.Error(err)
					return
				}
			}
		}()
		go func() { // sink
			defer wg.Done()
			h, _ := b.NewHandle()
			defer h.Close()
			c, err := h.Consumer(out, WithCapacity(16))
			if err != nil {
				t.Error(err)
				return
			}
			defer c.Close()
			for k := 0; ; k++ {
				r, err := c.Receive(ctx)
				if err == io.EOF {
					if k != n {
						t.Errorf("EOF after %d records", k)
					}
					return
				}
				if err != nil {
					t.Error(err)
					return
				}
				if r.Len() != 1+k%200 || r.Bytes()[0] != byte(k) {
					t.Errorf("record %d: len %d first %d", k, r.Len(), r.Bytes()[0])
				}
				if err := h.Free(r); err != nil {
					t.Error(err)
				}
			}
		}()
	}
	wg.Wait()
	st, err := b.Stats()
	require.NoError(t, err)
	require.Zero(t, st.Channels, "every channel was closed and drained, so removed")
	require.Zero(t, st.Records.LiveRecords)
	require.NoError(t, b.Check())
}

func TestMPSCStressRace(t *testing.T) {
	b := heapBuf(t)
	const producers, n = 6, 2000
	ctx := testutil.Context(t, time.Minute)
	h, err := b.NewHandle()
	require.NoError(t, err)
	defer h.Close()
	c, err := h.MPSCConsumer(1, WithCapacity(8))
	require.NoError(t, err)
	var wg sync.WaitGroup
	for i := 0; i < producers; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ph, _ := b.NewHandle()
			defer ph.Close()
			p, err := ph.MPSCProducer(1)
			if err != nil {
				t.Error(err)
				return
			}
			defer p.Close()
			for k := 0; k < n; k++ {
				r, err := ph.Allocate(2)
				if err != nil {
					t.Error(err)
					return
				}
				r.Bytes()[0], r.Bytes()[1] = byte(i), byte(k)
				if err := p.Send(ctx, r); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	next := make([]int, producers)
	for got := 0; got < producers*n; got++ {
		r, err := c.Receive(ctx)
		require.NoError(t, err)
		i := int(r.Bytes()[0])
		require.Equal(t, byte(next[i]), r.Bytes()[1], "producer %d in order", i)
		next[i]++
		require.NoError(t, h.Free(r))
	}
	wg.Wait()
	_, err = c.Receive(ctx)
	require.ErrorIs(t, err, io.EOF)
	require.NoError(t, c.Close())
}

// TestWouldBlockUnwrapped: the Try forms report "not now" with the
// ErrWouldBlock sentinel itself, not wrapped, and an empty poll allocates
// nothing (a wrapped error cost an allocation and ~0.3 µs a poll: a
// Select's first pass over 64 empty ends spent ~19 µs formatting them).
func TestWouldBlockUnwrapped(t *testing.T) {
	b := heapBuf(t)
	h, err := b.NewHandle()
	require.NoError(t, err)
	defer h.Close()
	p, err := h.Producer(1, WithCapacity(2))
	require.NoError(t, err)
	c, err := h.Consumer(1)
	require.NoError(t, err)
	_, err = c.TryReceive()
	require.True(t, err == ErrWouldBlock, "record TryReceive, empty: %v", err)
	require.Zero(t, testing.AllocsPerRun(100, func() { _, _ = c.TryReceive() }), "an empty TryReceive allocates")
	for range 2 {
		r, err := h.Allocate(8)
		require.NoError(t, err)
		require.NoError(t, p.TrySend(r))
	}
	r, err := h.Allocate(8)
	require.NoError(t, err)
	err = p.TrySend(r)
	require.True(t, err == ErrWouldBlock, "record TrySend, full: %v", err)
	require.NoError(t, h.Free(r))

	mp, err := h.MPSCProducer(2, WithCapacity(2))
	require.NoError(t, err)
	mc, err := h.MPSCConsumer(2)
	require.NoError(t, err)
	_, err = mc.TryReceive()
	require.True(t, err == ErrWouldBlock, "MPSC TryReceive, empty: %v", err)
	require.Zero(t, testing.AllocsPerRun(100, func() { _, _ = mc.TryReceive() }), "an empty MPSC TryReceive allocates")
	for i := 0; ; i++ {
		r, err := h.Allocate(8)
		require.NoError(t, err)
		if err = mp.TrySend(r); err != nil {
			require.True(t, err == ErrWouldBlock, "MPSC TrySend, full: %v", err)
			require.NoError(t, h.Free(r))
			break
		}
		require.Less(t, i, 64, "an MPSC channel of capacity 2 took %d records", i+1)
	}
}
