package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"syscall"
	"time"

	ipc "github.com/heapipc/ipc"
)

// A transport is one way of moving messages between two goroutines or two
// processes. heapipc's record channels (one at a time, in batches, and in
// packs of messages in one record), streams and mailboxes are measured
// beside a Go channel, os.Pipe, a Unix stream socket and TCP over
// loopback.
type transport struct {
	id      string // in -transports and in the JSON
	label   string // in the tables and the chart
	kind    string
	spin    bool // heapipc: spin before parking (else park at once)
	heapipc bool
	// what it is measured in
	throughput, latency bool
	inProcessOnly       bool
}

var transports = []transport{
	{id: "heapipc-spin", label: "heapipc record, spin", kind: kindRecord, spin: true, heapipc: true, throughput: true, latency: true},
	{id: "heapipc-park", label: "heapipc record, park", kind: kindRecord, heapipc: true, throughput: true, latency: true},
	{id: "heapipc-batch-spin", label: "heapipc batch, spin", kind: kindBatch, spin: true, heapipc: true, throughput: true},
	{id: "heapipc-batch-park", label: "heapipc batch, park", kind: kindBatch, heapipc: true, throughput: true},
	{id: "heapipc-pack-spin", label: "heapipc pack, spin", kind: kindPack, spin: true, heapipc: true, throughput: true},
	{id: "heapipc-pack-park", label: "heapipc pack, park", kind: kindPack, heapipc: true, throughput: true},
	{id: "heapipc-stream-spin", label: "heapipc stream, spin", kind: kindStream, spin: true, heapipc: true, throughput: true, latency: true},
	{id: "heapipc-stream-park", label: "heapipc stream, park", kind: kindStream, heapipc: true, throughput: true, latency: true},
	{id: "heapipc-mailbox", label: "heapipc mailbox", kind: kindMailbox, spin: true, heapipc: true, latency: true},
	{id: "gochan", label: "Go chan []byte", kind: kindGoChan, throughput: true, latency: true, inProcessOnly: true},
	{id: "pipe", label: "os.Pipe", kind: kindPipe, throughput: true, latency: true},
	{id: "unix", label: "Unix socket", kind: kindUnix, throughput: true, latency: true},
	{id: "tcp", label: "TCP loopback", kind: kindTCP, throughput: true, latency: true},
}

// referenceID is the heapipc transport the tables compare the peers with
// (and parkedID too, in the latency tables).
const (
	referenceID = "heapipc-spin"
	parkedID    = "heapipc-park"
)

func transportByID(id string) (transport, bool) {
	for _, t := range transports {
		if t.id == id {
			return t, true
		}
	}
	return transport{}, false
}

const (
	kindRecord  = "record"
	kindBatch   = "batch"
	kindPack    = "pack"
	kindStream  = "stream"
	kindMailbox = "mailbox"
	kindGoChan  = "gochan"
	kindPipe    = "pipe"
	kindUnix    = "unix"
	kindTCP     = "tcp"
)

// spec says what one trial's two ends are; the peer process is given it
// (as JSON) to make its end.
type spec struct {
	Kind     string        `json:"kind"`
	Scenario string        `json:"scenario"`
	Size     int           `json:"size"`
	Spin     bool          `json:"spin,omitempty"`
	SpinFor  time.Duration `json:"spin_for,omitempty"` // with Spin: how long (0: heapipc's default)
	Buffer   string        `json:"buffer,omitempty"`   // heapipc: the buffer's name
	ID       uint64        `json:"id,omitempty"`       // heapipc: the channel id (and id+1 back)
	Cap      int           `json:"cap,omitempty"`      // record ring, Go channel capacity
	Batch    int           `json:"batch,omitempty"`    // records per SendBatch/ReceiveBatch, messages per pack
	Files    int           `json:"files,omitempty"`    // descriptors from fd 3 on
	Timeout  time.Duration `json:"timeout"`            // the peer gives up after this
}

// capacity is the ring (and Go channel) capacity for messages of size
// bytes: 1024, but at most 16 MiB in flight (and at least 4 messages).
func capacity(size int) int {
	c := 1024
	for c > 4 && c*size > 16<<20 {
		c /= 2
	}
	return c
}

func batchOf(size int) int { return min(64, capacity(size)/2) }

