package ipc

import (
	"bytes"
	"context"
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

	"github.com/heapipc/ipc/channel"
	"github.com/heapipc/ipc/internal/mem"
	"github.com/heapipc/ipc/internal/sys"
	"github.com/heapipc/ipc/internal/testutil"
	"github.com/stretchr/testify/require"
)

// TestStreamModel drives one stream from one goroutine — its writer on one
// handle, its reader on another — with random operations, and keeps a
// byte-exact model of it: every byte committed (a deterministic sequence,
// so that a byte misplaced, lost or repeated shows), the reader's
// position, the backlog it may rewind into, the generation, which ends
// are open or closed, the counters Stats reports, and the ring's bytes.
// Every call is one that cannot block for ever: Try forms, and the
// blocking forms under a context that has already expired.
//
// The operations: writes by Spans (filled in part, committed in parts),
// Reserve (ring-direct or staged across the end of the ring; committed
// whole, in part, later, or never), TryWrite, Write and WriteContext
// (sizes from 0 to beyond the capacity), ReadFrom (a bytes.Reader, some
// that fail at their end); reads by Spans, View, TryRead, Read and
// ReadContext, WriteTo (into a bytes.Buffer, or a writer that fails part
// way); Backlog, Rewind, SetBacklog; Peek, Stats, Generation, WaitReset,
// WaitSpace, WaitData and Notify (watching, woken by the other end, closed
// by a close of either end); Reset and Zero from either end, also while
// spans are held, and another end's Zero under way (alive: no room for the
// writer, a Zero is ErrBusy; dead: taken over); Close (of the end, or of its
// handle) and reopening (with or without WithBacklog, WithCapacity or
// WithStreamCapacity), the stream's removal once both ends closed and it
// drained (or by RemoveStream), and its recreation with another capacity.
//
// Misuse, with the docs' expectations: Commit or Consume of more than the
// spans, the reservation or the view held, or negative, or with nothing
// held; Reserve and View of sizes out of range (ErrInvalidSize) or beyond
// what is there (ErrWouldBlock); Rewind beyond the backlog and SetBacklog
// out of range (ErrInvalidArgument); a second end (ErrBusy), another
// capacity (ErrSizeMismatch), another type (ErrWrongType), bad options;
// every call on a closed end (ErrClosed). Misuse must change nothing.
//
// What "held" means follows the docs: spans are valid until the next call
// on their end, a reservation is committed once, a view is consumed by
// Consume(n). A call that only looks (Peek, Stats, WaitSpace, ...) in
// between leaves it to the implementation whether the spans still count
// (either answer passes); a call that moves data (TryWrite, Read, ...)
// leaves nothing held. A refused call changes nothing: after a Reserve or
// View refused with ErrWouldBlock, what was held is still held (channel's
// TestStreamSpansWrapAround consumes a view after one), or at least let
// go of (a Commit or Consume refused): either passes.
//
// After every operation the ring's bytes in shared memory must be the
// model's (the writer's spans and ring-direct reservations are written
// through, staged ones at Commit; Zero clears; a new stream's ring is
// zero), now and then Stats (from the ends and from a view of the control
// block) must be the model's, and Buffer.Check must pass.
//
// The faults the regression tests at the end pin down (all fixed) are
// reported once per seed with the name of the test, and the model then
// follows what the implementation did, so that a run goes on finding
// others.
//
// The seeds are a fixed list and one from the clock; a failure logs its
// seed and the operations before it. IPC_STREAM_SEED=<seed> runs that
// seed alone.
func TestStreamModel(t *testing.T) {
	seeds, single := modelSeeds(t, "IPC_STREAM_SEED", 1, 2, 3, 4, 5, 6, 0x5eed, 20260301)
	n := modelOps(stmOps)
	hits, ran := map[string]int{}, 0
	for _, seed := range seeds {
		t.Run(fmt.Sprintf("seed=%d", seed), func(t *testing.T) {
			m := newStreamModel(t, seed)
			m.run(n)
			for k, v := range m.hits {
				hits[k] += v
			}
			ran++
		})
	}
	if n < stmOps || single || ran < len(seeds) {
		return
	}
	// The runs must have reached what they are for.
	for _, k := range []string{
		"spans wrapped", "reserve staged", "reserve direct", "view copied", "view direct",
		"commit after reset", "consume after reset", "commit left for later", "commit misuse refused",
		"consume misuse refused", "rewind", "rewind misuse", "set backlog", "trywrite full",
		"tryread eof", "read eof", "writeto short", "readfrom failing src", "zero", "reset",
		"notify space", "notify data", "notify reset", "notify data wake", "notify space wake", "notify eof",
		"notify end closed", "notify reader closed", "zero busy", "zero dead zeroer", "removed", "recreated", "busy", "size mismatch",
		"after close", "reopen reader with unread bytes", "writer closed pipe", "handle close", "writer's backlog refused",
	} {
		if hits[k] == 0 {
			t.Errorf("no run reached %q", k)
		}
	}
}

// stmOps is how many random operations a seed runs (see modelOps).
const stmOps = 40000

// stmID is the model's stream.
const stmID ChannelID = 7

// stmCaps are the capacities a stream is created with: small ones, so that
// the ring wraps often, and a few larger.
var stmCaps = []int{1, 2, 3, 5, 8, 13, 64, 100, 257, 4096}

// stmGuard bounds a wait for a notification that must come: a hang, not a
// timing.
const stmGuard = 10 * time.Second

// The faults the regression tests pin down, and the tests.
const (
	stmFaultCommitPastReserve = "Commit of more than the Reserve before it is accepted"
	stmFaultCommitUnheld      = "Commit with no spans or reservation held is accepted"
	stmFaultConsumePastView   = "Consume of more than the View before it is accepted"
	stmFaultConsumeUnheld     = "Consume with no spans or view held is accepted"
	stmFaultRefusedOpenCloses = "a refused StreamReader open (WithBacklog too large) closes the reader end"
	stmFaultRefusedRearms     = "after a refused Reserve or View, Commit or Consume applies to the whole current room or data, not what was held"
)

var stmFaultTests = map[string]string{
	stmFaultCommitPastReserve: "TestStreamCommitOnlyHandedOut",
	stmFaultCommitUnheld:      "TestStreamCommitOnlyHandedOut and TestStreamRefusedCallKeepsSpans",
	stmFaultConsumePastView:   "TestStreamConsumeOnlyHandedOut",
	stmFaultConsumeUnheld:     "TestStreamConsumeOnlyHandedOut and TestStreamRefusedCallKeepsSpans",
	stmFaultRefusedOpenCloses: "TestStreamRefusedReaderOpen",
	stmFaultRefusedRearms:     "TestStreamRefusedCallKeepsSpans",
}

// stmWHeld is what the writer's user holds: spans or a reservation.
type stmWHeld struct {
	on      bool
	hard    bool   // no other call on the writer end since (see TestStreamModel)
	gen     uint64 // the generation they were handed out in
	room    int    // bytes a Commit may still publish: what is left of the spans or reservation
	fill    int    // of them, the test's own bytes filled and not committed yet
	reserve int    // a reservation of that many bytes (0: spans)
	staged  []byte // a staged reservation's bytes (nil: the ring's)
	refused bool   // a Reserve was refused (ErrWouldBlock) since
}

// stmRHeld is what the reader's user holds: spans or a view.
type stmRHeld struct {
	on      bool
	hard    bool
	gen     uint64
	room    int  // bytes a Consume may still release
	view    int  // a view of that many bytes (0: spans)
	refused bool // a View was refused (ErrWouldBlock) since
}

type stmModel struct {
	t    *testing.T
	seed uint64
	rng  *rand.Rand
	b    *Buffer
	hw   *Handle // the writer's
	hr   *Handle // the reader's
	hx   *Handle // for misuse
	w    *StreamWriter
	r    *StreamReader
	oldW []*StreamWriter // closed ends, for calls after Close
	oldR []*StreamReader
	dead context.Context // expired

	// The stream.
	exists           bool
	cap              int
	limit            int    // the backlog limit
	gen              uint64 // resets so far
	wClosed, rClosed bool   // an end closed, and none opened since
	low, rd, wr      uint64 // oldest byte kept, next byte to read, end of data: positions in the generation
	hist             []byte // the bytes committed from position histBase to wr
	histBase         uint64
	ring             []byte // the ring's bytes
	written, read    uint64 // the Stats counters
	next             uint64 // the index of the next byte of the sequence
	junk             uint64

	wh stmWHeld
	rh stmRHeld

	op     int
	what   string
	log    []string
	hits   map[string]int
	dead0  sys.Identity        // a dead process's (made once)
	faults map[string][]string // fault -> the first few occurrences
	nfault map[string]int
	done   bool
}

func newStreamModel(t *testing.T, seed uint64) *stmModel {
	b := heapBuf(t, WithSize(4<<20))
	m := &stmModel{
		t: t, seed: seed, rng: rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15)), b: b,
		hw: testHandle(t, b), hr: testHandle(t, b), hx: testHandle(t, b),
		hits: map[string]int{}, faults: map[string][]string{}, nfault: map[string]int{},
	}
	dead, cancel := context.WithDeadline(context.Background(), time.Unix(0, 0))
	t.Cleanup(cancel)
	m.dead = dead
	t.Cleanup(func() {
		if t.Failed() && !m.done {
			t.Logf("seed %d (IPC_STREAM_SEED=%d reruns it), failed at op %d (%s); the operations before it:\n%s",
				m.seed, m.seed, m.op, m.what, strings.Join(m.log, "\n"))
		}
	})
	return m
}

// ---- bookkeeping ----

func (m *stmModel) at(format string, args ...any) string {
	return fmt.Sprintf("seed %d op %d (%s): %s", m.seed, m.op, m.what, fmt.Sprintf(format, args...))
}

func (m *stmModel) fatalf(format string, args ...any) {
	m.t.Helper()
	m.t.Fatal(m.at(format, args...))
}

func (m *stmModel) req(ok bool, format string, args ...any) {
	m.t.Helper()
	if !ok {
		m.fatalf(format, args...)
	}
}

func (m *stmModel) ok(err error, format string, args ...any) {
	m.t.Helper()
	if err != nil {
		m.fatalf("%s: %v", fmt.Sprintf(format, args...), err)
	}
}

// is asserts that err is one of targets.
func (m *stmModel) is(err error, what string, targets ...error) {
	m.t.Helper()
	for _, target := range targets {
		if errors.Is(err, target) {
			return
		}
	}
	m.fatalf("%s: got error %v, want %v", what, err, targets)
}

// blocked asserts the unwrapped ErrWouldBlock ("returned as it is").
func (m *stmModel) blocked(err error, what string) {
	m.t.Helper()
	if err != ErrWouldBlock {
		m.fatalf("%s: got %v, want ErrWouldBlock itself", what, err)
	}
}

// expired asserts the error of a wait under the expired context.
func (m *stmModel) expired(err error, what string) {
	m.t.Helper()
	m.is(err, what, context.DeadlineExceeded)
}

// logf records the current operation, with the model's state.
func (m *stmModel) logf(format string, args ...any) {
	m.what = fmt.Sprintf(format, args...)
	state := "no stream"
	if m.exists {
		state = fmt.Sprintf("cap %d limit %d gen %d low %d rd %d wr %d wClosed %v rClosed %v", m.cap, m.limit, m.gen, m.low, m.rd, m.wr, m.wClosed, m.rClosed)
	}
	m.log = append(m.log, fmt.Sprintf("%5d %s [%s]", m.op, m.what, state))
	if len(m.log) > 100 {
		m.log = slices.Delete(m.log, 0, 40)
	}
}

