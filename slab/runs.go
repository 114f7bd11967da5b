package slab

import (
	"errors"
	"fmt"

	"github.com/heapipc/ipc/internal/mem"
)

// Run is a run of records of one slab that lie back to back, as
// Handle.LocateRuns found them: the slots [bit, bit+n) of the slab's
// bitmap, which hold Count records, located while the slab had the
// identity word ident.
type Run struct {
	slab, bit, n uint64
	ident        uint64
	Count        int
}

// LocateRuns validates the records whose data start at offs, the record
// at offs[i] being of sizes[i] bytes, as Locate would (a header of its
// slab's current generation, of that size, in a slab of this pool's
// geometry), and describes them as runs, appended to runs: a run per
// stretch of records that lie back to back in one slab, as a handle
// carves them and a channel delivers them. It returns how many records it
// located, a prefix of offs (all of them, or up to the first that is not
// such a record: Bytes and Free say what that one is), and the runs of
// those. It does not check that the records are live (Pool.RunLive does).
//
// This is Locate for a consumer's batch: a record that follows its run's
// last is checked against the place it must be at (its header's two
// words compared with the ones its slab's generation writes there), with
// no call and no load of the slab's header per record.
func (h *Handle) LocateRuns(offs []mem.Off, sizes []uint32, runs []Run) (int, []Run) {
	p := h.p
	if len(sizes) < len(offs) {
		return 0, runs
	}
	var (
		r              *Run
		next           mem.Off // data offset of the record after r's last
		pos            uint64  // its header's granule in the slab
		key            uint32  // the check key of r's slab
		lastSize, slot uint32  // the last size seen and its slot length (granules)
	)
	limit := uint64(p.geo.limit)
	for i, off := range offs {
		size := sizes[i]
		if size != lastSize || slot == 0 {
			k := slotGranules(uint64(size), p.align)
			if k > p.maxSmall {
				return i, runs
			}
			lastSize, slot = size, uint32(k)
		}
		if r != nil && off == next && pos+uint64(slot) <= limit {
			g := uint64(off)/granule - 1
			if p.plain[2*g] != packHalves(uint32(pos), slot) ||
				p.plain[2*g+1] != packHalves(size, recCheck(uint32(pos), slot, size, key)) {
				return i, runs
			}
		} else {
			sl, ok := p.slotOf(off, &h.seen)
			if !ok || sl.size != uint64(size) {
				return i, runs
			}
			runs = append(runs, Run{slab: sl.slab, bit: sl.bit, ident: h.seen.ident})
			r = &runs[len(runs)-1]
			pos, key = sl.bit+uint64(p.geo.recBase), p.salt^sl.gen
		}
		r.n += uint64(slot)
		r.Count++
		pos += uint64(slot)
		next = mem.Off(r.slab + (pos+1)*granule)
	}
	return len(offs), runs
}

// RunLive reports whether every record of a run is live: none of its
// bits is set, in the slab of the identity it was located in.
func (p *Pool) RunLive(r *Run) bool {
	return p.words[r.slab/8].Load() == r.ident && p.bitsClear(r.slab, r.bit, r.n)
}

// FreeRuns frees the records of runs (LocateRuns's), whose offsets are
// offs (the records LocateRuns located, in order), as FreeBatch would:
// each run's bits with one CAS per bitmap word. A run whose slab has
// another identity by now is freed record by record, as is the rest of a
// run that has a bit set already (a double free), so that each error
// names its record by its index in offs. Every record is freed or
// reported.
func (p *Pool) FreeRuns(runs []Run, offs []mem.Off) error {
	var all []error
	i := 0
	for _, r := range runs {
		if r.Count < 0 || r.Count > len(offs)-i {
			all = append(all, fmt.Errorf("slab: free runs: %d runs' records beyond the %d offsets: %w", len(runs), len(offs), ErrInvalidArgument))
			break
		}
		o := offs[i : i+r.Count]
		if p.words[r.slab/8].Load() == r.ident {
			all = p.freeRun(bitRun{slab: r.slab, bit: r.bit, n: r.n, gen: genOf(r.ident)}, o, i, all)
		} else {
			for j, off := range o {
				if err := p.Free(off); err != nil {
					all = append(all, fmt.Errorf("record %d: %w", i+j, err))
				}
			}
		}
		i += r.Count
	}
	return errors.Join(all...)
}
