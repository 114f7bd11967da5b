package ipc

import (
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/heapipc/ipc/alloc"
	"github.com/heapipc/ipc/backend"
	"github.com/heapipc/ipc/channel"
	"github.com/heapipc/ipc/internal/errs"
	"github.com/heapipc/ipc/internal/mem"
	"github.com/heapipc/ipc/internal/sys"
)

// Buffer is one process's attachment to a named shared-memory buffer. Its
// methods are safe for concurrent use; channel ends and records are used
// through a Handle, one per goroutine.
type Buffer struct {
	name   string
	cfg    config
	region *backend.Region
	heap   *alloc.Heap
	reg    *channel.Registry
	recs   *records

	mu      sync.Mutex
	handles map[*Handle]struct{}
	bells   []*channel.Doorbell // doorbells closed Selects gave back
	bellsAt time.Time           // when the last of them was
	// bellsFreed: Close has taken the doorbells to free; none is given
	// back after that.
	bellsFreed bool
	closed     bool
	// isClosed is closed, for the hot paths: every call reads it (in), so
	// it has its lines to itself (no word written per call next to it).
	_        mem.Pad
	isClosed atomic.Bool
	_        mem.Pad
	// calls is how many calls on the Buffer itself (Free, Stats, Check,
	// Recover, Static...) are in progress in any goroutine: Close waits
	// for it to be 0, as for the handles' calls.
	calls atomic.Int64
}

// in marks a call on the buffer itself as in progress and reports
// whether the buffer is open (see Handle.in; the atomic add is a fence,
// so Close needs no barrier for these). A call that gets true calls out
// when it is done.
func (b *Buffer) in() bool {
	b.calls.Add(1)
	if b.isClosed.Load() {
		b.calls.Add(-1)
		return false
	}
	return true
}

func (b *Buffer) out() { b.calls.Add(-1) }

func (b *Buffer) closedErr(op string) error {
	return fmt.Errorf("ipc: %s on buffer %q: %w", op, b.name, ErrClosed)
}

