package tests

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"runtime"
	"strconv"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
	"unsafe"

	ipc "github.com/heapipc/ipc"
	"github.com/heapipc/ipc/internal/testutil"
)

// The benchmarks measure heapipc's record channel beside the stdlib peers
// in the same run and report the ratio as a metric named x-PEER: how many
// times faster heapipc is (above 1: faster). Payloads are written by the
// sender and read by the receiver. One op is one record.

const payload = 64

// fill and sum write and read every byte of a payload (testutil.Fill,
// testutil.Sum): both sides of every comparison use them.
func fill(b []byte, v byte) { testutil.Fill(b, v) }

func sum(b []byte) byte { return testutil.Sum(b) }

func benchBuf(b *testing.B) *ipc.Buffer {
	buf, err := ipc.Open(testutil.Name(b), ipc.WithSize(256<<20))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { buf.Destroy() })
	return buf
}

// must keeps benchmark set-up short; a failure there is a bug, not a
// measurement, and panics.
func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}

// inProc times n payloads between two goroutines on channel id, each
// side with its own handle: send runs in this goroutine and sends up to
// left payloads a call, recv in another; each returns how many it moved.
func inProc(b *testing.B, buf *ipc.Buffer, id ipc.ChannelID, n int,
	send func(h *ipc.Handle, p *ipc.Producer, sent, left int) (int, error),
	recv func(h *ipc.Handle, c *ipc.Consumer) (int, error)) time.Duration {
	ph := must(buf.NewHandle())
	defer ph.Close()
	ch := must(buf.NewHandle())
	defer ch.Close()
	p := must(ph.Producer(id))
	c := must(ch.Consumer(id))
	done := make(chan error, 1)
	go func() {
		for got := 0; got < n; {
			k, err := recv(ch, c)
			if err != nil {
				done <- err
				return
			}
			got += k
		}
		done <- nil
	}()
	start := time.Now()
	for sent := 0; sent < n; {
		k, err := send(ph, p, sent, n-sent)
		if err != nil {
			b.Fatal(err)
		}
		sent += k
	}
	if err := <-done; err != nil {
		b.Fatal(err)
	}
	el := time.Since(start)
	p.Close()
	c.Close()
	return el
}

// heapipcInProc moves n records between two goroutines, one per call
// (batch 0) or with the batch forms.
func heapipcInProc(b *testing.B, buf *ipc.Buffer, id ipc.ChannelID, n, batch int) time.Duration {
	ctx := context.Background()
	rs := make([]ipc.Record, max(batch, 1))
	got := make([]ipc.Record, max(batch, 1))
	var s byte
	if batch == 0 {
		return inProc(b, buf, id, n, sendOne(ctx), func(h *ipc.Handle, c *ipc.Consumer) (int, error) {
			v, err := receiveOne(ctx, h, c)
			if err != nil {
				return 0, err
			}
			s += v
			return 1, nil
		})
	}
	return inProc(b, buf, id, n, func(h *ipc.Handle, p *ipc.Producer, sent, left int) (int, error) {
		k := min(batch, left)
		if err := h.AllocateBatch(payload, rs[:k]); err != nil {
			return 0, err
		}
		for i := range k {
			fill(rs[i].Bytes(), byte(sent+i))
		}
		return p.SendBatch(ctx, rs[:k])
	}, func(h *ipc.Handle, c *ipc.Consumer) (int, error) {
		k, v, err := receiveBatch(ctx, h, c, got)
		s += v
		return k, err
	})
}

// sendOne is the per-record producer of inProc: it allocates a record,
// writes it and sends it.
func sendOne(ctx context.Context) func(h *ipc.Handle, p *ipc.Producer, sent, _ int) (int, error) {
	return func(h *ipc.Handle, p *ipc.Producer, sent, _ int) (int, error) {
		r, err := h.Allocate(payload)
		if err != nil {
			return 0, err
		}
		fill(r.Bytes(), byte(sent))
		return 1, p.Send(ctx, r)
	}
}

// receiveOne is the per-record consumer of the benchmarks: it receives a
// record, reads it (the sum of its bytes) and frees it.
func receiveOne(ctx context.Context, h *ipc.Handle, c *ipc.Consumer) (byte, error) {
	r, err := c.Receive(ctx)
	if err != nil {
		return 0, err
	}
	v := sum(r.Bytes())
	return v, h.Free(r)
}

// goChanInProc moves n freshly allocated 64-byte slices through a Go
// channel of capacity 1024 (testutil.GoChanInProc).
func goChanInProc(n int) time.Duration { return testutil.GoChanInProc(n, payload) }

// socketPair returns two connected Unix stream sockets, closed on exec (a
// child started meanwhile would otherwise keep the parent's end open, and
// a child given one end would never read EOF: BenchmarkStreamThroughput4K
// hung so).
func socketPair(b *testing.B) (*os.File, *os.File) {
	syscall.ForkLock.RLock() // no fork between the pair and its close-on-exec
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM, 0)
	if err == nil {
		syscall.CloseOnExec(fds[0])
		syscall.CloseOnExec(fds[1])
	}
	syscall.ForkLock.RUnlock()
	if err != nil {
		b.Fatal(err)
	}
	return os.NewFile(uintptr(fds[0]), "sock0"), os.NewFile(uintptr(fds[1]), "sock1")
}

