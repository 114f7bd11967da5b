package alloc

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"sync/atomic"
	"time"

	"github.com/heapipc/ipc/backend"
	"github.com/heapipc/ipc/internal/errs"
	"github.com/heapipc/ipc/internal/mem"
	"github.com/heapipc/ipc/internal/sys"
)

// Sentinel errors returned by this package (the same values as package
// ipc's).
var (
	ErrNoSpace      = errs.ErrNoSpace
	ErrInvalidSize  = errs.ErrInvalidSize
	ErrCorrupt      = errs.ErrCorrupt
	ErrVersion      = errs.ErrVersion
	ErrDoubleFree   = errs.ErrDoubleFree
	ErrNotAllocated = errs.ErrNotAllocated
	ErrClosed       = errs.ErrClosed
	ErrBusy         = errs.ErrBusy
	ErrNotExist     = errs.ErrNotExist
)

// Kind classifies an allocated extent for the layers above; it is kept in
// the extent's boundary tag and reported by Allocated. The heap gives
// kinds no meaning except that Recover frees only KindPlain extents.
type Kind uint8

// Extent kinds.
const (
	KindPlain Kind = 0 // allocated with Alloc, or AllocFor with this kind
	KindSlab  Kind = 1 // a slab of package slab
	KindLarge Kind = 2 // a large record of package slab
	// KindDoorbell is a Select's doorbell (package ipc), owned by the
	// process of the Select; the buffer's Recover frees those of dead
	// processes once no channel names them.
	KindDoorbell Kind = 3
	// KindExtent is an extent of a speculo area (package channel), owned
	// by the writer that allocated it: the buffer's Recover frees those
	// of dead writers that no area had claimed yet (RecoverKind).
	KindExtent Kind = 4
	// KindControl is a channel's control block (package channel), with
	// no owner once the channel is published (its creator owns it
	// before, its remover while it frees it): the registry frees it when
	// it removes the channel, and frees nothing else through an entry (a
	// damaged entry cannot make it free a slab, an extent or the
	// registry's own blocks); Recover frees those that a dead owner left
	// unnamed.
	KindControl Kind = 5
)

func (k Kind) String() string {
	switch k {
	case KindPlain:
		return "plain"
	case KindSlab:
		return "slab"
	case KindLarge:
		return "large"
	case KindDoorbell:
		return "doorbell"
	case KindExtent:
		return "extent"
	case KindControl:
		return "control"
	}
	return fmt.Sprintf("kind(%d)", uint8(k))
}

// SemSuffix is appended to the region's name to name the heap lock's
// semaphore.
const SemSuffix = ".heap"

// Options tune a Heap handle. The zero value means defaults.
type Options struct {
	// CheckInterval is how long a waiter for the heap lock sleeps before
	// it checks whether the holder is alive (default
	// DefaultCheckInterval).
	CheckInterval time.Duration
}

// Heap is one process's handle on the shared heap of a region. Its
// methods are safe for concurrent use by goroutines; processes exclude
// each other through the heap lock.
type Heap struct {
	r      *backend.Region
	b      []byte // the region, header included
	rt     *root
	pages  []pageEnt
	words  []uint64 // pages viewed as words, for the redo log
	index  []uint64
	n      uint64 // allocatable pages
	ps     uint64
	first  mem.Off
	sem    backend.Semaphore
	lock   *Lock
	closed atomic.Bool
}

// testHookMidLog, when set (by tests only), runs while an operation's log
// is committed and only its first applied entries are written: a test
// child blocks in it to be killed half-way through a page-map update.
var testHookMidLog func()