func (m *stmModel) hit(k string) { m.hits[k]++ }

// fault records a known fault (see stmFaultTests).
func (m *stmModel) fault(kind, format string, args ...any) {
	m.nfault[kind]++
	switch len(m.faults[kind]) {
	case 0:
		// The first with the operations before it.
		last := m.log[max(0, len(m.log)-8):]
		m.faults[kind] = append(m.faults[kind], m.at(format, args...)+", after:\n\t\t"+strings.Join(last, "\n\t\t"))
	case 1, 2:
		m.faults[kind] = append(m.faults[kind], m.at(format, args...))
	}
}

func (m *stmModel) room() int  { return m.cap - int(m.wr-m.low) }
func (m *stmModel) avail() int { return int(m.wr - m.rd) }
func (m *stmModel) kept() int  { return int(m.rd - m.low) }

// good is byte i of the sequence; junk bytes are from another.
func (m *stmModel) good(i uint64) byte { return stmMix(m.seed, i) }

func (m *stmModel) junkByte() byte {
	m.junk++
	return stmMix(^m.seed, m.junk)
}

func stmMix(seed, i uint64) byte {
	x := i*0x9e3779b97f4a7c15 + seed
	x ^= x >> 31
	x *= 0xbf58476d1ce4e5b9
	x ^= x >> 29
	return byte(x >> 56)
}

// goodBytes is the next n bytes of the sequence (not yet used up).
func (m *stmModel) goodBytes(n int) []byte {
	p := make([]byte, n)
	for i := range p {
		p[i] = m.good(m.next + uint64(i))
	}
	return p
}

// size is the length of a write or read: mostly small, often up to the
// capacity, now and then beyond it, and 0.
func (m *stmModel) size() int {
	c := m.cap
	switch x := m.rng.IntN(20); {
	case x == 0:
		return 0
	case x < 9:
		return 1 + m.rng.IntN(min(c, 8))
	case x < 17:
		return 1 + m.rng.IntN(c)
	default:
		return c + 1 + m.rng.IntN(c+2)
	}
}

// viewSize is the n of a Reserve or View: mostly 1..capacity, now and
// then out of range.
func (m *stmModel) viewSize() int {
	switch x := m.rng.IntN(20); {
	case x == 0:
		return -m.rng.IntN(3)
	case x == 1:
		return m.cap + 1 + m.rng.IntN(3)
	case x < 11:
		return 1 + m.rng.IntN(min(m.cap, 8))
	default:
		return 1 + m.rng.IntN(m.cap)
	}
}

// misuseSize is a Commit or Consume size no holder of limit bytes may
// ask for.
func (m *stmModel) misuseSize(limit int) int {
	if m.rng.IntN(3) == 0 {
		return -1 - m.rng.IntN(3)
	}
	return limit + 1 + m.rng.IntN(3)
}

// logical is the n committed bytes from position from.
func (m *stmModel) logical(from uint64, n int) []byte {
	m.req(from >= m.histBase && from+uint64(n) <= m.wr, "model: bytes %d..%d asked, %d..%d kept", from, from+uint64(n), m.histBase, m.wr)
	i := int(from - m.histBase)
	return m.hist[i : i+n]
}

// sameBytes asserts that got are the committed bytes from position from.
func (m *stmModel) sameBytes(what string, got []byte, from uint64) {
	m.t.Helper()
	want := m.logical(from, len(got))
	if i := stmDiff(got, want); i >= 0 {
		m.fatalf("%s: byte %d of %d (stream position %d) is %#x, the model's is %#x", what, i, len(got), from+uint64(i), got[i], want[i])
	}
}

func stmDiff(a, b []byte) int {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	if len(a) != len(b) {
		return min(len(a), len(b))
	}
	return -1
}

// published applies a commit of k bytes at the end of the data: the
// ring's bytes there, after staged (if any) was copied in.
func (m *stmModel) published(k int, staged []byte) {
	c := uint64(m.cap)
	for i := range k {
		p := (m.wr + uint64(i)) % c
		if staged != nil {
			m.ring[p] = staged[i]
		}
		m.hist = append(m.hist, m.ring[p])
	}
	m.wr += uint64(k)
	m.written += uint64(k)
}

// commitAfterRefusal judges a Commit after a refused Reserve while spans
// or a reservation were held. The docs allow two readings: the refusal
// let go of them (Commit refused), or changed nothing (Commit as without
// it: ErrReset for spans of an older generation, the staged bytes
// published, at most what was held). Anything else is
// stmFaultRefusedRearms, followed. It reports whether it dealt with the
// call (else the usual rules do).
func (m *stmModel) commitAfterRefusal(k int, err error) bool {
	h, room := m.wh, m.room()
	if err != nil {
		m.is(err, fmt.Sprintf("Commit(%d) after a refused Reserve", k), ErrInvalidArgument, ErrReset)
		m.wh.hard = false
		return true
	}
	if k == 0 || (h.gen == m.gen && k <= h.room && (h.staged == nil || m.stagedLost(h.staged[:k]) < 0)) {
		return false
	}
	m.req(k > 0 && k <= room, "Commit(%d) after a refused Reserve accepted, beyond the room %d", k, room)
	m.fault(stmFaultRefusedRearms, "Commit(%d) accepted after a refused Reserve (held: gen %d of %d, %d bytes, reservation %d, staged %v)",
		k, h.gen, m.gen, h.room, h.reserve, h.staged != nil)
	m.published(k, nil) // the ring's bytes, not the staged ones
	m.wh = stmWHeld{}
	m.checkStats(m.w)
	return true
}

// consumeAfterRefusal is commitAfterRefusal for a Consume after a
// refused View.
func (m *stmModel) consumeAfterRefusal(k int, err error) bool {
	h, avail := m.rh, m.avail()
	if err != nil {
		m.is(err, fmt.Sprintf("Consume(%d) after a refused View", k), ErrInvalidArgument, ErrReset)
		m.rh.hard = false
		return true
	}
	if k == 0 || (h.gen == m.gen && k <= h.room) {
		return false
	}
	m.req(k > 0 && k <= avail, "Consume(%d) after a refused View accepted, beyond the %d buffered", k, avail)
	m.fault(stmFaultRefusedRearms, "Consume(%d) accepted after a refused View (held: gen %d of %d, %d bytes, view %d)",
		k, h.gen, m.gen, h.room, h.view)
	m.consumed(k)
	m.rh = stmRHeld{}
	m.checkStats(m.r)
	return true
}

// stagedLost is the index of the first byte of a staged reservation's
// commit (at the end of the data) that is not in the ring, or -1.
func (m *stmModel) stagedLost(staged []byte) int {
	shm, c := m.realRing(), uint64(m.cap)
	for i, v := range staged {
		if shm[(m.wr+uint64(i))%c] != v {
			return i
		}
	}
	return -1
}

// consumed applies a consume of k bytes.
func (m *stmModel) consumed(k int) {
	m.rd += uint64(k)
	m.read += uint64(k)
	m.trim()
}

// trim keeps at most the backlog limit of consumed bytes.
func (m *stmModel) trim() {
	if m.rd-m.low > uint64(m.limit) {
		m.low = m.rd - uint64(m.limit)
	}
	if d := m.low - m.histBase; d > 8192 {
		m.hist = append([]byte(nil), m.hist[d:]...)
		m.histBase = m.low
	}
}

// reset applies a Reset (zero: a Zero).
func (m *stmModel) reset(zero bool) {
	m.gen++
	m.low, m.rd, m.wr = 0, 0, 0
	m.hist, m.histBase = m.hist[:0], 0
	if zero {
		clear(m.ring)
		m.hit("zero")
	} else {
		m.hit("reset")
	}
}

// create applies the creation of the stream.
func (m *stmModel) create(capacity, backlog int) {
	if m.cap != 0 {
		m.hit("recreated")
	}
	m.exists = true
	m.cap, m.limit, m.gen = capacity, backlog, 0
	m.wClosed, m.rClosed = false, false
	m.low, m.rd, m.wr = 0, 0, 0
	m.hist, m.histBase = m.hist[:0], 0
	m.ring = make([]byte, capacity)
	m.written, m.read = 0, 0
	m.wh, m.rh = stmWHeld{}, stmRHeld{}
}

// softW notes a call on the writer end that only looks: spans held stay
// for the implementation to count or not.
func (m *stmModel) softW() { m.wh.hard = false }
func (m *stmModel) softR() { m.rh.hard = false }

// ---- what the buffer holds ----

// entry is the stream's registry entry.
func (m *stmModel) entry() *channel.Entry {
	en, err := m.b.reg.Lookup(stmID)
	m.ok(err, "Lookup")
	return en
}

// realRing is the ring in shared memory.
func (m *stmModel) realRing() []byte {
	en := m.entry()
	cb := uint64(en.Control) + channel.StreamControlSize(0)
	return m.b.region.Bytes()[cb : cb+uint64(m.cap)]
}

// checkExists asserts that the stream exists as the model says, with its
// capacity.
func (m *stmModel) checkExists() {
	en, err := m.b.reg.Lookup(stmID)
	if !m.exists {
		m.is(err, "the stream is removed: Lookup", ErrNotExist)
		return
	}
	m.ok(err, "the stream exists: Lookup")
	m.req(en.Type == channel.TypeStream && en.Size == uint64(m.cap), "entry %+v for a stream of %d", en, m.cap)
}

// checkRing asserts that the ring's bytes are the model's.
func (m *stmModel) checkRing() {
	if !m.exists {
		return
	}
	shm := m.realRing()
	if i := stmDiff(shm, m.ring); i >= 0 {
		m.fatalf("ring byte %d is %#x, the model's is %#x (positions: low %d, read %d, write %d of %d)", i, shm[i], m.ring[i], m.low, m.rd, m.wr, m.cap)
	}
}

func (m *stmModel) wantStats() StreamStats {
	return StreamStats{
		Capacity: m.cap, Buffered: m.avail(), Free: m.room(), Backlog: m.kept(), BacklogLimit: m.limit,
		Generation: m.gen, Written: m.written, Read: m.read, WriterClosed: m.wClosed, ReaderClosed: m.rClosed,
	}
}

// checkStats asserts an end's Stats.
func (m *stmModel) checkStats(e interface{ Stats() (StreamStats, error) }) {
	m.t.Helper()
	st, err := e.Stats()
	m.ok(err, "Stats")
	if want := m.wantStats(); st != want {
		m.fatalf("Stats\n got  %+v\n want %+v", st, want)
	}
}

// observe is the stream's Stats read from its control block, with or
// without ends.
func (m *stmModel) observe() StreamStats {
	s, err := channel.OpenStream(m.b.region, m.entry(), channel.WaitOptions{})
	m.ok(err, "OpenStream")
	st, err := s.Stats()
	m.ok(err, "Stats of the control block")
	return st
}

func (m *stmModel) checkObserved() {
	if !m.exists {
		return
	}
	if st, want := m.observe(), m.wantStats(); st != want {
		m.fatalf("Stats of the control block\n got  %+v\n want %+v", st, want)
	}
}

func (m *stmModel) checkBuffer() {
	m.ok(m.b.Check(), "Buffer.Check")
}

// ---- the run ----

