package slab

import (
	"fmt"
	"unsafe"

	"github.com/heapipc/ipc/internal/mem"
)

// Carving is a stretch of records of one size that Handle.Reserve set
// aside back to back in a handle's current slab and that are carved (their
// headers written) one at a time by Next: for a caller that writes each
// record as it carves it, in one pass over the records' memory, where
// AllocBatch writes every header first and the caller then goes over the
// records again. The carving's records are not allocated until Next
// carves them; those it does not carve stay part of the slab, neither
// allocated nor free, so the caller carves every record of a Carving
// (Rest carves the ones left, to free them). Stamp carves them all in one
// loop, for a caller whose own stores into a record fit in two words.
type Carving struct {
	hdr  unsafe.Pointer // the next record's header (in the region while left > 0)
	off  mem.Off        // the next record's data
	left uint32         // records not carved yet
	pos  uint32         // the next header's granule from the slab start
	ln   uint32         // granules a record takes
	sz   uint32         // bytes asked for
	of   uint64         // recCheckOf of the records
}

// Len is how many records the carving has left to carve.
func (c *Carving) Len() int { return int(c.left) }

// Next carves the carving's next record, writing its header, and returns
// its offset (its data's); 0 if none is left.
func (c *Carving) Next() mem.Off {
	if c.left == 0 {
		return 0
	}
	c.left--
	// Two word stores, the words the readers load (as carve).
	h := (*[2]uint64)(c.hdr)
	h[0] = packHalves(c.pos, c.ln)
	h[1] = packHalves(c.sz, recCheckAt(c.pos, c.of))
	off := c.off
	c.hdr = unsafe.Add(c.hdr, c.ln*granule)
	c.off += mem.Off(c.ln * granule)
	c.pos += c.ln
	return off
}

// Stamp carves the records left, as many as offs holds, as Next would
// one by one, and writes t0 and t1 into each one's last 16 bytes (plain
// stores: a trailer of the caller's, the records not handed out yet),
// in one loop with no call; it stores their offsets in offs and their
// keys (what Pool.RecordKey reads) in keys, and returns how many it
// carved (at most as many as offs and keys hold).
func (c *Carving) Stamp(offs []mem.Off, keys []uint32, t0, t1 uint64) int {
	n := min(len(offs), len(keys), int(c.left))
	c.hdr, c.off, c.pos = stampRun(c.hdr, c.off, c.pos, c.ln, c.sz, c.of, offs[:n], keys[:n], t0, t1)
	c.left -= uint32(n)
	return n
}

// writeLeft writes the headers of the records left as Next will write
// them, and leaves c as it is.
func (c *Carving) writeLeft() {
	hdr, pos := c.hdr, c.pos
	for range c.left {
		h := (*[2]uint64)(hdr)
		h[0] = packHalves(pos, c.ln)
		h[1] = packHalves(c.sz, recCheckAt(pos, c.of))
		hdr = unsafe.Add(hdr, c.ln*granule)
		pos += c.ln
	}
}

// Rest carves the records left and stores their offsets in offs (as
// many as Len; it carves only as many as offs holds), and returns how
// many it carved.
func (c *Carving) Rest(offs []mem.Off) int {
	n := min(len(offs), c.Len())
	for i := range offs[:n] {
		offs[i] = c.Next()
	}
	return n
}

// Reserve sets aside up to n records of size bytes (small ones: at most
// MaxSmall) in the handle's current slab, refilling it first if not even
// one fits, and describes them in c: at least one record unless it
// returns an error (ErrNoSpace: the heap has no room for a new slab;
// nothing changed). The handle carves its later records after them, so
// the caller may allocate from the handle while it carves c: the first
// such allocation writes the headers of the records c has left (as Next
// will), since a slot without a header below allocated records would
// hide them from recovery and Check. c must stay where it is until it is
// carved whole or the handle allocates again.
func (h *Handle) Reserve(size, n int, c *Carving) error {
	p := h.p
	k := slotGranules(uint64(max(size, 0)), p.align)
	switch {
	case h.closed:
		return fmt.Errorf("slab: reserve: %w", ErrClosed)
	case size < 0 || k > p.maxSmall:
		return fmt.Errorf("slab: reserve records of %d bytes (small records: at most %d): %w", size, p.MaxSmall(), ErrInvalidSize)
	case n <= 0:
		return fmt.Errorf("slab: reserve %d records: %w", n, ErrInvalidArgument)
	}
	if uint64(h.cur)+k > uint64(h.limit) {
		if err := h.makeRoom(k); err != nil {
			return err
		}
		if uint64(h.cur)+k > uint64(h.limit) {
			return fmt.Errorf("slab: reserve %d bytes: a refilled slab has no room: %w", size, ErrCorrupt)
		}
	}
	ln := uint32(k)
	m := min(uint32(n), (h.limit-h.cur)/ln)
	g := h.base + uint64(h.cur)
	*c = Carving{hdr: unsafe.Pointer(&p.plain[2*g]), off: mem.Off((g + 1) * granule), left: m, pos: h.cur, ln: ln, sz: uint32(size), of: recCheckOf(ln, uint32(size), h.key)}
	h.cur += m * ln
	// Until its records are all carved, nothing else is carved after
	// them: the next allocation settles the carving first (makeRoom).
	h.carving, h.carvedLimit, h.limit = c, h.limit, h.cur
	return nil
}
