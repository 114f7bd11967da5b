package channel

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"structs"
	"sync"
	"sync/atomic"
	"time"

	"github.com/heapipc/ipc/alloc"
	"github.com/heapipc/ipc/backend"
	"github.com/heapipc/ipc/internal/errs"
	"github.com/heapipc/ipc/internal/mem"
	"github.com/heapipc/ipc/internal/sys"
)

// ID is a user-chosen channel id.
type ID uint64

// Type is a channel type.
type Type uint32

// The channel types.
const (
	TypeRecord  Type = 1
	TypeStatic  Type = 2
	TypeSpeculo Type = 3
	TypeStream  Type = 4
	TypeMailbox Type = 5
	TypeMPSC    Type = 6
)

func (t Type) String() string {
	switch t {
	case TypeRecord:
		return "record"
	case TypeStatic:
		return "static"
	case TypeSpeculo:
		return "speculo"
	case TypeStream:
		return "stream"
	case TypeMailbox:
		return "mailbox"
	case TypeMPSC:
		return "mpsc"
	}
	return fmt.Sprintf("type(%d)", uint32(t))
}

// MaxChannelName is the longest optional channel name.
const MaxChannelName = 64

// Entry states.
const (
	entryFree         = 0
	entryInitializing = 1
	entryReady        = 2
	entryRemoving     = 3
)

// entry is one registry slot (128 bytes). Entries live in blocks of
// entriesPerBlock carved from heap pages and never go back to the heap: a
// lock-free reader holding an entry offset always reads an entry. An entry
// stays in the bucket chain it was first linked into; when its channel is
// removed it becomes free and is reused by a later channel of that bucket.
// Every field but State is written under the registry lock while State is
// free or initializing; State is published with a release store.
// Lock-free readers may read an entry while a creator rewrites it for
// another channel, so every field is an atomic word; readers compare Gen
// before and after (see wrap).
type entry struct {
	_       structs.HostLayout
	State   atomic.Uint32    // 0: entry state
	Type    atomic.Uint32    // 4: Type
	ID      atomic.Uint64    // 8
	Next    atomic.Uint64    // 16: next entry of the bucket chain (0: end)
	Control atomic.Uint64    // 24: region offset of the control block
	Size    atomic.Uint64    // 32: type-specific (ring capacity, static size)
	Creator atomic.Uint64    // 40: sys.Identity of the creator
	Gen     atomic.Uint64    // 48: bumped each time the entry is reused
	PoolNxt atomic.Uint64    // 56: next entry in the pool of unlinked entries
	NameLen atomic.Uint64    // 64
	Name    [7]atomic.Uint64 // 72: the name, 8 bytes a word
}

func (e *entry) setName(name string) {
	var b [56]byte
	copy(b[:], name)
	for i := range e.Name {
		e.Name[i].Store(binary.LittleEndian.Uint64(b[i*8:]))
	}
	e.NameLen.Store(uint64(len(name)))
}

func (e *entry) name() (string, bool) {
	n := e.NameLen.Load()
	if n > 56 {
		return "", false
	}
	var b [56]byte
	for i := range e.Name {
		binary.LittleEndian.PutUint64(b[i*8:], e.Name[i].Load())
	}
	return string(b[:n]), true
}

const (
	entrySize       = 128
	entriesPerBlock = 32 // one 4 KiB page
)

// regRoot is the registry's control block in the region's extension area,
// Ext()[RootOffset : RootOffset+512].
type regRoot struct {
	_       structs.HostLayout
	Magic   uint64         // 0
	Version uint32         // 8
	Buckets uint32         // 12: power of two
	Dir     uint64         // 16: region offset of [Buckets]atomic.Uint64 chain heads
	Pool    uint64         // 24: head of the pool of never-linked entries (under the lock)
	Blocks  atomic.Uint64  // 32: entry blocks allocated (written under the lock)
	_       [88]byte       // 40
	Lock    alloc.LockWord // 128
	Live    atomic.Uint64  // 256: channels in state ready
	_       [248]byte      // 264
}