// Open creates the buffer called name, or attaches to it if it exists
// (see CreateOnly and AttachOnly). The creator lays out the heap and the
// channel registry before anyone else can attach; attachers validate
// them. Names are 1..128 characters of [A-Za-z0-9._-].
func Open(name string, opts ...Option) (*Buffer, error) {
	cfg := defaultConfig()
	for _, o := range opts {
		if err := o(&cfg); err != nil {
			return nil, fmt.Errorf("ipc: open %q: %w", name, err)
		}
	}
	if cfg.region.Open == backend.AttachOnly {
		cfg.region.Size = 0
	}
	b := &Buffer{name: name, cfg: cfg, handles: map[*Handle]struct{}{}}
	region, err := backend.OpenRegion(name, cfg.region, func(r *backend.Region) error {
		h, err := alloc.Init(r, alloc.Options{CheckInterval: cfg.checkInterval})
		if err != nil {
			return err
		}
		reg, err := channel.InitRegistry(r, h, cfg.buckets)
		if err != nil {
			h.Unlink()
			h.Close()
			return err
		}
		recs, err := initRecords(r, h, cfg)
		if err != nil {
			reg.Unlink()
			reg.Close()
			h.Unlink()
			h.Close()
			return err
		}
		b.heap, b.reg, b.recs = h, reg, recs
		reg.SetFreeItems(b.vetRemoval, b.freeItems, b.dropNames)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("ipc: open %q: %w", name, err)
	}
	b.region = region
	if !region.Created() {
		if err := b.attach(); err != nil {
			region.Close()
			return nil, fmt.Errorf("ipc: open %q: %w", name, err)
		}
	}
	return b, nil
}

func (b *Buffer) attach() error {
	h, err := alloc.AttachWith(b.region, alloc.Options{CheckInterval: b.cfg.checkInterval})
	if err != nil {
		return err
	}
	reg, err := channel.OpenRegistry(b.region, h)
	if err != nil {
		h.Close()
		return err
	}
	recs, err := attachRecords(b.region, h, b.cfg)
	if err != nil {
		reg.Close()
		h.Close()
		return err
	}
	b.heap, b.reg, b.recs = h, reg, recs
	reg.SetFreeItems(b.vetRemoval, b.freeItems, b.dropNames)
	return nil
}

// freeItems releases what a channel being removed holds besides its
// control block (its type's free): what the registry runs again to
// finish a removal whose process died in the middle
// (channel.Registry.FinishRemovals).
func (b *Buffer) freeItems(en *channel.Entry) error {
	if ops := channelTypes[en.Type]; ops.free != nil {
		return ops.free(b, en)
	}
	return nil
}

// dropNames removes the names outside the buffer (semaphores) of a
// channel whose creator died before publishing it (its type's destroy).
func (b *Buffer) dropNames(en *channel.Entry) error {
	if ops := channelTypes[en.Type]; ops.destroy != nil {
		return ops.destroy(b, en)
	}
	return nil
}

// vetRemoval accepts a channel left "removing" for finishing only if its
// control block opens as one of its type and no live process holds an
// end (channel.Registry.SetFreeItems).
func (b *Buffer) vetRemoval(en *channel.Entry) error {
	ops := channelTypes[en.Type]
	if ops.idle == nil {
		return fmt.Errorf("unknown type %d", uint32(en.Type))
	}
	idle, err := ops.idle(b, en)
	if err != nil {
		return err
	}
	if !idle {
		return fmt.Errorf("a live process holds an end: %w", ErrBusy)
	}
	return nil
}

// removeHook, when a test sets it, is called at the crash points of a
// channel's removal.
var removeHook func(point string)

// drainRecords frees the records queued in a record channel being
// removed, each taken off the ring before it is freed (channel.Ring.Drain)
// so that the removal can be run again if it dies in the middle.
func (b *Buffer) drainRecords(ring *channel.Ring) error {
	var r Record
	return ring.Drain(func(s uint64) error {
		var err error
		r, err = b.recs.take(s)
		return err
	}, func(uint64) error {
		if removeHook != nil {
			removeHook("records:taken")
		}
		return b.recs.free(r)
	})
}

// Name is the buffer's name.
func (b *Buffer) Name() string { return b.name }

// Created reports whether this Open created the buffer.
func (b *Buffer) Created() bool { return b.region.Created() }

// Backends returns the segment and semaphore backends the buffer uses.
func (b *Buffer) Backends() (segments, semaphores string) {
	return string(b.region.SegmentKind()), string(b.region.SemaphoreKind())
}

// checkFast is check for the hot paths: it does not read the buffer's
// shared state word (a destroyed buffer is noticed by blocking calls and
// by check).
func (b *Buffer) checkFast(op string) error {
	if b.isClosed.Load() {
		return fmt.Errorf("ipc: %s on buffer %q: %w", op, b.name, ErrClosed)
	}
	return nil
}

func (b *Buffer) check(op string) error {
	if b.isClosed.Load() {
		return fmt.Errorf("ipc: %s on buffer %q: %w", op, b.name, ErrClosed)
	}
	if b.region.State() == backend.StateDestroyed {
		return fmt.Errorf("ipc: %s on buffer %q: %w", op, b.name, ErrDestroyed)
	}
	return nil
}

// Close closes every handle and static segment of this process on the
// buffer, then detaches. The buffer stays for the other processes. Every
// failure is reported (errors.Join). After Close no record or static
// bytes of the buffer may be touched: the mapping is gone.
//
// Close may be called while other goroutines use the buffer: calls that
// are blocked (Receive, Send on a full ring, Select, stream reads and
// writes, speculo waits; mailbox waits at their check interval) return
// ErrClosed, Close waits for every call in progress to end before it
// tears anything down, and later calls return ErrClosed. The exception
// is the per-record fast paths of Allocate, Producer.Send,
// Consumer.Receive and Handle.Free, which are not counted (a count there
// cost the in-process record channel about a tenth of its speed): stop
// the goroutines that stream records one at a time before Close (the
// batch forms are counted). A call that runs user code (a stream's
// ReadFrom or WriteTo, a mailbox's ReplyFrom, a static segment's init,
// the fill of SendEach and the use of ReceiveEach) keeps Close waiting until that code returns; that code must not call
// Close.
func (b *Buffer) Close() error {
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		return nil
	}
	b.closed = true
	b.isClosed.Store(true)
	b.region.SetClosing()
	handles := make([]*Handle, 0, len(b.handles))
	for h := range b.handles {
		handles = append(handles, h)
	}
	b.mu.Unlock()
	b.quiesce(handles)
	var all []error
	for _, h := range handles {
		all = append(all, h.close())
	}
	if b.region.State() != backend.StateDestroyed {
		all = append(all, b.freeBells())
	}
	all = append(all, b.recs.close(), b.reg.Close(), b.heap.Close(), b.region.Close())
	if err := errors.Join(all...); err != nil {
		return fmt.Errorf("ipc: close %q: %w", b.name, err)
	}
	return nil
}

