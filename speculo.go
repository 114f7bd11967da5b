package ipc

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/heapipc/ipc/channel"
	"github.com/heapipc/ipc/internal/mem"
)

// BlockID names a block of a speculo area: the chunks that are versions of
// one changeable piece of data. Ids from SpeculoAutoBlock up are given by
// Append; ids below it are free for Replace to use as well-known ids.
type BlockID = channel.BlockID

// SpeculoMaxRetired is how many old extents readers may keep from being
// freed before the writer stops collecting (see SpeculoWriter.Append).
const SpeculoMaxRetired = channel.MaxSpeculoRetired

// SpeculoAutoBlock is the lowest block id Append can give.
const SpeculoAutoBlock BlockID = channel.SpeculoAutoBlock

// SpeculoOption configures a speculo area or this process's access to it.
type SpeculoOption func(*speculoConfig) error

type speculoConfig struct {
	name      string
	slots     int
	maxBlocks int
	threshold int
	clock     func() time.Time
	spin      time.Duration
}

// DefaultSpeculoReaders is the number of reader slots of an area created
// without SpeculoReaderSlots.
const DefaultSpeculoReaders = channel.DefaultSpeculoSlots

// SpeculoReaderSlots sets how many readers an area to create can have
// attached at once (default 64). Only the creator's value counts.
func SpeculoReaderSlots(n int) SpeculoOption {
	return func(c *speculoConfig) error {
		if n <= 0 || n > channel.MaxSpeculoSlots {
			return fmt.Errorf("reader slots %d (want 1..%d): %w", n, channel.MaxSpeculoSlots, ErrInvalidArgument)
		}
		c.slots = n
		return nil
	}
}

// SpeculoMaxBlocks bounds the distinct valid blocks an area to create can
// hold (default capacity/128, at least 16 but no more than the chunk
// headers the capacity holds: enough when chunks carry 96 bytes or more;
// raise it for smaller chunks). The index of blocks takes
// 11 to 21 bytes per block in every extent, besides the capacity.
func SpeculoMaxBlocks(n int) SpeculoOption {
	return func(c *speculoConfig) error {
		if n <= 0 {
			return fmt.Errorf("max blocks %d: %w", n, ErrInvalidArgument)
		}
		c.maxBlocks = n
		return nil
	}
}

// SpeculoGCThreshold sets the initial GC threshold of an area to create,
// in percent of its capacity (default 50; 0: collect only when full). See
// SpeculoWriter.SetGCThreshold.
func SpeculoGCThreshold(percent int) SpeculoOption {
	return func(c *speculoConfig) error {
		if percent < 0 || percent > 100 {
			return fmt.Errorf("GC threshold %d%% (want 0..100): %w", percent, ErrInvalidArgument)
		}
		c.threshold = percent
		return nil
	}
}

// SpeculoClock replaces the clock expiry times are compared with, in this
// process (for tests). The default is time.Now: the wall clock, which all
// processes on a host share.
func SpeculoClock(now func() time.Time) SpeculoOption {
	return func(c *speculoConfig) error {
		if now == nil {
			return fmt.Errorf("nil clock: %w", ErrInvalidArgument)
		}
		c.clock = now
		return nil
	}
}

// SpeculoName gives an area to create a name (at most 56 bytes).
func SpeculoName(name string) SpeculoOption {
	return func(c *speculoConfig) error { c.name = name; return nil }
}

// SpeculoSpin sets how long a waiting reader keeps checking before it
// parks (default 20µs; negative: park at once).
func SpeculoSpin(d time.Duration) SpeculoOption {
	return func(c *speculoConfig) error { c.spin = d; return nil }
}