// RootOffset is where the registry root sits in the region's extension
// area (the heap owns the first alloc.RootSize bytes).
const RootOffset = alloc.RootSize

var regMagic = binary.LittleEndian.Uint64([]byte("HIPCREG1"))

// DefaultBuckets is the default size of the registry's bucket directory.
// Lookups walk one bucket chain, so up to a few times this many channels
// are found in O(1); the directory costs 8 bytes a bucket.
const DefaultBuckets = 1024

// Registry maps channel ids to channels. Lookups are lock-free; creating
// and removing channels take the registry lock.
type Registry struct {
	r     *backend.Region
	buf   []byte
	root  *regRoot
	dir   []atomic.Uint64
	heap  *alloc.Heap
	sem   backend.Semaphore
	lock  *alloc.Lock
	cache sync.Map // ID -> mem.Off of its entry (validated on use)
	// vetRemoval and freeItems finish removals (SetFreeItems); nil:
	// nothing to vet or free.
	vetRemoval func(en *Entry) error
	freeItems  func(en *Entry) error
	dropNames  func(en *Entry) error
}

// SetFreeItems gives the registry what releases a channel's memory
// besides its control block, by type: what Remove's free does. The
// registry runs it to finish a removal that a process died in the middle
// of (FinishRemovals, and create reusing the entry), so it must pick up
// where an interrupted run stopped: each item detached from the channel
// in the same step that frees it, or before. vet runs first and must
// refuse (with an error) an entry that only damage made "removing": a
// channel whose control block is not one of its type, or of which a live
// process holds an end (no end can be claimed once a removal has begun,
// and none was held by a live process when it began). Such an entry is
// left as it is and reported. drop removes the names a channel makes
// outside the buffer (semaphores) when its creator died before
// publishing it: by id and type alone, as its control block may not be
// initialized.
func (g *Registry) SetFreeItems(vet, free, drop func(en *Entry) error) {
	g.vetRemoval, g.freeItems, g.dropNames = vet, free, drop
}

func semName(r *backend.Region) string { return r.Name() + ".reg" }

// InitRegistry lays out an empty registry; called by the region's creator
// during initialization, after the heap.
func InitRegistry(r *backend.Region, heap *alloc.Heap, buckets int) (*Registry, error) {
	if buckets <= 0 {
		buckets = DefaultBuckets
	}
	if buckets&(buckets-1) != 0 || buckets > 1<<24 {
		return nil, fmt.Errorf("registry buckets %d (want a power of two up to 2^24): %w", buckets, errs.ErrInvalidArgument)
	}
	ext := r.Ext()
	root, err := mem.At[regRoot](ext, RootOffset)
	if err != nil {
		return nil, err
	}
	dirOff, err := heap.Alloc(buckets * 8)
	if err != nil {
		return nil, fmt.Errorf("registry directory: %w", err)
	}
	b := r.Bytes()
	dirBytes, err := mem.Bytes(b, dirOff, uint64(buckets)*8)
	if err != nil {
		return nil, err
	}
	clear(dirBytes)
	*root = regRoot{}
	root.Version = backend.LayoutVersion
	root.Buckets = uint32(buckets)
	root.Dir = uint64(dirOff)
	sems, err := r.Semaphores()
	if err != nil {
		return nil, err
	}
	sem, err := createFresh(sems, semName(r))
	if err != nil {
		return nil, err
	}
	root.Magic = regMagic
	reg, err := openRegistry(r, heap, sem)
	if err != nil {
		sem.Unlink()
		sem.Close()
		return nil, err
	}
	return reg, nil
}

// createFresh creates a semaphore with value 0; one left over by a crashed
// earlier buffer of the same name is stale and replaced.
func createFresh(sems backend.SemaphoreBackend, name string) (backend.Semaphore, error) {
	s, err := sems.Create(name, 0, backend.SemOptions{})
	if errors.Is(err, errs.ErrExist) {
		sems.Remove(name)
		s, err = sems.Create(name, 0, backend.SemOptions{})
	}
	return s, err
}

