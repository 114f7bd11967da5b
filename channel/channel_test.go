package channel

import (
	"context"
	"errors"
	"io"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/heapipc/ipc/alloc"
	"github.com/heapipc/ipc/backend"
	"github.com/heapipc/ipc/internal/errs"
	"github.com/heapipc/ipc/internal/mem"
	"github.com/heapipc/ipc/internal/sys"
	"github.com/heapipc/ipc/internal/testutil"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestMain(m *testing.M) { testutil.Main(m) }

type fixture struct {
	r    *backend.Region
	heap *alloc.Heap
	reg  *Registry
}

func newFixture(t *testing.T, k backend.Kind) *fixture {
	t.Helper()
	f := &fixture{}
	r, err := backend.OpenRegion(testutil.Name(t), backend.RegionConfig{Segments: k, Semaphores: semKindFor(k), Size: 4 << 20}, func(r *backend.Region) error {
		h, err := alloc.Init(r, alloc.Options{})
		if err != nil {
			return err
		}
		reg, err := InitRegistry(r, h, 16)
		if err != nil {
			return err
		}
		f.heap, f.reg = h, reg
		return nil
	})
	require.NoError(t, err)
	f.r = r
	t.Cleanup(func() {
		require.NoError(t, f.heap.Check(), "heap consistent at the end")
		f.reg.Unlink()
		f.reg.Close()
		f.heap.Unlink()
		f.heap.Close()
		r.Unlink()
		r.Close()
	})
	return f
}

func semKindFor(k backend.Kind) backend.Kind {
	if k == backend.Heap {
		return backend.Heap
	}
	return backend.DefaultSemaphoreKind()
}

func recordSpec(n uint64) Spec {
	return Spec{Type: TypeRecord, Size: n, Control: RecordControlSize(n), Init: func(_ mem.Off, b []byte) error { return InitRecord(b, n) }}
}

func TestRegistryCreateLookup(t *testing.T) {
	f := newFixture(t, backend.Heap)
	ctx := context.Background()
	_, err := f.reg.Lookup(7)
	require.ErrorIs(t, err, errs.ErrNotExist)

	en, created, err := f.reg.LookupOrCreate(ctx, 7, recordSpec(8))
	require.NoError(t, err)
	require.True(t, created)
	require.Equal(t, ID(7), en.ID)
	require.Equal(t, TypeRecord, en.Type)

	again, created, err := f.reg.LookupOrCreate(ctx, 7, recordSpec(8))
	require.NoError(t, err)
	require.False(t, created)
	require.Equal(t, en.Off, again.Off)

	_, _, err = f.reg.LookupOrCreate(ctx, 7, Spec{Type: TypeStatic, Size: 10, Control: 10})
	require.ErrorIs(t, err, errs.ErrWrongType)

	_, _, err = f.reg.LookupOrCreate(ctx, 8, Spec{Type: TypeStatic, Name: string(make([]byte, 100))})
	require.ErrorIs(t, err, errs.ErrInvalidName)

	// Many channels: more than one entry block, chains longer than one.
	for id := ID(100); id < 300; id++ {
		_, created, err := f.reg.LookupOrCreate(ctx, id, Spec{Type: TypeStatic, Size: 1})
		require.NoError(t, err)
		require.True(t, created)
	}
	require.Equal(t, uint64(201), f.reg.Live())
	for id := ID(100); id < 300; id++ {
		en, err := f.reg.Lookup(id)
		require.NoError(t, err)
		require.Equal(t, id, en.ID)
	}
	seen := 0
	require.NoError(t, f.reg.Each(func(*Entry) error { seen++; return nil }))
	require.Equal(t, 201, seen)

	// Remove and reuse.
	removed, err := f.reg.Remove(ctx, en, nil, nil)
	require.NoError(t, err)
	require.True(t, removed)
	require.False(t, en.Valid(), "a removed entry is no longer valid")
	_, err = f.reg.Lookup(7)
	require.ErrorIs(t, err, errs.ErrNotExist)
	removed, err = f.reg.Remove(ctx, en, nil, nil)
	require.NoError(t, err)
	require.False(t, removed, "removing twice does nothing")
	en2, created, err := f.reg.LookupOrCreate(ctx, 7, Spec{Type: TypeStatic, Size: 3, Control: 3})
	require.NoError(t, err)
	require.True(t, created)
	require.Equal(t, TypeStatic, en2.Type)
	require.Equal(t, uint64(201), f.reg.Live())

	// Clean up everything so the heap check sees only the registry.
	var all []*Entry
	f.reg.Each(func(e *Entry) error { all = append(all, e); return nil })
	for _, e := range all {
		_, err := f.reg.Remove(ctx, e, nil, nil)
		require.NoError(t, err)
	}
	require.Zero(t, f.reg.Live())
}

func TestRegistryConcurrentCreateOneWinner(t *testing.T) {
	f := newFixture(t, backend.Heap)
	var wg sync.WaitGroup
	var mu sync.Mutex
	creators := 0
	offs := map[mem.Off]bool{}
	for i := 0; i < 8; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			en, created, err := f.reg.LookupOrCreate(context.Background(), 42, recordSpec(16))
			if err != nil {
				t.Error(err)
				return
			}
			mu.Lock()
			defer mu.Unlock()
			if created {
				creators++
			}
			offs[en.Off] = true
		}()
	}
	wg.Wait()
	require.Equal(t, 1, creators)
	require.Len(t, offs, 1, "everyone got the same channel")
}

func TestRegistryInitFailureAndDeadCreator(t *testing.T) {
	f := newFixture(t, backend.Heap)
	ctx := context.Background()
	boom := errors.New("boom")
	_, _, err := f.reg.LookupOrCreate(ctx, 1, Spec{Type: TypeStatic, Size: 1}) // grows the entry pool
	require.NoError(t, err)
	before, _ := f.heap.Stats()
	_, _, err = f.reg.LookupOrCreate(ctx, 5, Spec{Type: TypeStatic, Size: 100, Control: 100, Init: func(mem.Off, []byte) error { return boom }})
	require.ErrorIs(t, err, boom)
	_, err = f.reg.Lookup(5)
	require.ErrorIs(t, err, errs.ErrNotExist)
	after, _ := f.heap.Stats()
	require.Equal(t, before.FreeBytes, after.FreeBytes, "a failed init gives its memory back")

	// A creator that died while initializing: the entry is recovered.
	e, _, err := f.reg.freeEntryLocked(t, 6)
	require.NoError(t, err)
	e.ID.Store(6)
	e.Creator.Store(uint64(testutil.DeadIdentity(t)))
	e.State.Store(entryInitializing)
	ctx2, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	en, created, err := f.reg.LookupOrCreate(ctx2, 6, Spec{Type: TypeStatic, Size: 1})
	require.NoError(t, err)
	require.True(t, created, "the dead creator's half-made channel was made anew")
	require.Equal(t, ID(6), en.ID)

	// A live creator that is not done: callers wait for it (bounded by ctx).
	e2, _, err := f.reg.freeEntryLocked(t, 9)
	require.NoError(t, err)
	e2.ID.Store(9)
	e2.Creator.Store(uint64(sys.Self()))
	e2.State.Store(entryInitializing)
	short, cancel2 := context.WithTimeout(ctx, 30*time.Millisecond)
	defer cancel2()
	_, _, err = f.reg.LookupOrCreate(short, 9, Spec{Type: TypeStatic, Size: 1})
	require.ErrorIs(t, err, context.DeadlineExceeded)
	e2.State.Store(entryFree)
}