// Speculo is this handle's access to a speculo area: a channel with one writer and any number of readers,
// in any processes (after the speculo C library). Its writer and readers belong to the
// handle (closed with it) and, like it, to one goroutine at a time; open
// readers from several handles to read from several goroutines. The writer appends
// chunks of any size in place and commits them; readers iterate over the
// valid chunks in order, or ask for the latest version of a block, without
// taking a lock.
//
//   - A chunk becomes visible exactly when Commit publishes it (a release
//     store readers load with acquire). Committed bytes never change.
//   - A chunk may carry an expiry time (the wall clock every process on
//     the host shares; SpeculoClock injects another): readers skip it
//     after that.
//   - Every chunk belongs to a block (BlockID). Append starts a new block;
//     Replace writes a new version of a block, and on Commit the new
//     version becomes visible before the old one is marked obsolete, so a
//     block is never invisible. Latest returns a block's latest version.
//     Block ids and sequence numbers survive updates and GC.
//   - When the area is full, or invalid (expired or obsoleted) chunks reach
//     the GC threshold, the writer copies the valid chunks into a new
//     extent from the buffer's heap and switches readers to it atomically.
//     A reader finishes the read it is doing and moves over on its next
//     call, resuming after the last chunk it returned (none is lost, none
//     repeated). The old extent goes back to the heap once no reader is
//     left on it; a reader that died does not pin it.
//   - Readers may wait for new chunks with a context; the writer pays a
//     wake-up system call only when a reader is parked. Once the writer
//     closes its end, a reader that has read everything gets io.EOF from
//     Next and Wait (until a writer attaches again).
//   - The writer end is exclusive (ErrBusy; a dead writer's end is taken
//     over). A writer that dies in the middle of an append leaves nothing
//     half-visible; one that dies mid-way through a replace or a GC has it
//     finished or undone by the next writer.
//
// # Lifetime of returned bytes
//
// The []byte Append and Replace return is the pending chunk in shared
// memory: fill it before Commit and do not touch it afterwards. The Data of
// a SpeculoChunk a reader returns is a view into the extent the reader is
// on. It stays valid (and unchanged) until that reader's next call of
// TryNext, Next, Latest, Rewind, Wait, Release or Close, whatever the
// writer does meanwhile (a GC does not free an extent a reader is on);
// after that call the extent may have been freed and reused. Use
// SpeculoChunk.Clone to keep the bytes longer. Nothing may be touched
// after the Buffer is closed.
type Speculo struct {
	h  *Handle
	en *channel.Entry
	sp *channel.Speculo
	id ChannelID
}

// AddSpeculo creates speculo area id with capacity bytes for chunks (a
// chunk takes its payload rounded up to 8 bytes plus a 32-byte header), or
// attaches to it if it exists: another capacity (once rounded up to 8
// bytes, as the area's is) is ErrSizeMismatch, and
// capacity 0 attaches only (ErrNotExist if there is none). Each extent
// the area allocates from the heap holds the capacity and the block
// index; a GC briefly needs a second one. ErrWrongType: id is a channel
// of another type.
func (h *Handle) AddSpeculo(id ChannelID, capacity int, opts ...SpeculoOption) (*Speculo, error) {
	if !h.in() {
		return nil, h.closedErr("add speculo")
	}
	defer h.out()
	h.enter()
	defer h.leave()
	cfg := speculoConfig{threshold: -1}
	for _, o := range opts {
		if err := o(&cfg); err != nil {
			return nil, fmt.Errorf("ipc: speculo %d: %w", id, err)
		}
	}
	if err := h.check("speculo"); err != nil {
		return nil, err
	}
	if capacity < 0 || uint64(capacity) > channel.MaxSpeculoCapacity {
		return nil, fmt.Errorf("ipc: speculo %d: capacity %d: %w", id, capacity, ErrInvalidSize)
	}
	var en *channel.Entry
	var err error
	if capacity == 0 {
		en, err = h.buf.reg.Lookup(id)
		if err == nil && en.Type != channel.TypeSpeculo {
			err = fmt.Errorf("channel %d is a %s channel, not speculo: %w", id, en.Type, ErrWrongType)
		}
	} else {
		size := channel.SpeculoCapacity(uint64(capacity))
		ccfg := channel.SpeculoConfig{Slots: cfg.slots, MaxBlocks: cfg.maxBlocks, Threshold: cfg.threshold}
		spec := channel.Spec{
			Type:    channel.TypeSpeculo,
			Name:    cfg.name,
			Size:    size,
			Control: channel.SpeculoControlSize(cfg.slots),
			Init:    func(_ mem.Off, b []byte) error { return channel.InitSpeculo(b, size, ccfg) },
		}
		ctx, cancel := h.buf.creatorWait(context.Background())
		en, _, err = h.buf.reg.LookupOrCreate(ctx, id, spec)
		cancel()
		if err == nil && en.Size != size {
			err = fmt.Errorf("speculo area has capacity %d, %d asked: %w", en.Size, capacity, ErrSizeMismatch)
		}
	}
	if err != nil {
		return nil, fmt.Errorf("ipc: speculo %d: %w", id, err)
	}
	env := channel.SpeculoEnv{Wait: channel.WaitOptions{Spin: cfg.spin, CheckInterval: h.buf.cfg.checkInterval}}
	if cfg.clock != nil {
		now := cfg.clock
		env.Clock = func() int64 { return now().UnixNano() }
	}
	sp, err := channel.OpenSpeculo(h.buf.region, h.buf.heap, en, env)
	if err != nil {
		return nil, fmt.Errorf("ipc: speculo %d: %w", id, err)
	}
	return &Speculo{h: h, en: en, sp: sp, id: id}, nil
}