func (m *stmModel) run(n int) {
	t := m.t
	defer func() {
		if p := recover(); p != nil {
			t.Fatalf("seed %d op %d (%s): panic: %v\n%s", m.seed, m.op, m.what, p, debug.Stack())
		}
	}()
	ops := []struct {
		w int
		f func()
	}{
		{8, m.wSpans}, {8, m.wReserve}, {3, m.wCommitMore}, {8, m.wTryWrite}, {3, m.wWrite}, {3, m.wReadFrom}, {1, m.wWaitSpace},
		{8, m.rSpans}, {8, m.rView}, {3, m.rConsumeMore}, {8, m.rTryRead}, {3, m.rRead}, {2, m.rWriteTo}, {1, m.rWaitData},
		{3, m.rBacklog}, {4, m.rRewind}, {2, m.rSetBacklog},
		{1, m.resetOp}, {1, m.zeroElsewhere}, {3, m.peekOp}, {3, m.statsOp}, {1, m.genOp}, {1, m.notifyOp},
		{1, m.closeWriterOp}, {1, m.closeReaderOp}, {1, m.afterClose}, {1, m.misuseOpen}, {1, m.recycle},
	}
	total := 0
	for _, o := range ops {
		total += o.w
	}
	m.op = 0
	if m.rng.IntN(2) == 0 {
		m.openWriter()
		m.openReader()
	} else {
		m.openReader()
		m.openWriter()
	}
	for m.op = 1; m.op <= n; m.op++ {
		x := m.rng.IntN(total)
		for _, o := range ops {
			if x < o.w {
				o.f()
				break
			}
			x -= o.w
		}
		m.checkRing()
		if m.op%64 == 0 {
			m.checkObserved()
		}
		if m.op%512 == 0 {
			m.checkBuffer()
		}
	}
	m.finish()
	m.done = true
	kinds := make([]string, 0, len(m.nfault))
	for k := range m.nfault {
		kinds = append(kinds, k)
	}
	slices.Sort(kinds)
	for _, k := range kinds {
		t.Errorf("known fault, pinned by %s: %s (%d times in %d operations), first:\n\t%s",
			stmFaultTests[k], k, m.nfault[k], n, strings.Join(m.faults[k], "\n\t"))
	}
}

// finish drains the stream, closes both ends, and asserts that the stream
// is gone and the buffer sound.
func (m *stmModel) finish() {
	m.what = "finish"
	if m.r == nil {
		m.openReader()
	}
	r := m.r
	m.logf("finish: drain %d bytes", m.avail())
	p := make([]byte, 97)
	for {
		n, err := r.TryRead(p)
		if err != nil {
			if m.wClosed {
				m.req(err == io.EOF, "drained, writer closed: %v", err)
			} else {
				m.blocked(err, "drained")
			}
			break
		}
		m.sameBytes("drain", p[:n], m.rd)
		m.consumed(n)
	}
	m.req(m.avail() == 0, "drained with %d bytes left", m.avail())
	m.rh = stmRHeld{}
	if m.w != nil {
		m.closeWriter(false)
	}
	m.closeReader(false)
	if m.exists {
		// Removed with the last end only if the writer closed (it may never
		// have opened since the stream was made).
		m.req(!m.wClosed, "drained and both ends closed, and still there")
		m.ok(m.hx.RemoveStream(context.Background(), stmID), "RemoveStream")
		m.exists = false
	}
	m.checkExists()
	m.checkBuffer()
}

// ---- opening and closing ----

func (m *stmModel) capOpt(c int) StreamOption {
	if c&(c-1) == 0 && m.rng.IntN(3) == 0 {
		return WithCapacity(c)
	}
	return WithStreamCapacity(c)
}

func (m *stmModel) endOpts(capacity int) (opts []StreamOption, backlog int, set bool) {
	opts = append(opts, m.capOpt(capacity))
	if m.rng.IntN(3) == 0 {
		backlog, set = m.rng.IntN(capacity), true
		opts = append(opts, WithBacklog(backlog))
	}
	if m.rng.IntN(5) != 0 {
		opts = append(opts, WithSpin(-1))
	}
	if m.rng.IntN(4) == 0 {
		opts = append(opts, WithName("model"))
	}
	return opts, backlog, set
}

func (m *stmModel) openWriter() {
	created := !m.exists
	capacity := m.cap
	if created {
		capacity = stmCaps[m.rng.IntN(len(stmCaps))]
	}
	opts, backlog, set := m.endOpts(capacity)
	if !created && m.rng.IntN(8) == 0 {
		// A backlog the stream could not have: refused, as at creation,
		// and the writer end stays free.
		bad := capacity + m.rng.IntN(3)
		m.logf("open the writer with backlog %d of a stream of capacity %d", bad, capacity)
		w, err := m.hw.StreamWriter(stmID, append(opts, WithBacklog(bad))...)
		m.req(w == nil && errors.Is(err, ErrInvalidArgument), "StreamWriter with backlog %d of %d: %v", bad, capacity, err)
		m.hit("writer's backlog refused")
	}
	m.logf("open the writer (created %v, capacity %d, backlog %d set %v)", created, capacity, backlog, set)
	w, err := m.hw.StreamWriter(stmID, opts...)
	m.ok(err, "StreamWriter")
	w.SetContext(m.dead)
	m.w = w
	if created {
		m.create(capacity, backlog)
	}
	m.wClosed, m.wh = false, stmWHeld{}
	m.checkExists()
	m.checkStats(w)
}

func (m *stmModel) openReader() {
	created := !m.exists
	capacity := m.cap
	if created {
		capacity = stmCaps[m.rng.IntN(len(stmCaps))]
	}
	opts, backlog, set := m.endOpts(capacity)
	m.logf("open the reader (created %v, capacity %d, backlog %d set %v, %d unread)", created, capacity, backlog, set, m.avail())
	if !created && m.avail() > 0 {
		m.hit("reopen reader with unread bytes")
	}
	r, err := m.hr.StreamReader(stmID, opts...)
	m.ok(err, "StreamReader")
	r.SetContext(m.dead)
	m.r = r
	switch {
	case created:
		m.create(capacity, backlog)
	case set:
		m.limit = backlog
		m.trim()
	}
	m.rClosed, m.rh = false, stmRHeld{}
	m.req(r.BacklogLimit() == m.limit, "BacklogLimit %d, want %d", r.BacklogLimit(), m.limit)
	m.checkExists()
	m.checkStats(r)
}

// writer is the open writer, opened if closed; nil when the operation
// went to a closed end instead.
func (m *stmModel) writer() *StreamWriter {
	if m.w == nil {
		if len(m.oldW) > 0 && m.rng.IntN(4) == 0 {
			m.afterCloseW(m.oldW[m.rng.IntN(len(m.oldW))])
			return nil
		}
		m.openWriter()
	}
	return m.w
}

func (m *stmModel) reader() *StreamReader {
	if m.r == nil {
		if len(m.oldR) > 0 && m.rng.IntN(4) == 0 {
			m.afterCloseR(m.oldR[m.rng.IntN(len(m.oldR))])
			return nil
		}
		m.openReader()
	}
	return m.r
}

// removable applies the removal of a stream whose both ends closed and
// that is drained.
func (m *stmModel) removable() {
	if m.wClosed && m.rClosed && m.rd == m.wr {
		m.exists = false
		m.hit("removed")
	}
}

// closeWriter closes the writer (viaHandle: by closing its handle).
func (m *stmModel) closeWriter(viaHandle bool) {
	m.logf("close the writer (via its handle %v)", viaHandle)
	var err error
	if viaHandle {
		err = m.hw.Close()
		m.hw = testHandle(m.t, m.b)
		m.hit("handle close")
	} else {
		err = m.w.Close()
	}
	m.ok(err, "close the writer")
	m.oldW = append(m.oldW, m.w)
	if len(m.oldW) > 4 {
		m.oldW = m.oldW[1:]
	}
	m.w, m.wClosed, m.wh = nil, true, stmWHeld{}
	m.removable()
	m.checkExists()
}

func (m *stmModel) closeReader(viaHandle bool) {
	m.logf("close the reader (via its handle %v)", viaHandle)
	var err error
	if viaHandle {
		err = m.hr.Close()
		m.hr = testHandle(m.t, m.b)
		m.hit("handle close")
	} else {
		err = m.r.Close()
	}
	m.ok(err, "close the reader")
	m.oldR = append(m.oldR, m.r)
	if len(m.oldR) > 4 {
		m.oldR = m.oldR[1:]
	}
	m.r, m.rClosed, m.rh = nil, true, stmRHeld{}
	m.removable()
	m.checkExists()
}

func (m *stmModel) closeWriterOp() {
	if m.w == nil {
		m.writer()
		return
	}
	m.closeWriter(m.rng.IntN(4) == 0)
}

func (m *stmModel) closeReaderOp() {
	if m.r == nil {
		m.reader()
		return
	}
	m.closeReader(m.rng.IntN(4) == 0)
}

// recycle closes both ends and removes the stream (the next operation
// makes it anew, with another capacity); now and then it tries to remove
// it with an end open (ErrBusy).
func (m *stmModel) recycle() {
	ctx := context.Background()
	if m.exists && (m.w != nil || m.r != nil) && m.rng.IntN(3) == 0 {
		m.logf("RemoveStream with an end open")
		m.is(m.hx.RemoveStream(ctx, stmID), "RemoveStream with an end open", ErrBusy)
		m.hit("busy")
		m.checkExists()
		m.checkObserved()
		return
	}
	if m.w != nil {
		m.closeWriter(false)
	}
	if m.r != nil {
		m.closeReader(false)
	}
	m.logf("RemoveStream (exists %v)", m.exists)
	err := m.hx.RemoveStream(ctx, stmID)
	if m.exists {
		m.ok(err, "RemoveStream")
		m.exists = false
	} else {
		m.is(err, "RemoveStream of a removed stream", ErrNotExist)
	}
	m.checkExists()
}