func unixInProc(b *testing.B, n int) time.Duration {
	f0, f1 := socketPair(b)
	c0 := must(net.FileConn(f0))
	c1 := must(net.FileConn(f1))
	f0.Close()
	f1.Close()
	defer c0.Close()
	defer c1.Close()
	done := make(chan error, 1)
	go func() {
		buf := make([]byte, payload)
		var s byte
		for i := 0; i < n; i++ {
			if _, err := io.ReadFull(c1, buf); err != nil {
				done <- err
				return
			}
			s += sum(buf)
		}
		_ = s
		done <- nil
	}()
	start := time.Now()
	msg := make([]byte, payload)
	for i := 0; i < n; i++ {
		fill(msg, byte(i))
		if _, err := c0.Write(msg); err != nil {
			b.Fatal(err)
		}
	}
	if err := <-done; err != nil {
		b.Fatal(err)
	}
	return time.Since(start)
}

func report(b *testing.B, ours time.Duration, n int, peers map[string]time.Duration) {
	o := float64(ours.Nanoseconds()) / float64(n)
	b.ReportMetric(o, "ns/op")
	b.ReportMetric(float64(payload)*1e3/o, "MB/s")
	for name, d := range peers {
		p := float64(d.Nanoseconds()) / float64(n)
		b.ReportMetric(p, name+"-ns/op")
		b.ReportMetric(p/o, "x-"+name)
	}
}

// BenchmarkRecordInProcess: allocate, write 64 B, send, receive, read,
// free — between two goroutines — beside a Go channel and a Unix socket.
func BenchmarkRecordInProcess(b *testing.B) {
	buf := benchBuf(b)
	n := b.N
	b.ResetTimer()
	ours := heapipcInProc(b, buf, 1, n, 0)
	b.StopTimer()
	report(b, ours, n, map[string]time.Duration{"gochan": goChanInProc(n), "unix": unixInProc(b, n)})
}

// BenchmarkRecordBatchInProcess is the same with the batch forms, 64
// records at a time: AllocateBatch, SendBatch, ReceiveBatch, FreeBatch.
func BenchmarkRecordBatchInProcess(b *testing.B) {
	buf := benchBuf(b)
	n := b.N
	b.ResetTimer()
	ours := heapipcInProc(b, buf, 2, n, 64)
	b.StopTimer()
	report(b, ours, n, map[string]time.Duration{"gochan": goChanInProc(n)})
}

// BenchmarkRecordEachInProcess is the same with the fused batch forms:
// one SendEach call for all records (it allocates, fills through the
// benchmark's func and queues 64 at a time) and ReceiveEach calls of up
// to 64 (each record read in the benchmark's func, then freed).
func BenchmarkRecordEachInProcess(b *testing.B) {
	buf := benchBuf(b)
	n := b.N
	b.ResetTimer()
	ours := heapipcEachInProc(b, buf, 5, n)
	b.StopTimer()
	report(b, ours, n, map[string]time.Duration{"gochan": goChanInProc(n)})
}

// BenchmarkRecordEachOfInProcess is BenchmarkRecordEachInProcess with
// the typed forms, SendEachOf and ReceiveEachOf, for a 64-byte struct
// (eight words written and summed): what the typed wrapper (a type
// check per call, a call more per record) costs over the byte forms.
func BenchmarkRecordEachOfInProcess(b *testing.B) {
	buf := benchBuf(b)
	n := b.N
	b.ResetTimer()
	ctx := context.Background()
	var s uint64
	ours := inProc(b, buf, 6, n, func(h *ipc.Handle, p *ipc.Producer, sent, left int) (int, error) {
		k, err := ipc.SendEachOf(ctx, p, left, func(i int, v *[payload / 8]uint64) {
			for j := range v {
				v[j] = uint64(i + j)
			}
		})
		if err == nil && k != left {
			err = fmt.Errorf("SendEachOf sent %d of %d and no error", k, left)
		}
		return k, err
	}, func(h *ipc.Handle, c *ipc.Consumer) (int, error) {
		return ipc.ReceiveEachOf(ctx, c, 64, func(v *[payload / 8]uint64) {
			for _, x := range v {
				s += x
			}
		})
	})
	b.StopTimer()
	report(b, ours, n, map[string]time.Duration{"gochan": goChanInProc(n)})
}

// fillAt is the benchmarks' SendEach fill: record i gets byte(i), as
// the other forms write record i.
func fillAt(i int, r []byte) { fill(r, byte(i)) }

// heapipcEachInProc moves n records between two goroutines with SendEach
// and ReceiveEach.
func heapipcEachInProc(b *testing.B, buf *ipc.Buffer, id ipc.ChannelID, n int) time.Duration {
	ctx := context.Background()
	var s byte
	use := func(r []byte) { s += sum(r) }
	return inProc(b, buf, id, n, func(h *ipc.Handle, p *ipc.Producer, sent, left int) (int, error) {
		k, err := p.SendEach(ctx, left, payload, fillAt)
		if err == nil && k != left {
			err = fmt.Errorf("SendEach sent %d of %d and no error", k, left)
		}
		return k, err
	}, func(h *ipc.Handle, c *ipc.Consumer) (int, error) {
		return c.ReceiveEach(ctx, 64, use)
	})
}

