package ipc

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"runtime/debug"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// TestSpeculoModel drives one speculo area of a buffer from one goroutine
// with random operations: one writer and two or three readers, each on a
// handle of its own, plus an auxiliary handle for checks and misuse. It
// keeps a model of the chunks the writer committed (their bytes, their
// order, their block, their expiry, whether a newer version obsoleted
// them) and of what each reader has returned. Every call is a
// non-blocking one: TryNext, or Next and Wait with a context that is
// already done. Expiry is driven by an injected clock (SpeculoClock)
// that only the test moves, and expiry times never fall on one of its
// ticks, so whether a chunk expired is never a matter of timing.
//
// The operations: Append (sizes from 0 up to MaxChunk; those that do not
// fit the area are refused), Replace, Write, Update; a reserved chunk
// left pending while readers read, then committed or aborted; GC,
// Reclaim, SetGCThreshold; the clock moving on; writer Close, a new
// writer (on the same handle or a new one), the writer's handle closed;
// readers' TryNext, Next, Wait, Latest, Rewind, Release, Close and
// reopening, their handles closed and reopened; the area removed and
// made again (with other capacity, max blocks, reader slots). Misuse:
// a second writer, Append/Replace/GC while a chunk is pending, Commit
// with none, bad sizes and block ids and thresholds, calls on a closed
// writer or reader, on a closed handle's Speculo and on a removed area's,
// more readers than slots, Remove while the area is in use, AddSpeculo
// with another capacity.
//
// What the model expects is the docs': a reader returns, in commit
// order, each committed chunk once (until Rewind), byte-exact, with its
// block, expiry and a sequence number increasing in commit order, and
// skips only the chunks that were obsoleted or expired; a new reader
// starts at the oldest valid chunk; Next and Wait give io.EOF once the
// writer closed and everything is read, and the context's error while
// it is open; Latest gives a block's newest version while it is valid,
// ErrNotExist otherwise; the Data a reader returned stays unchanged
// until that reader's next call, whatever the writer does; an Append or
// Replace is refused (ErrNoSpace) exactly when the valid chunks and the
// new one do not fit the capacity or the block limit (or, documented,
// while idle readers pin SpeculoMaxRetired old extents: then releasing
// them must let it through); misuse gets its sentinel error and changes
// nothing. Stats agree with the model, Check passes, and once the area
// is removed the heap is back where it was.
//
// The seeds are a fixed list and one from the clock; a failure logs its
// seed and the operations before it. IPC_SPECULO_SEED=<seed> runs that
// seed alone.
func TestSpeculoModel(t *testing.T) {
	seeds, _ := modelSeeds(t, "IPC_SPECULO_SEED", 1, 2, 3, 4, 5, 6, 0x5eed)
	n := modelOps(smOps)
	for _, seed := range seeds {
		t.Run(fmt.Sprintf("seed=%d", seed), func(t *testing.T) {
			newSpeculoModel(t, seed).run(n)
		})
	}
}

// smOps is how many random operations a seed runs (see modelOps).
const smOps = 40000

// smUnit is the step of the injected clock. Expiry times are set half a
// step off it, so that the clock never equals one.
const smUnit = int64(time.Millisecond)

// smAreaID is the area's channel id.
const smAreaID ChannelID = 0x5bec

// smChunk is a committed chunk in the model.
type smChunk struct {
	i        int // its index in smModel.chunks: commit order
	block    BlockID
	data     []byte
	expiry   int64  // Unix ns, 0: never
	seq      uint64 // 0: no reader returned it yet
	obsolete bool   // a newer version of its block was committed
}

// smPend is the chunk reserved and not committed.
type smPend struct {
	buf    []byte // the bytes Append or Replace returned
	want   []byte // what the test fills them with
	block  BlockID
	fresh  bool // Append (else Replace)
	expiry int64
}

// smView is a chunk a reader returned last, whose Data must stay
// unchanged until that reader's next call.
type smView struct {
	c    SpeculoChunk
	want *smChunk
	what string
}

// smReader is one reader of the model, on its own handle.
type smReader struct {
	n    int
	h    *Handle  // nil: closed
	sp   *Speculo // h's access to the area
	r    *SpeculoReader
	last int // index of the last chunk returned; -1: none (a new reader, or after Rewind)
	view *smView
}

type smWState uint8

const (
	smNever  smWState = iota // no writer attached to the area yet
	smOpen                   // a writer is attached
	smClosed                 // the last writer closed its end
)

type smModel struct {
	t    *testing.T
	seed uint64
	rng  *rand.Rand
	b    *Buffer
	op   int
	what string
	log  []string
	hits map[string]int
	dead context.Context
	now  int64 // the injected clock, Unix ns

	base      Stats  // the buffer with no area
	gen       int    // areas made so far
	gcs       uint64 // the most GCs Stats saw in an area
	capacity  int
	maxChunk  int
	maxBlocks int
	slots     int
	thresh    int // the area's GC threshold

	chunks []*smChunk
	live   []*smChunk // chunks not known to be invalid, in commit order
	newest map[BlockID]*smChunk
	blocks []BlockID // every block committed
	given  map[BlockID]bool
	known  []BlockID // well-known ids (below SpeculoAutoBlock)

	ah  *Handle // auxiliary handle: checks, misuse
	asp *Speculo

	wh     *Handle
	wsp    *Speculo
	w      *SpeculoWriter
	wstate smWState
	pend   *smPend

	readers  []*smReader
	staleW   []*SpeculoWriter // closed writers
	staleR   []*SpeculoReader // closed readers
	closedSp []*Speculo       // of closed handles
	removed  []*Speculo       // of removed areas
	handles  []*Handle        // every handle opened
}

func newSpeculoModel(t *testing.T, seed uint64) *smModel {
	b := heapBuf(t)
	m := &smModel{t: t, seed: seed, rng: rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15)), b: b, hits: map[string]int{}}
	m.now = time.Date(2100, 1, 1, 0, 0, 0, 0, time.UTC).UnixNano()
	dead, cancel := context.WithDeadline(context.Background(), time.Unix(0, 0))
	t.Cleanup(cancel)
	m.dead = dead
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("seed %d (IPC_SPECULO_SEED=%d reruns it), failed at op %d (%s); the operations before it:\n%s",
				m.seed, m.seed, m.op, m.what, strings.Join(m.log, "\n"))
		}
		for _, h := range m.handles {
			h.Close()
		}
	})
	m.ah = m.newHandle()
	// The registry's first channel takes a block of entries that stays:
	// the baseline is the buffer after a first area came and went.
	sp, err := m.ah.AddSpeculo(smAreaID+1, 64)
	require.NoError(t, err)
	require.NoError(t, sp.Remove(context.Background()))
	m.base, err = b.Stats()
	require.NoError(t, err)
	for i := range 2 + m.rng.IntN(2) {
		m.readers = append(m.readers, &smReader{n: i, last: -1})
	}
	m.makeArea()
	return m
}

// at is the message of an assertion: the seed, the operation and what.
func (m *smModel) at(format string, args ...any) string {
	return fmt.Sprintf("seed %d op %d (%s): %s", m.seed, m.op, m.what, fmt.Sprintf(format, args...))
}

// logf records the current operation.
func (m *smModel) logf(format string, args ...any) {
	m.what = fmt.Sprintf(format, args...)
	m.log = append(m.log, fmt.Sprintf("%5d %s", m.op, m.what))
	if len(m.log) > 120 {
		m.log = m.log[len(m.log)-80:]
	}
}

func (m *smModel) hit(what string) { m.hits[what]++ }

func (m *smModel) clock() time.Time { return time.Unix(0, m.now) }