// TestFinishRefusesForeignControl: an entry whose dead creator left it
// initializing, with its Control word damaged to name a slab or the
// registry's own directory: finishing it frees neither (ErrCorrupt), and
// the other entries are finished all the same.
func TestFinishRefusesForeignControl(t *testing.T) {
	f := newFixture(t, backend.Heap)
	ctx := t.Context()
	_, _, err := f.reg.LookupOrCreate(ctx, 1, Spec{Type: TypeStatic, Size: 1, Control: 64})
	require.NoError(t, err)
	slab, err := f.heap.AllocFor(ctx, 4096, alloc.KindSlab, sys.Self())
	require.NoError(t, err)
	dir := mem.Off(f.reg.root.Dir)
	halfMade := func(id ID, control mem.Off) *entry {
		e, _, err := f.reg.freeEntryLocked(t, id)
		require.NoError(t, err)
		e.ID.Store(uint64(id))
		e.Control.Store(uint64(control))
		e.Creator.Store(uint64(testutil.DeadIdentity(t)))
		e.State.Store(entryInitializing)
		return e
	}
	before, err := f.heap.Allocated()
	require.NoError(t, err)
	bad1, bad2 := halfMade(6, slab), halfMade(7, dir)
	own, err := f.heap.AllocFor(ctx, 64, alloc.KindControl, 0)
	require.NoError(t, err)
	good := halfMade(8, own)

	u, err := f.reg.FinishRemovals(ctx, nil)
	require.ErrorIs(t, err, errs.ErrCorrupt)
	require.Equal(t, 3, u.Creations)
	after, err := f.heap.Allocated()
	require.NoError(t, err)
	require.Equal(t, before, after, "the slab and the directory are still allocated; the real control block was freed")
	for _, e := range []*entry{bad1, bad2, good} {
		require.EqualValues(t, entryFree, e.State.Load())
	}
	require.NoError(t, f.heap.Free(slab))
	_, err = f.reg.Lookup(1)
	require.NoError(t, err, "the registry still works")
}

// TestControlOrphans: a control block belongs to its creator until the
// channel is published and to its remover while it is freed, so that what
// a process killed in between leaves (a block no entry names) is freed by
// FinishRemovals when that process is dead, and left alone while it
// lives.
func TestControlOrphans(t *testing.T) {
	f := newFixture(t, backend.Heap)
	ctx := t.Context()
	dead := testutil.DeadIdentity(t)
	_, _, err := f.reg.LookupOrCreate(ctx, 1, Spec{Type: TypeStatic, Size: 1}) // grows the entry pool
	require.NoError(t, err)
	before, err := f.heap.Stats()
	require.NoError(t, err)

	// Made: owned by its creator while it is initialised, by nobody once
	// published.
	var during alloc.Extent
	en, _, err := f.reg.LookupOrCreate(ctx, 2, Spec{Type: TypeStatic, Size: 1, Control: 64, Init: func(c mem.Off, _ []byte) error {
		during, err = f.heap.Extent(c)
		return err
	}})
	require.NoError(t, err)
	require.Equal(t, sys.Self(), during.Owner)
	x, err := f.heap.Extent(en.Control)
	require.NoError(t, err)
	require.Zero(t, x.Owner)

	// A creator killed before its entry named its block.
	_, err = f.heap.AllocFor(ctx, 64, alloc.KindControl, dead)
	require.NoError(t, err)
	// A creator killed after its entry named it, before publishing.
	named, err := f.heap.AllocFor(ctx, 64, alloc.KindControl, dead)
	require.NoError(t, err)
	e, _, err := f.reg.freeEntryLocked(t, 3)
	require.NoError(t, err)
	e.ID.Store(3)
	e.Control.Store(uint64(named))
	e.Creator.Store(uint64(dead))
	e.State.Store(entryInitializing)
	// A remover killed after it took channel 2's block and its entry let
	// go of it, before the heap freed it.
	require.NoError(t, f.heap.SetOwner(en.Control, 0, dead))
	en.e.State.Store(entryRemoving)
	en.e.Control.Store(0)
	// A live creator's block, not yet named: left to it.
	live, err := f.heap.AllocFor(ctx, 64, alloc.KindControl, sys.Self())
	require.NoError(t, err)

	u, err := f.reg.FinishRemovals(ctx, nil)
	require.NoError(t, err)
	require.Equal(t, Unfinished{Removals: 1, Creations: 1, Orphans: 2}, u)
	require.NoError(t, f.heap.Free(live))
	after, err := f.heap.Stats()
	require.NoError(t, err)
	require.Equal(t, before.FreeBytes, after.FreeBytes, "every block of the dead came back")
	require.EqualValues(t, entryFree, e.State.Load())
	require.EqualValues(t, entryFree, en.e.State.Load())

	// Removal frees a published channel's block (taken from nobody).
	en4, _, err := f.reg.LookupOrCreate(ctx, 4, Spec{Type: TypeStatic, Size: 1, Control: 64})
	require.NoError(t, err)
	removed, err := f.reg.Remove(ctx, en4, nil, nil)
	require.NoError(t, err)
	require.True(t, removed)
	after, err = f.heap.Stats()
	require.NoError(t, err)
	require.Equal(t, before.FreeBytes, after.FreeBytes)
}

func TestRegistryCorruptChain(t *testing.T) {
	f := newFixture(t, backend.Heap)
	ctx := context.Background()
	en, _, err := f.reg.LookupOrCreate(ctx, 1, Spec{Type: TypeStatic, Size: 1})
	require.NoError(t, err)
	other := ID(2)
	for f.reg.bucket(other) != f.reg.bucket(1) {
		other++
	}
	en.e.Next.Store(uint64(en.Off)) // a cycle
	_, err = f.reg.Lookup(other)
	require.ErrorIs(t, err, errs.ErrCorrupt)
	require.ErrorIs(t, f.reg.Each(func(*Entry) error { return nil }), errs.ErrCorrupt)
	en.e.Next.Store(1 << 50) // out of the region
	_, err = f.reg.Lookup(other)
	require.ErrorIs(t, err, errs.ErrCorrupt)
	en.e.Next.Store(0)
	_, err = f.reg.Lookup(1)
	require.NoError(t, err)
	_, err = f.reg.Remove(ctx, en, nil, nil)
	require.NoError(t, err)
}

func TestRingSPSCRace(t *testing.T) {
	// Many records through a small ring between two goroutines, in order,
	// on the heap backend so the race detector sees every access.
	f := newFixture(t, backend.Heap)
	en, _, err := f.reg.LookupOrCreate(context.Background(), 1, recordSpec(8))
	require.NoError(t, err)
	ring, err := OpenRing(f.r, en, WaitOptions{Spin: time.Microsecond, CheckInterval: 10 * time.Millisecond})
	require.NoError(t, err)
	p, err := ring.AttachProducer()
	require.NoError(t, err)
	_, err = ring.AttachProducer()
	require.ErrorIs(t, err, errs.ErrBusy, "one producer")
	c, err := ring.AttachConsumer()
	require.NoError(t, err)
	_, err = ring.AttachConsumer()
	require.ErrorIs(t, err, errs.ErrBusy, "one consumer")

	const n = 20000
	ctx := testutil.Context(t, time.Minute)
	go func() {
		batch := make([]uint64, 5)
		for i := 1; i <= n; {
			if i%3 == 0 && i+len(batch) <= n {
				for j := range batch {
					batch[j] = uint64(i + j)
				}
				sent := 0
				for sent < len(batch) {
					k, err := p.TrySendBatch(batch[sent:])
					if err != nil {
						t.Error(err)
						return
					}
					sent += k
					if k == 0 {
						if err := p.WaitRoom(ctx); err != nil {
							t.Error(err)
							return
						}
					}
				}
				i += len(batch)
				continue
			}
			if err := p.Send(ctx, uint64(i)); err != nil {
				t.Error(err)
				return
			}
			i++
		}
		p.Close()
	}()
	want := uint64(1)
	buf := make([]uint64, 7)
	for {
		if want%2 == 0 {
			k, err := c.TryReceiveBatch(buf)
			if err == io.EOF {
				break
			}
			require.NoError(t, err)
			for _, off := range buf[:k] {
				require.Equal(t, want, off)
				want++
			}
			if k == 0 {
				if err := c.WaitData(ctx); err == io.EOF {
					break
				} else {
					require.NoError(t, err)
				}
			}
			continue
		}
		off, err := c.Receive(ctx)
		if err == io.EOF {
			break
		}
		require.NoError(t, err)
		require.Equal(t, want, off, "in order, none lost or repeated")
		want++
	}
	require.Equal(t, uint64(n+1), want)
	_, err = c.TryReceive()
	require.ErrorIs(t, err, io.EOF, "EOF stays")
	require.True(t, c.Close(), "drained and both closed")
	require.True(t, ring.Removable())
	removed, err := f.reg.Remove(context.Background(), en, ring.Removable, nil)
	require.NoError(t, err)
	require.True(t, removed)
}