// quiesce waits until no call on the buffer is in progress in another
// goroutine, so that Close tears down nothing a call is using: calls that
// began before Close set isClosed run to their end (one blocked in a
// wait returns ErrClosed at its next check: the region is closing, see
// backend.Region.Closing), and later ones see isClosed and touch
// nothing. The barrier makes the handles' call counts, which their
// goroutines store plainly (setCalls), visible here.
func (b *Buffer) quiesce(handles []*Handle) {
	sys.Barrier()
	idle := func() bool {
		for _, h := range handles {
			if h.calls.Load() != 0 {
				return false
			}
		}
		return b.calls.Load() == 0
	}
	for d := time.Microsecond; !idle(); d = min(2*d, time.Millisecond) {
		for _, h := range handles {
			h.interrupt()
		}
		time.Sleep(d)
	}
}

// Destroy marks the buffer destroyed, removes its names (the segment and
// its semaphores) and closes it. Processes still attached keep their
// mapping: blocked calls there return ErrDestroyed within the check
// interval, and new Opens of the name create a new buffer. With SysV
// semaphores the kernel removes them at once, so those processes' waits
// on the buffer's locks fail with ErrDestroyed instead of hanging.
func (b *Buffer) Destroy() error {
	if !b.in() {
		return b.closedErr("destroy")
	}
	b.region.MarkDestroyed()
	var all []error
	destroy := func(en *channel.Entry) error {
		if ops := channelTypes[en.Type]; ops.destroy != nil {
			return ops.destroy(b, en)
		}
		return nil
	}
	// Channels that processes died removing or creating made their
	// names too.
	all = append(all, b.reg.Each(destroy), b.reg.EachUnfinished(destroy))
	all = append(all, b.recs.unlink(), b.reg.Unlink(), b.heap.Unlink(), b.region.Unlink())
	b.out()
	all = append(all, b.Close())
	if err := errors.Join(all...); err != nil {
		return fmt.Errorf("ipc: destroy %q: %w", b.name, err)
	}
	return nil
}