// Sender and receiver ends (throughput), pinger and echoer ends (latency).
type (
	sender interface {
		send(seq uint64) error
		close() error
	}
	// drain receives and reads messages until the sender closes, closes
	// its end and returns how many bytes came and their word sum.
	drainer interface {
		drain() (bytes int64, sum uint64, err error)
	}
	pinger interface {
		roundTrip(seq uint64) error
		close() error
	}
	// echo answers every message with one of the same size until the
	// pinger closes, then closes its end and returns how many it answered.
	echoer interface {
		echo() (int64, error)
	}
)

// env is what a side needs besides the spec: the heapipc buffer, if any.
type env struct {
	buf *ipc.Buffer
}

// opened is the parent's end of one trial and what the other end is made
// of: descriptors (passed to a peer process, or used in this one) and,
// for a Go channel, the channels themselves.
type opened struct {
	a     any // sender or pinger
	files []*os.File
	local any
	abort func() // unblocks the end (closes its descriptors)
}

func (o *opened) closeFiles() {
	for _, f := range o.files {
		f.Close()
	}
	o.files = nil
}

// openA makes the parent's end of a trial.
func openA(ctx context.Context, e env, sp *spec) (*opened, error) {
	pl := newPayload(sp.Size)
	lat := sp.Scenario == scenLatency
	switch sp.Kind {
	case kindRecord, kindBatch, kindPack:
		h, err := e.buf.NewHandle()
		if err != nil {
			return nil, err
		}
		opts := []ipc.ChannelOption{ipc.WithCapacity(sp.Cap), ipc.WithSpin(spinOf(sp))}
		a := &recordA{ctx: ctx, h: h, pl: pl}
		if sp.Kind == kindPack {
			a.per = sp.Batch
		}
		if a.p, err = h.Producer(ipc.ChannelID(sp.ID), opts...); err == nil && lat {
			a.c, err = h.Consumer(ipc.ChannelID(sp.ID+1), opts...)
		}
		if err != nil {
			h.Close()
			return nil, err
		}
		if sp.Kind == kindBatch {
			a.batch = make([]ipc.Record, 0, sp.Batch)
		}
		return &opened{a: a}, nil
	case kindStream:
		h, err := e.buf.NewHandle()
		if err != nil {
			return nil, err
		}
		a := &streamA{ctx: ctx, h: h, pl: pl}
		if a.w, err = h.StreamWriter(ipc.ChannelID(sp.ID), ipc.WithSpin(spinOf(sp))); err == nil && lat {
			a.r, err = h.StreamReader(ipc.ChannelID(sp.ID+1), ipc.WithSpin(spinOf(sp)))
		}
		if err != nil {
			h.Close()
			return nil, err
		}
		return &opened{a: a}, nil
	case kindMailbox:
		h, err := e.buf.NewHandle()
		if err != nil {
			return nil, err
		}
		q, err := h.Requester(ipc.ChannelID(sp.ID))
		if err != nil {
			h.Close()
			return nil, err
		}
		return &opened{a: &mailboxA{ctx: ctx, h: h, q: q, pl: pl, msg: make([]byte, sp.Size)}}, nil
	case kindGoChan:
		if lat {
			ch := [2]chan []byte{make(chan []byte, 1), make(chan []byte, 1)}
			return &opened{a: &goChanPinger{ch: ch, pl: pl, msg: make([]byte, sp.Size)}, local: ch}, nil
		}
		ch := make(chan []byte, sp.Cap)
		return &opened{a: &goChanSender{ch: ch, pl: pl}, local: ch}, nil
	case kindPipe:
		r1, w1, err := os.Pipe()
		if err != nil {
			return nil, err
		}
		if !lat {
			sp.Files = 1
			return &opened{a: &fdSender{w: w1, pl: pl, msg: make([]byte, sp.Size)}, files: []*os.File{r1}, abort: func() { w1.Close() }}, nil
		}
		r2, w2, err := os.Pipe()
		if err != nil {
			r1.Close()
			w1.Close()
			return nil, err
		}
		sp.Files = 2
		a := &fdPinger{w: w1, r: r2, closer: multiCloser{w1, r2}, pl: pl, msg: make([]byte, sp.Size), back: make([]byte, sp.Size)}
		return &opened{a: a, files: []*os.File{r1, w2}, abort: func() { w1.Close(); r2.Close() }}, nil
	case kindUnix, kindTCP:
		var c net.Conn
		var f *os.File
		var err error
		if sp.Kind == kindUnix {
			c, f, err = unixPair()
		} else {
			c, f, err = tcpPair()
		}
		if err != nil {
			return nil, err
		}
		sp.Files = 1
		o := &opened{files: []*os.File{f}, abort: func() { c.Close() }}
		if lat {
			o.a = &fdPinger{w: c, r: c, closer: c, pl: pl, msg: make([]byte, sp.Size), back: make([]byte, sp.Size)}
		} else {
			o.a = &fdSender{w: c, pl: pl, msg: make([]byte, sp.Size)}
		}
		return o, nil
	}
	return nil, fmt.Errorf("unknown transport kind %q", sp.Kind)
}

