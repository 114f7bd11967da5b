package ipc

import (
	"context"
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"runtime"
	"testing"
	"time"

	"github.com/heapipc/ipc/internal/testutil"
	"github.com/stretchr/testify/require"
)

// scribbleTimeout bounds one damaged buffer's whole exercise: every call
// in it waits at most a few milliseconds on its own (50 ms for a channel's
// creator), so only a hang (a loop or a wait that damaged memory made
// endless) gets near it.
const scribbleTimeout = 30 * time.Second

// scribbleWorld is a buffer with every channel type in use: queued
// records, held records, a stream with unread bytes, a speculo area with
// chunks, a mailbox and a static segment, all held by one handle.
type scribbleWorld struct {
	b    *Buffer
	h    *Handle
	held []Record
	prod *Producer
	cons *Consumer
	mp   *MPSCProducer
	mc   *MPSCConsumer
	sw   *StreamWriter
	sr   *StreamReader
	q    *Requester
	rsp  *Responder
	sp   *Speculo
	spw  *SpeculoWriter
	spr  *SpeculoReader
	st   *Static
	sel  *Select
}

const (
	scrRecord ChannelID = iota + 1
	scrMPSC
	scrStream
	scrMailbox
	scrSpeculo
)

func newScribbleWorld(t *testing.T) *scribbleWorld {
	b, err := Open(testutil.Name(t), WithBackends("heap", "heap"), WithSize(4<<20), WithCheckInterval(time.Millisecond), WithReadyTimeout(50*time.Millisecond))
	require.NoError(t, err)
	t.Cleanup(func() { _ = b.Destroy() }) // damaged: only what it can
	w := &scribbleWorld{b: b}
	w.h, err = b.NewHandle()
	require.NoError(t, err)
	h := w.h
	w.prod, err = h.Producer(scrRecord, WithCapacity(16))
	require.NoError(t, err)
	w.cons, err = h.Consumer(scrRecord)
	require.NoError(t, err)
	for i := range 10 {
		r, err := h.Allocate(24 + 8*i)
		require.NoError(t, err)
		r.Bytes()[0] = byte(i)
		require.NoError(t, w.prod.TrySend(r))
	}
	for range 3 {
		r, err := h.Allocate(100)
		require.NoError(t, err)
		w.held = append(w.held, r)
	}
	w.mp, err = h.MPSCProducer(scrMPSC, WithCapacity(16))
	require.NoError(t, err)
	w.mc, err = h.MPSCConsumer(scrMPSC)
	require.NoError(t, err)
	for range 5 {
		r, err := h.Allocate(48)
		require.NoError(t, err)
		require.NoError(t, w.mp.TrySend(r))
	}
	w.sw, err = h.StreamWriter(scrStream, WithStreamCapacity(4096), WithBacklog(512))
	require.NoError(t, err)
	w.sr, err = h.StreamReader(scrStream)
	require.NoError(t, err)
	_, err = w.sw.TryWrite(make([]byte, 1500))
	require.NoError(t, err)
	_, err = w.sr.TryRead(make([]byte, 700))
	require.NoError(t, err)
	w.q, err = h.Requester(scrMailbox, WithWindow(256))
	require.NoError(t, err)
	w.rsp, err = h.Responder(scrMailbox)
	require.NoError(t, err)
	w.sp, err = h.AddSpeculo(scrSpeculo, 16<<10)
	require.NoError(t, err)
	w.spw, err = w.sp.Writer()
	require.NoError(t, err)
	w.spr, err = w.sp.Reader()
	require.NoError(t, err)
	for i := range 12 {
		_, err := w.spw.Write(make([]byte, 200+40*i), time.Time{})
		require.NoError(t, err)
	}
	w.st, err = b.Static(t.Context(), "scribble/config", 256, func(p []byte) error { p[0] = 1; return nil })
	require.NoError(t, err)
	w.sel, err = h.NewSelect(w.cons, w.mc)
	require.NoError(t, err)
	require.NoError(t, b.Check(), "the undamaged world")
	return w
}

// targets are the byte ranges damage goes to: the region's header and
// metadata, and the first pages of every allocated extent (control blocks,
// slab headers, records, extents).
func (w *scribbleWorld) targets(t *testing.T) [][2]uint64 {
	r := w.b.region
	out := [][2]uint64{{0, uint64(r.DataOffset())}}
	exts, err := w.b.heap.Allocated()
	require.NoError(t, err)
	for _, e := range exts {
		out = append(out, [2]uint64{uint64(e.Off), min(e.Size, 8192)})
	}
	return out
}