// receiveBatch is the batch consumer of the benchmarks: it receives up to
// len(rs) records with ReceiveBatch, reads each (the sum of their bytes)
// and frees them with FreeBatch, and returns how many.
func receiveBatch(ctx context.Context, h *ipc.Handle, c *ipc.Consumer, rs []ipc.Record) (int, byte, error) {
	k, err := c.ReceiveBatch(ctx, rs)
	if err != nil {
		return 0, 0, err
	}
	var v byte
	for _, r := range rs[:k] {
		v += sum(r.Bytes())
	}
	return k, v, h.FreeBatch(rs[:k])
}

// BenchmarkRecordInProcessReceiveBatch is BenchmarkRecordInProcess with
// a consumer that takes what is queued with ReceiveBatch (up to 64 at a
// time) and frees it with FreeBatch, while the producer still sends one
// record at a time; beside it the same consumer freeing each record with
// Free (free-each). On an Intel Xeon VM the FreeBatch form ran well
// behind free-each: the faster consumer keeps closer behind the producer
// and takes the lines the producer is writing.
func BenchmarkRecordInProcessReceiveBatch(b *testing.B) {
	for _, each := range []bool{false, true} {
		b.Run(map[bool]string{false: "freebatch", true: "free-each"}[each], func(b *testing.B) {
			buf := benchBuf(b)
			n := b.N
			ctx := context.Background()
			got := make([]ipc.Record, 64)
			var s byte
			b.ResetTimer()
			ours := inProc(b, buf, 3, n, sendOne(ctx), func(h *ipc.Handle, c *ipc.Consumer) (int, error) {
				if !each {
					k, v, err := receiveBatch(ctx, h, c, got)
					s += v
					return k, err
				}
				k, err := c.ReceiveBatch(ctx, got)
				if err != nil {
					return 0, err
				}
				for _, r := range got[:k] {
					s += sum(r.Bytes())
				}
				for _, r := range got[:k] {
					if err := h.Free(r); err != nil {
						return 0, err
					}
				}
				return k, nil
			})
			b.StopTimer()
			report(b, ours, n, map[string]time.Duration{"gochan": goChanInProc(n)})
		})
	}
}

// BenchmarkRecordPackInProcess is the batch form that allocates once per
// batch: packs of 64 payloads of 64 bytes (AllocatePack, each payload
// written, Send; Receive, PackOf, each payload read, Free) between two
// goroutines, beside the Go channel carrying the payloads one by one. One
// op is one payload.
func BenchmarkRecordPackInProcess(b *testing.B) {
	buf := benchBuf(b)
	n := b.N
	b.ResetTimer()
	ours := packInProc(b, buf, 4, n, 64)
	b.StopTimer()
	report(b, ours, n, map[string]time.Duration{"gochan": goChanInProc(n)})
}

// packInProc moves n payloads between two goroutines in packs of per.
func packInProc(b *testing.B, buf *ipc.Buffer, id ipc.ChannelID, n, per int) time.Duration {
	ctx := context.Background()
	var s byte
	return inProc(b, buf, id, n, func(h *ipc.Handle, p *ipc.Producer, sent, left int) (int, error) {
		pk, err := h.AllocatePack(min(per, left), payload)
		if err != nil {
			return 0, err
		}
		for i, pl := range pk.All() {
			fill(pl, byte(sent+i))
		}
		return pk.Len(), p.Send(ctx, pk.Record())
	}, func(h *ipc.Handle, c *ipc.Consumer) (int, error) {
		r, err := c.Receive(ctx)
		if err != nil {
			return 0, err
		}
		pk, err := ipc.PackOf(r)
		if err != nil {
			return 0, err
		}
		for _, pl := range pk.All() {
			s += sum(pl)
		}
		return pk.Len(), h.Free(r)
	})
}

// BenchmarkRecordOneGoroutine is the record path's own CPU cost, with no
// cache line crossing cores: one goroutine allocates, writes, sends,
// receives, reads and frees each 64-byte record (single: one at a time;
// batch: the batch forms, 64 at a time; each: the fused batch forms, 64
// at a time), beside a Go chan []byte that the
// goroutine sends fresh slices to and receives them from. Between two
// goroutines each side does about half of this work, plus the transfers
// (BenchmarkFloorInProcess).
func BenchmarkRecordOneGoroutine(b *testing.B) {
	for _, batch := range []int{1, 64, -64} {
		b.Run(map[int]string{1: "single", 64: "batch", -64: "each"}[batch], func(b *testing.B) {
			buf := benchBuf(b)
			h := must(buf.NewHandle())
			defer h.Close()
			p := must(h.Producer(3))
			defer p.Close()
			c := must(h.Consumer(3))
			defer c.Close()
			n := b.N
			b.ResetTimer()
			start := time.Now()
			oneGoroutine(b, h, p, c, n, batch)
			ours := time.Since(start)
			b.StopTimer()
			report(b, ours, n, map[string]time.Duration{"gochan": goChanOneGoroutine(n)})
		})
	}
}

