package ipc

import (
	"context"
	"errors"
	"fmt"
	"unsafe"

	"github.com/heapipc/ipc/channel"
	"github.com/heapipc/ipc/internal/mem"
	"github.com/heapipc/ipc/slab"
)

// The fused batch forms: SendEach and ReceiveEach do a record's whole
// work in one pass over the batch, calling the caller's code on each
// record in that pass, where AllocateBatch, SendBatch, ReceiveBatch and
// FreeBatch each take a pass of their own over a batch of Records (and
// the caller one more, writing or reading them). No Record is handed out,
// so neither side checks again what it wrote itself: SendEach writes each
// record's trailer as it fills it and queues it without the check Send
// makes of a Record a caller gives it, and ReceiveEach frees each record
// it took without the checks FreeBatch makes of a Record a caller gives
// back.

// eachChunk is how many records SendEach allocates, fills and queues at
// a time: the batch the record channel's benchmarks use, which spans a
// few KiB of records (in the L1 cache while they are filled) and one
// publication of the tail per 64 records.
const eachChunk = 64

// eachScratch is the Producer's or Consumer's scratch for its fused
// batch form: its own, not the handle's, so that the caller's code may
// use the handle (allocate, free, other channels) meanwhile. busy
// refuses a call of the same form from that code.
type eachScratch struct {
	raw   []uint64 // ring slots
	offs  []mem.Off
	recs  []Record
	sizes []uint32
	keys  []uint32
	runs  []slab.Run
	// carving is SendEach's current slab.Carving (here so that a panic
	// in fill leaves it where the cleanup finds it); cursor is
	// ReceiveEach's (receiveFused).
	carving slab.Carving
	cursor  slab.RunCursor
	busy    bool
}

func (e *eachScratch) grow(n int) {
	if cap(e.raw) >= n {
		return
	}
	*e = eachScratch{
		raw:   make([]uint64, n),
		offs:  make([]mem.Off, n),
		recs:  make([]Record, n),
		sizes: make([]uint32, n),
		keys:  make([]uint32, n),
		runs:  make([]slab.Run, 0, n),
		busy:  e.busy,
	}
}

var errEachBusy = fmt.Errorf("called again from its own callback: %w", ErrBusy)

// SendEach sends n records of size bytes each, in order: for record i
// (0 ≤ i < n) it allocates the record, calls fill(i, b) with its bytes
// (not zeroed) and queues it, 64 records at a time, waiting for room in
// the ring as Send does. It returns how many records it sent and an
// error if not all were: ErrNoSpace (the buffer is full), ErrPeerDead,
// ErrClosed, ErrDestroyed or ctx's error. fill is called only for records
// that the ring has room for, so it is called for exactly the records
// sent unless an error ends the call while a chunk waits to be queued (a
// fill that itself sends on this producer takes that room); records
// filled and not sent are freed.
//
// b is the record's memory: fill writes it and returns; it must not keep
// b, which belongs to the consumer once queued. fill runs inside the
// call: it may use the handle (allocate, free, send on other channels)
// but must not call SendEach on this producer (ErrBusy) nor close the
// producer, its handle or the buffer (Close waits for this call to end,
// as for a stream's ReadFrom). If fill panics, the chunk's records are
// freed and the panic goes on.
//
// The records are what Allocate and Send would make one by one; only the
// passes differ: each small record is carved (its slab header written)
// as it is filled, in one pass over the chunk's memory (see the
// benchmarks' SendEach form in tests/).
func (p *Producer) SendEach(ctx context.Context, n, size int, fill func(i int, b []byte)) (int, error) {
	const op = "send each"
	h := p.h
	if !h.in() {
		return 0, h.closedErr(op)
	}
	defer h.out()
	switch {
	case p.closed:
		return 0, p.wrap(op, ErrClosed)
	case n < 0 || !payloadOK(size):
		return 0, p.wrap(op, fmt.Errorf("%d records of %d bytes: %w", n, size, ErrInvalidSize))
	case fill == nil:
		return 0, p.wrap(op, fmt.Errorf("nil fill: %w", ErrInvalidArgument))
	case p.each.busy:
		return 0, p.wrap(op, errEachBusy)
	}
	if err := h.check(op); err != nil {
		return 0, err
	}
	p.each.busy = true
	defer func() { p.each.busy = false }()
	p.each.grow(eachChunk)
	sent := 0
	for sent < n {
		want := min(n-sent, eachChunk)
		room := p.p.Room(want)
		if room == 0 {
			if err := p.p.WaitRoom(ctx); err != nil {
				return sent, p.wrap(op, err)
			}
			continue
		}
		k, err := p.sendChunk(ctx, sent, min(n-sent, eachChunk, room), size, fill)
		sent += k
		if err != nil {
			return sent, p.wrap(op, err)
		}
	}
	return sent, nil
}