// damage applies the fuzzer's writes, 8 input bytes each: which target,
// where in it, how wide (1 or 8 bytes) and what (zero, all ones, plus
// one, minus one, or the input's own byte).
func (w *scribbleWorld) damage(t *testing.T, data []byte) int {
	ts := w.targets(t)
	region := w.b.region.Bytes()
	n := 0
	for ; len(data) >= 8; data = data[8:] {
		tg := ts[int(binary.LittleEndian.Uint16(data))%len(ts)]
		pos := tg[0] + uint64(binary.LittleEndian.Uint16(data[2:]))%tg[1]
		pos &^= 7 // aligned words, as shared memory holds them
		if pos+8 > uint64(len(region)) {
			continue
		}
		word := region[pos : pos+8]
		v := binary.LittleEndian.Uint64(word)
		switch data[4] % 5 {
		case 0:
			v = 0
		case 1:
			v = ^uint64(0)
		case 2:
			v++
		case 3:
			v--
		case 4:
			v = uint64(data[5]) | uint64(data[6])<<8 | uint64(data[7])<<48
		}
		if data[4]&0x80 != 0 { // one byte only
			word[data[5]%8] = byte(v)
		} else {
			binary.LittleEndian.PutUint64(word, v)
		}
		n++
	}
	return n
}

// exercise uses the damaged buffer as an application would, every wait
// bounded, errors expected and ignored: the property is that nothing
// panics or hangs.
func (w *scribbleWorld) exercise(t *testing.T) {
	short := func() (context.Context, context.CancelFunc) {
		return context.WithTimeout(context.Background(), 5*time.Millisecond)
	}
	_ = w.b.Check()
	_, _ = w.b.Stats()
	// The open ends first: they hold views of the damaged words.
	for range 20 {
		r, err := w.cons.TryReceive()
		if err != nil {
			break
		}
		_ = r.Bytes()
		_ = w.h.Free(r)
	}
	for _, r := range w.held {
		_ = w.prod.TrySend(r)
	}
	if r, err := w.h.Allocate(64); err == nil {
		_ = w.prod.TrySend(r)
	}
	for range 10 {
		r, err := w.mc.TryReceive()
		if err != nil {
			break
		}
		_ = w.h.Free(r)
	}
	if r, err := w.h.Allocate(32); err == nil {
		if w.mp.TrySend(r) != nil {
			_ = w.h.Free(r)
		}
	}
	buf := make([]byte, 5000)
	_, _ = w.sr.TryRead(buf)
	_, _, _ = w.sr.Backlog()
	_ = w.sr.Rewind(100)
	_, _ = w.sw.TryWrite(buf[:900])
	_, _ = w.sr.Stats()
	ctx, cancel := short()
	_, _ = w.q.Request(ctx, []byte("scribble"))
	cancel()
	ctx, cancel = short()
	_, _ = w.rsp.Receive(ctx, nil)
	cancel()
	for range 20 {
		if _, err := w.spr.TryNext(); err != nil {
			break
		}
	}
	_, _ = w.spr.Latest(1)
	_, _ = w.spw.Write(make([]byte, 300), time.Time{})
	_ = w.spw.Update(2, make([]byte, 100), time.Time{})
	_ = w.spw.GC()
	_, _ = w.sp.Stats()
	if v, err := w.b.AttachStatic("scribble/config"); err == nil {
		_ = v.Bytes()[0]
	}
	ctx, cancel = short()
	_, _, _ = w.sel.Receive(ctx)
	cancel()
	_ = w.sel.Close()
	_ = w.h.Close()
	_, _ = w.b.Recover()
	_ = w.b.Check()

	// A new handle attaches every end again, as a restarted peer would.
	h, err := w.b.NewHandle()
	if err != nil {
		return
	}
	defer h.Close()
	if c, err := h.Consumer(scrRecord); err == nil {
		ctx, cancel := short()
		if r, err := c.Receive(ctx); err == nil {
			_ = h.Free(r)
		}
		cancel()
		_ = c.Close()
	}
	if p, err := h.Producer(scrRecord); err == nil {
		if r, err := h.Allocate(16); err == nil {
			ctx, cancel := short()
			if p.Send(ctx, r) != nil {
				_ = h.Free(r)
			}
			cancel()
		}
		_ = p.Close()
	}
	if c, err := h.MPSCConsumer(scrMPSC); err == nil {
		ctx, cancel := short()
		if r, err := c.Receive(ctx); err == nil {
			_ = h.Free(r)
		}
		cancel()
		_ = c.Close()
	}
	if r, err := h.StreamReader(scrStream); err == nil {
		ctx, cancel := short()
		_, _ = r.ReadContext(ctx, buf)
		cancel()
		_ = r.Close()
	}
	if wr, err := h.StreamWriter(scrStream); err == nil {
		ctx, cancel := short()
		_, _ = wr.WriteContext(ctx, buf[:100])
		cancel()
		_ = wr.Close()
	}
	if q, err := h.Requester(scrMailbox); err == nil {
		ctx, cancel := short()
		_, _ = q.Request(ctx, []byte("again"))
		cancel()
		_ = q.Close()
	}
	if sp, err := h.AddSpeculo(scrSpeculo, 16<<10); err == nil {
		if r, err := sp.Reader(); err == nil {
			ctx, cancel := short()
			_, _ = r.Next(ctx)
			cancel()
			_ = r.Close()
		}
		if wr, err := sp.Writer(); err == nil {
			_, _ = wr.Write(make([]byte, 64), time.Time{})
			_ = wr.Close()
		}
		_ = sp.Remove(context.Background())
	}
	for _, id := range []ChannelID{scrRecord, scrStream} {
		_ = h.RemoveChannel(context.Background(), id)
		_ = h.RemoveStream(context.Background(), id)
	}
	_ = h.RemoveMailbox(context.Background(), scrMailbox)
	_, _ = w.b.Recover()
	_ = w.b.Check()
}