// oneGoroutine moves n records one at a time (batch 1), with the batch
// forms (batch > 1 at a time) or with the fused ones (-batch at a time).
func oneGoroutine(b *testing.B, h *ipc.Handle, p *ipc.Producer, c *ipc.Consumer, n, batch int) {
	ctx := context.Background()
	var s byte
	if batch < 0 {
		use := func(r []byte) { s += sum(r) }
		for done := 0; done < n; {
			k := min(-batch, n-done)
			if sent, err := p.SendEach(ctx, k, payload, func(i int, r []byte) { fillAt(done+i, r) }); err != nil || sent != k {
				b.Fatalf("sent %d of %d: %v", sent, k, err)
			}
			if got, err := c.ReceiveEach(ctx, k, use); err != nil || got != k {
				b.Fatalf("received %d of %d: %v", got, k, err)
			}
			done += k
		}
		return
	}
	rs := make([]ipc.Record, batch)
	out := make([]ipc.Record, batch)
	for done := 0; done < n; {
		k := min(batch, n-done)
		if batch == 1 {
			r := must(h.Allocate(payload))
			fill(r.Bytes(), byte(done))
			if err := p.Send(ctx, r); err != nil {
				b.Fatal(err)
			}
			v, err := receiveOne(ctx, h, c)
			if err != nil {
				b.Fatal(err)
			}
			s += v
			done++
			continue
		}
		if err := h.AllocateBatch(payload, rs[:k]); err != nil {
			b.Fatal(err)
		}
		for j, r := range rs[:k] {
			fill(r.Bytes(), byte(done+j))
		}
		if _, err := p.SendBatch(ctx, rs[:k]); err != nil {
			b.Fatal(err)
		}
		got, v, err := receiveBatch(ctx, h, c, out[:k])
		if err != nil || got != k {
			b.Fatalf("received %d of %d: %v", got, k, err)
		}
		s += v
		done += k
	}
	_ = s
}

func goChanOneGoroutine(n int) time.Duration {
	ch := make(chan []byte, 1024)
	var s byte
	start := time.Now()
	for i := range n {
		b := make([]byte, payload)
		fill(b, byte(i))
		ch <- b
		s += sum(<-ch)
	}
	_ = s
	return time.Since(start)
}

// TestChildBenchConsume is the consumer process of the cross-process
// benchmarks: records on channel 1 of the buffer, one at a time (packs
// with BENCH_PACK, up to 64 at a time with BENCH_RECV_BATCH), or 64-byte
// messages on the socket at fd 3; it reads every payload and says "done"
// at the end.
func TestChildBenchConsume(t *testing.T) {
	testutil.ChildOnly(t)
	n := envInt(t, envN)
	if os.Getenv("BENCH_SOCKET") != "" {
		conn, err := net.FileConn(os.NewFile(3, "sock"))
		if err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, payload*64)
		var s byte
		for got := 0; got < n*payload; {
			k, err := conn.Read(buf)
			if err != nil {
				t.Fatal(err)
			}
			s += sum(buf[:k])
			got += k
		}
		testutil.Say("done %d", s)
		return
	}
	bf := attach(t)
	h := newHandle(t, bf)
	c, err := h.Consumer(1)
	if err != nil {
		t.Fatal(err)
	}
	ctx := ctxFor(t)
	var s byte
	if os.Getenv("BENCH_PACK") != "" {
		for got := 0; got < n; {
			r, err := c.Receive(ctx)
			if err != nil {
				t.Fatal(err)
			}
			pk, err := ipc.PackOf(r)
			if err != nil {
				t.Fatal(err)
			}
			for _, pl := range pk.All() {
				s += sum(pl)
			}
			got += pk.Len()
			if err := h.Free(r); err != nil {
				t.Fatal(err)
			}
		}
		testutil.Say("done %d", s)
		return
	}
	if os.Getenv(envRecvBatch) == "each" {
		use := func(r []byte) { s += sum(r) }
		for got := 0; got < n; {
			k, err := c.ReceiveEach(ctx, 64, use)
			if err != nil {
				t.Fatal(err)
			}
			got += k
		}
		testutil.Say("done %d", s)
		return
	}
	if os.Getenv(envRecvBatch) == "" {
		for got := 0; got < n; got++ {
			v, err := receiveOne(ctx, h, c)
			if err != nil {
				t.Fatal(err)
			}
			s += v
		}
		testutil.Say("done %d", s)
		return
	}
	rs := make([]ipc.Record, 64)
	for got := 0; got < n; {
		k, v, err := receiveBatch(ctx, h, c, rs)
		if err != nil {
			t.Fatal(err)
		}
		s += v
		got += k
	}
	testutil.Say("done %d", s)
}

// BenchmarkRecordCrossProcess: this process allocates, writes and sends
// 64-byte records one at a time; a child process receives, reads and
// frees them one at a time (the per-record forms, as in
// BenchmarkRecordInProcess). Beside it, the same bytes through a Unix
// socket to another child.
func BenchmarkRecordCrossProcess(b *testing.B) { recordCrossProcess(b, "") }

// BenchmarkRecordCrossProcessReceiveBatch is BenchmarkRecordCrossProcess
// with a child that takes what is queued with ReceiveBatch (up to 64 at a
// time) and frees it with FreeBatch, while this process still sends one
// record at a time.
func BenchmarkRecordCrossProcessReceiveBatch(b *testing.B) { recordCrossProcess(b, "1") }

