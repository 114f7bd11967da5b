package tests

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	ipc "github.com/heapipc/ipc"
)

// Speculo area benchmarks. Payloads are 64 bytes, written by the writer
// and read (summed) by the readers.

func benchArea(b *testing.B, buf *ipc.Buffer, id ipc.ChannelID, capacity int, opts ...ipc.SpeculoOption) (*ipc.Handle, *ipc.Speculo, *ipc.SpeculoWriter) {
	h := must(buf.NewHandle())
	sp := must(h.AddSpeculo(id, capacity, opts...))
	w := must(sp.Writer())
	b.Cleanup(func() {
		w.Close()
		sp.Remove(context.Background())
		h.Close()
	})
	return h, sp, w
}

// benchPut commits a 64-byte chunk (a new block if block is 0). When
// readers still hold ipc.SpeculoMaxRetired old extents it yields and tries
// again, as a writer that outruns its readers must.
func benchPut(w *ipc.SpeculoWriter, block ipc.BlockID, v byte) error {
	var p []byte
	var err error
	for {
		if block == 0 {
			p, err = w.Append(payload, time.Time{})
		} else {
			p, err = w.Replace(block, payload, time.Time{})
		}
		if err == nil || !errors.Is(err, ipc.ErrNoSpace) || !strings.Contains(err.Error(), "old extents") {
			break
		}
		runtime.Gosched()
	}
	if err != nil {
		return err
	}
	fill(p, v)
	_, err = w.Commit()
	return err
}

// BenchmarkSpeculoAppendCommit64: one op is one 64-byte chunk reserved,
// filled and committed. "replace" updates 1024 blocks in turn (the GC
// runs at its 50% threshold, its cost amortized in the figure); "append"
// adds new blocks to a 64 MiB area, recreated (untimed) when full.
func BenchmarkSpeculoAppendCommit64(b *testing.B) {
	b.Run("replace", func(b *testing.B) {
		buf := benchBuf(b)
		_, sp, w := benchArea(b, buf, 1, 4<<20)
		b.SetBytes(payload)
		i := 0
		for b.Loop() {
			if err := benchPut(w, ipc.BlockID(1+i%1024), byte(i)); err != nil {
				b.Fatal(err)
			}
			i++
		}
		st := must(sp.Stats())
		b.ReportMetric(float64(st.GCs)/float64(b.N)*1e6, "GCs/Mop")
	})
	b.Run("append", func(b *testing.B) {
		buf := benchBuf(b)
		h := must(buf.NewHandle())
		defer h.Close()
		var sp *ipc.Speculo
		var w *ipc.SpeculoWriter
		open := func() {
			sp = must(h.AddSpeculo(2, 64<<20))
			w = must(sp.Writer())
		}
		drop := func() {
			w.Close()
			if err := sp.Remove(context.Background()); err != nil {
				b.Fatal(err)
			}
		}
		open()
		b.SetBytes(payload)
		i := 0
		for b.Loop() {
			err := benchPut(w, 0, byte(i))
			if errors.Is(err, ipc.ErrNoSpace) {
				b.StopTimer()
				drop()
				open()
				b.StartTimer()
				err = benchPut(w, 0, byte(i))
			}
			if err != nil {
				b.Fatal(err)
			}
			i++
		}
		drop()
	})
}

// BenchmarkSpeculoLatest: one op is Latest of one of 1000 blocks, its 64
// bytes summed.
func BenchmarkSpeculoLatest(b *testing.B) {
	buf := benchBuf(b)
	_, sp, w := benchArea(b, buf, 1, 1<<20)
	const blocks = 1000
	for i := 1; i <= blocks; i++ {
		if err := benchPut(w, ipc.BlockID(i), byte(i)); err != nil {
			b.Fatal(err)
		}
	}
	h := must(buf.NewHandle())
	defer h.Close()
	r := must(must(h.AddSpeculo(1, 0)).Reader())
	var s byte
	i := 0
	for b.Loop() {
		c, err := r.Latest(ipc.BlockID(1 + i%blocks))
		if err != nil {
			b.Fatal(err)
		}
		s += sum(c.Data)
		i++
	}
	_ = sp
	sink = s
}

var sink byte

