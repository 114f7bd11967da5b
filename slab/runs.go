package slab

import (
	"errors"
	"fmt"
	"unsafe"

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
// those. keys[i] gets the check in the header of the record at offs[i]
// (what Pool.RecordKey reads), for the located ones: keys, like sizes,
// must be as long as offs. It does not check that the records are live
// (Pool.RunLive does).
//
// This is Locate for a consumer's batch: a record that follows its run's
// last is checked against the place it must be at (its header's two
// words compared with the ones its slab's generation writes there), with
// no call and no load of the slab's header per record.
func (h *Handle) LocateRuns(offs []mem.Off, sizes, keys []uint32, runs []Run) (int, []Run) {
	p := h.p
	if len(sizes) < len(offs) || len(keys) < len(offs) {
		return 0, runs
	}
	for i := 0; i < len(offs); {
		sl, ok := p.slotOf(offs[i], &h.seen)
		if !ok || sl.size != uint64(sizes[i]) {
			return i, runs
		}
		first := sl.bit + uint64(p.geo.recBase)
		keys[i] = recCheck(uint32(first), uint32(sl.n), sizes[i], p.salt^sl.gen)
		j, end := p.extendRun(offs, sizes, keys, i+1, sl.slab, first+sl.n, p.salt^sl.gen)
		runs = append(runs, Run{slab: sl.slab, bit: sl.bit, n: end - first, ident: h.seen.ident, Count: j - i})
		i = j
	}
	return len(offs), runs
}

// extendRun is LocateRuns's inner loop, apart so that it makes no call
// per record: it returns how far from i on the records of offs follow
// each other in the slab at slab (the first expected with its header at
// granule pos), each with the header its slab's generation (check key
// key) writes there, and the granule after the last. A stretch of one
// size is checked by extendSame.
func (p *Pool) extendRun(offs []mem.Off, sizes, keys []uint32, i int, slab, pos uint64, key uint32) (int, uint64) {
	n := min(len(offs), len(sizes), len(keys))
	offs, sizes, keys = offs[:n], sizes[:n], keys[:n]
	for i < len(offs) {
		size := sizes[i]
		k := slotGranules(uint64(size), p.align)
		if k > p.maxSmall {
			break
		}
		j, end := p.extendSame(offs, sizes, keys, i, slab/granule, pos, size, uint32(k), recCheckOf(uint32(k), size, key))
		if j == i {
			break
		}
		i, pos = j, end
	}
	return i, pos
}

// extendSame is extendRun for the records of size bytes (slot granules
// each, of: recCheckOf for them) from i on, in the slab at granule sg.
// How many such records fit between pos and the slab's limit (and in the
// region) is worked out first, so that the loop checks no bound per
// record and steps through the headers by pointer.
func (p *Pool) extendSame(offs []mem.Off, sizes, keys []uint32, i int, sg, pos uint64, size, slot uint32, of uint64) (int, uint64) {
	limit, granules := uint64(p.geo.limit), uint64(len(p.plain))/2
	if slot == 0 || i >= len(offs) || len(sizes) < len(offs) || len(keys) < len(offs) || pos > limit || sg+pos >= granules {
		return i, pos
	}
	n := min(uint64(len(offs)-i), (limit-pos)/uint64(slot), (granules-sg-pos)/uint64(slot))
	os, ss, ks := offs[i:i+int(n)], sizes[i:i+int(n)], keys[i:i+int(n)]
	hdr := unsafe.Pointer(&p.plain[2*(sg+pos)]) // the first record's header: n of them fit
	want, stride := (sg+pos+1)*granule, uint64(slot)*granule
	for j := range os {
		h := (*[2]uint64)(hdr)
		check := recCheckAt(uint32(pos), of)
		if ss[j] != size || uint64(os[j]) != want ||
			h[0] != packHalves(uint32(pos), slot) || h[1] != packHalves(size, check) {
			return i + j, pos
		}
		ks[j] = check
		pos += uint64(slot)
		want += stride
		hdr = unsafe.Add(hdr, stride)
	}
	return i + len(os), pos
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
	if i < len(offs) {
		all = append(all, fmt.Errorf("slab: free runs: records %d to %d are in no run: %w", i, len(offs)-1, ErrInvalidArgument))
	}
	return errors.Join(all...)
}

// RunSlots fills ss[i] with the Slot of the record at offs[i] (of
// sizes[i] bytes), as Locate would, for the records that LocateRuns
// located as runs: from the runs alone, without reading a header.
func (h *Handle) RunSlots(runs []Run, offs []mem.Off, sizes []uint32, ss []Slot) {
	recBase := uint64(h.p.geo.recBase)
	n := min(len(offs), len(sizes), len(ss))
	offs, sizes, ss = offs[:n], sizes[:n], ss[:n]
	i := 0
	for _, r := range runs {
		end := min(i+max(r.Count, 0), n)
		first := r.slab/granule + recBase + 1 // data granule of the slab's first slot
		gen := genOf(r.ident)
		var prev *Slot
		// Field by field: a Slot built whole and copied would be
		// re-read with wider loads than it was stored with.
		for j := i; j < end; j++ {
			bit := uint64(offs[j])/granule - first
			if prev != nil {
				prev.sl.n = bit - prev.sl.bit
			}
			s := &ss[j]
			s.off, s.ident = offs[j], r.ident
			s.sl.slab, s.sl.bit, s.sl.size, s.sl.gen = r.slab, bit, uint64(sizes[j]), gen
			prev = s
		}
		if prev != nil {
			prev.sl.n = r.bit + r.n - prev.sl.bit
		}
		i = end
	}
}