// opts are the options of every AddSpeculo: the injected clock, and for
// some handles no spinning before a wait parks.
func (m *smModel) opts(extra ...SpeculoOption) []SpeculoOption {
	o := []SpeculoOption{SpeculoClock(m.clock)}
	if m.rng.IntN(2) == 0 {
		o = append(o, SpeculoSpin(-1))
	}
	return append(o, extra...)
}

func (m *smModel) newHandle() *Handle {
	h, err := m.b.NewHandle()
	require.NoError(m.t, err, m.at("NewHandle"))
	m.handles = append(m.handles, h)
	return h
}

// attach is h's access to the existing area.
func (m *smModel) attach(h *Handle) *Speculo {
	capacity := 0
	if m.rng.IntN(2) == 0 {
		capacity = m.capacity // the same capacity attaches too
	}
	sp, err := h.AddSpeculo(smAreaID, capacity, m.opts()...)
	require.NoError(m.t, err, m.at("AddSpeculo(%d) of the existing area", capacity))
	return sp
}

// makeArea creates the area with a random geometry and attaches the
// handles that are open.
func (m *smModel) makeArea() {
	t := m.t
	m.gen++
	caps := []int{256, 1001, 4096, 16384}
	capacity := caps[m.rng.IntN(len(caps))]
	var extra []SpeculoOption
	m.slots = len(m.readers) + 1 // one left for Stats, Check and the scans
	extra = append(extra, SpeculoReaderSlots(m.slots))
	if m.rng.IntN(3) == 0 {
		extra = append(extra, SpeculoMaxBlocks(min(4+m.rng.IntN(8), capacity/SpeculoChunkSpace(0))))
	}
	m.thresh = []int{0, 0, 10, 50, 100}[m.rng.IntN(5)]
	extra = append(extra, SpeculoGCThreshold(m.thresh))
	m.logf("make area %d: capacity %d", m.gen, capacity)
	_, err := m.ah.AddSpeculo(smAreaID, 0, m.opts()...)
	require.ErrorIs(t, err, ErrNotExist, m.at("AddSpeculo(0) before the area exists"))
	m.asp, err = m.ah.AddSpeculo(smAreaID, capacity, m.opts(extra...)...)
	require.NoError(t, err, m.at("AddSpeculo"))
	m.capacity, m.maxChunk, m.maxBlocks = m.asp.Capacity(), m.asp.MaxChunk(), m.asp.MaxBlocks()
	require.True(t, m.capacity >= capacity && m.capacity < capacity+8, m.at("Capacity %d of an area of %d bytes", m.capacity, capacity))
	require.Equal(t, m.capacity, SpeculoChunkSpace(m.maxChunk), m.at("MaxChunk %d: a chunk that fills the area", m.maxChunk))
	for _, n := range []int{0, 1, 7, 8, 9, 100} {
		require.Equal(t, 32+(n+7)&^7, SpeculoChunkSpace(n), m.at("SpeculoChunkSpace(%d): the payload rounded up to 8 bytes and a 32-byte header", n))
	}
	_, err = m.ah.AddSpeculo(smAreaID, m.capacity+8, m.opts()...)
	require.ErrorIs(t, err, ErrSizeMismatch, m.at("AddSpeculo with another capacity"))
	m.chunks, m.live, m.blocks = nil, nil, nil
	m.newest, m.given = map[BlockID]*smChunk{}, map[BlockID]bool{}
	m.known = []BlockID{1, 2, 3, 0x1000, SpeculoAutoBlock - 1}
	m.wstate, m.w, m.pend = smNever, nil, nil
	if m.wh != nil {
		m.wsp = m.attach(m.wh)
	}
	for _, rd := range m.readers {
		rd.r, rd.view, rd.last = nil, nil, -1
		if rd.h != nil {
			rd.sp = m.attach(rd.h)
		}
	}
}

// ---- the model

func (m *smModel) valid(c *smChunk) bool {
	return !c.obsolete && (c.expiry == 0 || c.expiry > m.now)
}

// prune drops the chunks that are no longer valid from live.
func (m *smModel) prune() {
	m.live = slices.DeleteFunc(m.live, func(c *smChunk) bool { return !m.valid(c) })
}

// validSet is the space the valid chunks take and their blocks.
func (m *smModel) validSet() (space int, blocks map[BlockID]bool) {
	m.prune()
	blocks = map[BlockID]bool{}
	for _, c := range m.live {
		space += SpeculoChunkSpace(len(c.data))
		blocks[c.block] = true
	}
	return space, blocks
}

// fits reports whether a chunk of size bytes for block (0: a new one)
// fits the area once it is collected: the valid chunks and it within
// the capacity, their blocks within the limit.
func (m *smModel) fits(block BlockID, size int) bool {
	space, blocks := m.validSet()
	need := len(blocks)
	if block == 0 || !blocks[block] {
		need++
	}
	return space+SpeculoChunkSpace(size) <= m.capacity && need <= m.maxBlocks
}

// nextFor is the chunk rd's next TryNext must return: the first valid
// one after the last it returned (nil: none).
func (m *smModel) nextFor(rd *smReader) *smChunk {
	for _, c := range m.chunks[rd.last+1:] {
		if m.valid(c) {
			return c
		}
	}
	return nil
}

// payload is a chunk's bytes: a stamp (area, chunk) and random bytes.
func (m *smModel) payload(n int) []byte {
	p := make([]byte, n)
	for i := range p {
		p[i] = byte(m.rng.Uint32())
	}
	if n >= 8 {
		binary.LittleEndian.PutUint64(p, uint64(m.gen)<<40|uint64(len(m.chunks)+1))
	}
	return p
}

// size is a random payload size: mostly small for the area, now and
// then up to MaxChunk.
func (m *smModel) size() int {
	var n int
	switch x := m.rng.IntN(40); {
	case x < 4:
		n = 0
	case x < 12:
		n = 1 + m.rng.IntN(15)
	case x < 32:
		n = 16 + m.rng.IntN(m.capacity/16+1)
	case x < 37:
		n = m.rng.IntN(m.capacity/3 + 1)
	case x < 39:
		n = m.maxChunk/2 + m.rng.IntN(m.maxChunk/2+1)
	default:
		n = m.maxChunk
	}
	return min(n, m.maxChunk)
}

// expiry is a random expiry: mostly none, else a few ticks ahead, now
// and then one past already (before 1970 too: expired as well).
func (m *smModel) expiry() (time.Time, int64) {
	never := 9 // in 20
	if m.pressure() > 0.5 {
		never = 2 // the area fills up: chunks that expire make room
	}
	switch x := m.rng.IntN(20); {
	case x < never:
		return time.Time{}, 0
	case x < 18:
		ns := m.now + int64(m.rng.IntN(20))*smUnit + smUnit/2
		return time.Unix(0, ns), ns
	case x < 19:
		ns := m.now - smUnit/2
		return time.Unix(0, ns), ns
	default:
		return time.Unix(-1, 0), 1
	}
}

// pressure is how full of valid chunks the area is: the larger of the
// shares of the capacity and of the block limit they take.
func (m *smModel) pressure() float64 {
	space, blocks := m.validSet()
	return max(float64(space)/float64(m.capacity), float64(len(blocks))/float64(m.maxBlocks))
}

// commitChunk records a chunk the writer committed.
func (m *smModel) commitChunk(block BlockID, data []byte, expiry int64) {
	c := &smChunk{i: len(m.chunks), block: block, data: data, expiry: expiry}
	if old := m.newest[block]; old != nil {
		old.obsolete = true
	} else {
		m.blocks = append(m.blocks, block)
	}
	m.newest[block] = c
	m.hit("committed")
	m.chunks = append(m.chunks, c)
	m.live = append(m.live, c)
	if len(m.live) > 64 {
		m.prune()
	}
}

