package slab

import (
	"testing"

	"github.com/heapipc/ipc/internal/mem"
	"github.com/heapipc/ipc/internal/testutil"
)

// TestReclaimCarvingGap: a handle reserved a carving, carved part of
// it, and allocated a record after it (as Reserve documents it may); its
// process dies. Reclaim with KeepAll must leave every handed-out record
// live. The walk stops at the first uncarved slot, and retireSlab sets
// the bits of everything after it: the record after the gap is freed,
// and once the records before the gap are freed the slab goes back to the
// heap while that record is still held.
func TestReclaimCarvingGap(t *testing.T) {
	p := newPool(t, heapCombo, 4<<20, Options{SlabSize: 16 << 10})
	h0 := heapStats(t, p)
	dead := testutil.DeadIdentity(t)
	hd := p.NewHandle()
	var cv Carving
	if err := hd.Reserve(64, 10, &cv); err != nil {
		t.Fatal(err)
	}
	a, b := cv.Next(), cv.Next() // 8 left uncarved: the owner dies now
	c, err := hd.AllocOff(64)    // after the carving
	if err != nil {
		t.Fatal(err)
	}
	playDead(t, p, dead)
	if _, err := p.Reclaim(dead, KeepAll); err != nil {
		t.Fatal(err)
	}
	if _, err := p.Bytes(c); err != nil {
		t.Errorf("record after the carving, kept, is no longer live after Reclaim(KeepAll): %v", err)
	}
	if err := p.Free(a); err != nil {
		t.Fatal(err)
	}
	if err := p.Free(b); err != nil {
		t.Fatal(err)
	}
	if h := heapStats(t, p); h.FreeBytes == h0.FreeBytes {
		t.Errorf("slab went back to the heap while record %#x is still held", uint64(c))
	}
	if err := p.Free(c); err != nil {
		t.Errorf("free of the held record: %v", err)
	}
}

// TestCheckCarvingGap: a handle with a carving not fully carved
// allocates after it (as Reserve allows) and that record is freed; with
// nobody allocating or freeing, Check must pass a healthy pool. Its walk
// of the active slab stops at the first uncarved slot and reports the
// freed record's granules "past the end of allocation" as corrupt.
func TestCheckCarvingGap(t *testing.T) {
	p := newPool(t, heapCombo, 4<<20, Options{SlabSize: 16 << 10})
	hd := p.NewHandle()
	var cv Carving
	if err := hd.Reserve(64, 4, &cv); err != nil {
		t.Fatal(err)
	}
	a := cv.Next()
	c, err := hd.AllocOff(64)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Free(c); err != nil {
		t.Fatal(err)
	}
	if err := p.Check(); err != nil {
		t.Errorf("Check of a healthy pool with a carving in progress: %v", err)
	}
	rest := make([]mem.Off, 4)
	n := cv.Rest(rest)
	if err := p.FreeBatch(append(rest[:n], a)); err != nil {
		t.Fatal(err)
	}
	hd.Close()
}

// TestReclaimRetiredCarving: a process reserves a carving, carves
// part of it, and goes on allocating (another goroutine of it may use the
// handle meanwhile: each.go does not hold the handle across fill) until
// the carving's slab is shelved and retired; then it dies. Reclaim of the
// dead process must give everything back. The walk of the retired slab
// finds the uncarved slots below the retirement point, reports the slab
// corrupt and frees none of its records: the slab is never returned.
func TestReclaimRetiredCarving(t *testing.T) {
	p := newPool(t, heapCombo, 4<<20, Options{SlabSize: 16 << 10})
	h0 := heapStats(t, p)
	dead := testutil.DeadIdentity(t)
	hd := p.NewHandle()
	var cv Carving
	if err := hd.Reserve(64, 10, &cv); err != nil {
		t.Fatal(err)
	}
	cv.Next()
	cv.Next()
	first := hd.slab
	for hd.slab == first || len(hd.spares) < maxSpares || hd.spares[0].slab == first {
		if _, err := hd.AllocOff(1000); err != nil {
			t.Fatal(err)
		}
	}
	playDead(t, p, dead)
	rc, err := p.Reclaim(dead, nil)
	if err != nil {
		t.Errorf("reclaim: %+v: %v", rc, err)
	}
	if h := heapStats(t, p); h.FreeBytes != h0.FreeBytes {
		t.Errorf("after reclaiming the dead process: %d bytes free, want %d (%d extents left)", h.FreeBytes, h0.FreeBytes, h.AllocExtents)
	}
}