// Init lays out an empty heap over the data region of r and creates its
// lock semaphore. It is called by the creator of the region, from
// OpenRegion's init callback, before anyone else can attach. A semaphore
// left under the name by a crashed earlier run is removed and made anew.
func Init(r *backend.Region, opts Options) (*Heap, error) {
	ps := uint64(r.PageSize())
	data := uint64(len(r.Data()))
	if len(r.Ext()) < RootSize {
		return nil, fmt.Errorf("alloc: init %q: extension area of %d bytes, need %d: %w", r.Name(), len(r.Ext()), RootSize, ErrInvalidSize)
	}
	d := data / ps
	m := (metaBytes(d) + ps - 1) / ps
	if d <= m {
		return nil, fmt.Errorf("alloc: init %q: %d data pages leave no room after %d pages of metadata: %w", r.Name(), d, m, ErrInvalidSize)
	}
	n := d - m
	if n > maxPages {
		return nil, fmt.Errorf("alloc: init %q: %d pages (at most %d; use larger pages): %w", r.Name(), n, uint64(maxPages), ErrInvalidSize)
	}
	b := r.Bytes()
	rt, err := mem.At[root](b, mem.Off(backend.ExtOffset))
	if err != nil {
		return nil, fmt.Errorf("alloc: init %q: %w", r.Name(), err)
	}
	base := uint64(r.DataOffset())
	rt.Version = Version
	rt.PageSize = uint32(ps)
	rt.Pages = n
	rt.MapOff = base
	rt.HeapOff = base + n*16
	rt.HeapCap = n/2 + 1
	rt.FirstOff = base + m*ps
	rt.MetaEnd = rt.FirstOff
	var salt [8]byte
	rand.Read(salt[:])
	rt.Salt = binary.LittleEndian.Uint64(salt[:]) | 1
	rt.Creator = uint64(sys.Self())
	rt.Magic = rootMagic
	rt.Checksum = rootChecksum(b)

	h, err := open(r, rt)
	if err != nil {
		return nil, fmt.Errorf("alloc: init %q: %w", r.Name(), err)
	}
	// One free extent of every page; the region is zeroed, so the page
	// map and index hold nothing else.
	clear(h.pages)
	clear(h.index)
	h.pages[0].Tag = headTag(tagFree, n, 0)
	h.pages[n-1].Tag = tailTag(tagFree, n, 0)
	h.index[0] = makeKey(n, 0)
	h.pages[0].Aux = 1
	rt.HeapLen = 1
	rt.FreePages = n

	sems, err := r.Semaphores()
	if err != nil {
		return nil, err
	}
	name := r.Name() + SemSuffix
	sem, err := sems.Create(name, 0, backend.SemOptions{})
	if errors.Is(err, backend.ErrExist) {
		// Stale: left by a crashed run that used the same name (the
		// region is new, so nobody can be using it).
		if rerr := sems.Remove(name); rerr != nil && !errors.Is(rerr, backend.ErrNotExist) {
			return nil, fmt.Errorf("alloc: init %q: remove stale semaphore: %w", r.Name(), rerr)
		}
		sem, err = sems.Create(name, 0, backend.SemOptions{})
	}
	if err != nil {
		return nil, fmt.Errorf("alloc: init %q: %w", r.Name(), err)
	}
	h.sem = sem
	h.lock = NewLock(&rt.Lock, sem, opts.CheckInterval)
	h.lock.onTakeover = func() { h.rt.NeedRepair = 1 }
	return h, nil
}

// Attach validates the heap laid out in r by its creator and opens the
// heap lock. Bad metadata is an error wrapping ErrCorrupt (or ErrVersion),
// never a panic; Attach checks the root and geometry in O(1), Check walks
// the rest.
func Attach(r *backend.Region) (*Heap, error) {
	return AttachWith(r, Options{})
}

// AttachWith is Attach with options.
func AttachWith(r *backend.Region, opts Options) (*Heap, error) {
	fail := func(err error) (*Heap, error) { return nil, fmt.Errorf("alloc: attach %q: %w", r.Name(), err) }
	if len(r.Ext()) < RootSize {
		return fail(fmt.Errorf("extension area of %d bytes: %w", len(r.Ext()), ErrInvalidSize))
	}
	b := r.Bytes()
	rt, err := mem.At[root](b, mem.Off(backend.ExtOffset))
	if err != nil {
		return fail(err)
	}
	if err := validateRoot(r, rt); err != nil {
		return fail(err)
	}
	h, err := open(r, rt)
	if err != nil {
		return fail(err)
	}
	sems, err := r.Semaphores()
	if err != nil {
		return fail(err)
	}
	sem, err := sems.Open(r.Name()+SemSuffix, backend.SemOptions{})
	if err != nil {
		return fail(err)
	}
	h.sem = sem
	h.lock = NewLock(&rt.Lock, sem, opts.CheckInterval)
	h.lock.onTakeover = func() { h.rt.NeedRepair = 1 }
	return h, nil
}

const rootOff = backend.ExtOffset

func rootChecksum(b []byte) uint32 {
	return crc32.Checksum(b[rootOff:rootOff+124], crc32.MakeTable(crc32.Castagnoli))
}