// Remove removes the buffer called name: what Destroy removes, for
// cleaning up after a crashed program. If the buffer can be opened it is
// destroyed (every channel's semaphores included); otherwise its segment
// and the heap and registry semaphores are removed by name, and with POSIX
// semaphores its mailboxes' too (found in /dev/shm). Backends: "" for
// segments is the default; the semaphores are of the kind the buffer's
// header records, or if it cannot be read, of the kind given ("": the
// default). For cleaning up after a
// crashed program; it reports what it could not remove, and ErrNotExist
// if there was nothing.
func Remove(name string, segments, semaphores string) error {
	cfg := defaultConfig()
	if err := WithBackends(segments, semaphores)(&cfg); err != nil {
		return err
	}
	segKind, semKind := cfg.region.Segments, cfg.region.Semaphores
	if segKind == "" {
		segKind = backend.DefaultSegmentKind()
	}
	if err := backend.ValidateName(name); err != nil {
		return fmt.Errorf("ipc: remove: %w", err)
	}
	// If the buffer can still be opened, Destroy removes everything,
	// the channels' own semaphores included.
	destroy := func(semKind backend.Kind) (bool, error) {
		b, err := Open(name, AttachOnly(), WithBackends(string(segKind), string(semKind)), WithReadyTimeout(time.Second))
		if err != nil {
			return false, nil
		}
		return true, b.Destroy()
	}
	if ok, err := destroy(semKind); ok {
		return err
	}
	// The header, if it can be read, says which semaphores the buffer
	// made, whatever was asked.
	if r, err := backend.OpenRegion(name, backend.RegionConfig{Segments: segKind, Open: backend.AttachOnly, ReadyTimeout: time.Second}, nil); err == nil {
		made := r.SemaphoreKind()
		r.Close()
		if made != semKind {
			if ok, err := destroy(made); ok {
				return err
			}
		}
		semKind = made
	} else if semKind == "" {
		semKind = backend.DefaultSemaphoreKind()
	}
	segs, err := backend.Segments(segKind)
	if err != nil {
		return err
	}
	sems, err := backend.Semaphores(semKind)
	if err != nil {
		return err
	}
	var all []error
	found := false
	note := func(err error) {
		if err == nil {
			found = true
		} else if !errors.Is(err, ErrNotExist) {
			all = append(all, err)
		}
	}
	note(segs.Remove(name))
	for _, suffix := range semaphoreSuffixes {
		note(sems.Remove(name + suffix))
	}
	// The registry cannot be read, so the mailboxes' semaphores are
	// found by their names in /dev/shm (posix) or by the Data of their
	// sets (sysv).
	switch semKind {
	case backend.POSIX:
		for _, n := range mailboxSemFiles(name) {
			note(sems.Remove(n))
		}
	case backend.SysV:
		ns, err := mailboxSysVSems(name)
		if err != nil {
			all = append(all, err)
		}
		for _, n := range ns {
			note(sems.Remove(n))
		}
	}
	if !found && len(all) == 0 {
		return fmt.Errorf("ipc: remove %q: %w", name, ErrNotExist)
	}
	return errors.Join(all...)
}

// mailboxSysVSems lists the names of the sysv semaphore sets that are
// those of a mailbox of the buffer called name: sets whose Data name a
// mailbox id and a semaphore (channel.MailboxSemOf) whose name under this
// buffer has the set's key. Remove by name then checks the set's tag, so
// that another name's set that merely shares a key is not taken.
func mailboxSysVSems(name string) ([]string, error) {
	sets, err := backend.SysVSemSets(channel.MailboxSemDataLen)
	if err != nil {
		return nil, fmt.Errorf("ipc: remove %q: mailbox semaphores: %w", name, err)
	}
	var out []string
	for _, s := range sets {
		id, i, ok := channel.MailboxSemOf(s.Data)
		if !ok {
			continue
		}
		if n := channel.MailboxSemNames(name, id)[i]; backend.SysVKey("sem", n) == s.Key {
			out = append(out, n)
		}
	}
	return out, nil
}

// mailboxSemFiles lists the POSIX semaphores in /dev/shm named as those of
// a mailbox of the buffer called name: exactly channel.MailboxSemNames of
// some id, so that another buffer's objects whose names merely begin with
// this one's are not taken.
func mailboxSemFiles(name string) []string {
	des, err := os.ReadDir(backend.ShmDir)
	if err != nil {
		return nil
	}
	prefix := "sem." + name + ".mb"
	var out []string
	for _, de := range des {
		rest, ok := strings.CutPrefix(de.Name(), prefix)
		if !ok {
			continue
		}
		hexID, _, ok := strings.Cut(rest, ".")
		id, err := strconv.ParseUint(hexID, 16, 64)
		if !ok || err != nil {
			continue
		}
		sem := strings.TrimPrefix(de.Name(), "sem.")
		if names := channel.MailboxSemNames(name, channel.ID(id)); slices.Contains(names[:], sem) {
			out = append(out, sem)
		}
	}
	return out
}

// semaphoreSuffixes name every semaphore a buffer makes, after its name.
var semaphoreSuffixes = []string{alloc.SemSuffix, ".reg"}

// Stats describes the buffer's memory and channels.
type Stats struct {
	Heap     alloc.Stats
	Channels uint64 // channels in the registry, those being made or removed included (static segments not counted)
	Statics  uint64 // static segments
	Records  RecordStats
}

