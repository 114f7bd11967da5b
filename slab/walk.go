package slab

import (
	"errors"
	"fmt"

	"github.com/heapipc/ipc/alloc"
	"github.com/heapipc/ipc/internal/mem"
)

// Walk calls fn with the offset of every live record of the buffer: those
// of retired slabs (up to where allocation stopped), of active slabs (up
// to the first slot without a valid header: a live owner may be carving
// the next one), and the large records. Records may be freed while it
// walks; fn sees each record at most once. Slabs being returned are
// skipped. It is for recovery and inspection, not for hot paths: it reads
// every header of every slab.
func (p *Pool) Walk(fn func(off mem.Off)) error {
	exts, err := p.heap.Allocated()
	if err != nil {
		return fmt.Errorf("slab: walk: %w", err)
	}
	var all []error
	for _, e := range exts {
		switch e.Kind {
		case alloc.KindSlab:
			sh := &p.slabs[e.Off/slabHeaderSize]
			if !p.slabOK(e, sh) || sh.Returner.Load() != 0 {
				continue
			}
			var end uint32
			if r := sh.Retired.Load(); r != 0 {
				if r-1 < uint64(sh.RecBase) || r-1 > uint64(sh.Limit) {
					all = append(all, fmt.Errorf("slab: walk: slab %#x: retirement point %d out of range: %w", uint64(e.Off), r-1, ErrCorrupt))
					continue
				}
				end = uint32(r - 1)
			}
			var offs []mem.Off
			_, err := p.walk(e.Off, sh, end, func(pos uint32, hd recHeader) {
				loc := located{slab: e.Off, sh: sh, hd: hd, bit: pos - sh.RecBase}
				if p.live(loc) {
					offs = append(offs, e.Off+mem.Off(pos+1)*granule)
				}
			})
			if err != nil {
				all = append(all, fmt.Errorf("slab: walk: %w", err))
			}
			for _, off := range offs {
				fn(off)
			}
		case alloc.KindLarge:
			if off, _, err := p.largeOf(e); err == nil {
				fn(off)
			}
		}
	}
	return errors.Join(all...)
}
