package alloc

import (
	"encoding/binary"
	"errors"
	"testing"
	"time"

	"github.com/heapipc/ipc/backend"
	"github.com/heapipc/ipc/internal/mem"
)

// fuzzHeap builds a small heap with a few allocated and free extents.
func fuzzHeap(t *testing.T) (*Heap, []mem.Off) {
	h := newHeap(t, combo{backend.Heap, backend.Heap}, 256<<10)
	var offs []mem.Off
	for _, n := range []int{4096, 3 * 4096, 4096, 2 * 4096, 4096, 5 * 4096} {
		off, err := h.Alloc(n)
		if err != nil {
			t.Fatal(err)
		}
		offs = append(offs, off)
	}
	h.Free(offs[1])
	h.Free(offs[3])
	return h, offs
}

// geometry is what metaSpace needs of the root, saved before the fuzzer
// writes over it.
type geometry struct{ MapOff, FirstOff, Pages, HeapOff, HeapCap uint64 }

// metaSpace maps a fuzzer position to a byte of heap metadata: the root
// (without the lock line, whose owner word would name an arbitrary
// process), the page map and the index. It also says whether a change of
// that byte must be detected (by Attach, Check, or a repair).
func metaSpace(h *Heap, g *geometry, pos uint64) (off uint64, detectable bool) {
	rootLen := uint64(RootSize - mem.CacheLine)
	meta := g.FirstOff - g.MapOff
	pos %= rootLen + meta
	if pos < rootLen {
		o := pos
		if o >= 128 {
			o += mem.CacheLine // skip the lock line
		}
		switch {
		case o < 128: // checksummed geometry
			return rootOff + o, true
		case o < 288: // counters
			return rootOff + o, true
		case o >= 296 && o < 300, o >= 304 && o < 308: // LogState, NeedRepair
			return rootOff + o, true
		}
		return rootOff + o, false // Repairs, the log, padding
	}
	o := pos - rootLen
	abs := g.MapOff + o
	if o < g.Pages*16 {
		// Tags are checked everywhere; aux words are owners on
		// allocated heads (free-form) and checked elsewhere.
		page, field := o/16, o%16/8
		t := h.pages[page].Tag
		if field == 0 {
			// The kind bits of a one-page allocated extent are free-form
			// like its owner: its one tag is both head and tail.
			kindByte := o%8 == tagKindShift/8
			return abs, !(kindByte && tagState(t) == tagAlloc && isHead(t) && isTail(t))
		}
		return abs, !(tagState(t) == tagAlloc && isHead(t))
	}
	return abs, abs < g.HeapOff+g.HeapCap*8
}

// FuzzCorrupt writes arbitrary bytes over the heap's metadata. Attach and
// Check must report the damage (an error wrapping ErrCorrupt or
// ErrVersion), or a repair must absorb it; nothing may panic, and a heap
// that Check passes stays sound under allocation and free.
func FuzzCorrupt(f *testing.F) {
	le := func(vals ...uint16) []byte {
		var b []byte
		for i := 0; i+1 < len(vals); i += 2 {
			b = binary.LittleEndian.AppendUint16(b, vals[i])
			b = append(b, byte(vals[i+1]))
		}
		return b
	}
	f.Add([]byte{})
	f.Add(le(0, 0x55))               // root magic
	f.Add(le(8, 2))                  // version
	f.Add(le(16, 0xff))              // pages
	f.Add(le(128, 1))                // FreePages
	f.Add(le(168, 1))                // LogState
	f.Add(le(384, 0x07))             // tag of page 0
	f.Add(le(384+16, 0x01))          // interior tag
	f.Add(le(384+6, 0x12))           // marker of page 0
	f.Add(le(384+8, 0x33))           // owner of extent 0
	f.Add(le(384+16*18+8, 0x05))     // aux of a free head
	f.Add(le(2000, 0x40, 2001, 0x7)) // an index entry
	f.Add(le(384+32, 0x20, 140, 3, 176, 9))
	f.Fuzz(func(t *testing.T, muts []byte) {
		h, offs := fuzzHeap(t)
		repairs := h.rt.Repairs
		g := &geometry{MapOff: h.rt.MapOff, FirstOff: h.rt.FirstOff, Pages: h.rt.Pages, HeapOff: h.rt.HeapOff, HeapCap: h.rt.HeapCap}
		orig := map[uint64]byte{}
		det := map[uint64]bool{}
		for i := 0; i+3 <= len(muts); i += 3 {
			off, d := metaSpace(h, g, uint64(binary.LittleEndian.Uint16(muts[i:])))
			if _, ok := orig[off]; !ok {
				orig[off], det[off] = h.b[off], d
			}
			h.b[off] = muts[i+2]
		}
		detect := false
		for off, v := range orig {
			detect = detect || (det[off] && h.b[off] != v)
		}
		h2, err := AttachWith(h.Region(), Options{CheckInterval: time.Millisecond})
		if err != nil {
			if !errors.Is(err, ErrCorrupt) && !errors.Is(err, ErrVersion) {
				t.Fatalf("attach of a corrupt heap: %v, want ErrCorrupt", err)
			}
			return
		}
		defer h2.Close()
		checkErr := h2.Check()
		if checkErr != nil && !errors.Is(checkErr, ErrCorrupt) {
			t.Fatalf("check: %v, want ErrCorrupt", checkErr)
		}
		if detect && checkErr == nil && h.rt.Repairs == repairs {
			t.Fatalf("corruption went unnoticed")
		}
		// Whatever the damage, the operations return errors, not panics.
		h2.Stats()
		h2.Allocated()
		var got []mem.Off
		for _, n := range []int{1, 4096 * 3, 4096 * 40} {
			if off, err := h2.Alloc(n); err == nil {
				got = append(got, off)
			}
		}
		for _, off := range append(offs, got...) {
			h2.Free(off)
		}
		for i := 0; i+8 <= len(muts); i += 8 {
			h2.Free(mem.Off(binary.LittleEndian.Uint64(muts[i:])))
		}
		h2.Recover()
		if checkErr == nil {
			if err := h2.Check(); err != nil {
				t.Fatalf("a heap that passed Check broke under alloc/free: %v", err)
			}
		} else if h2.Repair() == nil {
			// A repair that succeeds leaves a heap that allocates.
			if off, err := h2.Alloc(1); err == nil {
				h2.Free(off)
			}
		}
	})
}
