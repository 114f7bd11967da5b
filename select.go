package ipc

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/heapipc/ipc/channel"
)

// Receiver is a receiving end a Select can wait on: *Consumer or
// *MPSCConsumer.
type Receiver interface {
	ID() ChannelID
	tryReceive() (Record, error)
	selectable() channel.Selectable
	// endClosed: a closed end's control block may have been freed with
	// its channel, so a Select must not touch its words any more.
	endClosed() bool
	end() *recvEnd
	buffer() *Buffer
}

func (c *Consumer) tryReceive() (Record, error)        { return c.TryReceive() }
func (c *Consumer) selectable() channel.Selectable     { return c.c }
func (c *MPSCConsumer) tryReceive() (Record, error)    { return c.TryReceive() }
func (c *MPSCConsumer) selectable() channel.Selectable { return c.c }
func (c *Consumer) endClosed() bool                    { return c.closed }
func (c *MPSCConsumer) endClosed() bool                { return c.closed }
func (c *Consumer) end() *recvEnd                      { return &c.recvEnd }
func (c *MPSCConsumer) end() *recvEnd                  { return &c.recvEnd }
func (c *Consumer) buffer() *Buffer                    { return c.h.buf }
func (c *MPSCConsumer) buffer() *Buffer                { return c.h.buf }

// Select waits on many receiving ends at once (fan-in). Every end knows
// the Select's doorbell, a word in shared memory: a producer in any
// process that publishes while the Select is parked wakes it with one
// futex wake, and pays nothing when it is not parked. Receive serves the
// ends round-robin, so no input starves. A Select belongs to the goroutine
// that owns its ends. Its handle's Close closes it too (as it closes the
// handle's channel ends), so a Select that was never closed gives its
// doorbell back when its handle closes, at the latest when the buffer
// does.
type Select struct {
	h     *Handle
	bell  *channel.Doorbell
	wake  *channel.Doorbell // bell, never cleared: for interrupt, from Buffer.Close's goroutine
	cases []Receiver
	next  int
	poll  int // where spinPoll looks next
	spin  time.Duration
	parks int // how many times Receive parked (for tests)
	// calls counts Receive's calls, and checked is when the ends'
	// producers were last looked at (checkPeers): a Select that never
	// parks for a whole check interval, because one end always has a
	// record, still reports another end's dead producer (checkDue).
	calls   uint32
	checked time.Time
}

// selectCheckEvery is how many calls of Receive read the clock once, to
// see whether a check interval has passed since the ends' producers were
// last looked at.
const selectCheckEvery = 256

// testSelectBeforePark, if set (by tests), runs when Receive has armed its
// ends and found none ready, just before it parks.
var testSelectBeforePark func()

// NewSelect returns a Select over the given ends (more can be added).
func (h *Handle) NewSelect(rs ...Receiver) (*Select, error) {
	if !h.in() {
		return nil, h.closedErr("new select")
	}
	defer h.out()
	if err := h.check("select"); err != nil {
		return nil, err
	}
	bell, err := h.buf.takeBell()
	if err != nil {
		return nil, fmt.Errorf("ipc: select: %w", err)
	}
	s := &Select{h: h, bell: bell, wake: bell, spin: channel.DefaultSpin}
	if err := h.addEnd(s); err != nil {
		// The handle closed meanwhile: the doorbell goes back.
		return nil, errors.Join(err, h.buf.putBell(bell))
	}
	for _, r := range rs {
		if err := s.Add(r); err != nil {
			s.Close()
			return nil, err
		}
	}
	return s, nil
}

// Add puts an end in the set (cheap: one store in its control block).
// ErrClosed: the Select or the end is closed. ErrInvalidArgument: the end
// is in the set already, or is an end of another Buffer (its producers
// ring doorbells in their own buffer). ErrBusy: the end is in another
// Select (an end has one doorbell: Remove it there first).
func (s *Select) Add(r Receiver) error {
	if !s.h.in() {
		return s.h.closedErr("add")
	}
	defer s.h.out()
	if s.bell == nil {
		return fmt.Errorf("ipc: select: %w", ErrClosed)
	}
	if slices.Contains(s.cases, r) {
		return fmt.Errorf("ipc: select: channel %d is already in the set: %w", r.ID(), ErrInvalidArgument)
	}
	if r.endClosed() {
		return fmt.Errorf("ipc: select: channel %d: %w", r.ID(), ErrClosed)
	}
	if r.buffer() != s.h.buf {
		return fmt.Errorf("ipc: select: channel %d is an end of another Buffer: %w", r.ID(), ErrInvalidArgument)
	}
	if e := r.end(); e.sel != nil {
		return fmt.Errorf("ipc: select: channel %d is in another Select: %w", r.ID(), ErrBusy)
	}
	r.selectable().SetDoorbell(s.bell.Off())
	r.end().sel = s
	s.cases = append(s.cases, r)
	return nil
}