func validateRoot(r *backend.Region, rt *root) error {
	b := r.Bytes()
	at := func(field string, o uintptr) (string, uint64) {
		return "heap.root." + field, uint64(rootOff) + uint64(o)
	}
	if rt.Magic != rootMagic {
		w, o := at("Magic", 0)
		return errs.Corrupt(w, o, "magic %#x, want %#x (no heap, or overwritten)", rt.Magic, rootMagic)
	}
	if rt.Version != Version {
		return fmt.Errorf("heap layout version %d, this library reads %d: %w", rt.Version, Version, ErrVersion)
	}
	if sum := rootChecksum(b); sum != rt.Checksum {
		w, o := at("Checksum", 124)
		return errs.Corrupt(w, o, "checksum %#x, fields sum to %#x", rt.Checksum, sum)
	}
	ps := uint64(r.PageSize())
	n := rt.Pages
	base := uint64(r.DataOffset())
	total := uint64(len(b))
	switch {
	case uint64(rt.PageSize) != ps:
		w, o := at("PageSize", 12)
		return errs.Corrupt(w, o, "page size %d, region has %d", rt.PageSize, ps)
	case n == 0 || n > maxPages:
		w, o := at("Pages", 16)
		return errs.Corrupt(w, o, "%d pages", n)
	case rt.MapOff != base:
		w, o := at("MapOff", 24)
		return errs.Corrupt(w, o, "page map at %#x, data starts at %#x", rt.MapOff, base)
	case rt.HeapOff != base+n*16 || rt.HeapCap != n/2+1:
		w, o := at("HeapOff", 32)
		return errs.Corrupt(w, o, "index at %#x cap %d, want %#x cap %d", rt.HeapOff, rt.HeapCap, base+n*16, n/2+1)
	case rt.FirstOff%ps != 0 || rt.FirstOff < rt.HeapOff+rt.HeapCap*8 || rt.FirstOff != rt.MetaEnd:
		w, o := at("FirstOff", 48)
		return errs.Corrupt(w, o, "first page at %#x, metadata ends at %#x", rt.FirstOff, rt.HeapOff+rt.HeapCap*8)
	case rt.FirstOff > total || n > (total-rt.FirstOff)/ps:
		w, o := at("Pages", 16)
		return errs.Corrupt(w, o, "%d pages from %#x overrun the region of %d bytes", n, rt.FirstOff, total)
	}
	return nil
}

// open builds the handle's views of a validated root.
func open(r *backend.Region, rt *root) (*Heap, error) {
	b := r.Bytes()
	pages, err := mem.Slice[pageEnt](b, mem.Off(rt.MapOff), int(rt.Pages))
	if err != nil {
		return nil, err
	}
	words, err := mem.Slice[uint64](b, mem.Off(rt.MapOff), int(rt.Pages)*2)
	if err != nil {
		return nil, err
	}
	index, err := mem.Slice[uint64](b, mem.Off(rt.HeapOff), int(rt.HeapCap))
	if err != nil {
		return nil, err
	}
	return &Heap{
		r: r, b: b, rt: rt, pages: pages, words: words, index: index,
		n: rt.Pages, ps: uint64(rt.PageSize), first: mem.Off(rt.FirstOff),
	}, nil
}

// Region is the region the heap lives in.
func (h *Heap) Region() *backend.Region { return h.r }

// PageSize is the allocation unit in bytes.
func (h *Heap) PageSize() int { return int(h.ps) }

// Range is the span of the allocatable pages: every extent lies in
// [start, end).
func (h *Heap) Range() (start, end mem.Off) { return h.first, h.first + mem.Off(h.n*h.ps) }

// Salt is a random word chosen when the heap was made, for the layers
// above to tell their own metadata from garbage or another buffer's.
func (h *Heap) Salt() uint64 { return h.rt.Salt }

// Lock is the heap's robust lock, for layers that guard their own
// metadata with it (they must not call Heap methods while holding it).
func (h *Heap) Lock() *Lock { return h.lock }

// Close releases this handle's semaphore. The heap stays for the other
// processes; Unlink removes the semaphore's name.
func (h *Heap) Close() error {
	if h.closed.Swap(true) {
		return nil
	}
	return h.sem.Close()
}

// Unlink removes the name of the heap lock's semaphore (when the buffer is
// destroyed). Handles already open keep working on posix and heap kinds.
func (h *Heap) Unlink() error {
	err := h.sem.Unlink()
	if errors.Is(err, backend.ErrNotExist) {
		return nil
	}
	return err
}

// RemoveSemaphore removes the heap lock's semaphore of the region called
// name, for cleaning up after a buffer whose heap cannot be attached.
func RemoveSemaphore(kind backend.Kind, name string) error {
	sems, err := backend.Semaphores(kind)
	if err != nil {
		return err
	}
	return sems.Remove(name + SemSuffix)
}

// acquire takes the heap lock and repairs the index if the previous holder
// died (or a repair is pending). On error the lock is not held.
func (h *Heap) acquire(ctx context.Context) error {
	if h.closed.Load() {
		return fmt.Errorf("alloc: heap %q: %w", h.r.Name(), ErrClosed)
	}
	took, err := h.lock.Lock(ctx)
	if err != nil {
		return fmt.Errorf("alloc: heap %q: %w", h.r.Name(), err)
	}
	if took {
		h.rt.NeedRepair = 1
	}
	if h.rt.NeedRepair != 0 || h.rt.LogState.Load() != 0 {
		if err := h.repair(); err != nil {
			h.lock.Unlock()
			return fmt.Errorf("alloc: heap %q: repair after a dead holder: %w", h.r.Name(), err)
		}
	}
	return nil
}

// release finishes a repair an update asked for (an index found
// inconsistent half-way) and releases the heap lock.
func (h *Heap) release() {
	if h.rt.NeedRepair != 0 {
		h.repair() // on failure NeedRepair stays set: the next holder retries
	}
	h.lock.Unlock()
}

