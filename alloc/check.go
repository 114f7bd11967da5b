package alloc

import (
	"context"
	"errors"
	"fmt"

	"github.com/heapipc/ipc/internal/mem"
)

// maxViolations bounds how many violations Check lists one by one; the
// rest are counted.
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

func (v *violations) err() error {
	if v.extra > 0 {
		v.list = append(v.list, fmt.Errorf("heap: %d more violations: %w", v.extra, ErrCorrupt))
	}
	return errors.Join(v.list...)
}

// Check walks the page map and the index under the heap lock and reports
// every violation it finds (errors.Join of errors wrapping ErrCorrupt):
// malformed or lost boundary tags, overlapping extents, free neighbours
// not coalesced, index entries out of step with the page map (missing,
// stale, out of heap order), a pending redo log, and counters that do not
// add up. It changes nothing. O(pages).
func (h *Heap) Check() error {
	if err := h.acquire(context.Background()); err != nil {
		return err
	}
	defer h.release()
	return h.checkLocked()
}

func (h *Heap) checkLocked() error {
	var v violations
	if err := validateRoot(h.r, h.rt); err != nil {
		v.add(err)
		return v.err()
	}
	rt := h.rt
	if rt.LogState.Load() != 0 {
		v.add(h.corrupt("root.LogState", 296, "redo log of %d entries pending outside an update", rt.LogN))
	}
	if rt.NeedRepair != 0 {
		v.add(h.corrupt("root.NeedRepair", 304, "repair pending"))
	}
	hl := rt.HeapLen
	if hl > uint64(len(h.index)) {
		v.add(h.corrupt("root.HeapLen", 272, "index length %d beyond capacity %d", hl, len(h.index)))
		hl = uint64(len(h.index))
	}
	seen := make([]bool, hl)
	var freeExt, allocExt, freePages, allocPages uint64
	prevFree := false
	for p := uint64(0); p < h.n; {
		t := h.pages[p].Tag
		if !tagValid(t) || !isHead(t) {
			v.add(h.corrupt("pagemap.tag", h.mapAt(p), "page %d: expected the start of an extent, tag %#x (lost extent)", p, t))
			// Resynchronise at the next page that starts an extent.
			q := p + 1
			for q < h.n && !(tagValid(h.pages[q].Tag) && isHead(h.pages[q].Tag)) {
				q++
			}
			p = q
			prevFree = false
			continue
		}
		l := tagLen(t)
		if l > h.n-p {
			v.add(h.corrupt("pagemap.tag", h.mapAt(p), "extent [%d,+%d) runs past the %d pages", p, l, h.n))
			break
		}
		state := tagState(t)
		if want := headTag(state, l, tagKind(t)); t != want {
			// A stray tail flag, say: Alloc and Free want the exact tag.
			v.add(h.corrupt("pagemap.tag", h.mapAt(p), "extent [%d,+%d) has head tag %#x, want %#x", p, l, t, want))
		}
		if tt := h.pages[p+l-1].Tag; tt != tailTag(state, l, tagKind(t)) {
			v.add(h.corrupt("pagemap.tag", h.mapAt(p+l-1), "extent [%d,+%d) has tail tag %#x, want %#x", p, l, tt, tailTag(state, l, tagKind(t))))
		}
		for i := p + 1; i < p+l; i++ {
			if i < p+l-1 && h.pages[i].Tag != 0 {
				v.add(h.corrupt("pagemap.tag", h.mapAt(i), "page %d inside extent [%d,+%d) has tag %#x (overlapping extents)", i, p, l, h.pages[i].Tag))
			}
			if h.pages[i].Aux != 0 {
				v.add(h.corrupt("pagemap.aux", h.mapAt(i)+8, "page %d inside extent [%d,+%d) has aux %#x", i, p, l, h.pages[i].Aux))
			}
		}
		if state == tagFree {
			freeExt++
			freePages += l
			if prevFree {
				v.add(h.corrupt("pagemap.tag", h.mapAt(p), "free extent [%d,+%d) follows a free extent (not coalesced)", p, l))
			}
			pos := h.pages[p].Aux
			switch {
			case pos == 0 || pos > hl:
				v.add(h.corrupt("pagemap.aux", h.mapAt(p)+8, "free extent [%d,+%d) has index position %d of %d (missing from the index)", p, l, pos, hl))
			case h.index[pos-1] != makeKey(l, p):
				v.add(h.corrupt("index", h.indexAt(pos-1), "entry %d is %#x, free extent [%d,+%d) expects %#x", pos-1, h.index[pos-1], p, l, makeKey(l, p)))
			case seen[pos-1]:
				v.add(h.corrupt("pagemap.aux", h.mapAt(p)+8, "index position %d claimed twice", pos-1))
			default:
				seen[pos-1] = true
			}
		} else {
			allocExt++
			allocPages += l
		}
		prevFree = state == tagFree
		p += l
	}
	for i := uint64(0); i < hl; i++ {
		k := h.index[i]
		if !seen[i] {
			v.add(h.corrupt("index", h.indexAt(i), "entry %d (%#x: [%d,+%d)) names no free extent", i, k, keyStart(k), keyLen(k)))
		}
		if i > 0 && h.index[(i-1)/2] < k {
			v.add(h.corrupt("index", h.indexAt(i), "entry %d is larger than its parent (heap order broken)", i))
		}
	}
	for i := hl; i < uint64(len(h.index)); i++ {
		if h.index[i] != 0 {
			v.add(h.corrupt("index", h.indexAt(i), "entry %d beyond the index length %d is %#x", i, hl, h.index[i]))
			break
		}
	}
	if rt.HeapLen != freeExt {
		v.add(h.corrupt("root.HeapLen", 272, "index holds %d entries, the page map %d free extents", rt.HeapLen, freeExt))
	}
	if rt.FreePages != freePages {
		v.add(h.corrupt("root.FreePages", 256, "counter %d, page map %d", rt.FreePages, freePages))
	}
	if rt.AllocPages != allocPages {
		v.add(h.corrupt("root.AllocPages", 264, "counter %d, page map %d", rt.AllocPages, allocPages))
	}
	if rt.AllocExtents != allocExt {
		v.add(h.corrupt("root.AllocExtents", 280, "counter %d, page map %d", rt.AllocExtents, allocExt))
	}
	if rt.FreePages+rt.AllocPages != h.n {
		v.add(h.corrupt("root.FreePages", 256, "free %d + allocated %d pages != %d", rt.FreePages, rt.AllocPages, h.n))
	}
	return v.err()
}

