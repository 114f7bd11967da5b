package slab

import (
	"fmt"

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
// (Rest carves the ones left, to free them).
type Carving struct {
	plain []uint64
	g     uint64 // region granule of the next record's header
	pos   uint32 // its granule from the slab start
	ln    uint32 // granules a record takes
	sz    uint32 // bytes asked for
	left  uint32 // records not carved yet
	of    uint64 // recCheckOf of the records
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
	g := c.g
	// Two word stores, the words the readers load (as carve).
	c.plain[2*g] = packHalves(c.pos, c.ln)
	c.plain[2*g+1] = packHalves(c.sz, recCheckAt(c.pos, c.of))
	c.g += uint64(c.ln)
	c.pos += c.ln
	return mem.Off((g + 1) * granule)
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
// the caller may allocate from the handle while it carves c.
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
		if err := h.refill(); err != nil {
			return err
		}
		if uint64(h.cur)+k > uint64(h.limit) {
			return fmt.Errorf("slab: reserve %d bytes: a refilled slab has no room: %w", size, ErrCorrupt)
		}
	}
	ln := uint32(k)
	m := min(uint32(n), (h.limit-h.cur)/ln)
	*c = Carving{plain: p.plain, g: h.base + uint64(h.cur), pos: h.cur, ln: ln, sz: uint32(size), left: m, of: recCheckOf(ln, uint32(size), h.key)}
	h.cur += m * ln
	return nil
}
