package tests

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	ipc "github.com/heapipc/ipc"
	"github.com/heapipc/ipc/internal/testutil"
	"github.com/stretchr/testify/require"
)

// TestChildProduce sends N stamped records on channel 1 (or on channels 1
// and 2 alternately with HIPC_TWO), then closes.
func TestChildProduce(t *testing.T) {
	testutil.ChildOnly(t)
	b := attach(t)
	h := newHandle(t, b)
	n := envInt(t, envN)
	ids := []ipc.ChannelID{1}
	if os.Getenv("HIPC_CHANNELS") == "2" {
		ids = []ipc.ChannelID{1, 2}
	}
	var ps []*ipc.Producer
	for _, id := range ids {
		p, err := h.Producer(id)
		require.NoError(t, err)
		ps = append(ps, p)
	}
	ctx := ctxFor(t)
	for i := 0; i < n; i++ {
		for _, p := range ps {
			r, err := h.Allocate(16)
			require.NoError(t, err)
			stamp(r, uint64(i))
			require.NoError(t, p.Send(ctx, r))
		}
	}
	for _, p := range ps {
		require.NoError(t, p.Close())
	}
	testutil.Say("sent %d", n)
}

func consumeAll(t *testing.T, h *ipc.Handle, id ipc.ChannelID, n int) {
	t.Helper()
	c, err := h.Consumer(id)
	require.NoError(t, err)
	ctx := ctxFor(t)
	for i := 0; i < n; i++ {
		r, err := c.Receive(ctx)
		require.NoError(t, err, "record %d of %d", i, n)
		check(t, r, uint64(i))
		require.NoError(t, h.Free(r))
	}
	_, err = c.Receive(ctx)
	require.ErrorIs(t, err, io.EOF, "nothing after the last record, then EOF")
	require.NoError(t, c.Close())
}

func TestMillionRecordsAcrossProcesses(t *testing.T) {
	b, name := openBuf(t)
	h := newHandle(t, b)
	const n = 1 << 20
	before, err := b.Stats()
	require.NoError(t, err)
	child := testutil.StartChild(t, "TestChildProduce", envBuf+"="+name, envN+"=1048576", "HIPC_CHANNELS=1")
	consumeAll(t, h, 1, n)
	require.Equal(t, "sent 1048576", child.Line(t, time.Minute))
	child.MustSucceed(t, time.Minute)
	require.NoError(t, b.Check())
	after, err := b.Stats()
	require.NoError(t, err)
	require.Zero(t, after.Channels, "a drained channel whose ends closed is removed")
	require.Equal(t, before.Heap.FreeBytes, after.Heap.FreeBytes, "every byte came back: the child's slabs were returned by the last free")
}

// TestTwoprocShape: one producer process on channels 1 and 2 from one
// handle; here two goroutines, each with its own handle, consume them.
func TestTwoprocShape(t *testing.T) {
	b, name := openBuf(t)
	const n = 50000
	child := testutil.StartChild(t, "TestChildProduce", envBuf+"="+name, envN+"=50000", "HIPC_CHANNELS=2")
	var wg sync.WaitGroup
	for _, id := range []ipc.ChannelID{1, 2} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			h, err := b.NewHandle()
			if err != nil {
				t.Error(err)
				return
			}
			defer h.Close()
			consumeAll(t, h, id, n)
		}()
	}
	wg.Wait()
	child.MustSucceed(t, time.Minute)
}

// TestChildConsume receives N records on channel 1 and checks them.
func TestChildConsume(t *testing.T) {
	testutil.ChildOnly(t)
	b := attach(t)
	h := newHandle(t, b)
	consumeAll(t, h, 1, envInt(t, envN))
	testutil.Say("received")
}