// HoldLock acquires the heap lock and returns the function that releases
// it. It is for tests and tools (a crash test kills a process holding
// it); holding the lock stops every allocation of every process.
func (h *Heap) HoldLock(ctx context.Context) (release func(), err error) {
	if err := h.acquire(ctx); err != nil {
		return nil, err
	}
	var once atomic.Bool
	return func() {
		if !once.Swap(true) {
			h.release()
		}
	}, nil
}

// pagesFor is the number of pages n bytes need.
func (h *Heap) pagesFor(n int) (uint64, error) {
	if n <= 0 {
		return 0, fmt.Errorf("alloc: allocate %d bytes: %w", n, ErrInvalidSize)
	}
	p := (uint64(n) + h.ps - 1) / h.ps
	if p > h.n {
		return 0, fmt.Errorf("alloc: allocate %d bytes: larger than the heap (%d bytes): %w", n, h.n*h.ps, ErrNoSpace)
	}
	return p, nil
}

// Alloc allocates an extent of at least n bytes (whole pages) from the
// largest free run and returns its offset from the region base. The
// extent has no owner (Recover never frees it) and kind KindPlain. Its
// bytes are not zeroed. ErrNoSpace: no free run is large enough; the heap
// is unchanged.
func (h *Heap) Alloc(n int) (mem.Off, error) {
	return h.AllocFor(context.Background(), n, KindPlain, 0)
}

// AllocFor is Alloc with a context for the lock wait, a kind, and an owner
// recorded with the extent (0: none). Extents owned by a process that
// died can be freed by Reclaim (and, for KindPlain, by Recover).
func (h *Heap) AllocFor(ctx context.Context, n int, kind Kind, owner sys.Identity) (mem.Off, error) {
	return h.AllocZeroed(ctx, n, kind, owner, 0)
}

// AllocZeroed is AllocFor that also zeroes the extent's first zero bytes
// (at most n) inside the heap's critical section, before the allocation
// is committed: so that a mark its owner stores there later cannot be
// mistaken, by whoever inspects the extent under the heap lock (a
// recovery), for a stale one left in the memory, even if the owner dies
// right after the commit (the pages were free while they were zeroed).
func (h *Heap) AllocZeroed(ctx context.Context, n int, kind Kind, owner sys.Identity, zero int) (mem.Off, error) {
	np, err := h.pagesFor(n)
	if err != nil {
		return 0, err
	}
	if err := h.acquire(ctx); err != nil {
		return 0, err
	}
	defer h.release()
	off, err := h.allocLocked(np, kind, owner, min(max(zero, 0), n))
	if err != nil {
		return 0, fmt.Errorf("alloc: allocate %d bytes: %w", n, err)
	}
	return off, nil
}

// testAllocCommitted, if set (by tests), runs right after an allocation
// is committed: where an owner killed then leaves it.
var testAllocCommitted func(off mem.Off)

// allocLocked allocates np pages of kind for owner, their first zero
// bytes zeroed before the page map says so.
func (h *Heap) allocLocked(np uint64, kind Kind, owner sys.Identity, zero int) (mem.Off, error) {
	for attempt := 0; ; attempt++ {
		s, l, err := h.top()
		if err == nil || attempt > 0 || errors.Is(err, ErrNoSpace) {
			if err != nil {
				return 0, err
			}
			if l < np {
				if attempt == 0 && h.aboveTop(l) {
					// An entry larger than the top: the index is out of
					// heap order (a scribble), and a run that fits may
					// be hidden below. Rebuild it and try once more.
					if rerr := h.repair(); rerr != nil {
						return 0, rerr
					}
					continue
				}
				return 0, fmt.Errorf("largest free run is %d pages, %d asked: %w", l, np, ErrNoSpace)
			}
			off := h.offOf(s)
			clear(h.b[off : off+mem.Off(zero)])
			h.doAlloc(s, l, np, kind, owner)
			if testAllocCommitted != nil {
				testAllocCommitted(off)
			}
			return off, nil
		}
		// The index disagrees with the page map: it is derived, so
		// rebuild it and try once more.
		if rerr := h.repair(); rerr != nil {
			return 0, errors.Join(err, rerr)
		}
	}
}

// top returns the largest free extent after checking that the index entry
// agrees with the page map. No free extent: ErrNoSpace.
func (h *Heap) top() (start, n uint64, err error) {
	hl := h.rt.HeapLen
	if hl == 0 {
		return 0, 0, fmt.Errorf("no free pages: %w", ErrNoSpace)
	}
	if hl > uint64(len(h.index)) {
		return 0, 0, h.corrupt("HeapLen", 272, "index length %d beyond capacity %d", hl, len(h.index))
	}
	k := h.index[0]
	s, l := keyStart(k), keyLen(k)
	if err := h.checkFree(s, l, 0); err != nil {
		return 0, 0, err
	}
	return s, l, nil
}

