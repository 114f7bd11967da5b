package slab

import (
	"encoding/binary"
	"errors"
	"testing"

	"github.com/heapipc/ipc/alloc"
	"github.com/heapipc/ipc/internal/mem"
)

// FuzzFree writes arbitrary bytes over slab headers, bitmaps and record
// headers, then frees, views and checks records and arbitrary offsets.
// Nothing may panic; every error is one of the documented ones; the
// heap's own metadata stays sound.
func FuzzFree(f *testing.F) {
	le := func(vals ...uint32) []byte {
		var b []byte
		for i := 0; i+1 < len(vals); i += 2 {
			b = binary.LittleEndian.AppendUint32(b, vals[i])
			b = append(b, byte(vals[i+1]))
		}
		return b
	}
	f.Add([]byte{}, uint64(0))
	f.Add(le(0, 0), uint64(1))              // slab magic
	f.Add(le(28, 0xff), uint64(2))          // limit
	f.Add(le(32, 0x40), uint64(3))          // words
	f.Add(le(144, 0), uint64(4))            // count
	f.Add(le(152, 7), uint64(5))            // retired
	f.Add(le(256, 0xff, 257, 3), uint64(6)) // bitmap
	f.Add(le(1024, 9), uint64(7))           // a record header
	f.Add(le(16384+1, 0xff), uint64(8))     // second slab
	f.Fuzz(func(t *testing.T, muts []byte, sd uint64) {
		p := newPool(t, heapCombo, 2<<20, Options{SlabSize: 16 << 10})
		hd := p.NewHandle()
		r := newRand(sd)
		var recs []Record
		for i := range 120 {
			n := 1 + r.IntN(300)
			if i%40 == 0 {
				n = 5000
			}
			rec, err := hd.Alloc(n)
			if err != nil {
				t.Fatal(err)
			}
			recs = append(recs, rec)
		}
		for i := 0; i < len(recs); i += 3 {
			p.Free(recs[i].Off)
		}
		// The bytes the fuzzer may write: every slab and large extent.
		exts, err := p.heap.Allocated()
		if err != nil {
			t.Fatal(err)
		}
		var space []alloc.Extent
		total := uint64(0)
		for _, e := range exts {
			if e.Kind == alloc.KindSlab || e.Kind == alloc.KindLarge {
				space = append(space, e)
				total += e.Size
			}
		}
		for i := 0; i+5 <= len(muts); i += 5 {
			pos := uint64(binary.LittleEndian.Uint32(muts[i:])) % total
			for _, e := range space {
				if pos < e.Size {
					p.b[uint64(e.Off)+pos] = muts[i+4]
					break
				}
				pos -= e.Size
			}
		}
		ok := func(err error) {
			t.Helper()
			if err != nil && !errors.Is(err, ErrDoubleFree) && !errors.Is(err, ErrNotAllocated) &&
				!errors.Is(err, ErrCorrupt) && !errors.Is(err, ErrNoSpace) {
				t.Fatalf("unexpected error: %v", err)
			}
		}
		p.Check()
		p.Stats()
		lo, hi := p.heap.Range()
		for i, rec := range recs {
			_, err := p.Bytes(rec.Off)
			ok(err)
			if i%2 == 0 {
				ok(p.Free(rec.Off))
			} else {
				ok(p.FreeRecord(rec))
			}
			ok(p.Free(mem.Off(r.Uint64N(uint64(hi-lo)))&^15 + lo))
			if i%10 == 0 {
				_, err := hd.Alloc(1 + r.IntN(500))
				ok(err)
			}
		}
		ok(hd.Close())
		p.Check()
		p.Recover(nil)
		if err := p.heap.Check(); err != nil {
			t.Fatalf("the heap's metadata was damaged: %v", err)
		}
	})
}