// checkChunk compares a chunk a reader returned with the model's.
func (m *smModel) checkChunk(got SpeculoChunk, want *smChunk, what string) {
	t := m.t
	require.Equal(t, want.block, got.Block, m.at("%s: block of chunk #%d", what, want.i))
	require.Equal(t, want.expiry, got.ExpiryNs(), m.at("%s: expiry of chunk #%d", what, want.i))
	if !bytes.Equal(want.data, got.Data) {
		require.Failf(t, "wrong bytes", m.at("%s: chunk #%d of block %#x: %d bytes %x, want %d bytes %x", what, want.i, want.block, len(got.Data), clip(got.Data), len(want.data), clip(want.data)))
	}
	if want.seq != 0 {
		require.Equal(t, want.seq, got.Seq, m.at("%s: sequence number of chunk #%d", what, want.i))
		return
	}
	for j := want.i - 1; j >= 0; j-- {
		if s := m.chunks[j].seq; s != 0 {
			require.Greater(t, got.Seq, s, m.at("%s: sequence number of chunk #%d, after chunk #%d's", what, want.i, j))
			break
		}
	}
	for _, c := range m.chunks[want.i+1:] {
		if c.seq != 0 {
			require.Less(t, got.Seq, c.seq, m.at("%s: sequence number of chunk #%d, before chunk #%d's", what, want.i, c.i))
			break
		}
	}
	want.seq = got.Seq
}

func clip(b []byte) []byte { return b[:min(len(b), 24)] }

// ---- running

func (m *smModel) run(n int) {
	t := m.t
	defer func() {
		if p := recover(); p != nil {
			t.Fatalf("seed %d op %d (%s): panic: %v\n%s", m.seed, m.op, m.what, p, debug.Stack())
		}
	}()
	ops := []modelOp{
		{14, m.appendOne},
		{6, m.reserve},
		{8, m.finishPending},
		{8, m.replaceOne},
		{3, m.write},
		{6, m.tick},
		{16, m.tryNext},
		{5, m.next},
		{3, m.wait},
		{6, m.latest},
		{1, m.rewind},
		{2, m.release},
		{3, m.openReader},
		{1, m.closeReader},
		{1, m.cycleReaderHandle},
		{2, m.gc},
		{1, m.reclaim},
		{1, m.threshold},
		{2, m.openWriter},
		{1, m.closeWriter},
		{8, m.misuse},
		{1, m.scan},
		{1, m.recover},
	}
	recreateEvery := max(n/3+1, 300)
	for m.op = 0; m.op < n; m.op++ {
		if m.op > 0 && m.op%recreateEvery == 0 {
			m.recreate()
		} else {
			modelStep(m.rng, ops)
		}
		m.checkViews()
		if m.op%64 == 0 {
			m.verify()
		}
	}
	m.finish()
	t.Logf("seed %d: %d operations, %d areas, %d chunks in the last, up to %d GCs in one; %v", m.seed, n, m.gen, len(m.chunks), m.gcs, m.hits)
}

// checkViews checks that the chunk each reader returned last is
// unchanged: it stays valid until the reader's next call.
func (m *smModel) checkViews() {
	for _, rd := range m.readers {
		if v := rd.view; v != nil && !bytes.Equal(v.c.Data, v.want.data) {
			require.Failf(m.t, "a view changed", m.at("reader %d's chunk #%d (block %#x, from %s) changed before the reader's next call: %x, want %x",
				rd.n, v.want.i, v.want.block, v.what, clip(v.c.Data), clip(v.want.data)))
		}
	}
}

// verify checks the buffer and the area's statistics against the model.
func (m *smModel) verify() {
	t := m.t
	require.NoError(t, m.b.Check(), m.at("Check"))
	st, err := m.asp.Stats()
	require.NoError(t, err, m.at("Stats"))
	space, blocks := m.validSet()
	require.Equal(t, len(m.live), st.ValidChunks, m.at("Stats: valid chunks"))
	require.Equal(t, uint64(space), st.ValidBytes, m.at("Stats: valid bytes"))
	require.Equal(t, st.Committed, st.ValidBytes+st.InvalidBytes, m.at("Stats: committed bytes"))
	require.GreaterOrEqual(t, st.Blocks, len(blocks), m.at("Stats: indexed blocks"))
	require.LessOrEqual(t, st.Blocks, m.maxBlocks, m.at("Stats: indexed blocks"))
	require.Equal(t, m.wstate == smOpen, st.Writer, m.at("Stats: writer"))
	m.gcs = max(m.gcs, st.GCs)
	open := 0
	for _, rd := range m.readers {
		if rd.r != nil {
			open++
		}
	}
	require.Equal(t, open, st.Readers, m.at("Stats: readers"))
	// "A GC does not free an extent a reader is on": the extents of the
	// readers' epochs and the current one are all still there.
	on := map[uint64]bool{}
	if st.Epoch != 0 {
		on[st.Epoch] = true
	}
	for _, rd := range m.readers {
		if rd.r == nil {
			continue
		}
		e := rd.r.Epoch()
		require.LessOrEqual(t, e, st.Epoch, m.at("reader %d's epoch", rd.n))
		if rd.view != nil {
			require.NotZero(t, e, m.at("reader %d's epoch while it holds a chunk", rd.n))
		}
		if e != 0 {
			on[e] = true
		}
	}
	require.GreaterOrEqual(t, st.Extents, len(on), m.at("Stats: extents, with readers on epochs %v", on))
	if m.wstate != smNever {
		require.Equal(t, st.GCs+1, st.Epoch, m.at("Stats: the epoch grows by one with every GC"))
		require.GreaterOrEqual(t, st.Extents, 1, m.at("Stats: extents"))
		require.LessOrEqual(t, st.Extents, 1+SpeculoMaxRetired, m.at("Stats: extents"))
	}
}

// ---- the writer

// ensureWriterHandle opens a writer handle if there is none.
func (m *smModel) ensureWriterHandle() {
	if m.wh == nil {
		m.wh = m.newHandle()
		m.wsp = m.attach(m.wh)
	}
}

func (m *smModel) openWriter() bool {
	if m.w != nil {
		return false
	}
	m.ensureWriterHandle()
	m.logf("writer open")
	w, err := m.wsp.Writer()
	require.NoError(m.t, err, m.at("Writer"))
	m.w, m.wstate = w, smOpen
	return true
}

func (m *smModel) closeWriter() bool {
	if m.w == nil {
		return false
	}
	if m.rng.IntN(4) == 0 {
		m.logf("writer's handle closed (pending %v)", m.pend != nil)
		require.NoError(m.t, m.wh.Close(), m.at("closing the writer's handle"))
		m.closedSp = append(m.closedSp, m.wsp)
		m.wh, m.wsp = nil, nil
	} else {
		m.logf("writer close (pending %v)", m.pend != nil)
		require.NoError(m.t, m.w.Close(), m.at("writer Close"))
	}
	m.staleW = append(m.staleW, m.w)
	m.w, m.pend, m.wstate = nil, nil, smClosed
	return true
}

// noSpace handles an ErrNoSpace the model did not expect: allowed only
// while readers pin old extents, and it must not be one the current
// extent had room for; the readers release theirs and the call is
// retried (the caller's retry must succeed).
func (m *smModel) noSpace(err error, block BlockID, size int, what string) {
	t := m.t
	st, serr := m.asp.Stats()
	require.NoError(t, serr, m.at("Stats"))
	_, blocks := m.validSet()
	hasSlot := block != 0 && blocks[block] // indexed for sure
	if st.Committed+uint64(SpeculoChunkSpace(size)) <= uint64(m.capacity) && (hasSlot || (block == 0 && st.Blocks < m.maxBlocks)) {
		require.Failf(t, "refused though it fits", m.at("%s of %d bytes: %v, though the current extent has room (%d of %d bytes committed, %d of %d blocks)",
			what, size, err, st.Committed, m.capacity, st.Blocks, m.maxBlocks))
	}
	pinned := false
	for _, rd := range m.readers {
		if rd.r != nil && rd.r.Epoch() != 0 {
			pinned = true
		}
	}
	require.True(t, pinned, m.at("%s of %d bytes: %v, though it fits once collected and no reader pins an extent", what, size, err))
	m.hit("retry after readers released")
	for _, rd := range m.readers {
		if rd.r != nil {
			rd.view = nil
			rd.r.Release()
		}
	}
}