// Stats returns a snapshot of the buffer's state. Records a handle has
// freed and holds back, to free them with the others of their run (see
// Handle.Free), are counted in use.
func (b *Buffer) Stats() (Stats, error) {
	if !b.in() {
		return Stats{}, b.closedErr("stats")
	}
	defer b.out()
	if err := b.check("stats"); err != nil {
		return Stats{}, err
	}
	hs, err := b.heap.Stats()
	if err != nil {
		return Stats{}, err
	}
	st := Stats{Heap: hs, Records: b.recs.stats()}
	live := b.reg.Live() // channels being made or removed included
	err = b.reg.Each(func(en *channel.Entry) error {
		if en.Type == channel.TypeStatic {
			st.Statics++
		}
		return nil
	})
	st.Channels = live - min(live, st.Statics)
	return st, err
}

// Check walks the heap, the slabs, the registry and every channel and
// reports every violation it finds (errors.Join of *CorruptError values),
// or nil. It takes the heap lock while it walks the heap.
func (b *Buffer) Check() error {
	if !b.in() {
		return b.closedErr("check")
	}
	defer b.out()
	if err := b.check("check"); err != nil {
		return err
	}
	var all []error
	all = append(all, b.heap.Check(), b.recs.check())
	all = append(all, b.reg.Each(func(en *channel.Entry) error {
		err := b.checkChannel(en)
		if err != nil && !en.Valid() {
			return nil // removed while we read it: what we read was freed memory
		}
		return err
	}))
	if err := errors.Join(all...); err != nil {
		return fmt.Errorf("ipc: check %q: %w", b.name, err)
	}
	return nil
}

// typeOps is what the buffer does with the channels of one type. Each
// channel type's file registers its ops in an init function, so the
// buffer-wide walks (Check, Recover, Destroy) reach every type.
type typeOps struct {
	// check reports what is wrong with the channel (nil: nothing).
	check func(b *Buffer, en *channel.Entry) error
	// repair finishes, for Recover, what a dead end left half done in the
	// channel's control block (before pending reads it).
	repair func(b *Buffer, en *channel.Entry) error
	// pending returns records queued in the channel (kept by Recover).
	pending func(b *Buffer, en *channel.Entry) ([]mem.Off, error)
	// abandoned reports whether no live process uses the channel and it
	// can be removed by Recover.
	abandoned func(b *Buffer, en *channel.Entry) bool
	// bell clears the channel's doorbell word if it names the doorbell
	// of a dead process, and returns the doorbell it names then (0:
	// none). Recover frees dead processes' doorbells that no channel
	// names.
	bell func(b *Buffer, en *channel.Entry) mem.Off
	// idle opens the channel and reports whether no live process holds
	// an end of it (an error: its control block does not open).
	idle func(b *Buffer, en *channel.Entry) (bool, error)
	// free releases what the channel holds besides its control block,
	// under the registry lock, when it is removed.
	free func(b *Buffer, en *channel.Entry) error
	// destroy removes names the channel made outside the buffer (its
	// semaphores), when the buffer is destroyed.
	destroy func(b *Buffer, en *channel.Entry) error
}

var channelTypes = map[channel.Type]typeOps{}

func registerType(t channel.Type, ops typeOps) { channelTypes[t] = ops }

func (b *Buffer) checkChannel(en *channel.Entry) error {
	ops, ok := channelTypes[en.Type]
	if !ok {
		return errs.Corrupt("registry entry type", uint64(en.Off)+4, "channel %d has unknown type %d", en.ID, uint32(en.Type))
	}
	if en.Control != 0 {
		x, err := b.heap.Extent(en.Control)
		if err != nil {
			return fmt.Errorf("%s channel %d: control block: %w", en.Type, en.ID, err)
		}
		if x.Kind != alloc.KindControl || x.Owner != 0 {
			return errs.Corrupt("registry entry.Control", uint64(en.Control), "%s channel %d names a %v extent owned by %v, not a control block", en.Type, en.ID, x.Kind, x.Owner)
		}
	}
	if ops.check == nil {
		return nil
	}
	if err := ops.check(b, en); err != nil {
		return fmt.Errorf("%s channel %d: %w", en.Type, en.ID, err)
	}
	return nil
}