// misuseOpen opens ends that must be refused, and asserts that nothing
// changed.
func (m *stmModel) misuseOpen() {
	hs := []*Handle{m.hw, m.hr, m.hx}
	h := hs[m.rng.IntN(len(hs))]
	switch m.rng.IntN(7) {
	case 6:
		m.logf("open an end on a closed handle")
		hc := testHandle(m.t, m.b)
		m.ok(hc.Close(), "close a handle")
		_, err := hc.StreamWriter(stmID, WithStreamCapacity(m.cap))
		m.is(err, "a writer on a closed handle", ErrClosed)
		_, err = hc.StreamReader(stmID, WithStreamCapacity(m.cap))
		m.is(err, "a reader on a closed handle", ErrClosed)
	case 0:
		if m.w == nil {
			m.writer()
			return
		}
		m.logf("open a second writer")
		_, err := h.StreamWriter(stmID, WithStreamCapacity(m.cap))
		m.is(err, "a second writer", ErrBusy)
		m.hit("busy")
	case 1:
		if m.r == nil {
			m.reader()
			return
		}
		m.logf("open a second reader")
		_, err := h.StreamReader(stmID, WithStreamCapacity(m.cap))
		m.is(err, "a second reader", ErrBusy)
		m.hit("busy")
	case 2:
		if !m.exists {
			m.writer()
			return
		}
		other := m.cap + 1 + m.rng.IntN(3)
		m.logf("open an end with capacity %d", other)
		var err error
		if m.rng.IntN(2) == 0 {
			_, err = h.StreamWriter(stmID, WithStreamCapacity(other))
		} else {
			_, err = h.StreamReader(stmID, WithStreamCapacity(other))
		}
		m.is(err, "another capacity", ErrSizeMismatch)
		m.hit("size mismatch")
	case 3:
		bad := []struct {
			opt  StreamOption
			want error
		}{
			{WithStreamCapacity(0), ErrInvalidSize},
			{WithStreamCapacity(-5), ErrInvalidSize},
			{WithCapacity(3), ErrInvalidSize},
			{WithBacklog(-1), ErrInvalidArgument},
		}
		if over := uint64(MaxStreamCapacity) + 1; over <= math.MaxInt { // a 64-bit int
			bad = append(bad, struct {
				opt  StreamOption
				want error
			}{WithStreamCapacity(int(over)), ErrInvalidSize})
		}
		c := bad[m.rng.IntN(len(bad))]
		m.logf("open an end with a bad option")
		var err error
		if m.rng.IntN(2) == 0 {
			_, err = h.StreamWriter(stmID, c.opt)
		} else {
			_, err = h.StreamReader(stmID, c.opt)
		}
		m.is(err, "a bad option", c.want)
	case 4:
		if m.r != nil {
			m.closeReader(false)
			return
		}
		capacity := m.cap
		if !m.exists {
			capacity = stmCaps[m.rng.IntN(len(stmCaps))]
		}
		backlog := capacity + m.rng.IntN(2)
		m.logf("open the reader with backlog %d, capacity %d (exists %v)", backlog, capacity, m.exists)
		_, err := m.hr.StreamReader(stmID, WithStreamCapacity(capacity), WithBacklog(backlog))
		m.is(err, "a reader with a backlog as large as the capacity", ErrInvalidArgument)
		if m.exists && !m.rClosed {
			if st := m.observe(); st.ReaderClosed {
				m.fault(stmFaultRefusedOpenCloses, "the writer's end now sees the reader closed")
				m.rClosed = true
			}
		}
	case 5:
		if !m.exists {
			m.reader()
			return
		}
		m.logf("open the stream as a record channel")
		_, err := h.Producer(stmID)
		m.is(err, "a stream as a record channel", ErrWrongType)
		_, err = h.Consumer(stmID)
		m.is(err, "a stream as a record channel", ErrWrongType)
	}
	m.checkExists()
	m.checkObserved()
}

// afterClose calls a closed end.
func (m *stmModel) afterClose() {
	if len(m.oldW) > 0 && (len(m.oldR) == 0 || m.rng.IntN(2) == 0) {
		m.afterCloseW(m.oldW[m.rng.IntN(len(m.oldW))])
	} else if len(m.oldR) > 0 {
		m.afterCloseR(m.oldR[m.rng.IntN(len(m.oldR))])
	}
}

// stmShared are the calls both ends have.
func (m *stmModel) stmShared(e *streamEnd) []struct {
	name string
	f    func() error
} {
	return []struct {
		name string
		f    func() error
	}{
		{"Reset", e.Reset},
		{"Zero", e.Zero},
		{"Peek", func() error { _, err := e.Peek(make([]byte, 4)); return err }},
		{"WaitReset", func() error { return e.WaitReset(m.dead, 0) }},
		{"Stats", func() error { _, err := e.Stats(); return err }},
	}
}

func (m *stmModel) afterCloseW(w *StreamWriter) {
	calls := append(m.stmShared(&w.streamEnd), []struct {
		name string
		f    func() error
	}{
		{"Spans", func() error { _, _, err := w.Spans(); return err }},
		{"Reserve", func() error { _, err := w.Reserve(m.viewSize()); return err }},
		{"Commit", func() error { return w.Commit(m.rng.IntN(3)) }},
		{"TryWrite", func() error { _, err := w.TryWrite([]byte("x")); return err }},
		{"Write", func() error { _, err := w.Write([]byte("x")); return err }},
		{"WriteContext", func() error { _, err := w.WriteContext(m.dead, nil); return err }},
		{"ReadFrom", func() error { _, err := w.ReadFrom(bytes.NewReader([]byte("x"))); return err }},
		{"WaitSpace", func() error { return w.WaitSpace(m.dead) }},
	}...)
	c := calls[m.rng.IntN(len(calls))]
	m.logf("closed writer: %s", c.name)
	m.is(c.f(), "closed writer: "+c.name, ErrClosed)
	m.ok(w.Close(), "Close twice")
	m.afterCloseNotify(w.Notify(context.Background(), StreamSpace))
	m.hit("after close")
}

func (m *stmModel) afterCloseR(r *StreamReader) {
	calls := append(m.stmShared(&r.streamEnd), []struct {
		name string
		f    func() error
	}{
		{"Spans", func() error { _, _, err := r.Spans(); return err }},
		{"View", func() error { _, err := r.View(m.viewSize()); return err }},
		{"Consume", func() error { return r.Consume(m.rng.IntN(3)) }},
		{"TryRead", func() error { _, err := r.TryRead(make([]byte, 3)); return err }},
		{"Read", func() error { _, err := r.Read(make([]byte, 3)); return err }},
		{"ReadContext", func() error { _, err := r.ReadContext(m.dead, make([]byte, 3)); return err }},
		{"WriteTo", func() error { _, err := r.WriteTo(io.Discard); return err }},
		{"WaitData", func() error { return r.WaitData(m.dead) }},
		{"Backlog", func() error { _, _, err := r.Backlog(); return err }},
		{"Rewind", func() error { return r.Rewind(m.rng.IntN(2)) }},
		{"SetBacklog", func() error { return r.SetBacklog(0) }},
	}...)
	c := calls[m.rng.IntN(len(calls))]
	m.logf("closed reader: %s", c.name)
	m.is(c.f(), "closed reader: "+c.name, ErrClosed)
	m.ok(r.Close(), "Close twice")
	m.afterCloseNotify(r.Notify(context.Background(), StreamData))
	m.hit("after close")
}

func (m *stmModel) afterCloseNotify(ch <-chan struct{}) {
	select {
	case _, ok := <-ch:
		m.req(!ok, "Notify on a closed end delivered a value")
	case <-time.After(stmGuard):
		m.fatalf("Notify on a closed end: its channel is not closed after %v", stmGuard)
	}
}

// ---- the writer ----

// checkSpans asserts that a and b are the n ring bytes from position pos
// (split at the end of the ring), with the model's bytes: the committed
// ones (logical) or the ring's.
func (m *stmModel) checkSpans(what string, a, b []byte, pos uint64, n int, logical bool) {
	m.t.Helper()
	at := int(pos % uint64(m.cap))
	first := min(n, m.cap-at)
	if len(a) != first || len(b) != n-first {
		m.fatalf("%s: spans of %d and %d bytes, want %d and %d", what, len(a), len(b), first, n-first)
	}
	ring := m.realRing()
	if len(a) > 0 {
		off, in := mem.OffsetOf(ring, &a[0])
		m.req(in && int(off) == at, "%s: the first span is at ring byte %d (in the ring: %v), want %d", what, off, in, at)
	}
	if len(b) > 0 {
		off, in := mem.OffsetOf(ring, &b[0])
		m.req(in && off == 0, "%s: the second span is at ring byte %d (in the ring: %v), want 0", what, off, in)
		m.hit("spans wrapped")
	}
	if logical {
		m.sameBytes(what, a, pos)
		m.sameBytes(what, b, pos+uint64(len(a)))
		return
	}
	if i := stmDiff(a, m.ring[at:at+len(a)]); i >= 0 {
		m.fatalf("%s: byte %d is %#x, the ring's %#x", what, i, a[i], m.ring[at+i])
	}
	if i := stmDiff(b, m.ring[:len(b)]); i >= 0 {
		m.fatalf("%s: byte %d is %#x, the ring's %#x", what, len(a)+i, b[i], m.ring[i])
	}
}

func (m *stmModel) wSpans() { m.writerSpans(true) }

// writerSpans gets the writer's spans and fills part of them; commits:
// commits some of that now (else it is left held).
func (m *stmModel) writerSpans(commits bool) {
	w := m.writer()
	if w == nil {
		return
	}
	m.logf("writer Spans (room %d)", m.room())
	a, b, err := w.Spans()
	m.wh = stmWHeld{}
	if m.rClosed {
		m.is(err, "Spans with the reader closed", io.ErrClosedPipe)
		m.req(len(a)+len(b) == 0, "Spans with the reader closed gave %d bytes", len(a)+len(b))
		m.hit("writer closed pipe")
		return
	}
	m.ok(err, "Spans")
	room := m.room()
	m.checkSpans("writer Spans", a, b, m.wr, room, false)
	fill := m.rng.IntN(room + 1)
	junk := m.rng.IntN(2) == 0
	c := uint64(m.cap)
	for i := range room {
		var v byte
		switch {
		case i < fill:
			v = m.good(m.next + uint64(i))
		case junk:
			v = m.junkByte()
		default:
			continue
		}
		if i < len(a) {
			a[i] = v
		} else {
			b[i-len(a)] = v
		}
		m.ring[(m.wr+uint64(i))%c] = v
	}
	m.wh = stmWHeld{on: true, hard: true, gen: m.gen, room: room, fill: fill}
	if !commits {
		return
	}
	if m.rng.IntN(6) == 0 {
		m.commit(m.misuseSize(room))
	}
	for range m.rng.IntN(4) {
		if !m.wh.on {
			break
		}
		m.commit(m.rng.IntN(m.wh.fill + 1))
	}
	if m.wh.on && m.wh.fill > 0 {
		m.hit("commit left for later")
	}
}

func (m *stmModel) wReserve() { m.writerReserve(true) }

// writerReserve reserves and fills part of the reservation; commits:
// commits it now (mostly; else it is left held).
func (m *stmModel) writerReserve(commits bool) {
	w := m.writer()
	if w == nil {
		return
	}
	n, room := m.viewSize(), m.room()
	m.logf("writer Reserve(%d) (room %d)", n, room)
	v, err := w.Reserve(n)
	switch {
	case n <= 0 || n > m.cap:
		m.is(err, fmt.Sprintf("Reserve(%d) of a stream of %d", n, m.cap), ErrInvalidSize)
		return // misuse: what was held stays held
	case m.rClosed:
		m.is(err, "Reserve with the reader closed", io.ErrClosedPipe)
		m.wh = stmWHeld{}
		return
	case n > room:
		// Refused: what was held stays held, as a refused View leaves a
		// view (channel's TestStreamSpansWrapAround).
		m.blocked(err, fmt.Sprintf("Reserve(%d) with room %d", n, room))
		m.wh.refused = m.wh.on
		return
	}
	m.ok(err, "Reserve(%d) with room %d", n, room)
	m.req(len(v) == n, "Reserve(%d) gave %d bytes", n, len(v))
	at := int(m.wr % uint64(m.cap))
	off, in := mem.OffsetOf(m.realRing(), &v[0])
	direct := at+n <= m.cap
	if direct {
		m.req(in && int(off) == at, "Reserve(%d): a view of ring byte %d (in the ring: %v), want %d", n, off, in, at)
		if i := stmDiff(v, m.ring[at:at+n]); i >= 0 {
			m.fatalf("Reserve(%d): byte %d is %#x, the ring's %#x", n, i, v[i], m.ring[at+i])
		}
		m.hit("reserve direct")
	} else {
		m.req(!in, "Reserve(%d) across the end of the ring: a view of ring byte %d", n, off)
		m.hit("reserve staged")
	}
	k := m.rng.IntN(n + 1)
	c := uint64(m.cap)
	for i := range n {
		val := m.junkByte()
		if i < k {
			val = m.good(m.next + uint64(i))
		}
		v[i] = val
		if direct {
			m.ring[(m.wr+uint64(i))%c] = val
		}
	}
	m.wh = stmWHeld{on: true, hard: true, gen: m.gen, room: n, fill: k, reserve: n}
	if !direct {
		m.wh.staged = slices.Clone(v)
	}
	if !commits {
		return
	}
	if m.rng.IntN(5) == 0 {
		m.commit(m.misuseSize(n))
	}
	if m.wh.on && m.rng.IntN(6) != 0 {
		m.commit(k)
	} else if m.wh.on {
		m.hit("commit left for later")
	}
}

