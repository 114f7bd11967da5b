package tests

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"math/rand/v2"
	"os"
	"strconv"
	"testing"
	"time"

	ipc "github.com/heapipc/ipc"
	"github.com/heapipc/ipc/internal/testutil"
	"github.com/stretchr/testify/require"
)

const streamID ipc.ChannelID = 40

// pattern is a reader of n deterministic pseudo-random bytes: a random
// block of 1 MiB, rotated differently for every MiB, so that a misplaced
// or repeated MiB changes the checksum. It reads by copy, which stays fast
// under the race detector.
type pattern struct {
	block []byte
	pos   int64
	n     int64
}

func newPattern(n int64, seed uint64) *pattern {
	block := make([]byte, 1<<20)
	rng := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	for i := 0; i < len(block); i += 8 {
		binary.LittleEndian.PutUint64(block[i:], rng.Uint64())
	}
	return &pattern{block: block, n: n}
}

func (p *pattern) Read(b []byte) (int, error) {
	if p.pos >= p.n {
		return 0, io.EOF
	}
	b = b[:min(int64(len(b)), p.n-p.pos)]
	done := 0
	for done < len(b) {
		mib := p.pos >> 20
		off := int((p.pos + mib*7919) & (1<<20 - 1))
		k := copy(b[done:], p.block[off:])
		if in := int(1<<20 - p.pos&(1<<20-1)); k > in {
			k = in // do not cross into the next MiB's rotation
		}
		done += k
		p.pos += int64(k)
	}
	return done, nil
}