// OpenRegistry attaches to the registry of an existing region.
func OpenRegistry(r *backend.Region, heap *alloc.Heap) (*Registry, error) {
	sems, err := r.Semaphores()
	if err != nil {
		return nil, err
	}
	sem, err := sems.Open(semName(r), backend.SemOptions{})
	if err != nil {
		return nil, fmt.Errorf("registry lock: %w", err)
	}
	reg, err := openRegistry(r, heap, sem)
	if err != nil {
		sem.Close()
		return nil, err
	}
	return reg, nil
}

func openRegistry(r *backend.Region, heap *alloc.Heap, sem backend.Semaphore) (*Registry, error) {
	root, err := mem.At[regRoot](r.Ext(), RootOffset)
	if err != nil {
		return nil, err
	}
	rootOff := uint64(backend.ExtOffset + RootOffset)
	if root.Magic != regMagic {
		return nil, errs.Corrupt("registry.Magic", rootOff, "magic %#x", root.Magic)
	}
	if root.Version != backend.LayoutVersion {
		return nil, fmt.Errorf("registry layout version %d: %w", root.Version, errs.ErrVersion)
	}
	n := root.Buckets
	if n == 0 || n&(n-1) != 0 || n > 1<<24 {
		return nil, errs.Corrupt("registry.Buckets", rootOff+12, "bucket count %d", n)
	}
	dir, err := mem.Slice[atomic.Uint64](r.Bytes(), mem.Off(root.Dir), int(n))
	if err != nil {
		return nil, fmt.Errorf("registry directory: %w", err)
	}
	reg := &Registry{r: r, buf: r.Bytes(), root: root, dir: dir, heap: heap, sem: sem}
	reg.lock = alloc.NewLock(&root.Lock, sem, 0)
	return reg, nil
}

// Close releases the registry's semaphore handle.
func (g *Registry) Close() error { return g.sem.Close() }

// Unlink removes the registry's semaphore name.
func (g *Registry) Unlink() error { return g.sem.Unlink() }

// Live is the number of channels in the ready state.
func (g *Registry) Live() uint64 { return g.root.Live.Load() }

func (g *Registry) bucket(id ID) *atomic.Uint64 {
	h := uint64(id) * 0x9e3779b97f4a7c15
	return &g.dir[h>>32&uint64(len(g.dir)-1)]
}

func (g *Registry) entryAt(off mem.Off) (*entry, error) {
	e, err := mem.At[entry](g.buf, off)
	if err != nil {
		return nil, fmt.Errorf("registry entry: %w", err)
	}
	return e, nil
}

// maxChain bounds a chain walk: a cycle planted in shared memory must not
// hang a lookup.
func (g *Registry) maxChain() int { return int(g.root.Blocks.Load())*entriesPerBlock + 1 }

// find walks id's bucket chain for an entry with that id in one of the
// given states and returns it, or nil.
func (g *Registry) find(id ID, states ...uint32) (*entry, mem.Off, error) {
	off := mem.Off(g.bucket(id).Load())
	limit := g.maxChain()
	for steps := 0; off != 0; steps++ {
		if steps > limit {
			return nil, 0, errs.Corrupt("registry chain", uint64(off), "cycle or overlong chain in bucket of id %d", id)
		}
		e, err := g.entryAt(off)
		if err != nil {
			return nil, 0, err
		}
		st := e.State.Load()
		if e.ID.Load() == uint64(id) {
			for _, s := range states {
				if st == s {
					return e, off, nil
				}
			}
		}
		off = mem.Off(e.Next.Load())
	}
	return nil, 0, nil
}

