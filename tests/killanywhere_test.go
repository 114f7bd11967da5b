package tests

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	ipc "github.com/heapipc/ipc"
	"github.com/heapipc/ipc/internal/testutil"
)

const (
	envBatch      = "HIPC_BATCH"
	envKillRounds = "HIPC_KILL_ROUNDS" // rounds of the kill-anywhere tests (make soak)
	envOnce       = "HIPC_ONCE"
)

// killRounds is how many children the kill-anywhere tests kill: 24 (8
// with -short), or HIPC_KILL_ROUNDS.
func killRounds(t *testing.T) int {
	if s := os.Getenv(envKillRounds); s != "" {
		n, err := strconv.Atoi(s)
		require.NoError(t, err, envKillRounds)
		return n
	}
	if testing.Short() {
		return 8
	}
	return 24
}

// TestChildStreamConsumer receives on channel HIPC_N of the parent's
// buffer as fast as it can, freeing each record (or, with HIPC_BATCH, up
// to 64 at a time with ReceiveBatch and FreeBatch; with HIPC_BATCH=each,
// with ReceiveEach), until it is killed.
func TestChildStreamConsumer(t *testing.T) {
	testutil.ChildOnly(t)
	h := newHandle(t, attach(t))
	c, err := h.Consumer(ipc.ChannelID(envInt(t, envN)))
	require.NoError(t, err)
	ctx := ctxFor(t)
	testutil.Say("ready")
	if os.Getenv(envBatch) == "each" {
		for {
			_, err := c.ReceiveEach(ctx, 64, func(b []byte) {
				if len(b) < 8 {
					t.Fatalf("a record of %d bytes", len(b))
				}
			})
			require.NoError(t, err)
		}
	}
	if os.Getenv(envBatch) != "" {
		rs := make([]ipc.Record, 64)
		for {
			k, err := c.ReceiveBatch(ctx, rs)
			require.NoError(t, err)
			require.NoError(t, h.FreeBatch(rs[:k]))
		}
	}
	freeForever(t, h, func() (ipc.Record, error) { return c.Receive(ctx) })
}

// TestChildStreamProducer sends numbered records on channel HIPC_N of
// the parent's buffer as fast as it can (recordSize: every 32nd large;
// with HIPC_BATCH, 64 of 100 bytes at a time with AllocateBatch and
// SendBatch; with HIPC_BATCH=each, SendEach calls of 64 records of 100
// bytes, every eighth call 8 large ones), until it is killed.
func TestChildStreamProducer(t *testing.T) {
	testutil.ChildOnly(t)
	h := newHandle(t, attach(t))
	p, err := h.Producer(ipc.ChannelID(envInt(t, envN)))
	require.NoError(t, err)
	ctx := ctxFor(t)
	testutil.Say("ready")
	rs := make([]ipc.Record, 64)
	for seq, call := uint64(0), 0; ; call++ {
		if os.Getenv(envBatch) == "each" {
			n, size := 64, 100
			if call%8 == 7 {
				n, size = 8, recordSize(31)
			}
			k, err := p.SendEach(ctx, n, size, func(i int, b []byte) { stampBytes(b, seq+uint64(i)) })
			require.NoError(t, err)
			require.Equal(t, n, k)
			seq += uint64(n)
			continue
		}
		if os.Getenv(envBatch) == "" {
			r, err := h.Allocate(recordSize(seq))
			require.NoError(t, err)
			stamp(r, seq)
			require.NoError(t, p.Send(ctx, r))
			seq++
			continue
		}
		require.NoError(t, h.AllocateBatch(100, rs))
		for _, r := range rs {
			stamp(r, seq)
			seq++
		}
		n, err := p.SendBatch(ctx, rs)
		require.NoError(t, err)
		require.Equal(t, len(rs), n)
	}
}

// killRound starts a child (test, on channel 1 of b, and 2 for a
// forwarder; HIPC_BATCH=batch unless batch is empty: which forms the
// child uses), runs the parent's end with run until it returns, which must be
// after the child was killed at a moment the test does not choose (1 to
// 15 ms after it said it was ready; kill is closed then), and then checks
// the buffer: after Recover, Check passes with the parent's handle still
// open; once that handle is closed and Recover has run again, every byte
// is back.
func killRound(t *testing.T, b *ipc.Buffer, name, test string, batch string, remove func(h *ipc.Handle) error, run func(h *ipc.Handle, killed <-chan struct{})) {
	t.Helper()
	free0 := freeBytes(t, b)
	h, err := b.NewHandle()
	require.NoError(t, err)
	// The same ids each round (the registry keeps its entry storage):
	// the child's end is on channel 1 (a forwarder's also on 2).
	env := []string{envBuf + "=" + name, envN + "=1"}
	if batch != "" {
		env = append(env, envBatch+"="+batch)
	}
	child := startReady(t, test, env...)
	killed := make(chan struct{})
	go func() {
		time.Sleep(killDelay())
		child.Kill()
		close(killed)
	}()
	run(h, killed)
	<-killed
	require.NoError(t, remove(h), "the dead end does not block removal")
	recoverAndCheck(t, b, "after Recover, the parent's handle still open")
	// A slab whose count a process killed while freeing never lowered
	// goes back once it is retired and all free (the parent's handle
	// closed) and Recover has seen it so.
	require.NoError(t, h.Close())
	allBack(t, b, free0, "every record and slab came back")
}

// TestConsumerKilledAnywhere kills a consumer that receives and frees at
// full speed at a moment the test does not choose, over and over, one at
// a time and with the batch forms: wherever the kill lands (in a receive,
// between a record's freed mark and its bitmap or a large record's heap
// free, between two bitmap words, between a word and the slab's count, in
// a batch's frees, holding the heap lock), the producer
// learns of it, and after the channel is removed and the buffer
// recovered, Check passes and every byte comes back (killRound).
func TestConsumerKilledAnywhere(t *testing.T) {
	b, name := openBuf(t)
	for i := range killRounds(t) {
		batch := forms[i%len(forms)]
		killRound(t, b, name, "TestChildStreamConsumer", batch, removeRecordChannels, func(h *ipc.Handle, _ <-chan struct{}) {
			p, err := h.Producer(1)
			require.NoError(t, err)
			ctx := ctxFor(t)
			for seq := uint64(0); ; seq++ {
				r, err := h.Allocate(recordSize(seq))
				require.NoError(t, err)
				stamp(r, seq)
				if err := p.Send(ctx, r); err != nil {
					require.ErrorIs(t, err, ipc.ErrPeerDead, "round %d (forms %q)", i, batch)
					require.NoError(t, h.Free(r))
					break
				}
			}
			require.NoError(t, p.Close())
		})
	}
}