// aboveTop reports whether an index entry is longer than l, the top
// entry's length: the heap order is broken. It reads the whole index, and
// runs only when an allocation is about to fail for want of a long run.
func (h *Heap) aboveTop(l uint64) bool {
	for _, k := range h.index[1:h.rt.HeapLen] {
		if keyLen(k) > l {
			return true
		}
	}
	return false
}

// checkFree verifies that [s, s+l) is a free extent in the page map
// indexed at position pos.
func (h *Heap) checkFree(s, l, pos uint64) error {
	if s >= h.n || l == 0 || l > h.n-s {
		return h.corrupt("index", h.indexAt(pos), "entry %d: extent [%d,+%d) outside %d pages", pos, s, l, h.n)
	}
	if t := h.pages[s].Tag; t != headTag(tagFree, l, 0) {
		return h.corrupt("pagemap.tag", h.mapAt(s), "index entry %d says free extent [%d,+%d), tag is %#x", pos, s, l, t)
	}
	if t := h.pages[s+l-1].Tag; t != tailTag(tagFree, l, 0) {
		return h.corrupt("pagemap.tag", h.mapAt(s+l-1), "free extent [%d,+%d) has tail tag %#x", s, l, t)
	}
	if a := h.pages[s].Aux; a != pos+1 {
		return h.corrupt("pagemap.aux", h.mapAt(s)+8, "free extent [%d,+%d) is at index position %d, aux says %d", s, l, pos, a)
	}
	return nil
}

func (h *Heap) doAlloc(s, l, np uint64, kind Kind, owner sys.Identity) {
	var lg logBuf
	lg.add(s, 0, headTag(tagAlloc, np, kind))
	lg.add(s, 1, uint64(owner))
	if np > 1 {
		lg.add(s+np-1, 0, tailTag(tagAlloc, np, kind))
	}
	rest := l - np
	if rest > 0 {
		lg.add(s+np, 0, headTag(tagFree, rest, 0))
		if rest > 1 {
			lg.add(s+l-1, 0, tailTag(tagFree, rest, 0))
		}
	}
	h.commit(&lg)
	if rest == 0 {
		h.removeAt(0)
	} else {
		h.setKey(0, makeKey(rest, s+np))
		h.siftDown(0)
	}
	h.rt.FreePages -= np
	h.rt.AllocPages += np
	h.rt.AllocExtents++
}

// Free returns the extent that starts at off to the heap, coalescing it
// with free neighbours. An offset that is not the start of an allocated
// extent returns ErrNotAllocated (ErrDoubleFree if it starts a free
// extent) and changes nothing.
func (h *Heap) Free(off mem.Off) error {
	return h.FreeIf(off, nil)
}

// FreeIf is Free that first lets check inspect the extent, under the heap
// lock: an error from check is returned and nothing is freed. check must
// not call the Heap.
func (h *Heap) FreeIf(off mem.Off, check func(Extent) error) error {
	p, err := h.pageOf(off)
	if err != nil {
		return fmt.Errorf("alloc: free %#x: %w", uint64(off), err)
	}
	if err := h.acquire(context.Background()); err != nil {
		return err
	}
	defer h.release()
	if err := h.freeLocked(p, check); err != nil {
		return fmt.Errorf("alloc: free %#x: %w", uint64(off), err)
	}
	return nil
}

// pageOf maps an offset to the page it starts, if it is a page boundary in
// the allocatable range.
func (h *Heap) pageOf(off mem.Off) (uint64, error) {
	if off < h.first || uint64(off-h.first)%h.ps != 0 || uint64(off-h.first)/h.ps >= h.n {
		return 0, fmt.Errorf("not a page of the heap (pages %#x..%#x): %w", uint64(h.first), uint64(h.first)+h.n*h.ps, ErrNotAllocated)
	}
	return uint64(off-h.first) / h.ps, nil
}

func (h *Heap) offOf(p uint64) mem.Off { return h.first + mem.Off(p*h.ps) }

// allocated checks that page p starts an allocated extent and returns its
// length.
func (h *Heap) allocated(p uint64) (uint64, error) {
	t := h.pages[p].Tag
	if t == 0 || !tagValid(t) || !isHead(t) {
		return 0, fmt.Errorf("page %d does not start an extent: %w", p, ErrNotAllocated)
	}
	if tagState(t) == tagFree {
		return 0, fmt.Errorf("page %d starts a free extent: %w", p, ErrDoubleFree)
	}
	l := tagLen(t)
	if l > h.n-p {
		return 0, h.corrupt("pagemap.tag", h.mapAt(p), "allocated extent [%d,+%d) beyond %d pages", p, l, h.n)
	}
	if tt := h.pages[p+l-1].Tag; tt != tailTag(tagAlloc, l, tagKind(t)) {
		return 0, h.corrupt("pagemap.tag", h.mapAt(p+l-1), "allocated extent [%d,+%d) has tail tag %#x", p, l, tt)
	}
	return l, nil
}

