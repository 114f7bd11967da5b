package slab

import (
	"errors"
	"fmt"
	"time"

	"github.com/heapipc/ipc/alloc"
	"github.com/heapipc/ipc/internal/errs"
	"github.com/heapipc/ipc/internal/mem"
	"github.com/heapipc/ipc/internal/sys"
)

// Reclaimed counts what Reclaim and Recover did.
type Reclaimed struct {
	Records  int // records of slabs freed
	Large    int // large records freed
	Slabs    int // active slabs retired on behalf of a dead owner
	Returned int // slabs this call gave back to the heap (half-made ones, stalled returns)
	Finished int // records whose free a freer left half done, finished (finishCutFrees)
	// Heap is what Recover freed of the heap's plain extents.
	Heap alloc.Reclaimed
}

// KeepAll, passed as keep, frees no record: Reclaim then only retires the
// dead process's slabs and hands all its records over (each slab goes back
// to the heap once the live processes have freed its records), and
// finishes what it left half-done.
func KeepAll(mem.Off) bool { return true }

// Reclaim gives back what the dead process dead allocated: its active
// slabs are retired on its behalf; every live record of its slabs and
// every large record it allocated is freed, except the records keep
// reports (keep == nil: none). Kept records are handed over: their slab
// (or extent) no longer names dead as its owner, so a later Reclaim or
// Recover leaves them alone, and a slab goes back to the heap when its
// kept records are freed. Reclaim also finishes what dead left half-done:
// a slab it took from the heap but never initialised, a slab it was
// returning.
//
// Records are not tracked per holder: pass in keep every record of dead
// that a live process may still use (queued in a channel, or received and
// not yet freed). A record freed here while a live process still holds
// it is a use after free for that process (its own Free then reports
// ErrDoubleFree; the slabs and heap stay intact). A live owner is refused
// with ErrBusy.
func (p *Pool) Reclaim(dead sys.Identity, keep func(mem.Off) bool) (Reclaimed, error) {
	if dead == 0 {
		return Reclaimed{}, fmt.Errorf("slab: reclaim: no owner given: %w", ErrInvalidArgument)
	}
	if sys.Alive(dead) {
		return Reclaimed{}, fmt.Errorf("slab: reclaim %v: the owner is alive: %w", dead, ErrBusy)
	}
	return p.reclaim(func(id sys.Identity) bool { return id == dead }, keep)
}

// Recover runs Reclaim for every dead process that owns slabs or large
// records, takes over slab returns whose returner died, returns stalled
// slabs (retired and all free, but left unreturned by a process killed
// between two of its steps; see returnStalled), and frees the heap's
// plain extents of dead owners (alloc.Heap.Recover).
func (p *Pool) Recover(keep func(mem.Off) bool) (Reclaimed, error) {
	hr, herr := p.heap.Recover()
	alive := map[sys.Identity]bool{p.self: true}
	isDead := func(id sys.Identity) bool {
		if id == 0 {
			return false
		}
		a, ok := alive[id]
		if !ok {
			a = sys.Alive(id)
			alive[id] = a
		}
		return !a
	}
	cut, cerr := p.finishCutFrees()
	large, lerr := p.finishCutLargeFrees()
	rc, err := p.reclaim(isDead, keep)
	rc.Heap = hr
	rc.Finished = cut + large
	n, serr := p.returnStalled()
	rc.Returned += n
	return rc, errors.Join(herr, cerr, lerr, err, serr)
}