// openB makes the other end of a trial, in this process or in the peer,
// from the spec, the descriptors (it takes them over) and the local
// channels.
func openB(ctx context.Context, e env, sp *spec, files []*os.File, local any) (any, error) {
	pl := newPayload(sp.Size)
	lat := sp.Scenario == scenLatency
	switch sp.Kind {
	case kindRecord, kindBatch, kindPack:
		h, err := e.buf.NewHandle()
		if err != nil {
			return nil, err
		}
		opts := []ipc.ChannelOption{ipc.WithCapacity(sp.Cap), ipc.WithSpin(spinOf(sp))}
		b := &recordB{ctx: ctx, h: h, pl: pl, packs: sp.Kind == kindPack}
		if sp.Kind == kindBatch {
			b.batch = sp.Batch
		}
		if b.c, err = h.Consumer(ipc.ChannelID(sp.ID), opts...); err == nil && lat {
			b.p, err = h.Producer(ipc.ChannelID(sp.ID+1), opts...)
		}
		if err != nil {
			h.Close()
			return nil, err
		}
		return b, nil
	case kindStream:
		h, err := e.buf.NewHandle()
		if err != nil {
			return nil, err
		}
		b := &streamB{ctx: ctx, h: h, pl: pl}
		if b.r, err = h.StreamReader(ipc.ChannelID(sp.ID), ipc.WithSpin(spinOf(sp))); err == nil && lat {
			b.w, err = h.StreamWriter(ipc.ChannelID(sp.ID+1), ipc.WithSpin(spinOf(sp)))
		}
		if err != nil {
			h.Close()
			return nil, err
		}
		return b, nil
	case kindMailbox:
		h, err := e.buf.NewHandle()
		if err != nil {
			return nil, err
		}
		r, err := h.Responder(ipc.ChannelID(sp.ID))
		if err != nil {
			h.Close()
			return nil, err
		}
		return &mailboxB{ctx: ctx, h: h, r: r, pl: pl, reply: make([]byte, sp.Size)}, nil
	case kindGoChan:
		if lat {
			ch, ok := local.([2]chan []byte)
			if !ok {
				return nil, errors.New("a Go channel works in one process only")
			}
			return &goChanEchoer{ch: ch, pl: pl}, nil
		}
		ch, ok := local.(chan []byte)
		if !ok {
			return nil, errors.New("a Go channel works in one process only")
		}
		return &goChanDrainer{ch: ch}, nil
	case kindPipe:
		if len(files) != sp.Files || len(files) == 0 {
			return nil, fmt.Errorf("pipe: %d descriptors, want %d", len(files), sp.Files)
		}
		if !lat {
			return &fdDrainer{r: bufio.NewReaderSize(files[0], 64<<10), closer: files[0], buf: make([]byte, sp.Size)}, nil
		}
		return &fdEchoer{r: files[0], w: files[1], closer: multiCloser{files[0], files[1]}, pl: pl, buf: make([]byte, sp.Size)}, nil
	case kindUnix, kindTCP:
		if len(files) != 1 {
			return nil, fmt.Errorf("%s: %d descriptors, want 1", sp.Kind, len(files))
		}
		c, err := net.FileConn(files[0])
		files[0].Close()
		if err != nil {
			return nil, err
		}
		if !lat {
			return &fdDrainer{r: bufio.NewReaderSize(c, 64<<10), closer: c, buf: make([]byte, sp.Size)}, nil
		}
		return &fdEchoer{r: c, w: c, closer: c, pl: pl, buf: make([]byte, sp.Size)}, nil
	}
	for _, f := range files {
		f.Close()
	}
	return nil, fmt.Errorf("unknown transport kind %q", sp.Kind)
}