func (h *Heap) extentAt(p, l uint64) Extent {
	t := h.pages[p].Tag
	return Extent{Off: h.offOf(p), Size: l * h.ps, Kind: tagKind(t), Owner: sys.Identity(h.pages[p].Aux)}
}

func (h *Heap) freeLocked(p uint64, check func(Extent) error) error {
	for attempt := 0; ; attempt++ {
		err := h.tryFree(p, check)
		if err == nil || attempt > 0 || !isIndexError(err) {
			return err
		}
		if rerr := h.repair(); rerr != nil {
			return errors.Join(err, rerr)
		}
	}
}

// indexError marks an inconsistency of the derived index (fixed by a
// rebuild), as opposed to one of the page map.
type indexError struct{ err error }

func (e *indexError) Error() string { return e.err.Error() }
func (e *indexError) Unwrap() error { return e.err }

func isIndexError(err error) bool {
	var ie *indexError
	return errors.As(err, &ie)
}

func (h *Heap) tryFree(p uint64, check func(Extent) error) error {
	l, err := h.allocated(p)
	if err != nil {
		return err
	}
	a, b := p, p+l
	var leftLen, rightLen uint64
	if p > 0 {
		lt := h.pages[p-1].Tag
		if !tagValid(lt) || !isTail(lt) {
			return h.corrupt("pagemap.tag", h.mapAt(p-1), "page before extent %d is not the end of an extent (tag %#x)", p, lt)
		}
		if tagState(lt) == tagFree {
			leftLen = tagLen(lt)
			if leftLen > p {
				return h.corrupt("pagemap.tag", h.mapAt(p-1), "free extent of %d pages ending at page %d", leftLen, p-1)
			}
			a = p - leftLen
			if err := h.checkIndexed(a, leftLen); err != nil {
				return err
			}
		}
	}
	if b < h.n {
		rt := h.pages[b].Tag
		if !tagValid(rt) || !isHead(rt) {
			return h.corrupt("pagemap.tag", h.mapAt(b), "page after extent %d is not the start of an extent (tag %#x)", p, rt)
		}
		if tagState(rt) == tagFree {
			rightLen = tagLen(rt)
			if rightLen > h.n-b {
				return h.corrupt("pagemap.tag", h.mapAt(b), "free extent [%d,+%d) beyond %d pages", b, rightLen, h.n)
			}
			if err := h.checkIndexed(b, rightLen); err != nil {
				return err
			}
		}
	}
	if check != nil {
		if err := check(h.extentAt(p, l)); err != nil {
			return err
		}
	}
	m := leftLen + l + rightLen
	var lg logBuf
	if leftLen > 0 {
		lg.add(p-1, 0, 0)
		lg.add(p, 0, 0)
	}
	lg.add(p, 1, 0)
	if rightLen > 0 {
		lg.add(b-1, 0, 0)
		lg.add(b, 0, 0)
	}
	lg.add(a, 0, headTag(tagFree, m, 0))
	lg.add(a+m-1, 0, tailTag(tagFree, m, 0))
	h.commit(&lg)

	switch {
	case leftLen > 0 && rightLen > 0:
		h.removeAt(h.pages[b].Aux - 1)
		h.pages[b].Aux = 0
		i := h.pages[a].Aux - 1
		h.setKey(i, makeKey(m, a))
		h.siftUp(i)
	case leftLen > 0:
		i := h.pages[a].Aux - 1
		h.setKey(i, makeKey(m, a))
		h.siftUp(i)
	case rightLen > 0:
		i := h.pages[b].Aux - 1
		h.pages[b].Aux = 0
		h.setKey(i, makeKey(m, a))
		h.siftUp(i)
	default:
		h.push(makeKey(m, a))
	}
	h.rt.FreePages += l
	h.rt.AllocPages -= l
	h.rt.AllocExtents--
	return nil
}

// checkIndexed verifies that the free extent [s, s+l) of a well-formed
// page map is in the index where its aux word says.
func (h *Heap) checkIndexed(s, l uint64) error {
	if t := h.pages[s].Tag; t != headTag(tagFree, l, 0) {
		return h.corrupt("pagemap.tag", h.mapAt(s), "free extent [%d,+%d) has head tag %#x", s, l, t)
	}
	if t := h.pages[s+l-1].Tag; t != tailTag(tagFree, l, 0) {
		return h.corrupt("pagemap.tag", h.mapAt(s+l-1), "free extent [%d,+%d) has tail tag %#x", s, l, t)
	}
	pos := h.pages[s].Aux
	if pos == 0 || pos > h.rt.HeapLen || pos > uint64(len(h.index)) || h.index[pos-1] != makeKey(l, s) {
		return &indexError{h.corrupt("pagemap.aux", h.mapAt(s)+8, "free extent [%d,+%d) not at index position %d", s, l, pos)}
	}
	return nil
}