// finishCutLargeFrees completes the frees of large records that a freer
// killed inside the heap's critical section left half done. freeLarge
// marks the record's header freed and frees the extent in one critical
// section, but the heap's page map changes only when its update commits:
// a freer killed in between leaves the extent allocated, its record's
// header marked freed, and no record in it. Such an extent can be nothing
// else: a free that commits frees the extent in the same critical section,
// and a large record's header is zeroed under the heap lock when its
// extent is taken (allocLarge), so a record being made never shows a
// freed header that an earlier record left there. The check is made again
// under the heap lock (a live freer's free has committed by the time this
// holds it). It returns how many it freed.
func (p *Pool) finishCutLargeFrees() (int, error) {
	exts, err := p.heap.Allocated()
	if err != nil {
		return 0, fmt.Errorf("slab: cut large frees: %w", err)
	}
	hdrOff := p.largeData()
	n := 0
	var all []error
	for _, e := range exts {
		if e.Kind != alloc.KindLarge || e.Size <= hdrOff {
			continue
		}
		g := (uint64(e.Off)+hdrOff)/granule - 1
		hd := p.header(g)
		if !p.freedLarge(e, hd, hdrOff) {
			continue
		}
		err := p.heap.FreeIf(e.Off, func(x alloc.Extent) error {
			if x.Kind != alloc.KindLarge || p.header(g) != hd {
				return errNotCut
			}
			return nil
		})
		switch {
		case err == nil:
			n++
		case errors.Is(err, errNotCut), errors.Is(err, alloc.ErrNotAllocated), errors.Is(err, alloc.ErrDoubleFree):
			// Finished or taken meanwhile.
		default:
			all = append(all, fmt.Errorf("slab: cut free of the large record at %#x: %w", uint64(e.Off)+hdrOff, err))
		}
	}
	return n, errors.Join(all...)
}

// errNotCut: the extent is no longer a large record's cut free.
var errNotCut = errors.New("not a cut free")

// freedLarge reports whether hd, the header hdrOff bytes into the large
// record extent e, is the header freeLarge leaves: position 0, freed,
// of a record that fits the extent.
func (p *Pool) freedLarge(e alloc.Extent, hd recHeader, hdrOff uint64) bool {
	return hd.Pos == 0 && hd.Check == p.largeCheck(hd.Len, hd.Size, freedKey) && largeBytes(hd) <= e.Size-hdrOff
}

// finishCutFrees completes the frees that a freer killed between two
// bitmap words left half done. A freer sets a slot's bits one word at a
// time, first word first, and the first word decides (a double free
// loses there): a record of a slab's current generation whose first
// word's bits are set and a later word's not is being freed, by a freer
// that died or one still on its way. Either way the rest is set here,
// and the words that completes are counted off the slab's count (which
// returns the slab if it is retired and that was its last word); a live
// freer still on its way finds its later words set and takes them as
// done (freeBits). It returns how many records it finished.
func (p *Pool) finishCutFrees() (int, error) {
	exts, err := p.heap.Allocated()
	if err != nil {
		return 0, fmt.Errorf("slab: cut frees: %w", err)
	}
	n := 0
	var all []error
	for _, e := range exts {
		if e.Kind != alloc.KindSlab {
			continue
		}
		sh, end, ok, _ := p.walkable(e) // a bad retirement point: Check reports it
		if !ok {
			continue
		}
		gen := genOf(sh.Ident.Load())
		var cut []uint32 // positions of records cut in the middle of their free
		p.walk(e.Off, sh, end, func(pos uint32, hd recHeader) {
			if p.cutSlot(e.Off, uint64(pos-sh.RecBase), uint64(hd.Len)) {
				cut = append(cut, pos)
			}
		})
		for _, pos := range cut {
			ok, err := p.finishCut(e.Off, sh, gen, pos)
			if ok {
				n++
			}
			if err != nil {
				all = append(all, err)
			}
		}
	}
	return n, errors.Join(all...)
}

// cutSlot reports whether the slot [bit, bit+n) of the slab at slab is a
// free cut short: its bits in the first word all set, and in some later
// word not all.
func (p *Pool) cutSlot(slab mem.Off, bit, n uint64) bool {
	base := uint64(slab)/8 + bitmapWord
	for first := true; n > 0; first = false {
		w, b := bit/64, bit%64
		m := min(n, 64-b)
		mask := maskOf(b, m)
		set := p.words[base+w].Load() & mask
		switch {
		case first && set != mask:
			return false
		case !first && set != mask:
			return true
		}
		bit += m
		n -= m
	}
	return false
}

