package slab

import (
	"errors"
	"fmt"

	"github.com/heapipc/ipc/alloc"
	"github.com/heapipc/ipc/internal/errs"
	"github.com/heapipc/ipc/internal/sys"
)

const maxViolations = 64

type violations struct {
	list  []error
	extra int
}

func (v *violations) add(err error) {
	if len(v.list) < maxViolations {
		v.list = append(v.list, err)
		return
	}
	v.extra++
}

// Check checks the heap (alloc.Heap.Check) and then every slab and large
// record, and reports every violation (errors.Join of errors wrapping
// ErrCorrupt): slab headers that do not match their extent, records whose
// slot is partly free, headers missing below a retired slab's retirement
// point, allocated granules beyond it, counts below what the bitmap shows
// (above it is a freer on its way to the count, or killed before it got
// there: such a slab goes back to the heap through Recover once it is
// retired and all free), retired slabs that are all free but were not
// returned, large records without a valid header.
//
// Slabs are checked without a lock: Check is exact when no process is
// allocating or freeing records; run while others are, it may report
// the states they pass through.
func (p *Pool) Check() error {
	var v violations
	if err := p.heap.Check(); err != nil {
		v.add(err)
	}
	exts, err := p.heap.Allocated()
	if err != nil {
		v.add(err)
		return v.join()
	}
	for _, e := range exts {
		switch e.Kind {
		case alloc.KindSlab:
			p.checkSlab(e, &v, nil)
		case alloc.KindLarge:
			if _, _, err := p.largeOf(e); err != nil {
				v.add(err)
			}
		}
	}
	return v.join()
}

func (v *violations) join() error {
	if v.extra > 0 {
		v.list = append(v.list, fmt.Errorf("slab: %d more violations: %w", v.extra, ErrCorrupt))
	}
	return errors.Join(v.list...)
}

// slabCounts accumulates Stats.
type slabCounts struct {
	active, retired int
	records         int
	bytes           uint64
}