// reserveChecked calls Append (block 0) or Replace and checks its
// outcome against the model: nil if it was refused as expected.
func (m *smModel) reserveChecked(block BlockID, size int, exp time.Time) []byte {
	t := m.t
	call := func() ([]byte, error) {
		if block == 0 {
			return m.w.Append(size, exp)
		}
		return m.w.Replace(block, size, exp)
	}
	what := "Append"
	if block != 0 {
		what = fmt.Sprintf("Replace(%#x)", block)
	}
	fits := m.fits(block, size)
	// Now and then the GCs are counted: with threshold 0 a chunk that
	// fits the current extent must not cause one.
	var before SpeculoStats
	count := m.thresh == 0 && fits && m.rng.IntN(4) == 0
	if count {
		var err error
		before, err = m.asp.Stats()
		require.NoError(t, err, m.at("Stats"))
	}
	buf, err := call()
	if !fits {
		require.ErrorIs(t, err, ErrNoSpace, m.at("%s of %d bytes that does not fit", what, size))
		m.hit("refused: full")
		return nil
	}
	if errors.Is(err, ErrNoSpace) {
		m.noSpace(err, block, size, what)
		buf, err = call()
		count = false
	}
	require.NoError(t, err, m.at("%s of %d bytes", what, size))
	require.Len(t, buf, size, m.at("%s: the bytes returned", what))
	if count {
		st, err := m.asp.Stats()
		require.NoError(t, err, m.at("Stats"))
		_, blocks := m.validSet()
		room := before.Committed+uint64(SpeculoChunkSpace(size)) <= uint64(m.capacity) &&
			((block == 0 && before.Blocks < m.maxBlocks) || (block != 0 && blocks[block]))
		if room {
			require.Equal(t, before.GCs, st.GCs, m.at("%s of %d bytes with GC threshold 0 and room in the current extent (%d of %d bytes, %d of %d blocks) collected",
				what, size, before.Committed, m.capacity, before.Blocks, m.maxBlocks))
			m.hit("threshold 0: no GC")
		}
	}
	return buf
}

// pickBlock is a block to replace: mostly one with a valid version
// (which the new one obsoletes), else any committed block or a
// well-known id.
func (m *smModel) pickBlock() BlockID {
	switch x := m.rng.IntN(20); {
	case x < 12 && len(m.live) > 0:
		m.prune()
		if len(m.live) > 0 {
			return m.live[m.rng.IntN(len(m.live))].block
		}
	case x < 17 && len(m.blocks) > 0:
		return m.blocks[m.rng.IntN(len(m.blocks))]
	}
	return m.known[m.rng.IntN(len(m.known))]
}

// commit commits the pending chunk and records it.
func (m *smModel) commit() {
	t := m.t
	p := m.pend
	m.pend = nil
	copy(p.buf, p.want) // filled last, before the commit
	id, err := m.w.Commit()
	require.NoError(t, err, m.at("Commit"))
	m.commitFor(p.fresh, p.block, id)
	m.commitChunk(id, p.want, p.expiry)
}

// commitFor checks the block id a commit returned.
func (m *smModel) commitFor(fresh bool, block, id BlockID) {
	t := m.t
	if !fresh {
		require.Equal(t, block, id, m.at("Commit of a Replace: the block id"))
		return
	}
	require.GreaterOrEqual(t, id, SpeculoAutoBlock, m.at("Commit of an Append: a block id from SpeculoAutoBlock up"))
	require.False(t, m.given[id], m.at("Commit of an Append gave block %#x again", id))
	require.Nil(t, m.newest[id], m.at("Commit of an Append gave block %#x, which exists", id))
	m.given[id] = true
}

// reserveOne reserves a chunk (Append, or Replace of block) and fills
// it partly; it stays pending.
func (m *smModel) reserveOne(block BlockID) bool {
	size := m.size()
	exp, ns := m.expiry()
	m.logf("%s %d bytes, expiry %d", m.form(block), size, ns)
	buf := m.reserveChecked(block, size, exp)
	if buf == nil {
		return true
	}
	want := m.payload(size)
	half := size / 2
	copy(buf[:half], want[:half]) // the rest just before the commit
	m.pend = &smPend{buf: buf, want: want, block: block, fresh: block == 0, expiry: ns}
	return true
}

func (m *smModel) form(block BlockID) string {
	if block == 0 {
		return "Append"
	}
	return fmt.Sprintf("Replace(%#x)", block)
}

// crowded reports whether the area is (about) full of valid chunks,
// and then, three times in four, moves the clock on instead of a write
// that would most likely be refused.
func (m *smModel) crowded() bool {
	if m.pressure() >= 0.95 && m.rng.IntN(4) != 0 {
		return m.tick()
	}
	return false
}

func (m *smModel) appendOne() bool {
	if m.w == nil || m.pend != nil {
		return false
	}
	if m.crowded() {
		return true
	}
	m.reserveOne(0)
	if m.pend != nil {
		m.commit()
	}
	return true
}

func (m *smModel) replaceOne() bool {
	if m.w == nil || m.pend != nil {
		return false
	}
	if m.crowded() {
		return true
	}
	m.reserveOne(m.pickBlock())
	if m.pend != nil {
		m.commit()
	}
	return true
}

// reserve leaves a chunk pending while other operations go on.
func (m *smModel) reserve() bool {
	if m.w == nil || m.pend != nil {
		return false
	}
	var block BlockID
	if m.rng.IntN(2) == 0 {
		block = m.pickBlock()
	}
	m.reserveOne(block)
	if m.pend != nil {
		m.what += " (left pending)"
	}
	return true
}

// finishPending commits or aborts the pending chunk.
func (m *smModel) finishPending() bool {
	if m.pend == nil {
		return false
	}
	if m.rng.IntN(4) == 0 {
		m.logf("Abort")
		m.hit("aborted")
		m.w.Abort()
		m.pend = nil
		return true
	}
	m.logf("Commit")
	m.commit()
	return true
}

// write is Write or Update.
func (m *smModel) write() bool {
	if m.w == nil || m.pend != nil {
		return false
	}
	if m.crowded() {
		return true
	}
	t := m.t
	var block BlockID
	if m.rng.IntN(2) == 0 {
		block = m.pickBlock()
	}
	size := m.size()
	exp, ns := m.expiry()
	p := m.payload(size)
	call := func() (BlockID, error) {
		if block == 0 {
			return m.w.Write(p, exp)
		}
		return block, m.w.Update(block, p, exp)
	}
	what := "Write"
	if block != 0 {
		what = fmt.Sprintf("Update(%#x)", block)
	}
	m.logf("%s %d bytes, expiry %d", what, size, ns)
	fits := m.fits(block, size)
	id, err := call()
	if !fits {
		require.ErrorIs(t, err, ErrNoSpace, m.at("%s that does not fit", what))
		m.hit("refused: full")
		return true
	}
	if errors.Is(err, ErrNoSpace) {
		m.noSpace(err, block, size, what)
		id, err = call()
	}
	require.NoError(t, err, m.at("%s", what))
	m.commitFor(block == 0, block, id)
	m.commitChunk(id, p, ns)
	return true
}

func (m *smModel) tick() bool {
	d := int64(m.rng.IntN(6)) * smUnit
	if m.rng.IntN(5) == 0 {
		d = int64(10+m.rng.IntN(30)) * smUnit
	}
	m.logf("clock +%dms", d/smUnit)
	m.now += d
	return true
}