// finishCut sets the remaining bits of the record at granule pos of a
// slab of generation gen if it is still a free cut short (cutSlot). The
// slab is pinned while it does: one more on its count (a CAS that
// expects the generation), so that its owner cannot start it over (which
// needs the count to show every word complete) while the bits are being
// set, and the record is looked at again under the pin.
func (p *Pool) finishCut(slab mem.Off, sh *slabHeader, gen uint32, pos uint32) (bool, error) {
	if !sh.countUp(gen) {
		return false, nil // started over or returned since
	}
	hd := p.header(uint64(slab)/granule + uint64(pos))
	key := p.salt ^ gen
	ok := sh.Ident.Load() == ident(gen) && hd.Pos == pos && hd.Len != 0 &&
		hd.Check == recCheck(pos, hd.Len, hd.Size, key) && pos+hd.Len <= sh.Limit &&
		p.cutSlot(slab, uint64(pos-sh.RecBase), uint64(hd.Len))
	var err error
	if ok {
		// The first word's bits are set: freeBits with first false sets
		// the rest and counts the words that completes (not to zero:
		// the pin holds the count up).
		err = p.freeBits(slab, sh, gen, uint64(pos-sh.RecBase), uint64(hd.Len), false)
	}
	if sh.countDown(gen, 1) {
		return ok, errors.Join(err, p.returnSlab(slab, sh, gen))
	}
	return ok, err
}

// ReturnStalled gives back the stalled slabs (see returnStalled), as
// Recover does last, and reports how many: for a caller that frees
// records after Recover (the records layer frees those whose holder
// died), one of which may have completed a slab a dead freer had left
// with its count above the bitmap.
func (p *Pool) ReturnStalled() (int, error) { return p.returnStalled() }

// stallGrace is how long returnStalled lets a slab it found stalled be:
// a live freer or retirer on its way to the count has had time to get
// there, and the slab is no longer stalled.
const stallGrace = 5 * time.Millisecond

// returnStalled gives back to the heap the retired slabs whose records
// are all free but whose count never reached zero, or that nobody
// returned after it did: the last process to complete a bitmap word died
// between its CAS on the bitmap and the one on the count (a freer, a
// retirer, or a reclaimer that could not tell which completions the dead
// owner had counted), or between the count and claiming the return. A
// slab found so is looked at again after stallGrace; if its count is
// unchanged, it is taken over (its count becomes 0 of generation 0, which
// a counter still on its way, if any, no longer changes) and returned.
func (p *Pool) returnStalled() (int, error) {
	exts, err := p.heap.Allocated()
	if err != nil {
		return 0, fmt.Errorf("slab: stalled slabs: %w", err)
	}
	type stalledSlab struct {
		e   alloc.Extent
		sh  *slabHeader
		c   uint64 // its count when found
		gen uint32 // its generation
	}
	var found []stalledSlab
	for _, e := range exts {
		if e.Kind != alloc.KindSlab {
			continue
		}
		sh := &p.slabs[e.Off/slabHeaderSize]
		if c, gen, ok := p.stalled(e, sh); ok {
			found = append(found, stalledSlab{e, sh, c, gen})
		}
	}
	if len(found) == 0 {
		return 0, nil
	}
	time.Sleep(stallGrace)
	if stallHook != nil {
		stallHook()
	}
	n := 0
	var all []error
	for _, s := range found {
		if c, gen, ok := p.stalled(s.e, s.sh); !ok || c != s.c || gen != s.gen || !s.sh.Count.CompareAndSwap(c, count(0, 0)) {
			continue
		}
		if err := p.returnSlab(s.e.Off, s.sh, s.gen); err != nil {
			all = append(all, err)
			continue
		}
		n++
	}
	return n, errors.Join(all...)
}