// scribble damages a fresh world with data and exercises it, failing on
// a panic (the test binary's own report) or a hang (with every
// goroutine's stack).
func scribble(t *testing.T, data []byte) {
	w := newScribbleWorld(t)
	n := w.damage(t, data)
	done := make(chan struct{})
	go func() {
		defer close(done)
		w.exercise(t)
	}()
	select {
	case <-done:
	case <-time.After(scribbleTimeout):
		stacks := make([]byte, 1<<20)
		stacks = stacks[:runtime.Stack(stacks, true)]
		t.Fatalf("a buffer damaged in %d places hung (input %x):\n%s", n, data, stacks)
	}
}

// FuzzScribble damages a buffer in which every channel type is in use,
// at places the input chooses among its live structures, then uses it:
// Check, Recover, every open end, new ends after them, removal. Damaged
// shared memory must give errors, never a panic or a hang.
func FuzzScribble(f *testing.F) {
	f.Add([]byte{})
	rng := rand.New(rand.NewPCG(4, 4))
	for range 24 {
		d := make([]byte, 8*(1+rng.IntN(6)))
		for i := range d {
			d[i] = byte(rng.Uint32())
		}
		f.Add(d)
	}
	f.Fuzz(func(t *testing.T, data []byte) { scribble(t, data) })
}

// TestScribbleEveryTarget damages each live structure in turn, word by
// word over its first 512 bytes (one word in eight under the race
// detector), with a value that changes it (all ones): every word of a
// structure's header is hit at least once.
func TestScribbleEveryTarget(t *testing.T) {
	w := newScribbleWorld(t)
	ts := w.targets(t)
	require.NoError(t, w.b.Destroy())
	if testing.Short() {
		t.Skip("-short: the word-by-word sweep takes a while")
	}
	stride := uint64(8)
	if testutil.Race {
		stride = 64 // one word in eight: the race detector's run is ten times slower
	}
	for i, tg := range ts {
		for off := uint64(0); off < min(tg[1], 512); off += stride {
			d := make([]byte, 8)
			binary.LittleEndian.PutUint16(d, uint16(i))
			binary.LittleEndian.PutUint16(d[2:], uint16(off))
			d[4] = 1
			ok := t.Run(fmt.Sprintf("target%d+%d", i, off), func(t *testing.T) { scribble(t, d) })
			if !ok {
				return
			}
		}
	}
}