// BenchmarkRecordEachCrossProcess is BenchmarkRecordCrossProcess with the
// fused batch forms on both sides: this process sends every record with
// one SendEach call, the child receives with ReceiveEach, up to 64 at a
// time.
func BenchmarkRecordEachCrossProcess(b *testing.B) { recordCrossProcess(b, "each") }

// envRecvBatch tells TestChildBenchConsume to receive with ReceiveBatch
// (1) or ReceiveEach (each).
const envRecvBatch = "BENCH_RECV_BATCH"

func recordCrossProcess(b *testing.B, recv string) {
	buf := benchBuf(b)
	n := b.N
	h := must(buf.NewHandle())
	defer h.Close()
	p := must(h.Producer(1))
	env := []string{envBuf + "=" + buf.Name(), envN + "=" + strconv.Itoa(n)}
	if recv != "" {
		env = append(env, envRecvBatch+"="+recv)
	}
	child := testutil.StartChild(b, "TestChildBenchConsume", env...)
	ctx := context.Background()
	b.ResetTimer()
	start := time.Now()
	if recv == "each" {
		if k, err := p.SendEach(ctx, n, payload, fillAt); err != nil || k != n {
			b.Fatalf("sent %d of %d: %v", k, n, err)
		}
	}
	for i := 0; i < n && recv != "each"; i++ {
		r := must(h.Allocate(payload))
		fill(r.Bytes(), byte(i))
		if err := p.Send(ctx, r); err != nil {
			b.Fatal(err)
		}
	}
	child.Line(b, 5*time.Minute)
	ours := time.Since(start)
	b.StopTimer()
	child.MustSucceed(b, time.Minute)
	p.Close()
	report(b, ours, n, map[string]time.Duration{"unix": unixCrossProc(b, n, 1)})
}

// BenchmarkRecordPackCrossProcess is BenchmarkRecordCrossProcess with
// packs of 64 payloads of 64 bytes (one op is one payload): the child
// receives each pack, reads every payload and frees the pack. Beside it,
// the Unix socket writing the same bytes a payload at a time (unix) and
// 64 payloads at a time (unix-64, the socket's own batch form).
func BenchmarkRecordPackCrossProcess(b *testing.B) {
	const per = 64
	buf := benchBuf(b)
	n := b.N
	h := must(buf.NewHandle())
	defer h.Close()
	p := must(h.Producer(1))
	child := testutil.StartChild(b, "TestChildBenchConsume", envBuf+"="+buf.Name(), envN+"="+strconv.Itoa(n), "BENCH_PACK=1")
	ctx := context.Background()
	b.ResetTimer()
	start := time.Now()
	for sent := 0; sent < n; {
		pk := must(h.AllocatePack(min(per, n-sent), payload))
		for i, pl := range pk.All() {
			fill(pl, byte(sent+i))
		}
		if err := p.Send(ctx, pk.Record()); err != nil {
			b.Fatal(err)
		}
		sent += pk.Len()
	}
	child.Line(b, 5*time.Minute)
	ours := time.Since(start)
	b.StopTimer()
	child.MustSucceed(b, time.Minute)
	p.Close()
	report(b, ours, n, map[string]time.Duration{"unix": unixCrossProc(b, n, 1), "unix-64": unixCrossProc(b, n, per)})
}

// unixCrossProc writes n 64-byte payloads, per at a time, through a Unix
// socket to a child that reads them all, and returns how long that took.
func unixCrossProc(b *testing.B, n, per int) time.Duration {
	f0, f1 := socketPair(b)
	sc := testutil.StartChildFiles(b, "TestChildBenchConsume", []*os.File{f1}, "BENCH_SOCKET=1", envN+"="+strconv.Itoa(n))
	f1.Close()
	conn := must(net.FileConn(f0))
	f0.Close()
	defer conn.Close()
	msg := make([]byte, payload*per)
	start := time.Now()
	for sent := 0; sent < n; {
		k := min(per, n-sent)
		for i := range k {
			fill(msg[i*payload:(i+1)*payload], byte(sent+i))
		}
		if _, err := conn.Write(msg[:k*payload]); err != nil {
			b.Fatal(err)
		}
		sent += k
	}
	sc.Line(b, 5*time.Minute)
	el := time.Since(start)
	sc.MustSucceed(b, time.Minute)
	return el
}

// BenchmarkRecordPingPong: one record bounced between two goroutines over
// two channels (round trip per op), spinning then parking (busy) or
// parking at once (parked), beside an os.Pipe ping-pong.
func BenchmarkRecordPingPong(b *testing.B) {
	for _, mode := range []struct {
		name string
		spin time.Duration
	}{{"busy", 0}, {"parked", -1}} {
		b.Run(mode.name, func(b *testing.B) {
			buf := benchBuf(b)
			ha := must(buf.NewHandle())
			defer ha.Close()
			hb := must(buf.NewHandle())
			defer hb.Close()
			pa := must(ha.Producer(1, ipc.WithSpin(mode.spin)))
			ca := must(ha.Consumer(2, ipc.WithSpin(mode.spin)))
			pb := must(hb.Producer(2, ipc.WithSpin(mode.spin)))
			cb := must(hb.Consumer(1, ipc.WithSpin(mode.spin)))
			ctx := context.Background()
			go func() {
				for {
					r, err := cb.Receive(ctx)
					if err != nil {
						pb.Close()
						return
					}
					r.Bytes()[0]++
					if pb.Send(ctx, r) != nil {
						return
					}
				}
			}()
			r := must(ha.Allocate(payload))
			n := 0
			start := time.Now()
			for b.Loop() {
				if err := pa.Send(ctx, r); err != nil {
					b.Fatal(err)
				}
				var err error
				if r, err = ca.Receive(ctx); err != nil {
					b.Fatal(err)
				}
				n++
			}
			ours := time.Since(start)
			pa.Close()
			ha.Free(r)
			pipe := pipePingPong(b, n)
			o := float64(ours.Nanoseconds()) / float64(n)
			pp := float64(pipe.Nanoseconds()) / float64(n)
			b.ReportMetric(pp, "pipe-ns/rt")
			b.ReportMetric(pp/o, "x-pipe")
		})
	}
}