// stallHook, when a test sets it, runs in returnStalled between the
// grace period and the second look.
var stallHook func()

// stalled reports whether a slab looks stalled (see returnStalled):
// retired, not being returned, every bit of its bitmap set, and, if its
// count still has the active mark (a retirement not finished), no live
// owner to finish it; and returns its count, read before the bitmap, and
// its generation.
func (p *Pool) stalled(e alloc.Extent, sh *slabHeader) (c uint64, gen uint32, ok bool) {
	if !p.slabOK(e, sh) || sh.Returner.Load() != 0 || sh.Retired.Load() == 0 {
		return 0, 0, false
	}
	gen = genOf(sh.Ident.Load())
	c = sh.Count.Load()
	if uint32(c) >= active {
		if o := sys.Identity(sh.Owner.Load()); o != 0 && sys.Alive(o) {
			return 0, 0, false
		}
	}
	base := uint64(e.Off)/8 + bitmapWord
	for w := range uint64(sh.Words) {
		if p.words[base+w].Load() != ^uint64(0) {
			return 0, 0, false
		}
	}
	return c, gen, true
}

func (p *Pool) reclaim(isDead func(sys.Identity) bool, keep func(mem.Off) bool) (Reclaimed, error) {
	exts, err := p.heap.Allocated()
	if err != nil {
		return Reclaimed{}, fmt.Errorf("slab: reclaim: %w", err)
	}
	var rc Reclaimed
	var all []error
	for _, e := range exts {
		switch e.Kind {
		case alloc.KindSlab:
			if err := p.reclaimSlab(e, isDead, keep, &rc); err != nil {
				all = append(all, fmt.Errorf("slab: reclaim slab %#x: %w", uint64(e.Off), err))
			}
		case alloc.KindLarge:
			if !isDead(e.Owner) {
				continue
			}
			off, loc, err := p.largeOf(e)
			if err != nil {
				// Its allocator died before writing the header: the
				// record was never handed out.
				err := p.heap.FreeIf(e.Off, func(x alloc.Extent) error {
					if x.Kind != alloc.KindLarge || x.Owner != e.Owner {
						return fmt.Errorf("changed under us: %w", ErrBusy)
					}
					return nil
				})
				if err != nil {
					all = append(all, err)
				} else {
					rc.Returned++
				}
				continue
			}
			if keep != nil && keep(off) {
				all = append(all, p.disown(e))
				continue
			}
			if err := p.freeLarge(off, loc, e.Owner); err != nil && !errors.Is(err, ErrDoubleFree) {
				all = append(all, err)
				continue
			}
			rc.Large++
		}
	}
	return rc, errors.Join(all...)
}

// slabOK reports whether the slab header of extent e was initialised
// (by the geometry the record arithmetic relies on).
func (p *Pool) slabOK(e alloc.Extent, sh *slabHeader) bool {
	return uint32(sh.Ident.Load()) == slabMagic && p.slabShaped(e, sh)
}

// returnCut reports whether extent e is a slab whose return by r was cut
// short inside the heap's critical section: finishReturn's check had
// cleared the magic (keeping the generation) and r died before the heap
// freed the extent. A slab being made cannot look so: its header is
// zeroed under the heap lock when it is taken (takeSlab), and its
// identity word is stored last.
func (p *Pool) returnCut(e alloc.Extent, sh *slabHeader, r sys.Identity) bool {
	id := sh.Ident.Load()
	return r != 0 && uint32(id) == 0 && genOf(id) != 0 && sys.Identity(sh.Returner.Load()) == r && p.slabShaped(e, sh)
}

// slabShaped is slabOK without the magic: the header's other fields are
// those of a slab of this pool at e.
func (p *Pool) slabShaped(e alloc.Extent, sh *slabHeader) bool {
	if sh.Self != uint64(e.Off) || sh.Salt != p.salt || sh.Version != Version {
		return false
	}
	if uint64(sh.Pages)*p.ps != e.Size {
		return false
	}
	align := uint64(sh.Align)
	if align < granule || align > p.ps || align&(align-1) != 0 {
		return false
	}
	return slabGeometry(e.Size, align) == geometry{recBase: sh.RecBase, limit: sh.Limit, words: sh.Words}
}