// forms are the values of HIPC_BATCH the record channel's kill tests
// take turns with: one record at a time, the batch forms, the fused
// batch forms.
var forms = []string{"", "1", "each"}

// batchIf is HIPC_BATCH=1 if b.
func batchIf(b bool) string {
	if b {
		return "1"
	}
	return ""
}

// recordSize is the size of record seq in the kill tests: 100 bytes, and
// every 32nd a large record (its own heap extent, allocated and freed
// under the heap lock).
func recordSize(seq uint64) int {
	if seq%32 == 31 {
		return 10000
	}
	return 100
}

// TestProducerKilledAnywhere kills a producer that allocates and sends at
// full speed (one at a time, and with the batch forms) at a moment the
// test does not choose: the consumer gets every record it sent, in order,
// then ErrPeerDead; after the channel is removed and the buffer
// recovered, Check passes and every byte comes back (killRound).
func TestProducerKilledAnywhere(t *testing.T) {
	b, name := openBuf(t)
	for i := range killRounds(t) {
		batch := forms[i%len(forms)]
		killRound(t, b, name, "TestChildStreamProducer", batch, removeRecordChannels, func(h *ipc.Handle, killed <-chan struct{}) {
			c, err := h.Consumer(1)
			require.NoError(t, err)
			ctx := ctxFor(t)
			var seq uint64
			for {
				r, err := c.Receive(ctx)
				if err != nil {
					if !errors.Is(err, io.EOF) {
						require.ErrorIs(t, err, ipc.ErrPeerDead, "round %d (forms %q) after %d records", i, batch, seq)
					}
					break
				}
				check(t, r, seq)
				seq++
				require.NoError(t, h.Free(r))
			}
			require.NoError(t, c.Close())
		})
	}
}

// TestChildLoopbackEach runs both ends of record channel 1 of the
// parent's buffer, a goroutine and a handle each: SendEach (calls of 64
// records of 100 bytes, every eighth call 8 large ones) and ReceiveEach,
// which checks each record's number, until it is killed. Its consumer
// takes records its own process sent: ReceiveEach's fused pass, which
// moves the head before it checks, uses and frees them.
func TestChildLoopbackEach(t *testing.T) {
	testutil.ChildOnly(t)
	b := attach(t)
	hp, hc := newHandle(t, b), newHandle(t, b)
	p, err := hp.Producer(1)
	require.NoError(t, err)
	c, err := hc.Consumer(1)
	require.NoError(t, err)
	ctx := ctxFor(t)
	go func() {
		for seq, call := uint64(0), 0; ; call++ {
			n, size := 64, 100
			if call%8 == 7 {
				n, size = 8, recordSize(31)
			}
			k, err := p.SendEach(ctx, n, size, func(i int, b []byte) { stampBytes(b, seq+uint64(i)) })
			if err != nil || k != n {
				panic(fmt.Sprintf("SendEach sent %d of %d: %v", k, n, err))
			}
			seq += uint64(n)
		}
	}()
	testutil.Say("ready")
	var want uint64
	for {
		_, err := c.ReceiveEach(ctx, 64, func(b []byte) {
			if got := binary.LittleEndian.Uint64(b); got != want {
				panic(fmt.Sprintf("record %d where %d was expected", got, want))
			}
			want++
		})
		require.NoError(t, err)
	}
}

// TestLoopbackEachKilledAnywhere kills a process that runs both ends of
// a record channel with SendEach and ReceiveEach, at a moment the test
// does not choose: wherever the kill lands (in a carving, between the
// consumer's head and its frees, between a freed mark and the bits),
// after the channel is removed and the buffer recovered, Check passes
// and every byte comes back.
func TestLoopbackEachKilledAnywhere(t *testing.T) {
	b, name := openBuf(t)
	for i := range killRounds(t) {
		free0 := freeBytes(t, b)
		killAfterReady(t, "TestChildLoopbackEach", envBuf+"="+name)
		h, err := b.NewHandle()
		require.NoError(t, err)
		require.NoError(t, removeRecordChannels(h), "round %d: the dead ends do not block removal", i)
		recoverAndCheck(t, b, "round %d, after Recover", i)
		require.NoError(t, h.Close())
		allBack(t, b, free0, "round %d: every record and slab came back", i)
	}
}

// TestChildForwarder forwards the records of channel 1 of the parent's
// buffer to channel 2, zero-copy, as fast as it can (with HIPC_BATCH, up
// to 64 at a time with ReceiveBatch and SendBatch), until it is killed.
func TestChildForwarder(t *testing.T) {
	testutil.ChildOnly(t)
	h := newHandle(t, attach(t))
	c, err := h.Consumer(1)
	require.NoError(t, err)
	p, err := h.Producer(2)
	require.NoError(t, err)
	ctx := ctxFor(t)
	testutil.Say("ready")
	rs := make([]ipc.Record, 64)
	for {
		if os.Getenv(envBatch) == "" {
			r, err := c.Receive(ctx)
			require.NoError(t, err)
			require.NoError(t, p.Send(ctx, r))
			continue
		}
		k, err := c.ReceiveBatch(ctx, rs)
		require.NoError(t, err)
		n, err := p.SendBatch(ctx, rs[:k])
		require.NoError(t, err)
		require.Equal(t, k, n)
	}
}