// Lookup returns the ready channel with the id, without taking the lock:
// ErrNotExist if there is none.
func (g *Registry) Lookup(id ID) (*Entry, error) {
	if v, ok := g.cache.Load(id); ok {
		off := v.(mem.Off)
		if e, err := g.entryAt(off); err == nil {
			if en, err := g.wrap(e, off); err == nil && en != nil && en.ID == id {
				return en, nil
			}
		}
		g.cache.Delete(id)
	}
	e, off, err := g.find(id, entryReady)
	if err != nil {
		return nil, err
	}
	if e == nil {
		return nil, fmt.Errorf("channel %d: %w", id, errs.ErrNotExist)
	}
	en, err := g.wrap(e, off)
	if err != nil {
		return nil, err
	}
	if en == nil || en.ID != id {
		// Removed (and perhaps reused) since find saw it.
		return nil, fmt.Errorf("channel %d: %w", id, errs.ErrNotExist)
	}
	g.cache.Store(id, off)
	return en, nil
}

// Entry is a validated view of a registry entry.
type Entry struct {
	e       *entry
	Off     mem.Off
	ID      ID
	Type    Type
	Control mem.Off
	Size    uint64
	Gen     uint64
	Name    string
}

// wrap reads the entry at off as one consistent snapshot of a ready
// channel, or returns nil if it is not ready. Lock-free readers race with
// Remove (which marks the entry removing, then clears Control) and with
// create (which bumps Gen, fills the fields, then publishes ready), so
// the snapshot counts only if the entry was ready with the same Gen both
// before and after its fields were read: otherwise it could mix two
// channels, or carry a control block being freed.
func (g *Registry) wrap(e *entry, off mem.Off) (*Entry, error) {
	for {
		gen := e.Gen.Load()
		if e.State.Load() != entryReady {
			return nil, nil
		}
		en := &Entry{e: e, Off: off, ID: ID(e.ID.Load()), Type: Type(e.Type.Load()), Control: mem.Off(e.Control.Load()), Size: e.Size.Load(), Gen: gen}
		name, ok := e.name()
		if e.State.Load() != entryReady {
			return nil, nil
		}
		if e.Gen.Load() != gen {
			continue // reused while we read: read again
		}
		if !ok {
			return nil, errs.Corrupt("registry entry.NameLen", uint64(off)+64, "name length %d", e.NameLen.Load())
		}
		en.Name = name
		return en, nil
	}
}

// Valid reports whether the entry still describes the same channel (it
// has not been removed and reused since it was looked up).
func (en *Entry) Valid() bool {
	return en.e.State.Load() == entryReady && en.e.Gen.Load() == en.Gen && en.e.ID.Load() == uint64(en.ID)
}

// Spec describes a channel to create.
type Spec struct {
	Type Type
	Name string
	Size uint64 // type-specific
	// Control is the size of the control block to allocate (0: none).
	Control uint64
	// Init fills the zeroed control block before the channel is published.
	Init func(control mem.Off, b []byte) error
}

// ErrRetry is returned by an attach callback to ask LookupOrCreate to
// look again (the channel was being initialized by a dead creator and has
// been cleaned).
var errRetry = errors.New("retry")

// LookupOrCreate returns the channel with the id, creating it from spec if
// it does not exist. created says which happened. A channel of another
// type is ErrWrongType. A channel whose creator died while initializing it
// is removed and created anew; one whose creator is alive but not done
// is waited for (up to ctx).
func (g *Registry) LookupOrCreate(ctx context.Context, id ID, spec Spec) (en *Entry, created bool, err error) {
	if len(spec.Name) > MaxChannelName-8 {
		return nil, false, fmt.Errorf("channel name of %d bytes (at most %d): %w", len(spec.Name), MaxChannelName-8, errs.ErrInvalidName)
	}
	for {
		en, err := g.Lookup(id)
		if err == nil {
			if en.Type != spec.Type {
				return nil, false, fmt.Errorf("channel %d is a %s channel, not %s: %w", id, en.Type, spec.Type, errs.ErrWrongType)
			}
			return en, false, nil
		}
		if !errors.Is(err, errs.ErrNotExist) {
			return nil, false, err
		}
		en, created, err := g.create(ctx, id, spec)
		if err == errRetry {
			continue
		}
		return en, created, err
	}
}