// BenchmarkRecordPingPongCrossProcess is BenchmarkRecordPingPong between
// two processes: this one sends a record on channel 1 and waits for it
// back on channel 2; a child receives it, changes a byte and sends the
// same record back (zero-copy, no allocation on either side). Beside it,
// the same round trip of 64 bytes over two pipes to another child. Both
// sides spin then park (busy) or park at once (parked).
func BenchmarkRecordPingPongCrossProcess(b *testing.B) {
	for _, mode := range []struct {
		name string
		spin time.Duration
	}{{"busy", 0}, {"parked", -1}} {
		b.Run(mode.name, func(b *testing.B) {
			buf := benchBuf(b)
			n := b.N
			h := must(buf.NewHandle())
			defer h.Close()
			p := must(h.Producer(1, ipc.WithSpin(mode.spin)))
			c := must(h.Consumer(2, ipc.WithSpin(mode.spin)))
			child := testutil.StartChild(b, "TestChildBenchEcho", envBuf+"="+buf.Name(), envN+"="+strconv.Itoa(n),
				"BENCH_SPIN="+strconv.Itoa(int(mode.spin)))
			ctx := context.Background()
			r := must(h.Allocate(payload))
			child.Line(b, time.Minute) // ready: both ends attached
			b.ResetTimer()
			start := time.Now()
			for range n {
				if err := p.Send(ctx, r); err != nil {
					b.Fatal(err)
				}
				var err error
				if r, err = c.Receive(ctx); err != nil {
					b.Fatal(err)
				}
			}
			ours := time.Since(start)
			b.StopTimer()
			child.Line(b, time.Minute)
			child.MustSucceed(b, time.Minute)
			if got := r.Bytes()[0]; got != byte(n) {
				b.Fatalf("the record came back %d times, want %d", got, byte(n))
			}
			if err := h.Free(r); err != nil {
				b.Fatal(err)
			}
			p.Close()
			c.Close()
			pipe := pipePingPongCrossProcess(b, n)
			o := float64(ours.Nanoseconds()) / float64(n)
			pp := float64(pipe.Nanoseconds()) / float64(n)
			b.ReportMetric(pp, "pipe-ns/rt")
			b.ReportMetric(pp/o, "x-pipe")
		})
	}
}

// pipePingPongCrossProcess bounces 64 bytes n times through a child over
// two pipes (the child's end in blocking mode, as a process that is not
// Go would read it; this end through Go's poller).
func pipePingPongCrossProcess(b *testing.B, n int) time.Duration {
	r1, w1 := must2(b)
	r2, w2 := must2(b)
	defer func() { w1.Close(); r2.Close() }()
	child := testutil.StartChildFiles(b, "TestChildBenchEcho", []*os.File{r1, w2}, "BENCH_PIPE=1", envN+"="+strconv.Itoa(n))
	r1.Close()
	w2.Close()
	msg := make([]byte, payload)
	child.Line(b, time.Minute) // ready
	start := time.Now()
	for range n {
		if _, err := w1.Write(msg); err != nil {
			b.Fatal(err)
		}
		if _, err := io.ReadFull(r2, msg); err != nil {
			b.Fatal(err)
		}
	}
	el := time.Since(start)
	child.Line(b, time.Minute)
	child.MustSucceed(b, time.Minute)
	if msg[0] != byte(n) {
		b.Fatalf("the message came back %d times, want %d", msg[0], byte(n))
	}
	return el
}

// TestChildBenchEcho is the other process of
// BenchmarkRecordPingPongCrossProcess: n times, it receives the record on
// channel 1, adds one to its first byte and sends it back on channel 2
// (or, with BENCH_PIPE, the same with 64 bytes from the pipe at fd 3 to
// the pipe at fd 4). It says "ready" before the first and "done" after
// the last.
func TestChildBenchEcho(t *testing.T) {
	testutil.ChildOnly(t)
	n := envInt(t, envN)
	if os.Getenv("BENCH_PIPE") != "" {
		in, out := os.NewFile(3, "in"), os.NewFile(4, "out")
		msg := make([]byte, payload)
		testutil.Say("ready")
		for range n {
			if _, err := io.ReadFull(in, msg); err != nil {
				t.Fatal(err)
			}
			msg[0]++
			if _, err := out.Write(msg); err != nil {
				t.Fatal(err)
			}
		}
		testutil.Say("done")
		return
	}
	spin := time.Duration(envInt(t, "BENCH_SPIN"))
	h := newHandle(t, attach(t))
	c, err := h.Consumer(1, ipc.WithSpin(spin))
	if err != nil {
		t.Fatal(err)
	}
	p, err := h.Producer(2, ipc.WithSpin(spin))
	if err != nil {
		t.Fatal(err)
	}
	ctx := ctxFor(t)
	testutil.Say("ready")
	for range n {
		r, err := c.Receive(ctx)
		if err != nil {
			t.Fatal(err)
		}
		r.Bytes()[0]++
		if err := p.Send(ctx, r); err != nil {
			t.Fatal(err)
		}
	}
	if err := errors.Join(p.Close(), c.Close()); err != nil {
		t.Fatal(err)
	}
	testutil.Say("done")
}

