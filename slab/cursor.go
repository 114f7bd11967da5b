package slab

import (
	"unsafe"

	"github.com/heapipc/ipc/internal/mem"
)

// RunCursor locates records one at a time, in the order a consumer takes
// them: each record is validated as Locate validates it (a header of its
// slab's current generation, of its size, in a slab of the pool's
// geometry; not that it is live: Pool.RunLive) and the records are
// gathered into runs of records that lie back to back in one slab, as a
// handle carves them and a channel delivers them, for FreeRuns. A record
// that follows the last one located is checked against the place it must
// be at (its header's two words compared with the ones its slab's
// generation writes there), with no load of its slab's
// header: what a consumer does when it checks each record as it reaches
// it, in one pass over the records' memory with whatever else it does
// with them.
//
// A RunCursor has no state of a Handle's: it may be used while its
// caller uses a Handle for other work.
type RunCursor struct {
	p    *Pool
	runs []Run
	seen slabSeen
	want mem.Off // where the current run's next record's data must be; 0: no run
	sg   uint64  // region granule of the run's slab
	pos  uint64  // granule, from the slab's start, of the next header
	end  uint64  // granule where slots end: the slab's limit (or the region's end)
	size uint32  // bytes of the run's last record
	slot uint32  // its granules
	of   uint64  // recCheckOf of such records
	key  uint32  // salt ^ the slab's generation
	last [1]Run  // after Forget, the last run, for Continue
}

// Reset starts the cursor over on pool p, appending runs to runs[:0].
func (c *RunCursor) Reset(p *Pool, runs []Run) {
	*c = RunCursor{p: p, runs: runs[:0]}
}

// Continue starts the cursor over on pool p and runs[:0] as Reset does, but where it
// left off: a first record that continues the last run it located (the
// next one its producer carved, as the next batch of a channel usually
// begins) is checked against its place, without locating its slab
// afresh, and begins a new run there. Its header must still be of the
// generation the cursor knew, so a slab that started over since is
// located in full.
func (c *RunCursor) Continue(p *Pool, runs []Run) {
	if c.p != p {
		c.Reset(p, runs)
		return
	}
	runs = runs[:0]
	if c.want != 0 && len(c.runs) > 0 {
		last := c.runs[len(c.runs)-1]
		runs = append(runs, Run{slab: last.slab, bit: last.bit + last.n, ident: last.ident})
	}
	c.runs = runs
}

// Forget drops the cursor's runs (the caller's memory), keeping where it
// left off for Continue.
func (c *RunCursor) Forget() {
	if len(c.runs) == 0 {
		c.runs = nil
		return
	}
	c.last[0] = c.runs[len(c.runs)-1]
	c.runs = c.last[:]
}

// Runs is the runs of the records located since Reset, in order.
func (c *RunCursor) Runs() []Run {
	if n := len(c.runs); n > 0 && c.runs[n-1].Count == 0 {
		return c.runs[:n-1] // Continue's run, which no record continued
	}
	return c.runs
}

// Next locates the record whose data start at off, of size bytes in all,
// as the next record of the cursor's runs, and returns the check in its
// header (what Pool.RecordKey reads). ok false: it is not such a record
// (Bytes and Free say what it is), and nothing changed.
func (c *RunCursor) Next(off mem.Off, size uint32) (key uint32, ok bool) {
	pos, slot := c.pos, uint64(c.slot)
	if off != c.want || size != c.size || pos+slot > c.end {
		return c.next(off, size)
	}
	// pos+slot <= end: the header is in the region (Reset's run start
	// bounded end by the region's granules).
	h := (*[2]uint64)(unsafe.Pointer(&c.p.plain[2*(c.sg+pos)]))
	check := recCheckAt(uint32(pos), c.of)
	if h[0] != packHalves(uint32(pos), c.slot) || h[1] != packHalves(size, check) {
		// Not the header the run's slab would have written there:
		// located in full (a slab that started over since the cursor
		// left off, see Continue; else a damaged header, refused).
		return c.next(off, size)
	}
	c.pos = pos + slot
	c.want += mem.Off(slot * granule)
	r := &c.runs[len(c.runs)-1]
	r.n += slot
	r.Count++
	return check, true
}

