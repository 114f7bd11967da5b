package tests

import (
	"context"
	"errors"
	"hash/crc32"
	"io"
	"net"
	"os"
	"strconv"
	"testing"
	"time"

	ipc "github.com/heapipc/ipc"
	"github.com/heapipc/ipc/internal/testutil"
)

// Benchmarks of stream channels and mailboxes across two processes (and
// of small stream messages between two goroutines), beside an os.Pipe and
// a Unix stream socket between the same two processes (goroutines) in the
// same run. Each reports its own figure and the peers', and the ratio
// x-PEER (above 1: heapipc is faster). Payloads are written by the sender
// and read (CRC'd) by the receiver, by every contender alike.
//
//	go test -run '^$' -bench 'Stream|Mailbox' -benchtime 2s ./tests/

const streamBenchID ipc.ChannelID = 90

// crcSink CRCs what it is given, so every contender reads every byte.
type crcSink struct{ crc uint32 }

func (s *crcSink) Write(p []byte) (int, error) {
	s.crc = crc32.Update(s.crc, crc32.IEEETable, p)
	return len(p), nil
}

// fdConn makes a net.Conn of a socket file (and closes the file).
func fdConn(tb testing.TB, f *os.File) net.Conn {
	c, err := net.FileConn(f)
	if err != nil {
		tb.Fatal(err)
	}
	f.Close()
	return c
}

