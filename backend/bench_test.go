package backend

import (
	"context"
	"os"
	"sync/atomic"
	"testing"
	"time"

	"github.com/heapipc/ipc/internal/mem"
	"github.com/heapipc/ipc/internal/testutil"
)

// Every benchmark here is a ping-pong between two goroutines (two OS
// threads once they block) and also times the same number of os.Pipe round
// trips in the same run, reporting both and the ratio
// (pipe-ns/rt divided by ns/op: above 1 means faster than a pipe).

func pipeRoundTrips(b *testing.B, n int) time.Duration {
	r1, w1, err := os.Pipe()
	if err != nil {
		b.Fatal(err)
	}
	r2, w2, err := os.Pipe()
	if err != nil {
		b.Fatal(err)
	}
	defer func() { r1.Close(); w1.Close(); r2.Close(); w2.Close() }()
	go func() {
		buf := make([]byte, 1)
		for i := 0; i < n; i++ {
			if _, err := r1.Read(buf); err != nil {
				return
			}
			w2.Write(buf)
		}
	}()
	buf := []byte{1}
	start := time.Now()
	for i := 0; i < n; i++ {
		w1.Write(buf)
		r2.Read(buf)
	}
	return time.Since(start)
}

func reportVsPipe(b *testing.B, ours time.Duration, n int) {
	pipe := pipeRoundTrips(b, n)
	pns := float64(pipe.Nanoseconds()) / float64(n)
	ons := float64(ours.Nanoseconds()) / float64(n)
	b.ReportMetric(pns, "pipe-ns/rt")
	b.ReportMetric(pns/ons, "x-pipe")
}

func BenchmarkSemaphorePingPong(b *testing.B) {
	for _, k := range Kinds {
		b.Run(string(k), func(b *testing.B) {
			sems, _ := Semaphores(k)
			ping, err := sems.Create(testutil.Name(b), 0, SemOptions{})
			if err != nil {
				b.Fatal(err)
			}
			defer ping.Close()
			defer ping.Unlink()
			pong, err := sems.Create(testutil.Name(b), 0, SemOptions{})
			if err != nil {
				b.Fatal(err)
			}
			defer pong.Close()
			defer pong.Unlink()
			ctx := context.Background()
			stop := make(chan struct{})
			go func() {
				for {
					if ping.Wait(ctx) != nil {
						return
					}
					select {
					case <-stop:
						return
					default:
					}
					pong.Post()
				}
			}()
			n := 0
			start := time.Now()
			for b.Loop() {
				ping.Post()
				pong.Wait(ctx)
				n++
			}
			ours := time.Since(start)
			close(stop)
			ping.Post()
			reportVsPipe(b, ours, n)
		})
	}
}

// BenchmarkFutexPingPong is the parking primitive alone: a sequence word,
// each side waits for its turn with Park and hands over with Wake.
func BenchmarkFutexPingPong(b *testing.B) {
	buf := mem.Aligned(64, 64)
	seq, _ := mem.Uint32(buf, 0)
	ctx := context.Background()
	var stop atomic.Bool
	go func() {
		for want := uint32(1); ; want += 2 {
			for v := seq.Load(); v != want; v = seq.Load() {
				if stop.Load() {
					return
				}
				Park(ctx, seq, v, -1)
			}
			seq.Store(want + 1)
			Wake(seq, 1)
		}
	}()
	n := 0
	start := time.Now()
	for want := uint32(2); b.Loop(); want += 2 {
		seq.Store(want - 1)
		Wake(seq, 1)
		for v := seq.Load(); v != want; v = seq.Load() {
			Park(ctx, seq, v, -1)
		}
		n++
	}
	ours := time.Since(start)
	stop.Store(true)
	seq.Add(1)
	Wake(seq, 0)
	reportVsPipe(b, ours, n)
}

// TestChildEcho answers pings until told to stop: on the two semaphores
// named in its environment, or on the pipes it got as fds 3 (read) and 4
// (write). It is the peer of the cross-process benchmarks.
func TestChildEcho(t *testing.T) {
	testutil.ChildOnly(t)
	if os.Getenv("ECHO_PIPE") != "" {
		r, w := os.NewFile(3, "ping"), os.NewFile(4, "pong")
		buf := make([]byte, 1)
		for {
			if _, err := r.Read(buf); err != nil || buf[0] == 0 {
				return
			}
			w.Write(buf)
		}
	}
	sems, _ := Semaphores(Kind(testutil.Env(t, "SEM_KIND")))
	ping, err := sems.Open(testutil.Env(t, "SEM_PING"), SemOptions{})
	if err != nil {
		t.Fatal(err)
	}
	pong, err := sems.Open(testutil.Env(t, "SEM_PONG"), SemOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for {
		if err := ping.Wait(context.Background()); err != nil {
			return
		}
		if err := pong.Post(); err != nil {
			return
		}
	}
}

// BenchmarkCrossProcessPingPong runs the semaphore ping-pong against a
// child process, beside an os.Pipe ping-pong against another child.
func BenchmarkCrossProcessPingPong(b *testing.B) {
	for _, k := range realKinds {
		b.Run(string(k), func(b *testing.B) {
			sems, _ := Semaphores(k)
			ping, err := sems.Create(testutil.Name(b), 0, SemOptions{})
			if err != nil {
				b.Fatal(err)
			}
			defer ping.Close()
			defer ping.Unlink()
			pong, err := sems.Create(testutil.Name(b), 0, SemOptions{})
			if err != nil {
				b.Fatal(err)
			}
			defer pong.Close()
			defer pong.Unlink()
			c := testutil.StartChild(b, "TestChildEcho", "SEM_KIND="+string(k), "SEM_PING="+ping.Name(), "SEM_PONG="+pong.Name())
			ctx := context.Background()
			// One warm-up round trip: the child has attached.
			ping.Post()
			if err := pong.Wait(ctx); err != nil {
				b.Fatal(err)
			}
			n := 0
			start := time.Now()
			for b.Loop() {
				ping.Post()
				pong.Wait(ctx)
				n++
			}
			ours := time.Since(start)
			c.Kill()

			r1, w1, _ := os.Pipe()
			r2, w2, _ := os.Pipe()
			pc := testutil.StartChildFiles(b, "TestChildEcho", []*os.File{r1, w2}, "ECHO_PIPE=1")
			buf := []byte{1}
			w1.Write(buf)
			r2.Read(buf)
			pstart := time.Now()
			for i := 0; i < n; i++ {
				w1.Write(buf)
				r2.Read(buf)
			}
			pipe := time.Since(pstart)
			w1.Write([]byte{0})
			pc.Wait(b, 10*time.Second)
			for _, f := range []*os.File{r1, w1, r2, w2} {
				f.Close()
			}
			pns := float64(pipe.Nanoseconds()) / float64(n)
			b.ReportMetric(pns, "pipe-ns/rt")
			b.ReportMetric(pns/(float64(ours.Nanoseconds())/float64(n)), "x-pipe")
		})
	}
}