func pipePingPong(b *testing.B, n int) time.Duration {
	r1, w1 := must2(b)
	r2, w2 := must2(b)
	defer func() { r1.Close(); w1.Close(); r2.Close(); w2.Close() }()
	go func() {
		buf := make([]byte, payload)
		for i := 0; i < n; i++ {
			if _, err := io.ReadFull(r1, buf); err != nil {
				return
			}
			w2.Write(buf)
		}
	}()
	buf := make([]byte, payload)
	start := time.Now()
	for i := 0; i < n; i++ {
		w1.Write(buf)
		io.ReadFull(r2, buf)
	}
	return time.Since(start)
}

func must2(b *testing.B) (*os.File, *os.File) {
	r, w, err := os.Pipe()
	if err != nil {
		b.Fatal(err)
	}
	return r, w
}

// BenchmarkFloorInProcess is the yardstick for the in-process figures:
// the cheapest transfer of 64-byte payloads between two goroutines that
// any shared-memory channel can do. A ring of 96-byte slots (a heapipc
// record's stride) is written and read in place, with no allocation and
// no check, publishing after every record (single) or every 64 (batch),
// at most 1024 in flight, beside the same Go channel as
// BenchmarkRecordInProcess. What batch costs is the payload's cache lines
// crossing between the two cores; its x-gochan bounds what a record
// channel's batch forms can reach on the machine. Batch rewrites each
// slot as soon as the reader has passed it (1024 slots of memory);
// batch-spread is the same ring over 4096 slots of memory, so that a
// slot is rewritten only after three more ring-fulls have gone through:
// on an Intel Xeon VM that alone made the bare ring about twice as fast
// (7.5-8.5 against 13.5-15 ns a payload; 10 ns over 2048 slots) — a
// writer right behind the reader pays for lines the reader has just
// read. There even batch-spread's reader pays ~5 ns for each line it
// pulls from the writer's core, which no order of reading hides. A
// record channel's batch figure (~17 ns) did not move with the same cure
// (slabs of 256 KiB to 4 MiB, or a ring of 4096 or 8192), nor with its
// consumer's trailer checks fused into the header checks, no write to a
// record's line on free, or the next batch's lines prefetched
// (PREFETCHT0, PREFETCHW) while the user reads this one; the trailers
// written in the allocator's carving pass (AllocBatchStamped) took
// ~0.3 ns off its ~15 ns. Each side is busy all the time, with ~11 ns of its own
// work a record (BenchmarkRecordOneGoroutine/batch, both sides in one
// goroutine, ~21.5 ns) and the lines' transfers on top. Single
// publishes every record with Go's atomic store (a locked exchange) while
// the reader polls the tail: on hosts where that exchange is dear (an
// Intel Xeon VM) it runs slower than heapipc's record channel, which
// publishes without a fence (package channel's publish), and bounds
// nothing there.
//
// record-passes and record-fused are the memory traffic of the record
// channel's batch forms with none of its other work (recordFloorInProc):
// slots shaped as 64-byte records, over the memory a producer cycles
// through. record-passes goes through each batch of 64 in the passes the
// batch API makes each side take (AllocateBatch, the user's fill,
// SendBatch; ReceiveBatch, the user's read, FreeBatch), record-fused does
// each record's work at once. On an Intel Xeon VM: 12.5-13 ns against
// 8.5-9.3 (5.7-6.0× against 7.7-8.3× the Go channel), while the record
// channel's batch forms ran at 17.7-18.2 ns (4.1×) in the same runs. A
// side that goes over a batch twice waits for the other core's lines in
// one pass and computes in the other; one pass overlaps them (a scratch
// variant of this floor whose consumer checks in one pass and reads and
// marks in another ran at 13.5-14.4 ns, against 9.5-10 fused). The
// record channel's fused forms (SendEach, ReceiveEach) take that one
// pass: 12.9-13.4 ns, 5.2-6.0× (BenchmarkRecordEachInProcess). On the
// AMD EPYC VM (2026-11-25), record-passes runs at 7.5-8.3 ns; the batch
// forms at 10.5-10.8 ns and the fused ones at 9.5-9.8 ns (5.7-6.5× and
// 5.8-6.3× the Go channel) once their checks of a run's records went
// into loops that make no call (checkSpan, Carving.Stamp, carveStamped):
// what is left above the floor is the consumer's own work, ~10.7 ns a
// record on one goroutine against the producer's ~8.7.
func BenchmarkFloorInProcess(b *testing.B) {
	for _, c := range []struct {
		name       string
		batch, mem int
	}{{"single", 1, 1024}, {"batch", 64, 1024}, {"batch-spread", 64, 4096}} {
		b.Run(c.name, func(b *testing.B) {
			n := b.N
			b.ResetTimer()
			ours := floorInProc(n, c.batch, c.mem)
			b.StopTimer()
			report(b, ours, n, map[string]time.Duration{"gochan": goChanInProc(n)})
		})
	}
	for _, passes := range []bool{true, false} {
		b.Run(map[bool]string{true: "record-passes", false: "record-fused"}[passes], func(b *testing.B) {
			n := b.N
			b.ResetTimer()
			ours, bad := recordFloorInProc(n, passes)
			b.StopTimer()
			if bad != 0 {
				b.Fatalf("%d records failed their checks", bad)
			}
			report(b, ours, n, map[string]time.Duration{"gochan": goChanInProc(n)})
		})
	}
}