// ID is the area's channel id.
func (s *Speculo) ID() ChannelID { return s.id }

// Capacity is the bytes of chunk space (headers included) of the area.
func (s *Speculo) Capacity() int { return int(s.sp.Capacity()) }

// MaxChunk is the largest payload one chunk may have: a chunk that fills
// the area.
func (s *Speculo) MaxChunk() int { return int(s.sp.MaxChunk()) }

// MaxBlocks is how many distinct valid blocks the area can hold.
func (s *Speculo) MaxBlocks() int { return int(s.sp.MaxBlocks()) }

// SpeculoChunkSpace is the area space a chunk of size payload bytes takes
// (its header and padding included).
func SpeculoChunkSpace(size int) int { return int(channel.SpeculoChunkSpace(uint64(size))) }

func (s *Speculo) wrap(op string, err error) error {
	if err == nil || err == ErrWouldBlock || err == io.EOF {
		return err
	}
	return fmt.Errorf("ipc: %s on channel %d: %w", op, s.id, err)
}

// Writer opens the writer end: ErrBusy if a live process (this one
// included) holds it; a dead writer's end is taken over, and what it left
// half-done is finished or undone. The first writer allocates the area's
// first extent (ErrNoSpace if the heap has no room). ErrNotExist: the
// area was removed since AddSpeculo, by Remove or by a Recover that found
// it abandoned (its writer closed or dead, and no live reader): a
// *Speculo is no claim on the area, an open writer or reader is.
func (s *Speculo) Writer() (*SpeculoWriter, error) {
	if !s.h.in() {
		return nil, s.h.closedErr("writer")
	}
	defer s.h.out()
	if err := s.h.check("speculo writer"); err != nil {
		return nil, err
	}
	var w *channel.SpeculoWriter
	err := s.h.buf.reg.Attach(context.Background(), s.en, func() (err error) {
		w, err = s.sp.AttachWriter()
		return err
	})
	if err != nil {
		return nil, s.wrap("speculo writer", err)
	}
	sw := &SpeculoWriter{s: s, w: w}
	if err := s.h.addEnd(sw); err != nil {
		w.Close()
		return nil, err
	}
	return sw, nil
}

// Reader opens a reader: ErrBusy if every reader slot is held by a live
// reader (slots of dead readers are taken over). A new reader starts at
// the oldest valid chunk. ErrNotExist: the area was removed (see Writer).
func (s *Speculo) Reader() (*SpeculoReader, error) {
	if !s.h.in() {
		return nil, s.h.closedErr("reader")
	}
	defer s.h.out()
	if err := s.h.check("speculo reader"); err != nil {
		return nil, err
	}
	var r *channel.SpeculoReader
	err := s.h.buf.reg.Attach(context.Background(), s.en, func() (err error) {
		r, err = s.sp.AttachReader()
		return err
	})
	if err != nil {
		return nil, s.wrap("speculo reader", err)
	}
	sr := &SpeculoReader{s: s, r: r}
	if err := s.h.addEnd(sr); err != nil {
		r.Close()
		return nil, err
	}
	return sr, nil
}

// SpeculoStats describes a speculo area.
type SpeculoStats = channel.SpeculoStats