func spinOf(sp *spec) time.Duration {
	if sp.Spin {
		return sp.SpinFor // 0: the default spin (20 µs)
	}
	return -1 // park at once
}

// ---- heapipc record channel ----

type recordA struct {
	ctx   context.Context
	h     *ipc.Handle
	p     *ipc.Producer
	c     *ipc.Consumer // latency: the way back
	pl    *payload
	batch []ipc.Record // batch form: records allocated, not yet sent
	r     ipc.Record   // latency: the record going back and forth
	// packs: per messages a pack, the pack being written and how many
	// of its messages are
	per    int
	pack   ipc.Pack
	packed int
}

// send allocates a record, writes the message into it and sends it. In
// the batch form the records of a batch are allocated together
// (AllocateBatch) and sent together once all are written (SendBatch).
func (a *recordA) send(seq uint64) error {
	if a.per > 0 {
		return a.sendPacked(seq)
	}
	if a.batch == nil {
		r, err := a.h.Allocate(a.pl.size)
		if err != nil {
			return err
		}
		a.pl.put(r.Bytes(), seq)
		return a.p.Send(a.ctx, r)
	}
	if len(a.batch) == 0 {
		if err := a.h.AllocateBatch(a.pl.size, a.batch[:cap(a.batch)]); err != nil {
			return err
		}
	}
	a.batch = a.batch[:len(a.batch)+1]
	a.pl.put(a.batch[len(a.batch)-1].Bytes(), seq)
	if len(a.batch) == cap(a.batch) {
		return a.flush()
	}
	return nil
}

// flush sends the written records of the batch and frees the rest: those
// SendBatch did not take and those allocated but not written.
func (a *recordA) flush() error {
	n, err := a.p.SendBatch(a.ctx, a.batch)
	err = errors.Join(err, a.h.FreeBatch(a.batch[n:cap(a.batch)]))
	a.batch = a.batch[:0]
	return err
}

// sendPacked writes the message into the next payload of the pack being
// filled (allocated with AllocatePack when the one before was sent), and
// sends the pack, one record, once it is full.
func (a *recordA) sendPacked(seq uint64) error {
	if a.pack.IsZero() {
		pk, err := a.h.AllocatePack(a.per, a.pl.size)
		if err != nil {
			return err
		}
		a.pack, a.packed = pk, 0
	}
	a.pl.put(a.pack.At(a.packed), seq)
	a.packed++
	if a.packed < a.pack.Len() {
		return nil
	}
	r := a.pack.Record()
	a.pack = ipc.Pack{}
	if err := a.p.Send(a.ctx, r); err != nil {
		return errors.Join(err, a.h.Free(r))
	}
	return nil
}

// flushPack sends the messages written into a pack that is not full, in
// a pack of their number (a pack's count is fixed when it is allocated):
// the end of a trial.
func (a *recordA) flushPack() error {
	full := a.pack
	a.pack = ipc.Pack{}
	pk, err := a.h.AllocatePack(a.packed, a.pl.size)
	if err != nil {
		return errors.Join(err, a.h.Free(full.Record()))
	}
	for i, b := range pk.All() {
		copy(b, full.At(i))
	}
	if err := a.h.Free(full.Record()); err != nil {
		return errors.Join(err, a.h.Free(pk.Record()))
	}
	if err := a.p.Send(a.ctx, pk.Record()); err != nil {
		return errors.Join(err, a.h.Free(pk.Record()))
	}
	return nil
}

func (a *recordA) roundTrip(seq uint64) error {
	if a.r.IsZero() {
		r, err := a.h.Allocate(a.pl.size)
		if err != nil {
			return err
		}
		a.r = r
	}
	a.pl.put(a.r.Bytes(), seq)
	r := a.r
	a.r = ipc.Record{}
	if err := a.p.Send(a.ctx, r); err != nil {
		a.h.Free(r)
		return err
	}
	var err error
	if a.r, err = a.c.Receive(a.ctx); err != nil {
		return err
	}
	return a.pl.verify(a.r.Bytes(), seq)
}