// Locate locates the records whose data start at offs, of sizes bytes in
// all each, as Next would one by one, and stores the checks in their
// headers in keys; it returns how many it located: all of them, or those
// before the first that Next would refuse. The records that continue the
// cursor's run with others of its size are checked in one loop that keeps
// the run in registers (no call and no store of the cursor per record).
func (c *RunCursor) Locate(offs []mem.Off, sizes, keys []uint32) int {
	n := min(len(offs), len(sizes), len(keys))
	offs, sizes, keys = offs[:n], sizes[:n], keys[:n]
	for i := 0; i < n; {
		pos, slot, want, size, of := c.pos, uint64(c.slot), c.want, c.size, c.of
		lim := c.end - min(slot, c.end) // a header at pos <= lim leaves room for its slot
		base := unsafe.Pointer(unsafe.SliceData(c.p.plain))
		w0 := packHalves(0, c.slot)
		j := i
		for ; j < n && offs[j] == want && sizes[j] == size && pos <= lim; j++ {
			// pos+slot <= end: the header is in the region (see Next).
			h := (*[2]uint64)(unsafe.Add(base, 16*(c.sg+pos)))
			check := recCheckAt(uint32(pos), of)
			if h[0] != w0|packHalves(uint32(pos), 0) || h[1] != packHalves(size, check) {
				break
			}
			keys[j] = check
			pos += slot
			want += mem.Off(slot * granule)
		}
		if k := j - i; k > 0 {
			c.pos, c.want = pos, want
			r := &c.runs[len(c.runs)-1]
			r.n += slot * uint64(k)
			r.Count += k
		}
		if j == n {
			return n
		}
		key, ok := c.next(offs[j], sizes[j])
		if !ok {
			return j
		}
		keys[j] = key
		i = j + 1
	}
	return n
}

// A Span is the part of a RunCursor's current run that its next records
// continue, for a caller that checks those records in a loop of its own
// (one pass over the records' memory with its own checks of them, no
// call per record): a record continues the span if its data start at
// Want, it has Size bytes in all and Pos <= Lim, and Check passes for
// its header at Pos; the next one's are then at Want + Slot granules,
// Pos + Slot. Took tells the cursor how many did. Want is 0 when there
// is no run to continue (RunCursor.Next locates the next record).
type Span struct {
	Want mem.Off // where the next record's data must be
	Pos  uint64  // granule, from the slab's start, of its header
	Lim  uint64  // a header at Pos <= Lim leaves room for its slot
	Slot uint64  // granules of a record of the run
	Size uint32  // bytes of a record of the run
	hdr  unsafe.Pointer
	of   uint64
	w0   uint64
}

// Span is the cursor's current run as a Span.
func (c *RunCursor) Span() Span {
	if c.want == 0 || len(c.runs) == 0 {
		return Span{}
	}
	slot := uint64(c.slot)
	return Span{
		Want: c.want, Pos: c.pos, Lim: c.end - min(slot, c.end), Slot: slot, Size: c.size,
		hdr: unsafe.Pointer(&c.p.plain[2*c.sg]), of: c.of, w0: packHalves(0, c.slot),
	}
}

// Check checks the header at granule pos of the span's slab (pos <= Lim)
// as Next does a record's that continues the run, and returns the check
// in it.
func (s *Span) Check(pos uint64) (key uint32, ok bool) {
	h := (*[2]uint64)(unsafe.Add(s.hdr, 16*pos))
	key = recCheckAt(uint32(pos), s.of)
	return key, h[0] == s.w0|packHalves(uint32(pos), 0) && h[1] == packHalves(s.Size, key)
}

// Took tells the cursor that the k records at its Span's start continued
// the run (each passed Check at its place): they are located, as k calls
// of Next would have located them.
func (c *RunCursor) Took(k int) {
	if k <= 0 {
		return
	}
	n := uint64(c.slot) * uint64(k)
	c.pos += n
	c.want += mem.Off(n * granule)
	r := &c.runs[len(c.runs)-1]
	r.n += n
	r.Count += k
}

// next is Next for a record that does not continue the run with another
// of the same size: one of another size right after it, or the first of
// a new run (located in full).
func (c *RunCursor) next(off mem.Off, size uint32) (uint32, bool) {
	p := c.p
	if c.want != 0 && off == c.want {
		k := slotGranules(uint64(size), p.align)
		if k <= p.maxSmall && c.pos+k <= c.end {
			of := recCheckOf(uint32(k), size, c.key)
			h := (*[2]uint64)(unsafe.Pointer(&p.plain[2*(c.sg+c.pos)]))
			check := recCheckAt(uint32(c.pos), of)
			if h[0] == packHalves(uint32(c.pos), uint32(k)) && h[1] == packHalves(size, check) {
				c.size, c.slot, c.of = size, uint32(k), of
				c.pos += k
				c.want += mem.Off(k * granule)
				r := &c.runs[len(c.runs)-1]
				r.n += k
				r.Count++
				return check, true
			}
		}
	}
	sl, ok := p.slotOf(off, &c.seen)
	if !ok || sl.size != uint64(size) {
		return 0, false
	}
	if n := len(c.runs); n > 0 && c.runs[n-1].Count == 0 {
		c.runs = c.runs[:n-1] // Continue's run, which no record continued
	}
	first := sl.bit + uint64(p.geo.recBase)
	key := p.salt ^ sl.gen
	check := recCheck(uint32(first), uint32(sl.n), size, key)
	c.runs = append(c.runs, Run{slab: sl.slab, bit: sl.bit, n: sl.n, ident: c.seen.ident, Count: 1})
	c.sg = sl.slab / granule
	c.pos = first + sl.n
	c.end = min(uint64(p.geo.limit), uint64(len(p.plain))/2-c.sg)
	c.size, c.slot, c.key = size, uint32(sl.n), key
	c.of = recCheckOf(c.slot, size, key)
	c.want = off + mem.Off(sl.n*granule)
	return check, true
}