// sendChunk is SendEach for k records, numbered from first, for which the
// ring has room: it allocates them, fills each as it writes its trailer
// and queues them. It returns how many it queued; the others are freed.
// Small records are carved as they are filled (carveEach): one pass over
// their memory; large ones are allocated first (AllocBatch).
func (p *Producer) sendChunk(ctx context.Context, first, k, size int, fill func(int, []byte)) (sent int, err error) {
	sh, e := p.h.sh, &p.each
	rs := sh.rs
	as := allocSize(size)
	offs, slots := e.offs[:k], e.raw[:k]
	if uint64(rs.hi)>>channel.SlotOffBits != 0 {
		return 0, fmt.Errorf("buffer beyond what a ring slot can name: %w", ErrNotSupported)
	}
	// made: how many records of offs exist (allocated, carved); the
	// current carving's records are made from done on, cv.Len() of its
	// size left to carve.
	made, done, size0 := 0, 0, 0
	cv := &e.carving
	*cv = slab.Carving{}
	// Whatever is not queued when this returns (or fill panics) is
	// freed: the carving's records are carved first.
	defer func() {
		if n := done + (size0 - cv.Len()); n > made {
			made = n
		}
		made += cv.Rest(offs[made:])
		if sent < made {
			if ferr := rs.pool.FreeBatch(offs[sent:made]); ferr != nil {
				err = errors.Join(err, ferr)
			}
		}
	}()
	if as > rs.pool.MaxSmall() {
		p.h.enter() // the handle's own state: not across fill
		got, err := sh.h.AllocBatch(as, offs)
		if err != nil {
			p.h.leave()
			return 0, p.allocFailed(offs[:got], k, size, err)
		}
		made = got
		p.h.leave()
		fillEach(rs, offs, slots, first, size, fill)
	} else {
		for done < k {
			p.h.enter()
			err := sh.h.Reserve(as, k-done, cv)
			if err != nil {
				p.h.leave()
				m := made
				made, done = 0, 0 // freed here, not by the cleanup
				return 0, p.allocFailed(offs[:m], k, size, err)
			}
			p.h.leave()
			size0 = cv.Len()
			carveEach(rs, cv, offs[done:], e.keys[done:k], slots[done:], first+done, size, fill)
			done += size0
			made, size0 = done, 0
		}
	}
	for sent < k {
		m, err := p.p.TrySendBatch(slots[sent:])
		sent += m
		if err != nil {
			return sent, err
		}
		if m == 0 {
			if err := p.p.WaitRoom(ctx); err != nil {
				return sent, err
			}
		}
	}
	return sent, nil
}

// allocFailed is sendChunk's cleanup when allocation fails (err) with
// the records offs made: they are freed, and then the handle's spares
// that are all free go back to the heap (the slabs the chunk filled too).
func (p *Producer) allocFailed(offs []mem.Off, k, size int, err error) error {
	ferr := p.h.sh.rs.pool.FreeBatch(offs)
	p.h.enter()
	p.h.sh.h.Trim()
	p.h.leave()
	return fmt.Errorf("allocate %d records of %d bytes: %w", k, size, errors.Join(err, ferr))
}