// wCommitMore commits what is held (or not held) now, maybe after other
// operations: more of the spans, the reservation, or misuse.
func (m *stmModel) wCommitMore() {
	if m.w == nil {
		m.writer()
		return
	}
	h := m.wh
	var k int
	switch {
	case m.rng.IntN(4) == 0:
		k = m.misuseSize(h.room)
	case h.on && h.gen == m.gen:
		k = m.rng.IntN(h.fill + 1)
	default:
		k = m.rng.IntN(m.room() + 1)
	}
	m.commit(k)
}

// commit calls Commit(k) and asserts what the docs say of it given what
// is held.
func (m *stmModel) commit(k int) {
	h, room := m.wh, m.room()
	m.logf("writer Commit(%d) (held %v hard %v gen %d room %d fill %d reserve %d staged %v; room %d)",
		k, h.on, h.hard, h.gen, h.room, h.fill, h.reserve, h.staged != nil, room)
	err := m.w.Commit(k)
	if h.on && h.refused && m.commitAfterRefusal(k, err) {
		return
	}
	switch {
	case !h.on:
		if err == nil && k > 0 {
			m.req(k <= room, "Commit(%d) with no spans held accepted, beyond the room %d", k, room)
			m.fault(stmFaultCommitUnheld, "Commit(%d) accepted", k)
			m.published(k, nil)
			m.checkStats(m.w)
			return
		}
		if err != nil {
			m.is(err, fmt.Sprintf("Commit(%d) with no spans held", k), ErrInvalidArgument, ErrReset)
			m.hit("commit misuse refused")
		}
	case k < 0:
		m.is(err, fmt.Sprintf("Commit(%d)", k), ErrInvalidArgument)
		m.hit("commit misuse refused")
	case h.gen != m.gen:
		if err == nil && k == 0 {
			return
		}
		if k > h.room {
			m.is(err, fmt.Sprintf("Commit(%d) of %d held, after a reset", k, h.room), ErrInvalidArgument, ErrReset)
		} else {
			m.is(err, fmt.Sprintf("Commit(%d) after a reset", k), ErrReset)
			m.hit("commit after reset")
		}
		if errors.Is(err, ErrReset) {
			m.wh = stmWHeld{}
		}
	case k > h.room:
		if err == nil {
			m.req(h.reserve > 0 && h.staged == nil && k <= room, "Commit(%d) of %d held accepted (room %d)", k, h.room, room)
			m.fault(stmFaultCommitPastReserve, "Reserve(%d), Commit(%d) accepted", h.reserve, k)
			m.published(k, nil)
			m.next += uint64(min(k, h.fill))
			m.wh = stmWHeld{}
			m.checkStats(m.w)
			return
		}
		m.is(err, fmt.Sprintf("Commit(%d) of %d held", k, h.room), ErrInvalidArgument)
		m.hit("commit misuse refused")
	case !h.hard && err != nil:
		m.is(err, fmt.Sprintf("Commit(%d) after another call", k), ErrInvalidArgument)
	default:
		m.ok(err, "Commit(%d) of %d held", k, h.room)
		var staged []byte
		if h.staged != nil {
			staged = h.staged[:k]
			if i := m.stagedLost(staged); i >= 0 {
				m.fatalf("Commit(%d) of a staged reservation: byte %d in the ring is not the reservation's", k, i)
			}
		}
		m.published(k, staged)
		used := min(k, h.fill)
		m.next += uint64(used)
		m.wh.fill -= used
		m.wh.room -= k
		if h.reserve > 0 {
			// A reservation is committed once; a ring-direct one may let
			// another Commit through (not the docs' to say).
			if h.staged != nil {
				m.wh = stmWHeld{}
			} else {
				m.wh.hard = false
			}
		}
	}
}

func (m *stmModel) wTryWrite() {
	w := m.writer()
	if w == nil {
		return
	}
	l, room := m.size(), m.room()
	p := m.goodBytes(l)
	m.logf("writer TryWrite(%d bytes) (room %d)", l, room)
	n, err := w.TryWrite(p)
	m.wh = stmWHeld{}
	switch {
	case m.rClosed:
		m.is(err, "TryWrite with the reader closed", io.ErrClosedPipe)
		m.req(n == 0, "TryWrite with the reader closed wrote %d", n)
		m.hit("writer closed pipe")
		return
	case l == 0:
		m.ok(err, "TryWrite of nothing")
		m.req(n == 0, "TryWrite of nothing wrote %d", n)
		return
	case room == 0:
		m.blocked(err, "TryWrite on a full ring")
		m.req(n == 0, "TryWrite on a full ring wrote %d", n)
		m.hit("trywrite full")
		return
	}
	m.ok(err, "TryWrite(%d bytes) with room %d", l, room)
	m.req(n == min(l, room), "TryWrite(%d bytes) with room %d wrote %d", l, room, n)
	m.published(n, p)
	m.next += uint64(n)
}

func (m *stmModel) wWrite() {
	w := m.writer()
	if w == nil {
		return
	}
	l, room := m.size(), m.room()
	p := m.goodBytes(l)
	viaCtx := m.rng.IntN(2) == 0
	m.logf("writer Write(%d bytes) (context %v, room %d)", l, viaCtx, room)
	var n int
	var err error
	if viaCtx {
		n, err = w.WriteContext(m.dead, p)
	} else {
		n, err = w.Write(p) // under SetContext(m.dead)
	}
	m.wh = stmWHeld{}
	switch {
	case m.rClosed:
		if l > 0 || err != nil {
			m.is(err, "Write with the reader closed", io.ErrClosedPipe)
		}
		m.req(n == 0, "Write with the reader closed wrote %d", n)
		return
	case l <= room:
		m.ok(err, "Write(%d bytes) with room %d", l, room)
		m.req(n == l, "Write(%d bytes) with room %d wrote %d", l, room, n)
	default:
		m.expired(err, fmt.Sprintf("Write(%d bytes) with room %d", l, room))
		m.req(n == room, "Write(%d bytes) with room %d wrote %d", l, room, n)
	}
	m.published(n, p)
	m.next += uint64(n)
}

var errStmSource = errors.New("model source fails")

type stmFailingReader struct{}

func (stmFailingReader) Read([]byte) (int, error) { return 0, errStmSource }

func (m *stmModel) wReadFrom() {
	w := m.writer()
	if w == nil {
		return
	}
	l, room := m.size(), m.room()
	data := m.goodBytes(l)
	br := bytes.NewReader(data)
	var src io.Reader = br
	failing := m.rng.IntN(4) == 0
	if failing {
		src = io.MultiReader(br, stmFailingReader{})
	}
	m.logf("writer ReadFrom(%d bytes, failing %v) (room %d)", l, failing, room)
	total, err := w.ReadFrom(src)
	m.wh = stmWHeld{}
	n := int(total)
	switch {
	case m.rClosed:
		m.is(err, "ReadFrom with the reader closed", io.ErrClosedPipe)
		m.req(n == 0, "ReadFrom with the reader closed wrote %d", n)
		return
	case l < room:
		if failing {
			m.is(err, "ReadFrom of a failing source", errStmSource)
			m.hit("readfrom failing src")
		} else {
			m.ok(err, "ReadFrom(%d bytes) with room %d", l, room)
		}
		m.req(n == l, "ReadFrom(%d bytes) with room %d wrote %d", l, room, n)
	case l == room:
		// Whether the source ended is known only by reading it again,
		// which needs room.
		if err != nil {
			m.is(err, fmt.Sprintf("ReadFrom(%d bytes) with room %d", l, room), context.DeadlineExceeded, errStmSource)
		}
		m.req(n == l, "ReadFrom(%d bytes) with room %d wrote %d", l, room, n)
	default:
		m.expired(err, fmt.Sprintf("ReadFrom(%d bytes) with room %d", l, room))
		m.req(n == room, "ReadFrom(%d bytes) with room %d wrote %d", l, room, n)
	}
	m.req(br.Len() == l-n, "ReadFrom wrote %d bytes and read %d of its source", n, l-br.Len())
	m.published(n, data)
	m.next += uint64(n)
}

func (m *stmModel) wWaitSpace() {
	w := m.writer()
	if w == nil {
		return
	}
	m.logf("writer WaitSpace (room %d)", m.room())
	err := w.WaitSpace(m.dead)
	m.softW()
	switch {
	case m.rClosed:
		m.is(err, "WaitSpace with the reader closed", io.ErrClosedPipe)
	case m.room() > 0:
		m.ok(err, "WaitSpace with room %d", m.room())
	default:
		m.expired(err, "WaitSpace on a full ring")
	}
}

// ---- the reader ----

func (m *stmModel) rSpans() { m.readerSpans(true) }

// readerSpans gets the reader's spans; consumes: consumes some of them
// now (else they are left held).
func (m *stmModel) readerSpans(consumes bool) {
	r := m.reader()
	if r == nil {
		return
	}
	avail := m.avail()
	m.logf("reader Spans (%d buffered)", avail)
	a, b, err := r.Spans()
	m.ok(err, "reader Spans")
	m.checkSpans("reader Spans", a, b, m.rd, avail, true)
	m.rh = stmRHeld{on: true, hard: true, gen: m.gen, room: avail}
	if !consumes {
		return
	}
	if m.rng.IntN(6) == 0 {
		m.consume(m.misuseSize(avail))
	}
	for range m.rng.IntN(4) {
		if !m.rh.on {
			break
		}
		m.consume(m.rng.IntN(m.rh.room + 1))
	}
}

func (m *stmModel) rView() { m.readerView(true) }

// readerView views; consumes: consumes some of the view now (mostly;
// else it is left held).
func (m *stmModel) readerView(consumes bool) {
	r := m.reader()
	if r == nil {
		return
	}
	n, avail := m.viewSize(), m.avail()
	m.logf("reader View(%d) (%d buffered)", n, avail)
	v, err := r.View(n)
	switch {
	case n <= 0 || n > m.cap:
		m.is(err, fmt.Sprintf("View(%d) of a stream of %d", n, m.cap), ErrInvalidSize)
		return // misuse: what was held stays held
	case n > avail:
		// Refused: what was held stays held (channel's
		// TestStreamSpansWrapAround consumes a view after one).
		m.blocked(err, fmt.Sprintf("View(%d) of %d buffered", n, avail))
		m.rh.refused = m.rh.on
		return
	}
	m.ok(err, "View(%d) of %d buffered", n, avail)
	m.req(len(v) == n, "View(%d) gave %d bytes", n, len(v))
	at := int(m.rd % uint64(m.cap))
	off, in := mem.OffsetOf(m.realRing(), &v[0])
	if at+n <= m.cap {
		m.req(in && int(off) == at, "View(%d): a view of ring byte %d (in the ring: %v), want %d", n, off, in, at)
		m.hit("view direct")
	} else {
		m.req(!in, "View(%d) across the end of the ring: a view of ring byte %d", n, off)
		m.hit("view copied")
	}
	m.sameBytes(fmt.Sprintf("View(%d)", n), v, m.rd)
	m.rh = stmRHeld{on: true, hard: true, gen: m.gen, room: n, view: n}
	if !consumes {
		return
	}
	if m.rng.IntN(5) == 0 {
		m.consume(m.misuseSize(n))
	}
	if m.rh.on && m.rng.IntN(6) != 0 {
		m.consume(m.rng.IntN(n + 1))
	}
}