// TestForwarderKilledAnywhere kills the middle stage of a pipeline (it
// forwards channel 1 to channel 2 without copying, one at a time and
// with the batch forms) at a moment the test does not choose: the first
// stage and the last learn of it, the last gets an unbroken prefix of
// what the first sent, in order, and after both channels are removed and
// the buffer recovered, Check passes and every byte comes back: the
// records the forwarder held when it died too (killRound).
func TestForwarderKilledAnywhere(t *testing.T) {
	b, name := openBuf(t)
	for i := range killRounds(t) {
		batch := forms[i%2] // the forwarder forwards Records: no fused form
		killRound(t, b, name, "TestChildForwarder", batch, removeRecordChannels, func(h *ipc.Handle, _ <-chan struct{}) {
			p, err := h.Producer(1)
			require.NoError(t, err)
			h2, err := b.NewHandle()
			require.NoError(t, err)
			c, err := h2.Consumer(2)
			require.NoError(t, err)
			ctx := ctxFor(t)
			got := make(chan error, 1)
			go func() {
				var seq uint64
				for {
					r, err := c.Receive(ctx)
					if err != nil {
						if !errors.Is(err, ipc.ErrPeerDead) {
							err = fmt.Errorf("after %d records: %w", seq, err)
						} else {
							err = nil
						}
						got <- errors.Join(err, c.Close(), h2.Close())
						return
					}
					if binary.LittleEndian.Uint64(r.Bytes()) != seq {
						got <- fmt.Errorf("record %d arrived where %d was expected", binary.LittleEndian.Uint64(r.Bytes()), seq)
						return
					}
					seq++
					if err := h2.Free(r); err != nil {
						got <- err
						return
					}
				}
			}()
			for seq := uint64(0); ; seq++ {
				r, err := h.Allocate(100)
				require.NoError(t, err)
				stamp(r, seq)
				if err := p.Send(ctx, r); err != nil {
					require.ErrorIs(t, err, ipc.ErrPeerDead, "round %d (batch %v)", i, batch)
					require.NoError(t, h.Free(r))
					break
				}
			}
			require.NoError(t, p.Close())
			require.NoError(t, <-got, "round %d (batch %v): the last stage", i, batch)
		})
	}
}

// TestChildChurnChannels creates, uses and removes record channels 1 to
// 8 of the parent's buffer in a loop (a producer and a consumer end in
// one handle, a record through, both closed, the channel removed; every
// other time a record is left queued for the removal to free) until it is
// killed.
func TestChildChurnChannels(t *testing.T) {
	testutil.ChildOnly(t)
	h := newHandle(t, attach(t))
	ctx := ctxFor(t)
	testutil.Say("ready")
	for i := 0; ; i++ {
		id := ipc.ChannelID(1 + i%8)
		p, err := h.Producer(id, ipc.WithCapacity(16))
		require.NoError(t, err)
		c, err := h.Consumer(id)
		require.NoError(t, err)
		for range 1 + i%2 {
			r, err := h.Allocate(100)
			require.NoError(t, err)
			require.NoError(t, p.Send(ctx, r))
		}
		r, err := c.Receive(ctx)
		require.NoError(t, err)
		require.NoError(t, h.Free(r))
		require.NoError(t, p.Close())
		require.NoError(t, c.Close())
		if err := h.RemoveChannel(ctx, id); !errors.Is(err, ipc.ErrNotExist) {
			require.NoError(t, err)
		}
	}
}

// TestChurnerKilledAnywhere kills a process that creates, uses and
// removes channels at full speed, at a moment the test does not choose
// (in a creation, a removal, a send): after Recover, Check passes and,
// once what it left is removed, every byte is back.
func TestChurnerKilledAnywhere(t *testing.T) {
	b, name := openBuf(t)
	for i := range killRounds(t) {
		free0 := freeBytes(t, b)
		killAfterReady(t, "TestChildChurnChannels", envBuf+"="+name)
		recoverAndCheck(t, b, "round %d", i)
		h, err := b.NewHandle()
		require.NoError(t, err)
		require.NoError(t, removeChannelsUpTo(h, 8), "round %d", i)
		require.NoError(t, h.Close())
		allBack(t, b, free0, "round %d: every byte came back", i)
	}
}

// staticName and staticSize are static segment k of the static kill
// test (k < 4): sizes from 256 KiB on, so that init takes a while (a
// kill lands inside it in about one round in ten).
func staticName(k int) string { return "kill-static-" + strconv.Itoa(k) }

func staticSize(k int) int { return 256<<10 + k*4096 + k }

// staticInit fills segment k with byte(k+1), every byte: what every
// attacher must find, never a part of it.
func staticInit(k int) func([]byte) error {
	return func(b []byte) error {
		for i := range b {
			b[i] = byte(k + 1)
		}
		return nil
	}
}

// requireStatic checks that s, segment k, holds what staticInit(k) wrote.
func requireStatic(t *testing.T, s *ipc.Static, k int, msg ...any) {
	t.Helper()
	b := s.Bytes()
	require.Len(t, b, staticSize(k), msg...)
	for i, v := range b {
		if v != byte(k+1) {
			require.Failf(t, "static segment not as its init left it", "%s byte %d is %d, not %d: %v", staticName(k), i, v, k+1, fmt.Sprint(msg...))
		}
	}
}

// TestChildChurnStatics creates (running staticInit), checks and, every
// other time, removes static segments 0 to 3 of the parent's buffer in a
// loop until it is killed.
func TestChildChurnStatics(t *testing.T) {
	testutil.ChildOnly(t)
	b := attach(t)
	ctx := ctxFor(t)
	testutil.Say("ready")
	for i := 0; ; i++ {
		k := i % 4
		s, err := b.Static(ctx, staticName(k), staticSize(k), staticInit(k))
		require.NoError(t, err)
		requireStatic(t, s, k)
		if i%8 < 4 {
			if err := s.Remove(ctx); !errors.Is(err, ipc.ErrNotExist) {
				require.NoError(t, err)
			}
		}
	}
}