// Remove takes an end out of the set.
func (s *Select) Remove(r Receiver) {
	if !s.h.in() {
		return
	}
	defer s.h.out()
	if i := slices.Index(s.cases, r); i >= 0 {
		if !r.endClosed() {
			r.selectable().Disarm()
			r.selectable().SetDoorbell(0)
		}
		r.end().sel = nil
		s.cases = slices.Delete(s.cases, i, i+1)
		if s.next > i {
			s.next--
		}
	}
}

// Len is the number of ends in the set.
func (s *Select) Len() int { return len(s.cases) }

func (s *Select) anyReady() bool {
	for _, c := range s.cases {
		if !c.endClosed() && c.selectable().Ready() {
			return true
		}
	}
	return false
}

// spinPollEnds is how many ends one call of spinPoll looks at.
const spinPollEnds = 8

// spinPoll is the done func of Receive's spin: it looks at the next
// spinPollEnds ends (in turn, wrapping), not at all of them, so that the
// spin's yields (every 64 calls: see channel.Spin) come after about as
// many looks at an end in a Select of many ends as in one of a few. With
// a full look over 64 ends per call, a producer goroutine that the
// Select's own goroutine had just made runnable on its P (an
// acknowledgement sent on a Go channel, say) waited tens of microseconds
// to run: BenchmarkSelect64/parked, a record at a time, took 23-25 µs a
// record, and 6.1-6.8 µs with spinPoll.
func (s *Select) spinPoll() bool {
	n := len(s.cases)
	for range min(n, spinPollEnds) {
		if s.poll >= n {
			s.poll = 0
		}
		c := s.cases[s.poll]
		s.poll++
		if !c.endClosed() && c.selectable().Ready() {
			return true
		}
	}
	return false
}

// Receive waits until one of the ends has a record (or its end of stream,
// or an error) and returns that end with what it received: a record,
// io.EOF (that end is finished: Remove it), ErrPeerDead (its producer
// died), or ctx's error (with a nil Receiver). ErrClosed: the Select is
// closed (Close, or its handle's).
func (s *Select) Receive(ctx context.Context) (Receiver, Record, error) {
	if !s.h.in() {
		return nil, Record{}, s.h.closedErr("receive")
	}
	defer s.h.out()
	if s.bell == nil {
		return nil, Record{}, fmt.Errorf("ipc: select: %w", ErrClosed)
	}
	n := len(s.cases)
	if n == 0 {
		return nil, Record{}, fmt.Errorf("ipc: select: no channels: %w", ErrInvalidArgument)
	}
	if s.calls++; s.calls%selectCheckEvery == 0 && time.Since(s.checked) >= s.h.buf.cfg.interval() {
		if c, err := s.checkPeers(); err != nil {
			return c, Record{}, err
		}
	}
	for {
		for i := 0; i < n; i++ {
			idx := (s.next + i) % n
			c := s.cases[idx]
			r, err := c.tryReceive()
			if errors.Is(err, ErrWouldBlock) {
				continue
			}
			s.next = idx + 1
			return c, r, err
		}
		// The ends are announced for the end of the spin (a record
		// channel's producer then fences what it publishes: see the
		// channel package's publish).
		if channel.SpinAnnounced(s.spin, time.Now(), s.announce, s.spinPoll) {
			s.disarm()
			continue
		}
		s.bell.Reset()
		for _, c := range s.cases {
			if !c.endClosed() {
				c.selectable().Arm()
			}
		}
		if s.anyReady() {
			s.disarm()
			continue
		}
		s.parks++
		if testSelectBeforePark != nil {
			testSelectBeforePark()
		}
		err := s.bell.Park(ctx, s.h.buf.cfg.interval())
		s.disarm()
		if err != nil && !errors.Is(err, ErrTimeout) {
			return nil, Record{}, fmt.Errorf("ipc: select: %w", err)
		}
		if err != nil {
			// A check interval passed: look for dead producers.
			if c, err := s.checkPeers(); err != nil {
				return c, Record{}, err
			}
		}
	}
}