func (m *stmModel) rConsumeMore() {
	if m.r == nil {
		m.reader()
		return
	}
	h := m.rh
	var k int
	switch {
	case m.rng.IntN(4) == 0:
		k = m.misuseSize(h.room)
	case h.on && h.gen == m.gen:
		k = m.rng.IntN(h.room + 1)
	default:
		k = m.rng.IntN(m.avail() + 1)
	}
	m.consume(k)
}

// consume calls Consume(k) and asserts what the docs say of it given what
// is held.
func (m *stmModel) consume(k int) {
	h, avail := m.rh, m.avail()
	m.logf("reader Consume(%d) (held %v hard %v gen %d room %d view %d; %d buffered)", k, h.on, h.hard, h.gen, h.room, h.view, avail)
	err := m.r.Consume(k)
	if h.on && h.refused && m.consumeAfterRefusal(k, err) {
		return
	}
	switch {
	case !h.on:
		if err == nil && k > 0 {
			m.req(k <= avail, "Consume(%d) with no spans held accepted, beyond the %d buffered", k, avail)
			m.fault(stmFaultConsumeUnheld, "Consume(%d) accepted", k)
			m.consumed(k)
			m.checkStats(m.r)
			return
		}
		if err != nil {
			m.is(err, fmt.Sprintf("Consume(%d) with no spans held", k), ErrInvalidArgument, ErrReset)
			m.hit("consume misuse refused")
		}
	case k < 0:
		m.is(err, fmt.Sprintf("Consume(%d)", k), ErrInvalidArgument)
		m.hit("consume misuse refused")
	case h.gen != m.gen:
		if err == nil && k == 0 {
			return
		}
		if k > h.room {
			m.is(err, fmt.Sprintf("Consume(%d) of %d held, after a reset", k, h.room), ErrInvalidArgument, ErrReset)
		} else {
			m.is(err, fmt.Sprintf("Consume(%d) after a reset", k), ErrReset)
			m.hit("consume after reset")
		}
		if errors.Is(err, ErrReset) {
			m.rh = stmRHeld{}
		}
	case k > h.room:
		if err == nil {
			m.req(h.view > 0 && k <= avail, "Consume(%d) of %d held accepted (%d buffered)", k, h.room, avail)
			m.fault(stmFaultConsumePastView, "View(%d), Consume(%d) accepted", h.view, k)
			m.consumed(k)
			m.rh = stmRHeld{}
			m.checkStats(m.r)
			return
		}
		m.is(err, fmt.Sprintf("Consume(%d) of %d held", k, h.room), ErrInvalidArgument)
		m.hit("consume misuse refused")
	case !h.hard && err != nil:
		m.is(err, fmt.Sprintf("Consume(%d) after another call", k), ErrInvalidArgument)
	default:
		m.ok(err, "Consume(%d) of %d held", k, h.room)
		m.consumed(k)
		m.rh.room -= k
		if h.view > 0 {
			m.rh.hard = false // a view is consumed once (Consume(n) releases it)
		}
	}
}

func (m *stmModel) rTryRead() {
	r := m.reader()
	if r == nil {
		return
	}
	l, avail := m.size(), m.avail()
	p := make([]byte, l)
	m.logf("reader TryRead(%d bytes) (%d buffered)", l, avail)
	n, err := r.TryRead(p)
	m.rh = stmRHeld{}
	switch {
	case avail == 0 && m.wClosed:
		m.req(err == io.EOF && n == 0, "TryRead of a drained stream whose writer closed: %d, %v, want io.EOF", n, err)
		m.hit("tryread eof")
	case avail == 0:
		m.blocked(err, "TryRead of an empty stream")
		m.req(n == 0, "TryRead of an empty stream read %d", n)
	case l == 0:
		m.ok(err, "TryRead into nothing")
		m.req(n == 0, "TryRead into nothing read %d", n)
	default:
		m.ok(err, "TryRead(%d bytes) of %d buffered", l, avail)
		m.req(n == min(l, avail), "TryRead(%d bytes) of %d buffered read %d", l, avail, n)
		m.sameBytes("TryRead", p[:n], m.rd)
		m.consumed(n)
	}
}

func (m *stmModel) rRead() {
	r := m.reader()
	if r == nil {
		return
	}
	l, avail := m.size(), m.avail()
	p := make([]byte, l)
	viaCtx := m.rng.IntN(2) == 0
	m.logf("reader Read(%d bytes) (context %v, %d buffered)", l, viaCtx, avail)
	var n int
	var err error
	if viaCtx {
		n, err = r.ReadContext(m.dead, p)
	} else {
		n, err = r.Read(p) // under SetContext(m.dead)
	}
	if l == 0 {
		m.softR() // a Read of nothing does nothing
	} else {
		m.rh = stmRHeld{}
	}
	switch {
	case l == 0:
		m.ok(err, "Read into nothing")
		m.req(n == 0, "Read into nothing read %d", n)
	case avail > 0:
		m.ok(err, "Read(%d bytes) of %d buffered", l, avail)
		m.req(n == min(l, avail), "Read(%d bytes) of %d buffered read %d", l, avail, n)
		m.sameBytes("Read", p[:n], m.rd)
		m.consumed(n)
	case m.wClosed:
		m.req(err == io.EOF && n == 0, "Read of a drained stream whose writer closed: %d, %v, want io.EOF", n, err)
		m.hit("read eof")
	default:
		m.expired(err, "Read of an empty stream")
		m.req(n == 0, "Read of an empty stream read %d", n)
	}
}

var errStmShort = errors.New("model destination is full")

// stmShortWriter takes up to max bytes, then fails.
type stmShortWriter struct {
	buf bytes.Buffer
	max int
}

func (s *stmShortWriter) Write(p []byte) (int, error) {
	if room := s.max - s.buf.Len(); len(p) > room {
		s.buf.Write(p[:room])
		return room, errStmShort
	}
	return s.buf.Write(p)
}

func (m *stmModel) rWriteTo() {
	r := m.reader()
	if r == nil {
		return
	}
	avail := m.avail()
	dst := &stmShortWriter{max: avail + 1}
	short := m.rng.IntN(3) == 0
	if short {
		dst.max = m.rng.IntN(avail + 2)
		m.hit("writeto short")
	}
	m.logf("reader WriteTo (%d buffered, destination takes %d)", avail, dst.max)
	total, err := r.WriteTo(dst)
	m.rh = stmRHeld{}
	n := int(total)
	switch {
	case avail > dst.max:
		m.is(err, "WriteTo a failing destination", errStmShort)
	case m.wClosed:
		m.ok(err, "WriteTo of a stream whose writer closed")
	default:
		m.expired(err, "WriteTo of an open stream")
	}
	m.req(n == min(avail, dst.max), "WriteTo of %d buffered into %d wrote %d", avail, dst.max, n)
	m.req(dst.buf.Len() == n, "WriteTo says %d bytes, the destination took %d", n, dst.buf.Len())
	m.sameBytes("WriteTo", dst.buf.Bytes(), m.rd)
	m.consumed(n)
}

func (m *stmModel) rWaitData() {
	r := m.reader()
	if r == nil {
		return
	}
	m.logf("reader WaitData (%d buffered)", m.avail())
	err := r.WaitData(m.dead)
	m.softR()
	switch {
	case m.avail() > 0:
		m.ok(err, "WaitData with %d buffered", m.avail())
	case m.wClosed:
		m.req(err == io.EOF, "WaitData of a drained stream whose writer closed: %v, want io.EOF", err)
	default:
		m.expired(err, "WaitData of an empty stream")
	}
}

func (m *stmModel) rBacklog() {
	r := m.reader()
	if r == nil {
		return
	}
	m.logf("reader Backlog (%d kept)", m.kept())
	a, b, err := r.Backlog()
	m.ok(err, "Backlog")
	m.softR()
	m.checkSpans("Backlog", a, b, m.low, m.kept(), true)
}

func (m *stmModel) rRewind() {
	r := m.reader()
	if r == nil {
		return
	}
	kept := m.kept()
	n := m.rng.IntN(kept + 1)
	if m.rng.IntN(6) == 0 {
		n = m.misuseSize(kept)
	}
	m.logf("reader Rewind(%d) (%d kept)", n, kept)
	err := r.Rewind(n)
	m.rh = stmRHeld{}
	if n < 0 || n > kept {
		m.is(err, fmt.Sprintf("Rewind(%d) of %d kept", n, kept), ErrInvalidArgument)
		m.hit("rewind misuse")
		return
	}
	m.ok(err, "Rewind(%d) of %d kept", n, kept)
	m.rd -= uint64(n)
	if n > 0 {
		m.hit("rewind")
	}
}

func (m *stmModel) rSetBacklog() {
	r := m.reader()
	if r == nil {
		return
	}
	n := m.rng.IntN(m.cap)
	if m.rng.IntN(6) == 0 {
		n = m.misuseSize(m.cap - 1)
	}
	m.logf("reader SetBacklog(%d) (was %d, %d kept)", n, m.limit, m.kept())
	err := r.SetBacklog(n)
	if n < 0 || n >= m.cap {
		m.is(err, fmt.Sprintf("SetBacklog(%d) of a stream of %d", n, m.cap), ErrInvalidArgument)
		m.softR()
	} else {
		m.ok(err, "SetBacklog(%d)", n)
		m.limit = n
		m.trim()
		m.rh = stmRHeld{}
		m.hit("set backlog")
	}
	m.req(r.BacklogLimit() == m.limit, "BacklogLimit %d, want %d", r.BacklogLimit(), m.limit)
}

// ---- either end ----

// anyEnd is an open end (opened if none is), and whether it is the
// writer.
func (m *stmModel) anyEnd() (*streamEnd, bool) {
	switch {
	case m.w != nil && (m.r == nil || m.rng.IntN(2) == 0):
		return &m.w.streamEnd, true
	case m.r != nil:
		return &m.r.streamEnd, false
	case m.rng.IntN(2) == 0:
		m.openWriter()
		return &m.w.streamEnd, true
	default:
		m.openReader()
		return &m.r.streamEnd, false
	}
}

func (m *stmModel) soft(writer bool) {
	if writer {
		m.softW()
	} else {
		m.softR()
	}
}

func (m *stmModel) doReset(e *streamEnd, writer bool) {
	zero := m.rng.IntN(3) == 0
	m.logf("Reset (zero %v, by the writer %v)", zero, writer)
	var err error
	if zero {
		err = e.Zero()
	} else {
		err = e.Reset()
	}
	m.ok(err, "Reset (zero %v)", zero)
	m.reset(zero)
}