func TestRingDeliversAfterProducerClosedBeforeConsumer(t *testing.T) {
	f := newFixture(t, backend.Heap)
	en, _, err := f.reg.LookupOrCreate(context.Background(), 1, recordSpec(4))
	require.NoError(t, err)
	ring, err := OpenRing(f.r, en, WaitOptions{})
	require.NoError(t, err)
	p, err := ring.AttachProducer()
	require.NoError(t, err)
	for i := 1; i <= 4; i++ {
		require.NoError(t, p.TrySend(uint64(i)))
	}
	require.ErrorIs(t, p.TrySend(5), errs.ErrWouldBlock, "full")
	require.False(t, p.Close(), "no consumer yet")
	require.ErrorIs(t, p.TrySend(5), errs.ErrClosed)

	c, err := ring.AttachConsumer()
	require.NoError(t, err)
	for i := 1; i <= 4; i++ {
		off, err := c.Receive(context.Background())
		require.NoError(t, err)
		require.Equal(t, uint64(i), off)
	}
	_, err = c.Receive(context.Background())
	require.ErrorIs(t, err, io.EOF)
	require.True(t, c.Close())
	_, err = f.reg.Remove(context.Background(), en, ring.Removable, nil)
	require.NoError(t, err)
}

// TestSentHere: the consumer learns that the queued records were all
// sent by a producer end of its own process (or one that died) only
// while such an end holds the channel and has since before the head:
// not with no producer, not with another live process's end, not for
// records queued before this process's end attached; an end that closes
// clears it before it lets go, and one that took over a dead end
// counts the dead end's records.
func TestSentHere(t *testing.T) {
	f := newFixture(t, backend.Heap)
	en, _, err := f.reg.LookupOrCreate(context.Background(), 1, recordSpec(16))
	require.NoError(t, err)
	ring, err := OpenRing(f.r, en, WaitOptions{Spin: -1, CheckInterval: 5 * time.Millisecond})
	require.NoError(t, err)
	c, err := ring.AttachConsumer()
	require.NoError(t, err)
	require.False(t, c.SentHere(), "no producer")

	p, err := ring.AttachProducer()
	require.NoError(t, err)
	require.True(t, c.SentHere(), "this process's producer, attached at the head")
	require.NoError(t, p.TrySend(1))
	p.Close()
	require.False(t, c.SentHere(), "the producer closed")
	require.Zero(t, ring.cb.ProdSince.Load(), "Close clears ProdSince before it lets go of the end")

	// Another process's live end: its records are its own.
	other := uint64(sys.Self()) + 1
	ring.cb.Producer.Store(other)
	ring.cb.ProdSince.Store(1)
	require.False(t, c.SentHere(), "another process's producer")
	ring.cb.Producer.Store(0)
	ring.cb.ProdSince.Store(0)

	// This process's end, attached after a record was queued: not until
	// the consumer is past that record.
	p, err = ring.AttachProducer()
	require.NoError(t, err)
	require.False(t, c.SentHere(), "a record queued before the end attached")
	require.NoError(t, p.TrySend(2))
	off, err := c.TryReceive()
	require.NoError(t, err)
	require.Equal(t, uint64(1), off)
	require.True(t, c.SentHere(), "past the records queued before")

	// An end that died: its records count (their holder is dead), from
	// where it attached, once an end of this process holds the channel
	// (even before that end has written its own ProdSince).
	off, err = c.TryReceive()
	require.NoError(t, err)
	require.Equal(t, uint64(2), off)
	p.Close()
	dead := testutil.DeadIdentity(t)
	ring.cb.Producer.Store(uint64(dead))
	ring.cb.ProdSince.Store(ring.cb.Head.Load() + 1)
	require.False(t, c.SentHere(), "a dead producer holds the end")
	ring.cb.Producer.Store(uint64(sys.Self()))
	require.True(t, c.SentHere(), "a dead end's ProdSince, this process's end claimed")
	ring.cb.ProdSince.Store(ring.cb.Head.Load() + 2)
	require.False(t, c.SentHere(), "an end that attached after the head")
	ring.cb.Producer.Store(uint64(dead))
	p2, err := ring.AttachProducer()
	require.NoError(t, err)
	require.True(t, c.SentHere(), "the end that took over")
	p2.Close()
	c.Close()
}

func TestRingWaitCancelAndPeerDeath(t *testing.T) {
	f := newFixture(t, backend.Heap)
	en, _, err := f.reg.LookupOrCreate(context.Background(), 1, recordSpec(2))
	require.NoError(t, err)
	ring, err := OpenRing(f.r, en, WaitOptions{Spin: -1, CheckInterval: 5 * time.Millisecond})
	require.NoError(t, err)
	c, err := ring.AttachConsumer()
	require.NoError(t, err)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	_, err = c.Receive(ctx)
	require.ErrorIs(t, err, context.DeadlineExceeded)

	// A producer that died: its queued record is delivered, then ErrPeerDead.
	dead := testutil.DeadIdentity(t)
	ring.cb.Producer.Store(uint64(dead))
	ring.ring[0] = 99
	ring.cb.Tail.Store(1)
	off, err := c.Receive(context.Background())
	require.NoError(t, err)
	require.Equal(t, uint64(99), off)
	_, err = c.Receive(testutil.Context(t, 10*time.Second))
	require.ErrorIs(t, err, errs.ErrPeerDead)

	// A new producer takes the dead one's end over.
	p, err := ring.AttachProducer()
	require.NoError(t, err)
	require.NoError(t, p.TrySend(5))
	off, err = c.Receive(context.Background())
	require.NoError(t, err)
	require.Equal(t, uint64(5), off)

	// A consumer that died: a producer blocked on a full ring learns it.
	c.Close()
	ring.cb.Consumer.Store(uint64(dead))
	require.NoError(t, p.TrySend(1))
	require.NoError(t, p.TrySend(2))
	err = p.Send(testutil.Context(t, 10*time.Second), 3)
	require.ErrorIs(t, err, errs.ErrPeerDead)
	p.Close()
	require.True(t, func() bool { ring.cb.Tail.Store(ring.cb.Head.Load()); return ring.Abandoned() }())
	_, err = f.reg.Remove(context.Background(), en, ring.Abandoned, nil)
	require.NoError(t, err)
}

func TestRingDestroyedBufferWakesWaiter(t *testing.T) {
	f := newFixture(t, backend.Heap)
	en, _, err := f.reg.LookupOrCreate(context.Background(), 1, recordSpec(2))
	require.NoError(t, err)
	ring, err := OpenRing(f.r, en, WaitOptions{Spin: -1, CheckInterval: 5 * time.Millisecond})
	require.NoError(t, err)
	c, err := ring.AttachConsumer()
	require.NoError(t, err)
	done := make(chan error, 1)
	go func() { _, err := c.Receive(context.Background()); done <- err }()
	time.Sleep(10 * time.Millisecond)
	f.r.MarkDestroyed()
	select {
	case err := <-done:
		require.ErrorIs(t, err, errs.ErrDestroyed)
	case <-time.After(10 * time.Second):
		t.Fatal("a destroyed buffer left its consumer hanging")
	}
	c.Close()
	_, err = f.reg.Remove(context.Background(), en, nil, nil)
	require.NoError(t, err)
}

func TestRingCorruptIndices(t *testing.T) {
	f := newFixture(t, backend.Heap)
	en, _, err := f.reg.LookupOrCreate(context.Background(), 1, recordSpec(4))
	require.NoError(t, err)
	ring, err := OpenRing(f.r, en, WaitOptions{})
	require.NoError(t, err)
	c, err := ring.AttachConsumer()
	require.NoError(t, err)
	ring.cb.Tail.Store(1000) // a hostile producer
	_, err = c.TryReceive()
	require.ErrorIs(t, err, errs.ErrCorrupt)
	require.ErrorIs(t, ring.Check(), errs.ErrCorrupt)
	_, err = ring.Pending()
	require.ErrorIs(t, err, errs.ErrCorrupt)
	ring.cb.Tail.Store(0)
	require.NoError(t, ring.Check())

	ring.cb.Cap = 3
	_, err = OpenRing(f.r, en, WaitOptions{})
	require.ErrorIs(t, err, errs.ErrCorrupt)
	ring.cb.Cap = 4
	ring.cb.Magic = 1
	_, err = OpenRing(f.r, en, WaitOptions{})
	require.ErrorIs(t, err, errs.ErrCorrupt)
	ring.cb.Magic = recordMagic
	c.Close()
	_, err = f.reg.Remove(context.Background(), en, nil, nil)
	require.NoError(t, err)
}