// TestStaticCreatorKilledAnywhere kills a process that creates, checks
// and removes static segments at full speed, at a moment the test does not
// choose (in a creation, inside an init, in a removal): this process then
// gets each segment, before any Recover, made anew or as the dead one's
// init left it whole, within a bounded time, never half made; after
// Recover, Check passes, and once the segments are removed every byte is
// back.
func TestStaticCreatorKilledAnywhere(t *testing.T) {
	b, name := openBuf(t)
	for i := range killRounds(t) {
		free0 := freeBytes(t, b)
		killAfterReady(t, "TestChildChurnStatics", envBuf+"="+name)
		ss := make([]*ipc.Static, 4)
		for k := range ss {
			ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
			s, err := b.Static(ctx, staticName(k), staticSize(k), staticInit(k))
			cancel()
			require.NoError(t, err, "round %d: segment %d", i, k)
			requireStatic(t, s, k, "round ", i)
			ss[k] = s
		}
		recoverAndCheck(t, b, "round %d", i)
		for k, s := range ss {
			require.NoError(t, s.Remove(t.Context()), "round %d: segment %d", i, k)
		}
		allBack(t, b, free0, "round %d: every byte came back", i)
	}
}

// TestChildMPSCProducer sends records of 100 bytes on MPSC channel 1 of
// the parent's buffer as fast as it can, until it is killed.
func TestChildMPSCProducer(t *testing.T) {
	testutil.ChildOnly(t)
	h := newHandle(t, attach(t))
	p, err := h.MPSCProducer(1)
	require.NoError(t, err)
	ctx := ctxFor(t)
	testutil.Say("ready")
	for seq := uint64(0); ; seq++ {
		r, err := h.Allocate(100)
		require.NoError(t, err)
		stamp(r, seq)
		require.NoError(t, p.Send(ctx, r))
	}
}

// TestMPSCProducerKilledAnywhere kills one of two producers of an MPSC
// channel, each sending at full speed, at a moment the test does not
// choose (in an allocation, between claiming a slot and publishing it):
// the consumer keeps receiving the other producer's records, all of them,
// in order, without waiting on the dead one's slot for good; once it is
// drained and its live ends closed, Recover removes the channel, Check
// passes and every byte comes back.
func TestMPSCProducerKilledAnywhere(t *testing.T) {
	b, name := openBuf(t)
	const (
		after     = 2000    // records the live producer sends after the kill
		afterKill = 1 << 40 // added to their numbers
	)
	for i := range killRounds(t) {
		free0 := freeBytes(t, b)
		h, err := b.NewHandle()
		require.NoError(t, err)
		c, err := h.MPSCConsumer(1, ipc.WithCapacity(256))
		require.NoError(t, err)
		child := startReady(t, "TestChildMPSCProducer", envBuf+"="+name)
		hp, err := b.NewHandle()
		require.NoError(t, err)
		p, err := hp.MPSCProducer(1)
		require.NoError(t, err)
		ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
		sent := make(chan error, 1)
		go func() {
			kill := time.Now().Add(killDelay())
			var err error
			n := uint64(0)
			for killed := false; err == nil && (!killed || n < after); {
				if !killed && time.Now().After(kill) {
					child.Kill()
					killed, n = true, 0
				}
				var r ipc.Record
				if r, err = hp.Allocate(200); err == nil {
					if killed {
						stampBytes(r.Bytes(), afterKill|n)
					} else {
						stampBytes(r.Bytes(), n)
					}
					err = p.Send(ctx, r)
				}
				n++
			}
			sent <- errors.Join(err, p.Close())
		}()
		// The live producer's records in order: its count starts again
		// from afterKill at the kill.
		var next uint64
		for next != afterKill|after {
			r, err := c.Receive(ctx)
			require.NoError(t, err, "round %d: waiting for record %#x of the live producer", i, next)
			if len(r.Bytes()) == 200 {
				seq := binary.LittleEndian.Uint64(r.Bytes())
				if seq != next {
					require.Equal(t, uint64(afterKill), seq, "round %d: record %#x arrived where %#x was expected", i, seq, next)
				}
				next = seq + 1
			}
			require.NoError(t, h.Free(r))
		}
		require.NoError(t, <-sent)
		// Drained (the dead producer's records, a slot it claimed and
		// never published skipped) and closed by its live ends, the
		// channel goes with Recover.
		for {
			dctx, dcancel := context.WithTimeout(ctx, 300*time.Millisecond)
			r, err := c.Receive(dctx)
			dcancel()
			if errors.Is(err, io.EOF) || errors.Is(err, context.DeadlineExceeded) {
				break
			}
			require.NoError(t, err, "round %d: draining", i)
			require.NoError(t, h.Free(r))
		}
		cancel()
		require.NoError(t, c.Close())
		recoverAndCheck(t, b, "round %d: after Recover, the parent's handles still open", i)
		require.NoError(t, hp.Close())
		require.NoError(t, h.Close())
		allBack(t, b, free0, "round %d: every record and slab came back", i)
	}
}

// TestChildMPSCConsumer receives and frees on MPSC channel 1 of the
// parent's buffer as fast as it can, until it is killed.
func TestChildMPSCConsumer(t *testing.T) {
	testutil.ChildOnly(t)
	h := newHandle(t, attach(t))
	c, err := h.MPSCConsumer(1)
	require.NoError(t, err)
	ctx := ctxFor(t)
	testutil.Say("ready")
	freeForever(t, h, func() (ipc.Record, error) { return c.Receive(ctx) })
}