func (g *Registry) withLock(ctx context.Context, f func() error) error {
	// A takeover needs no repair: every update under the lock publishes
	// with one store once the entry is complete, so a dead holder leaves
	// at worst an entry in the initializing state, which create recovers
	// through its dead creator, or a block not yet in the pool.
	if _, err := g.lock.Lock(ctx); err != nil {
		return fmt.Errorf("registry lock: %w", err)
	}
	defer g.lock.Unlock()
	return f()
}

func (g *Registry) create(ctx context.Context, id ID, spec Spec) (*Entry, bool, error) {
	var (
		e    *entry
		off  mem.Off
		wait bool
	)
	err := g.withLock(ctx, func() error {
		cur, curOff, err := g.find(id, entryInitializing, entryReady, entryRemoving)
		if err != nil {
			return err
		}
		if cur != nil {
			st := cur.State.Load()
			// Removal happens entirely under the lock we hold, so an
			// entry still "removing" was left by a holder that died.
			deadCreator := st == entryInitializing && !sys.Alive(sys.Identity(cur.Creator.Load()))
			if !deadCreator && st != entryRemoving {
				wait = st == entryInitializing
				if st == entryReady {
					return errRetry // created meanwhile: look it up
				}
				return nil
			}
			// Finish what the dead process left and reuse the entry
			// (what could not be freed of a dead channel is no reason
			// not to make the new one).
			if ok, err := g.finish(cur, curOff); !ok {
				return err
			}
			e, off = cur, curOff
		}
		if e == nil {
			if e, off, err = g.freeEntry(id); err != nil {
				return err
			}
		}
		// Fill while free (lock-free readers skip free entries), then
		// mark initializing with our identity as the creator.
		e.Gen.Add(1)
		e.Type.Store(uint32(spec.Type))
		e.ID.Store(uint64(id))
		e.Size.Store(spec.Size)
		e.Control.Store(0)
		e.Creator.Store(uint64(sys.Self()))
		e.setName(spec.Name)
		e.State.Store(entryInitializing)
		return nil
	})
	if err != nil {
		return nil, false, err // errRetry included
	}
	if wait {
		// Someone else is creating (or removing) it: wait for it to settle.
		select {
		case <-ctx.Done():
			return nil, false, fmt.Errorf("channel %d: its creator, alive, has not finished it: %w (%w)", id, errs.ErrNotReady, ctx.Err())
		case <-time.After(time.Millisecond):
		}
		return nil, false, errRetry
	}
	// Initialize outside the lock; the entry is ours (initializing, with
	// our identity as creator).
	fail := func(err error) (*Entry, bool, error) {
		g.withLock(context.Background(), func() error {
			g.freeControl(e)
			e.State.Store(entryFree)
			return nil
		})
		return nil, false, err
	}
	if spec.Control > 0 {
		// The block is this process's until the channel is published (a
		// death before the entry names it leaves a block that Recover
		// knows to be an orphan: FinishRemovals), then nobody's.
		self := sys.Self()
		cOff, err := g.heap.AllocFor(context.Background(), int(spec.Control), alloc.KindControl, self)
		if err != nil {
			return fail(fmt.Errorf("channel %d control block of %d bytes: %w", id, spec.Control, err))
		}
		e.Control.Store(uint64(cOff))
		b, err := mem.Bytes(g.buf, cOff, spec.Control)
		if err != nil {
			return fail(err)
		}
		clear(b)
		if spec.Init != nil {
			if err := initControl(spec.Init, cOff, b, func() { fail(nil) }); err != nil {
				return fail(err)
			}
		}
		if err := g.heap.SetOwner(cOff, self, 0); err != nil {
			return fail(fmt.Errorf("channel %d control block: %w", id, err))
		}
	}
	e.State.Store(entryReady) // publish
	g.root.Live.Add(1)
	g.cache.Store(id, off)
	en, err := g.wrap(e, off)
	if err == nil && en == nil {
		return nil, false, errRetry // removed at once by someone else
	}
	return en, true, err
}