// TestStreamSpansBacklogReset exercises the facade in one process: spans
// with wrap-around, contiguous views, backlog look-back and rewind, reset
// during a pending commit, and the errors the ends return.
func TestStreamSpansBacklogReset(t *testing.T) {
	b, _ := openBuf(t)
	hw, hr := newHandle(t, b), newHandle(t, b)
	w, err := hw.StreamWriter(streamID, ipc.WithStreamCapacity(100), ipc.WithBacklog(30), ipc.WithName("audio"))
	require.NoError(t, err)
	r, err := hr.StreamReader(streamID)
	require.NoError(t, err)
	_, err = newHandle(t, b).StreamReader(streamID)
	require.ErrorIs(t, err, ipc.ErrBusy)
	_, err = newHandle(t, b).StreamWriter(streamID, ipc.WithStreamCapacity(64))
	require.ErrorIs(t, err, ipc.ErrSizeMismatch)
	_, err = newHandle(t, b).Producer(streamID)
	require.ErrorIs(t, err, ipc.ErrWrongType)
	_, err = newHandle(t, b).StreamWriter(streamID+1, ipc.WithStreamCapacity(10), ipc.WithBacklog(10))
	require.ErrorIs(t, err, ipc.ErrInvalidArgument, "the backlog stays below the capacity")
	ctx := ctxFor(t)

	// Fill 90, read 80: 10 unread, 30 kept, room for 60 across the wrap.
	src := newPattern(1000, 1)
	data, _ := io.ReadAll(src)
	n, err := w.Write(data[:90])
	require.NoError(t, err)
	require.Equal(t, 90, n)
	got := make([]byte, 80)
	_, err = io.ReadFull(r, got)
	require.NoError(t, err)
	require.Equal(t, data[:80], got)
	a, bb, err := w.Spans()
	require.NoError(t, err)
	require.Equal(t, 10, len(a), "room up to the end of the ring")
	require.Equal(t, 50, len(bb), "and after the wrap, short of the backlog")
	copy(a, data[90:])
	copy(bb, data[100:])
	require.NoError(t, w.Commit(60))
	ra, rb, err := r.Spans()
	require.NoError(t, err)
	require.Equal(t, data[80:150], append(append([]byte{}, ra...), rb...))
	v, err := r.View(25)
	require.NoError(t, err)
	require.Equal(t, data[80:105], v, "a contiguous view across the wrap")
	require.NoError(t, r.Consume(25))

	ba, bb2, err := r.Backlog()
	require.NoError(t, err)
	require.Equal(t, data[75:105], append(append([]byte{}, ba...), bb2...), "the last 30 consumed bytes")
	require.NoError(t, r.Rewind(30))
	got = make([]byte, 75)
	_, err = io.ReadFull(r, got)
	require.NoError(t, err)
	require.Equal(t, data[75:150], got, "rewound and read again")
	require.ErrorIs(t, r.Rewind(31), ipc.ErrInvalidArgument)

	st, err := w.Stats()
	require.NoError(t, err)
	require.Equal(t, ipc.StreamStats{Capacity: 100, Buffered: 0, Free: 70, Backlog: 30, BacklogLimit: 30, Written: 150, Read: 180}, st)

	// Reset during a pending commit: dropped, never applied.
	res, err := w.Reserve(40) // wraps: staged
	require.NoError(t, err)
	copy(res, data[150:])
	gen := r.Generation()
	require.NoError(t, r.Reset())
	require.NoError(t, w.WaitReset(ctx, gen))
	err = w.Commit(40)
	require.ErrorIs(t, err, ipc.ErrReset)
	require.Contains(t, err.Error(), fmt.Sprintf("stream %d", streamID))
	st, err = r.Stats()
	require.NoError(t, err)
	require.Zero(t, st.Buffered)
	require.Zero(t, st.Backlog)
	require.Equal(t, gen+1, st.Generation)
	_, err = w.Write([]byte("fresh"))
	require.NoError(t, err)
	p := make([]byte, 10)
	n, err = w.Peek(p)
	require.NoError(t, err)
	require.Equal(t, "fresh", string(p[:n]), "the writer may peek too")
	n, err = r.TryRead(p)
	require.NoError(t, err)
	require.Equal(t, "fresh", string(p[:n]))
	_, err = r.TryRead(p)
	require.ErrorIs(t, err, ipc.ErrWouldBlock)

	// The writer closes: EOF after the data; both closed and drained:
	// the stream is removed.
	_, err = w.Write([]byte("bye"))
	require.NoError(t, err)
	require.NoError(t, w.Close())
	rest, err := io.ReadAll(r)
	require.NoError(t, err)
	require.Equal(t, "bye", string(rest))
	require.NoError(t, r.Close())
	require.ErrorIs(t, r.Consume(0), ipc.ErrClosed)
	require.ErrorIs(t, hr.RemoveStream(ctx, streamID), ipc.ErrNotExist, "removed when both ends closed")
	require.NoError(t, b.Check())
}

// childStreamID is the stream a child opens: HIPC_ID, or streamID.
func childStreamID(t *testing.T) ipc.ChannelID {
	if v := os.Getenv("HIPC_ID"); v != "" {
		return ipc.ChannelID(envInt(t, "HIPC_ID"))
	}
	return streamID
}

