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
			sh, end, ok, err := p.walkable(e)
			if err != nil {
				all = append(all, fmt.Errorf("slab: walk: %w", err))
			}
			if !ok {
				continue
			}
			var offs []mem.Off
			_, err = p.walk(e.Off, sh, end, func(pos uint32, hd recHeader) {
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

// walkable returns, for a slab extent, its header and the granule where
// allocation stopped (0: active, up to the first slot without a valid
// header), if walks look at it: a slab of this pool's geometry that is
// not being returned. A retirement point out of range is an error.
func (p *Pool) walkable(e alloc.Extent) (sh *slabHeader, end uint32, ok bool, err error) {
	sh = &p.slabs[e.Off/slabHeaderSize]
	if !p.slabOK(e, sh) || sh.Returner.Load() != 0 {
		return nil, 0, false, nil
	}
	if r := sh.Retired.Load(); r != 0 {
		if r-1 < uint64(sh.RecBase) || r-1 > uint64(sh.Limit) {
			return nil, 0, false, fmt.Errorf("slab %#x: retirement point %d out of range: %w", uint64(e.Off), r-1, ErrCorrupt)
		}
		end = uint32(r - 1)
	}
	return sh, end, true, nil
}