// carveEach is sendChunk's pass over a carving: it carves its records
// and writes their trailers, marked queued (not handed out yet: plain
// stores), in one loop (slab.Carving.Stamp, which puts their offsets in
// offs and their keys, unused here, in keys), then calls fill with each
// record's number and bytes (size payload bytes) and puts its ring slot
// in slots (the caller checked that every offset fits one, and that
// offs, keys and slots hold the carving).
func carveEach(rs *records, cv *slab.Carving, offs []mem.Off, keys []uint32, slots []uint64, first, size int, fill func(int, []byte)) {
	b := rs.b
	tr := trailer{Holder: uint64(rs.self), Len: uint32(size), Magic: queuedMagic}
	l := slotLen(size)
	// The headers and trailers first, in one loop with no call (a
	// carving's headers go over two words, a record's trailer is 16
	// bytes further on), then each record filled.
	tw := *(*[2]uint64)(unsafe.Pointer(&tr))
	n := cv.Stamp(offs[:cv.Len()], keys[:cv.Len()], tw[0], tw[1])
	offs, slots = offs[:n], slots[:n]
	for i, off := range offs {
		o := uint64(off)
		fill(first+i, b[o:o+uint64(size):o+uint64(size)])
		slots[i] = o | l<<channel.SlotOffBits
	}
}

// slotLen is the length field of the ring slots of records of size
// payload bytes: SlotLenNone for a length the field cannot hold
// (consumers locate such records in full), as channel.PackSlot does.
func slotLen(size int) uint64 { return uint64(min(size, channel.SlotLenNone)) }

// fillEach is sendChunk's pass for records allocated first (large ones):
// for each record of offs (allocated, size payload bytes) it writes the
// trailer, marked queued (not handed out yet: plain stores), calls fill
// with the record's number and bytes, and puts its ring slot in slots
// (the caller checked that every offset fits one).
func fillEach(rs *records, offs []mem.Off, slots []uint64, first, size int, fill func(int, []byte)) {
	ts, b := rs.trailers, rs.b
	tr := trailer{Holder: uint64(rs.self), Len: uint32(size), Magic: queuedMagic}
	l, as := slotLen(size), uint64(allocSize(size))
	slots = slots[:len(offs)]
	for i, off := range offs {
		o := uint64(off)
		ts[(o+as)/trailerSize-1] = tr
		fill(first+i, b[o:o+uint64(size):o+uint64(size)])
		slots[i] = o | l<<channel.SlotOffBits
	}
}

// ReceiveEach waits as Receive does until at least one record is queued,
// then takes up to limit of them and, for each in order, calls use with
// its bytes and frees it when use returns. It returns how many records
// it delivered, io.EOF once the producer has closed and everything is
// received, ErrPeerDead, ErrClosed, ErrDestroyed or ctx's error. A queued
// record that fails its check is taken off the channel and reported in
// the error (use gets the others).
//
// b is valid only while use runs: the record is freed when use returns
// (to keep a record, or send it on, use ReceiveBatch or Receive). use
// runs inside the call: it may use the handle (allocate, free, other
// channels) but must not call ReceiveEach on this consumer (ErrBusy) nor
// close the consumer, its handle or the buffer (Close waits for this
// call to end). If use panics, the records of the batch are freed and
// the panic goes on. The records are off the channel before use sees
// them: a process killed meanwhile leaves them to Recover, not queued.
//
// Records that a producer end of this process sent (in-process channels)
// are checked, delivered and freed in one pass, each as use gets it; the
// head moves past them first, since this process holds them already.
// Another process's records are taken first (checked, this process
// written in as their holder), the head moved past them, and then
// delivered and freed.
func (c *Consumer) ReceiveEach(ctx context.Context, limit int, use func(b []byte)) (int, error) {
	const op = "receive each"
	h := c.h
	if !h.in() {
		return 0, h.closedErr(op)
	}
	defer h.out()
	switch {
	case c.closed:
		return 0, c.wrap(op, ErrClosed)
	case use == nil:
		return 0, c.wrap(op, fmt.Errorf("nil use: %w", ErrInvalidArgument))
	case c.each.busy:
		return 0, c.wrap(op, errEachBusy)
	case limit <= 0:
		return 0, nil
	}
	c.each.busy = true
	defer func() { c.each.busy = false }()
	k := min(limit, c.c.Cap())
	c.each.grow(k)
	// Records taken ahead and not delivered are still at the head:
	// taken again below.
	if err := c.dropAhead(); err != nil {
		return 0, c.wrap(op, err)
	}
	for {
		n, err := c.c.PeekBatch(c.each.raw[:k])
		if err != nil {
			return 0, c.wrap(op, err)
		}
		if n > 0 {
			d, err := c.receiveChunk(n, use)
			return d, c.wrap(op, err)
		}
		if err := c.c.WaitData(ctx); err != nil {
			return 0, c.wrap(op, err)
		}
	}
}