func (a *recordA) close() error {
	var err error
	if len(a.batch) > 0 {
		err = a.flush()
	}
	if !a.pack.IsZero() {
		err = errors.Join(err, a.flushPack())
	}
	if !a.r.IsZero() {
		err = errors.Join(err, a.h.Free(a.r))
	}
	return errors.Join(err, a.h.Close())
}

type recordB struct {
	ctx   context.Context
	h     *ipc.Handle
	c     *ipc.Consumer
	p     *ipc.Producer // latency: the way back
	pl    *payload
	batch int  // batch form: records per ReceiveBatch
	packs bool // every record is a pack of messages
}

func (b *recordB) drain() (int64, uint64, error) {
	var n int64
	var sum uint64
	err := func() error {
		if b.packs {
			for {
				r, err := b.c.Receive(b.ctx)
				if err != nil {
					return err
				}
				pk, err := ipc.PackOf(r)
				if err != nil {
					return errors.Join(err, b.h.Free(r))
				}
				for _, m := range pk.All() {
					sum += wordSum(m)
					n += int64(len(m))
				}
				if err := b.h.Free(r); err != nil {
					return err
				}
			}
		}
		if b.batch > 0 {
			rs := make([]ipc.Record, b.batch)
			for {
				k, err := b.c.ReceiveBatch(b.ctx, rs)
				for _, r := range rs[:k] {
					sum += wordSum(r.Bytes())
					n += int64(r.Len())
				}
				if err := b.h.FreeBatch(rs[:k]); err != nil {
					return err
				}
				if err != nil {
					return err
				}
			}
		}
		for {
			r, err := b.c.Receive(b.ctx)
			if err != nil {
				return err
			}
			sum += wordSum(r.Bytes())
			n += int64(r.Len())
			if err := b.h.Free(r); err != nil {
				return err
			}
		}
	}()
	if err == io.EOF {
		err = nil
	}
	return n, sum, errors.Join(err, b.h.Close())
}

func (b *recordB) echo() (int64, error) {
	var n int64
	err := func() error {
		for ; ; n++ {
			r, err := b.c.Receive(b.ctx)
			if err != nil {
				return err
			}
			if err := b.pl.verify(r.Bytes(), uint64(n)); err != nil {
				return err
			}
			b.pl.put(r.Bytes(), uint64(n))
			if err := b.p.Send(b.ctx, r); err != nil {
				b.h.Free(r)
				return err
			}
		}
	}()
	if err == io.EOF {
		err = nil
	}
	return n, errors.Join(err, b.h.Close())
}

// ---- heapipc stream ----

type streamA struct {
	ctx context.Context
	h   *ipc.Handle
	w   *ipc.StreamWriter
	r   *ipc.StreamReader // latency: the way back
	pl  *payload
	sum summer
}

func (a *streamA) send(seq uint64) error { return writeMsg(a.ctx, a.w, a.pl, seq) }

func (a *streamA) roundTrip(seq uint64) error {
	if err := writeMsg(a.ctx, a.w, a.pl, seq); err != nil {
		return err
	}
	a.sum = summer{}
	if err := readMsg(a.ctx, a.r, &a.sum, a.pl.size); err != nil {
		return err
	}
	if a.sum.sum != a.pl.base+seq {
		return fmt.Errorf("message %d: torn or out of order", seq)
	}
	return nil
}

func (a *streamA) close() error { return a.h.Close() }

// writeMsg writes message seq straight into the ring's writable spans,
// waiting for room as needed.
func writeMsg(ctx context.Context, w *ipc.StreamWriter, pl *payload, seq uint64) error {
	for off := 0; off < pl.size; {
		s1, s2, err := w.Spans()
		if err != nil {
			return err
		}
		if len(s1) == 0 {
			if err := w.WaitSpace(ctx); err != nil {
				return err
			}
			continue
		}
		k := 0
		for _, s := range [2][]byte{s1, s2} {
			m := min(len(s), pl.size-off-k)
			pl.putPart(s[:m], off+k, seq)
			k += m
		}
		if err := w.Commit(k); err != nil {
			return err
		}
		off += k
	}
	return nil
}