// Bytes returns the bytes of the allocated extent that starts at off
// (whole pages).
func (h *Heap) Bytes(off mem.Off) ([]byte, error) {
	e, err := h.Extent(off)
	if err != nil {
		return nil, err
	}
	return h.b[e.Off : uint64(e.Off)+e.Size : uint64(e.Off)+e.Size], nil
}

// Extent describes the allocated extent that starts at off.
func (h *Heap) Extent(off mem.Off) (Extent, error) {
	var e Extent
	err := h.WithExtent(off, func(x Extent) { e = x })
	return e, err
}

// WithExtent calls fn with the allocated extent that starts at off, under
// the heap lock: while fn runs, nobody frees or allocates that extent.
// fn must not call the Heap.
func (h *Heap) WithExtent(off mem.Off, fn func(Extent)) error {
	p, err := h.pageOf(off)
	if err != nil {
		return fmt.Errorf("alloc: extent %#x: %w", uint64(off), err)
	}
	if err := h.acquire(context.Background()); err != nil {
		return err
	}
	defer h.release()
	l, err := h.allocated(p)
	if err != nil {
		return fmt.Errorf("alloc: extent %#x: %w", uint64(off), err)
	}
	fn(h.extentAt(p, l))
	return nil
}

// View returns b[off:off+n] of the region after a bounds check only, for
// callers that know what lies there.
func (h *Heap) View(off mem.Off, n uint64) ([]byte, error) { return mem.Bytes(h.b, off, n) }

// SetOwner changes the recorded owner of the allocated extent at off from
// from to to (a compare-and-swap under the heap lock): for handing an
// extent to another process, or taking it over from a dead one. An
// extent whose owner is not from is left alone (ErrBusy).
func (h *Heap) SetOwner(off mem.Off, from, to sys.Identity) error {
	p, err := h.pageOf(off)
	if err != nil {
		return fmt.Errorf("alloc: set owner of %#x: %w", uint64(off), err)
	}
	if err := h.acquire(context.Background()); err != nil {
		return err
	}
	defer h.release()
	if _, err := h.allocated(p); err != nil {
		return fmt.Errorf("alloc: set owner of %#x: %w", uint64(off), err)
	}
	if cur := sys.Identity(h.pages[p].Aux); cur != from {
		return fmt.Errorf("alloc: set owner of %#x: owned by %v, not %v: %w", uint64(off), cur, from, ErrBusy)
	}
	var lg logBuf
	lg.add(p, 1, uint64(to))
	h.commit(&lg)
	return nil
}

// Extent is an allocated extent.
type Extent struct {
	Off   mem.Off      // offset of its first byte from the region base
	Size  uint64       // bytes (whole pages)
	Kind  Kind         // as given to AllocFor
	Owner sys.Identity // as given to AllocFor (0: none)
}

// Allocated returns every allocated extent, in address order, taken under
// the heap lock in one pass over the page map (O(extents)).
func (h *Heap) Allocated() ([]Extent, error) {
	if err := h.acquire(context.Background()); err != nil {
		return nil, err
	}
	defer h.release()
	return h.allocatedLocked()
}

func (h *Heap) allocatedLocked() ([]Extent, error) {
	var out []Extent
	for p := uint64(0); p < h.n; {
		t := h.pages[p].Tag
		if !tagValid(t) || !isHead(t) || tagLen(t) > h.n-p {
			return out, h.corrupt("pagemap.tag", h.mapAt(p), "page %d: expected the start of an extent, tag %#x", p, t)
		}
		l := tagLen(t)
		if tagState(t) == tagAlloc {
			out = append(out, h.extentAt(p, l))
		}
		p += l
	}
	return out, nil
}

// Reclaimed counts what Reclaim or Recover freed.
type Reclaimed struct {
	Extents int
	Bytes   uint64
}

// Reclaim frees, under one hold of the heap lock, every allocated extent
// whose owner is dead and for which match returns true (nil: all). A
// live owner is refused with ErrBusy: a process that is alive is never
// robbed.
func (h *Heap) Reclaim(dead sys.Identity, match func(Extent) bool) (Reclaimed, error) {
	if dead == 0 {
		return Reclaimed{}, fmt.Errorf("alloc: reclaim: no owner given: %w", errs.ErrInvalidArgument)
	}
	if sys.Alive(dead) {
		return Reclaimed{}, fmt.Errorf("alloc: reclaim %v: the owner is alive: %w", dead, ErrBusy)
	}
	return h.reclaim(func(e Extent) bool { return e.Owner == dead && (match == nil || match(e)) })
}

// Recover frees every KindPlain extent whose recorded owner is a process
// that has died, and repairs the index if a dead holder left the lock.
// Extents of other kinds belong to the layers above (slab.Pool.Recover).
func (h *Heap) Recover() (Reclaimed, error) { return h.RecoverKind(KindPlain, nil) }