// checkPeers looks at the producers of the ends: the first end (from
// the last one served on) whose producer died or whose buffer is going
// and that has no record left is returned with ErrPeerDead (or what else
// its CheckPeer said); an end with records left is served first.
func (s *Select) checkPeers() (Receiver, error) {
	s.checked = time.Now()
	n := len(s.cases)
	for i := range n {
		idx := (s.next + i) % n
		c := s.cases[idx]
		if c.endClosed() {
			continue
		}
		if perr := c.selectable().CheckPeer(); perr != nil && !c.selectable().Ready() {
			s.next = idx + 1
			return c, fmt.Errorf("ipc: select on channel %d: %w", c.ID(), perr)
		}
	}
	return nil, nil
}

func (s *Select) announce() {
	for _, c := range s.cases {
		if !c.endClosed() {
			c.selectable().Announce()
		}
	}
}

func (s *Select) disarm() {
	for _, c := range s.cases {
		if !c.endClosed() {
			c.selectable().Disarm()
		}
	}
}

// Close takes every end out of the set and gives the doorbell back to
// the buffer (for the next Select; the buffer's Close frees it). The ends
// stay open.
func (s *Select) Close() error {
	if !s.h.in() {
		return nil
	}
	defer s.h.out()
	if s.bell == nil {
		return nil
	}
	s.h.dropEnd(s)
	return s.close()
}

// close is Close without leaving the handle's set of ends (the handle's
// close, which has emptied it, calls it).
func (s *Select) close() error {
	for _, c := range s.cases {
		if !c.endClosed() { // a closed end cleared its doorbell word itself
			c.selectable().Disarm()
			c.selectable().SetDoorbell(0)
		}
		c.end().sel = nil
	}
	s.cases = nil
	if s.bell == nil {
		return nil
	}
	err := s.h.buf.putBell(s.bell)
	s.bell = nil
	return err
}

// takeBell gives a Select a doorbell: one that a closed Select of this
// buffer gave back, or a new one. A producer that read an old doorbell's
// offset just before its Select took it out of the channels may still
// ring it: for the new owner that is a spurious wake-up, which a Select
// handles. Freeing the doorbell at once instead would let that ring land
// in memory the heap has handed out again.
func (b *Buffer) takeBell() (*channel.Doorbell, error) {
	b.mu.Lock()
	if n := len(b.bells); n > 0 {
		d := b.bells[n-1]
		b.bells = b.bells[:n-1]
		b.mu.Unlock()
		d.Reset()
		return d, nil
	}
	b.mu.Unlock()
	return channel.NewDoorbell(b.heap, b.region.Bytes())
}

// putBell keeps a closed Select's doorbell for the next one, or for the
// buffer's Close to free (Selects its handles' Close closes come back
// while it closes them).
func (b *Buffer) putBell(d *channel.Doorbell) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.bellsFreed {
		// The buffer's Close has freed the doorbells given back, or is
		// doing it: this one stays allocated, owned by this process,
		// and a Recover after it exits frees it.
		return fmt.Errorf("ipc: select close: %w", ErrClosed)
	}
	b.bells = append(b.bells, d)
	b.bellsAt = time.Now()
	return nil
}

// freeBells frees the doorbells closed Selects gave back, once
// channel.BellGrace has passed since the last of them was (Close).
func (b *Buffer) freeBells() error {
	b.mu.Lock()
	bells, at := b.bells, b.bellsAt
	b.bells, b.bellsFreed = nil, true
	b.mu.Unlock()
	if len(bells) == 0 {
		return nil
	}
	if d := channel.BellGrace - time.Since(at); d > 0 {
		time.Sleep(d)
	}
	var all []error
	for _, d := range bells {
		all = append(all, d.Free())
	}
	return errors.Join(all...)
}
