package slab

import (
	"errors"
	"fmt"

	"github.com/heapipc/ipc/internal/mem"
)

// Run is a run of records of one slab that lie back to back, as a
// RunCursor found them: the slots [bit, bit+n) of the slab's
// bitmap, which hold Count records, located while the slab had the
// identity word ident.
type Run struct {
	slab, bit, n uint64
	ident        uint64
	Count        int
}

// RunLive reports whether every record of a run is live: none of its
// bits is set, in the slab of the identity it was located in.
func (p *Pool) RunLive(r *Run) bool {
	return p.words[r.slab/8].Load() == r.ident && p.bitsClear(r.slab, r.bit, r.n)
}

// FreeRuns frees the records of runs (a RunCursor's), whose offsets are
// offs (the records the cursor located, in order), as FreeBatch would:
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
	if i < len(offs) {
		all = append(all, fmt.Errorf("slab: free runs: records %d to %d are in no run: %w", i, len(offs)-1, ErrInvalidArgument))
	}
	return errors.Join(all...)
}
