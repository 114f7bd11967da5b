package channel

import (
	"context"
	"encoding/binary"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/heapipc/ipc/alloc"
	"github.com/heapipc/ipc/backend"
	"github.com/heapipc/ipc/internal/mem"
	"github.com/heapipc/ipc/internal/sys"
)

// Values of a waiting word (ConsWaiting, ProdWaiting): who is parked and
// where. The waker reads it on every publish; it is nonzero only while a
// waiter is (about to be) parked, or announced, so a busy peer pays no
// syscall.
//
// waitSoon is the record channel's (see publish): the waiter may park
// soon, and a publisher that sees it stores its index again with a fence
// before it looks for a parked waiter. A record channel's waiting word is
// waitSoon for the last announceLead of a waiter's spin, from a wake-up
// until the woken waiter settles it back to idle, and all the time an end
// that spins less than announceLead is open.
const (
	waitSelf  = 1 // parked on the waiting word itself
	waitBell  = 2 // parked on the doorbell the control block names
	waitSoon  = 3 // announced: may park soon (record channels)
	waitLocal = 4 // parked in this process's scheduler (record channels; local.go)
)

// notify is the waker's side: if a waiter announced itself, clear the
// announcement and wake it where it is parked.
func notify(buf []byte, waiting *atomic.Uint32, bell *atomic.Uint64) {
	if waiting.Load() == 0 {
		return
	}
	switch waiting.Swap(0) {
	case waitSelf:
		backend.Wake(waiting, 1)
	case waitBell:
		ringBell(buf, bell.Load())
	}
}

// ringBell rings a doorbell and wakes its owner, if off still holds one:
// the ring is a CAS of the doorbell's whole word from idle to rung, both
// carrying the tag of its offset (bellTag), so that a producer that read
// the offset long ago (stopped for longer than BellGrace, say) and rings
// it after the doorbell was freed and its memory given to something else
// writes nothing there. An offset that is not a valid word (a hostile or
// stale value) is ignored too: the owner then notices at its next check
// interval.
func ringBell(buf []byte, off uint64) {
	if off == 0 {
		return
	}
	w, state, err := bellWords(buf, mem.Off(off))
	if err != nil {
		return
	}
	tag := bellTag(mem.Off(off))
	if w.CompareAndSwap(tag, tag|1) || w.Load() == tag|1 {
		backend.Wake(state, 1)
	}
}

// bellTag is the upper half of a doorbell's word at off (its lower half,
// the futex word, is 0 idle and 1 rung): derived from the offset alone, so
// that a ringer needs nothing but the offset, and never 0.
func bellTag(off mem.Off) uint64 {
	return (uint64(off)*0x9e3779b97f4a7c15>>32 | 1) << 32
}

// bellWords returns a doorbell's word at off and its futex half (the
// lower half of the number: the first four bytes on a little-endian
// machine, the last four on a big-endian one).
func bellWords(buf []byte, off mem.Off) (*atomic.Uint64, *atomic.Uint32, error) {
	w, err := mem.Uint64(buf, off)
	if err != nil {
		return nil, nil, err
	}
	state, err := mem.Uint32(buf, off+bellStateAt)
	if err != nil {
		return nil, nil, err
	}
	return w, state, nil
}

// bellStateAt is where in a doorbell's word its lower half lies.
var bellStateAt = func() mem.Off {
	var b [8]byte
	binary.NativeEndian.PutUint64(b[:], 1)
	if b[0] == 1 {
		return 0
	}
	return 4
}()

// Doorbell is one consumer's wake-up word in shared memory: every channel
// the consumer waits on knows its offset, so a producer in any process
// wakes it with one futex wake, and only when it is parked.
type Doorbell struct {
	heap  *alloc.Heap
	off   mem.Off
	w     *atomic.Uint64 // the tag (bellTag) and the state
	state *atomic.Uint32 // the word's lower half: 0 idle, 1 rung (the futex word)
}

// NewDoorbell allocates a doorbell from the heap (alloc.KindDoorbell),
// owned by this process: if it dies with the doorbell, the buffer's
// Recover frees it, once LiveDoorbell has taken it out of the
// channels that name it and a grace period has passed.
func NewDoorbell(heap *alloc.Heap, buf []byte) (*Doorbell, error) {
	off, err := heap.AllocFor(context.Background(), mem.CacheLine, alloc.KindDoorbell, sys.Self())
	if err != nil {
		return nil, fmt.Errorf("doorbell: %w", err)
	}
	w, state, err := bellWords(buf, off)
	if err != nil {
		heap.Free(off)
		return nil, err
	}
	d := &Doorbell{heap: heap, off: off, w: w, state: state}
	d.Reset()
	return d, nil
}