func (m *smModel) gc() bool {
	if m.w == nil {
		return false
	}
	t := m.t
	m.logf("GC (pending %v)", m.pend != nil)
	err := m.w.GC()
	if m.pend != nil {
		// The docs do not say; the writer refuses it. A GC that ran
		// would have to keep the pending chunk committable (checked
		// when it is).
		if err != nil {
			require.ErrorIs(t, err, ErrInvalidArgument, m.at("GC with a chunk pending"))
		}
		m.hit("GC while pending")
		return true
	}
	if errors.Is(err, ErrNoSpace) {
		m.noSpace(err, 0, m.capacity, "GC") // never fits: only the pinning is checked
		err = m.w.GC()
	}
	require.NoError(t, err, m.at("GC"))
	m.hit("GC")
	st, err := m.asp.Stats()
	require.NoError(t, err, m.at("Stats after GC"))
	space, blocks := m.validSet()
	require.Equal(t, len(m.live), st.Chunks, m.at("Stats after GC: the chunks kept are the valid ones"))
	require.Equal(t, uint64(space), st.Committed, m.at("Stats after GC: committed bytes"))
	require.Zero(t, st.InvalidBytes, m.at("Stats after GC: invalid bytes"))
	require.Equal(t, len(blocks), st.Blocks, m.at("Stats after GC: blocks indexed"))
	return true
}

// reclaim calls Reclaim; half the time every reader releases its extent
// first, and then every old extent must go back to the heap.
func (m *smModel) reclaim() bool {
	if m.w == nil {
		return false
	}
	t := m.t
	all := m.rng.IntN(2) == 0
	m.logf("Reclaim (readers released first: %v)", all)
	if !all {
		n, err := m.w.Reclaim()
		require.NoError(t, err, m.at("Reclaim"))
		require.GreaterOrEqual(t, n, 0, m.at("Reclaim"))
		return true
	}
	for _, rd := range m.readers {
		if rd.r != nil {
			m.called(rd)
			rd.r.Release()
		}
	}
	before, err := m.asp.Stats()
	require.NoError(t, err, m.at("Stats"))
	n, err := m.w.Reclaim()
	require.NoError(t, err, m.at("Reclaim"))
	st, err := m.asp.Stats()
	require.NoError(t, err, m.at("Stats"))
	require.Equal(t, 1, st.Extents, m.at("extents after Reclaim with no reader on an old one (%d before, %d freed)", before.Extents, n))
	require.Equal(t, before.Extents-1, n, m.at("extents Reclaim freed"))
	m.hit("Reclaim of all")
	return true
}

func (m *smModel) threshold() bool {
	if m.w == nil {
		return false
	}
	p := []int{0, 1, 10, 50, 100}[m.rng.IntN(5)]
	m.logf("SetGCThreshold(%d)", p)
	require.NoError(m.t, m.w.SetGCThreshold(p), m.at("SetGCThreshold(%d)", p))
	m.thresh = p
	return true
}

// ---- readers

// reader picks a reader; open: one with an open reader.
func (m *smModel) reader(open bool) *smReader {
	var c []*smReader
	for _, rd := range m.readers {
		if (rd.r != nil) == open {
			c = append(c, rd)
		}
	}
	if len(c) == 0 {
		return nil
	}
	return c[m.rng.IntN(len(c))]
}

// called is what every call of rd does first: the view of its last call
// is checked, and is invalid from now on.
func (m *smModel) called(rd *smReader) {
	m.checkViews()
	rd.view = nil
}

func (m *smModel) got(rd *smReader, c SpeculoChunk, want *smChunk, what string) {
	m.checkChunk(c, want, fmt.Sprintf("reader %d %s", rd.n, what))
	m.hit("read")
	rd.view = &smView{c: c, want: want, what: what}
}

func (m *smModel) tryNext() bool {
	rd := m.reader(true)
	if rd == nil {
		return false
	}
	m.logf("reader %d TryNext (after #%d)", rd.n, rd.last)
	m.called(rd)
	c, err := rd.r.TryNext()
	want := m.nextFor(rd)
	if want == nil {
		// Returned as it is, not wrapped (ErrWouldBlock's doc).
		require.Equal(m.t, ErrWouldBlock, err, m.at("reader %d TryNext with nothing new: got chunk seq %d block %#x", rd.n, c.Seq, c.Block))
		return true
	}
	require.NoError(m.t, err, m.at("reader %d TryNext, chunk #%d expected", rd.n, want.i))
	m.got(rd, c, want, "TryNext")
	rd.last = want.i
	return true
}

// ended is the error Next or Wait must give when nothing is left to
// read: io.EOF once the writer closed, the dead context's otherwise.
func (m *smModel) ended() error {
	if m.wstate == smClosed {
		return io.EOF
	}
	return context.DeadlineExceeded
}

// isEnded checks err against ended; io.EOF must be io.EOF itself, as
// callers compare it with ==.
func (m *smModel) isEnded(err error, format string, args ...any) {
	want := m.ended()
	if want == io.EOF {
		require.Equal(m.t, io.EOF, err, m.at(format, args...))
		return
	}
	require.ErrorIs(m.t, err, want, m.at(format, args...))
}

func (m *smModel) next() bool {
	rd := m.reader(true)
	if rd == nil {
		return false
	}
	m.logf("reader %d Next (after #%d, writer %d)", rd.n, rd.last, m.wstate)
	m.called(rd)
	c, err := rd.r.Next(m.dead)
	want := m.nextFor(rd)
	if want == nil {
		m.isEnded(err, "reader %d Next with nothing new: got chunk seq %d block %#x", rd.n, c.Seq, c.Block)
		m.hit("Next: " + m.ended().Error())
		return true
	}
	require.NoError(m.t, err, m.at("reader %d Next, chunk #%d expected", rd.n, want.i))
	m.got(rd, c, want, "Next")
	rd.last = want.i
	return true
}

func (m *smModel) wait() bool {
	rd := m.reader(true)
	if rd == nil {
		return false
	}
	t := m.t
	m.logf("reader %d Wait (after #%d, writer %d)", rd.n, rd.last, m.wstate)
	m.called(rd)
	err := rd.r.Wait(m.dead)
	switch {
	case m.nextFor(rd) != nil:
		require.NoError(t, err, m.at("reader %d Wait with a chunk to read", rd.n))
	case len(m.chunks) == rd.last+1:
		m.isEnded(err, "reader %d Wait with nothing committed since its last chunk", rd.n)
	default:
		// Only invalid chunks since: "a chunk may have been committed".
		if err != nil {
			m.isEnded(err, "reader %d Wait", rd.n)
		}
	}
	return true
}

// pickLatest is a block to ask Latest for: mostly one committed, else a
// well-known id, 0, or an id Append never gave.
func (m *smModel) pickLatest() BlockID {
	switch x := m.rng.IntN(10); {
	case x < 7 && len(m.blocks) > 0:
		return m.blocks[m.rng.IntN(len(m.blocks))]
	case x < 8:
		return m.known[m.rng.IntN(len(m.known))]
	case x < 9:
		return 0
	}
	return SpeculoAutoBlock + BlockID(len(m.given)) + 1 + BlockID(m.rng.IntN(3))
}

func (m *smModel) latestOf(rd *smReader, block BlockID) {
	t := m.t
	c, err := rd.r.Latest(block)
	want := m.newest[block]
	if want != nil && !m.valid(want) {
		want = nil
	}
	if want == nil {
		require.ErrorIs(t, err, ErrNotExist, m.at("reader %d Latest(%#x) of a block without a valid version: got seq %d", rd.n, block, c.Seq))
		m.hit("Latest: none")
		return
	}
	require.NoError(t, err, m.at("reader %d Latest(%#x): chunk #%d expected", rd.n, block, want.i))
	m.got(rd, c, want, fmt.Sprintf("Latest(%#x)", block))
}