// Stats walks the area (O(chunks)). ErrBusy: no reader slot is free for
// the walk; ErrNotExist: the area was removed.
func (s *Speculo) Stats() (SpeculoStats, error) {
	if !s.h.in() {
		return SpeculoStats{}, s.h.closedErr("stats")
	}
	defer s.h.out()
	if err := s.h.buf.check("speculo stats"); err != nil {
		return SpeculoStats{}, err
	}
	var st SpeculoStats
	err := s.h.buf.reg.Attach(context.Background(), s.en, func() (err error) {
		st, err = s.sp.Stats() // takes a reader slot for the walk
		return err
	})
	return st, s.wrap("speculo stats", err)
}

// Remove deletes the area for everyone and gives its memory back. Its
// writer and readers must be closed (ErrBusy if a live process holds one).
func (s *Speculo) Remove(ctx context.Context) error {
	if !s.h.in() {
		return s.h.closedErr("remove")
	}
	defer s.h.out()
	if err := s.h.buf.check("remove speculo"); err != nil {
		return err
	}
	var busy bool
	cond := func() bool {
		if !s.sp.Idle() {
			busy = true
			return false
		}
		return true
	}
	removed, err := s.h.buf.reg.Remove(ctx, s.en, cond, s.sp.FreeExtents)
	switch {
	case busy:
		return s.wrap("remove speculo", fmt.Errorf("the writer or a reader is held by a live process: %w", ErrBusy))
	case err != nil:
		return s.wrap("remove speculo", err)
	case !removed:
		return s.wrap("remove speculo", ErrNotExist)
	}
	return nil
}

func unixNano(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	if ns := t.UnixNano(); ns > 0 {
		return ns
	}
	return 1 // before 1970: expired
}

// SpeculoWriter is the writer end of a speculo area. It belongs to the
// Handle that opened it and, like it, to one goroutine at a time.
type SpeculoWriter struct {
	s      *Speculo
	w      *channel.SpeculoWriter
	closed bool
}

// Append reserves a chunk of size payload bytes (0 allowed, up to
// MaxChunk) as the first version of a new block, and returns its bytes in
// shared memory to fill; Commit publishes it and returns the block's id.
// expiry is when it stops being valid (zero: never). One chunk may be
// pending at a time. Before reserving, the writer collects the area when
// invalid chunks reached the GC threshold or when the chunk does not fit;
// ErrNoSpace if it still does not: the area is full of valid chunks or
// holds MaxBlocks blocks, the heap has no room for a new extent, or
// readers are still on SpeculoMaxRetired old extents (a reader that is
// descheduled, or idle without waiting or Release; retry once they move).
// A GC by threshold is put off, not failed, in the last two cases.
func (w *SpeculoWriter) Append(size int, expiry time.Time) ([]byte, error) {
	if !w.s.h.in() {
		return nil, w.s.h.closedErr("append")
	}
	defer w.s.h.out()
	b, err := w.w.Append(size, unixNano(expiry))
	return b, w.s.wrap("speculo append", err)
}

// Replace reserves a new version of block (an id Append returned, or a
// well-known id below SpeculoAutoBlock). When committed it becomes the
// block's latest version, and the previous one is obsoleted — after the
// new one is visible.
func (w *SpeculoWriter) Replace(block BlockID, size int, expiry time.Time) ([]byte, error) {
	if !w.s.h.in() {
		return nil, w.s.h.closedErr("replace")
	}
	defer w.s.h.out()
	b, err := w.w.Replace(block, size, unixNano(expiry))
	return b, w.s.wrap("speculo replace", err)
}

// Commit publishes the pending chunk and returns its block id. Readers
// waiting for news are woken.
func (w *SpeculoWriter) Commit() (BlockID, error) {
	if !w.s.h.in() {
		return 0, w.s.h.closedErr("commit")
	}
	defer w.s.h.out()
	id, err := w.w.Commit()
	return id, w.s.wrap("speculo commit", err)
}

// Abort drops the pending chunk: nobody ever sees it.
func (w *SpeculoWriter) Abort() {
	if !w.s.h.in() {
		return
	}
	defer w.s.h.out()
	w.w.Abort()
}

// Write appends a copy of p as a new block and commits it.
func (w *SpeculoWriter) Write(p []byte, expiry time.Time) (BlockID, error) {
	if !w.s.h.in() {
		return 0, w.s.h.closedErr("write")
	}
	defer w.s.h.out()
	b, err := w.Append(len(p), expiry)
	if err != nil {
		return 0, err
	}
	copy(b, p)
	return w.Commit()
}