// TestRingCorruptHead: a Head ahead of the producer's tail, or a Tail
// behind the consumer's head, seen while waiting (a damaged or hostile
// word), is reported as corruption by every call that reads it: no send
// over slots not yet taken, no wait for room that never comes, no slot
// read past the end of what was queued.
func TestRingCorruptHead(t *testing.T) {
	f := newFixture(t, backend.Heap)
	en, _, err := f.reg.LookupOrCreate(context.Background(), 1, recordSpec(4))
	require.NoError(t, err)
	ring, err := OpenRing(f.r, en, WaitOptions{})
	require.NoError(t, err)
	p, err := ring.AttachProducer()
	require.NoError(t, err)
	c, err := ring.AttachConsumer()
	require.NoError(t, err)
	for i := range 4 {
		require.NoError(t, p.TrySend(uint64(i+1)*4096))
	}
	require.Equal(t, 4, ring.Len())

	ring.cb.Head.Store(100) // ahead of the tail (4)
	require.Equal(t, 0, ring.Len())
	require.ErrorIs(t, p.TrySend(8*4096), errs.ErrCorrupt)
	_, err = p.TrySendBatch([]uint64{8 * 4096})
	require.ErrorIs(t, err, errs.ErrCorrupt)
	require.Zero(t, p.Room(1))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	require.ErrorIs(t, p.WaitRoom(ctx), errs.ErrCorrupt)
	require.NoError(t, ctx.Err(), "WaitRoom waited for room that never comes")
	ring.cb.Head.Store(0)
	require.Zero(t, p.Room(1), "the ring is full: the cached Head was not moved by the damaged one")

	for range 4 {
		_, err := c.TryReceive()
		require.NoError(t, err)
	}
	p.Close()
	ring.cb.Tail.Store(2) // behind the consumer's head (4), once the producer closed
	_, ok := c.Peek()
	require.False(t, ok)
	require.ErrorIs(t, c.WaitData(ctx), errs.ErrCorrupt)
	require.NoError(t, ctx.Err())
	_, err = c.TryReceive()
	require.ErrorIs(t, err, errs.ErrCorrupt, "no slot read past the queued ones")
	ring.cb.Tail.Store(4)
	require.ErrorIs(t, c.WaitData(ctx), io.EOF)
	c.Close()
	_, err = f.reg.Remove(context.Background(), en, nil, nil)
	require.NoError(t, err)
}

// newMPSC creates MPSC channel 1 of capacity n with k producer slots in
// a new heap fixture and opens it with opts.
func newMPSC(t *testing.T, n, k uint64, opts WaitOptions) (*fixture, *Entry, *MPSC) {
	t.Helper()
	f := newFixture(t, backend.Heap)
	spec := Spec{Type: TypeMPSC, Size: n, Control: MPSCControlSize(n, k), Init: func(_ mem.Off, b []byte) error { return InitMPSC(b, n, k) }}
	en, _, err := f.reg.LookupOrCreate(context.Background(), 1, spec)
	require.NoError(t, err)
	m, err := OpenMPSC(f.r, en, opts)
	require.NoError(t, err)
	return f, en, m
}

// mpscFixture creates MPSC channel 1 of capacity n (two producer slots)
// in a new heap fixture and attaches a producer.
func mpscFixture(t *testing.T, n uint64) (*fixture, *Entry, *MPSC, *MPSCProducer) {
	t.Helper()
	f, en, m := newMPSC(t, n, 2, WaitOptions{})
	p, err := m.AttachProducer()
	require.NoError(t, err)
	return f, en, m, p
}

// TestMPSCTailBehindSlot: a Tail moved back under a published slot (a
// damaged or hostile word) is reported by TrySend as corruption, not
// looked at again forever.
func TestMPSCTailBehindSlot(t *testing.T) {
	f, en, m, p := mpscFixture(t, 4)
	require.NoError(t, p.TrySend(4096))
	m.cb.Tail.Add(^uint64(0)) // back to the published slot
	done := make(chan error, 1)
	go func() { done <- p.TrySend(8192) }()
	select {
	case err := <-done:
		require.ErrorIs(t, err, errs.ErrCorrupt)
	case <-time.After(10 * time.Second):
		t.Fatal("TrySend spins on a Tail behind its slot")
	}
	m.cb.Tail.Add(1)
	require.NoError(t, p.TrySend(8192), "usable again once the word is right")
	// A Head past Tail (damaged), read when the Head the producer read
	// last says the ring is full, is reported too, not looked at forever.
	m.cb.Head.Store(m.cb.Tail.Load() + 1)
	p.headCache = m.cb.Tail.Load() - 4
	go func() { done <- p.TrySend(12288) }()
	select {
	case err := <-done:
		require.ErrorIs(t, err, errs.ErrCorrupt)
	case <-time.After(10 * time.Second):
		t.Fatal("TrySend spins on a Head past Tail")
	}
	m.cb.Head.Store(0)
	p.Close()
	_, err := f.reg.Remove(context.Background(), en, nil, nil)
	require.NoError(t, err)
}

// TestMPSCConsumerTakeover: Head is the consumer's only state in the
// ring, so a consumer killed between two receipts leaves nothing half
// done: the next consumer receives what follows, also after a producer
// lapped round into the slots the dead one took. The consumer writes
// nothing in the slots (their lines go from producers to the consumer
// only). A slot published for this lap is taken, one of an earlier lap
// is not.
func TestMPSCConsumerTakeover(t *testing.T) {
	const capacity = 4
	f, en, m, p := mpscFixture(t, capacity)
	slot := func(off mem.Off) uint64 { s, _ := PackSlot(off, 64); return s }
	for _, off := range []mem.Off{4096, 8192, 12288, 16384} {
		require.NoError(t, p.TrySend(slot(off)))
	}
	require.ErrorIs(t, p.TrySend(slot(20480)), errs.ErrWouldBlock, "full")
	before := append([]mpscSlot(nil), m.slots...)
	c, err := m.AttachConsumer()
	require.NoError(t, err)
	for _, want := range []mem.Off{4096, 8192} {
		s, err := c.TryReceive()
		require.NoError(t, err)
		require.Equal(t, slot(want), s)
	}
	for i := range m.slots {
		require.Equal(t, before[i].Seq.Load(), m.slots[i].Seq.Load(), "slot %d written by the consumer", i)
	}
	m.cb.Consumer.Store(uint64(testutil.DeadIdentity(t)))
	require.True(t, m.ConsumerDead())
	// A producer laps round into the two slots the dead consumer took.
	require.NoError(t, p.TrySend(slot(20480)))
	require.NoError(t, p.TrySend(slot(24576)))
	require.ErrorIs(t, p.TrySend(slot(28672)), errs.ErrWouldBlock, "full again")
	require.Equal(t, uint64(capacity+1), m.slots[0].Seq.Load(), "published for the next lap")
	pend, err := m.Pending()
	require.NoError(t, err)
	require.Equal(t, []mem.Off{12288, 16384, 20480, 24576}, pend)

	c2, err := m.AttachConsumer()
	require.NoError(t, err)
	for _, want := range []mem.Off{12288, 16384, 20480, 24576} {
		s, err := c2.TryReceive()
		require.NoError(t, err)
		require.Equal(t, slot(want), s)
	}
	_, err = c2.TryReceive()
	require.ErrorIs(t, err, errs.ErrWouldBlock, "slot 0 holds lap 1's record: not lap 2's")
	require.NoError(t, m.Check())
	seq3 := m.slots[3].Seq.Load()
	m.slots[3].Seq.Store(m.cb.Tail.Load() + 4) // published beyond the tail
	require.ErrorIs(t, m.Check(), errs.ErrCorrupt)
	m.slots[3].Seq.Store(seq3)
	require.NoError(t, m.Check())
	p.Close()
	c2.Close()
	_, err = f.reg.Remove(context.Background(), en, nil, nil)
	require.NoError(t, err)
}