// recordFloorInProc moves n records through a bare ring of at most 1024
// in flight, published 64 at a time, over 2048 slots of memory (about a
// record channel's reuse distance: a producer cycles through three slabs
// of ~680 such records), each slot shaped as a 64-byte record is: a
// 16-byte header, the payload, a 16-byte trailer, 96 bytes in all. The
// producer writes the header and trailer, fills the payload and checks
// the trailer; the consumer checks the header and trailer, reads the
// payload and writes a mark into the trailer (a free's store) — the
// memory traffic of the record channel's batch forms, with no other work.
// passes: each side goes through the batch in the passes the batch API
// makes (AllocateBatch writes headers and trailers, the user fills,
// SendBatch checks; ReceiveBatch checks, the user reads, FreeBatch
// marks); otherwise each side does all of a record's work at once. It
// returns the time and how many records failed the consumer's checks (a
// bug in the floor, not a measurement).
func recordFloorInProc(n int, passes bool) (time.Duration, int) {
	const inFlight, batch, mem, words = 1024, 64, 2048, 96 / 8
	const magic = 0x48524543
	ring := make([]uint64, mem*words)
	raw := unsafe.Slice((*byte)(unsafe.Pointer(unsafe.SliceData(ring))), len(ring)*8)
	rec := func(j uint64) []uint64 { return ring[int(j%mem)*words:][:words] }
	pay := func(j uint64) []byte { i := int(j%mem) * 96; return raw[i+16 : i+16+payload] }
	var head, tail atomic.Uint64
	type result struct {
		s   byte
		bad int
	}
	done := make(chan result)
	start := time.Now()
	go func() {
		var res result
		check := func(j uint64) {
			r := rec(j)
			if r[0] != j || r[1] != j*7 || r[10] != payload || r[11] != magic {
				res.bad++
			}
		}
		for h := uint64(0); h < uint64(n); {
			t := tail.Load()
			if t == h {
				runtime.Gosched()
				continue
			}
			t = min(t, h+batch)
			if passes {
				for j := h; j < t; j++ {
					check(j)
				}
				for j := h; j < t; j++ {
					res.s += sum(pay(j))
				}
				for j := h; j < t; j++ {
					rec(j)[11] = ^uint64(magic)
				}
			} else {
				for j := h; j < t; j++ {
					check(j)
					res.s += sum(pay(j))
					rec(j)[11] = ^uint64(magic)
				}
			}
			h = t
			head.Store(h)
		}
		done <- res
	}()
	stamp := func(j uint64) {
		r := rec(j)
		r[0], r[1], r[10], r[11] = j, j*7, payload, magic
	}
	bad := 0
	for t := uint64(0); t < uint64(n); {
		k := min(batch, uint64(n)-t)
		for t+k-head.Load() > inFlight {
			runtime.Gosched()
		}
		if passes {
			for j := t; j < t+k; j++ {
				stamp(j)
			}
			for j := t; j < t+k; j++ {
				fill(pay(j), byte(j))
			}
			for j := t; j < t+k; j++ {
				if rec(j)[11] != magic {
					bad++
				}
			}
		} else {
			for j := t; j < t+k; j++ {
				stamp(j)
				fill(pay(j), byte(j))
			}
		}
		t += k
		tail.Store(t)
	}
	res := <-done
	return time.Since(start), bad + res.bad
}

// floorInProc moves n payloads through a bare ring of at most 1024 in
// flight, published every batch, over mem slots of memory (a multiple of
// 1024).
func floorInProc(n, batch, mem int) time.Duration {
	const inFlight, stride = 1024, 96
	ring := make([]byte, mem*stride)
	var head, tail atomic.Uint64
	done := make(chan byte)
	start := time.Now()
	go func() {
		var s byte
		for h := uint64(0); h < uint64(n); {
			t := tail.Load()
			if t == h {
				runtime.Gosched()
				continue
			}
			for ; h < t; h++ {
				i := int(h%uint64(mem)) * stride
				s += sum(ring[i : i+payload])
			}
			head.Store(h)
		}
		done <- s
	}()
	for t := uint64(0); t < uint64(n); {
		k := min(uint64(batch), uint64(n)-t)
		for t+k-head.Load() > inFlight {
			runtime.Gosched()
		}
		for j := t; j < t+k; j++ {
			i := int(j%uint64(mem)) * stride
			fill(ring[i:i+payload], byte(j))
		}
		t += k
		tail.Store(t)
	}
	<-done
	return time.Since(start)
}