func (m *smModel) latest() bool {
	rd := m.reader(true)
	if rd == nil {
		return false
	}
	block := m.pickLatest()
	m.logf("reader %d Latest(%#x)", rd.n, block)
	m.called(rd)
	m.latestOf(rd, block)
	return true
}

func (m *smModel) rewind() bool {
	rd := m.reader(true)
	if rd == nil {
		return false
	}
	m.logf("reader %d Rewind", rd.n)
	m.called(rd)
	require.NoError(m.t, rd.r.Rewind(), m.at("Rewind"))
	rd.last = -1
	return true
}

func (m *smModel) release() bool {
	rd := m.reader(true)
	if rd == nil {
		return false
	}
	m.logf("reader %d Release", rd.n)
	m.called(rd)
	rd.r.Release()
	require.Zero(m.t, rd.r.Epoch(), m.at("Epoch after Release"))
	return true
}

func (m *smModel) openReader() bool {
	rd := m.reader(false)
	if rd == nil {
		return false
	}
	m.open(rd)
	return true
}

// open opens rd's reader (and its handle if it is closed).
func (m *smModel) open(rd *smReader) {
	if rd.h == nil {
		rd.h = m.newHandle()
		rd.sp = m.attach(rd.h)
	}
	m.logf("reader %d open", rd.n)
	r, err := rd.sp.Reader()
	require.NoError(m.t, err, m.at("Reader"))
	rd.r, rd.last, rd.view = r, -1, nil // a new reader starts at the oldest valid chunk
}

func (m *smModel) closeReader() bool {
	rd := m.reader(true)
	if rd == nil {
		return false
	}
	m.logf("reader %d close", rd.n)
	m.called(rd)
	require.NoError(m.t, rd.r.Close(), m.at("reader Close"))
	m.staleR = append(m.staleR, rd.r)
	rd.r = nil
	return true
}

// cycleReaderHandle closes a reader's handle (and with it its reader).
func (m *smModel) cycleReaderHandle() bool {
	rd := m.readers[m.rng.IntN(len(m.readers))]
	if rd.h == nil {
		return false
	}
	m.logf("reader %d's handle closed (reader open %v)", rd.n, rd.r != nil)
	m.called(rd)
	require.NoError(m.t, rd.h.Close(), m.at("closing a reader's handle"))
	if rd.r != nil {
		m.staleR = append(m.staleR, rd.r)
	}
	m.closedSp = append(m.closedSp, rd.sp)
	rd.h, rd.sp, rd.r = nil, nil, nil
	return true
}

// scan reads the whole area with a new reader: the valid chunks, in
// order, and each block's latest version.
func (m *smModel) scan() bool {
	t := m.t
	m.logf("scan with a new reader")
	m.prune()
	r, err := m.asp.Reader()
	require.NoError(t, err, m.at("Reader for the scan"))
	defer r.Close()
	rd := &smReader{n: -1, r: r, last: -1}
	for _, want := range m.live {
		c, err := r.TryNext()
		require.NoError(t, err, m.at("scan: chunk #%d expected", want.i))
		m.got(rd, c, want, "scan")
	}
	_, err = r.TryNext()
	require.ErrorIs(t, err, ErrWouldBlock, m.at("scan: after the last valid chunk"))
	_, err = r.Next(m.dead)
	m.isEnded(err, "scan: Next after the last valid chunk")
	for _, b := range m.blocks[max(0, len(m.blocks)-40):] {
		m.latestOf(rd, b)
	}
	return true
}

// ---- misuse

func (m *smModel) misuse() bool {
	t := m.t
	switch m.rng.IntN(13) {
	case 0: // a second writer
		if m.w == nil {
			return false
		}
		sp := m.asp
		if rd := m.readers[m.rng.IntN(len(m.readers))]; rd.sp != nil && m.rng.IntN(2) == 0 {
			sp = rd.sp
		} else if m.rng.IntN(3) == 0 {
			sp = m.wsp // the writer's own handle
		}
		m.logf("misuse: a second writer (pending %v)", m.pend != nil)
		_, err := sp.Writer()
		require.ErrorIs(t, err, ErrBusy, m.at("a second writer"))
	case 1: // a reservation while one is pending
		if m.pend == nil {
			return false
		}
		m.logf("misuse: Append/Replace/Write/Update with a chunk pending")
		var err error
		switch m.rng.IntN(4) {
		case 0:
			_, err = m.w.Append(8, time.Time{})
		case 1:
			_, err = m.w.Replace(m.pickBlock(), 8, time.Time{})
		case 2:
			_, err = m.w.Write([]byte("x"), time.Time{})
		case 3:
			err = m.w.Update(m.pickBlock(), []byte("x"), time.Time{})
		}
		require.ErrorIs(t, err, ErrInvalidArgument, m.at("a second chunk pending"))
	case 2: // Commit with nothing pending
		if m.w == nil || m.pend != nil {
			return false
		}
		m.logf("misuse: Commit with nothing pending")
		_, err := m.w.Commit()
		require.ErrorIs(t, err, ErrInvalidArgument, m.at("Commit with nothing pending"))
	case 3: // bad sizes
		if m.w == nil || m.pend != nil {
			return false
		}
		size := []int{-1, m.maxChunk + 1, m.maxChunk + 8, math.MaxInt}[m.rng.IntN(4)]
		m.logf("misuse: a chunk of %d bytes", size)
		var err error
		if m.rng.IntN(2) == 0 {
			_, err = m.w.Append(size, time.Time{})
		} else {
			_, err = m.w.Replace(m.pickBlock(), size, time.Time{})
		}
		require.ErrorIs(t, err, ErrInvalidSize, m.at("a chunk of %d bytes (MaxChunk %d)", size, m.maxChunk))
	case 4: // bad block ids
		if m.w == nil || m.pend != nil {
			return false
		}
		block := []BlockID{0, SpeculoAutoBlock, m.maxGiven() + 1, m.maxGiven() + 1000, ^BlockID(0)}[m.rng.IntN(5)]
		m.logf("misuse: Replace(%#x)", block)
		var err error
		if m.rng.IntN(2) == 0 {
			_, err = m.w.Replace(block, 8, time.Time{})
		} else {
			err = m.w.Update(block, []byte("12345678"), time.Time{})
		}
		require.ErrorIs(t, err, ErrInvalidArgument, m.at("Replace of block %#x, never given", block))
	case 5: // bad thresholds
		if m.w == nil {
			return false
		}
		p := []int{-1, 101, 1000}[m.rng.IntN(3)]
		m.logf("misuse: SetGCThreshold(%d)", p)
		require.ErrorIs(t, m.w.SetGCThreshold(p), ErrInvalidArgument, m.at("SetGCThreshold(%d)", p))
	case 6: // a closed writer
		if len(m.staleW) == 0 {
			return false
		}
		w := m.staleW[m.rng.IntN(len(m.staleW))]
		m.logf("misuse: a closed writer")
		m.closedWriter(w)
	case 7: // a closed reader
		if len(m.staleR) == 0 {
			return false
		}
		r := m.staleR[m.rng.IntN(len(m.staleR))]
		m.logf("misuse: a closed reader")
		m.closedReader(r)
	case 8: // more readers than slots
		return m.tooManyReaders()
	case 9: // Remove while in use
		if m.w == nil && m.reader(true) == nil {
			return false
		}
		m.logf("misuse: Remove while the area is in use")
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		require.ErrorIs(t, m.asp.Remove(ctx), ErrBusy, m.at("Remove while in use"))
	case 10: // a closed handle's Speculo
		if len(m.closedSp) == 0 {
			return false
		}
		sp := m.closedSp[m.rng.IntN(len(m.closedSp))]
		m.logf("misuse: Writer and Reader on a closed handle's Speculo")
		_, err := sp.Writer()
		require.ErrorIs(t, err, ErrClosed, m.at("Writer through a closed handle"))
		_, err = sp.Reader()
		require.ErrorIs(t, err, ErrClosed, m.at("Reader through a closed handle"))
		_, err = sp.h.AddSpeculo(smAreaID, 0)
		require.ErrorIs(t, err, ErrClosed, m.at("AddSpeculo on a closed handle"))
	case 11: // a removed area's Speculo
		if len(m.removed) == 0 {
			return false
		}
		sp := m.removed[m.rng.IntN(len(m.removed))]
		m.logf("misuse: a removed area's Speculo")
		want := ErrNotExist
		if sp.h.isClosed.Load() {
			want = ErrClosed // its handle was closed since
		}
		_, err := sp.Writer()
		require.ErrorIs(t, err, want, m.at("Writer of a removed area (the id was made again since)"))
		_, err = sp.Reader()
		require.ErrorIs(t, err, want, m.at("Reader of a removed area (the id was made again since)"))
		_, err = sp.Stats()
		require.ErrorIs(t, err, ErrNotExist, m.at("Stats of a removed area (the id was made again since)"))
	case 12: // AddSpeculo with another capacity; an Abort with nothing pending
		m.logf("misuse: AddSpeculo with another capacity; Abort with nothing pending")
		_, err := m.ah.AddSpeculo(smAreaID, m.capacity+64, m.opts()...)
		require.ErrorIs(t, err, ErrSizeMismatch, m.at("AddSpeculo with another capacity"))
		if m.w != nil && m.pend == nil {
			m.w.Abort()
		}
	}
	m.hit("misuse")
	return true
}