// RecoverKind frees, under one hold of the heap lock, every extent of
// kind whose recorded owner is a process that has died and for which
// orphan returns true (nil: all): the rule by which a layer above frees
// what its dead processes left of one kind. orphan runs under the heap
// lock, so that what it reads of the extent (a mark that another process
// clears in the critical section that frees it, say) cannot change
// between its verdict and the free.
func (h *Heap) RecoverKind(kind Kind, orphan func(Extent) bool) (Reclaimed, error) {
	alive := map[sys.Identity]bool{}
	return h.reclaim(func(e Extent) bool {
		if e.Owner == 0 || e.Kind != kind {
			return false
		}
		a, ok := alive[e.Owner]
		if !ok {
			a = sys.Alive(e.Owner)
			alive[e.Owner] = a
		}
		return !a && (orphan == nil || orphan(e))
	})
}

func (h *Heap) reclaim(match func(Extent) bool) (Reclaimed, error) {
	if err := h.acquire(context.Background()); err != nil {
		return Reclaimed{}, err
	}
	defer h.release()
	ext, err := h.allocatedLocked()
	if err != nil {
		return Reclaimed{}, fmt.Errorf("alloc: reclaim: %w", err)
	}
	var rc Reclaimed
	var errsOut []error
	for _, e := range ext {
		if !match(e) {
			continue
		}
		p := uint64(e.Off-h.first) / h.ps
		if err := h.freeLocked(p, nil); err != nil {
			errsOut = append(errsOut, fmt.Errorf("alloc: reclaim %#x: %w", uint64(e.Off), err))
			continue
		}
		rc.Extents++
		rc.Bytes += e.Size
	}
	return rc, errors.Join(errsOut...)
}

// Stats describe the heap at one moment (taken under the lock).
type Stats struct {
	PageSize      int
	TotalBytes    uint64 // allocatable bytes (metadata excluded)
	FreeBytes     uint64
	AllocBytes    uint64
	LargestFree   uint64 // bytes in the largest free extent: the largest possible Alloc
	FreeExtents   uint64
	AllocExtents  uint64
	MetadataBytes uint64 // page map and index
	Takeovers     uint32 // lock takeovers from dead holders
	Repairs       uint64 // index rebuilds
}

// Fragmentation is 1 - LargestFree/FreeBytes: 0 when all free memory is
// one run, close to 1 when it is scattered in small runs.
func (s Stats) Fragmentation() float64 {
	if s.FreeBytes == 0 {
		return 0
	}
	return 1 - float64(s.LargestFree)/float64(s.FreeBytes)
}

// Stats reports free and allocated bytes and extents.
func (h *Heap) Stats() (Stats, error) {
	if err := h.acquire(context.Background()); err != nil {
		return Stats{}, err
	}
	defer h.release()
	s := Stats{
		PageSize:      int(h.ps),
		TotalBytes:    h.n * h.ps,
		FreeBytes:     h.rt.FreePages * h.ps,
		AllocBytes:    h.rt.AllocPages * h.ps,
		FreeExtents:   h.rt.HeapLen,
		AllocExtents:  h.rt.AllocExtents,
		MetadataBytes: uint64(h.first) - h.rt.MapOff,
		Takeovers:     h.lock.Takeovers(),
		Repairs:       h.rt.Repairs,
	}
	if h.rt.HeapLen > 0 && h.rt.HeapLen <= uint64(len(h.index)) {
		s.LargestFree = keyLen(h.index[0]) * h.ps
	}
	return s, nil
}

// corrupt builds an ErrCorrupt for a field of the heap metadata.
func (h *Heap) corrupt(where string, off mem.Off, format string, args ...any) error {
	return errs.Corrupt("heap."+where, uint64(off), format, args...)
}

func (h *Heap) mapAt(p uint64) mem.Off   { return mem.Off(h.rt.MapOff + p*16) }
func (h *Heap) indexAt(i uint64) mem.Off { return mem.Off(h.rt.HeapOff + i*8) }

// logBuf collects the page-map writes of one operation.
type logBuf struct {
	n int
	e [logCap]logEntry
}

func (lg *logBuf) add(page uint64, field uint64, val uint64) {
	if lg.n == logCap {
		panic("assertion failed: alloc: redo log overflow")
	}
	lg.e[lg.n] = logEntry{Idx: page*2 + field, Val: val}
	lg.n++
}

// commit journals the writes, applies them, and clears the journal. A
// holder that dies at any point leaves either no journal (and an
// untouched page map) or a complete journal that repair applies again.
func (h *Heap) commit(lg *logBuf) {
	rt := h.rt
	copy(rt.Log[:], lg.e[:lg.n])
	rt.LogN = uint32(lg.n)
	rt.LogState.Store(1)
	for i := 0; i < lg.n; i++ {
		if i == lg.n/2 && testHookMidLog != nil {
			testHookMidLog()
		}
		h.words[lg.e[i].Idx] = lg.e[i].Val
	}
	rt.LogState.Store(0)
}