// Update commits a copy of p as the new version of block.
func (w *SpeculoWriter) Update(block BlockID, p []byte, expiry time.Time) error {
	if !w.s.h.in() {
		return w.s.h.closedErr("update")
	}
	defer w.s.h.out()
	b, err := w.Replace(block, len(p), expiry)
	if err != nil {
		return err
	}
	copy(b, p)
	_, err = w.Commit()
	return err
}

// SetGCThreshold sets when the writer collects: once invalid (expired or
// obsoleted) chunks take percent of the capacity (0: only when the area
// is full). Obsoleted chunks count at once; expired ones once the writer
// notices them, which it does every 64 appends and whenever a chunk does
// not fit (reading the clock at every append would cost more than the
// lag). The setting is kept in the area for later writers.
func (w *SpeculoWriter) SetGCThreshold(percent int) error {
	if !w.s.h.in() {
		return w.s.h.closedErr("set GC threshold")
	}
	defer w.s.h.out()
	return w.s.wrap("speculo threshold", w.w.SetThreshold(percent))
}

// GC collects the area now: the valid chunks are copied into a new extent
// and readers move to it on their next call.
func (w *SpeculoWriter) GC() error {
	if !w.s.h.in() {
		return w.s.h.closedErr("speculo GC")
	}
	defer w.s.h.out()
	return w.s.wrap("speculo GC", w.w.GC())
}

// Reclaim frees the old extents no live reader is on (checking the
// liveness of readers still on one) and returns how many it freed. The
// writer also does this by itself at each GC and every 64 appends.
func (w *SpeculoWriter) Reclaim() (int, error) {
	if !w.s.h.in() {
		return 0, w.s.h.closedErr("reclaim")
	}
	defer w.s.h.out()
	n, err := w.w.Reclaim()
	return n, w.s.wrap("speculo reclaim", err)
}

// Close releases the writer end (a pending chunk is dropped). The area and
// its chunks stay for readers and a later writer; see Speculo.Remove.
// Readers waiting in Next or Wait get io.EOF once they have read
// everything.
func (w *SpeculoWriter) Close() error {
	if !w.s.h.in() {
		return nil
	}
	defer w.s.h.out()
	if w.closed {
		return nil
	}
	w.s.h.dropEnd(w)
	return w.close()
}

func (w *SpeculoWriter) close() error {
	if w.closed {
		return nil
	}
	w.closed = true
	return w.s.wrap("speculo close", w.w.Close())
}

// SpeculoChunk is a chunk a reader returned: its block, its sequence
// number, its payload (Data, a view into shared memory valid until the
// reader's next call) and its expiry (Expiry; Clone copies Data to Go
// memory).
type SpeculoChunk = channel.SpeculoChunk

// SpeculoReader reads a speculo area. It takes no lock and writes nothing
// the writer reads on its fast path. It belongs to the Handle that opened
// it and, like it, to one goroutine at a time.
type SpeculoReader struct {
	s      *Speculo
	r      *channel.SpeculoReader
	closed bool
}

// TryNext returns the next valid chunk after the last one returned, in
// commit order, skipping expired and obsoleted ones; ErrWouldBlock if
// there is none now. A GC does not make it return a chunk twice.
func (r *SpeculoReader) TryNext() (SpeculoChunk, error) {
	if !r.s.h.in() {
		return SpeculoChunk{}, r.s.h.closedErr("try next")
	}
	defer r.s.h.out()
	c, err := r.r.TryNext()
	if err != nil {
		if err == ErrWouldBlock {
			return c, err
		}
		return c, r.s.wrap("speculo next", err)
	}
	return c, nil
}

// Next returns the next valid chunk, waiting (as Wait does) until one is
// committed: io.EOF if the writer closed its end and every chunk is
// read, ErrPeerDead if the writer died meanwhile, ErrDestroyed, or ctx's
// error.
func (r *SpeculoReader) Next(ctx context.Context) (SpeculoChunk, error) {
	if !r.s.h.in() {
		return SpeculoChunk{}, r.s.h.closedErr("next")
	}
	defer r.s.h.out()
	c, err := r.r.Next(ctx)
	if err != nil {
		return c, r.s.wrap("speculo next", err)
	}
	return c, nil
}