// TestChildStreamWriter is the writer process of the stream tests; what it
// does is chosen by HIPC_MODE.
func TestChildStreamWriter(t *testing.T) {
	testutil.ChildOnly(t)
	b := attach(t)
	h := newHandle(t, b)
	w, err := h.StreamWriter(childStreamID(t))
	require.NoError(t, err)
	ctx := ctxFor(t)
	w.SetContext(ctx)
	switch os.Getenv("HIPC_MODE") {
	case "copy": // io.Copy of HIPC_N pattern bytes; says their CRC
		n := int64(envInt(t, envN))
		sum := crc32.NewIEEE()
		copied, err := io.Copy(w, io.TeeReader(newPattern(n, 7), sum))
		require.NoError(t, err)
		require.Equal(t, n, copied)
		require.NoError(t, w.Close())
		testutil.Say("crc %d", sum.Sum32())
	case "pending": // holds filled spans across the parent's reset
		a, _, err := w.Spans()
		require.NoError(t, err)
		copy(a, "stale bytes")
		gen := w.Generation()
		testutil.Say("filled")
		require.NoError(t, w.WaitReset(ctx, gen))
		err = w.Commit(len("stale bytes"))
		require.ErrorIs(t, err, ipc.ErrReset)
		_, err = w.Write([]byte("after the reset"))
		require.NoError(t, err)
		testutil.Say("dropped")
		require.NoError(t, w.Close())
	case "slow": // two writes a little apart, for the notification test
		for _, s := range []string{"one", "two"} {
			time.Sleep(20 * time.Millisecond)
			_, err := w.Write([]byte(s))
			require.NoError(t, err)
		}
		require.NoError(t, w.Close())
	case "records": // 8-byte counters, whole or dropped by a reset, until killed
		var rec [8]byte
		for i := uint64(1); ; i++ {
			v, err := w.Reserve(8)
			if errors.Is(err, ipc.ErrWouldBlock) {
				c, cancel := context.WithTimeout(ctx, 5*time.Millisecond)
				w.WaitSpace(c)
				cancel()
				i--
				continue
			}
			require.NoError(t, err)
			binary.LittleEndian.PutUint64(rec[:], i)
			copy(v, rec[:])
			if err := w.Commit(8); err != nil {
				require.ErrorIs(t, err, ipc.ErrReset)
			}
			if i%1000 == 0 {
				require.NoError(t, w.Reset())
			}
			if i == 1 {
				testutil.Say("writing")
			}
		}
	case "die": // writes, then waits to be killed
		_, err := w.Write([]byte("last words"))
		require.NoError(t, err)
		testutil.Say("written")
		time.Sleep(time.Hour)
	default:
		t.Fatalf("unknown mode %q", os.Getenv("HIPC_MODE"))
	}
}

// TestChildStreamReader is the reader process of the stream tests.
func TestChildStreamReader(t *testing.T) {
	testutil.ChildOnly(t)
	b := attach(t)
	h := newHandle(t, b)
	r, err := h.StreamReader(childStreamID(t))
	require.NoError(t, err)
	ctx := ctxFor(t)
	switch os.Getenv("HIPC_MODE") {
	case "drain": // reads everything the parent writes
		buf := make([]byte, 1<<10)
		total := 0
		for {
			n, err := r.ReadContext(ctx, buf)
			if err == io.EOF {
				break
			}
			require.NoError(t, err)
			total += n
		}
		testutil.Say("read %d", total)
	case "die": // attaches, then waits to be killed
		testutil.Say("attached")
		time.Sleep(time.Hour)
	default:
		t.Fatalf("unknown mode %q", os.Getenv("HIPC_MODE"))
	}
}

// TestStreamCopyAcrossProcesses: io.Copy of 100 MiB (16 MiB under the race
// detector, which slows every copy) from a child's pattern into the
// stream, and io.Copy from the stream into a CRC here; the checksums
// match. Both sides use the zero-copy adapters (ReadFrom, WriteTo).
func TestStreamCopyAcrossProcesses(t *testing.T) {
	n := int64(100 << 20)
	if testutil.Race {
		n = 16 << 20
	}
	b, name := openBuf(t)
	h := newHandle(t, b)
	r, err := h.StreamReader(streamID, ipc.WithStreamCapacity(4<<20))
	require.NoError(t, err)
	child := testutil.StartChild(t, "TestChildStreamWriter", envBuf+"="+name, envN+"="+strconv.FormatInt(n, 10), "HIPC_MODE=copy")
	r.SetContext(ctxFor(t))
	sum := crc32.NewIEEE()
	got, err := io.Copy(sum, r)
	require.NoError(t, err)
	require.Equal(t, n, got)
	line := child.Line(t, time.Minute)
	require.Equal(t, fmt.Sprintf("crc %d", sum.Sum32()), line, "checksums match")
	child.MustSucceed(t, time.Minute)
	st, err := r.Stats()
	require.NoError(t, err)
	require.Equal(t, uint64(n), st.Written)
	require.Equal(t, uint64(n), st.Read)
	require.NoError(t, r.Close())
}