func (m *smModel) maxGiven() BlockID {
	x := SpeculoAutoBlock
	for id := range m.given {
		x = max(x, id)
	}
	return x
}

// closedWriter: every call on a closed writer is ErrClosed or does
// nothing, whatever writer holds the end now.
func (m *smModel) closedWriter(w *SpeculoWriter) {
	t := m.t
	_, err := w.Append(8, time.Time{})
	require.ErrorIs(t, err, ErrClosed, m.at("Append on a closed writer"))
	// A well-known id: an id Append gave after this writer closed is
	// refused as never given (TestSpeculoBugClosedWriterReplace).
	known := m.known[m.rng.IntN(len(m.known))]
	_, err = w.Replace(known, 8, time.Time{})
	require.ErrorIs(t, err, ErrClosed, m.at("Replace on a closed writer"))
	_, err = w.Commit()
	require.ErrorIs(t, err, ErrClosed, m.at("Commit on a closed writer"))
	_, err = w.Write([]byte("x"), time.Time{})
	require.ErrorIs(t, err, ErrClosed, m.at("Write on a closed writer"))
	require.ErrorIs(t, w.Update(known, []byte("x"), time.Time{}), ErrClosed, m.at("Update on a closed writer"))
	require.ErrorIs(t, w.GC(), ErrClosed, m.at("GC on a closed writer"))
	_, err = w.Reclaim()
	require.ErrorIs(t, err, ErrClosed, m.at("Reclaim on a closed writer"))
	require.ErrorIs(t, w.SetGCThreshold(50), ErrClosed, m.at("SetGCThreshold on a closed writer"))
	w.Abort()
	require.NoError(t, w.Close(), m.at("Close of a closed writer"))
}

// closedReader: every call on a closed reader is ErrClosed or does
// nothing.
func (m *smModel) closedReader(r *SpeculoReader) {
	t := m.t
	_, err := r.TryNext()
	require.ErrorIs(t, err, ErrClosed, m.at("TryNext on a closed reader"))
	_, err = r.Next(m.dead)
	require.ErrorIs(t, err, ErrClosed, m.at("Next on a closed reader"))
	_, err = r.Latest(m.pickLatest())
	require.ErrorIs(t, err, ErrClosed, m.at("Latest on a closed reader"))
	require.ErrorIs(t, r.Rewind(), ErrClosed, m.at("Rewind on a closed reader"))
	require.ErrorIs(t, r.Wait(m.dead), ErrClosed, m.at("Wait on a closed reader"))
	r.Release()
	require.Zero(t, r.Epoch(), m.at("Epoch of a closed reader"))
	require.NoError(t, r.Close(), m.at("Close of a closed reader"))
}

// tooManyReaders fills every reader slot, checks that one more reader
// and Stats are refused, reads the area with the extra readers, and
// closes them.
func (m *smModel) tooManyReaders() bool {
	t := m.t
	m.logf("misuse: more readers than slots (%d)", m.slots)
	h := m.newHandle()
	sp := m.attach(h)
	var extra []*SpeculoReader
	for {
		r, err := sp.Reader()
		if err != nil {
			require.ErrorIs(t, err, ErrBusy, m.at("a reader beyond the slots"))
			break
		}
		extra = append(extra, r)
		require.LessOrEqual(t, len(extra), m.slots, m.at("more readers than slots"))
	}
	open := 0
	for _, rd := range m.readers {
		if rd.r != nil {
			open++
		}
	}
	require.Len(t, extra, m.slots-open, m.at("readers that fit the free slots"))
	_, err := m.asp.Stats()
	require.ErrorIs(t, err, ErrBusy, m.at("Stats with every slot taken"))
	require.NoError(t, m.b.Check(), m.at("Check with every slot taken"))
	m.prune()
	for i, r := range extra {
		rd := &smReader{n: 100 + i, r: r, last: -1}
		for _, want := range m.live {
			c, err := r.TryNext()
			require.NoError(t, err, m.at("extra reader: chunk #%d expected", want.i))
			m.got(rd, c, want, "TryNext")
		}
		_, err := r.TryNext()
		require.ErrorIs(t, err, ErrWouldBlock, m.at("extra reader: after the last valid chunk"))
	}
	require.NoError(t, h.Close(), m.at("closing the extra readers' handle"))
	for _, r := range extra {
		m.staleR = append(m.staleR, r)
	}
	m.closedSp = append(m.closedSp, sp)
	return true
}

// ---- the end

// drain reads what every reader has left (opening the closed ones), then
// closes the writer, and checks that they all get io.EOF.
func (m *smModel) drain() {
	t := m.t
	if m.pend != nil {
		m.commit()
	}
	for _, rd := range m.readers {
		if rd.r == nil {
			m.open(rd)
		}
	}
	readAll := func() {
		for _, rd := range m.readers {
			m.logf("reader %d reads what is left", rd.n)
			for {
				m.called(rd)
				c, err := rd.r.Next(m.dead)
				want := m.nextFor(rd)
				if want == nil {
					m.isEnded(err, "reader %d Next at the end", rd.n)
					break
				}
				require.NoError(t, err, m.at("reader %d Next, chunk #%d expected", rd.n, want.i))
				m.got(rd, c, want, "Next")
				rd.last = want.i
			}
		}
	}
	readAll()
	if m.w != nil {
		m.logf("writer close")
		require.NoError(t, m.w.Close(), m.at("writer Close"))
		m.staleW = append(m.staleW, m.w)
		m.w, m.wstate = nil, smClosed
	}
	readAll()
	m.scan()
	m.verify()
}

// closeEnds closes the writer and every reader.
func (m *smModel) closeEnds() {
	t := m.t
	for _, rd := range m.readers {
		if rd.r != nil {
			m.called(rd)
			require.NoError(t, rd.r.Close(), m.at("reader Close"))
			m.staleR = append(m.staleR, rd.r)
			rd.r = nil
		}
	}
	if m.w != nil {
		require.NoError(t, m.w.Close(), m.at("writer Close"))
		m.staleW = append(m.staleW, m.w)
		m.w, m.pend, m.wstate = nil, nil, smClosed
	}
}