func init() {
	registerType(channel.TypeRecord, typeOps{
		check: func(b *Buffer, en *channel.Entry) error {
			r, err := channel.OpenRing(b.region, en, channel.WaitOptions{})
			if err != nil {
				return err
			}
			if err := r.Check(); err != nil {
				return err
			}
			pending, err := r.PendingSlots()
			if err != nil {
				return err
			}
			var all []error
			for _, s := range pending {
				if err := b.recs.validateQueued(s); err != nil {
					all = append(all, fmt.Errorf("queued record at %#x: %w", uint64(channel.SlotOff(s)), err))
				}
			}
			return errors.Join(all...)
		},
		pending: func(b *Buffer, en *channel.Entry) ([]mem.Off, error) {
			r, err := channel.OpenRing(b.region, en, channel.WaitOptions{})
			if err != nil {
				return nil, err
			}
			return r.Pending()
		},
		abandoned: func(b *Buffer, en *channel.Entry) bool {
			r, err := channel.OpenRing(b.region, en, channel.WaitOptions{})
			return err == nil && r.Abandoned()
		},
		bell: func(b *Buffer, en *channel.Entry) mem.Off {
			r, err := channel.OpenRing(b.region, en, channel.WaitOptions{})
			if err != nil {
				return 0
			}
			return r.LiveDoorbell(b.heap, en.Valid)
		},
		idle: func(b *Buffer, en *channel.Entry) (bool, error) {
			r, err := channel.OpenRing(b.region, en, channel.WaitOptions{})
			return err == nil && r.Idle(), err
		},
		free: func(b *Buffer, en *channel.Entry) error {
			r, err := channel.OpenRing(b.region, en, channel.WaitOptions{})
			if err != nil {
				return err
			}
			return b.drainRecords(r)
		},
	})
	registerType(channel.TypeStatic, typeOps{
		// A static segment has no ends: its users hold views.
		idle: func(b *Buffer, en *channel.Entry) (bool, error) {
			_, err := b.heap.Extent(en.Control)
			return err == nil, err
		},
		check: func(b *Buffer, en *channel.Entry) error {
			_, err := b.staticView(en)
			return err
		},
	})
}

// graceSleep is time.Sleep; tests look at what is locked during a grace.
var graceSleep = time.Sleep

// freeDeadBells frees the doorbells of dead processes that no channel
// names (named: those that channels do, after Recover took the dead ones
// out, which it finished doing at cleared), once channel.BellGrace has
// passed since: a producer that read one's offset before it was taken out
// of its channel, by this Recover or another, has rung it by then.
// Recover calls it after it has let go of the registry lock, so that
// nobody waits for the lock through the grace: no channel can come to
// name a dead process's doorbell (only its owner's Selects put one in),
// and each is freed only if it is still that process's doorbell.
func (b *Buffer) freeDeadBells(named map[mem.Off]bool, cleared time.Time) error {
	exts, err := b.heap.Allocated()
	if err != nil {
		return err
	}
	var dead []alloc.Extent
	for _, e := range exts {
		if e.Kind == alloc.KindDoorbell && e.Owner != 0 && !named[e.Off] && !sys.Alive(e.Owner) {
			dead = append(dead, e)
		}
	}
	if len(dead) == 0 {
		return nil
	}
	if d := channel.BellGrace - time.Since(cleared); d > 0 {
		graceSleep(d)
	}
	var all []error
	for _, e := range dead {
		err := b.heap.FreeIf(e.Off, func(x alloc.Extent) error {
			if x.Kind != alloc.KindDoorbell || x.Owner != e.Owner {
				return fmt.Errorf("doorbell %#x changed under us: %w", uint64(e.Off), ErrBusy)
			}
			return nil
		})
		if err != nil && !errors.Is(err, ErrNotAllocated) && !errors.Is(err, ErrDoubleFree) && !errors.Is(err, ErrBusy) {
			all = append(all, err)
		}
	}
	return errors.Join(all...)
}