func TestProducerClosesBeforeConsumerAttaches(t *testing.T) {
	b, name := openBuf(t)
	h := newHandle(t, b)
	p, err := h.Producer(1, ipc.WithCapacity(512))
	require.NoError(t, err)
	ctx := ctxFor(t)
	for i := 0; i < 500; i++ {
		r, err := h.Allocate(40)
		require.NoError(t, err)
		stamp(r, uint64(i))
		require.NoError(t, p.Send(ctx, r))
	}
	require.NoError(t, p.Close())
	c := testutil.StartChild(t, "TestChildConsume", envBuf+"="+name, envN+"=500")
	require.Equal(t, "received", c.Line(t, time.Minute))
	c.MustSucceed(t, time.Minute)
	st, err := b.Stats()
	require.NoError(t, err)
	require.Zero(t, st.Channels)
}

func TestBadUse(t *testing.T) {
	b, _ := openBuf(t, ipc.WithSize(4<<20))
	h := newHandle(t, b)
	ctx := ctxFor(t)

	// Wrong type.
	_, err := b.Static(ctx, "cfg", 64, nil)
	require.NoError(t, err)
	_, err = h.Producer(ipc.StaticID("cfg"))
	require.ErrorIs(t, err, ipc.ErrWrongType)

	// Second producer, second consumer.
	p, err := h.Producer(3)
	require.NoError(t, err)
	h2 := newHandle(t, b)
	_, err = h2.Producer(3)
	require.ErrorIs(t, err, ipc.ErrBusy)
	c, err := h2.Consumer(3)
	require.NoError(t, err)
	_, err = h.Consumer(3)
	require.ErrorIs(t, err, ipc.ErrBusy)
	_, err = h.Producer(4, ipc.WithCapacity(3))
	require.ErrorIs(t, err, ipc.ErrInvalidSize)

	// Unknown channel and static segment.
	require.ErrorIs(t, h.RemoveChannel(ctx, 999), ipc.ErrNotExist)
	_, err = b.AttachStatic("nope")
	require.ErrorIs(t, err, ipc.ErrNotExist)

	// Oversize record: bigger than the whole heap.
	_, err = h.Allocate(64 << 20)
	require.ErrorIs(t, err, ipc.ErrNoSpace)
	_, err = h.Allocate(-1)
	require.ErrorIs(t, err, ipc.ErrInvalidSize)

	// Sending a freed record, freeing twice.
	r, err := h.Allocate(32)
	require.NoError(t, err)
	require.NoError(t, h.Free(r))
	require.Error(t, p.TrySend(r), "a freed record is not sent")
	require.ErrorIs(t, h.Free(r), ipc.ErrDoubleFree)
	require.Error(t, h.Free(ipc.Record{}))
	_, err = c.TryReceive()
	require.ErrorIs(t, err, ipc.ErrWouldBlock, "nothing was queued by the failed send")

	// A large record works, and goes through a channel.
	big, err := h.Allocate(1 << 20)
	require.NoError(t, err)
	big.Bytes()[len(big.Bytes())-1] = 7
	require.NoError(t, p.Send(ctx, big))
	got, err := c.Receive(ctx)
	require.NoError(t, err)
	require.Equal(t, 1<<20, got.Len())
	require.Equal(t, byte(7), got.Bytes()[1<<20-1])
	require.NoError(t, h2.Free(got))

	require.NoError(t, p.Close())
	require.NoError(t, c.Close())
	require.NoError(t, b.Check())
}