// TestStreamResetDuringPendingCommit: a child writer fills its spans, the
// parent resets the stream, and the child's commit fails with ErrReset
// (the stale bytes never reach the reader); what it writes next does.
func TestStreamResetDuringPendingCommit(t *testing.T) {
	b, name := openBuf(t)
	h := newHandle(t, b)
	r, err := h.StreamReader(streamID, ipc.WithStreamCapacity(64))
	require.NoError(t, err)
	child := testutil.StartChild(t, "TestChildStreamWriter", envBuf+"="+name, "HIPC_MODE=pending")
	require.Equal(t, "filled", child.Line(t, time.Minute))
	require.NoError(t, r.Reset())
	require.Equal(t, "dropped", child.Line(t, time.Minute))
	r.SetContext(ctxFor(t))
	all, err := io.ReadAll(r)
	require.NoError(t, err)
	require.Equal(t, "after the reset", string(all))
	child.MustSucceed(t, time.Minute)
}

// TestStreamResetsAcrossProcesses: a child writes 8-byte counters while
// both processes reset the stream now and then (a reset drops the
// writer's commits and the reader's consumes in flight): every record
// whose consume succeeds is whole, and the counters only grow.
func TestStreamResetsAcrossProcesses(t *testing.T) {
	b, name := openBuf(t)
	h := newHandle(t, b)
	r, err := h.StreamReader(streamID, ipc.WithStreamCapacity(4096), ipc.WithBacklog(64))
	require.NoError(t, err)
	child := testutil.StartChild(t, "TestChildStreamWriter", envBuf+"="+name, "HIPC_MODE=records")
	require.Equal(t, "writing", child.Line(t, time.Minute))
	ctx := ctxFor(t)
	rounds := 20000
	if testutil.Race {
		rounds = 5000
	}
	var last uint64
	good, dropped := 0, 0
	for i := 0; i < rounds; i++ {
		if i%300 == 299 {
			require.NoError(t, r.Reset())
		}
		v, err := r.View(8)
		if errors.Is(err, ipc.ErrWouldBlock) {
			c, cancel := context.WithTimeout(ctx, 5*time.Millisecond)
			r.WaitData(c)
			cancel()
			continue
		}
		if errors.Is(err, ipc.ErrReset) {
			dropped++
			continue
		}
		require.NoError(t, err)
		val := binary.LittleEndian.Uint64(v)
		if err := r.Consume(8); err != nil {
			require.ErrorIs(t, err, ipc.ErrReset)
			dropped++
			continue
		}
		require.Greater(t, val, last, "whole records, in commit order (record %d)", good)
		last = val
		good++
	}
	t.Logf("%d records read, %d dropped by resets", good, dropped)
	child.Kill()
	st, err := r.Stats()
	require.NoError(t, err)
	require.LessOrEqual(t, st.Buffered+st.Backlog, 4096)
	require.NoError(t, r.Close())
	require.NoError(t, b.Check())
}

