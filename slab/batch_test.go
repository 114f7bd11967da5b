package slab

import (
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/heapipc/ipc/internal/mem"
)

// TestAllocFreeBatch: batches cross slab refills, every record is its
// own and intact, and FreeBatch frees every valid record of a batch that
// also holds a double free, a duplicate, offsets that are not records and
// large records, reporting exactly the bad ones.
func TestAllocFreeBatch(t *testing.T) {
	for _, c := range inProcess() {
		for _, align := range []int{DefaultAlign, CacheLineAlign} {
			t.Run(fmt.Sprintf("%v/align%d", c, align), func(t *testing.T) {
				p := newPool(t, c, 16<<20, Options{Align: align})
				h0 := heapStats(t, p)
				hd := p.NewHandle()
				var all []Record
				for _, size := range []int{0, 1, 64, 100, 1000, p.MaxSmall(), p.MaxSmall() + 1} {
					offs := make([]mem.Off, 300)
					if size > p.MaxSmall() {
						offs = offs[:3]
					}
					n, err := hd.AllocBatch(size, offs)
					if err != nil || n != len(offs) {
						t.Fatalf("AllocBatch(%d): %d, %v", size, n, err)
					}
					for _, off := range offs {
						b, err := p.Bytes(off)
						if err != nil || len(b) != size || uint64(off)%uint64(align) != 0 {
							t.Fatalf("Bytes(%#x) of a %d-byte record: %d bytes, %v", off, size, len(b), err)
						}
						r := Record{Off: off, Data: b}
						fill(r)
						all = append(all, r)
					}
				}
				mustCheck(t, p, "after the batches")
				for i, r := range all {
					if !intact(r.Data, r.Off) {
						t.Fatalf("record %d (%d bytes at %#x) overwritten", i, len(r.Data), r.Off)
					}
				}
				// Free one record first, then a batch of everything with
				// that record again, a duplicate and two bogus offsets.
				if err := p.Free(all[5].Off); err != nil {
					t.Fatal(err)
				}
				offs := make([]mem.Off, 0, len(all)+3)
				for _, r := range all {
					offs = append(offs, r.Off)
				}
				offs = append(offs[:10], append([]mem.Off{all[9].Off, all[0].Off + 16}, offs[10:]...)...)
				offs = append(offs, 64)
				err := p.FreeBatch(offs)
				if !errors.Is(err, ErrDoubleFree) || !errors.Is(err, ErrNotAllocated) {
					t.Fatalf("FreeBatch: %v", err)
				}
				if got := strings.Count(err.Error(), "\n") + 1; got != 4 {
					t.Fatalf("FreeBatch reported %d errors, want 4: %v", got, err)
				}
				for _, want := range []string{"record 5:", "record 10:", "record 11:", fmt.Sprintf("record %d:", len(offs)-1)} {
					if !strings.Contains(err.Error(), want) {
						t.Fatalf("FreeBatch error does not name %q: %v", want, err)
					}
				}
				if s := poolStats(t, p); s.LiveRecords != 0 || s.LargeRecords != 0 {
					t.Fatalf("after FreeBatch: %+v", s)
				}
				mustCheck(t, p, "after FreeBatch")
				if err := hd.Close(); err != nil {
					t.Fatal(err)
				}
				if h := heapStats(t, p); h.FreeBytes != h0.FreeBytes {
					t.Fatalf("heap free %d, was %d", h.FreeBytes, h0.FreeBytes)
				}
			})
		}
	}
}

// TestAllocBatchNoSpace: a batch that the heap cannot hold stops at the
// first record that does not fit and reports ErrNoSpace.
func TestAllocBatchNoSpace(t *testing.T) {
	p := newPool(t, heapCombo, 1<<20, Options{})
	hd := p.NewHandle()
	defer hd.Close()
	offs := make([]mem.Off, 1<<20/64)
	n, err := hd.AllocBatch(64, offs)
	if !errors.Is(err, ErrNoSpace) || n == 0 || n >= len(offs) {
		t.Fatalf("AllocBatch: %d, %v", n, err)
	}
	if err := p.FreeBatch(offs[:n]); err != nil {
		t.Fatal(err)
	}
	mustCheck(t, p, "after freeing the batch")
}

// TestFreeBatchRuns: FreeBatch frees records that lie back to back as
// runs of bits across bitmap words; a record of the run freed already
// (whether its slot lies in one word or across two, first in the run,
// last or between) is reported by its index and every other record of
// the run is freed, with the bitmap and the counts intact.
func TestFreeBatchRuns(t *testing.T) {
	p := newPool(t, heapCombo, 16<<20, Options{})
	hd := p.NewHandle()
	defer hd.Close()
	const n = 40
	// 80-byte records take 6 granules: their slots cross bitmap words
	// every ten or eleven records.
	for k := range n {
		offs := make([]mem.Off, n)
		if got, err := hd.AllocBatch(80, offs); err != nil || got != n {
			t.Fatalf("AllocBatch: %d, %v", got, err)
		}
		if err := p.Free(offs[k]); err != nil {
			t.Fatal(err)
		}
		err := p.FreeBatch(offs)
		if !errors.Is(err, ErrDoubleFree) || strings.Count(err.Error(), "\n") != 0 || !strings.Contains(err.Error(), fmt.Sprintf("record %d:", k)) {
			t.Fatalf("record %d freed twice: FreeBatch: %v", k, err)
		}
		if s := poolStats(t, p); s.LiveRecords != 0 {
			t.Fatalf("record %d freed twice: %d records still live", k, s.LiveRecords)
		}
		mustCheck(t, p, fmt.Sprintf("record %d freed twice", k))
	}
	// A batch with the runs in reverse order, and records of two slabs.
	offs := make([]mem.Off, 3000)
	if got, err := hd.AllocBatch(80, offs); err != nil || got != len(offs) {
		t.Fatalf("AllocBatch: %d, %v", got, err)
	}
	for i, j := 0, len(offs)-1; i < j; i, j = i+1, j-1 {
		offs[i], offs[j] = offs[j], offs[i]
	}
	if err := p.FreeBatch(offs[:1000]); err != nil {
		t.Fatal(err)
	}
	if err := p.FreeBatch(offs[1000:]); err != nil {
		t.Fatal(err)
	}
	if s := poolStats(t, p); s.LiveRecords != 0 {
		t.Fatalf("%d records still live", s.LiveRecords)
	}
	mustCheck(t, p, "after the reversed batch")
}