// TestBatchForms: AllocateBatch, SendBatch, ReceiveBatch and FreeBatch
// carry records through in order; a full buffer gives ErrNoSpace and
// allocates nothing; FreeBatch frees every good record of a batch that
// also holds a double free and a zero record, and names the bad ones.
func TestBatchForms(t *testing.T) {
	b, _ := openBuf(t, ipc.WithSize(4<<20))
	h := newHandle(t, b)
	h2 := newHandle(t, b)
	ctx := ctxFor(t)
	free0 := freeBytes(t, b)
	p, err := h.Producer(5)
	require.NoError(t, err)
	c, err := h2.Consumer(5)
	require.NoError(t, err)
	rs := make([]ipc.Record, 100)
	got := make([]ipc.Record, 64)
	var seq uint64
	for round := 0; round < 50; round++ {
		require.NoError(t, h.AllocateBatch(24, rs))
		for _, r := range rs {
			require.Equal(t, 24, r.Len())
			stamp(r, seq)
			seq++
		}
		n, err := p.SendBatch(ctx, rs)
		require.NoError(t, err)
		require.Equal(t, len(rs), n)
		want := seq - uint64(len(rs))
		for want < seq {
			k, err := c.ReceiveBatch(ctx, got)
			require.NoError(t, err)
			for _, r := range got[:k] {
				check(t, r, want)
				want++
			}
			require.NoError(t, h2.FreeBatch(got[:k]))
		}
	}
	require.NoError(t, b.Check())

	// Too many for the buffer: nothing is allocated, and the slabs the
	// batch filled come back (with the handle's spares that are free).
	before := freeBytes(t, b)
	huge := make([]ipc.Record, 4<<20/64)
	require.ErrorIs(t, h.AllocateBatch(64, huge), ipc.ErrNoSpace)
	require.True(t, huge[0].IsZero())
	require.GreaterOrEqual(t, freeBytes(t, b), before, "a failed batch gives back what it took")

	// Bad records in a batch: one freed before, one twice.
	require.NoError(t, h.AllocateBatch(40, rs[:10]))
	require.NoError(t, h.Free(rs[3]))
	bad := append(append([]ipc.Record{}, rs[:10]...), rs[7])
	err = h.FreeBatch(bad)
	require.ErrorIs(t, err, ipc.ErrDoubleFree)
	require.Contains(t, err.Error(), "record 3:")
	require.Contains(t, err.Error(), "record 10:")
	require.Equal(t, 2, strings.Count(err.Error(), "\n")+1, err.Error())
	// And a zero record among good ones.
	require.NoError(t, h.AllocateBatch(40, rs[:3]))
	err = h.FreeBatch([]ipc.Record{rs[0], {}, rs[1], rs[2]})
	require.ErrorIs(t, err, ipc.ErrNotAllocated)
	require.Contains(t, err.Error(), "record 1:")
	require.Equal(t, 1, strings.Count(err.Error(), "\n")+1, err.Error())
	require.ErrorIs(t, p.TrySend(rs[5]), ipc.ErrNotAllocated, "a record freed in a batch is not sent")

	require.NoError(t, p.Close())
	require.NoError(t, c.Close())
	require.NoError(t, h.Close())
	require.NoError(t, h2.Close())
	require.NoError(t, b.Check())
	require.Equal(t, free0, freeBytes(t, b), "every record and slab went back")
}

// eachShape is the i-th SendEach call of TestEachAcrossProcesses: 1 to
// 200 records of 0 to 299 bytes (every 40th call 3 large ones).
func eachShape(i int) (n, size int) {
	if i%40 == 39 {
		return 3, 20000
	}
	return 1 + i*31%200, i * 17 % 300
}

// eachStamp and eachCheck write and check record seq of size bytes: its
// number where it fits, then a pattern.
func eachStamp(b []byte, seq uint64) {
	for i := range b {
		b[i] = byte(seq>>(8*(i%8))) ^ byte(i/8)
	}
}

func eachCheck(t *testing.T, b []byte, seq uint64) {
	for i := range b {
		if b[i] != byte(seq>>(8*(i%8)))^byte(i/8) {
			t.Fatalf("record %d (%d bytes): byte %d is %#x", seq, len(b), i, b[i])
		}
	}
}

