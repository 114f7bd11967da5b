package tests

import (
	"context"
	"fmt"
	"io"
	"os"
	"reflect"
	"strconv"
	"sync"
	"testing"
	"time"

	ipc "github.com/heapipc/ipc"
	"github.com/heapipc/ipc/internal/testutil"
)

// BenchmarkMPSC: k producer goroutines (each with its own handle) send
// 64-byte records on one MPSC channel to one consumer, beside a Go channel
// (capacity 1024) with k senders. One op is one record.
func BenchmarkMPSC(b *testing.B) {
	for _, k := range []int{1, 2, 4, 8} {
		b.Run(fmt.Sprintf("goroutines=%d", k), func(b *testing.B) {
			buf := benchBuf(b)
			n := b.N
			ch := must(buf.NewHandle())
			defer ch.Close()
			c := must(ch.MPSCConsumer(1, ipc.WithCapacity(1024)))
			// A producer of our own keeps the channel open (no EOF)
			// while the goroutines' producers come and go: with few
			// records each (b.N's first rounds), one could close before
			// another attached, and the consumer read EOF early.
			keep := must(ch.MPSCProducer(1))
			ctx := context.Background()
			per := n / k
			total := per * k
			var wg sync.WaitGroup
			start := time.Now()
			for i := 0; i < k; i++ {
				wg.Add(1)
				go func() {
					defer wg.Done()
					h := must(buf.NewHandle())
					defer h.Close()
					p := must(h.MPSCProducer(1))
					defer p.Close()
					for j := 0; j < per; j++ {
						r := must(h.Allocate(payload))
						fill(r.Bytes(), byte(j))
						if err := p.Send(ctx, r); err != nil {
							panic(err)
						}
					}
				}()
			}
			var s byte
			for got := 0; got < total; got++ {
				r, err := c.Receive(ctx)
				if err != nil {
					b.Fatal(err)
				}
				s += sum(r.Bytes())
				ch.Free(r)
			}
			ours := time.Since(start)
			wg.Wait()
			keep.Close()
			c.Close()
			report(b, ours, total, map[string]time.Duration{"gochan": goChanSenders(k, per)})
		})
	}
}

func goChanSenders(k, per int) time.Duration {
	ch := make(chan []byte, 1024)
	var wg sync.WaitGroup
	start := time.Now()
	for i := 0; i < k; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := 0; j < per; j++ {
				m := make([]byte, payload)
				fill(m, byte(j))
				ch <- m
			}
		}()
	}
	var s byte
	for got := 0; got < k*per; got++ {
		s += sum(<-ch)
	}
	d := time.Since(start)
	wg.Wait()
	_ = s
	return d
}

// TestChildMPSCBench attaches a producer to MPSC channel 1, says
// "ready", waits until the pipe at fd 3 is closed (the parent's start),
// sends HIPC_N records and closes.
func TestChildMPSCBench(t *testing.T) {
	testutil.ChildOnly(t)
	b := attach(t)
	h := newHandle(t, b)
	p, err := h.MPSCProducer(1)
	if err != nil {
		t.Fatal(err)
	}
	ctx := ctxFor(t)
	// The count is read once: envInt reads the environment and calls
	// t.Helper (a stack walk), which in the loop's condition cost the
	// child more than a record's send.
	n := envInt(t, envN)
	testutil.Say("ready")
	if _, err := os.NewFile(3, "start").Read(make([]byte, 1)); err != io.EOF {
		t.Fatalf("start pipe: %v, want EOF", err)
	}
	for j := 0; j < n; j++ {
		r, err := h.Allocate(payload)
		if err != nil {
			t.Fatal(err)
		}
		fill(r.Bytes(), byte(j))
		if err := p.Send(ctx, r); err != nil {
			t.Fatal(err)
		}
	}
	p.Close()
}