// TestChildStreamBenchSink reads everything sent to it — from the stream
// (HIPC_MODE=stream), or from fd 3 (a pipe or a socket) — into a 64 KiB
// buffer, CRCs it, and says "done N" at EOF.
func TestChildStreamBenchSink(t *testing.T) {
	testutil.ChildOnly(t)
	var src io.Reader
	if os.Getenv("HIPC_MODE") == "stream" {
		b := attach(t)
		r, err := newHandle(t, b).StreamReader(streamBenchID)
		if err != nil {
			t.Fatal(err)
		}
		r.SetContext(ctxFor(t))
		src = r
	} else {
		src = os.NewFile(3, "in")
	}
	buf := make([]byte, 64<<10)
	var s crcSink
	total := 0
	for {
		n, err := src.Read(buf)
		s.Write(buf[:n])
		total += n
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	testutil.Say("done %d", total)
}

// writeAll sends n writes of p (its first byte varied) to w, waits for the
// child's "done", and returns the time from the first write to it.
func writeAll(b *testing.B, w io.WriteCloser, child *testutil.Child, n int, p []byte) time.Duration {
	start := time.Now()
	for i := 0; i < n; i++ {
		p[0] = byte(i)
		if _, err := w.Write(p); err != nil {
			b.Fatal(err)
		}
	}
	if err := w.Close(); err != nil {
		b.Fatal(err)
	}
	if got, want := child.Line(b, 5*time.Minute), "done "+strconv.Itoa(n*len(p)); got != want {
		b.Fatalf("child said %q, want %q", got, want)
	}
	el := time.Since(start)
	child.MustSucceed(b, time.Minute)
	return el
}

// report adds the per-op figures of the peers and the ratios.
func reportPeers(b *testing.B, ours time.Duration, n int, bytesPerOp int, peers map[string]time.Duration) {
	o := float64(ours.Nanoseconds()) / float64(n)
	b.ReportMetric(o, "ns/op")
	b.ReportMetric(float64(bytesPerOp)*1e3/o, "MB/s")
	for name, d := range peers {
		p := float64(d.Nanoseconds()) / float64(n)
		b.ReportMetric(float64(bytesPerOp)*1e3/p, name+"-MB/s")
		b.ReportMetric(p/o, "x-"+name)
	}
}

// BenchmarkStreamThroughput4K: 4 KiB writes into a stream (1 MiB ring)
// read by another process, beside 4 KiB writes into an os.Pipe and a Unix
// socket read by another process. One op is one 4 KiB write.
func BenchmarkStreamThroughput4K(b *testing.B) {
	const size = 4 << 10
	n := b.N
	p := make([]byte, size)
	for i := range p {
		p[i] = byte(i * 7)
	}
	buf := benchBuf(b)
	w := must(must(buf.NewHandle()).StreamWriter(streamBenchID, ipc.WithStreamCapacity(1<<20)))
	child := testutil.StartChild(b, "TestChildStreamBenchSink", envBuf+"="+buf.Name(), "HIPC_MODE=stream")
	b.ResetTimer()
	ours := writeAll(b, w, child, n, p)
	b.StopTimer()

	pr, pw := must2(b)
	child = testutil.StartChildFiles(b, "TestChildStreamBenchSink", []*os.File{pr}, "HIPC_MODE=fd")
	pr.Close()
	pipe := writeAll(b, pw, child, n, p)

	f0, f1 := socketPair(b)
	child = testutil.StartChildFiles(b, "TestChildStreamBenchSink", []*os.File{f1}, "HIPC_MODE=fd")
	f1.Close()
	conn := fdConn(b, f0)
	unix := writeAll(b, conn, child, n, p)
	reportPeers(b, ours, n, size, map[string]time.Duration{"pipe": pipe, "unix": unix})
}

// BenchmarkStreamSmallMessages: 64-byte messages between two goroutines
// through a stream's io.Writer and io.Reader ends (Write, io.ReadFull),
// beside the same through an os.Pipe and a Unix socket pair in the same
// run. The writer writes every byte of each message and the reader CRCs
// them. One op is one message.
func BenchmarkStreamSmallMessages(b *testing.B) {
	n := b.N
	buf := benchBuf(b)
	w := must(must(buf.NewHandle()).StreamWriter(streamBenchID))
	r := must(must(buf.NewHandle()).StreamReader(streamBenchID))
	b.ResetTimer()
	ours := smallMessages(b, w, r, n)
	b.StopTimer()
	w.Close()
	r.Close()
	pr, pw := must2(b)
	pipe := smallMessages(b, pw, pr, n)
	pw.Close()
	pr.Close()
	f0, f1 := socketPair(b)
	c0, c1 := fdConn(b, f0), fdConn(b, f1)
	unix := smallMessages(b, c0, c1, n)
	c0.Close()
	c1.Close()
	reportPeers(b, ours, n, payload, map[string]time.Duration{"pipe": pipe, "unix": unix})
}

// smallMessages times n messages of payload bytes written to w by this
// goroutine and read (io.ReadFull, CRC'd) from r by another.
func smallMessages(b *testing.B, w io.Writer, r io.Reader, n int) time.Duration {
	done := make(chan error, 1)
	go func() {
		var s crcSink
		m := make([]byte, payload)
		for range n {
			if _, err := io.ReadFull(r, m); err != nil {
				done <- err
				return
			}
			s.Write(m)
		}
		done <- nil
	}()
	start := time.Now()
	m := make([]byte, payload)
	for i := range n {
		fill(m, byte(i))
		if _, err := w.Write(m); err != nil {
			b.Fatal(err)
		}
	}
	if err := <-done; err != nil {
		b.Fatal(err)
	}
	return time.Since(start)
}

// TestChildMailboxBenchEcho answers HIPC_N messages of HIPC_SIZE bytes
// with themselves: through the mailbox (HIPC_MODE=mailbox), or by reading
// fd 3 and writing fd 4 (HIPC_MODE=fd; the same socket for both when
// there is no fd 4).
func TestChildMailboxBenchEcho(t *testing.T) {
	testutil.ChildOnly(t)
	ctx := ctxFor(t)
	if os.Getenv("HIPC_MODE") == "mailbox" {
		b := attach(t)
		r, err := newHandle(t, b).Responder(streamBenchID)
		if err != nil {
			t.Fatal(err)
		}
		testutil.Say("ready")
		if err := r.Serve(ctx, func(_ context.Context, req []byte) ([]byte, error) { return req, nil }); err != nil {
			t.Fatal(err)
		}
		r.Close()
		return
	}
	size, n := envInt(t, "HIPC_SIZE"), envInt(t, envN)
	var in io.Reader
	var out io.Writer
	if os.Getenv("HIPC_SOCKET") != "" {
		c := fdConn(t, os.NewFile(3, "sock"))
		in, out = c, c
	} else {
		in, out = os.NewFile(3, "in"), os.NewFile(4, "out")
	}
	msg := make([]byte, size)
	testutil.Say("ready")
	for i := 0; i < n; i++ {
		if _, err := io.ReadFull(in, msg); err != nil {
			t.Fatal(err)
		}
		if _, err := out.Write(msg); err != nil {
			t.Fatal(err)
		}
	}
}

// roundTrips sends n messages of msg over w and reads each echo from r.
func roundTrips(b *testing.B, w io.Writer, r io.Reader, n int, msg []byte) time.Duration {
	back := make([]byte, len(msg))
	var s crcSink
	start := time.Now()
	for i := 0; i < n; i++ {
		msg[0] = byte(i)
		if _, err := w.Write(msg); err != nil {
			b.Fatal(err)
		}
		if _, err := io.ReadFull(r, back); err != nil {
			b.Fatal(err)
		}
		s.Write(back)
	}
	return time.Since(start)
}

// requests times n requests of msg (its first byte the request's number)
// through q, each reply read (CRC'd).
func requests(b *testing.B, ctx context.Context, q *ipc.Requester, n int, msg []byte) time.Duration {
	var reply []byte
	var s crcSink
	start := time.Now()
	for i := 0; i < n; i++ {
		msg[0] = byte(i)
		var err error
		if reply, err = q.RequestInto(ctx, msg, reply); err != nil {
			b.Fatal(err)
		}
		s.Write(reply)
	}
	return time.Since(start)
}

// BenchmarkMailboxRoundTripInProcess: a 64-byte request echoed by a
// responder goroutine (Serve), beside the same round trip over two
// os.Pipes to an echoing goroutine, in the same run. One op is one round
// trip.
func BenchmarkMailboxRoundTripInProcess(b *testing.B) {
	n := b.N
	msg := make([]byte, payload)
	buf := benchBuf(b)
	q := must(must(buf.NewHandle()).Requester(streamBenchID))
	rs := must(must(buf.NewHandle()).Responder(streamBenchID))
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() {
		served <- rs.Serve(ctx, func(_ context.Context, req []byte) ([]byte, error) { return req, nil })
	}()
	b.ResetTimer()
	ours := requests(b, ctx, q, n, msg)
	b.StopTimer()
	cancel()
	if err := <-served; err != nil && !errors.Is(err, context.Canceled) {
		b.Fatal(err)
	}
	q.Close()
	rs.Close()

	r1, w1 := must2(b)
	r2, w2 := must2(b)
	echoed := make(chan error, 1)
	go func() {
		m := make([]byte, payload)
		for range n {
			if _, err := io.ReadFull(r1, m); err != nil {
				echoed <- err
				return
			}
			if _, err := w2.Write(m); err != nil {
				echoed <- err
				return
			}
		}
		echoed <- nil
	}()
	pipe := roundTrips(b, w1, r2, n, msg)
	if err := <-echoed; err != nil {
		b.Fatal(err)
	}
	for _, f := range []*os.File{r1, w1, r2, w2} {
		f.Close()
	}
	reportPeers(b, ours, n, payload, map[string]time.Duration{"pipe": pipe})
}

// BenchmarkMailboxRoundTrip: a request of 4 KiB (and of 10 MiB, through
// the default 4 MiB window: three chunks each way) echoed by a responder
// in another process, beside the same round trip over a pair of os.Pipes
// and over a Unix socket to an echoing process. One op is one round trip.
func BenchmarkMailboxRoundTrip(b *testing.B) {
	for _, size := range []int{4 << 10, 10 << 20} {
		name := "4KiB"
		if size > 1<<20 {
			name = "10MiB"
		}
		b.Run(name, func(b *testing.B) {
			n := b.N
			msg := make([]byte, size)
			for i := range msg {
				msg[i] = byte(i * 13)
			}
			buf := benchBuf(b)
			q := must(must(buf.NewHandle()).Requester(streamBenchID))
			child := testutil.StartChild(b, "TestChildMailboxBenchEcho", envBuf+"="+buf.Name(), "HIPC_MODE=mailbox")
			child.Line(b, time.Minute)
			ctx := context.Background()
			b.ResetTimer()
			ours := requests(b, ctx, q, n, msg)
			b.StopTimer()
			q.Close()
			child.MustSucceed(b, time.Minute)

			env := []string{"HIPC_MODE=fd", "HIPC_SIZE=" + strconv.Itoa(size), envN + "=" + strconv.Itoa(n)}
			r1, w1 := must2(b)
			r2, w2 := must2(b)
			child = testutil.StartChildFiles(b, "TestChildMailboxBenchEcho", []*os.File{r1, w2}, env...)
			r1.Close()
			w2.Close()
			child.Line(b, time.Minute)
			pipe := roundTrips(b, w1, r2, n, msg)
			w1.Close()
			r2.Close()
			child.MustSucceed(b, time.Minute)

			f0, f1 := socketPair(b)
			child = testutil.StartChildFiles(b, "TestChildMailboxBenchEcho", []*os.File{f1}, append(env, "HIPC_SOCKET=1")...)
			f1.Close()
			conn := fdConn(b, f0)
			child.Line(b, time.Minute)
			unix := roundTrips(b, conn, conn, n, msg)
			conn.Close()
			child.MustSucceed(b, time.Minute)

			o := float64(ours.Nanoseconds()) / float64(n)
			b.ReportMetric(o, "ns/op")
			b.ReportMetric(float64(2*size)*1e3/o, "MB/s")
			for peer, d := range map[string]time.Duration{"pipe": pipe, "unix": unix} {
				p := float64(d.Nanoseconds()) / float64(n)
				b.ReportMetric(p, peer+"-ns/op")
				b.ReportMetric(p/o, "x-"+peer)
			}
		})
	}
}