// TestMPSCParkedProducersAllWoken: producers parked on a full ring share
// one waiting word; each receipt wakes all of them (each looks again and
// one takes the slot), so none is left asleep until its check interval
// (an hour here) while there is room.
func TestMPSCParkedProducersAllWoken(t *testing.T) {
	const capacity, parked = 2, 3
	_, _, m := newMPSC(t, capacity, parked+1, WaitOptions{Spin: -1, CheckInterval: time.Hour})
	fillp, err := m.AttachProducer()
	require.NoError(t, err)
	slot := func(off mem.Off) uint64 { s, _ := PackSlot(off, 64); return s }
	require.NoError(t, fillp.TrySend(slot(4096)))
	require.NoError(t, fillp.TrySend(slot(8192)))
	c, err := m.AttachConsumer()
	require.NoError(t, err)
	done := make(chan error, parked)
	for i := range parked {
		p, err := m.AttachProducer()
		require.NoError(t, err)
		go func() { done <- p.Send(t.Context(), slot(mem.Off(16384+4096*i))) }()
	}
	// All of them parked on the full ring.
	require.Eventually(t, func() bool { return m.cb.ProdWaiting.Load() == waitSelf }, 10*time.Second, time.Millisecond)
	time.Sleep(20 * time.Millisecond)
	for got := 0; got < 2+parked; got++ {
		deadline := time.Now().Add(20 * time.Second)
		for {
			if _, err := c.TryReceive(); err == nil {
				break
			}
			require.True(t, time.Now().Before(deadline), "record %d never came: a producer left parked", got)
			time.Sleep(time.Millisecond)
		}
	}
	for range parked {
		require.NoError(t, <-done)
	}
	_, err = c.TryReceive()
	require.ErrorIs(t, err, errs.ErrWouldBlock)
	require.NoError(t, m.Check())
}

// mpscProducers creates MPSC channel 1 of capacity n with k producer
// slots, opened with opts, and attaches k producers and the consumer.
func mpscProducers(t *testing.T, n, k uint64, opts WaitOptions) (*MPSC, []*MPSCProducer, *MPSCConsumer) {
	t.Helper()
	_, _, m := newMPSC(t, n, k, opts)
	ps := make([]*MPSCProducer, k)
	var err error
	for i := range ps {
		ps[i], err = m.AttachProducer()
		require.NoError(t, err)
	}
	c, err := m.AttachConsumer()
	require.NoError(t, err)
	return m, ps, c
}

func mpscSlotOf(off mem.Off) uint64 { s, _ := PackSlot(off, 64); return s }

// TestMPSCLostClaimForgotten: two producers race for the last free slot
// many times; the one whose claim (the CAS on Tail) loses finds the ring
// full and returns ErrWouldBlock. Its Claiming word must not name the
// sequence the other one claimed: if that one then died before
// publishing, the consumer, finding a live producer that names the slot,
// would wait for it for ever (and the ring, full, would never move).
func TestMPSCLostClaimForgotten(t *testing.T) {
	m, ps, c := mpscProducers(t, 2, 3, WaitOptions{})
	p, q, r := ps[0], ps[1], ps[2]
	var start atomic.Int32
	race := func(pr *MPSCProducer, off mem.Off, done chan<- error) {
		start.Add(1)
		for start.Load() < 2 {
		}
		done <- pr.TrySend(mpscSlotOf(off))
	}
	done := make(chan error, 2)
	for round := range 3000 {
		require.NoError(t, r.TrySend(mpscSlotOf(4096)), "round %d", round)
		start.Store(0)
		go race(p, 8192, done)
		go race(q, 12288, done)
		e1, e2 := <-done, <-done
		require.True(t, (e1 == nil) != (e2 == nil), "round %d: one send of the two fits: %v, %v", round, e1, e2)
		for _, e := range []error{e1, e2} {
			if e != nil {
				require.ErrorIs(t, e, errs.ErrWouldBlock)
			}
		}
		for i, pr := range ps {
			require.Zero(t, pr.me.Claiming.Load(), "round %d: producer %d names a claim after its send returned", round, i)
		}
		for range 2 {
			_, err := c.TryReceive()
			require.NoError(t, err)
		}
	}
	require.NoError(t, m.Check())
}

// TestMPSCNoEOFBeforeLastRecord: the last producer sends and closes
// between the consumer's read of Tail (empty) and its read of Attached
// (none left): the consumer must see the record, not EOF. eof is the
// consumer's test for that, with the ring found empty at h.
func TestMPSCNoEOFBeforeLastRecord(t *testing.T) {
	m, ps, c := mpscProducers(t, 4, 1, WaitOptions{})
	h := c.head // the consumer read Tail == h ...
	require.NoError(t, ps[0].TrySend(mpscSlotOf(4096)))
	ps[0].Close() // ... then the record came, and the last producer left
	require.False(t, c.eof(h), "EOF while a record is queued")
	s, err := c.TryReceive()
	require.NoError(t, err)
	require.Equal(t, mpscSlotOf(4096), s)
	_, err = c.TryReceive()
	require.ErrorIs(t, err, io.EOF)
	require.True(t, m.Removable() || m.cb.ConsClosed.Load() == 0)
}

// TestMPSCDeadProducersEndPolling: producers that died without closing
// are detached by a consumer that only polls TryReceive (or a Select,
// through CheckPeer), which then reads EOF instead of ErrWouldBlock for
// ever.
func TestMPSCDeadProducersEndPolling(t *testing.T) {
	for _, via := range []string{"TryReceive", "CheckPeer"} {
		t.Run(via, func(t *testing.T) {
			m, ps, c := mpscProducers(t, 4, 2, WaitOptions{CheckInterval: time.Millisecond})
			require.NoError(t, ps[0].TrySend(mpscSlotOf(4096)))
			for _, p := range ps {
				p.me.Owner.Store(uint64(testutil.DeadIdentity(t)))
			}
			s, err := c.TryReceive()
			require.NoError(t, err, "a dead producer's record is delivered")
			require.Equal(t, mpscSlotOf(4096), s)
			if via == "CheckPeer" {
				// A Select calls CheckPeer after each check interval.
				require.NoError(t, c.CheckPeer())
				_, err = c.TryReceive()
				require.ErrorIs(t, err, io.EOF)
			}
			deadline := time.Now().Add(10 * time.Second)
			for {
				_, err = c.TryReceive()
				if err != errs.ErrWouldBlock {
					break
				}
				require.True(t, time.Now().Before(deadline), "no EOF once every producer is dead")
				time.Sleep(100 * time.Microsecond)
			}
			require.ErrorIs(t, err, io.EOF)
			require.True(t, c.Ready(), "Ready says so too")
			require.Zero(t, m.cb.Attached.Load())
		})
	}
}