// TestMPSCConsumerKilledAnywhere kills the consumer of an MPSC channel
// fed by two producers at a moment the test does not choose: both
// producers learn of it; after Recover, Check passes (Head is the
// consumer's only state in the ring, so a consumer killed anywhere leaves
// nothing half done there; Recover gives back what it held); a new
// consumer takes the dead one's place and gets what was
// still queued, each producer's records in order; once it has drained
// the channel and closed, Recover removes it, Check passes and every byte
// is back.
func TestMPSCConsumerKilledAnywhere(t *testing.T) {
	b, name := openBuf(t)
	for i := range killRounds(t) {
		free0 := freeBytes(t, b)
		child := startReady(t, "TestChildMPSCConsumer", envBuf+"="+name)
		ctx := ctxFor(t)
		hs, errs := sendUntilFailure(t, b, ctx, false, func(h *ipc.Handle, k int) (sender, int, error) {
			p, err := h.MPSCProducer(1)
			return p, 100 + 16*k, err
		})
		time.Sleep(killDelay())
		child.Kill()
		for range hs {
			require.ErrorIs(t, <-errs, ipc.ErrPeerDead, "round %d", i)
		}
		// Recover first (the records the dead consumer held come back),
		// and Check passes.
		recoverAndCheck(t, b, "round %d: after Recover, the records still queued", i)
		hc, err := b.NewHandle()
		require.NoError(t, err)
		c, err := hc.MPSCConsumer(1)
		require.NoError(t, err, "round %d: the dead consumer's place is taken", i)
		next := map[int]uint64{}
		first := map[int]bool{}
		for {
			r, err := c.Receive(ctx)
			if errors.Is(err, io.EOF) {
				break
			}
			require.NoError(t, err, "round %d: draining", i)
			k := (len(r.Bytes()) - 100) / 16
			seq := binary.LittleEndian.Uint64(r.Bytes())
			// The dead consumer took what came before; from the first
			// record left, each producer's follow in order.
			if first[k] {
				require.Equal(t, next[k], seq, "round %d: producer %d", i, k)
			}
			first[k], next[k] = true, seq+1
			require.NoError(t, hc.Free(r))
		}
		require.NoError(t, c.Close())
		for _, h := range hs {
			require.NoError(t, h.Close())
		}
		require.NoError(t, hc.Close())
		allBack(t, b, free0, "round %d: every record and slab came back", i)
	}
}

// TestChildSelectConsumer receives on channels 1 and 2 of the parent's
// buffer through one Select (parking on its doorbell when both are
// empty) and frees each record, until it is killed.
func TestChildSelectConsumer(t *testing.T) {
	testutil.ChildOnly(t)
	h := newHandle(t, attach(t))
	var cs []ipc.Receiver
	for id := ipc.ChannelID(1); id <= 2; id++ {
		c, err := h.Consumer(id)
		require.NoError(t, err)
		cs = append(cs, c)
	}
	sel, err := h.NewSelect(cs...)
	require.NoError(t, err)
	ctx := ctxFor(t)
	testutil.Say("ready")
	freeForever(t, h, func() (ipc.Record, error) {
		_, r, err := sel.Receive(ctx)
		return r, err
	})
}

// TestSelectConsumerKilledAnywhere kills a consumer that serves two
// channels through a Select (parked on its doorbell now and then: the
// producers pause) at a moment the test does not choose: both producers
// learn of it, and after Recover (which frees its doorbell) and the
// channels' removal, Check passes and every byte is back.
func TestSelectConsumerKilledAnywhere(t *testing.T) {
	b, name := openBuf(t)
	for i := range killRounds(t) {
		free0 := freeBytes(t, b)
		child := startReady(t, "TestChildSelectConsumer", envBuf+"="+name)
		ctx := ctxFor(t)
		hs, errs := sendUntilFailure(t, b, ctx, true, func(h *ipc.Handle, k int) (sender, int, error) {
			p, err := h.Producer(ipc.ChannelID(1 + k))
			return p, 100, err
		})
		time.Sleep(killDelay())
		child.Kill()
		for range hs {
			require.ErrorIs(t, <-errs, ipc.ErrPeerDead, "round %d", i)
		}
		for id := ipc.ChannelID(1); id <= 2; id++ {
			require.NoError(t, hs[0].RemoveChannel(context.Background(), id), "round %d", i)
		}
		recoverAndCheck(t, b, "round %d", i)
		for _, h := range hs {
			require.NoError(t, h.Close())
		}
		allBack(t, b, free0, "round %d: every record, slab and doorbell came back", i)
	}
}

// patternByte is byte i of the stream kill tests' byte stream.
func patternByte(i uint64) byte { return byte(i*7 + i>>8) }

// TestChildStreamEnd is one end of stream 1 of the parent's buffer, as
// fast as it can until it is killed: with HIPC_BATCH the writer (the
// pattern, in writes of 1 to 4096 bytes), else the reader (it reads and
// drops).
func TestChildStreamEnd(t *testing.T) {
	testutil.ChildOnly(t)
	h := newHandle(t, attach(t))
	ctx := ctxFor(t)
	buf := make([]byte, 4096)
	if os.Getenv(envBatch) != "" {
		w, err := h.StreamWriter(1)
		require.NoError(t, err)
		testutil.Say("ready")
		for i := uint64(0); ; {
			n := 1 + rand.IntN(len(buf))
			for j := range buf[:n] {
				buf[j] = patternByte(i + uint64(j))
			}
			k, err := w.WriteContext(ctx, buf[:n])
			require.NoError(t, err)
			i += uint64(k)
		}
	}
	r, err := h.StreamReader(1)
	require.NoError(t, err)
	testutil.Say("ready")
	for {
		_, err := r.ReadContext(ctx, buf)
		require.NoError(t, err)
	}
}

// TestStreamEndKilledAnywhere kills one end of a byte stream, the reader
// or the writer, in turn, at a moment the test does not choose: the other
// end learns of it (a reader after it got an unbroken prefix of what was
// written), and after the stream is removed and the buffer recovered,
// Check passes and every byte is back.
func TestStreamEndKilledAnywhere(t *testing.T) {
	b, name := openBuf(t)
	remove := func(h *ipc.Handle) error { return h.RemoveStream(context.Background(), 1) }
	for i := range killRounds(t) {
		writerDies := i%2 == 1
		killRound(t, b, name, "TestChildStreamEnd", batchIf(writerDies), remove, func(h *ipc.Handle, _ <-chan struct{}) {
			ctx := ctxFor(t)
			buf := make([]byte, 4096)
			if !writerDies {
				w, err := h.StreamWriter(1)
				require.NoError(t, err)
				for {
					if _, err := w.WriteContext(ctx, buf[:1+rand.IntN(len(buf))]); err != nil {
						require.ErrorIs(t, err, ipc.ErrPeerDead, "round %d", i)
						break
					}
				}
				require.NoError(t, w.Close())
				return
			}
			r, err := h.StreamReader(1)
			require.NoError(t, err)
			var at uint64
			for {
				n, err := r.ReadContext(ctx, buf)
				for j, c := range buf[:n] {
					if c != patternByte(at+uint64(j)) {
						t.Fatalf("round %d: byte %d is %#x, want %#x", i, at+uint64(j), c, patternByte(at+uint64(j)))
					}
				}
				at += uint64(n)
				if err != nil {
					if !errors.Is(err, io.EOF) {
						require.ErrorIs(t, err, ipc.ErrPeerDead, "round %d after %d bytes", i, at)
					}
					break
				}
			}
			require.NoError(t, r.Close())
		})
	}
}