// Latest returns the latest valid version of block: ErrNotExist if it has
// none (never written, or its latest version expired). It does not move
// the iteration of Next.
func (r *SpeculoReader) Latest(block BlockID) (SpeculoChunk, error) {
	if !r.s.h.in() {
		return SpeculoChunk{}, r.s.h.closedErr("latest")
	}
	defer r.s.h.out()
	c, err := r.r.Latest(block)
	if err != nil {
		return c, r.s.wrap("speculo latest", err)
	}
	return c, nil
}

// Rewind makes the next Next start over from the oldest valid chunk.
func (r *SpeculoReader) Rewind() error {
	if !r.s.h.in() {
		return r.s.h.closedErr("speculo rewind")
	}
	defer r.s.h.out()
	return r.s.wrap("speculo rewind", r.r.Rewind())
}

// Wait blocks until a chunk may have been committed after the last one
// returned: it spins briefly, then parks on a futex in the area without
// holding any extent. It returns io.EOF if the writer closed its end
// (SpeculoWriter.Close) and nothing was committed past the last chunk
// returned (a writer that attaches later may commit more, read as
// before), ErrPeerDead if the writer died, ErrDestroyed if the buffer was
// destroyed, or ctx's error.
func (r *SpeculoReader) Wait(ctx context.Context) error {
	if !r.s.h.in() {
		return r.s.h.closedErr("wait")
	}
	defer r.s.h.out()
	return r.s.wrap("speculo wait", r.r.Wait(ctx))
}

// Release gives up the extent the reader is on, so that the writer can
// free it while this reader is idle (an idle reader otherwise keeps it, and
// holding SpeculoMaxRetired old extents makes the writer's GCs wait). The
// views it returned become invalid; its next call moves it to the
// current extent and goes on where it was. Wait and Next release the
// extent while they are parked.
func (r *SpeculoReader) Release() {
	if !r.s.h.in() {
		return
	}
	defer r.s.h.out()
	r.r.Release()
}

// Epoch is the epoch of the extent the reader is on (0: none); it grows by
// one with every GC.
func (r *SpeculoReader) Epoch() uint64 { return r.r.Epoch() }

// Close releases the reader's slot; the extent it was on may be freed.
func (r *SpeculoReader) Close() error {
	if !r.s.h.in() {
		return nil
	}
	defer r.s.h.out()
	if r.closed {
		return nil
	}
	r.s.h.dropEnd(r)
	return r.close()
}

func (r *SpeculoReader) close() error {
	if r.closed {
		return nil
	}
	r.closed = true
	r.r.Close()
	return nil
}

func openSpeculo(b *Buffer, en *channel.Entry) (*channel.Speculo, error) {
	return channel.OpenSpeculo(b.region, b.heap, en, channel.SpeculoEnv{})
}

// recoverExtents frees the extents that speculo writers killed while
// making one left unmarked (channel.RecoverExtents).
func (b *Buffer) recoverExtents() error {
	var areas []*channel.Speculo
	err := b.reg.Each(func(en *channel.Entry) error {
		if en.Type == channel.TypeSpeculo {
			if sp, err := openSpeculo(b, en); err == nil {
				areas = append(areas, sp)
			}
		}
		return nil
	})
	_, rerr := channel.RecoverExtents(b.heap, b.region.Bytes(), areas)
	return errors.Join(err, rerr)
}

func init() {
	open := openSpeculo
	registerType(channel.TypeSpeculo, typeOps{
		check: func(b *Buffer, en *channel.Entry) error {
			sp, err := open(b, en)
			if err != nil {
				return err
			}
			return sp.Check()
		},
		abandoned: func(b *Buffer, en *channel.Entry) bool {
			sp, err := open(b, en)
			return err == nil && sp.Abandoned()
		},
		idle: func(b *Buffer, en *channel.Entry) (bool, error) {
			sp, err := open(b, en)
			return err == nil && sp.Idle(), err
		},
		free: func(b *Buffer, en *channel.Entry) error {
			sp, err := open(b, en)
			if err != nil {
				return err
			}
			return sp.FreeExtents()
		},
	})
}