// readMsg reads n bytes straight from the ring's readable spans into s.
func readMsg(ctx context.Context, r *ipc.StreamReader, s *summer, n int) error {
	for got := 0; got < n; {
		s1, s2, err := r.Spans()
		if err != nil {
			return err
		}
		if len(s1) == 0 {
			if err := r.WaitData(ctx); err != nil {
				if err == io.EOF && got > 0 {
					err = io.ErrUnexpectedEOF
				}
				return err
			}
			continue
		}
		k := 0
		for _, sp := range [2][]byte{s1, s2} {
			m := min(len(sp), n-got-k)
			s.add(sp[:m])
			k += m
		}
		if err := r.Consume(k); err != nil {
			return err
		}
		got += k
	}
	return nil
}

type streamB struct {
	ctx context.Context
	h   *ipc.Handle
	r   *ipc.StreamReader
	w   *ipc.StreamWriter // latency: the way back
	pl  *payload
}

func (b *streamB) drain() (int64, uint64, error) {
	var s summer
	err := func() error {
		for {
			s1, s2, err := b.r.Spans()
			if err != nil {
				return err
			}
			if len(s1) == 0 {
				if err := b.r.WaitData(b.ctx); err != nil {
					return err
				}
				continue
			}
			s.add(s1)
			s.add(s2)
			if err := b.r.Consume(len(s1) + len(s2)); err != nil {
				return err
			}
		}
	}()
	if err == io.EOF {
		err = nil
	}
	return s.total, s.sum, errors.Join(err, b.h.Close())
}

func (b *streamB) echo() (int64, error) {
	var n int64
	err := func() error {
		for ; ; n++ {
			var s summer
			if err := readMsg(b.ctx, b.r, &s, b.pl.size); err != nil {
				return err
			}
			if s.sum != b.pl.base+uint64(n) {
				return fmt.Errorf("message %d: torn or out of order", n)
			}
			if err := writeMsg(b.ctx, b.w, b.pl, uint64(n)); err != nil {
				return err
			}
		}
	}()
	if err == io.EOF {
		err = nil
	}
	return n, errors.Join(err, b.h.Close())
}

// ---- heapipc mailbox ----

type mailboxA struct {
	ctx        context.Context
	h          *ipc.Handle
	q          *ipc.Requester
	pl         *payload
	msg, reply []byte
}

func (a *mailboxA) roundTrip(seq uint64) error {
	a.pl.put(a.msg, seq)
	var err error
	if a.reply, err = a.q.RequestInto(a.ctx, a.msg, a.reply); err != nil {
		return err
	}
	return a.pl.verify(a.reply, seq)
}

func (a *mailboxA) close() error { return a.h.Close() }

type mailboxB struct {
	ctx   context.Context
	h     *ipc.Handle
	r     *ipc.Responder
	pl    *payload
	reply []byte
}

func (b *mailboxB) echo() (int64, error) {
	var n int64
	err := b.r.Serve(b.ctx, func(_ context.Context, req []byte) ([]byte, error) {
		if err := b.pl.verify(req, uint64(n)); err != nil {
			return nil, err
		}
		b.pl.put(b.reply, uint64(n))
		n++
		return b.reply, nil
	})
	return n, errors.Join(err, b.h.Close())
}

// ---- Go channel (in-process only) ----

// goChanSender sends a freshly allocated slice per message, as a Go
// program handing buffers to another goroutine does.
type goChanSender struct {
	ch chan []byte
	pl *payload
}

func (a *goChanSender) send(seq uint64) error {
	m := make([]byte, a.pl.size)
	a.pl.put(m, seq)
	a.ch <- m
	return nil
}

func (a *goChanSender) close() error { close(a.ch); return nil }

type goChanDrainer struct{ ch chan []byte }

func (b *goChanDrainer) drain() (int64, uint64, error) {
	var n int64
	var sum uint64
	for m := range b.ch {
		sum += wordSum(m)
		n += int64(len(m))
	}
	return n, sum, nil
}

type goChanPinger struct {
	ch  [2]chan []byte
	pl  *payload
	msg []byte
}

func (a *goChanPinger) roundTrip(seq uint64) error {
	a.pl.put(a.msg, seq)
	a.ch[0] <- a.msg
	a.msg = <-a.ch[1]
	return a.pl.verify(a.msg, seq)
}

func (a *goChanPinger) close() error { close(a.ch[0]); return nil }

type goChanEchoer struct {
	ch [2]chan []byte
	pl *payload
}

func (b *goChanEchoer) echo() (int64, error) {
	var n int64
	for m := range b.ch[0] {
		if err := b.pl.verify(m, uint64(n)); err != nil {
			return n, err
		}
		b.pl.put(m, uint64(n))
		b.ch[1] <- m
		n++
	}
	return n, nil
}