// removeArea closes every end, removes the area, and checks that the
// heap is back where it was before the area.
func (m *smModel) removeArea() {
	t := m.t
	m.closeEnds()
	m.logf("Remove area %d", m.gen)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	require.NoError(t, m.asp.Remove(ctx), m.at("Remove"))
	require.ErrorIs(t, m.asp.Remove(ctx), ErrNotExist, m.at("Remove again"))
	m.gone()
}

// gone checks what is left once the area was removed.
func (m *smModel) gone() {
	t := m.t
	m.removed = append(m.removed, m.asp)
	if m.wsp != nil {
		m.removed = append(m.removed, m.wsp)
	}
	for _, rd := range m.readers {
		if rd.sp != nil {
			m.removed = append(m.removed, rd.sp)
		}
	}
	// Closed writers and readers of a removed area stay closed.
	if len(m.staleW) > 0 {
		m.closedWriter(m.staleW[m.rng.IntN(len(m.staleW))])
	}
	if len(m.staleR) > 0 {
		m.closedReader(m.staleR[m.rng.IntN(len(m.staleR))])
	}
	st, err := m.b.Stats()
	require.NoError(t, err, m.at("Stats"))
	require.Equal(t, m.base.Channels, st.Channels, m.at("channels once the area is removed"))
	require.Equal(t, m.base.Heap.FreeBytes, st.Heap.FreeBytes, m.at("free heap bytes once the area is removed"))
	require.Equal(t, m.base.Heap.AllocExtents, st.Heap.AllocExtents, m.at("heap extents once the area is removed"))
	require.NoError(t, m.b.Check(), m.at("Check once the area is removed"))
}

// recover calls Buffer.Recover, which removes the area if it is
// abandoned (its writer closed, no reader open; made so now and then)
// and leaves it alone otherwise (every process is alive).
func (m *smModel) recover() bool {
	t := m.t
	if m.rng.IntN(8) != 0 {
		return false // rarer than its weight of 1
	}
	if m.wstate != smNever && m.rng.IntN(3) == 0 {
		if m.pend != nil {
			m.commit()
		}
		m.closeEnds()
	}
	abandoned := m.wstate == smClosed && m.reader(true) == nil
	m.logf("Recover (area abandoned: %v)", abandoned)
	before, err := m.b.Stats()
	require.NoError(t, err, m.at("Stats"))
	n, err := m.b.Recover()
	require.NoError(t, err, m.at("Recover"))
	if !abandoned {
		require.Zero(t, n, m.at("Recover reclaimed bytes with every process alive and the area in use"))
		st, err := m.b.Stats()
		require.NoError(t, err, m.at("Stats"))
		require.Equal(t, before.Heap.FreeBytes, st.Heap.FreeBytes, m.at("free heap bytes after a Recover that found nothing"))
		m.hit("Recover: nothing")
		return true
	}
	require.Positive(t, n, m.at("Recover of the abandoned area"))
	_, err = m.asp.Writer()
	require.ErrorIs(t, err, ErrNotExist, m.at("Writer of an area Recover removed"))
	_, err = m.asp.Reader()
	require.ErrorIs(t, err, ErrNotExist, m.at("Reader of an area Recover removed"))
	m.gone()
	m.makeArea()
	m.hit("Recover: removed the area")
	return true
}

// recreate drains, removes and makes the area again, with the handles
// that are open.
func (m *smModel) recreate() {
	m.drain()
	m.removeArea()
	m.makeArea()
	m.hit("recreate")
}

// finish drains and removes the area, closes every handle, and checks
// that nothing is left.
func (m *smModel) finish() {
	t := m.t
	m.op++
	m.drain()
	m.removeArea()
	for _, h := range m.handles {
		require.NoError(t, h.Close(), m.at("closing the handles"))
	}
	st, err := m.b.Stats()
	require.NoError(t, err, m.at("Stats"))
	require.Equal(t, m.base.Heap.FreeBytes, st.Heap.FreeBytes, m.at("free heap bytes at the end"))
	require.Equal(t, m.base.Heap.AllocExtents, st.Heap.AllocExtents, m.at("heap extents at the end"))
	require.NoError(t, m.b.Check(), m.at("Check at the end"))
}

// TestSpeculoClosedWriterReplace: Replace and Update on a closed writer
// are ErrClosed, as every other call on a closed writer, also for a block
// a later writer of the area gave. They checked the block id first,
// against the ids this writer knew, and refused such a block as "never
// given" (ErrInvalidArgument), which was false. TestSpeculoModel found it.
func TestSpeculoClosedWriterReplace(t *testing.T) {
	b := heapBuf(t)
	h := testHandle(t, b)
	sp, err := h.AddSpeculo(1, 4096)
	require.NoError(t, err)
	w1, err := sp.Writer()
	require.NoError(t, err)
	require.NoError(t, w1.Close())
	w2, err := sp.Writer()
	require.NoError(t, err)
	block, err := w2.Write([]byte("v1"), time.Time{})
	require.NoError(t, err)

	_, err = w1.Append(8, time.Time{})
	require.ErrorIs(t, err, ErrClosed, "Append on a closed writer")
	_, err = w1.Replace(block, 8, time.Time{})
	require.ErrorIs(t, err, ErrClosed, "Replace on a closed writer, of a block the area has")
	require.ErrorIs(t, w1.Update(block, []byte("v2"), time.Time{}), ErrClosed, "Update on a closed writer, of a block the area has")
	require.NoError(t, w2.Close())
}

// TestSpeculoExpiredThreshold: expired chunks count toward the GC
// threshold once the writer notices them, within 64 appends
// (SetGCThreshold), and the GC comes then, before the area is full;
// obsoleted chunks count at once.
func TestSpeculoExpiredThreshold(t *testing.T) {
	b := heapBuf(t)
	h := testHandle(t, b)
	now := time.Date(2100, 1, 1, 0, 0, 0, 0, time.UTC)
	clock := SpeculoClock(func() time.Time { return now })

	// 64 KiB at 1%: ten expired chunks of 64 bytes are past the
	// threshold, and 64 more chunks fit without a GC.
	sp, err := h.AddSpeculo(1, 64<<10, SpeculoGCThreshold(1), clock)
	require.NoError(t, err)
	w, err := sp.Writer()
	require.NoError(t, err)
	for range 10 {
		_, err := w.Write(make([]byte, 64), now.Add(time.Second))
		require.NoError(t, err)
	}
	now = now.Add(time.Hour)
	st, err := sp.Stats()
	require.NoError(t, err)
	require.Greater(t, st.InvalidBytes*100, st.Capacity, "the expired chunks are past 1%%")
	require.Zero(t, st.GCs)
	for i := range 64 {
		_, err = w.Write(make([]byte, 64), time.Time{})
		require.NoError(t, err)
		st, err = sp.Stats()
		require.NoError(t, err)
		if st.GCs > 0 {
			break
		}
		require.Less(t, st.Committed+1024, st.Capacity, "append %d: the area is far from full", i)
	}
	require.Equal(t, uint64(1), st.GCs, "collected within 64 appends")
	require.NoError(t, w.Close())

	// Obsoleted chunks past the threshold: collected at once.
	sp2, err := h.AddSpeculo(2, 4096, SpeculoGCThreshold(10), clock)
	require.NoError(t, err)
	w2, err := sp2.Writer()
	require.NoError(t, err)
	id, err := w2.Write(make([]byte, 64), time.Time{})
	require.NoError(t, err)
	for range 10 {
		require.NoError(t, w2.Update(id, make([]byte, 64), time.Time{}))
	}
	st, err = sp2.Stats()
	require.NoError(t, err)
	require.Positive(t, st.GCs, "obsoleted chunks past the threshold are collected")
	require.NoError(t, w2.Close())
}