// TestChildProduceEach sends the records of eachShape's calls 0 to
// HIPC_N-1 on channel 1 with SendEach, then closes.
func TestChildProduceEach(t *testing.T) {
	testutil.ChildOnly(t)
	h := newHandle(t, attach(t))
	p, err := h.Producer(1)
	require.NoError(t, err)
	ctx := ctxFor(t)
	var seq uint64
	for call := range envInt(t, envN) {
		n, size := eachShape(call)
		k, err := p.SendEach(ctx, n, size, func(i int, b []byte) { eachStamp(b, seq+uint64(i)) })
		require.NoError(t, err)
		require.Equal(t, n, k)
		seq += uint64(n)
	}
	require.NoError(t, p.Close())
	testutil.Say("sent %d", seq)
}

// TestEachAcrossProcesses: records sent with SendEach in another process
// (calls of every size, large records too) arrive through ReceiveEach
// here in order, whole, each of its size, then io.EOF; every byte comes
// back.
func TestEachAcrossProcesses(t *testing.T) {
	b, name := openBuf(t)
	free0 := freeBytes(t, b)
	h := newHandle(t, b)
	const calls = 3000
	var want uint64
	var sizes []int
	for call := range calls {
		n, size := eachShape(call)
		for range n {
			sizes = append(sizes, size)
		}
		want += uint64(n)
	}
	child := testutil.StartChild(t, "TestChildProduceEach", envBuf+"="+name, envN+"="+strconv.Itoa(calls))
	c, err := h.Consumer(1)
	require.NoError(t, err)
	ctx := ctxFor(t)
	var seq uint64
	for {
		n, err := c.ReceiveEach(ctx, 64, func(r []byte) {
			if len(r) != sizes[seq] {
				t.Fatalf("record %d has %d bytes, want %d", seq, len(r), sizes[seq])
			}
			eachCheck(t, r, seq)
			seq++
		})
		if errors.Is(err, io.EOF) {
			require.Zero(t, n)
			break
		}
		require.NoError(t, err, "after %d records", seq)
	}
	require.Equal(t, want, seq)
	require.Equal(t, fmt.Sprintf("sent %d", want), child.Line(t, time.Minute))
	child.MustSucceed(t, time.Minute)
	require.NoError(t, c.Close())
	require.NoError(t, h.Close())
	require.NoError(t, b.Check())
	require.Equal(t, free0, freeBytes(t, b), "every record and slab went back")
}

// packShape is the shape of the i-th pack TestPacksAcrossProcesses
// sends: 1 to 64 payloads of 8 to 71 bytes.
func packShape(i int) (count, size int) { return 1 + i%64, 8 + i*7%64 }

// TestPacksAcrossProcesses: packs of every shape reach another process
// intact and in order, payload by payload, and every byte comes back once
// the child has freed them.
func TestPacksAcrossProcesses(t *testing.T) {
	b, name := openBuf(t)
	h := newHandle(t, b)
	free0 := freeBytes(t, b)
	p, err := h.Producer(1)
	require.NoError(t, err)
	const packs = 3000
	child := testutil.StartChild(t, "TestChildConsumePacks", envBuf+"="+name)
	ctx := ctxFor(t)
	var seq uint64
	for i := range packs {
		pk, err := h.AllocatePack(packShape(i))
		require.NoError(t, err)
		for _, pl := range pk.All() {
			stampBytes(pl, seq)
			seq++
		}
		require.NoError(t, p.Send(ctx, pk.Record()))
	}
	require.NoError(t, p.Close())
	require.Equal(t, fmt.Sprintf("received %d payloads", seq), child.Line(t, time.Minute))
	child.MustSucceed(t, time.Minute)
	require.NoError(t, h.Close())
	require.NoError(t, b.Check())
	require.Equal(t, free0, freeBytes(t, b), "every pack and slab went back")
}

// childConsumer is a child's consumer end of channel 1 of the parent's
// buffer, with its handle.
func childConsumer(t *testing.T) (*ipc.Handle, *ipc.Consumer) {
	testutil.ChildOnly(t)
	h := newHandle(t, attach(t))
	c, err := h.Consumer(1)
	require.NoError(t, err)
	return h, c
}