// resetOp resets from either end; now and then with spans, a
// reservation or a view held across the reset, committed and consumed
// after it (ErrReset, nothing applied).
func (m *stmModel) resetOp() {
	held := m.rng.IntN(2) == 0
	if held {
		if m.w != nil && !m.rClosed {
			if m.rng.IntN(2) == 0 {
				m.writerSpans(false)
			} else {
				m.writerReserve(false)
			}
		}
		if m.r != nil {
			if m.rng.IntN(2) == 0 {
				m.readerSpans(false)
			} else {
				m.readerView(false)
			}
		}
	}
	e, writer := m.anyEnd()
	m.doReset(e, writer)
	m.checkStats(e)
	if held && m.w != nil {
		m.commit(m.rng.IntN(m.wh.room + 1))
	}
	if held && m.r != nil {
		m.consume(m.rng.IntN(m.rh.room + 1))
	}
}

func (m *stmModel) peekOp() {
	e, writer := m.anyEnd()
	l, avail := m.size(), m.avail()
	p := make([]byte, l)
	m.logf("Peek(%d bytes) (by the writer %v, %d buffered)", l, writer, avail)
	n, err := e.Peek(p)
	m.soft(writer)
	m.ok(err, "Peek")
	m.req(n == min(l, avail), "Peek(%d bytes) of %d buffered gave %d", l, avail, n)
	m.sameBytes("Peek", p[:n], m.rd)
}

func (m *stmModel) statsOp() {
	e, writer := m.anyEnd()
	m.logf("Stats (by the writer %v)", writer)
	m.checkStats(e)
	m.soft(writer)
}

func (m *stmModel) genOp() {
	e, writer := m.anyEnd()
	since := m.gen + uint64(m.rng.IntN(3)) - 1
	m.logf("Generation, WaitReset(since %d) (by the writer %v)", since, writer)
	m.req(e.Generation() == m.gen, "Generation %d, want %d", e.Generation(), m.gen)
	err := e.WaitReset(m.dead, since)
	m.soft(writer)
	if since == m.gen {
		m.expired(err, "WaitReset with no reset since")
	} else {
		m.ok(err, "WaitReset since %d, generation %d", since, m.gen)
	}
}

// recv is the next value of ch (ok false: closed), or a failure after
// stmGuard.
func (m *stmModel) recv(ch <-chan struct{}, what string) (ok bool) {
	select {
	case _, ok = <-ch:
		return ok
	case <-time.After(stmGuard):
		m.fatalf("%s: nothing after %v", what, stmGuard)
		return false
	}
}

// drain cancels a Notify and waits for its channel to close.
func (m *stmModel) drain(cancel context.CancelFunc, ch <-chan struct{}, what string) {
	cancel()
	for m.recv(ch, what+": cancelled, the channel is not closed") {
	}
}

func (m *stmModel) notifyOp() {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	switch m.rng.IntN(8) {
	case 6:
		m.notifyClose(ctx)
	case 7:
		m.notifyPeerClose(ctx)
	case 4:
		m.notifyWake(ctx, cancel)
	case 5:
		m.notifyEOF(ctx, cancel)
	case 0:
		w := m.writer()
		if w == nil {
			return
		}
		room := m.room()
		m.logf("writer Notify(StreamSpace) (room %d)", room)
		ch := w.Notify(ctx, StreamSpace)
		m.softW()
		switch {
		case m.rClosed:
			m.req(!m.recv(ch, "Notify(StreamSpace) with the reader closed"), "Notify(StreamSpace) with the reader closed delivered a value")
			return
		case room > 0:
			m.req(m.recv(ch, "Notify(StreamSpace) with room"), "Notify(StreamSpace) with room %d closed its channel", room)
			m.hit("notify space")
		}
		m.drain(cancel, ch, "Notify(StreamSpace)")
	case 1:
		r := m.reader()
		if r == nil {
			return
		}
		avail := m.avail()
		m.logf("reader Notify(StreamData) (%d buffered)", avail)
		ch := r.Notify(ctx, StreamData)
		m.softR()
		switch {
		case avail > 0:
			m.req(m.recv(ch, "Notify(StreamData) with data"), "Notify(StreamData) with %d buffered closed its channel", avail)
			m.hit("notify data")
		case m.wClosed:
			m.req(!m.recv(ch, "Notify(StreamData) at EOF"), "Notify(StreamData) at EOF delivered a value")
			return
		}
		m.drain(cancel, ch, "Notify(StreamData)")
	case 2:
		_, writer := m.anyEnd()
		m.logf("Notify(StreamReset) (by the writer %v)", writer)
		var ch <-chan struct{}
		if writer {
			ch = m.w.Notify(ctx, StreamReset)
		} else {
			ch = m.r.Notify(ctx, StreamReset)
		}
		m.soft(writer)
		by, bw := m.anyEnd()
		m.doReset(by, bw)
		m.req(m.recv(ch, "Notify(StreamReset) after a reset"), "Notify(StreamReset) closed its channel")
		m.hit("notify reset")
		m.drain(cancel, ch, "Notify(StreamReset)")
	case 3:
		// The other end's event: not one this end watches.
		var ch <-chan struct{}
		if _, writer := m.anyEnd(); writer {
			m.logf("writer Notify(StreamData)")
			ch = m.w.Notify(ctx, StreamData)
			m.softW()
		} else {
			m.logf("reader Notify(StreamSpace)")
			ch = m.r.Notify(ctx, StreamSpace)
			m.softR()
		}
		m.req(!m.recv(ch, "Notify of another end's event"), "Notify of another end's event delivered a value")
	}
}

// notifyWake watches an event that does not hold, makes it hold from the
// other end, and waits for the value: StreamData on an empty stream and a
// write, or StreamSpace on a full ring and a read.
func (m *stmModel) notifyWake(ctx context.Context, cancel context.CancelFunc) {
	if m.w == nil || m.r == nil || m.rClosed || m.wClosed {
		m.writer()
		m.reader()
		return
	}
	if m.avail() == 0 && m.room() > 0 {
		m.logf("reader Notify(StreamData) on an empty stream, then a write")
		ch := m.r.Notify(ctx, StreamData)
		m.softR()
		p := m.goodBytes(1 + m.rng.IntN(m.room()))
		n, err := m.w.TryWrite(p)
		m.wh = stmWHeld{}
		m.ok(err, "TryWrite")
		m.req(n == len(p), "TryWrite(%d bytes) with room %d wrote %d", len(p), m.room(), n)
		m.published(n, p)
		m.next += uint64(n)
		m.req(m.recv(ch, "Notify(StreamData) after a write"), "Notify(StreamData) closed its channel after a write")
		m.hit("notify data wake")
		m.drain(cancel, ch, "Notify(StreamData)")
		return
	}
	if m.room() == 0 && m.avail() > 0 {
		m.logf("writer Notify(StreamSpace) on a full ring, then a read")
		ch := m.w.Notify(ctx, StreamSpace)
		m.softW()
		p := make([]byte, m.avail())
		n, err := m.r.TryRead(p)
		m.rh = stmRHeld{}
		m.ok(err, "TryRead")
		m.req(n == len(p), "TryRead(%d bytes) of %d buffered read %d", len(p), m.avail(), n)
		m.sameBytes("TryRead", p, m.rd)
		m.consumed(n)
		if m.room() == 0 {
			// The backlog keeps it all: lower it to make room.
			m.ok(m.r.SetBacklog(0), "SetBacklog(0)")
			m.limit = 0
			m.trim()
		}
		m.req(m.recv(ch, "Notify(StreamSpace) after a read"), "Notify(StreamSpace) closed its channel after a read")
		m.hit("notify space wake")
		m.drain(cancel, ch, "Notify(StreamSpace)")
		return
	}
	// Neither: fill the ring for the next time.
	m.wWrite()
}

// notifyEOF watches StreamData on a drained stream and closes the writer:
// the channel is closed (EOF).
func (m *stmModel) notifyEOF(ctx context.Context, cancel context.CancelFunc) {
	if m.w == nil || m.r == nil || m.avail() > 0 {
		m.rTryRead()
		return
	}
	m.logf("reader Notify(StreamData) on a drained stream, then the writer closes")
	ch := m.r.Notify(ctx, StreamData)
	m.softR()
	m.closeWriter(m.rng.IntN(4) == 0)
	m.req(!m.recv(ch, "Notify(StreamData) after the writer closed"), "Notify(StreamData) on a drained stream delivered a value after the writer closed")
	m.hit("notify eof")
	cancel()
}

// notifyClose watches an event on an end and closes the end: the channel
// is closed.
func (m *stmModel) notifyClose(ctx context.Context) {
	if m.rng.IntN(2) == 0 {
		w := m.writer()
		if w == nil {
			return
		}
		ev := []StreamEvent{StreamSpace, StreamReset}[m.rng.IntN(2)]
		m.logf("writer Notify(%v), then the writer closes", ev)
		ch := w.Notify(ctx, ev)
		m.closeWriter(m.rng.IntN(4) == 0)
		for m.recv(ch, "Notify after its end closed") {
		}
	} else {
		r := m.reader()
		if r == nil {
			return
		}
		ev := []StreamEvent{StreamData, StreamReset}[m.rng.IntN(2)]
		m.logf("reader Notify(%v), then the reader closes", ev)
		ch := r.Notify(ctx, ev)
		m.closeReader(m.rng.IntN(4) == 0)
		for m.recv(ch, "Notify after its end closed") {
		}
	}
	m.hit("notify end closed")
}

// notifyPeerClose watches StreamSpace on a full ring and closes the
// reader: the channel is closed, with no value.
func (m *stmModel) notifyPeerClose(ctx context.Context) {
	if m.w == nil || m.r == nil || m.room() > 0 {
		m.wWrite()
		return
	}
	m.logf("writer Notify(StreamSpace) on a full ring, then the reader closes")
	ch := m.w.Notify(ctx, StreamSpace)
	m.softW()
	m.closeReader(m.rng.IntN(4) == 0)
	m.req(!m.recv(ch, "Notify(StreamSpace) after the reader closed"), "Notify(StreamSpace) on a full ring delivered a value after the reader closed")
	m.hit("notify reader closed")
}

// stmZeroByOff is the offset of streamCB.ZeroBy (channel's
// TestStreamLayout pins it).
const stmZeroByOff = 392

// zeroElsewhere plays another end's Zero, half-way: it has reset the
// stream and is clearing the ring (ZeroBy names it). Alive: the writer
// gets no room, a Zero is ErrBusy, and when it is done the writer has
// room again. Dead: a Zero from either end takes over and finishes.
func (m *stmModel) zeroElsewhere() {
	if m.w == nil || m.r == nil {
		m.writer()
		m.reader()
		return
	}
	dead := m.rng.IntN(2) == 0
	id := sys.Self() // another goroutine of this process: alive
	if dead {
		if m.dead0 == 0 {
			m.dead0 = testutil.DeadIdentity(m.t)
		}
		id = m.dead0
	}
	zb, err := mem.Uint64(m.b.region.Bytes(), m.entry().Control+stmZeroByOff)
	m.ok(err, "ZeroBy")
	m.req(zb.Load() == 0, "ZeroBy is %#x with no Zero under way", zb.Load())
	e, writer := m.anyEnd()
	m.logf("another end zeroes (dead %v): Reset by the writer %v, then ZeroBy", dead, writer)
	m.ok(e.Reset(), "Reset")
	m.reset(false)
	zb.Store(uint64(id))
	if st := m.observe(); st.Free != 0 {
		m.fatalf("Stats while another end zeroes: Free %d, want 0", st.Free)
	}
	a, b, err := m.w.Spans()
	m.ok(err, "Spans while another end zeroes")
	m.req(len(a)+len(b) == 0, "Spans while another end zeroes: %d bytes of room", len(a)+len(b))
	m.wh = stmWHeld{}
	if !dead {
		_, err = m.w.TryWrite([]byte("x"))
		m.blocked(err, "TryWrite while another end zeroes")
		_, err = m.w.Reserve(1)
		m.blocked(err, "Reserve(1) while another end zeroes")
		m.expired(m.w.WaitSpace(m.dead), "WaitSpace while another end zeroes")
		m.is(e.Zero(), "Zero while another end zeroes", ErrBusy)
		m.hit("zero busy")
		// It finishes.
		clear(m.realRing())
		clear(m.ring)
		zb.Store(0)
	} else {
		by, bw := m.anyEnd()
		m.logf("Zero by the writer %v takes over from a dead zeroer", bw)
		m.ok(by.Zero(), "Zero with a dead zeroer")
		m.reset(true)
		m.req(zb.Load() == 0, "ZeroBy is %#x after a Zero", zb.Load())
		m.hit("zero dead zeroer")
	}
	m.checkStats(e)
}