// TestStreamNotifySelect: this process selects on the reader's data
// channel beside a timer while a child writes; then on the writer's space
// channel while a child reads.
func TestStreamNotifySelect(t *testing.T) {
	b, name := openBuf(t)
	h := newHandle(t, b)
	r, err := h.StreamReader(streamID, ipc.WithStreamCapacity(256))
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(ctxFor(t))
	defer cancel()
	data := r.Notify(ctx, ipc.StreamData)
	resets := r.Notify(ctx, ipc.StreamReset)
	child := testutil.StartChild(t, "TestChildStreamWriter", envBuf+"="+name, "HIPC_MODE=slow")
	var got []byte
	buf := make([]byte, 16)
	ticks := 0
	for open := true; open; {
		select {
		case _, ok := <-data:
			if !ok {
				open = false // EOF: the writer closed and everything is read
				break
			}
			for {
				n, err := r.TryRead(buf)
				if errors.Is(err, ipc.ErrWouldBlock) || err == io.EOF {
					break
				}
				require.NoError(t, err)
				got = append(got, buf[:n]...)
			}
		case <-resets:
			t.Fatal("no reset happened")
		case <-time.After(5 * time.Millisecond):
			ticks++ // the program does other work meanwhile
		}
	}
	require.Equal(t, "onetwo", string(got))
	child.MustSucceed(t, time.Minute)
	_, err = r.Read(buf)
	require.ErrorIs(t, err, io.EOF)
	require.NoError(t, r.Close())

	// Space: fill the ring, select until a child reader makes room.
	w, err := h.StreamWriter(streamID + 1)
	require.NoError(t, err)
	space := w.Notify(ctx, ipc.StreamSpace)
	for {
		_, err := w.TryWrite(make([]byte, 4096))
		if errors.Is(err, ipc.ErrWouldBlock) {
			break
		}
		require.NoError(t, err)
	}
	reader := testutil.StartChild(t, "TestChildStreamReader", envBuf+"="+name, "HIPC_MODE=drain", fmt.Sprintf("HIPC_ID=%d", streamID+1))
	for written := false; !written; {
		select {
		case _, ok := <-space:
			require.True(t, ok)
		case <-time.After(time.Minute):
			t.Fatal("no space notification while a child reads")
		}
		// Level-triggered: a value sent before the ring filled may
		// still arrive; then there is no room yet and we wait again.
		n, err := w.TryWrite(make([]byte, 10))
		if errors.Is(err, ipc.ErrWouldBlock) {
			continue
		}
		require.NoError(t, err)
		require.Positive(t, n)
		written = true
	}
	require.NoError(t, w.Close())
	reader.MustSucceed(t, time.Minute)
	cancel()
	for range space {
	} // closed when ctx is done
}

// TestStreamPeerKilled: a writer SIGKILLed after writing: the reader gets
// its bytes, then ErrPeerDead; a reader SIGKILLed while the writer waits
// for room: ErrPeerDead. Both within a few check intervals.
func TestStreamPeerKilled(t *testing.T) {
	b, name := openBuf(t)
	h := newHandle(t, b)
	r, err := h.StreamReader(streamID, ipc.WithStreamCapacity(64))
	require.NoError(t, err)
	child := testutil.StartChild(t, "TestChildStreamWriter", envBuf+"="+name, "HIPC_MODE=die")
	require.Equal(t, "written", child.Line(t, time.Minute))
	_, err = newHandle(t, b).StreamWriter(streamID)
	require.ErrorIs(t, err, ipc.ErrBusy, "one writer: the child's")
	child.Kill()
	ctx := ctxFor(t)
	buf := make([]byte, 64)
	n, err := r.ReadContext(ctx, buf)
	require.NoError(t, err)
	require.Equal(t, "last words", string(buf[:n]))
	_, err = r.ReadContext(ctx, buf)
	require.ErrorIs(t, err, ipc.ErrPeerDead)

	w, err := h.StreamWriter(streamID+1, ipc.WithStreamCapacity(64))
	require.NoError(t, err)
	child = testutil.StartChild(t, "TestChildStreamReader", envBuf+"="+name, "HIPC_MODE=die", fmt.Sprintf("HIPC_ID=%d", streamID+1))
	require.Equal(t, "attached", child.Line(t, time.Minute))
	_, err = w.TryWrite(make([]byte, 64))
	require.NoError(t, err)
	done := make(chan error, 1)
	go func() { _, err := w.WriteContext(ctx, []byte("no room")); done <- err }()
	child.Kill()
	select {
	case err := <-done:
		require.ErrorIs(t, err, ipc.ErrPeerDead)
	case <-time.After(time.Minute):
		t.Fatal("the writer did not learn that the reader died")
	}
	// A new reader takes the dead one's end over and reads what is there.
	r2, err := newHandle(t, b).StreamReader(streamID + 1)
	require.NoError(t, err)
	n, err = r2.TryRead(buf)
	require.NoError(t, err)
	require.Equal(t, 64, n)
	require.NoError(t, w.Close())
	require.NoError(t, r2.Close())
	require.NoError(t, r.Close())
}
