package slab

import (
	"context"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/heapipc/ipc/backend"
	"github.com/heapipc/ipc/internal/mem"
	"github.com/heapipc/ipc/internal/testutil"
)

const benchRecord = 64

// BenchmarkSlabAllocFree allocates a 64-byte record, writes it, and frees
// it; beside it the Go baselines: make([]byte) kept alive through a
// channel, and a sync.Pool cycle.
func BenchmarkSlabAllocFree(b *testing.B) {
	src := make([]byte, benchRecord)
	for i := range src {
		src[i] = byte(i)
	}
	for _, c := range dedupe([]combo{heapCombo, defaultCombo()}) {
		b.Run("slab/"+c.String(), func(b *testing.B) {
			p := newPool(b, c, 64<<20, Options{})
			hd := p.NewHandle()
			defer hd.Close()
			b.ReportAllocs()
			b.SetBytes(benchRecord)
			for b.Loop() {
				rec, err := hd.Alloc(benchRecord)
				if err != nil {
					b.Fatal(err)
				}
				copy(rec.Data, src)
				if err := p.Free(rec.Off); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
	b.Run("go/make+chan", func(b *testing.B) {
		ch := make(chan []byte, 1)
		b.ReportAllocs()
		b.SetBytes(benchRecord)
		for b.Loop() {
			buf := make([]byte, benchRecord)
			copy(buf, src)
			ch <- buf
			<-ch
		}
	})
	b.Run("go/sync.Pool", func(b *testing.B) {
		pool := sync.Pool{New: func() any { return new([benchRecord]byte) }}
		b.ReportAllocs()
		b.SetBytes(benchRecord)
		for b.Loop() {
			buf := pool.Get().(*[benchRecord]byte)
			copy(buf[:], src)
			pool.Put(buf)
		}
	})
}

// The control block of the remote-free benchmark, in a plain extent:
// the producer publishes a batch of record offsets and bumps seq; the
// consumer frees them and bumps ack.
const (
	remoteBatch = 8192
	ctlSeq      = 0 // uint32 words
	ctlAck      = 1
	ctlStop     = 2
	ctlOffsets  = 2 // uint64 words from here
)

type remoteCtl struct {
	seq, ack, stop *atomic.Uint32
	offs           []atomic.Uint64
}

func remoteControl(tb testing.TB, p *Pool, off mem.Off) remoteCtl {
	b, err := p.heap.View(off, 16+remoteBatch*8)
	if err != nil {
		tb.Fatal(err)
	}
	w32, _ := mem.Slice[atomic.Uint32](b, 0, 4)
	offs, _ := mem.Slice[atomic.Uint64](b, 16, remoteBatch)
	return remoteCtl{seq: &w32[ctlSeq], ack: &w32[ctlAck], stop: &w32[ctlStop], offs: offs}
}

// produce fills batches of 64-byte records for the consumer until stop.
func produce(tb testing.TB, p *Pool, ctl remoteCtl) {
	hd := p.NewHandle()
	defer hd.Close()
	for {
		for ctl.ack.Load() != ctl.seq.Load() {
			if ctl.stop.Load() != 0 {
				return
			}
			backend.Park(context.Background(), ctl.ack, ctl.seq.Load()-1, 100*time.Millisecond)
		}
		if ctl.stop.Load() != 0 {
			return
		}
		for i := range ctl.offs {
			rec, err := hd.Alloc(benchRecord)
			if err != nil {
				tb.Fatal(err)
			}
			rec.Data[0] = 1
			ctl.offs[i].Store(uint64(rec.Off))
		}
		ctl.seq.Add(1)
		backend.Wake(ctl.seq, 0)
	}
}

// BenchmarkRemoteFree frees 64-byte records that another process (or,
// for comparison, another goroutine) allocated, with 1, 2 and 4 freeing
// goroutines; ns/op is per record.
func BenchmarkRemoteFree(b *testing.B) {
	for _, where := range []string{"process", "goroutine"} {
		for _, g := range []int{1, 2, 4} {
			b.Run(fmt.Sprintf("%s/freers=%d", where, g), func(b *testing.B) {
				c := defaultCombo()
				p := newPool(b, c, 64<<20, Options{})
				ctlOff, err := p.heap.Alloc(16 + remoteBatch*8)
				if err != nil {
					b.Fatal(err)
				}
				cb, _ := p.heap.Bytes(ctlOff)
				clear(cb)
				ctl := remoteControl(b, p, ctlOff)
				done := make(chan struct{})
				if where == "process" {
					kid := testutil.StartChild(b, "TestChildRemoteAlloc", childEnv(p, c, "CTL="+strconv.FormatUint(uint64(ctlOff), 10))...)
					defer func() { kid.MustSucceed(b, 30*time.Second) }()
				} else {
					go func() { defer close(done); produce(b, p, ctl) }()
					defer func() { <-done }()
				}
				defer func() {
					ctl.stop.Store(1)
					backend.Wake(ctl.ack, 0)
				}()
				b.StopTimer()
				b.ResetTimer()
				var wg sync.WaitGroup
				for freed := 0; freed < b.N; {
					seq := ctl.seq.Load()
					for seq == ctl.ack.Load() {
						backend.Park(context.Background(), ctl.seq, seq, 100*time.Millisecond)
						seq = ctl.seq.Load()
					}
					n := min(remoteBatch, b.N-freed)
					b.StartTimer()
					for w := range g {
						wg.Add(1)
						go func() {
							defer wg.Done()
							for i := w; i < n; i += g {
								if err := p.Free(mem.Off(ctl.offs[i].Load())); err != nil {
									panic(err)
								}
							}
						}()
					}
					wg.Wait()
					b.StopTimer()
					for i := n; i < remoteBatch; i++ {
						p.Free(mem.Off(ctl.offs[i].Load()))
					}
					freed += n
					ctl.ack.Store(seq)
					backend.Wake(ctl.ack, 0)
				}
			})
		}
	}
}

func TestChildRemoteAlloc(t *testing.T) {
	testutil.ChildOnly(t)
	p := childPool(t)
	off, _ := strconv.ParseUint(testutil.Env(t, "CTL"), 10, 64)
	produce(t, p, remoteControl(t, p, mem.Off(off)))
}