// TestMPSCStuckSlot: the slot at the head is claimed (Tail is past it)
// but not published. Its claimant alive, the consumer is not Ready and
// parks, and the claimant's publication wakes it (check interval: an
// hour). Its claimant dead, or nobody claiming it at all (a Tail damaged
// ahead), the slot is skipped after two check intervals and the next
// record received: the consumer neither spins on it nor waits for ever.
func TestMPSCStuckSlot(t *testing.T) {
	receive := func(t *testing.T, c *MPSCConsumer) (uint64, error) {
		t.Helper()
		type res struct {
			s   uint64
			err error
		}
		ch := make(chan res, 1)
		go func() { s, err := c.Receive(t.Context()); ch <- res{s, err} }()
		select {
		case r := <-ch:
			return r.s, r.err
		case <-time.After(20 * time.Second):
			t.Fatal("Receive did not return")
			return 0, nil
		}
	}
	for _, interval := range []time.Duration{time.Hour, 5 * time.Millisecond} {
		// An hour: only the claimant's wake-up brings the consumer back;
		// 5 ms: the claimant, alive, publishes only after several check
		// intervals, and its slot must not be skipped meanwhile.
		t.Run("live claimant/"+interval.String(), func(t *testing.T) {
			m, ps, c := mpscProducers(t, 4, 1, WaitOptions{Spin: -1, CheckInterval: interval})
			p := ps[0]
			// p claimed sequence 0 and was descheduled before publishing.
			p.me.Claiming.Store(1)
			m.cb.Tail.Store(1)
			require.False(t, c.Ready(), "a claimed slot is not ready while its claimant lives")
			_, err := c.TryReceive()
			require.ErrorIs(t, err, errs.ErrWouldBlock)
			go func() {
				assert.Eventually(t, func() bool { return m.cb.ConsWaiting.Load() == waitSelf }, 10*time.Second, time.Millisecond)
				if interval < time.Second {
					time.Sleep(6 * interval)
				}
				// p runs again: it publishes as TrySend does.
				m.slots[0].Slot.Store(mpscSlotOf(4096))
				m.slots[0].Seq.Store(1)
				p.me.Claiming.Store(0)
				notify(p.buf, &p.cb.ConsWaiting, &p.cb.Doorbell)
			}()
			s, err := receive(t, c)
			require.NoError(t, err)
			require.Equal(t, mpscSlotOf(4096), s)
			require.Zero(t, m.cb.ConsWaiting.Load(), "the waiting word is idle again")
		})
	}
	for _, who := range []string{"dead claimant", "no claimant"} {
		t.Run(who, func(t *testing.T) {
			m, ps, c := mpscProducers(t, 4, 2, WaitOptions{Spin: -1, CheckInterval: 5 * time.Millisecond})
			if who == "dead claimant" {
				ps[1].me.Claiming.Store(1)
				ps[1].me.Owner.Store(uint64(testutil.DeadIdentity(t)))
			}
			m.cb.Tail.Store(1) // sequence 0 claimed, never to be published
			require.NoError(t, ps[0].TrySend(mpscSlotOf(8192)))
			s, err := receive(t, c)
			require.NoError(t, err)
			require.Equal(t, mpscSlotOf(8192), s, "the stuck slot is skipped, the next record received")
			require.Zero(t, ps[1].me.Claiming.Load(), "a dead claimant's claim is released")
			require.Zero(t, m.cb.ConsWaiting.Load(), "the waiting word is idle again")
			require.NoError(t, m.Check())
		})
	}
}

// TestMPSCDeadClaimantSlotKept: the producer slot of a producer that
// died between its claim and its publication is not given to a new
// producer while the consumer has not passed that claim (its Claiming
// word is what lets the consumer skip the slot); once it has, the slot is
// taken over, and the dead producer's attachment passes to the new one.
func TestMPSCDeadClaimantSlotKept(t *testing.T) {
	m, ps, c := mpscProducers(t, 4, 1, WaitOptions{Spin: -1, CheckInterval: time.Millisecond})
	ps[0].me.Claiming.Store(1)
	ps[0].me.Owner.Store(uint64(testutil.DeadIdentity(t)))
	m.cb.Tail.Store(1) // it claimed sequence 0 and died
	_, err := m.AttachProducer()
	require.ErrorIs(t, err, errs.ErrBusy, "the dead claimant's slot is kept while its claim is ahead")
	require.Eventually(t, func() bool { _, err := c.TryReceive(); return err != nil && c.head == 1 }, 10*time.Second, time.Millisecond)
	require.Equal(t, int64(1), m.cb.Attached.Load())
	p, err := m.AttachProducer()
	require.NoError(t, err, "the consumer has passed the claim")
	require.Equal(t, int64(1), m.cb.Attached.Load(), "the dead producer's attachment is the new one's")
	require.NoError(t, p.TrySend(mpscSlotOf(4096)))
	s, err := c.TryReceive()
	require.NoError(t, err)
	require.Equal(t, mpscSlotOf(4096), s)
}

// TestHugeCapacityRefused: a capacity word and registry size that agree
// on a power of two too large for the buffer (damaged, or hostile) are
// refused when a record or MPSC channel is opened. 1<<32 is 0 as a 32-bit
// int: the ring must not be opened empty there (its mask would index
// past it).
func TestHugeCapacityRefused(t *testing.T) {
	f := newFixture(t, backend.Heap)
	en, _, err := f.reg.LookupOrCreate(context.Background(), 1, recordSpec(4))
	require.NoError(t, err)
	ring, err := OpenRing(f.r, en, WaitOptions{})
	require.NoError(t, err)
	_, men, m, _ := mpscFixture(t, 4)
	for _, n := range []uint64{1 << 32, 1 << 40} {
		big := *en
		big.Size = n
		ring.cb.Cap = n
		_, err = OpenRing(f.r, &big, WaitOptions{})
		require.ErrorIs(t, err, errs.ErrCorrupt, "record channel of capacity %d", n)
		bigm := *men
		bigm.Size = n
		m.cb.Cap = n
		_, err = OpenMPSC(m.region, &bigm, WaitOptions{})
		require.ErrorIs(t, err, errs.ErrCorrupt, "mpsc channel of capacity %d", n)
	}
	ring.cb.Cap, m.cb.Cap = 4, 4
	_, err = OpenRing(f.r, en, WaitOptions{})
	require.NoError(t, err)
	_, err = OpenMPSC(m.region, men, WaitOptions{})
	require.NoError(t, err)
}

// TestMPSCCapacityOne: an MPSC ring of one slot cannot tell a published
// slot from a free one, so it is refused.
func TestMPSCCapacityOne(t *testing.T) {
	b := make([]byte, MPSCControlSize(1, 2))
	require.ErrorIs(t, InitMPSC(b, 1, 2), errs.ErrInvalidSize)
	b = make([]byte, MPSCControlSize(2, 2))
	require.NoError(t, InitMPSC(b, 2, 2))
}

// TestSlotPacking: a slot carries any segment offset and a length below
// SlotLenNone; longer or unknown lengths read back as not recorded, and an
// offset beyond any segment is refused.
func TestSlotPacking(t *testing.T) {
	for _, c := range []struct {
		off   mem.Off
		n     int
		known bool
	}{
		{0, 0, true}, {16, 64, true}, {1<<SlotOffBits - 16, SlotLenNone - 1, true},
		{4096, SlotLenNone, false}, {4096, 1 << 30, false}, {4096, -1, false},
	} {
		s, ok := PackSlot(c.off, c.n)
		require.True(t, ok, "%+v", c)
		require.Equal(t, c.off, SlotOff(s), "%+v", c)
		n, known := SlotLen(s)
		require.Equal(t, c.known, known, "%+v", c)
		if known {
			require.Equal(t, c.n, n, "%+v", c)
		}
	}
	_, ok := PackSlot(1<<SlotOffBits, 8)
	require.False(t, ok, "an offset beyond any segment")
}

// TestRingParkedNoLostWakeup: a producer and a consumer that park at once
// whenever the ring is full or empty (no spinning), with a check interval
// far longer than the test, pass 10,000 records through a ring of two.
// Each record makes one side park and the other wake it; a wake-up lost
// in the handshake between a publish and a parking waiter (the index
// stored, then the waiting word loaded; the waiting word stored, then
// the index loaded) would leave a side asleep until the context's
// deadline.
func TestRingParkedNoLostWakeup(t *testing.T) {
	streamRing(t, WaitOptions{Spin: -1, CheckInterval: time.Hour}, 2, 10000, nil)
}

// streamRing sends records 1 to n through a ring of the given capacity
// whose ends wait as opts say, checks that they arrive in order, then the
// end of stream, and removes the channel. pause, if set, is called by
// each side before each record (the producer with true): it may sleep,
// so that the other side waits.
func streamRing(t *testing.T, opts WaitOptions, capacity uint64, n uint64, pause func(i uint64, producer bool)) {
	t.Helper()
	if pause == nil {
		pause = func(uint64, bool) {}
	}
	f := newFixture(t, backend.Heap)
	en, _, err := f.reg.LookupOrCreate(context.Background(), 1, recordSpec(capacity))
	require.NoError(t, err)
	ring, err := OpenRing(f.r, en, opts)
	require.NoError(t, err)
	p, err := ring.AttachProducer()
	require.NoError(t, err)
	c, err := ring.AttachConsumer()
	require.NoError(t, err)
	ctx := testutil.Context(t, 60*time.Second)
	done := make(chan error, 1)
	go func() {
		for i := uint64(1); i <= n; i++ {
			pause(i, true)
			if err := p.Send(ctx, i); err != nil {
				done <- err
				return
			}
		}
		p.Close()
		done <- nil
	}()
	for want := uint64(1); want <= n; want++ {
		pause(want, false)
		got, err := c.Receive(ctx)
		require.NoError(t, err, "record %d", want)
		require.Equal(t, want, got)
	}
	require.NoError(t, <-done)
	_, err = c.Receive(ctx)
	require.ErrorIs(t, err, io.EOF)
	require.True(t, c.Close())
	_, err = f.reg.Remove(context.Background(), en, ring.Removable, nil)
	require.NoError(t, err)
}