// initControl runs init on a new channel's control block. If init (a
// user's function, for static segments) panics, undo runs before the
// panic goes on: the entry must not stay initializing, by a creator that
// is alive, for every other process to wait on for ever, nor its block
// stay allocated.
func initControl(init func(mem.Off, []byte) error, c mem.Off, b []byte, undo func()) error {
	returned := false
	defer func() {
		if !returned {
			undo()
		}
	}()
	err := init(c, b)
	returned = true
	return err
}

// freeEntry returns a free entry linked into id's bucket (a free one of
// that chain, or one from the pool, linked at the head). Lock held.
func (g *Registry) freeEntry(id ID) (*entry, mem.Off, error) {
	b := g.bucket(id)
	if e, off, err := g.findFree(b); err != nil || e != nil {
		return e, off, err
	}
	if g.root.Pool == 0 {
		if err := g.grow(); err != nil {
			return nil, 0, err
		}
	}
	off := mem.Off(g.root.Pool)
	e, err := g.entryAt(off)
	if err != nil {
		return nil, 0, err
	}
	g.root.Pool = e.PoolNxt.Load()
	e.PoolNxt.Store(0)
	e.State.Store(entryFree)
	e.Next.Store(b.Load())
	b.Store(uint64(off)) // link: the entry is free, so readers skip it
	return e, off, nil
}

func (g *Registry) findFree(b *atomic.Uint64) (*entry, mem.Off, error) {
	off := mem.Off(b.Load())
	limit := g.maxChain()
	for steps := 0; off != 0; steps++ {
		if steps > limit {
			return nil, 0, errs.Corrupt("registry chain", uint64(off), "cycle or overlong chain")
		}
		e, err := g.entryAt(off)
		if err != nil {
			return nil, 0, err
		}
		if e.State.Load() == entryFree {
			return e, off, nil
		}
		off = mem.Off(e.Next.Load())
	}
	return nil, 0, nil
}

// grow adds a block of entries to the pool. Lock held.
func (g *Registry) grow() error {
	size := uint64(entriesPerBlock * entrySize)
	off, err := g.heap.Alloc(int(size))
	if err != nil {
		return fmt.Errorf("registry: no memory for more channels: %w", err)
	}
	b, err := mem.Bytes(g.buf, off, size)
	if err != nil {
		return err
	}
	clear(b)
	for i := entriesPerBlock - 1; i >= 0; i-- {
		eo := off + mem.Off(i*entrySize)
		e := mem.MustAt[entry](g.buf, eo)
		e.PoolNxt.Store(g.root.Pool)
		g.root.Pool = uint64(eo)
	}
	g.root.Blocks.Add(1)
	return nil
}

// Attach runs claim (taking an end of the channel of en) under the
// registry lock if en still names the same ready channel, and reports
// ErrNotExist if it does not: Remove decides under the same lock whether
// a channel is abandoned, so a channel cannot be removed, and its control
// block freed, between a lookup and the claim of an end (which would
// then write into freed memory), nor after the claim on grounds the
// claim has changed.
func (g *Registry) Attach(ctx context.Context, en *Entry, claim func() error) error {
	return g.withLock(ctx, func() error {
		if !en.Valid() {
			return fmt.Errorf("channel %d was removed: %w", en.ID, errs.ErrNotExist)
		}
		return claim()
	})
}

// Remove retires the channel of en if it is still the same channel and
// keep(en) says so under the lock; free releases its memory (called under
// the lock, before the entry becomes reusable). It reports whether it
// removed the channel.
func (g *Registry) Remove(ctx context.Context, en *Entry, cond func() bool, free func() error) (bool, error) {
	removed := false
	err := g.withLock(ctx, func() error {
		if !en.Valid() || (cond != nil && !cond()) {
			return nil
		}
		en.e.State.Store(entryRemoving)
		var ferr error
		if free != nil {
			ferr = free()
		}
		ferr = errors.Join(ferr, g.freeControl(en.e))
		en.e.State.Store(entryFree)
		g.decLive()
		g.cache.Delete(en.ID)
		removed = true
		return ferr
	})
	return removed, err
}

