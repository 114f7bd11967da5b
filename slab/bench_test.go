package slab

import (
	"context"
	"fmt"
	"runtime"
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

// BenchmarkSlabStream bounds what a record channel built on slabs can do
// between two goroutines: a producer allocates records in batches of 64
// (AllocBatch: 64-byte payloads with the 16-byte trailer package ipc adds,
// so 96-byte slots), writes each payload and hands the offsets over in a
// bare in-process ring; the consumer reads each payload and frees the
// batch (FreeBatch). No channel, no check beyond the slab's own. Beside
// it in the same run: the same ring over 96-byte slots of the same shared
// memory with no allocation at all (ring-), and a Go chan []byte of
// capacity 1024 carrying fresh 64-byte slices one by one (gochan-), the
// peer of the in-process benchmarks in tests/ (testutil.GoChanInProc). x-gochan is how many times
// faster the slab stream is than the channel; ring-x-gochan the same for
// the bare ring.
func BenchmarkSlabStream(b *testing.B) {
	p := newPool(b, defaultCombo(), 64<<20, Options{})
	fixed, err := p.NewHandle().Alloc(streamRing*streamStride + CacheLineAlign)
	if err != nil {
		b.Fatal(err)
	}
	n := b.N
	b.ResetTimer()
	slab := streamRound(b, p, n, 0)
	b.StopTimer()
	ring := streamRound(b, p, n, (fixed.Off+CacheLineAlign-1)&^(CacheLineAlign-1))
	ch := testutil.GoChanInProc(n, benchRecord)
	per := func(d time.Duration) float64 { return float64(d.Nanoseconds()) / float64(n) }
	b.ReportMetric(per(slab), "ns/op")
	b.ReportMetric(per(ring), "ring-ns/op")
	b.ReportMetric(per(ch), "gochan-ns/op")
	b.ReportMetric(per(ch)/per(slab), "x-gochan")
	b.ReportMetric(per(ch)/per(ring), "ring-x-gochan")
}

const (
	streamRing   = 1024
	streamBatch  = 64
	streamStride = 96 // a 64-byte payload's slot: header, payload, trailer
)

// streamRound moves n 64-byte payloads from this goroutine to another:
// in records allocated from slabs and freed in batches if fixed is 0,
// else in place in the streamRing slots of streamStride bytes from fixed.
func streamRound(tb testing.TB, p *Pool, n int, fixed mem.Off) time.Duration {
	var ring [streamRing]mem.Off
	var head, tail atomic.Uint64
	done := make(chan error, 1)
	start := time.Now()
	go func() {
		var s byte
		offs := make([]mem.Off, streamBatch)
		for h := uint64(0); h < uint64(n); {
			t := tail.Load()
			if t == h {
				runtime.Gosched()
				continue
			}
			t = min(t, h+streamBatch)
			k := 0
			for ; h < t; h++ {
				off := ring[h%streamRing]
				s += testutil.Sum(p.b[off : off+benchRecord])
				offs[k] = off
				k++
			}
			head.Store(h)
			if fixed == 0 {
				if err := p.FreeBatch(offs[:k]); err != nil {
					done <- err
					return
				}
			}
		}
		_ = s
		done <- nil
	}()
	hd := p.NewHandle()
	defer hd.Close()
	offs := make([]mem.Off, streamBatch)
	for t := uint64(0); t < uint64(n); {
		k := min(uint64(streamBatch), uint64(n)-t)
		for t+k-head.Load() > streamRing {
			runtime.Gosched()
		}
		if fixed != 0 {
			for j := range k {
				offs[j] = fixed + mem.Off((t+j)%streamRing*streamStride)
			}
		} else if _, err := hd.AllocBatch(streamStride-HeaderSize, offs[:k]); err != nil {
			tb.Fatal(err)
		}
		for j := range k {
			off := offs[j]
			testutil.Fill(p.b[off:off+streamStride-HeaderSize], byte(t+j))
			ring[(t+j)%streamRing] = off
		}
		t += k
		tail.Store(t)
	}
	if err := <-done; err != nil {
		tb.Fatal(err)
	}
	return time.Since(start)
}