// receiveChunk is ReceiveEach for the n slots PeekBatch put in the
// scratch: it takes the records (the consumer their holder), moves the
// head past them, then delivers and frees each.
func (c *Consumer) receiveChunk(n int, use func([]byte)) (delivered int, err error) {
	if c.c.SentHere() {
		return c.receiveFused(n, use)
	}
	sh, e := c.h.sh, &c.each
	rs := sh.rs
	slots, recs, offs := e.raw[:n], e.recs[:n], e.offs[:n]
	c.h.enter() // the handle's own state: not across use
	runs, ok := sh.takeRecords(slots, recs, offs, e.sizes[:n], e.keys[:n], e.runs[:0], false)
	c.h.leave()
	e.runs = runs
	if !ok {
		return c.receiveSlow(slots, recs, use, false)
	}
	c.c.Advance(n)
	// If use panics, every record of the batch gets its freed mark
	// (again, for those use saw) and all are freed before the panic goes
	// on.
	defer func() {
		if delivered < n {
			markFreed(rs, offs, e.sizes[:n], e.keys[:n])
			_ = rs.pool.FreeRuns(runs, offs)
		}
	}()
	delivered = useEach(rs, recs, e.sizes[:n], e.keys[:n], use)
	return delivered, rs.pool.FreeRuns(runs, offs)
}

// receiveFused is receiveChunk for records that this process holds, or
// whose holder died (RecordConsumer.SentHere): the head moves past them
// first — a process killed from then on leaves them held by a dead
// process and not queued, which Recover frees — and then each record is
// checked (as takeRecords checks it), delivered and marked freed in one
// pass over the records' memory (useFused), and the records' bits are
// set by their runs. A record that fails a check, and the ones after it,
// are taken one by one as receiveSlow takes them.
func (c *Consumer) receiveFused(n int, use func([]byte)) (delivered int, err error) {
	rs, e := c.h.sh.rs, &c.each
	slots, offs, keys := e.raw[:n], e.offs[:n], e.keys[:n]
	c.c.Advance(n)
	cur := &e.cursor
	cur.Reset(rs.pool, e.runs)
	fused := false
	defer func() {
		runs := cur.Runs()
		e.runs = runs[:0]
		if fused {
			return
		}
		// use panicked on the last record the cursor took: it gets its
		// freed mark, the records so far are freed by their runs, and
		// the ones after it one by one (they were never checked).
		m := 0
		for _, r := range runs {
			m += r.Count
		}
		if m > 0 {
			s := slots[m-1]
			rs.trailers[(uint64(offs[m-1])+uint64(slotAlloc(s)))/trailerSize-1].Magic = freedMark(keys[m-1])
		}
		_ = rs.pool.FreeRuns(runs, offs[:m])
		for _, s := range slots[m:] {
			if r, err := rs.take(s); err == nil {
				_ = rs.free(r)
			}
		}
	}()
	k := useFused(rs, cur, slots, offs, keys, use)
	fused = true
	err = rs.pool.FreeRuns(cur.Runs(), offs[:k])
	if k == n {
		return k, err
	}
	d, serr := c.receiveSlow(slots[k:], e.recs[:n-k], use, true)
	return k + d, errors.Join(err, serr)
}

// slotAlloc is the allocation size of the record of a ring slot that
// has its length.
func slotAlloc(s uint64) int { return allocSize(int(s >> channel.SlotOffBits)) }