// Off is the doorbell's region offset.
func (d *Doorbell) Off() mem.Off { return d.off }

// Reset clears the doorbell before the owner arms its channels.
func (d *Doorbell) Reset() { d.w.Store(bellTag(d.off)) }

// Park waits until the doorbell rings, ctx is done, or timeout passes.
func (d *Doorbell) Park(ctx context.Context, timeout time.Duration) error {
	return backend.Park(ctx, d.state, 0, timeout)
}

// Free gives the doorbell's memory back.
func (d *Doorbell) Free() error { return d.heap.Free(d.off) }

// Selectable is a receiving end a consumer can wait on together with
// others through one Doorbell.
type Selectable interface {
	// Ready reports whether a receive would not block.
	Ready() bool
	// SetDoorbell registers (off != 0) or removes (0) the doorbell.
	SetDoorbell(off mem.Off)
	// Announce says that the consumer may park soon: Select announces
	// its ends before it spins (a record channel's producer then fences
	// its publications; see publish). Arm announces that the consumer
	// is about to park on the doorbell; a producer that publishes then
	// rings it. Disarm withdraws both.
	Announce()
	Arm()
	Disarm()
	// CheckPeer reports a dead producer or a destroyed buffer.
	CheckPeer() error
}

// Spin calls done until it returns true or d has passed.
func Spin(d time.Duration, done func() bool) bool { return spin(d, done) }

// liveBell clears a control block's doorbell word if it names the
// doorbell of a process that has died, and returns the doorbell the word
// names then (0: none). The
// buffer's Recover does this before it frees dead processes' doorbells,
// so that no producer rings a word that has become someone else's
// memory: a producer rings the doorbell its word names only after taking
// the waiting flag, and a zero word is not rung. (ConsWaiting is left as
// it is: a live consumer that took the end over may be arming it.)
//
// The check and the CAS are made under the heap lock, so that the dead
// doorbell cannot be freed and handed out again as a live consumer's new
// doorbell at the same offset in between (another Recover running at the
// same time), which would clear a live Select's word.
func liveBell(heap *alloc.Heap, w *atomic.Uint64, valid func() bool) mem.Off {
	if d := w.Load(); d != 0 {
		heap.WithExtent(mem.Off(d), func(e alloc.Extent) {
			// valid: the channel's control block, where w is, cannot be
			// freed while the heap lock is held; it may have been before.
			if e.Owner != 0 && e.Kind == alloc.KindDoorbell && !sys.Alive(e.Owner) && valid() {
				w.CompareAndSwap(d, 0)
			}
		})
	}
	return mem.Off(w.Load())
}

// LiveDoorbell takes a dead process's doorbell out of the record channel
// and returns the doorbell it names then (see liveBell), for Recover.
// valid reports whether the channel's registry entry is still valid.
func (r *Ring) LiveDoorbell(heap *alloc.Heap, valid func() bool) mem.Off {
	return liveBell(heap, &r.cb.Doorbell, valid)
}

// LiveDoorbell takes a dead process's doorbell out of the MPSC channel
// and returns the doorbell it names then (see liveBell), for Recover.
func (m *MPSC) LiveDoorbell(heap *alloc.Heap, valid func() bool) mem.Off {
	return liveBell(heap, &m.cb.Doorbell, valid)
}

// BellGrace is how long a doorbell that no channel names any more is kept
// before its memory is freed: a producer that read its offset just before
// the word was cleared has rung it by then (a few instructions, unless
// the producer is descheduled right there). One that rings later finds
// no doorbell there and writes nothing (ringBell), or, if a new doorbell
// was made at the same offset, wakes its owner for nothing.
const BellGrace = 5 * time.Millisecond

// Interrupt wakes the threads of this process parked on the doorbell (as
// a ring does), so that they look again at what they wait for: a closing
// buffer, say.
func (d *Doorbell) Interrupt() {
	d.w.Store(bellTag(d.off) | 1)
	backend.Wake(d.state, 0)
}