// TestRingAnnouncedWait: the waiting words of a record channel, which
// publishes its indexes without a fence (publish). A waiter announces
// itself (waitSoon) for the last announceLead of its spin and goes back
// to idle when it stops waiting; a publisher that wakes a parked waiter
// leaves it announced, and one that finds it announced leaves it so; an
// end that spins less than the lead is announced for as long as it is
// open.
func TestRingAnnouncedWait(t *testing.T) {
	f := newFixture(t, backend.Heap)
	en, _, err := f.reg.LookupOrCreate(context.Background(), 1, recordSpec(2))
	require.NoError(t, err)
	ring, err := OpenRing(f.r, en, WaitOptions{Spin: 50 * time.Millisecond, CheckInterval: time.Hour})
	require.NoError(t, err)
	p, err := ring.AttachProducer()
	require.NoError(t, err)
	c, err := ring.AttachConsumer()
	require.NoError(t, err)
	cw, pw := &ring.cb.ConsWaiting, &ring.cb.ProdWaiting
	require.Zero(t, cw.Load(), "idle")
	require.Zero(t, pw.Load(), "idle")
	ctx := testutil.Context(t, 10*time.Second)

	// Waiting (announced, then parked), idle after.
	got := make(chan uint64, 1)
	go func() {
		s, err := c.Receive(ctx)
		assert.NoError(t, err)
		got <- s
	}()
	require.Eventually(t, func() bool { return cw.Load() != 0 }, 10*time.Second, 10*time.Microsecond)
	require.True(t, p.Push(1))
	require.Equal(t, uint64(1), <-got)
	require.Zero(t, cw.Load(), "idle after the wait")

	// An announced word stays announced when a publisher sees it.
	cw.Store(waitSoon)
	require.True(t, p.Push(2))
	require.Equal(t, uint32(waitSoon), cw.Load())
	cw.Store(0)
	s, err := c.TryReceive()
	require.NoError(t, err)
	require.Equal(t, uint64(2), s)

	// A parked consumer is woken and left announced; a parked producer
	// too.
	require.False(t, c.Close())
	parked, err := OpenRing(f.r, en, WaitOptions{Spin: -1, CheckInterval: time.Hour})
	require.NoError(t, err)
	c2, err := parked.AttachConsumer()
	require.NoError(t, err)
	require.Equal(t, uint32(waitSoon), cw.Load(), "a consumer that does not spin is announced while open")
	var woke uint32
	testBeforePark = func() {
		testBeforePark = nil
		require.NoError(t, p.TrySend(3))
		woke = cw.Load()
	}
	t.Cleanup(func() { testBeforePark = nil })
	s, err = c2.Receive(ctx)
	require.NoError(t, err)
	require.Equal(t, uint64(3), s)
	require.Equal(t, uint32(waitSoon), woke, "left announced by the waker")
	require.Equal(t, uint32(waitSoon), cw.Load(), "a consumer that does not spin is announced while open")

	require.NoError(t, p.TrySend(4))
	require.NoError(t, p.TrySend(5)) // full
	testBeforePark = func() {
		testBeforePark = nil
		s, err := c2.TryReceive()
		assert.NoError(t, err)
		assert.Equal(t, uint64(4), s)
		woke = pw.Load()
	}
	require.NoError(t, p.Send(ctx, 6))
	require.Equal(t, uint32(waitSoon), woke, "left announced by the waker")
	require.Zero(t, pw.Load(), "idle after the wait")
	for _, want := range []uint64{5, 6} {
		s, err := c2.TryReceive()
		require.NoError(t, err)
		require.Equal(t, want, s)
	}
	// A producer that does not spin stays announced when the consumer
	// closes and another attaches.
	p.Close()
	require.Zero(t, pw.Load(), "idle once closed")
	p2, err := parked.AttachProducer()
	require.NoError(t, err)
	require.Equal(t, uint32(waitSoon), pw.Load(), "a producer that does not spin is announced while open")
	require.False(t, c2.Close())
	require.Zero(t, cw.Load(), "idle once closed")
	require.Equal(t, uint32(waitSoon), pw.Load(), "the consumer's Close leaves it announced")
	c3, err := ring.AttachConsumer()
	require.NoError(t, err)
	require.Zero(t, cw.Load(), "a consumer that spins is idle")
	require.Equal(t, uint32(waitSoon), pw.Load())
	p2.Close()
	require.True(t, c3.Close())
	_, err = f.reg.Remove(context.Background(), en, ring.Removable, nil)
	require.NoError(t, err)
}

// TestRingLocalPark: a waiter whose peer end is held by this process
// parks in the Go scheduler (waitLocal) and the peer's publication wakes
// it there; a waiter whose peer end is held by another process parks on
// the futex (waitSelf), where that process's publication can reach it. A
// producer parked in the scheduler whose consumer closes decides again
// at its next park: with no consumer it parks on the futex, and a
// consumer that attaches then (of any process) wakes it there.
func TestRingLocalPark(t *testing.T) {
	f := newFixture(t, backend.Heap)
	en, _, err := f.reg.LookupOrCreate(context.Background(), 1, recordSpec(2))
	require.NoError(t, err)
	ring, err := OpenRing(f.r, en, WaitOptions{Spin: -1, CheckInterval: time.Hour})
	require.NoError(t, err)
	p, err := ring.AttachProducer()
	require.NoError(t, err)
	c, err := ring.AttachConsumer()
	require.NoError(t, err)
	cw, pw := &ring.cb.ConsWaiting, &ring.cb.ProdWaiting
	ctx := testutil.Context(t, 10*time.Second)
	t.Cleanup(func() { testBeforePark = nil })

	// receive takes one slot in another goroutine; the word the consumer
	// armed is reported when it is about to park.
	receive := func() (chan uint64, chan uint32) {
		got, armed := make(chan uint64, 1), make(chan uint32, 1)
		testBeforePark = func() {
			testBeforePark = nil
			armed <- cw.Load()
		}
		go func() {
			s, err := c.Receive(ctx)
			assert.NoError(t, err)
			got <- s
		}()
		return got, armed
	}

	// The producer is this process's: the consumer parks in the scheduler.
	got, armed := receive()
	require.Equal(t, uint32(waitLocal), <-armed)
	require.True(t, p.Push(1))
	require.Equal(t, uint64(1), <-got)

	// The producer end held by another live process (this one's parent,
	// standing in): the consumer parks on the futex, and a publication
	// wakes it there.
	other, err := sys.IdentityOf(os.Getppid())
	require.NoError(t, err)
	ring.cb.Producer.Store(uint64(other))
	got, armed = receive()
	require.Equal(t, uint32(waitSelf), <-armed)
	require.True(t, p.Push(2))
	require.Equal(t, uint64(2), <-got)
	ring.cb.Producer.Store(uint64(sys.Self()))

	// A full ring: the producer parks in the scheduler; its consumer
	// closes, which wakes it; with no consumer it parks on the futex; a
	// consumer that attaches and takes a slot wakes it.
	require.NoError(t, p.TrySend(3))
	require.NoError(t, p.TrySend(4))
	var first, second uint32
	testBeforePark = func() {
		first = pw.Load()
		testBeforePark = func() {
			testBeforePark = nil
			second = pw.Load()
			c2, err := ring.AttachConsumer()
			require.NoError(t, err)
			s, err := c2.TryReceive()
			require.NoError(t, err)
			require.Equal(t, uint64(3), s)
			c = c2
		}
		require.False(t, c.Close())
	}
	require.NoError(t, p.Send(ctx, 5))
	require.Equal(t, uint32(waitLocal), first, "the consumer was this process's")
	require.Equal(t, uint32(waitSelf), second, "no consumer")
	for _, want := range []uint64{4, 5} {
		s, err := c.TryReceive()
		require.NoError(t, err)
		require.Equal(t, want, s)
	}
	p.Close()
	require.True(t, c.Close())
	_, err = f.reg.Remove(context.Background(), en, ring.Removable, nil)
	require.NoError(t, err)
}