func (p *Pool) reclaimSlab(e alloc.Extent, isDead func(sys.Identity) bool, keep func(mem.Off) bool, rc *Reclaimed) error {
	sh := &p.slabs[e.Off/slabHeaderSize]
	if !p.slabOK(e, sh) {
		// Either its returner died between clearing the magic and
		// freeing the extent (returnCut: left alone, the extent would
		// stay allocated for as long as its allocator lives), or it was
		// taken from the heap by a process that died before it wrote the
		// header. Either way the free is decided again under the heap
		// lock, where a slab that exists always has its magic.
		var still func(x alloc.Extent) bool
		if r := sys.Identity(sh.Returner.Load()); p.returnCut(e, sh, r) && isDead(r) {
			still = func(x alloc.Extent) bool { return p.returnCut(x, sh, r) }
		} else if isDead(e.Owner) {
			still = func(x alloc.Extent) bool { return !p.slabOK(x, sh) }
		} else {
			return nil // being made by a live process
		}
		err := p.heap.FreeIf(e.Off, func(x alloc.Extent) error {
			if x.Kind != alloc.KindSlab || x.Owner != e.Owner || !still(x) {
				return fmt.Errorf("changed under us: %w", ErrBusy)
			}
			return nil
		})
		if err != nil {
			return err
		}
		rc.Returned++
		return nil
	}
	if r := sys.Identity(sh.Returner.Load()); r != 0 {
		// Being returned; take over if the returner died.
		if isDead(r) && sh.Returner.CompareAndSwap(uint64(r), uint64(p.self)) {
			if err := p.finishReturn(e.Off, sh, genOf(sh.Ident.Load())); err != nil {
				return err
			}
			rc.Returned++
		}
		return nil
	}
	deadAlloc := isDead(e.Owner)
	if uint32(sh.Count.Load()) >= active {
		o := sys.Identity(sh.Owner.Load())
		if !isDead(o) || !sh.Owner.CompareAndSwap(uint64(o), uint64(p.self)) {
			return nil // a live owner (or reclaimer) drives it
		}
		end, err := p.retirePoint(e.Off, sh)
		if err != nil {
			return err
		}
		if deadAlloc {
			n, err := p.freeRecords(e.Off, sh, end, keep)
			rc.Records += n
			if err != nil {
				return err
			}
		}
		rc.Slabs++
		g := geometry{recBase: sh.RecBase, limit: sh.Limit, words: sh.Words} // checked by slabOK
		if err := p.retireSlab(e.Off, sh, g, end-sh.RecBase, true); err != nil {
			return err
		}
		if deadAlloc {
			return p.disown(e)
		}
		return nil
	}
	if !deadAlloc {
		return nil
	}
	r := sh.Retired.Load()
	if r == 0 || r-1 < uint64(sh.RecBase) || r-1 > uint64(sh.Limit) {
		return errs.Corrupt("slab.Retired", uint64(e.Off)+152, "retired slab with retirement point %d", r)
	}
	n, err := p.freeRecords(e.Off, sh, uint32(r-1), keep)
	rc.Records += n
	if err != nil {
		return err
	}
	return p.disown(e)
}

// disown clears the heap-level owner of a dead process's slab or large
// record once its records are freed or kept: the kept records now belong
// to whoever keeps them, and a later Reclaim or Recover leaves them
// alone. An extent already returned to the heap is no matter.
func (p *Pool) disown(e alloc.Extent) error {
	err := p.heap.SetOwner(e.Off, e.Owner, 0)
	if err == nil || errors.Is(err, ErrNotAllocated) || errors.Is(err, ErrDoubleFree) || errors.Is(err, ErrBusy) {
		return nil
	}
	return err
}