// Repair rebuilds the index and the counters from the page map under the
// heap lock, as a takeover does. It fails with ErrCorrupt when the page map
// itself is broken.
func (h *Heap) Repair() error {
	if err := h.acquire(context.Background()); err != nil {
		return err
	}
	defer h.release()
	return h.repair()
}

// repair finishes a journaled update left by a dead holder, coalesces
// free neighbours, and rebuilds the derived state (index, aux positions,
// counters) from the page map. It is idempotent: a repairer that dies is
// repaired after.
func (h *Heap) repair() error {
	rt := h.rt
	if rt.LogState.Load() != 0 {
		n := rt.LogN
		if n > logCap {
			return h.corrupt("root.LogN", 300, "redo log of %d entries (at most %d)", n, logCap)
		}
		for i := uint32(0); i < n; i++ {
			if e := rt.Log[i]; e.Idx >= 2*h.n {
				return h.corrupt("root.Log", mem.Off(rootOff+312+16*uint64(i)), "entry %d writes word %d of %d", i, e.Idx, 2*h.n)
			}
		}
		for i := uint32(0); i < n; i++ {
			h.words[rt.Log[i].Idx] = rt.Log[i].Val
		}
		rt.LogState.Store(0)
	}
	// Walk the extents, merging free neighbours (a journaled write each,
	// so that a repairer that dies leaves a page map as good as before).
	var prevStart, prevLen uint64
	prevFree := false
	for p := uint64(0); p < h.n; {
		t := h.pages[p].Tag
		if !tagValid(t) || !isHead(t) || tagLen(t) > h.n-p {
			return h.corrupt("pagemap.tag", h.mapAt(p), "page %d: expected the start of an extent, tag %#x", p, t)
		}
		l := tagLen(t)
		state := tagState(t)
		if tt := h.pages[p+l-1].Tag; tt != tailTag(state, l, tagKind(t)) {
			return h.corrupt("pagemap.tag", h.mapAt(p+l-1), "extent [%d,+%d) has tail tag %#x", p, l, tt)
		}
		if want := headTag(state, l, tagKind(t)); t != want {
			// A head with a stray flag (a tail flag on an extent of
			// several pages) that its tail confirms: written again as
			// Alloc and Free want it.
			var lg logBuf
			lg.add(p, 0, want)
			h.commit(&lg)
		}
		if state == tagFree && prevFree {
			m := prevLen + l
			var lg logBuf
			lg.add(p-1, 0, 0)
			lg.add(p, 0, 0)
			lg.add(prevStart, 0, headTag(tagFree, m, 0))
			lg.add(prevStart+m-1, 0, tailTag(tagFree, m, 0))
			h.commit(&lg)
			prevLen = m
		} else {
			prevStart, prevLen, prevFree = p, l, state == tagFree
		}
		p += l
	}
	// Rebuild: clear the aux words that are not owners, collect the free
	// extents, heapify.
	rt.NeedRepair = 0
	var freeExt, freePages, allocExt, allocPages uint64
	for p := uint64(0); p < h.n; {
		t := h.pages[p].Tag
		l := tagLen(t)
		if tagState(t) == tagFree {
			if freeExt >= uint64(len(h.index)) {
				return h.corrupt("pagemap", h.mapAt(p), "more free extents than the index holds")
			}
			h.index[freeExt] = makeKey(l, p)
			freeExt++
			freePages += l
			h.pages[p].Aux = 0
		} else {
			allocExt++
			allocPages += l
		}
		for i := p + 1; i < p+l; i++ {
			h.pages[i].Aux = 0
		}
		p += l
	}
	clear(h.index[freeExt:])
	rt.HeapLen = freeExt
	h.heapify()
	rt.FreePages = freePages
	rt.AllocPages = allocPages
	rt.AllocExtents = allocExt
	rt.Repairs++
	return nil
}