// TestChildConsumePacks receives packs on channel 1 until EOF and checks
// each one's shape and payloads.
func TestChildConsumePacks(t *testing.T) {
	h, c := childConsumer(t)
	ctx := ctxFor(t)
	var seq uint64
	for i := 0; ; i++ {
		r, err := c.Receive(ctx)
		if err == io.EOF {
			break
		}
		require.NoError(t, err)
		pk, err := ipc.PackOf(r)
		require.NoError(t, err)
		count, size := packShape(i)
		require.Equal(t, count, pk.Len(), "pack %d", i)
		require.Equal(t, size, pk.Size(), "pack %d", i)
		for _, pl := range pk.All() {
			checkBytes(t, pl, seq)
			seq++
		}
		require.NoError(t, h.Free(r))
	}
	require.NoError(t, c.Close())
	testutil.Say("received %d payloads", seq)
}

// TestChildHoldConsumer consumes channel 1 slowly and waits to be killed.
func TestChildHoldConsumer(t *testing.T) {
	h, c := childConsumer(t)
	ctx := ctxFor(t)
	for i := 0; i < 10; i++ {
		r, err := c.Receive(ctx)
		require.NoError(t, err)
		if i%2 == 0 {
			require.NoError(t, h.Free(r)) // keep the odd ones: held when killed
		}
	}
	testutil.Say("holding")
	time.Sleep(time.Minute)
}

func TestConsumerKilledMidStream(t *testing.T) {
	b, name := openBuf(t)
	h := newHandle(t, b)
	before, err := b.Stats()
	require.NoError(t, err)
	p, err := h.Producer(1, ipc.WithCapacity(64))
	require.NoError(t, err)
	child := testutil.StartChild(t, "TestChildHoldConsumer", envBuf+"="+name)
	ctx := ctxFor(t)
	sent := 0
	var views []ipc.Record // what the producer kept of what it sent
	send := func() error {
		r, err := h.Allocate(100)
		if err != nil {
			return err
		}
		stamp(r, uint64(sent))
		if err := p.Send(ctx, r); err != nil {
			h.Free(r)
			return err
		}
		views = append(views, r)
		sent++
		return nil
	}
	for i := 0; i < 10; i++ {
		require.NoError(t, send())
	}
	require.Equal(t, "holding", child.Line(t, time.Minute))
	// A view the producer kept of a record it sent is not its to free
	// once the consumer holds the record (the odd ones): freeing it
	// would free the consumer's record under it. One the consumer freed
	// is a double free.
	for _, free := range []func(ipc.Record) error{h.Free, b.Free, func(r ipc.Record) error { return h.FreeBatch([]ipc.Record{r}) }} {
		require.ErrorIs(t, free(views[1]), ipc.ErrNotAllocated, "a record another live process holds")
		require.ErrorIs(t, free(views[2]), ipc.ErrDoubleFree)
	}
	child.Kill()
	var err2 error
	for err2 == nil {
		err2 = send()
	}
	require.ErrorIs(t, err2, ipc.ErrPeerDead, "the producer learns the consumer died instead of blocking")
	// The consumer died: what it held comes back through a view too (and
	// Recover frees the rest).
	require.NoError(t, h.Free(views[1]))
	require.NoError(t, p.Close())
	require.NoError(t, h.RemoveChannel(ctx, 1), "the dead consumer's end does not block removal")
	_, err = b.Recover()
	require.NoError(t, err)
	require.NoError(t, b.Check())
	require.NoError(t, h.Close())
	after, err := b.Stats()
	require.NoError(t, err)
	require.Equal(t, before.Heap.FreeBytes, after.Heap.FreeBytes, "the dead consumer's records came back")
}

// TestChildProduceForever sends until killed.
func TestChildProduceForever(t *testing.T) {
	testutil.ChildOnly(t)
	b := attach(t)
	h := newHandle(t, b)
	p, err := h.Producer(1, ipc.WithCapacity(64))
	require.NoError(t, err)
	ctx := ctxFor(t)
	for i := 0; ; i++ {
		r, err := h.Allocate(100)
		require.NoError(t, err)
		stamp(r, uint64(i))
		require.NoError(t, p.Send(ctx, r))
		if i == 40 {
			testutil.Say("streaming")
		}
	}
}