// sender is a producer end: *ipc.Producer or *ipc.MPSCProducer.
type sender interface {
	Send(ctx context.Context, r ipc.Record) error
	Close() error
}

// sendUntilFailure opens a producer end in each of two new handles of b
// (open gives the end k and the size of its records) and sends numbered
// records through each from its own goroutine until a send fails
// (pausing for 20 µs every 64 records if pause); each goroutine then
// closes its end and puts the error on the channel it returns.
func sendUntilFailure(t *testing.T, b *ipc.Buffer, ctx context.Context, pause bool, open func(h *ipc.Handle, k int) (sender, int, error)) ([2]*ipc.Handle, chan error) {
	t.Helper()
	var hs [2]*ipc.Handle
	errs := make(chan error, len(hs))
	for k := range hs {
		h, err := b.NewHandle()
		require.NoError(t, err)
		hs[k] = h
		p, size, err := open(h, k)
		require.NoError(t, err)
		go func() {
			var err error
			for seq := uint64(0); err == nil; seq++ {
				if pause && seq%64 == 63 {
					time.Sleep(20 * time.Microsecond)
				}
				var r ipc.Record
				if r, err = h.Allocate(size); err != nil {
					break
				}
				stamp(r, seq)
				if err = p.Send(ctx, r); err != nil {
					err = errors.Join(err, h.Free(r))
				}
			}
			errs <- errors.Join(err, p.Close())
		}()
	}
	return hs, errs
}

// startReady starts the child test (env as testutil.StartChild) and waits
// until it says it is ready.
func startReady(t *testing.T, test string, env ...string) *testutil.Child {
	t.Helper()
	child := testutil.StartChild(t, test, env...)
	require.Equal(t, "ready", child.Line(t, time.Minute))
	return child
}

// killAfterReady starts the child test (env as testutil.StartChild),
// waits until it says it is ready and kills it killDelay later.
func killAfterReady(t *testing.T, test string, env ...string) {
	t.Helper()
	child := startReady(t, test, env...)
	time.Sleep(killDelay())
	child.Kill()
}

// killDelay is how long after it is ready a child is killed: 1 to 15 ms,
// chosen at random.
func killDelay() time.Duration { return time.Duration(1+rand.IntN(15)) * time.Millisecond }

// freeForever frees every record receive gives, until it fails (the
// test fails) or the process is killed.
func freeForever(t *testing.T, h *ipc.Handle, receive func() (ipc.Record, error)) {
	for {
		r, err := receive()
		require.NoError(t, err)
		require.NoError(t, h.Free(r))
	}
}

// recoverAndCheck runs Recover, then Check: both must succeed (msg
// describes the moment, as for require).
func recoverAndCheck(t *testing.T, b *ipc.Buffer, msg ...any) {
	t.Helper()
	_, err := b.Recover()
	require.NoError(t, err, msg...)
	require.NoError(t, b.Check(), msg...)
}

// TestChildMailboxEnd is one end of mailbox 1 of the parent's buffer, as
// fast as it can until it is killed: with HIPC_BATCH the requester
// (requests of 1 to 8192 bytes, each echo checked), else the responder
// (it echoes). With HIPC_ONCE it does one round trip, says "done" and
// closes instead.
func TestChildMailboxEnd(t *testing.T) {
	testutil.ChildOnly(t)
	h := newHandle(t, attach(t))
	ctx := ctxFor(t)
	once := os.Getenv(envOnce) != ""
	if os.Getenv(envBatch) != "" {
		q, err := h.Requester(1)
		require.NoError(t, err)
		testutil.Say("ready")
		msg := make([]byte, 8192)
		for i := 0; ; i++ {
			n := 1 + rand.IntN(len(msg))
			for j := range msg[:n] {
				msg[j] = byte(i + j)
			}
			reply, err := q.Request(ctx, msg[:n])
			require.NoError(t, err)
			require.Equal(t, msg[:n], reply)
			if once {
				testutil.Say("done")
				require.NoError(t, q.Close())
				return
			}
		}
	}
	r, err := h.Responder(1)
	require.NoError(t, err)
	testutil.Say("ready")
	buf := make([]byte, 0, 8192)
	for {
		req, err := r.Receive(ctx, buf)
		require.NoError(t, err)
		require.NoError(t, r.Reply(ctx, req))
		if once {
			testutil.Say("done")
			require.NoError(t, r.Close())
			return
		}
	}
}

// TestMailboxEndKilledAnywhere kills one end of a mailbox, the responder
// or the requester, in turn, at a moment the test does not choose (in the
// middle of a request or a reply of up to 8 KiB): the other end learns of
// it (ErrPeerDead), a new process takes the dead end's place and a round
// trip works, and after the mailbox is removed and the buffer recovered,
// Check passes and every byte is back (and, for TestMain, every
// semaphore).
func TestMailboxEndKilledAnywhere(t *testing.T) {
	b, name := openBuf(t)
	remove := func(h *ipc.Handle) error {
		if err := h.RemoveMailbox(context.Background(), 1); !errors.Is(err, ipc.ErrNotExist) {
			return err // (both ends closed: gone already)
		}
		return nil
	}
	for i := range killRounds(t) {
		requesterDies := i%2 == 1
		env := []string{envBuf + "=" + name, envOnce + "=1"}
		if requesterDies {
			env = append(env, envBatch+"=1")
		}
		killRound(t, b, name, "TestChildMailboxEnd", batchIf(requesterDies), remove, func(h *ipc.Handle, killed <-chan struct{}) {
			ctx := ctxFor(t)
			buf := make([]byte, 0, 8192)
			if requesterDies {
				r, err := h.Responder(1)
				require.NoError(t, err)
				for err == nil {
					var req []byte
					if req, err = r.Receive(ctx, buf); err == nil {
						err = r.Reply(ctx, req)
					}
				}
				require.ErrorIs(t, err, ipc.ErrPeerDead, "round %d", i)
				<-killed
				next := startReady(t, "TestChildMailboxEnd", env...)
				req, err := r.Receive(ctx, buf)
				require.NoError(t, err, "round %d: a new requester", i)
				require.NoError(t, r.Reply(ctx, req))
				require.Equal(t, "done", next.Line(t, time.Minute))
				next.MustSucceed(t, time.Minute)
				require.NoError(t, r.Close())
				return
			}
			q, err := h.Requester(1)
			require.NoError(t, err)
			msg := make([]byte, 8192)
			for err == nil {
				_, err = q.Request(ctx, msg[:1+rand.IntN(len(msg))])
			}
			require.ErrorIs(t, err, ipc.ErrPeerDead, "round %d", i)
			<-killed
			next := startReady(t, "TestChildMailboxEnd", env...)
			reply, err := q.Request(ctx, []byte("after"))
			require.NoError(t, err, "round %d: a new responder", i)
			require.Equal(t, "after", string(reply))
			require.Equal(t, "done", next.Line(t, time.Minute))
			next.MustSucceed(t, time.Minute)
			require.NoError(t, q.Close())
		})
	}
}