// ---- faults the model found ----

// stmBugStream is a writer and a reader (on two handles) of a new stream
// of capacity n.
func stmBugStream(t *testing.T, n int) (*StreamWriter, *StreamReader) {
	t.Helper()
	b := heapBuf(t)
	w, err := testHandle(t, b).StreamWriter(stmID, WithStreamCapacity(n))
	require.NoError(t, err)
	t.Cleanup(func() { w.Close() })
	r, err := testHandle(t, b).StreamReader(stmID)
	require.NoError(t, err)
	t.Cleanup(func() { r.Close() })
	return w, r
}

// TestStreamCommitOnlyHandedOut: Commit published bytes the caller was
// never handed to fill (fixed; found by TestStreamModel). Commit "publishes the first n bytes of the spans
// (or of the reserved view)"; with no spans held it is ErrInvalidArgument
// (its own message: "without spans"), and beyond the reservation too — as
// it is when the reservation wraps and is staged. But a ring-direct
// Reserve(n) leaves the whole room committable, and TryWrite (so Write,
// and ReadFrom) leaves spans armed that the caller never saw: a stray
// Commit then publishes whatever the ring holds there (an old lap's
// bytes, zeros after Zero) as data.
func TestStreamCommitOnlyHandedOut(t *testing.T) {
	t.Run("past a ring-direct reservation", func(t *testing.T) {
		w, r := stmBugStream(t, 16)
		_, err := w.TryWrite([]byte("0123456789abc")) // an old lap
		require.NoError(t, err)
		_, err = io.ReadFull(r, make([]byte, 13))
		require.NoError(t, err)
		v, err := w.Reserve(5) // wraps: staged
		require.NoError(t, err)
		copy(v, "STAGE")
		require.ErrorIs(t, w.Commit(6), ErrInvalidArgument, "a staged reservation of 5 refuses Commit(6)")
		require.NoError(t, w.Commit(5))
		v, err = w.Reserve(2) // at ring byte 2: a view of the ring
		require.NoError(t, err)
		copy(v, "ab")
		err = w.Commit(6) // would publish "ab" and the old lap's "4567"
		require.ErrorIs(t, err, ErrInvalidArgument, "a ring-direct reservation of 2 must refuse Commit(6) as a staged one does")
	})
	t.Run("after TryWrite", func(t *testing.T) {
		w, r := stmBugStream(t, 16)
		n, err := w.TryWrite([]byte("xyz"))
		require.NoError(t, err)
		require.Equal(t, 3, n)
		err = w.Commit(2)
		require.ErrorIs(t, err, ErrInvalidArgument, "Commit with no spans or reservation held")
		p := make([]byte, 16)
		n, _ = r.TryRead(p)
		require.Equal(t, "xyz", string(p[:n]), "only what was written")
	})
}

// TestStreamConsumeOnlyHandedOut: Consume released bytes the caller
// was never handed (fixed; found by TestStreamModel), the reader's side of TestStreamCommitOnlyHandedOut.
// Consume "releases the first n bytes of the spans (or view)", View says
// "Consume(n) releases them", and with nothing held Consume is
// ErrInvalidArgument ("without spans"). But after View(n) Consume takes up
// to everything buffered, and TryRead (so Read, and WriteTo) leaves spans
// armed: a stray Consume silently skips unread bytes instead of being
// refused.
func TestStreamConsumeOnlyHandedOut(t *testing.T) {
	t.Run("past a view", func(t *testing.T) {
		w, r := stmBugStream(t, 16)
		_, err := w.TryWrite([]byte("abcdef"))
		require.NoError(t, err)
		v, err := r.View(1)
		require.NoError(t, err)
		require.Equal(t, "a", string(v))
		err = r.Consume(3)
		require.ErrorIs(t, err, ErrInvalidArgument, "Consume(3) after View(1)")
	})
	t.Run("after TryRead", func(t *testing.T) {
		w, r := stmBugStream(t, 16)
		_, err := w.TryWrite([]byte("abcdef"))
		require.NoError(t, err)
		p := make([]byte, 1)
		_, err = r.TryRead(p)
		require.NoError(t, err)
		err = r.Consume(2)
		require.ErrorIs(t, err, ErrInvalidArgument, "Consume with no spans or view held")
		rest := make([]byte, 16)
		n, _ := r.TryRead(rest)
		require.Equal(t, "bcdef", string(rest[:n]), "nothing skipped")
	})
}

// TestStreamRefusedCallKeepsSpans (fixed; found by TestStreamModel): a
// Reserve or View refused with ErrWouldBlock handed the end fresh spans over all the room or data there
// is now, in the current generation, in place of what the caller held (a
// staged reservation is dropped). A refusal should change nothing —
// channel's TestStreamSpansWrapAround consumes a view after a refused
// View — or at least let go of what was held. Instead the next Commit or
// Consume is accepted with nothing held, publishes the ring's bytes in
// place of a staged reservation's, or applies spans handed out before a
// reset to the new generation, where the docs promise ErrReset ("never
// applied to the new state").
func TestStreamRefusedCallKeepsSpans(t *testing.T) {
	t.Run("Commit with nothing held", func(t *testing.T) {
		b := heapBuf(t)
		w, err := testHandle(t, b).StreamWriter(stmID, WithStreamCapacity(16))
		require.NoError(t, err)
		_, err = w.TryWrite(make([]byte, 10))
		require.NoError(t, err)
		require.NoError(t, w.Close())
		w, err = testHandle(t, b).StreamWriter(stmID, WithStreamCapacity(16)) // holds nothing
		require.NoError(t, err)
		t.Cleanup(func() { w.Close() })
		_, err = w.Reserve(8)
		require.Equal(t, ErrWouldBlock, err)
		err = w.Commit(3)
		require.ErrorIs(t, err, ErrInvalidArgument, "Commit after a refused Reserve, nothing held")
	})
	t.Run("a staged reservation", func(t *testing.T) {
		w, r := stmBugStream(t, 16)
		_, err := w.TryWrite([]byte("0123456789abc"))
		require.NoError(t, err)
		_, err = io.ReadFull(r, make([]byte, 10))
		require.NoError(t, err)
		v, err := w.Reserve(5) // at ring byte 13: wraps, staged
		require.NoError(t, err)
		copy(v, "HELLO")
		_, err = w.Reserve(14) // room 13
		require.Equal(t, ErrWouldBlock, err)
		if err := w.Commit(5); err != nil {
			require.ErrorIs(t, err, ErrInvalidArgument, "Commit after a refused Reserve")
			return
		}
		p := make([]byte, 16)
		n, err := r.TryRead(p)
		require.NoError(t, err)
		require.Equal(t, "abcHELLO", string(p[:n]), "a Commit after a refused Reserve publishes what was reserved (or is refused)")
	})
	t.Run("a view from before a reset", func(t *testing.T) {
		w, r := stmBugStream(t, 16)
		_, err := w.TryWrite([]byte("ab"))
		require.NoError(t, err)
		v, err := r.View(2)
		require.NoError(t, err)
		require.Equal(t, "ab", string(v))
		require.NoError(t, w.Reset())
		_, err = w.TryWrite([]byte("xyz"))
		require.NoError(t, err)
		_, err = r.View(5)
		require.Equal(t, ErrWouldBlock, err)
		err = r.Consume(2) // the view of "ab"
		require.Error(t, err, "a Consume of a view from before the reset")
		require.ErrorIs(t, err, ErrReset)
		p := make([]byte, 16)
		n, _ := r.TryRead(p)
		require.Equal(t, "xyz", string(p[:n]), "nothing of the new generation consumed")
	})
	t.Run("Consume with nothing held", func(t *testing.T) {
		w, r := stmBugStream(t, 16) // the reader holds nothing
		_, err := w.TryWrite([]byte("abc"))
		require.NoError(t, err)
		_, err = r.View(5)
		require.Equal(t, ErrWouldBlock, err)
		err = r.Consume(2)
		require.ErrorIs(t, err, ErrInvalidArgument, "Consume after a refused View, nothing held")
	})
}

// TestStreamRefusedReaderOpen (fixed; found by TestStreamModel):
// StreamReader with a WithBacklog the stream cannot have (not below its capacity) is refused
// with ErrInvalidArgument, as it should be, but on an existing stream it
// is refused only after the reader end was claimed, and the refusal
// closes that end: RClosed is set, so a writer that has never had a
// reader now gets io.ErrClosedPipe, as if a reader had come and gone. A
// refused open must leave the stream as it was (AttachReader's own refusal
// puts RClosed back for this reason).
func TestStreamRefusedReaderOpen(t *testing.T) {
	b := heapBuf(t)
	w, err := testHandle(t, b).StreamWriter(stmID, WithStreamCapacity(16))
	require.NoError(t, err)
	t.Cleanup(func() { w.Close() })
	_, err = w.TryWrite([]byte("hello"))
	require.NoError(t, err)
	_, err = testHandle(t, b).StreamReader(stmID, WithStreamCapacity(16), WithBacklog(16))
	require.ErrorIs(t, err, ErrInvalidArgument)
	st, err := w.Stats()
	require.NoError(t, err)
	require.False(t, st.ReaderClosed, "no reader has opened, let alone closed")
	_, err = w.TryWrite([]byte(" world"))
	require.NoError(t, err, "the writer of a stream whose reader has not opened yet")
}

// TestStreamGenerationAfterClose: a closed end's Generation is the
// stream's when the end closed, also once the stream is gone and another
// has taken its place (it read the control block, freed with the stream,
// before: the new stream's generation).
func TestStreamGenerationAfterClose(t *testing.T) {
	b := heapBuf(t)
	h := testHandle(t, b)
	w, err := h.StreamWriter(stmID, WithStreamCapacity(16))
	require.NoError(t, err)
	r, err := testHandle(t, b).StreamReader(stmID)
	require.NoError(t, err)
	require.NoError(t, w.Reset())
	require.NoError(t, r.Zero())
	g := w.Generation()
	require.Equal(t, g, r.Generation())
	require.NotZero(t, g)
	require.NoError(t, w.Close())
	require.NoError(t, r.Close())
	require.ErrorIs(t, h.RemoveStream(context.Background(), stmID), ErrNotExist, "both ends closed, nothing unread: gone")
	// A new stream under the id, likely where the old one was.
	w2, err := h.StreamWriter(stmID, WithStreamCapacity(16))
	require.NoError(t, err)
	t.Cleanup(func() { w2.Close() })
	require.Zero(t, w2.Generation())
	require.Equal(t, g, w.Generation(), "the writer's, as it closed")
	require.Equal(t, g, r.Generation(), "the reader's, as it closed")
}