func TestProducerKilledMidStream(t *testing.T) {
	b, name := openBuf(t)
	h := newHandle(t, b)
	before, err := b.Stats()
	require.NoError(t, err)
	c, err := h.Consumer(1, ipc.WithCapacity(64))
	require.NoError(t, err)
	child := testutil.StartChild(t, "TestChildProduceForever", envBuf+"="+name)
	ctx := ctxFor(t)
	var held []ipc.Record
	next := uint64(0)
	for len(held) < 20 {
		r, err := c.Receive(ctx)
		require.NoError(t, err)
		check(t, r, next)
		next++
		held = append(held, r)
	}
	require.Equal(t, "streaming", child.Line(t, time.Minute))
	child.Kill()
	// What the dead producer queued is still delivered, then ErrPeerDead.
	for {
		r, err := c.Receive(ctx)
		if err != nil {
			require.ErrorIs(t, err, ipc.ErrPeerDead)
			break
		}
		check(t, r, next)
		next++
		require.NoError(t, h.Free(r))
	}
	// Records of the dead producer that we still hold stay valid through
	// recovery.
	_, err = b.Recover()
	require.NoError(t, err)
	for i, r := range held {
		check(t, r, uint64(i))
		require.NoError(t, h.Free(r))
	}
	require.NoError(t, c.Close())
	_, err = b.Recover()
	require.NoError(t, err)
	require.NoError(t, b.Check())
	after, err := b.Stats()
	require.NoError(t, err)
	require.Zero(t, after.Channels)
	require.Equal(t, before.Heap.FreeBytes, after.Heap.FreeBytes, "the dead producer's memory came back")
}

// TestDestroyWhileAttached: waiters of an attachment learn at their next
// check that another attachment destroyed the buffer — one whose peer
// end nobody holds (parked on the futex), and one whose idle producer is
// of its own process (parked in the Go scheduler, where the check timer
// has fired and been armed again a few times before the destroy).
func TestDestroyWhileAttached(t *testing.T) {
	b, name := openBuf(t)
	other, err := ipc.Open(name, ipc.AttachOnly(), ipc.WithCheckInterval(10*time.Millisecond))
	require.NoError(t, err)
	h, err := other.NewHandle()
	require.NoError(t, err)
	c, err := h.Consumer(1)
	require.NoError(t, err)
	h2, err := other.NewHandle()
	require.NoError(t, err)
	_, err = h2.Producer(2)
	require.NoError(t, err)
	c2, err := h2.Consumer(2, ipc.WithSpin(-1))
	require.NoError(t, err)
	done := make(chan error, 2)
	for _, c := range []*ipc.Consumer{c, c2} {
		go func() { _, err := c.Receive(context.Background()); done <- err }()
	}
	time.Sleep(50 * time.Millisecond)
	require.NoError(t, b.Check())
	// Destroy through the first buffer (the cleanup then sees it closed).
	require.NoError(t, b.Destroy())
	for range 2 {
		select {
		case err := <-done:
			require.ErrorIs(t, err, ipc.ErrDestroyed)
		case <-time.After(10 * time.Second):
			t.Fatal("a consumer of a destroyed buffer hung")
		}
	}
	require.NoError(t, other.Close())
	_, err = ipc.Open(name, ipc.AttachOnly())
	require.ErrorIs(t, err, ipc.ErrNotExist, "the name is gone")
}