// useFused is receiveFused's pass: for each record of slots, in order, it
// checks the trailer (magic, length, this process the holder) and the
// header (cur, which gathers the records' runs and gives their header
// checks, the keys of their freed marks), calls use with its bytes and
// writes its freed mark; offs and keys get the records' offsets and
// keys. It returns how many records it delivered: all, or up to the
// first that fails a check (not in cur's runs; it does not return if use
// panics, the record being the last in cur's runs).
func useFused(rs *records, cur *slab.RunCursor, slots []uint64, offs []mem.Off, keys []uint32, use func([]byte)) int {
	ts, self := rs.trailers, uint64(rs.self)
	base := unsafe.Pointer(unsafe.SliceData(rs.b))
	offs, keys = offs[:len(slots)], keys[:len(slots)]
	for i := 0; i < len(slots); i++ {
		// The records that continue the cursor's run: their headers
		// checked with Span.Check, in the loop (no call but use's).
		if sp := cur.Span(); sp.Want != 0 {
			as, want, pos, j := uint64(sp.Size), sp.Want, sp.Pos, i
			for ; j < len(slots); j++ {
				off, l, ok := continues(slots[j], want, as, pos, &sp)
				if !ok {
					break
				}
				key, ok := sp.Check(pos)
				t := spanTrailer(base, off, as)
				if !ok || !takeable(t.Magic) || uint64(t.Len) != l || t.holder().Load() != self {
					break
				}
				offs[j], keys[j] = off, key
				// Located before use sees it: if use panics, the
				// record is the last of the cursor's runs.
				cur.Took(1)
				use(unsafe.Slice((*byte)(unsafe.Add(base, off)), l))
				t.Magic = freedMark(key)
				want += mem.Off(sp.Slot * 16)
				pos += sp.Slot
			}
			if i = j; i == len(slots) {
				break
			}
		}
		s := slots[i]
		off, l := channel.SlotOff(s), s>>channel.SlotOffBits
		if l >= channel.SlotLenNone {
			return i
		}
		as := slotSize(l)
		j := (uint64(off)+as)/trailerSize - 1
		if j >= uint64(len(ts)) {
			return i
		}
		t := &ts[j]
		if !takeable(t.Magic) || uint64(t.Len) != l || t.holder().Load() != self {
			return i
		}
		key, ok := cur.Next(off, uint32(as))
		if !ok {
			return i
		}
		offs[i], keys[i] = off, key
		use(unsafe.Slice((*byte)(unsafe.Add(base, off)), l))
		t.Magic = freedMark(key)
	}
	return len(slots)
}

// useEach is receiveChunk's pass: each record goes to use, and then gets
// its freed mark (as a free writes it; its bits are set after the pass).
// It returns len(recs) (it does not return if use panics).
func useEach(rs *records, recs []Record, sizes, keys []uint32, use func([]byte)) int {
	ts := rs.trailers
	sizes, keys = sizes[:len(recs)], keys[:len(recs)]
	for i := range recs {
		r := &recs[i]
		use(r.b)
		ts[(uint64(r.off())+uint64(sizes[i]))/trailerSize-1].Magic = freedMark(keys[i])
	}
	return len(recs)
}

// markFreed writes the freed mark into the trailers of the records at
// offs (sizes and keys as takeRecords found them).
func markFreed(rs *records, offs []mem.Off, sizes, keys []uint32) {
	for i, off := range offs {
		t := &rs.trailers[(uint64(off)+uint64(sizes[i]))/trailerSize-1]
		t.Magic = freedMark(keys[i])
	}
}

// receiveSlow is receiveChunk for a batch that failed the cheap checks:
// each record is taken as Receive takes one (a record that fails is
// reported, and stays as it is), the head moves past all of them (unless
// advanced: it has already), and each taken record is delivered and
// freed.
func (c *Consumer) receiveSlow(slots []uint64, recs []Record, use func([]byte), advanced bool) (int, error) {
	rs := c.h.buf.recs
	clear(recs)
	var all []error
	k := 0
	for _, s := range slots {
		r, err := rs.take(s)
		if err != nil {
			all = append(all, err)
			continue
		}
		recs[k] = r
		k++
	}
	if !advanced {
		c.c.Advance(len(slots))
	}
	i := 0
	defer func() {
		for ; i < k; i++ {
			_ = rs.free(recs[i])
		}
	}()
	for ; i < k; i++ {
		use(recs[i].b)
		if err := rs.free(recs[i]); err != nil {
			all = append(all, err)
		}
	}
	return k, errors.Join(all...)
}