// retirePoint is where allocation stopped in a slab whose owner died: the
// point it recorded if it got as far as retiring, or else the end of the
// run of valid record headers (which the walk records).
func (p *Pool) retirePoint(slab mem.Off, sh *slabHeader) (uint32, error) {
	if r := sh.Retired.Load(); r != 0 {
		if r-1 < uint64(sh.RecBase) || r-1 > uint64(sh.Limit) {
			return 0, errs.Corrupt("slab.Retired", uint64(slab)+152, "retirement point %d outside [%d,%d]", r-1, sh.RecBase, sh.Limit)
		}
		return uint32(r - 1), nil
	}
	end, err := p.walk(slab, sh, 0, nil)
	if err != nil {
		return 0, err
	}
	sh.Retired.Store(uint64(end) + 1)
	return end, nil
}

// freeRecords frees the live records of a slab below end that keep does
// not keep.
func (p *Pool) freeRecords(slab mem.Off, sh *slabHeader, end uint32, keep func(mem.Off) bool) (int, error) {
	type slot struct{ bit, n uint64 }
	var todo []slot
	_, err := p.walk(slab, sh, end, func(pos uint32, hd recHeader) {
		off := slab + mem.Off(pos+1)*granule
		loc := located{slab: slab, sh: sh, hd: hd, bit: pos - sh.RecBase}
		if p.live(loc) && (keep == nil || !keep(off)) {
			todo = append(todo, slot{uint64(loc.bit), uint64(hd.Len)})
		}
	})
	if err != nil {
		return 0, err
	}
	gen := genOf(sh.Ident.Load())
	n := 0
	var all []error
	for _, s := range todo {
		err := p.freeBits(slab, sh, gen, s.bit, s.n, true)
		if errors.Is(err, ErrDoubleFree) {
			continue // its holder freed it meanwhile
		}
		if err != nil {
			all = append(all, err)
			continue
		}
		n++
	}
	return n, errors.Join(all...)
}

// walk visits the record slots of a slab from the first, in order, up to
// end (a granule from the slab start), or, with end 0, up to the first
// slot without a valid header; it returns where it stopped. Below an end
// it was given, every slot must have a valid header.
func (p *Pool) walk(slab mem.Off, sh *slabHeader, end uint32, fn func(pos uint32, hd recHeader)) (uint32, error) {
	key := p.salt ^ uint32(sh.Ident.Load()>>32)
	base := uint64(slab) / granule
	align := uint64(sh.Align)
	limit := sh.Limit
	if end != 0 {
		limit = min(limit, end)
	}
	pos := sh.RecBase
	for pos < limit {
		hd := p.hdrs[base+uint64(pos)]
		ok := hd.Pos == pos && hd.Len != 0 && uint64(pos)+uint64(hd.Len) <= uint64(limit) &&
			uint64(hd.Len) == slotGranules(uint64(hd.Size), align) && hd.Check == recCheck(pos, hd.Len, hd.Size, key)
		if !ok {
			if end == 0 {
				return pos, nil
			}
			return pos, errs.Corrupt("slab.record", (base+uint64(pos))*granule, "slot %d of the slab at %#x has no valid header (allocation went up to %d)", pos, uint64(slab), end)
		}
		if fn != nil {
			fn(pos, hd)
		}
		pos += hd.Len
	}
	return pos, nil
}

// largeOf finds the record in a large-record extent.
func (p *Pool) largeOf(e alloc.Extent) (mem.Off, located, error) {
	for a := uint64(HeaderSize); a <= p.ps && a < e.Size; a *= 2 {
		off := e.Off + mem.Off(a)
		var loc located
		err := p.locate(off, &loc)
		if err == nil && loc.large && loc.extent == e.Off {
			return off, loc, nil
		}
	}
	return 0, located{}, errs.Corrupt("slab.large", uint64(e.Off), "extent of a large record without a valid record header")
}