// ---- byte streams: os.Pipe, Unix socket, TCP ----

// fdSender writes each message with one write (no batching of messages:
// each is sent when it is ready, as heapipc's Send does).
type fdSender struct {
	w   io.WriteCloser
	pl  *payload
	msg []byte
}

func (a *fdSender) send(seq uint64) error {
	a.pl.put(a.msg, seq)
	_, err := a.w.Write(a.msg)
	return err
}

func (a *fdSender) close() error { return a.w.Close() }

// fdDrainer reads messages through a 64 KiB bufio.Reader (fewer reads
// than messages when they are small), as a program framing messages on a
// byte stream does.
type fdDrainer struct {
	r      io.Reader
	closer io.Closer
	buf    []byte
}

func (b *fdDrainer) drain() (int64, uint64, error) {
	var n int64
	var sum uint64
	var err error
	for {
		var k int
		k, err = io.ReadFull(b.r, b.buf)
		n += int64(k)
		sum += wordSum(b.buf[:k])
		if err != nil {
			break
		}
	}
	if err == io.EOF {
		err = nil
	}
	return n, sum, errors.Join(err, b.closer.Close())
}

type fdPinger struct {
	w         io.Writer
	r         io.Reader
	closer    io.Closer
	pl        *payload
	msg, back []byte
}

func (a *fdPinger) roundTrip(seq uint64) error {
	a.pl.put(a.msg, seq)
	if _, err := a.w.Write(a.msg); err != nil {
		return err
	}
	if _, err := io.ReadFull(a.r, a.back); err != nil {
		return err
	}
	return a.pl.verify(a.back, seq)
}

func (a *fdPinger) close() error { return a.closer.Close() }

type fdEchoer struct {
	r      io.Reader
	w      io.Writer
	closer io.Closer
	pl     *payload
	buf    []byte
}

func (b *fdEchoer) echo() (int64, error) {
	var n int64
	var err error
	for ; ; n++ {
		if _, err = io.ReadFull(b.r, b.buf); err != nil {
			break
		}
		if err = b.pl.verify(b.buf, uint64(n)); err != nil {
			break
		}
		b.pl.put(b.buf, uint64(n))
		if _, err = b.w.Write(b.buf); err != nil {
			break
		}
	}
	if err == io.EOF {
		err = nil
	}
	return n, errors.Join(err, b.closer.Close())
}

type multiCloser []io.Closer

func (m multiCloser) Close() error {
	var all []error
	for _, c := range m {
		all = append(all, c.Close())
	}
	return errors.Join(all...)
}

// unixPair returns a connected pair of Unix stream sockets: a conn for
// this end and a file for the other.
func unixPair() (net.Conn, *os.File, error) {
	syscall.ForkLock.RLock()
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM, 0)
	if err == nil {
		syscall.CloseOnExec(fds[0])
		syscall.CloseOnExec(fds[1])
	}
	syscall.ForkLock.RUnlock()
	if err != nil {
		return nil, nil, fmt.Errorf("socketpair: %w", err)
	}
	f0 := os.NewFile(uintptr(fds[0]), "unix-a")
	c, err := net.FileConn(f0)
	f0.Close()
	if err != nil {
		syscall.Close(fds[1])
		return nil, nil, err
	}
	return c, os.NewFile(uintptr(fds[1]), "unix-b"), nil
}

// tcpPair returns a connected pair of TCP sockets over 127.0.0.1 (no
// delay on either): a conn for this end and a file for the other.
func tcpPair() (net.Conn, *os.File, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, nil, err
	}
	defer ln.Close()
	type accepted struct {
		c   net.Conn
		err error
	}
	acc := make(chan accepted, 1)
	go func() {
		c, err := ln.Accept()
		acc <- accepted{c, err}
	}()
	c, err := net.DialTimeout("tcp", ln.Addr().String(), 10*time.Second)
	if err != nil {
		ln.Close()
		<-acc
		return nil, nil, err
	}
	a := <-acc
	if a.err != nil {
		c.Close()
		return nil, nil, a.err
	}
	f, err := a.c.(*net.TCPConn).File()
	a.c.Close()
	if err != nil {
		c.Close()
		return nil, nil, err
	}
	return c, f, nil
}