// BenchmarkMPSCProcesses: k producer processes, one consumer here, beside
// a Go channel with k sending goroutines (the nearest stdlib peer). The
// clock starts once every child has attached its producer.
func BenchmarkMPSCProcesses(b *testing.B) {
	for _, k := range []int{1, 2, 4, 8} {
		b.Run(fmt.Sprintf("processes=%d", k), func(b *testing.B) {
			buf := benchBuf(b)
			per := max(b.N/k, 1)
			total := per * k
			ch := must(buf.NewHandle())
			defer ch.Close()
			c := must(ch.MPSCConsumer(1, ipc.WithCapacity(1024)))
			// A producer of our own keeps the channel open (no EOF)
			// while the children come and go.
			keep := must(ch.MPSCProducer(1))
			ctx := context.Background()
			// The children start and attach before the clock does: each
			// says "ready", then waits for the start pipe to close.
			rd, wr := must2(b)
			var kids []*testutil.Child
			for i := 0; i < k; i++ {
				kids = append(kids, testutil.StartChildFiles(b, "TestChildMPSCBench", []*os.File{rd}, envBuf+"="+buf.Name(), envN+"="+strconv.Itoa(per)))
			}
			rd.Close()
			for _, kid := range kids {
				if l := kid.Line(b, time.Minute); l != "ready" {
					b.Fatalf("child says %q, want ready:\n%s", l, kid.Output())
				}
			}
			start := time.Now()
			wr.Close()
			var s byte
			for got := 0; got < total; got++ {
				r, err := c.Receive(ctx)
				if err != nil {
					b.Fatal(err)
				}
				s += sum(r.Bytes())
				ch.Free(r)
			}
			ours := time.Since(start)
			for _, kid := range kids {
				kid.MustSucceed(b, time.Minute)
			}
			keep.Close()
			c.Close()
			report(b, ours, total, map[string]time.Duration{"gochan": goChanSenders(k, per)})
		})
	}
}

// BenchmarkSelect64: one consumer waits on 64 record channels fed by one
// producer goroutine that picks the channels in turn; beside
// reflect.Select over 64 Go channels. "parked" sends one record at a time
// and waits for it to be consumed, so every receive is a wake-up (the
// wake-up latency); "stream" keeps them busy (throughput).
func BenchmarkSelect64(b *testing.B) {
	const chans = 64
	for _, mode := range []string{"stream", "parked"} {
		b.Run(mode, func(b *testing.B) {
			buf := benchBuf(b)
			n := b.N
			ch := must(buf.NewHandle())
			defer ch.Close()
			var rs []ipc.Receiver
			for i := 0; i < chans; i++ {
				rs = append(rs, must(ch.Consumer(ipc.ChannelID(i+1), ipc.WithCapacity(256))))
			}
			sel := must(ch.NewSelect(rs...))
			defer sel.Close()
			ctx := context.Background()
			ack := make(chan struct{}, 1)
			go func() {
				h := must(buf.NewHandle())
				defer h.Close()
				var ps []*ipc.Producer
				for i := 0; i < chans; i++ {
					ps = append(ps, must(h.Producer(ipc.ChannelID(i+1))))
				}
				for j := 0; j < n; j++ {
					r := must(h.Allocate(payload))
					fill(r.Bytes(), byte(j))
					if err := ps[j%chans].Send(ctx, r); err != nil {
						panic(err)
					}
					if mode == "parked" {
						<-ack
					}
				}
			}()
			start := time.Now()
			for got := 0; got < n; got++ {
				c, r, err := sel.Receive(ctx)
				if err == io.EOF {
					// The producer has finished: its ends closed
					// (drained ones report EOF).
					sel.Remove(c)
					got--
					continue
				}
				if err != nil {
					b.Fatal(err)
				}
				ch.Free(r)
				if mode == "parked" {
					ack <- struct{}{}
				}
			}
			ours := time.Since(start)
			report(b, ours, n, map[string]time.Duration{"reflectselect": reflectSelect(n, chans, mode == "parked")})
		})
	}
}

func reflectSelect(n, chans int, parked bool) time.Duration {
	cs := make([]chan []byte, chans)
	cases := make([]reflect.SelectCase, chans)
	for i := range cs {
		cs[i] = make(chan []byte, 256)
		cases[i] = reflect.SelectCase{Dir: reflect.SelectRecv, Chan: reflect.ValueOf(cs[i])}
	}
	ack := make(chan struct{}, 1)
	go func() {
		for j := 0; j < n; j++ {
			m := make([]byte, payload)
			fill(m, byte(j))
			cs[j%chans] <- m
			if parked {
				<-ack
			}
		}
	}()
	start := time.Now()
	for got := 0; got < n; got++ {
		_, v, _ := reflect.Select(cases)
		_ = sum(v.Bytes())
		if parked {
			ack <- struct{}{}
		}
	}
	return time.Since(start)
}