// TestRemoveCleansChannelSemaphores: ipc.Remove of a buffer that a
// program left behind also removes the semaphores its mailboxes made (the
// leak check fails the run otherwise).
func TestRemoveCleansChannelSemaphores(t *testing.T) {
	name := testutil.Name(t)
	b, err := ipc.Open(name, ipc.WithSize(16<<20))
	require.NoError(t, err)
	h, err := b.NewHandle()
	require.NoError(t, err)
	_, err = h.Requester(5, ipc.WithWindow(4096))
	require.NoError(t, err)
	require.NoError(t, b.Close()) // detached, not destroyed
	require.NoError(t, ipc.Remove(name, "", ""))
	_, err = ipc.Open(name, ipc.AttachOnly())
	require.ErrorIs(t, err, ipc.ErrNotExist)
}

// TestModeReachesSemaphores: a buffer created with a mode makes its
// semaphores with that mode too, so whoever may open the segment can open
// them.
func TestModeReachesSemaphores(t *testing.T) {
	b, err := ipc.Open(testutil.Name(t), ipc.WithSize(4<<20), ipc.WithMode(0o640), ipc.WithBackends("posix", "posix"))
	require.NoError(t, err)
	defer b.Destroy()
	h, err := b.NewHandle()
	require.NoError(t, err)
	_, err = h.Requester(1, ipc.WithWindow(4096))
	require.NoError(t, err)
	files, err := filepath.Glob("/dev/shm/*" + b.Name() + "*")
	require.NoError(t, err)
	require.GreaterOrEqual(t, len(files), 1+2+4, "segment, heap and registry semaphores, 4 mailbox semaphores")
	for _, f := range files {
		fi, err := os.Stat(f)
		require.NoError(t, err)
		require.Equal(t, os.FileMode(0o640), fi.Mode().Perm(), f)
	}
}

// TestPingPongParked bounces one record between two goroutines over two
// channels, every end parking at once (no spin) with an hour between its
// checks, so that only the peer's wake-up ends a wait: with all four ends
// on one mapping of the buffer, and with each goroutine's ends on a
// mapping of its own (two Opens in one process). An end whose peer is of
// this process parks in the Go scheduler; a waker on the other mapping
// must find it there all the same.
func TestPingPongParked(t *testing.T) {
	for _, two := range []bool{false, true} {
		t.Run(map[bool]string{false: "one mapping", true: "two mappings"}[two], func(t *testing.T) {
			a, name := openBuf(t, ipc.WithCheckInterval(time.Hour))
			b := a
			if two {
				var err error
				b, err = ipc.Open(name, ipc.WithCheckInterval(time.Hour))
				require.NoError(t, err)
				t.Cleanup(func() { require.NoError(t, b.Close()) })
			}
			ha, hb := newHandle(t, a), newHandle(t, b)
			pa, err := ha.Producer(1, ipc.WithSpin(-1))
			require.NoError(t, err)
			ca, err := ha.Consumer(2, ipc.WithSpin(-1))
			require.NoError(t, err)
			pb, err := hb.Producer(2, ipc.WithSpin(-1))
			require.NoError(t, err)
			cb, err := hb.Consumer(1, ipc.WithSpin(-1))
			require.NoError(t, err)
			ctx := testutil.Context(t, 30*time.Second)
			const rounds = 2000
			done := make(chan error, 1)
			go func() {
				for range rounds {
					r, err := cb.Receive(ctx)
					if err != nil {
						done <- err
						return
					}
					r.Bytes()[0]++
					if err := pb.Send(ctx, r); err != nil {
						done <- err
						return
					}
				}
				done <- nil
			}()
			r, err := ha.Allocate(8)
			require.NoError(t, err)
			r.Bytes()[0] = 0
			for i := range rounds {
				require.NoError(t, pa.Send(ctx, r), "round %d", i)
				r, err = ca.Receive(ctx)
				require.NoError(t, err, "round %d", i)
				require.Equal(t, byte(i+1), r.Bytes()[0], "round %d", i)
			}
			require.NoError(t, <-done)
			require.NoError(t, ha.Free(r))
			for _, e := range []interface{ Close() error }{pa, ca, pb, cb} {
				require.NoError(t, e.Close())
			}
		})
	}
}