func (p *Pool) checkSlab(e alloc.Extent, v *violations, sc *slabCounts) {
	sh := &p.slabs[e.Off/slabHeaderSize]
	at := func(field string, o uint64, format string, args ...any) {
		v.add(errs.Corrupt("slab."+field, uint64(e.Off)+o, "slab %#x: "+format, append([]any{uint64(e.Off)}, args...)...))
	}
	if !p.slabOK(e, sh) {
		// A returner is freeing it (Returner set), unless the returner
		// died halfway: then Recover finishes the free.
		switch r := sys.Identity(sh.Returner.Load()); {
		case r == 0:
			at("header", 0, "header does not describe the extent (magic %#x, self %#x, %d pages, geometry %d/%d/%d)",
				uint32(sh.Ident.Load()), sh.Self, sh.Pages, sh.RecBase, sh.Limit, sh.Words)
		case p.returnCut(e, sh, r) && !sys.Alive(r):
			at("Returner", 136, "its return was cut short: the returner %v died before the heap freed the extent (Recover gives it back)", r)
		}
		return
	}
	base := uint64(e.Off)/8 + bitmapWord
	nbits := uint64(sh.Limit - sh.RecBase)
	bit := func(i uint64) bool { return p.words[base+i/64].Load()&(1<<(i%64)) != 0 }
	if r := nbits % 64; r != 0 {
		if w := p.words[base+uint64(sh.Words)-1].Load(); w>>r != ^uint64(0)>>r {
			at("bitmap", (uint64(sh.Words)-1)*8+slabHeaderSize, "bits past the last granule are not set (%#x)", w)
		}
	}
	c := sh.Count.Load()
	count := int64(uint32(c))
	isActive := count >= active
	if gen := genOf(sh.Ident.Load()); genOf(c) != gen && sh.Returner.Load() == 0 {
		at("Count", 144, "count of generation %#x, the slab is of generation %#x", genOf(c), gen)
	}
	retired := sh.Retired.Load()
	end := uint32(0)
	switch {
	case isActive && retired != 0:
		// A retirement in progress (or left by a dead owner).
		end = uint32(min(retired-1, uint64(sh.Limit)))
	case !isActive:
		if retired == 0 || retired-1 < uint64(sh.RecBase) || retired-1 > uint64(sh.Limit) {
			at("Retired", 152, "retired slab with retirement point %d", retired)
			return
		}
		end = uint32(retired - 1)
	}
	stop, err := p.walk(e.Off, sh, end, func(pos uint32, hd recHeader) {
		b := uint64(pos - sh.RecBase)
		set := 0
		for i := b; i < b+uint64(hd.Len); i++ {
			if bit(i) {
				set++
			}
		}
		switch {
		case set == 0:
			if sc != nil {
				sc.records++
				sc.bytes += uint64(hd.Size)
			}
		case set != int(hd.Len):
			at("bitmap", slabHeaderSize+b/64*8, "record at slot %d: %d of its %d granules are free", pos, set, hd.Len)
		}
	})
	if err != nil {
		v.add(err)
	}
	// Granules past the end of allocation: free once retired, untouched
	// while active.
	for i := uint64(stop - sh.RecBase); i < nbits; i++ {
		if bit(i) == (end == 0) {
			state := "free"
			if end != 0 {
				state = "not free"
			}
			at("bitmap", slabHeaderSize+i/64*8, "granule %d past the end of allocation (%d) is %s", i, stop, state)
			break
		}
	}
	incomplete := int64(0)
	for w := uint64(0); w < uint64(sh.Words); w++ {
		if p.words[base+w].Load() != ^uint64(0) {
			incomplete++
		}
	}
	// A count above what the bitmap shows is a freer that completed a
	// word and has not counted it yet, or was killed before it did: not
	// reported while a live owner has the slab (it is returned late: by
	// returnStalled once it is retired and all free). A count below it
	// would return the slab with records live.
	if isActive {
		if c := count - active; c < incomplete || (c != incomplete && !sys.Alive(sys.Identity(sh.Owner.Load()))) {
			at("Count", 144, "active slab counts %d incomplete words, the bitmap has %d", count-active, incomplete)
		}
		if sh.Owner.Load() == 0 {
			at("Owner", 128, "active slab without an owner")
		}
		if sc != nil {
			sc.active++
		}
		return
	}
	if count < incomplete || (incomplete == 0 && count != 0) {
		at("Count", 144, "retired slab counts %d incomplete words, the bitmap has %d", count, incomplete)
	}
	if count == 0 && sh.Returner.Load() == 0 {
		at("Count", 144, "retired slab with every record free was not returned to the heap (leaked)")
	}
	if sc != nil {
		sc.retired++
	}
}

// Stats describe the pool's slabs and records at one moment (read without
// a lock: approximate while others allocate and free).
type Stats struct {
	Heap         alloc.Stats
	Slabs        int    // slab extents
	ActiveSlabs  int    // slabs a handle still allocates from, or keeps as spares
	RetiredSlabs int    // slabs waiting for their last records
	SlabBytes    uint64 // bytes in slabs
	LiveRecords  int    // live records in slabs
	LiveBytes    uint64 // bytes asked for by the live records in slabs
	LargeRecords int
	LargeBytes   uint64 // bytes asked for by the large records
}

// Stats walks the slabs and large records.
func (p *Pool) Stats() (Stats, error) {
	hs, err := p.heap.Stats()
	if err != nil {
		return Stats{}, err
	}
	exts, err := p.heap.Allocated()
	if err != nil {
		return Stats{}, err
	}
	s := Stats{Heap: hs}
	var v violations
	var sc slabCounts
	for _, e := range exts {
		switch e.Kind {
		case alloc.KindSlab:
			s.Slabs++
			s.SlabBytes += e.Size
			p.checkSlab(e, &v, &sc)
		case alloc.KindLarge:
			if _, loc, err := p.largeOf(e); err == nil {
				s.LargeRecords++
				s.LargeBytes += loc.size
			}
		}
	}
	s.ActiveSlabs, s.RetiredSlabs = sc.active, sc.retired
	s.LiveRecords, s.LiveBytes = sc.records, sc.bytes
	return s, nil
}