// freeControl frees an entry's control block and clears Control in the
// same critical section of the heap lock, so that a removal that is run
// again after its process died never frees the block twice (by then it
// may be another channel's). The block becomes this process's first
// (own): a death between clearing Control and the heap's commit then
// leaves a block that nothing names and a dead process owns, which
// FinishRemovals frees (an unowned one would stay allocated for good). A
// Control that does not name a control block (alloc.KindControl) is
// damage: nothing is freed, and ErrCorrupt says so.
func (g *Registry) freeControl(e *entry) error {
	c := e.Control.Load()
	if c == 0 {
		return nil
	}
	self := sys.Self()
	if err := g.own(mem.Off(c), self); err != nil {
		return err
	}
	err := g.heap.FreeIf(mem.Off(c), func(x alloc.Extent) error {
		if e.Control.Load() != c {
			return errControlMoved
		}
		if x.Kind != alloc.KindControl || x.Owner != self {
			return errs.Corrupt("registry entry.Control", uint64(c), "names a %v extent owned by %v, not a control block", x.Kind, x.Owner)
		}
		e.Control.Store(0)
		return nil
	})
	if errors.Is(err, errControlMoved) {
		return nil
	}
	return err
}

// own makes self the owner of control block c: from nobody (a published
// channel's block) or from a dead process (a creator or a remover that
// died with it). Anything else is damage (ErrCorrupt).
func (g *Registry) own(c mem.Off, self sys.Identity) error {
	x, err := g.heap.Extent(c)
	if err != nil {
		return err
	}
	switch {
	case x.Kind != alloc.KindControl || x.Off != c:
		return errs.Corrupt("registry entry.Control", uint64(c), "names a %v extent at %#x, not a control block", x.Kind, uint64(x.Off))
	case x.Owner == self:
		return nil
	case x.Owner != 0 && sys.Alive(x.Owner):
		return errs.Corrupt("registry entry.Control", uint64(c), "names a control block that %v, alive, holds", x.Owner)
	}
	return g.heap.SetOwner(c, x.Owner, self)
}

var errControlMoved = errors.New("control block no longer the entry's")

// finish completes, under the lock, what a process that died left of an
// entry: a removal (its items freed through freeItems, then its control
// block), or a creation (the names it made outside the buffer, through
// dropNames, and its control block). The entry becomes free, unless the
// removal is refused (vetRemoval: then ok is false, err says why, and
// nothing changed). err also reports what could not be freed.
func (g *Registry) finish(e *entry, off mem.Off) (ok bool, err error) {
	st := e.State.Load()
	var all []error
	en := &Entry{e: e, Off: off, ID: ID(e.ID.Load()), Type: Type(e.Type.Load()), Control: mem.Off(e.Control.Load()), Size: e.Size.Load(), Gen: e.Gen.Load()}
	switch {
	case st == entryRemoving && en.Control != 0:
		if g.vetRemoval != nil {
			if err := g.vetRemoval(en); err != nil {
				return false, errs.Corrupt("registry entry.State", uint64(off), "%s channel %d is marked removing, but: %v", en.Type, en.ID, err)
			}
		}
		if g.freeItems != nil {
			if err := g.freeItems(en); err != nil {
				all = append(all, fmt.Errorf("finishing the removal of %s channel %d: %w", en.Type, en.ID, err))
			}
		}
	case st == entryInitializing && g.dropNames != nil:
		// The id is this entry's: no other channel has these names.
		if err := g.dropNames(en); err != nil {
			all = append(all, fmt.Errorf("%s channel %d whose creator died: %w", en.Type, en.ID, err))
		}
	}
	all = append(all, g.freeControl(e))
	// Free first, then counted off: a death in between leaves the count
	// one too high rather than counting the channel off twice when the
	// entry is finished again.
	e.State.Store(entryFree)
	if st == entryRemoving {
		g.decLive()
	}
	g.cache.Delete(en.ID)
	return true, errors.Join(all...)
}

// decLive counts a channel off Live, which never goes below zero.
func (g *Registry) decLive() {
	for {
		v := g.root.Live.Load()
		if v == 0 || g.root.Live.CompareAndSwap(v, v-1) {
			return
		}
	}
}