// fillArea commits n 64-byte chunks as new blocks.
func fillArea(b *testing.B, w *ipc.SpeculoWriter, n int) {
	for i := 0; i < n; i++ {
		if err := benchPut(w, 0, byte(i)); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkSpeculoIterate10k: one op is a reader going over 10,000
// committed 64-byte chunks (Rewind, then TryNext until none is left).
func BenchmarkSpeculoIterate10k(b *testing.B) {
	buf := benchBuf(b)
	h, sp, w := benchArea(b, buf, 1, 2<<20)
	const n = 10000
	fillArea(b, w, n)
	r := must(sp.Reader())
	defer r.Close()
	_ = h
	var s byte
	for b.Loop() {
		if err := r.Rewind(); err != nil {
			b.Fatal(err)
		}
		k := 0
		for {
			c, err := r.TryNext()
			if errors.Is(err, ipc.ErrWouldBlock) {
				break
			}
			if err != nil {
				b.Fatal(err)
			}
			s += sum(c.Data)
			k++
		}
		if k != n {
			b.Fatalf("read %d chunks, want %d", k, n)
		}
	}
	sink = s
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/n, "ns/chunk")
	b.ReportMetric(float64(b.N)*n*payload/b.Elapsed().Seconds()/1e6, "MB/s")
}

// BenchmarkSpeculoGC10k: one op is a GC copying 10,000 valid 64-byte
// chunks (and dropping 10,000 obsolete ones the first time) into a new
// extent, and freeing the old one.
func BenchmarkSpeculoGC10k(b *testing.B) {
	buf := benchBuf(b)
	_, _, w := benchArea(b, buf, 1, 4<<20, ipc.SpeculoGCThreshold(0))
	const n = 10000
	fillArea(b, w, n)
	for i := 0; i < n; i++ { // and as many obsolete versions
		if err := benchPut(w, ipc.BlockID(1+i%16), byte(i)); err != nil {
			b.Fatal(err)
		}
	}
	for b.Loop() {
		if err := w.GC(); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/n, "ns/chunk")
}

// BenchmarkSpeculoReaders: 1, 2 or 4 reader goroutines (each with its own
// handle) go over an area of 10,000 64-byte chunks again and again
// (Rewind, then TryNext until none is left), summing every payload, while
// a writer goroutine replaces 1,024 of those blocks in turn (in bursts of
// 256, then a 1 ms sleep, so that it does not take a core from the
// readers), so that GCs run and readers move to new extents. One op is one
// chunk read by one reader; ns/op is wall time over all reads, so reads
// that scale with the readers make it fall. commits/op is the writer's
// rate beside them.
func BenchmarkSpeculoReaders(b *testing.B) {
	for _, readers := range []int{1, 2, 4} {
		b.Run(fmt.Sprintf("readers=%d", readers), func(b *testing.B) {
			buf := benchBuf(b)
			_, _, w := benchArea(b, buf, 1, 4<<20, ipc.SpeculoReaderSlots(8))
			const n = 10000
			fillArea(b, w, n)
			var (
				wg      sync.WaitGroup
				stop    atomic.Bool
				commits atomic.Int64
			)
			wg.Add(1)
			go func() { // the writer
				defer wg.Done()
				for i := 0; !stop.Load(); i++ {
					if err := benchPut(w, ipc.SpeculoAutoBlock+1+ipc.BlockID(i%1024), byte(i)); err != nil {
						b.Error(err)
						return
					}
					commits.Add(1)
					if i%256 == 255 {
						time.Sleep(time.Millisecond)
					}
				}
			}()
			defer func() { stop.Store(true); wg.Wait() }()
			per := b.N/readers + 1
			var rwg sync.WaitGroup
			start := make(chan struct{})
			for g := 0; g < readers; g++ {
				rwg.Add(1)
				go func() {
					defer rwg.Done()
					h := must(buf.NewHandle())
					defer h.Close()
					r := must(must(h.AddSpeculo(1, 0)).Reader())
					<-start
					var s byte
					for got := 0; got < per; {
						if err := r.Rewind(); err != nil {
							b.Error(err)
							return
						}
						for got < per {
							c, err := r.TryNext()
							if errors.Is(err, ipc.ErrWouldBlock) {
								break
							}
							if err != nil {
								b.Error(err)
								return
							}
							s += sum(c.Data)
							got++
						}
					}
					sinks[g] = s
				}()
			}
			b.SetBytes(payload)
			b.ResetTimer()
			c0 := commits.Load()
			close(start)
			rwg.Wait()
			b.StopTimer()
			b.ReportMetric(float64(commits.Load()-c0)/float64(b.N), "commits/op")
		})
	}
}

var sinks [4]byte