// spPayload fills p as the speculo kill test's chunk number seq: seq in
// its first 8 bytes (if it has them), then a pattern of it.
func spPayload(p []byte, seq uint64) {
	var b [8]byte
	binary.LittleEndian.PutUint64(b[:], seq)
	for i := range p {
		if i < 8 {
			p[i] = b[i]
		} else {
			p[i] = byte(seq) ^ byte(i)
		}
	}
}

// spCheck reports whether p is a chunk spPayload wrote (any number).
func spCheck(p []byte) bool {
	if len(p) < 8 {
		return true
	}
	want := make([]byte, len(p))
	spPayload(want, binary.LittleEndian.Uint64(p))
	return bytes.Equal(p, want)
}

// TestChildSpeculoStreamWriter writes to speculo area 1 of the parent's
// buffer as fast as it can (new blocks, updates of earlier ones, a GC now
// and then; every chunk expires 2 ms after it is written) until it is
// killed.
func TestChildSpeculoStreamWriter(t *testing.T) {
	testutil.ChildOnly(t)
	h := newHandle(t, attach(t))
	sp, err := h.AddSpeculo(1, 0)
	require.NoError(t, err)
	w, err := sp.Writer()
	require.NoError(t, err)
	testutil.Say("ready")
	buf := make([]byte, 1024)
	var blocks []ipc.BlockID
	for seq := uint64(0); ; seq++ {
		p := buf[:rand.IntN(len(buf))]
		spPayload(p, seq)
		switch {
		case seq%64 == 63:
			spGC(t, w)
		case len(blocks) > 0 && seq%3 == 0:
			if err := w.Update(blocks[rand.IntN(len(blocks))], p, time.Now().Add(2*time.Millisecond)); err != nil {
				require.ErrorIs(t, err, ipc.ErrNoSpace)
			}
		default:
			id, err := w.Write(p, time.Now().Add(2*time.Millisecond))
			if errors.Is(err, ipc.ErrNoSpace) {
				blocks = blocks[:0]
				require.NoError(t, w.GC())
				continue
			}
			require.NoError(t, err)
			if len(blocks) < 64 {
				blocks = append(blocks, id)
			}
		}
	}
}

// TestSpeculoWriterKilledAnywhere kills a speculo area's writer at a
// moment the test does not choose (in a write, an update, a GC's copy)
// while this process reads the area: every chunk read is whole; a new
// writer takes the dead one's place (what it left half done is finished
// or undone) and what it writes is read; after the area is removed and
// the buffer recovered, Check passes and every byte is back.
func TestSpeculoWriterKilledAnywhere(t *testing.T) {
	b, name := openBuf(t)
	for i := range killRounds(t) {
		free0 := freeBytes(t, b)
		h, err := b.NewHandle()
		require.NoError(t, err)
		sp, err := h.AddSpeculo(1, 64<<10)
		require.NoError(t, err)
		r, err := sp.Reader()
		require.NoError(t, err)
		child := startReady(t, "TestChildSpeculoStreamWriter", envBuf+"="+name)
		kill := time.Now().Add(killDelay())
		for time.Now().Before(kill) {
			c, err := r.TryNext()
			if errors.Is(err, ipc.ErrWouldBlock) {
				continue
			}
			require.NoError(t, err, "round %d", i)
			require.True(t, spCheck(c.Data), "round %d: chunk %d torn", i, c.Seq)
		}
		child.Kill()
		r.Release() // off the extent it is on, so that GC can free it
		w, err := sp.Writer()
		require.NoError(t, err, "round %d: the dead writer's place", i)
		p := make([]byte, 100)
		spPayload(p, 1<<40)
		for try := 0; ; try++ {
			// The dead writer's chunks expire 2 ms after it wrote them.
			if _, err = w.Write(p, time.Time{}); !errors.Is(err, ipc.ErrNoSpace) || try == 100 {
				break
			}
			time.Sleep(time.Millisecond)
			require.NoError(t, w.GC(), "round %d", i)
		}
		require.NoError(t, err, "round %d", i)
		require.NoError(t, w.GC(), "round %d", i)
		for found := false; !found; {
			c, err := r.TryNext()
			require.NoError(t, err, "round %d: the new writer's chunk", i)
			require.True(t, spCheck(c.Data), "round %d: chunk %d torn", i, c.Seq)
			found = len(c.Data) >= 8 && binary.LittleEndian.Uint64(c.Data) == 1<<40
		}
		require.NoError(t, w.Close())
		require.NoError(t, r.Close())
		require.NoError(t, sp.Remove(context.Background()), "round %d", i)
		require.NoError(t, h.Close())
		allBack(t, b, free0, "round %d: every byte came back", i)
	}
}

// removeRecordChannels removes record channels 1 and 2 of h's buffer,
// those that exist (killRound's remove for record channels).
func removeRecordChannels(h *ipc.Handle) error { return removeChannelsUpTo(h, 2) }