// Unfinished is what FinishRemovals found and finished.
type Unfinished struct {
	Removals  int // channels whose remover died in the middle
	Creations int // channels whose creator died before publishing them
	Orphans   int // control blocks that a dead creator or remover left unnamed
}

// FinishRemovals finishes, under the lock, every removal whose process
// died in the middle (an entry left "removing": removals happen entirely
// under the lock), and frees the entries of channels whose creator died
// before publishing them. What they held comes back to the heap; the
// entries are reused by later channels.
//
// then, if not nil, runs in the same critical section after them: Recover
// walks the channels and frees dead processes' records there, so that no
// removal can begin and die between the walk (which sees only ready
// channels) and the freeing (which would take the records still queued in
// that channel for a dead holder's, and free them, while the channel still
// names them).
func (g *Registry) FinishRemovals(ctx context.Context, then func() error) (Unfinished, error) {
	var u Unfinished
	err := g.withLock(ctx, func() error {
		err := g.walk(func(e *entry, off mem.Off) error {
			switch st := e.State.Load(); {
			case st == entryRemoving:
				ok, err := g.finish(e, off)
				if ok {
					u.Removals++
				}
				return err
			case st == entryInitializing && !sys.Alive(sys.Identity(e.Creator.Load())):
				u.Creations++
				_, err := g.finish(e, off)
				return err
			}
			return nil
		})
		// Control blocks that a dead process owns and no entry names can
		// go (a creator died before its entry named its block, or a
		// remover after the entry let go of it), once a walk has seen
		// every entry; a live creator's block is left to it.
		named := map[mem.Off]bool{}
		nerr := g.walk(func(e *entry, _ mem.Off) error {
			named[mem.Off(e.Control.Load())] = true
			return nil
		})
		if nerr == nil {
			var rc alloc.Reclaimed
			rc, nerr = g.heap.RecoverKind(alloc.KindControl, func(x alloc.Extent) bool { return !named[x.Off] })
			u.Orphans = rc.Extents
		}
		err = errors.Join(err, nerr)
		if then != nil {
			err = errors.Join(err, then())
		}
		return err
	})
	return u, err
}

// EachUnfinished calls f, without the lock, for every entry that a
// process died with: a removal it did not finish, a channel it did not
// finish creating. The Entry carries the id and type only (its other
// fields may be torn): for removing the names a channel made outside the
// buffer when the buffer is destroyed.
func (g *Registry) EachUnfinished(f func(*Entry) error) error {
	return g.walk(func(e *entry, off mem.Off) error {
		st := e.State.Load()
		if st == entryRemoving || (st == entryInitializing && !sys.Alive(sys.Identity(e.Creator.Load()))) {
			return f(&Entry{e: e, Off: off, ID: ID(e.ID.Load()), Type: Type(e.Type.Load())})
		}
		return nil
	})
}

// walk calls f for every entry of every bucket chain (a chain's next
// entry is read after f returns) and joins f's errors; a chain that is
// a cycle or longer than the registry's entries ends the walk with an
// ErrCorrupt.
func (g *Registry) walk(f func(e *entry, off mem.Off) error) error {
	var all []error
	for i := range g.dir {
		off := mem.Off(g.dir[i].Load())
		limit := g.maxChain()
		for steps := 0; off != 0; steps++ {
			if steps > limit {
				return errors.Join(append(all, errs.Corrupt("registry chain", uint64(off), "cycle or overlong chain in bucket %d", i))...)
			}
			e, err := g.entryAt(off)
			if err != nil {
				return errors.Join(append(all, err)...)
			}
			all = append(all, f(e, off))
			off = mem.Off(e.Next.Load())
		}
	}
	return errors.Join(all...)
}

// Each calls f for every channel in the ready state.
func (g *Registry) Each(f func(*Entry) error) error {
	return g.walk(func(e *entry, off mem.Off) error {
		if e.State.Load() != entryReady {
			return nil
		}
		en, err := g.wrap(e, off)
		if err != nil || en == nil {
			return err
		}
		return f(en)
	})
}