// Recover reclaims what processes that died left in the buffer: records
// they held (allocated and not sent, received and not freed, or being
// freed when they died; records queued in a channel are kept for
// delivery), frees they left half done in the slabs of live processes
// and of large records, their slabs, the doorbells
// of their Selects, speculo extents they were making, channels that no
// live process holds and that are drained, and what removals and
// creations of channels that died in the middle left (finished first:
// their queued records, extents and control blocks). It returns how many
// bytes came back. Processes that are alive are never robbed. If a
// channel is damaged so that what it queues cannot be read, Recover
// frees no record (any may be queued there: freeing it would hand a
// consumer freed memory) and reports the damage; the records come back
// with a Recover after the channel is removed.
func (b *Buffer) Recover() (reclaimed uint64, err error) {
	if !b.in() {
		return 0, b.closedErr("recover")
	}
	defer b.out()
	if err := b.check("recover"); err != nil {
		return 0, err
	}
	before, _ := b.heap.Stats()
	var all []error
	queued := map[mem.Off]bool{}
	var abandoned []*channel.Entry
	named := map[mem.Off]bool{} // doorbells that channels name
	var cleared time.Time       // when the walk had taken dead doorbells out of the channels
	// First, removals that a process died in the middle of: what they had
	// not freed yet is still queued in their channels, which the walk of
	// ready channels does not see. The walk and the freeing of dead
	// processes' records run in the same critical section of the registry
	// lock, so that no removal begins (and dies) in between
	// (channel.Registry.FinishRemovals).
	_, err = b.reg.FinishRemovals(context.Background(), func() error {
		werr := b.reg.Each(func(en *channel.Entry) error {
			ops := channelTypes[en.Type]
			// First, whatever else fails for this channel: dead processes'
			// doorbells that no channel names are freed below.
			if ops.bell != nil {
				if d := ops.bell(b, en); d != 0 {
					named[d] = true
				}
			}
			if ops.repair != nil {
				if err := ops.repair(b, en); err != nil {
					return fmt.Errorf("%s channel %d: %w", en.Type, en.ID, err)
				}
			}
			if ops.pending != nil {
				pending, err := ops.pending(b, en)
				if !en.Valid() {
					return nil // removed while we read it: what we read was freed memory
				}
				if err != nil {
					return fmt.Errorf("%s channel %d: %w", en.Type, en.ID, err)
				}
				for _, off := range pending {
					queued[off] = true
				}
			}
			if ops.abandoned != nil && ops.abandoned(b, en) {
				abandoned = append(abandoned, en)
			}
			return nil
		})
		if werr == nil {
			// Every channel was seen: the dead doorbells none names can
			// go (not after a walk that failed somewhere: one it did
			// not see may still name one, and a late ring would land
			// in reused memory; a later Recover frees them).
			cleared = time.Now()
		}
		// A walk that failed (a damaged registry, or a channel whose
		// queue could not be read) may have missed queued records:
		// then no record is freed, rather than one still queued.
		_, rerr := b.recs.recover(queued, werr != nil)
		return errors.Join(werr, b.recoverExtents(), rerr)
	})
	all = append(all, err)
	if !cleared.IsZero() {
		all = append(all, b.freeDeadBells(named, cleared))
	}
	for _, en := range abandoned {
		ops := channelTypes[en.Type]
		cond := func() bool { return ops.abandoned(b, en) }
		var free func() error
		if ops.free != nil {
			free = func() error { return ops.free(b, en) }
		}
		_, err := b.reg.Remove(context.Background(), en, cond, free)
		all = append(all, err)
	}
	// What came back, whatever gave it back (records, slabs, channel
	// control blocks and the memory channel types free).
	if after, err := b.heap.Stats(); err == nil && after.FreeBytes > before.FreeBytes {
		reclaimed = after.FreeBytes - before.FreeBytes
	}
	if err := errors.Join(all...); err != nil {
		return reclaimed, fmt.Errorf("ipc: recover %q: %w", b.name, err)
	}
	return reclaimed, nil
}
