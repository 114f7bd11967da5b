package alloc

import (
	"sync"
	"testing"

	"github.com/heapipc/ipc/backend"
)

const benchExtent = 64 << 10

// BenchmarkHeapAllocFree allocates a 64 KiB extent, writes a word of it,
// and frees it, uncontended, lock included; beside it the Go baselines:
// make([]byte) kept alive through a channel, and a sync.Pool cycle.
func BenchmarkHeapAllocFree(b *testing.B) {
	for _, c := range []combo{{backend.Heap, backend.Heap}, {backend.DefaultSegmentKind(), backend.DefaultSemaphoreKind()}} {
		b.Run("heap/"+c.String(), func(b *testing.B) {
			h := newHeap(b, c, 16<<20)
			// Some allocated extents so the index is not trivial.
			for i := range 64 {
				off, _ := h.Alloc(4096 * (1 + i%5))
				if i%2 == 0 {
					defer h.Free(off)
				} else {
					h.Free(off)
				}
			}
			b.ReportAllocs()
			for b.Loop() {
				off, err := h.Alloc(benchExtent)
				if err != nil {
					b.Fatal(err)
				}
				h.b[off] = 1
				if err := h.Free(off); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
	b.Run("go/make+chan", func(b *testing.B) {
		ch := make(chan []byte, 1)
		b.ReportAllocs()
		for b.Loop() {
			buf := make([]byte, benchExtent)
			buf[0] = 1
			ch <- buf
			<-ch
		}
	})
	b.Run("go/sync.Pool", func(b *testing.B) {
		p := sync.Pool{New: func() any { return new([benchExtent]byte) }}
		b.ReportAllocs()
		for b.Loop() {
			buf := p.Get().(*[benchExtent]byte)
			buf[0] = 1
			p.Put(buf)
		}
	})
}