// TestSpinAnnounced: a waiter's spin is announced for its last
// announceLead only; an end that spins less is announced from its attach
// (since) on, and its spin lasts until a lead after that.
func TestSpinAnnounced(t *testing.T) {
	var w atomic.Uint32
	var seen []uint32
	look := func() bool { seen = append(seen, w.Load()); return false }
	require.False(t, SpinAnnounced(2*time.Millisecond, time.Time{}, announceWord(&w), look))
	require.NotEmpty(t, seen)
	require.Zero(t, seen[0], "not announced at first")
	require.Equal(t, uint32(waitSoon), seen[len(seen)-1], "announced at the end")
	w.Store(0)
	require.True(t, SpinAnnounced(2*time.Millisecond, time.Time{}, announceWord(&w), func() bool { return true }))
	require.Zero(t, w.Load(), "done before the lead: not announced")

	// A short spin just after the end's announcement lasts the lead;
	// long after it, its own length.
	since := time.Now()
	require.False(t, SpinAnnounced(-1, since, announceWord(&w), func() bool { return false }))
	require.GreaterOrEqual(t, time.Since(since), announceLead, "the last look a lead after the announcement")
	calls := 0
	require.False(t, SpinAnnounced(-1, since.Add(-time.Second), announceWord(&w), func() bool { calls++; return false }))
	require.Zero(t, calls, "no spin: the announcement is old")
}

// TestRingUnfencedNoLostWakeup: records and room published without a
// fence reach a waiter that announced itself a lead before its last look,
// with spins just above the lead and the default, and check intervals of
// an hour: a lost wake-up would hang the test (and fail it at its
// deadline). Each side pauses now and then, so that the other waits,
// spins and parks over and over.
func TestRingUnfencedNoLostWakeup(t *testing.T) {
	for _, spinFor := range []time.Duration{announceLead + time.Microsecond, DefaultSpin} {
		t.Run(spinFor.String(), func(t *testing.T) {
			streamRing(t, WaitOptions{Spin: spinFor, CheckInterval: time.Hour}, 4, 20000, func(i uint64, producer bool) {
				if producer && i%97 == 0 {
					time.Sleep(time.Duration(i%5) * 10 * time.Microsecond)
				} else if !producer && i%89 == 0 {
					time.Sleep(time.Duration(i%7) * 10 * time.Microsecond)
				}
			})
		})
	}
}

// TestPortableLayouts: the control blocks, slots and headers this package
// lays out in shared memory are laid out alike on 32-bit and 64-bit
// machines.
func TestPortableLayouts(t *testing.T) {
	testutil.RequirePortableLayouts(t, &mailboxCB{}, &mbChunkHeader{}, &entry{}, &regRoot{}, &speculoCB{},
		&speculoSlot{}, &spExtentHdr{}, &spChunkHdr{}, &streamCB{}, &mpscCB{}, &prodSlot{}, &mpscSlot{}, &recordCB{})
}

// TestLookupSnapshotUnderChurn: lock-free lookups racing removals and
// re-creations in the same bucket return either nothing or one whole
// channel: never a control block being freed (0) nor another channel's
// fields.
func TestLookupSnapshotUnderChurn(t *testing.T) {
	f := newFixture(t, backend.Heap)
	ctx := context.Background()
	// A second id in the same bucket, so that entries are reused across ids.
	other := ID(2)
	for f.reg.bucket(other) != f.reg.bucket(1) {
		other++
	}
	rounds := 20000
	if testutil.Race {
		rounds = 2000
	}
	done := make(chan error, 1)
	// The churn goes on past rounds (up to 100 times as many) until a
	// lookup has seen the channel: on a fast machine the rounds can end
	// before the reader is scheduled at all.
	var seenAny atomic.Bool
	go func() {
		defer close(done)
		for i := 0; i < rounds || (!seenAny.Load() && i < 100*rounds); i++ {
			id, n := ID(1), uint64(8)
			if i%2 == 1 {
				id, n = other, 16
			}
			en, _, err := f.reg.LookupOrCreate(ctx, id, recordSpec(n))
			if err == nil {
				_, err = f.reg.Remove(ctx, en, nil, nil)
			}
			if err != nil {
				done <- err
				return
			}
		}
	}()
	seen := 0
	for {
		select {
		case err := <-done:
			require.NoError(t, err)
			require.Positive(t, seen, "no lookup found the channel")
			return
		default:
		}
		en, err := f.reg.Lookup(1)
		if errors.Is(err, errs.ErrNotExist) {
			continue
		}
		require.NoError(t, err)
		seen++
		seenAny.Store(true)
		require.Equal(t, ID(1), en.ID)
		require.Equal(t, uint64(8), en.Size, "another channel's fields")
		require.NotZero(t, en.Control, "a control block being freed")
	}
}

// TestRingStaleBell: ringing an offset whose doorbell was freed and whose
// memory now holds something else (a producer that read the offset long
// ago, stopped past BellGrace) writes nothing there; ringing a doorbell
// sets it, and Reset and Interrupt keep it a doorbell.
func TestRingStaleBell(t *testing.T) {
	f := newFixture(t, backend.Heap)
	buf := f.r.Bytes()
	d, err := NewDoorbell(f.heap, buf)
	require.NoError(t, err)
	off := d.Off()
	ringBell(buf, uint64(off))
	require.EqualValues(t, 1, d.state.Load(), "rung")
	require.NoError(t, d.Park(t.Context(), time.Second), "a rung doorbell does not wait")
	d.Reset()
	require.Zero(t, d.state.Load())
	d.Interrupt()
	require.EqualValues(t, 1, d.state.Load())
	d.Reset()
	ringBell(buf, uint64(off))
	require.EqualValues(t, 1, d.state.Load(), "still a doorbell after Reset and Interrupt")

	require.NoError(t, d.Free())
	for _, v := range []uint64{0, 0x12345678 << 32, bellTag(off + 64)} {
		w, err := mem.Uint64(buf, off)
		require.NoError(t, err)
		w.Store(v) // the memory, someone else's now
		ringBell(buf, uint64(off))
		require.Equal(t, v, w.Load(), "a stale ring wrote into %#x", v)
	}
}

// TestRingRefusedAttachKeepsClose: an attach refused for a damaged
// head/tail puts the previous end's close mark back. It cleared the mark
// first, so a consumer whose producer had closed read ErrWouldBlock
// instead of EOF for good (and waited for ever in Receive), and the
// channel was never removable (both marks are what Removable reads).
func TestRingRefusedAttachKeepsClose(t *testing.T) {
	f := newFixture(t, backend.Heap)
	en, _, err := f.reg.LookupOrCreate(context.Background(), 1, recordSpec(8))
	require.NoError(t, err)
	ring, err := OpenRing(f.r, en, WaitOptions{CheckInterval: 10 * time.Millisecond})
	require.NoError(t, err)
	p, err := ring.AttachProducer()
	require.NoError(t, err)
	c, err := ring.AttachConsumer()
	require.NoError(t, err)
	slot, ok := PackSlot(4096, 8)
	require.True(t, ok)
	require.NoError(t, p.TrySend(slot))
	p.Close()
	_, err = c.TryReceive()
	require.NoError(t, err)
	_, err = c.TryReceive()
	require.ErrorIs(t, err, io.EOF, "drained after the producer's close")

	head := ring.cb.Head.Load()
	ring.cb.Head.Store(head + 1<<20) // damage: Tail - Head is beyond the capacity
	_, err = ring.AttachProducer()
	require.ErrorIs(t, err, errs.ErrCorrupt)
	c.Close()
	_, err = ring.AttachConsumer()
	require.ErrorIs(t, err, errs.ErrCorrupt)
	require.Equal(t, uint32(1), ring.cb.ProdClosed.Load(), "producer's close mark")
	require.Equal(t, uint32(1), ring.cb.ConsClosed.Load(), "consumer's close mark")
	require.Zero(t, ring.cb.Producer.Load())
	require.Zero(t, ring.cb.Consumer.Load())
	ring.cb.Head.Store(head)
	c, err = ring.AttachConsumer()
	require.NoError(t, err)
	_, err = c.TryReceive()
	require.ErrorIs(t, err, io.EOF, "the producer's close still stands")
}
