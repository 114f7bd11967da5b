package slab

import (
	"errors"
	"sync"
	"testing"
)

// TestConcurrent: goroutines, each with its own handle, allocate records,
// fill them, and pass them to other goroutines, which check and free them
// (under -race on the heap backend, whose memory the race detector sees).
// Afterwards every slab is back in the heap.
func TestConcurrent(t *testing.T) {
	for _, c := range []combo{heapCombo, defaultCombo()} {
		t.Run(c.String(), func(t *testing.T) {
			p := newPool(t, c, 16<<20, Options{SlabSize: 16 << 10})
			h0 := heapStats(t, p)
			const workers, ops = 6, 3000
			sd := seed(t)
			chans := make([]chan Record, workers)
			for i := range chans {
				chans[i] = make(chan Record, 128)
			}
			var prod, cons sync.WaitGroup
			errc := make(chan error, 2*workers)
			for w := range workers {
				prod.Add(1)
				go func() {
					defer prod.Done()
					hd := p.NewHandle()
					defer hd.Close()
					r := newRand(sd + uint64(w))
					for i := range ops {
						n := 1 + r.IntN(300)
						if i%200 == 0 {
							n = p.MaxSmall() + 1 + r.IntN(10000) // a large one now and then
						}
						rec, err := hd.Alloc(n)
						if errors.Is(err, ErrNoSpace) {
							continue
						}
						if err != nil {
							errc <- err
							return
						}
						fill(rec)
						chans[r.IntN(workers)] <- rec
					}
				}()
				cons.Add(1)
				go func() {
					defer cons.Done()
					i := 0
					for rec := range chans[w] {
						if !intact(rec.Data, rec.Off) {
							errc <- errors.New("record overwritten: overlapping records")
							return
						}
						var err error
						if i++; i%2 == 0 {
							err = p.FreeRecord(rec)
						} else {
							err = p.Free(rec.Off)
						}
						if err != nil {
							errc <- err
							return
						}
					}
				}()
			}
			prod.Wait()
			for _, ch := range chans {
				close(ch)
			}
			cons.Wait()
			close(errc)
			for err := range errc {
				t.Fatal(err)
			}
			mustCheck(t, p, "after the storm")
			if h := heapStats(t, p); h.FreeBytes != h0.FreeBytes || h.AllocExtents != 0 {
				t.Fatalf("after the storm: %+v, want %d free", h, h0.FreeBytes)
			}
		})
	}
}

// TestConcurrentDoubleFree: goroutines race to free the same records;
// exactly one wins each, the others get ErrDoubleFree.
func TestConcurrentDoubleFree(t *testing.T) {
	p := newPool(t, heapCombo, 8<<20, Options{SlabSize: 16 << 10})
	h0 := heapStats(t, p)
	hd := p.NewHandle()
	var recs []Record
	for i := range 2000 {
		n := 1 + i%200
		if i%300 == 0 {
			n = 20000
		}
		rec, err := hd.Alloc(n)
		if err != nil {
			t.Fatal(err)
		}
		recs = append(recs, rec)
	}
	hd.Close()
	const racers = 4
	wins := make([]int, racers)
	var wg sync.WaitGroup
	errc := make(chan error, racers)
	for g := range racers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for _, rec := range recs {
				err := p.Free(rec.Off)
				switch {
				case err == nil:
					wins[g]++
				case !errors.Is(err, ErrDoubleFree) && !errors.Is(err, ErrNotAllocated):
					errc <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errc)
	for err := range errc {
		t.Fatal(err)
	}
	total := 0
	for _, w := range wins {
		total += w
	}
	if total != len(recs) {
		t.Fatalf("%d successful frees of %d records", total, len(recs))
	}
	mustCheck(t, p, "end")
	if h := heapStats(t, p); h.FreeBytes != h0.FreeBytes {
		t.Fatalf("heap %+v", h)
	}
}