// removeChannelsUpTo removes record channels 1 to n of h's buffer, those
// that exist.
func removeChannelsUpTo(h *ipc.Handle, n ipc.ChannelID) error {
	var all []error
	for id := ipc.ChannelID(1); id <= n; id++ {
		if err := h.RemoveChannel(context.Background(), id); !errors.Is(err, ipc.ErrNotExist) {
			all = append(all, err)
		}
	}
	return errors.Join(all...)
}

// TestChildSpeculoReader reads speculo area 1 of the parent's buffer as
// fast as it can (each chunk checked whole), until it is killed.
func TestChildSpeculoReader(t *testing.T) {
	testutil.ChildOnly(t)
	h := newHandle(t, attach(t))
	sp, err := h.AddSpeculo(1, 0)
	require.NoError(t, err)
	r, err := sp.Reader()
	require.NoError(t, err)
	testutil.Say("ready")
	for {
		c, err := r.TryNext()
		if errors.Is(err, ipc.ErrWouldBlock) {
			continue
		}
		require.NoError(t, err)
		require.True(t, spCheck(c.Data), "chunk %d torn", c.Seq)
	}
}

// TestSpeculoReaderKilledAnywhere kills a reader of a speculo area at a
// moment the test does not choose while this process writes and
// collects (GC) at full speed: the extent the dead reader was on does not
// hold the area up for good (GC goes on once the reader's slot is found
// dead), and after the area is removed and the buffer recovered, Check
// passes and every byte is back.
func TestSpeculoReaderKilledAnywhere(t *testing.T) {
	b, name := openBuf(t)
	for i := range killRounds(t) {
		free0 := freeBytes(t, b)
		h, err := b.NewHandle()
		require.NoError(t, err)
		sp, err := h.AddSpeculo(1, 64<<10)
		require.NoError(t, err)
		w, err := sp.Writer()
		require.NoError(t, err)
		child := startReady(t, "TestChildSpeculoReader", envBuf+"="+name)
		kill := time.Now().Add(killDelay())
		p := make([]byte, 1024)
		write := func(seq uint64) error {
			q := p[:rand.IntN(len(p))]
			spPayload(q, seq)
			_, err := w.Write(q, time.Now().Add(time.Millisecond))
			if errors.Is(err, ipc.ErrNoSpace) {
				err = w.GC()
			}
			return err
		}
		seq := uint64(0)
		for ; time.Now().Before(kill); seq++ {
			if err := write(seq); err != nil {
				require.ErrorIs(t, err, ipc.ErrNoSpace, "round %d", i) // GC waits for the reader's extent
			}
		}
		child.Kill()
		// The dead reader lets go: within a few seconds GC and writes
		// succeed again.
		deadline := time.Now().Add(10 * time.Second)
		for ok := 0; ok < 200; seq++ {
			err := write(seq)
			if err == nil {
				ok++
				continue
			}
			require.ErrorIs(t, err, ipc.ErrNoSpace, "round %d", i)
			require.True(t, time.Now().Before(deadline), "round %d: the dead reader holds the area up: %v", i, err)
			time.Sleep(time.Millisecond)
		}
		require.NoError(t, w.Close())
		require.NoError(t, sp.Remove(context.Background()), "round %d", i)
		require.NoError(t, h.Close())
		allBack(t, b, free0, "round %d: every byte came back", i)
	}
}

// allBack runs recoverAndCheck and asserts that the heap has as many free
// bytes as free0 (msg describes what came back, as for require).
func allBack(t *testing.T, b *ipc.Buffer, free0 uint64, msg ...any) {
	t.Helper()
	recoverAndCheck(t, b, msg...)
	require.Equal(t, free0, freeBytes(t, b), msg...)
}

// hoardRecords is how many records TestChildHoard allocates: enough that
// a Recover of what it leaves takes tens of milliseconds here (so that
// killDelay lands in it).
const hoardRecords = 40000

// TestChildHoard allocates hoardRecords records of the parent's buffer
// on two handles (sizes from 8 bytes to 10000), sends every fifth on
// channel 1, frees every third, holds the rest, says "ready" and waits to
// be killed: a dead process that leaves much for Recover to do.
func TestChildHoard(t *testing.T) {
	testutil.ChildOnly(t)
	b := attach(t)
	hs := []*ipc.Handle{newHandle(t, b), newHandle(t, b)}
	p, err := hs[0].Producer(1, ipc.WithCapacity(1<<14))
	require.NoError(t, err)
	ctx := ctxFor(t)
	for i := range hoardRecords {
		size := 8 + i%13*40
		if i%101 == 100 {
			size = 10000
		}
		h := hs[i%2]
		r, err := h.Allocate(size)
		require.NoError(t, err)
		stamp(r, uint64(i))
		switch {
		case i%5 == 0:
			require.NoError(t, p.Send(ctx, r))
		case i%3 == 0:
			require.NoError(t, h.Free(r))
		}
	}
	testutil.Say("ready")
	<-ctx.Done()
}

// TestChildRecoverer says "ready" and runs Recover on the parent's
// buffer over and over until it is killed.
func TestChildRecoverer(t *testing.T) {
	testutil.ChildOnly(t)
	b := attach(t)
	testutil.Say("ready")
	for {
		_, err := b.Recover()
		require.NoError(t, err)
	}
}

// TestRecovererKilledAnywhere kills a process while it recovers what a
// dead one left (tens of thousands of records it held, some queued in a
// channel), at a moment the test does not choose (holding the heap lock,
// between a record's free and its slab's count, in a slab's return):
// Recover from this process then finishes the work, Check passes, and once
// the channel is removed every byte is back. The recoverer is the same
// code as `ipcctl recover`.
func TestRecovererKilledAnywhere(t *testing.T) {
	b, name := openBuf(t)
	for i := range killRounds(t) {
		free0 := freeBytes(t, b)
		startReady(t, "TestChildHoard", envBuf+"="+name).Kill()
		killAfterReady(t, "TestChildRecoverer", envBuf+"="+name)
		recoverAndCheck(t, b, "round %d: after the recoverer's death", i)
		h, err := b.NewHandle()
		require.NoError(t, err)
		require.NoError(t, removeChannelsUpTo(h, 1), "round %d", i)
		require.NoError(t, h.Close())
		allBack(t, b, free0, "round %d: every byte came back", i)
	}
}
