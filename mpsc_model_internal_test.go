package ipc

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"runtime/debug"
	"slices"
	"strings"
	"testing"
	"time"
	"unsafe"

	"github.com/heapipc/ipc/channel"
	"github.com/heapipc/ipc/internal/mem"
	"github.com/heapipc/ipc/slab"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestMPSCModel is TestOwnershipModel's counterpart for MPSC channels,
// Select and the typed helpers and packs. One buffer (small slabs for odd
// seeds, WithDebug for half of them), four handles: an MPSC channel
// (capacity 2, 4 or 8 by seed, three producer slots) whose producers are
// on h0, h1 and h2 and whose consumer is on h3 (now and then on another
// handle), and two record channels (capacity 4, h0 to h3; capacity 8, h1
// to h3); a Select on h3 over the MPSC consumer and the two record
// consumers. One goroutine drives them with random operations and keeps a
// model of every Record value it obtained, as TestOwnershipModel does
// (current, queued, handed over, freed), and of what each end holds.
//
// Records are allocated (Allocate, AllocateBatch, Typed.Allocate, and
// packs: AllocatePack, Typed.AllocateSlice), stamped, sent (MPSC Send and
// TrySend; record channels' Send, TrySend, SendBatch, SendEachOf),
// received (MPSC Receive and TryReceive, record channels' Receive,
// TryReceive, ReceiveBatch, ReceiveEachOf, Select.Receive), forwarded and
// freed (Handle.Free on any handle, Buffer.Free, FreeBatch; right after
// a receive, mostly through the receiving handle, which keeps the
// record's slot for that). SendEachOf's fill and ReceiveEachOf's use now
// and then allocate, free, use the MPSC channel and the Select, close and
// attach the MPSC channel's ends, or misuse Records (their docs let them
// use the handle and other channels). Producers close and attach again (a
// fourth is ErrBusy: every slot is held, also when it asks for more), the
// consumer closes and attaches again (a second is ErrBusy), the MPSC
// channel goes when its last end closes with nothing queued and is made
// anew by the next attach (the MPSC docs do not say; the record
// channels' rule, which the code follows), and the Select's set changes
// (Remove, Add, a new Select). Attaching with another capacity is
// ErrSizeMismatch, as another type ErrWrongType; at the end, h3's Close
// closes its Select and ends.
//
// The model's expectations are the docs':
//   - MPSC: each producer's records arrive in the order it sent them
//     (and no other order is assumed: a record received is at the head of
//     one producer's queue); TrySend is ErrWouldBlock when capacity
//     records are queued, Send with a dead context fails, and the record
//     stays the sender's; a closed producer's send is ErrClosed; the
//     consumer reads io.EOF when no producer is attached (after one was)
//     and everything is received, ErrWouldBlock otherwise when empty; a
//     closed consumer's receive is ErrClosed; records queued while the
//     consumer is closed are the next consumer's.
//   - Select: Receive returns an end that has something to receive (a
//     record, or io.EOF from a finished MPSC channel), served round-robin
//     from the end after the one served last; with nothing to receive and
//     a dead context, ctx's error and a nil Receiver. An end closed while
//     in the set has its ErrClosed (Receive's doc does not say; the model
//     takes the end's own answer, which a demanding user can act on).
//   - Records: every record sent is received once, with its stamp, place,
//     tag and hand; a pack's payloads and a typed record's value are seen
//     through PackOf, SliceOf and ValueOf (and refused by those of another
//     kind); ReceiveEachOf frees a record that is not one T unread and
//     reports ErrSizeMismatch, and SendEachOf fills exactly what it sends.
//     Queued, handed over, freed (also once their place was taken) and
//     zero Records are refused by every send and free (MPSC Send, TrySend;
//     Send, TrySend, SendBatch; Handle.Free, Buffer.Free, FreeBatch),
//     alone and in batches of good records, which a refused SendBatch
//     leaves the sender's and a FreeBatch frees; so are, inside
//     ReceiveEachOf's use, the Records of the records that call delivered
//     (TestStaleFreeInReceiveEachOf: Free let them through). The
//     documented holes (a Record 16 in-process sends old; a tag
//     collision) are left out.
//   - The buffer's live records are the model's, Check passes, the
//     channels are the model's, and at the end, drained and freed, none
//     is left.
//
// The seeds are a fixed list and one from the clock; a failure logs its
// seed and the operations before it. IPC_MPSC_SEED=<seed> runs that seed
// alone.
func TestMPSCModel(t *testing.T) {
	seeds, single := modelSeeds(t, "IPC_MPSC_SEED", 1, 2, 3, 4, 5, 6)
	n := modelOps(mmOps)
	hits, ran := map[string]int{}, 0
	for _, seed := range seeds {
		t.Run(fmt.Sprintf("seed=%d", seed), func(t *testing.T) {
			m := newMPSCModel(t, seed)
			m.run(n)
			for k, v := range m.hits {
				hits[k] += v
			}
			ran++
		})
	}
	// The runs together must have reached what they are for (a single
	// seed, or a run cut down under -race or -short, need not).
	if single || n < mmOps || ran < len(seeds) {
		return
	}
	for _, k := range []string{"queued", "handed over", "freed", "mpsc eof", "select eof", "mpsc full", "consumer reattached", "mpsc channel removed", "receive each odd", "misuse in use", "select closed end", "aside, ends"} {
		if hits[k] == 0 {
			t.Errorf("no run reached %q", k)
		}
	}
}

// mmOps is how many random operations a seed runs (see modelOps).
const mmOps = 20000

const (
	mmMPSC ChannelID = 10 // the MPSC channel
	mmRC1  ChannelID = 11 // record channel h0 → h3
	mmRC2  ChannelID = 12 // record channel h1 → h3
	mmCons           = 3  // the consumers' handle
)

// mmT is the typed helpers' type: 48 bytes, its first and last words
// where omStamp writes a stamp.
type mmT struct {
	S uint64
	A [4]uint64
	C uint64 // ^S
}

const mmTSize = int(unsafe.Sizeof(mmT{}))

// mmKind is what a record holds.
type mmKind uint8

const (
	mmPlain mmKind = iota // bytes, stamped by omStamp
	mmTyped               // one mmT (Typed.Allocate, SendEachOf)
	mmPack                // a pack (AllocatePack): each payload stamped
	mmSlice               // a pack of mmT (Typed.AllocateSlice)
)

// mmRec is a record in the model.
type mmRec struct {
	id    int
	size  int // the record's length
	kind  mmKind
	count int // a pack's payloads
	psize int // a pack's payload size
	state omState
	sends int // sends through Send, TrySend, SendBatch, MPSC Send, TrySend
	stamp uint64
	alloc int    // the handle that allocated it
	cur   *mmVal // held: its current Record
	pos   int    // held: its index in mmModel.held
	known bool   // off and tag known (a record SendEachOf made: once received)
	off   mem.Off
	tag   uint32
	in    *mmFifo  // queued: where
	vals  []*mmVal // the Record values of it the test obtained
}

// mmVal is a Record value the test obtained.
type mmVal struct {
	r     Record
	rec   *mmRec // nil: the zero Record
	sends int
}

// mmFifo is the records one sender queued on one end, in order: a record
// channel's, or one MPSC producer's.
type mmFifo struct {
	name string
	q    []*mmRec
}

// mmRC is a record channel (its consumer on h3).
type mmRC struct {
	id  ChannelID
	p   *Producer
	c   *Consumer
	ph  int
	cap int
	f   *mmFifo
}

func (c *mmRC) room() int { return c.cap - len(c.f.q) }

// mmProd is an attached MPSC producer.
type mmProd struct {
	p  *MPSCProducer
	hi int
	f  *mmFifo
}

// mmMC is the MPSC channel in the model.
type mmMC struct {
	cap   int
	prods [3]*mmProd // attached producers, by slot (h0, h1, h2 mostly)
	cons  *MPSCConsumer
	ch    int           // the handle of cons
	old   *MPSCConsumer // the consumer closed last
	oldP  *MPSCProducer // the producer closed last
	// exists: the channel is in the registry; ever: a producer attached
	// to it since it was made; consClosed: a consumer attached to it and
	// closed (the channel goes when nothing is queued and no end is held).
	exists, ever, consClosed bool
	fifos                    []*mmFifo // the producers' queues, closed ones' too while not empty
	queued                   int
	nprod                    int // producers made, for names
}

type mmModel struct {
	t    *testing.T
	seed uint64
	rng  *rand.Rand
	b    *Buffer
	hs   [4]*Handle
	typ  [4]*Typed[mmT]
	rc   [2]*mmRC
	mp   mmMC
	opts []ChannelOption // the MPSC channel's

	sel   *Select
	cases []Receiver // the model's copy of the Select's set, in order
	next  int        // where the Select looks first (the end after the one served last)

	ctx  context.Context
	dead context.Context

	nrec   int
	held   []*mmRec
	vals   []*mmVal
	byOff  map[mem.Off][]*mmVal
	liveAt map[mem.Off]*mmRec // known live records (held or queued) by place
	live   int
	huge   int
	stamp  uint64
	// The Record a consumer delivered last one at a time (Receive,
	// TryReceive, Select), and the batch h3's ReceiveBatch delivered last:
	// the receiving handle keeps what it needs to free them quickly.
	recvOne   *mmVal
	recvH     int // the handle whose consumer delivered recvOne
	recvBatch []*mmVal

	maxSmallPayload, large, hugeSize int

	op    int
	what  string
	log   []string
	hits  map[string]int
	depth int // inside a fill or use
}

func newMPSCModel(t *testing.T, seed uint64) *mmModel {
	var opts []Option
	if seed%2 == 1 {
		opts = append(opts, WithSlabSize(16<<10))
	}
	if seed/2%2 == 1 {
		opts = append(opts, WithDebug()) // a handle used inside a fill or use while its call holds it panics
	}
	b := heapBuf(t, opts...)
	m := &mmModel{t: t, seed: seed, rng: rand.New(rand.NewPCG(seed, seed^0x6d707363)), b: b,
		hits: map[string]int{}, byOff: map[mem.Off][]*mmVal{}, liveAt: map[mem.Off]*mmRec{}}
	for i := range m.hs {
		m.hs[i] = testHandle(t, b)
		tp, err := NewTyped[mmT](m.hs[i])
		require.NoError(t, err)
		m.typ[i] = tp
	}
	p1, c1 := ends(t, m.hs[0], m.hs[mmCons], mmRC1, WithCapacity(4))
	p2, c2 := ends(t, m.hs[1], m.hs[mmCons], mmRC2, WithCapacity(8))
	m.rc[0] = &mmRC{id: mmRC1, p: p1, c: c1, ph: 0, cap: 4, f: &mmFifo{name: "rc11"}}
	m.rc[1] = &mmRC{id: mmRC2, p: p2, c: c2, ph: 1, cap: 8, f: &mmFifo{name: "rc12"}}
	m.mp.cap = []int{2, 4, 8}[seed%3]
	m.opts = []ChannelOption{WithCapacity(m.mp.cap), WithProducers(3)}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	m.ctx = ctx
	dead, cancelDead := context.WithDeadline(context.Background(), time.Unix(0, 0))
	t.Cleanup(cancelDead)
	m.dead = dead
	maxSmall := b.recs.pool.MaxSmall()
	m.maxSmallPayload = (maxSmall - trailerSize) &^ 15
	m.large = maxSmall + 1
	m.hugeSize = channel.SlotLenNone + 8
	t.Cleanup(func() {
		if m.mp.cons != nil {
			m.mp.cons.Close()
		}
		for _, p := range m.mp.prods {
			if p != nil {
				p.p.Close()
			}
		}
		if t.Failed() {
			t.Logf("seed %d (IPC_MPSC_SEED=%d reruns it), failed at op %d (%s); the operations before it:\n%s",
				m.seed, m.seed, m.op, m.what, strings.Join(m.log, "\n"))
		}
	})
	m.logf("setup")
	m.consAttach()
	for i := range 3 {
		m.prodAttachOn(i, i)
	}
	m.edges()
	s, err := m.hs[mmCons].NewSelect(m.mp.cons, c1, c2)
	require.NoError(t, err)
	m.sel, m.cases = s, []Receiver{m.mp.cons, c1, c2}
	return m
}

// edges checks what the docs of the typed helpers, packs, MPSC options
// and Select say of arguments out of their range.
func (m *mmModel) edges() {
	t := m.t
	h := m.hs[0]
	m.logf("argument edges")
	_, err := NewTyped[struct{ P *int }](h)
	require.ErrorIs(t, err, ErrInvalidArgument, "NewTyped of a type with a pointer")
	_, err = SendEachOf(m.ctx, m.rc[0].p, 1, func(int, *struct{ S []byte }) {})
	require.ErrorIs(t, err, ErrInvalidArgument, "SendEachOf of a type with a slice")
	_, err = SendEachOf[mmT](m.ctx, m.rc[0].p, 1, nil)
	require.ErrorIs(t, err, ErrInvalidArgument, "SendEachOf with a nil fill")
	_, err = ReceiveEachOf[mmT](m.ctx, m.rc[0].c, 1, nil)
	require.ErrorIs(t, err, ErrInvalidArgument, "ReceiveEachOf with a nil use")
	z, err := NewTyped[struct{}](h)
	require.NoError(t, err)
	_, _, err = z.AllocateSlice(1)
	require.ErrorIs(t, err, ErrInvalidSize, "AllocateSlice of a zero-size type")
	_, err = h.AllocatePack(0, 8)
	require.ErrorIs(t, err, ErrInvalidSize, "AllocatePack of no payloads")
	_, err = h.AllocatePack(1, 0)
	require.ErrorIs(t, err, ErrInvalidSize, "AllocatePack of empty payloads")
	_, err = h.MPSCProducer(99, WithProducers(0))
	require.ErrorIs(t, err, ErrInvalidArgument, "WithProducers(0)")
	_, err = h.MPSCProducer(99, WithProducers(channel.MaxMPSCProducers+1))
	require.ErrorIs(t, err, ErrInvalidArgument, "WithProducers beyond the most")
	_, err = h.MPSCConsumer(99, WithCapacity(1))
	require.ErrorIs(t, err, ErrInvalidSize, "an MPSC channel of one slot")
	// A record whose bytes end as a pack's header does but whose header
	// describes payloads that do not fit it: ErrCorrupt; still the
	// caller's to free.
	r, err := h.Allocate(64)
	require.NoError(t, err)
	*mem.MustAt[packHeader](r.Bytes(), 64-packHeaderSize) = packHeader{Magic: packMagic, Count: 100, Size: 8, Stride: 8}
	_, err = PackOf(r)
	require.ErrorIs(t, err, ErrCorrupt, "PackOf of a header that does not fit its record")
	require.NoError(t, h.Free(r), "a record PackOf refused is the caller's")
	// Remove of an end not in the set changes nothing.
	s2, err := m.hs[mmCons].NewSelect(m.rc[0].c)
	require.NoError(t, err)
	s2.Remove(m.rc[1].c)
	require.Equal(t, 1, s2.Len())
	require.NoError(t, s2.Close())
	st, err := m.b.Stats()
	require.NoError(t, err)
	require.Equal(t, uint64(3), st.Channels, "channels: the argument edges made none")
}

func (m *mmModel) at(format string, args ...any) string {
	return fmt.Sprintf("seed %d op %d (%s): %s", m.seed, m.op, m.what, fmt.Sprintf(format, args...))
}

func (m *mmModel) logf(format string, args ...any) {
	m.what = strings.Repeat("  ", m.depth) + fmt.Sprintf(format, args...)
	m.log = append(m.log, fmt.Sprintf("%5d %s", m.op, m.what))
	if len(m.log) > 100 {
		m.log = m.log[len(m.log)-80:]
	}
}

func (m *mmModel) run(n int) {
	t := m.t
	defer func() {
		if p := recover(); p != nil {
			t.Fatalf("seed %d op %d (%s): panic: %v\n%s", m.seed, m.op, m.what, p, debug.Stack())
		}
	}()
	ops := []modelOp{
		{8, m.allocOne},
		{3, m.allocBatch},
		{3, m.allocPack},
		{3, m.allocTyped},
		{2, m.allocSlice},
		{2, m.restamp},
		{16, m.mpscSendOne},
		{5, m.rcSendOne},
		{3, m.rcSendBatch},
		{3, m.rcSendEachOf},
		{8, m.mpscReceive},
		{12, m.selReceive},
		{4, m.rcReceive},
		{3, m.rcReceiveBatch},
		{3, m.rcReceiveEachOf},
		{6, m.forward},
		{6, m.freeOne},
		{3, m.freeBatch},
		{12, m.misuseOne},
		{3, m.misuseSendBatch},
		{3, m.misuseFreeBatch},
		{2, m.misuseTwice},
		{4, m.misuseViaReceiver},
		{3, m.reuse},
		{3, m.prodClose},
		{3, m.prodAttach},
		{1, m.consClose},
		{2, m.consAttach},
		{3, m.selMaint},
		{1, m.attachOdd},
	}
	for m.op = 0; m.op < n; m.op++ {
		if len(m.held) > 24 {
			if m.rng.IntN(2) == 0 {
				m.freeBatch()
			} else {
				m.freeOne()
			}
		} else {
			modelStep(m.rng, ops)
		}
		if m.op%16 == 0 {
			m.checkLive()
		}
		if m.op%500 == 0 {
			m.verify()
		}
	}
	m.drain()
	t.Logf("seed %d: %d operations, %d records, mpsc capacity %d; %v", m.seed, n, m.nrec, m.mp.cap, m.hits)
}

// --- records

func (m *mmModel) nextStamp() uint64 {
	m.stamp++
	return m.stamp<<8 | 0xa5
}

func (m *mmModel) newRec(size int, kind mmKind, st omState) *mmRec {
	m.nrec++
	rec := &mmRec{id: m.nrec, size: size, kind: kind, state: st, stamp: m.nextStamp()}
	m.live++
	if size >= channel.SlotLenNone {
		m.huge++
	}
	return rec
}

// newHeld adds r, just allocated on handle hi, to the model as rec's
// Record, and stamps it.
func (m *mmModel) newHeld(r Record, rec *mmRec, hi int) *mmVal {
	t := m.t
	require.Equal(t, rec.size, r.Len(), m.at("allocated length"))
	require.Equal(t, uint32(freshHand), r.hand(), m.at("a new record's hand"))
	rec.alloc = hi
	m.know(rec, r)
	m.write(rec, r)
	v := &mmVal{r: r, rec: rec}
	m.addVal(v)
	m.hold(rec, v)
	return v
}

func (m *mmModel) know(rec *mmRec, r Record) {
	if prev, ok := m.liveAt[r.off()]; ok && prev != rec {
		m.t.Fatalf("%s", m.at("record #%d at %#x, where live record #%d is", rec.id, uint64(r.off()), prev.id))
	}
	rec.known, rec.off, rec.tag = true, r.off(), r.tag()
	m.liveAt[rec.off] = rec
}

func (m *mmModel) addVal(v *mmVal) {
	m.vals = append(m.vals, v)
	v.rec.vals = append(v.rec.vals, v)
	m.byOff[v.r.off()] = append(m.byOff[v.r.off()], v)
}

func (m *mmModel) hold(rec *mmRec, v *mmVal) {
	rec.state, rec.cur, rec.pos, rec.in = omHeld, v, len(m.held), nil
	m.held = append(m.held, rec)
}

func (m *mmModel) unhold(rec *mmRec) {
	require.Equal(m.t, omHeld, rec.state, m.at("record #%d is not held", rec.id))
	last := m.held[len(m.held)-1]
	m.held[rec.pos] = last
	last.pos = rec.pos
	m.held = m.held[:len(m.held)-1]
	rec.cur = nil
}

// queue: rec, held, was sent into f by its current Record.
func (m *mmModel) queue(rec *mmRec, f *mmFifo) {
	m.unhold(rec)
	rec.state, rec.in = omQueued, f
	rec.sends++
	f.q = append(f.q, rec)
}

func (m *mmModel) freed(rec *mmRec) {
	if rec.state == omHeld {
		m.unhold(rec)
	}
	rec.state, rec.in = omFreed, nil
	if rec.known && m.liveAt[rec.off] == rec {
		delete(m.liveAt, rec.off)
	}
	m.live--
	if rec.size >= channel.SlotLenNone {
		m.huge--
	}
}

// write stamps rec's bytes through r.
func (m *mmModel) write(rec *mmRec, r Record) {
	switch rec.kind {
	case mmPlain, mmTyped:
		if rec.size >= 8 {
			omStamp(r.Bytes(), rec.stamp)
		}
	case mmPack, mmSlice:
		p, err := PackOf(r)
		require.NoError(m.t, err, m.at("PackOf of pack #%d", rec.id))
		for i, b := range p.All() {
			omStamp(b, rec.stamp^uint64(i))
		}
	}
}

// content reports what is wrong with r's bytes as rec's, if anything,
// reading them as the record's kind is read: ValueOf, PackOf, SliceOf.
func (m *mmModel) content(rec *mmRec, r Record) string {
	switch rec.kind {
	case mmPlain:
		if rec.size < 8 {
			return ""
		}
		if s, ok := omStampOf(r.Bytes()); !ok || s != rec.stamp {
			return fmt.Sprintf("stamp %#x (intact %v), want %#x", s, ok, rec.stamp)
		}
	case mmTyped:
		v, err := ValueOf[mmT](r)
		if err != nil {
			return fmt.Sprintf("ValueOf: %v", err)
		}
		if unsafe.Pointer(v) != unsafe.Pointer(unsafe.SliceData(r.Bytes())) {
			return "ValueOf's value is not the record's bytes"
		}
		if v.S != rec.stamp || v.C != ^rec.stamp {
			return fmt.Sprintf("value %#x/%#x, want %#x", v.S, ^v.C, rec.stamp)
		}
	case mmPack, mmSlice:
		p, err := PackOf(r)
		if err != nil {
			return fmt.Sprintf("PackOf: %v", err)
		}
		if p.Len() != rec.count || p.Size() != rec.psize || p.Record().off() != r.off() {
			return fmt.Sprintf("a pack of %d payloads of %d bytes, want %d of %d", p.Len(), p.Size(), rec.count, rec.psize)
		}
		for i, b := range p.All() {
			if s, ok := omStampOf(b); !ok || s != rec.stamp^uint64(i) {
				return fmt.Sprintf("payload %d: stamp %#x (intact %v), want %#x", i, s, ok, rec.stamp^uint64(i))
			}
		}
		if rec.kind == mmPack {
			if _, err := SliceOf[mmT](p); !errors.Is(err, ErrSizeMismatch) {
				return fmt.Sprintf("SliceOf of a pack of %d-byte payloads: %v, want ErrSizeMismatch", rec.psize, err)
			}
		}
		if rec.size != mmTSize {
			if _, err := ValueOf[mmT](r); !errors.Is(err, ErrSizeMismatch) {
				return fmt.Sprintf("ValueOf of a pack of %d bytes: %v, want ErrSizeMismatch", rec.size, err)
			}
		}
		if rec.kind == mmSlice {
			vs, err := SliceOf[mmT](p)
			if err != nil {
				return fmt.Sprintf("SliceOf: %v", err)
			}
			if len(vs) != rec.count {
				return fmt.Sprintf("SliceOf: %d values, want %d", len(vs), rec.count)
			}
			for i := range vs {
				if vs[i].S != rec.stamp^uint64(i) {
					return fmt.Sprintf("value %d: %#x, want %#x", i, vs[i].S, rec.stamp^uint64(i))
				}
			}
		}
	}
	return ""
}

// received checks r, taken off f (at its head), as rec's, and makes it
// rec's current Record.
func (m *mmModel) received(f *mmFifo, r Record) *mmVal {
	t := m.t
	require.NotEmpty(t, f.q, m.at("%s delivered a record it does not hold", f.name))
	rec := f.q[0]
	f.q = f.q[1:]
	require.Equal(t, rec.size, r.Len(), m.at("record #%d's length", rec.id))
	if bad := m.content(rec, r); bad != "" {
		t.Fatalf("%s", m.at("%s delivered record #%d: %s: lost, reordered or damaged", f.name, rec.id, bad))
	}
	if rec.known {
		require.Equal(t, rec.off, r.off(), m.at("record #%d's place", rec.id))
		require.Equal(t, rec.tag, r.tag(), m.at("record #%d's tag", rec.id))
	} else {
		m.know(rec, r)
	}
	require.Equal(t, uint32(freshHand+rec.sends)&refHand, r.hand(), m.at("record #%d's hand after %d sends", rec.id, rec.sends))
	if rec.kind == mmPlain && m.rng.IntN(4) == 0 {
		// What the typed helpers say of a record that is not theirs.
		if rec.size != mmTSize {
			_, err := ValueOf[mmT](r)
			require.ErrorIs(t, err, ErrSizeMismatch, m.at("ValueOf of %d bytes", rec.size))
		}
		if rec.size < packHeaderSize || rec.size%16 != 0 {
			_, err := PackOf(r)
			require.ErrorIs(t, err, ErrWrongType, m.at("PackOf of %d bytes", rec.size))
		}
	}
	v := &mmVal{r: r, rec: rec, sends: rec.sends}
	m.addVal(v)
	m.hold(rec, v)
	return v
}

// status is what v is now.
func (m *mmModel) status(v *mmVal) omStatus {
	rec := v.rec
	switch {
	case rec == nil:
		return stZero
	case rec.state == omQueued:
		return stQueued
	case rec.state == omFreed:
		if o := m.liveAt[rec.off]; o != nil && o.tag == rec.tag {
			return stCollide
		}
		return stFreed
	case rec.cur == v:
		return stCurrent
	case (rec.sends-v.sends)%16 == 0:
		return stHole
	default:
		return stHandedOver
	}
}

func (m *mmModel) pickHeld() *mmRec {
	if len(m.held) == 0 {
		return nil
	}
	return m.held[m.rng.IntN(len(m.held))]
}

func (m *mmModel) pickHelds(n int) []*mmRec {
	n = min(n, len(m.held))
	idx := m.rng.Perm(len(m.held))[:n]
	recs := make([]*mmRec, n)
	for i, j := range idx {
		recs[i] = m.held[j]
	}
	return recs
}

func mmCur(recs []*mmRec) []Record {
	rs := make([]Record, len(recs))
	for i, rec := range recs {
		rs[i] = rec.cur.r
	}
	return rs
}

func mmIDs(recs []*mmRec) string {
	var sb strings.Builder
	for i, r := range recs {
		if i > 0 {
			sb.WriteByte(',')
		}
		fmt.Fprintf(&sb, "#%d", r.id)
	}
	return sb.String()
}

// pickBad is a Record value no send or free may accept (see
// omModel.pickBad), or nil.
func (m *mmModel) pickBad() (*mmVal, omStatus) {
	if m.rng.IntN(40) == 0 {
		return &mmVal{}, stZero
	}
	if m.rng.IntN(4) == 0 {
		if h := m.pickHeld(); h != nil {
			vs := m.byOff[h.off]
			for range 4 {
				v := vs[m.rng.IntN(len(vs))]
				if st := m.status(v); st == stFreed {
					return v, st
				}
			}
		}
	}
	want := []omStatus{stQueued, stHandedOver, stFreed}[m.rng.IntN(3)]
	var other *mmVal
	var otherSt omStatus
	for range 64 {
		if len(m.vals) == 0 {
			break
		}
		var v *mmVal
		if k := min(len(m.vals), 256); m.rng.IntN(2) == 0 {
			v = m.vals[len(m.vals)-1-m.rng.IntN(k)]
		} else {
			v = m.vals[m.rng.IntN(len(m.vals))]
		}
		switch st := m.status(v); st {
		case want:
			return v, st
		case stQueued, stHandedOver, stFreed:
			if other == nil {
				other, otherSt = v, st
			}
		}
	}
	if other != nil {
		return other, otherSt
	}
	return nil, 0
}

func mmName(v *mmVal, st omStatus) string {
	if v.rec == nil {
		return "zero Record"
	}
	where := ""
	if v.rec.in != nil {
		where = " in " + v.rec.in.name
	}
	return fmt.Sprintf("#%d's Record of %d sends (%s%s; record %d sends)", v.rec.id, v.sends, st, where, v.rec.sends)
}

// refused checks err, a send's or free's of v (status st); withItsRecord:
// in a batch with its record's current Record (see omModel.refusedIn).
func (m *mmModel) refused(err error, v *mmVal, st omStatus, what string, withItsRecord bool) {
	t := m.t
	m.hits[st.String()]++
	if st == stFreed {
		if h := m.liveAt[v.rec.off]; h != nil {
			m.hits["freed, place taken"]++
			what += fmt.Sprintf(" (its place now holds #%d)", h.id)
		}
	}
	require.Error(t, err, m.at("%s accepted", what))
	if withItsRecord && (st == stHandedOver || st == stFreed) {
		require.True(t, errors.Is(err, ErrNotAllocated) || errors.Is(err, ErrDoubleFree),
			m.at("%s: %v, want ErrNotAllocated or ErrDoubleFree", what, err))
		return
	}
	switch st {
	case stQueued:
		require.ErrorIs(t, err, ErrNotAllocated, m.at("%s", what))
		require.ErrorContains(t, err, "queued in a channel", m.at("%s", what))
	case stHandedOver:
		require.ErrorIs(t, err, ErrNotAllocated, m.at("%s", what))
		require.ErrorContains(t, err, "taken over", m.at("%s", what))
	case stZero:
		require.ErrorIs(t, err, ErrNotAllocated, m.at("%s", what))
	case stFreed:
		require.True(t, errors.Is(err, ErrNotAllocated) || errors.Is(err, ErrDoubleFree),
			m.at("%s: %v, want ErrNotAllocated or ErrDoubleFree", what, err))
	default:
		t.Fatalf("%s", m.at("refused: status %v", st))
	}
}

// --- allocation

func (m *mmModel) size() int {
	switch x := m.rng.IntN(1000); {
	case x < 4 && m.huge < 2:
		return m.hugeSize
	case x < 40:
		return m.large
	case x < 80:
		return m.maxSmallPayload
	case x < 100:
		return 0 // no bytes to stamp: told by its place
	default:
		return omSizes[m.rng.IntN(len(omSizes))]
	}
}

func (m *mmModel) allocOne() bool {
	hi, size := m.rng.IntN(4), m.size()
	m.logf("Allocate(%d) on h%d", size, hi)
	r, err := m.hs[hi].Allocate(size)
	require.NoError(m.t, err, m.at("Allocate"))
	v := m.newHeld(r, m.newRec(size, mmPlain, omHeld), hi)
	m.what += fmt.Sprintf(" -> #%d at %#x", v.rec.id, uint64(r.off()))
	return true
}

func (m *mmModel) allocBatch() bool {
	hi, size, n := m.rng.IntN(4), m.size(), 1+m.rng.IntN(8)
	if size > m.maxSmallPayload {
		n = 1
	}
	m.logf("AllocateBatch(%d, %d records) on h%d", size, n, hi)
	rs := make([]Record, n)
	require.NoError(m.t, m.hs[hi].AllocateBatch(size, rs), m.at("AllocateBatch"))
	for _, r := range rs {
		v := m.newHeld(r, m.newRec(size, mmPlain, omHeld), hi)
		m.what += fmt.Sprintf(" #%d", v.rec.id)
	}
	return true
}

func (m *mmModel) allocPack() bool {
	hi := m.rng.IntN(4)
	count, psize := 1+m.rng.IntN(40), []int{8, 12, 16, 24, 64}[m.rng.IntN(5)]
	if m.rng.IntN(20) == 0 {
		count = 200 + m.rng.IntN(2000) // a large record
	}
	m.logf("AllocatePack(%d, %d) on h%d", count, psize, hi)
	p, err := m.hs[hi].AllocatePack(count, psize)
	require.NoError(m.t, err, m.at("AllocatePack"))
	require.Equal(m.t, count, p.Len(), m.at("the pack's payloads"))
	require.Equal(m.t, psize, p.Size(), m.at("the pack's payload size"))
	rec := m.newRec(p.Record().Len(), mmPack, omHeld)
	rec.count, rec.psize = count, psize
	v := m.newHeld(p.Record(), rec, hi)
	m.what += fmt.Sprintf(" -> #%d (%d bytes)", v.rec.id, rec.size)
	return true
}

func (m *mmModel) allocTyped() bool {
	hi := m.rng.IntN(4)
	m.logf("Typed.Allocate on h%d", hi)
	x, r, err := m.typ[hi].Allocate()
	require.NoError(m.t, err, m.at("Typed.Allocate"))
	require.Equal(m.t, unsafe.Pointer(x), unsafe.Pointer(unsafe.SliceData(r.Bytes())), m.at("the value is the record's bytes"))
	v := m.newHeld(r, m.newRec(mmTSize, mmTyped, omHeld), hi)
	m.what += fmt.Sprintf(" -> #%d", v.rec.id)
	return true
}

func (m *mmModel) allocSlice() bool {
	hi, n := m.rng.IntN(4), 1+m.rng.IntN(30)
	m.logf("Typed.AllocateSlice(%d) on h%d", n, hi)
	xs, p, err := m.typ[hi].AllocateSlice(n)
	require.NoError(m.t, err, m.at("AllocateSlice"))
	require.Len(m.t, xs, n, m.at("AllocateSlice"))
	rec := m.newRec(p.Record().Len(), mmSlice, omHeld)
	rec.count, rec.psize = n, mmTSize
	v := m.newHeld(p.Record(), rec, hi)
	require.Equal(m.t, unsafe.Pointer(unsafe.SliceData(p.Record().Bytes())), unsafe.Pointer(&xs[0]), m.at("the slice is the pack's payloads"))
	require.Equal(m.t, rec.stamp^uint64(n-1), xs[n-1].S, m.at("the slice is the pack's payloads"))
	m.what += fmt.Sprintf(" -> #%d (%d bytes)", v.rec.id, rec.size)
	return true
}

func (m *mmModel) restamp() bool {
	rec := m.pickHeld()
	if rec == nil {
		return false
	}
	rec.stamp = m.nextStamp()
	m.logf("restamp #%d", rec.id)
	m.write(rec, rec.cur.r)
	return true
}

// --- the MPSC channel's ends

func (m *mmModel) attached() int {
	n := 0
	for _, p := range m.mp.prods {
		if p != nil {
			n++
		}
	}
	return n
}

// eof: the MPSC consumer reads io.EOF on an empty ring.
func (m *mmModel) eof() bool {
	return m.mp.exists && m.mp.ever && m.attached() == 0 && m.mp.queued == 0
}

// made: an end was attached; the channel is made if it is not in the
// registry.
func (m *mmModel) made() {
	if !m.mp.exists {
		m.mp.exists, m.mp.ever, m.mp.consClosed = true, false, false
		m.hits["mpsc channel made"]++
	}
}

// released: an end was closed; the channel goes if no end is held, its
// consumer closed, and nothing is queued.
func (m *mmModel) released() {
	if m.mp.cons == nil && m.mp.consClosed && m.attached() == 0 && m.mp.queued == 0 {
		m.mp.exists = false
		m.hits["mpsc channel removed"]++
	}
}

func (m *mmModel) openProd() *mmProd {
	var ps []*mmProd
	for _, p := range m.mp.prods {
		if p != nil {
			ps = append(ps, p)
		}
	}
	if len(ps) == 0 {
		return nil
	}
	return ps[m.rng.IntN(len(ps))]
}

// prodAttachOn attaches a producer on handle hi into slot i (free).
func (m *mmModel) prodAttachOn(i, hi int) {
	p, err := m.hs[hi].MPSCProducer(mmMPSC, m.opts...)
	require.NoError(m.t, err, m.at("MPSCProducer with a slot free"))
	m.made()
	m.mp.ever = true
	m.mp.nprod++
	f := &mmFifo{name: fmt.Sprintf("mpsc producer %d (h%d)", m.mp.nprod, hi)}
	m.mp.prods[i] = &mmProd{p: p, hi: hi, f: f}
	m.mp.fifos = append(m.mp.fifos, f)
}

// prodAttach attaches a producer if a slot is free; with all three held,
// a fourth is ErrBusy.
func (m *mmModel) prodAttach() bool {
	var free []int
	for i, p := range m.mp.prods {
		if p == nil {
			free = append(free, i)
		}
	}
	if len(free) == 0 {
		hi := m.rng.IntN(4)
		m.logf("MPSCProducer on h%d with every slot held", hi)
		_, err := m.hs[hi].MPSCProducer(mmMPSC, m.opts...)
		require.ErrorIs(m.t, err, ErrBusy, m.at("a fourth producer"))
		m.hits["producer busy"]++
		return true
	}
	i := free[m.rng.IntN(len(free))]
	hi := i
	if m.rng.IntN(4) == 0 {
		hi = m.rng.IntN(4) // a handle may hold two producers
	}
	m.logf("MPSCProducer on h%d (exists %v, %d attached, %d queued)", hi, m.mp.exists, m.attached(), m.mp.queued)
	m.prodAttachOn(i, hi)
	return true
}

// attachOdd attaches ends in ways the docs answer: an end of the MPSC
// channel with another capacity (ErrSizeMismatch), with no options (any
// size will do), or as a record channel's (ErrWrongType), and a record
// channel's as an MPSC channel's (ErrWrongType); a fourth producer asking
// for more producer slots than the channel was made with (ErrBusy: the
// option is for a channel to create).
func (m *mmModel) attachOdd() bool {
	t := m.t
	if !m.mp.exists {
		return false
	}
	hi := m.rng.IntN(4)
	switch x := m.rng.IntN(5); {
	case x == 0:
		m.logf("MPSCProducer on h%d with capacity %d", hi, 2*m.mp.cap)
		_, err := m.hs[hi].MPSCProducer(mmMPSC, WithCapacity(2*m.mp.cap), WithProducers(3))
		require.ErrorIs(t, err, ErrSizeMismatch, m.at("an MPSC producer of another capacity"))
		m.logf("MPSCConsumer on h%d with capacity %d", hi, 4*m.mp.cap)
		_, err = m.hs[hi].MPSCConsumer(mmMPSC, WithCapacity(4*m.mp.cap))
		require.ErrorIs(t, err, ErrSizeMismatch, m.at("an MPSC consumer of another capacity"))
	case x == 1:
		m.logf("Producer and Consumer of the MPSC channel on h%d", hi)
		_, err := m.hs[hi].Producer(mmMPSC)
		require.ErrorIs(t, err, ErrWrongType, m.at("a record channel's producer of an MPSC channel"))
		_, err = m.hs[hi].Consumer(mmMPSC)
		require.ErrorIs(t, err, ErrWrongType, m.at("a record channel's consumer of an MPSC channel"))
		m.logf("MPSCProducer and MPSCConsumer of record channel %d on h%d", mmRC1, hi)
		_, err = m.hs[hi].MPSCProducer(mmRC1)
		require.ErrorIs(t, err, ErrWrongType, m.at("an MPSC producer of a record channel"))
		_, err = m.hs[hi].MPSCConsumer(mmRC2)
		require.ErrorIs(t, err, ErrWrongType, m.at("an MPSC consumer of a record channel"))
	case x == 2 && m.attached() == 3:
		m.logf("MPSCProducer on h%d asking for 64 slots, with the 3 held", hi)
		_, err := m.hs[hi].MPSCProducer(mmMPSC, WithProducers(64))
		require.ErrorIs(t, err, ErrBusy, m.at("a fourth producer"))
	case x == 3 && m.attached() < 3:
		// No options: the channel as it is.
		i := slices.Index(m.mp.prods[:], nil)
		m.logf("MPSCProducer on h%d with no options", hi)
		p, err := m.hs[hi].MPSCProducer(mmMPSC)
		require.NoError(t, err, m.at("an MPSC producer of the channel as it is"))
		m.mp.nprod++
		f := &mmFifo{name: fmt.Sprintf("mpsc producer %d (h%d)", m.mp.nprod, hi)}
		m.mp.prods[i] = &mmProd{p: p, hi: hi, f: f}
		m.mp.fifos = append(m.mp.fifos, f)
		m.mp.ever = true
	default:
		return false
	}
	m.checkLive()
	return true
}

// prodClose closes an attached producer; its queued records stay.
func (m *mmModel) prodClose() bool {
	pr := m.openProd()
	if pr == nil {
		return false
	}
	i := slices.Index(m.mp.prods[:], pr)
	m.logf("close %s (%d attached, %d queued)", pr.f.name, m.attached(), m.mp.queued)
	require.NoError(m.t, pr.p.Close(), m.at("MPSCProducer.Close"))
	require.NoError(m.t, pr.p.Close(), m.at("a second Close"))
	m.mp.prods[i] = nil
	m.mp.oldP = pr.p
	m.mp.fifos = slices.DeleteFunc(m.mp.fifos, func(f *mmFifo) bool { return len(f.q) == 0 && f == pr.f })
	m.released()
	if m.attached() == 0 {
		m.hits["last producer closed"]++
	}
	// A closed producer sends nothing: the record stays the sender's.
	if rec := m.pickHeld(); rec != nil {
		m.logf("TrySend #%d on the closed %s", rec.id, pr.f.name)
		err := pr.p.TrySend(rec.cur.r)
		require.ErrorIs(m.t, err, ErrClosed, m.at("send on a closed producer"))
		require.NotErrorIs(m.t, err, ErrNotAllocated, m.at("send on a closed producer"))
		m.checkLive()
	}
	return true
}

// consAttach attaches the consumer if it is closed (and puts it in the
// Select, mostly, in place of the closed one); a second is ErrBusy.
func (m *mmModel) consAttach() bool {
	t := m.t
	if m.mp.cons != nil {
		m.logf("MPSCConsumer with the consumer attached")
		_, err := m.hs[m.rng.IntN(4)].MPSCConsumer(mmMPSC, m.opts...)
		require.ErrorIs(t, err, ErrBusy, m.at("a second consumer"))
		m.hits["consumer busy"]++
		return true
	}
	m.logf("MPSCConsumer (exists %v, %d attached, %d queued)", m.mp.exists, m.attached(), m.mp.queued)
	hi := mmCons
	if m.sel != nil && m.rng.IntN(4) == 0 {
		hi = m.rng.IntN(3) // a Select takes ends of other handles of its buffer
	}
	c, err := m.hs[hi].MPSCConsumer(mmMPSC, m.opts...)
	require.NoError(t, err, m.at("MPSCConsumer on h%d", hi))
	if m.mp.old != nil {
		m.hits["consumer reattached"]++
	}
	m.made()
	m.mp.cons, m.mp.ch, m.mp.consClosed = c, hi, false
	if m.sel == nil {
		return true
	}
	if m.mp.old != nil && slices.Contains(m.cases, Receiver(m.mp.old)) && m.rng.IntN(4) != 0 {
		m.logf("Select.Remove of the closed consumer")
		m.selRemove(m.mp.old)
	}
	if m.rng.IntN(4) != 0 {
		m.logf("Select.Add of the new consumer")
		require.NoError(t, m.sel.Add(c), m.at("Select.Add"))
		m.cases = append(m.cases, c)
		require.Equal(t, len(m.cases), m.sel.Len(), m.at("Select.Len"))
	}
	return true
}

// consClose closes the consumer: out of the Select first, mostly.
func (m *mmModel) consClose() bool {
	c := m.mp.cons
	if c == nil {
		return false
	}
	in := slices.Contains(m.cases, Receiver(c))
	if in && m.rng.IntN(4) != 0 {
		m.logf("Select.Remove of the consumer")
		m.selRemove(c)
		in = false
	}
	m.logf("close the consumer (in the Select %v, %d attached, %d queued)", in, m.attached(), m.mp.queued)
	require.NoError(m.t, c.Close(), m.at("MPSCConsumer.Close"))
	require.NoError(m.t, c.Close(), m.at("a second Close"))
	m.mp.cons, m.mp.old, m.mp.consClosed = nil, c, true
	m.released()
	return true
}

func (m *mmModel) selRemove(r Receiver) {
	i := slices.Index(m.cases, r)
	require.GreaterOrEqual(m.t, i, 0)
	m.sel.Remove(r)
	m.cases = slices.Delete(m.cases, i, i+1)
	if m.next > i {
		m.next--
	}
	require.Equal(m.t, len(m.cases), m.sel.Len(), m.at("Select.Len"))
}

// mpscSend sends rec (held) on an attached producer, or on the one
// closed last (ErrClosed); on a full ring TrySend is ErrWouldBlock and
// Send with a dead context fails, and the record stays the sender's.
func (m *mmModel) mpscSend(rec *mmRec) bool {
	t := m.t
	pr := m.openProd()
	if pr == nil || (m.mp.oldP != nil && m.rng.IntN(40) == 0) {
		if m.mp.oldP == nil {
			return false
		}
		m.logf("Send #%d on a closed producer", rec.id)
		require.ErrorIs(t, m.mp.oldP.Send(m.ctx, rec.cur.r), ErrClosed, m.at("send on a closed producer"))
		return true
	}
	full := m.mp.queued == m.mp.cap
	var err error
	if m.rng.IntN(2) == 0 {
		m.logf("MPSC Send #%d on %s (%d queued)", rec.id, pr.f.name, m.mp.queued)
		ctx := m.ctx
		if full {
			ctx = m.dead
		}
		err = pr.p.Send(ctx, rec.cur.r)
		if full {
			require.ErrorIs(t, err, context.DeadlineExceeded, m.at("Send on a full ring"))
		}
	} else {
		m.logf("MPSC TrySend #%d on %s (%d queued)", rec.id, pr.f.name, m.mp.queued)
		err = pr.p.TrySend(rec.cur.r)
		if full {
			require.ErrorIs(t, err, ErrWouldBlock, m.at("TrySend on a full ring"))
		}
	}
	if full {
		m.hits["mpsc full"]++
		return true
	}
	require.NoError(t, err, m.at("send of a held record"))
	m.queue(rec, pr.f)
	m.mp.queued++
	if !slices.Contains(m.mp.fifos, pr.f) {
		m.mp.fifos = append(m.mp.fifos, pr.f)
	}
	return true
}

func (m *mmModel) mpscSendOne() bool {
	rec := m.pickHeld()
	if rec == nil {
		return false
	}
	return m.mpscSend(rec)
}

// mpscGot checks r, which the MPSC consumer delivered: the record at the
// head of one producer's queue.
func (m *mmModel) mpscGot(r Record) *mmVal {
	t := m.t
	for _, f := range m.mp.fifos {
		if len(f.q) > 0 && f.q[0].known && f.q[0].off == r.off() {
			m.mp.queued--
			v := m.received(f, r)
			if len(f.q) == 0 && !m.prodOf(f) {
				m.mp.fifos = slices.DeleteFunc(m.mp.fifos, func(g *mmFifo) bool { return g == f })
			}
			return v
		}
	}
	where := "in no producer's queue"
	for _, f := range m.mp.fifos {
		for j, rec := range f.q {
			if rec.off == r.off() {
				where = fmt.Sprintf("#%d, %d in %s's queue: not at its head", rec.id, j, f.name)
			}
		}
	}
	t.Fatalf("%s", m.at("the MPSC consumer delivered the record at %#x (%d bytes), %s", uint64(r.off()), r.Len(), where))
	return nil
}

// prodOf reports whether f is an attached producer's queue.
func (m *mmModel) prodOf(f *mmFifo) bool {
	for _, p := range m.mp.prods {
		if p != nil && p.f == f {
			return true
		}
	}
	return false
}

// mpscReceive receives on the MPSC consumer by Receive or TryReceive: a
// record, io.EOF, ErrWouldBlock (or a dead context's error); ErrClosed
// on a closed consumer.
func (m *mmModel) mpscReceive() bool {
	t := m.t
	c := m.mp.cons
	try := m.rng.IntN(2) == 0
	if c == nil {
		if m.mp.old == nil {
			return false
		}
		m.logf("receive on the closed consumer")
		var err error
		if try {
			_, err = m.mp.old.TryReceive()
		} else {
			_, err = m.mp.old.Receive(m.ctx)
		}
		require.ErrorIs(t, err, ErrClosed, m.at("receive on a closed consumer"))
		return true
	}
	ctx := m.ctx
	if m.mp.queued == 0 && !m.eof() {
		ctx = m.dead
	}
	m.logf("MPSC receive (try %v; %d queued, %d attached, eof %v)", try, m.mp.queued, m.attached(), m.eof())
	var r Record
	var err error
	if try {
		r, err = c.TryReceive()
	} else {
		r, err = c.Receive(ctx)
	}
	switch {
	case m.mp.queued > 0:
		require.NoError(t, err, m.at("MPSC receive with records queued"))
		m.recvOne, m.recvH = m.mpscGot(r), m.mp.ch
		m.thenFree()
	case m.eof():
		require.ErrorIs(t, err, io.EOF, m.at("MPSC receive: no producer, all received"))
		require.True(t, r.IsZero())
		m.hits["mpsc eof"]++
	case try:
		require.ErrorIs(t, err, ErrWouldBlock, m.at("MPSC TryReceive on an empty ring"))
		require.True(t, r.IsZero())
	default:
		require.ErrorIs(t, err, context.DeadlineExceeded, m.at("MPSC Receive on an empty ring"))
		require.True(t, r.IsZero())
	}
	return true
}

// --- record channels

func (m *mmModel) rcOf() *mmRC { return m.rc[m.rng.IntN(2)] }

// rcSend sends rec (held) on c by Send or TrySend (see omModel.send).
func (m *mmModel) rcSend(rec *mmRec, c *mmRC) bool {
	t := m.t
	full := c.room() == 0
	var err error
	if m.rng.IntN(2) == 0 {
		ctx := m.ctx
		if full {
			ctx = m.dead
		}
		m.logf("Send #%d on %d (full %v)", rec.id, c.id, full)
		err = c.p.Send(ctx, rec.cur.r)
		if full {
			require.ErrorIs(t, err, context.DeadlineExceeded, m.at("Send on a full ring"))
			return true
		}
	} else {
		m.logf("TrySend #%d on %d (full %v)", rec.id, c.id, full)
		err = c.p.TrySend(rec.cur.r)
		if full {
			require.ErrorIs(t, err, ErrWouldBlock, m.at("TrySend on a full ring"))
			return true
		}
	}
	require.NoError(t, err, m.at("send of a held record"))
	m.queue(rec, c.f)
	return true
}

func (m *mmModel) rcSendOne() bool {
	rec := m.pickHeld()
	if rec == nil {
		return false
	}
	return m.rcSend(rec, m.rcOf())
}

func (m *mmModel) rcSendBatch() bool {
	t := m.t
	recs := m.pickHelds(1 + m.rng.IntN(6))
	if len(recs) == 0 {
		return false
	}
	c := m.rcOf()
	room := c.room()
	m.logf("SendBatch %s on %d (room %d)", mmIDs(recs), c.id, room)
	if room >= len(recs) {
		k, err := c.p.SendBatch(m.ctx, mmCur(recs))
		require.NoError(t, err, m.at("SendBatch"))
		require.Equal(t, len(recs), k, m.at("SendBatch"))
	} else {
		k, err := c.p.SendBatch(m.dead, mmCur(recs))
		require.ErrorIs(t, err, context.DeadlineExceeded, m.at("SendBatch beyond the room"))
		require.Equal(t, room, k, m.at("SendBatch beyond the room sends what fits"))
		recs = recs[:k]
	}
	for _, rec := range recs {
		m.queue(rec, c.f)
	}
	return true
}

// rcSendEachOf sends values by SendEachOf; its fill now and then
// allocates or frees on the producer's handle or sends on the MPSC
// channel (other channels: its doc allows it).
func (m *mmModel) rcSendEachOf() bool {
	t := m.t
	c := m.rcOf()
	n, room := 1+m.rng.IntN(6), c.room()
	ctx := m.ctx
	if room < n {
		ctx = m.dead
	}
	m.logf("SendEachOf %d on %d (room %d)", n, c.id, room)
	what := m.what
	var stamps []uint64
	var bad []string
	sent, err := SendEachOf(ctx, c.p, n, func(i int, v *mmT) {
		if i != len(stamps) {
			bad = append(bad, fmt.Sprintf("fill(%d) after %d fills", i, len(stamps)))
		}
		s := m.nextStamp()
		v.S, v.C = s, ^s
		stamps = append(stamps, s)
		if m.rng.IntN(3) == 0 {
			m.aside(c.ph, false, c)
		}
	})
	m.what = what
	require.Empty(t, bad, m.at("SendEachOf's fills"))
	if room >= n {
		require.NoError(t, err, m.at("SendEachOf"))
		require.Equal(t, n, sent, m.at("SendEachOf"))
	} else {
		require.ErrorIs(t, err, context.DeadlineExceeded, m.at("SendEachOf beyond the room"))
		require.Equal(t, room, sent, m.at("SendEachOf beyond the room sends what fits"))
	}
	require.Len(t, stamps, sent, m.at("SendEachOf fills exactly the values the ring has room for"))
	for i := range sent {
		rec := m.newRec(mmTSize, mmTyped, omQueued)
		rec.stamp, rec.alloc, rec.in = stamps[i], c.ph, c.f
		c.f.q = append(c.f.q, rec)
	}
	return true
}

// aside is an operation inside a fill or a use of a call on record
// channel in, which may use handle hi (allocate, free) and other channels:
// allocate on hi, free on hi, send on the MPSC channel, (recv) receive from
// it, close or attach its ends, receive through the Select if in is not in
// its set.
func (m *mmModel) aside(hi int, recv bool, in *mmRC) {
	t := m.t
	m.depth++
	defer func() { m.depth-- }()
	m.hits["aside"]++
	if !recv && m.rng.IntN(4) == 0 {
		// Inside a fill every Record the model has is what it says
		// (inside a use, the call's batch is freed as it goes:
		// misuseInUse).
		m.misuseOne()
		return
	}
	switch x := m.rng.IntN(6); {
	case x == 4:
		// Another channel's ends may close and attach meanwhile.
		m.hits["aside, ends"]++
		switch m.rng.IntN(4) {
		case 0:
			m.prodClose()
		case 1:
			m.prodAttach()
		case 2:
			m.consClose()
		default:
			m.consAttach()
		}
	case x == 5:
		if m.sel != nil && !slices.Contains(m.cases, Receiver(in.c)) {
			m.selReceive()
		}
	case x == 0:
		size := []int{mmTSize, 8, 64, m.maxSmallPayload}[m.rng.IntN(4)]
		m.logf("Allocate(%d) on h%d", size, hi)
		r, err := m.hs[hi].Allocate(size)
		require.NoError(t, err, m.at("Allocate"))
		v := m.newHeld(r, m.newRec(size, mmPlain, omHeld), hi)
		m.what += fmt.Sprintf(" -> #%d", v.rec.id)
	case x == 1:
		if rec := m.pickHeld(); rec != nil {
			m.logf("Free #%d on h%d", rec.id, hi)
			require.NoError(t, m.hs[hi].Free(rec.cur.r), m.at("free of a held record"))
			m.freed(rec)
		}
	case x == 2 || !recv:
		if rec := m.pickHeld(); rec != nil {
			m.mpscSend(rec)
		}
	default:
		m.mpscReceive()
	}
}

// thenFree frees the record just received, now and then, through the
// handle whose consumer received it (which keeps its slot for that) or
// another, as a consumer that is done with it does.
func (m *mmModel) thenFree() {
	v := m.recvOne
	if m.rng.IntN(4) != 0 || v == nil || v.rec.cur != v {
		return
	}
	hi := m.recvH
	if m.rng.IntN(4) == 0 {
		hi = m.rng.IntN(4)
	}
	m.logf("then free #%d on h%d", v.rec.id, hi)
	var err error
	if m.rng.IntN(3) == 0 {
		err = m.hs[hi].FreeBatch([]Record{v.r})
	} else {
		err = m.hs[hi].Free(v.r)
	}
	require.NoError(m.t, err, m.at("free of the record just received"))
	m.freed(v.rec)
}

// rcGot: r came off c.
func (m *mmModel) rcGot(c *mmRC, r Record) *mmVal { return m.received(c.f, r) }

func (m *mmModel) rcReceive() bool {
	c := m.rcOf()
	if len(c.f.q) == 0 {
		m.logf("TryReceive on empty %d", c.id)
		_, err := c.c.TryReceive()
		require.ErrorIs(m.t, err, ErrWouldBlock, m.at("TryReceive on an empty channel"))
		return true
	}
	var r Record
	var err error
	if m.rng.IntN(2) == 0 {
		m.logf("Receive on %d (%d queued)", c.id, len(c.f.q))
		r, err = c.c.Receive(m.ctx)
	} else {
		m.logf("TryReceive on %d (%d queued)", c.id, len(c.f.q))
		r, err = c.c.TryReceive()
	}
	require.NoError(m.t, err, m.at("receive with a record queued"))
	m.recvOne, m.recvH = m.rcGot(c, r), mmCons
	m.thenFree()
	return true
}

func (m *mmModel) rcReceiveBatch() bool {
	t := m.t
	c := m.rcOf()
	if len(c.f.q) == 0 {
		return false
	}
	n := 1 + m.rng.IntN(8)
	m.logf("ReceiveBatch(%d) on %d (%d queued)", n, c.id, len(c.f.q))
	want := min(n, len(c.f.q))
	rs := make([]Record, n)
	k, err := c.c.ReceiveBatch(m.ctx, rs)
	require.NoError(t, err, m.at("ReceiveBatch"))
	require.Equal(t, want, k, m.at("ReceiveBatch takes what is queued"))
	got := make([]*mmVal, k)
	for i := range k {
		got[i] = m.rcGot(c, rs[i])
	}
	m.recvBatch = got
	return true
}

// rcReceiveEachOf receives by ReceiveEachOf: the records of mmT's size go
// to use, the others are freed unread and reported (ErrSizeMismatch); all
// are freed. use now and then allocates or frees on h3 or uses the MPSC
// channel.
func (m *mmModel) rcReceiveEachOf() bool {
	t := m.t
	c := m.rcOf()
	if len(c.f.q) == 0 {
		return false
	}
	limit := 1 + m.rng.IntN(8)
	want := min(limit, len(c.f.q))
	batch := slices.Clone(c.f.q[:want])
	odd := 0
	for _, rec := range batch {
		if rec.size != mmTSize {
			odd++
		}
	}
	m.logf("ReceiveEachOf(%d) on %d: %s (%d not one T)", limit, c.id, mmIDs(batch), odd)
	what := m.what
	type seen struct {
		s, c uint64
		at   uintptr
	}
	var got []seen
	n, err := ReceiveEachOf(m.ctx, c.c, limit, func(v *mmT) {
		got = append(got, seen{v.S, v.C, uintptr(unsafe.Pointer(v))})
		// batch[:at] went to use (or were not one T) and were freed;
		// batch[at] is in use.
		at, k := 0, 0
		for i, rec := range batch {
			if rec.size == mmTSize {
				if k == len(got)-1 {
					at = i
					break
				}
				k++
			}
		}
		switch x := m.rng.IntN(6); {
		case x < 2:
			m.aside(mmCons, true, c)
		case x < 4:
			m.misuseInUse(batch[:at+1])
		}
	})
	m.what = what
	if odd > 0 {
		require.ErrorIs(t, err, ErrSizeMismatch, m.at("ReceiveEachOf with records not one T"))
		m.hits["receive each odd"]++
	} else {
		require.NoError(t, err, m.at("ReceiveEachOf"))
	}
	require.Equal(t, want-odd, n, m.at("ReceiveEachOf's count"))
	require.Len(t, got, n, m.at("ReceiveEachOf's uses"))
	j := 0
	for _, rec := range batch {
		require.Same(t, rec, c.f.q[0], m.at("channel %d's queue changed under ReceiveEachOf", c.id))
		c.f.q = c.f.q[1:]
		if rec.size == mmTSize {
			g := got[j]
			j++
			if rec.known {
				require.Equal(t, uintptr(unsafe.Pointer(unsafe.SliceData(m.b.recs.b)))+uintptr(rec.off), g.at, m.at("record #%d's place", rec.id))
			}
			if rec.kind == mmPlain || rec.kind == mmTyped {
				require.True(t, g.s == rec.stamp && g.c == ^rec.stamp, m.at("ReceiveEachOf gave %#x/%#x, want record #%d's %#x", g.s, ^g.c, rec.id, rec.stamp))
			}
		}
		m.freed(rec)
	}
	return true
}

// misuseInUse gives a Record the test has of a record of done, the
// records a ReceiveEachOf delivered (and freed) so far in this call and
// the one its use has now, to a free or a send, from inside that use: all
// are refused (the records are the consumer's, then freed), and nothing
// is freed twice.
func (m *mmModel) misuseInUse(done []*mmRec) {
	rec := done[m.rng.IntN(len(done))]
	if len(rec.vals) == 0 {
		return // made by SendEachOf: no Record of it
	}
	v := rec.vals[m.rng.IntN(len(rec.vals))]
	m.depth++
	defer func() { m.depth-- }()
	hi := m.rng.IntN(4)
	var err error
	var what string
	switch m.rng.IntN(5) {
	case 0:
		what = fmt.Sprintf("Free on h%d", hi)
		err = m.hs[hi].Free(v.r)
	case 1:
		what = "Buffer.Free"
		err = m.b.Free(v.r)
	case 2:
		what = fmt.Sprintf("FreeBatch on h%d", hi)
		err = m.hs[hi].FreeBatch([]Record{v.r})
	case 3:
		c := m.rcOf()
		what = fmt.Sprintf("TrySend on %d", c.id)
		err = c.p.TrySend(v.r)
	default:
		pr := m.openProd()
		if pr == nil {
			return
		}
		what = "MPSC TrySend on " + pr.f.name
		err = pr.p.TrySend(v.r)
	}
	current := rec == done[len(done)-1]
	m.logf("%s, inside ReceiveEachOf's use, of #%d's Record of %d sends (delivered %s)", what, rec.id, v.sends, map[bool]string{true: "now", false: "and freed"}[current])
	m.hits["misuse in use"]++
	require.Error(m.t, err, m.at("accepted"))
	require.True(m.t, errors.Is(err, ErrNotAllocated) || errors.Is(err, ErrDoubleFree), m.at("%v, want ErrNotAllocated or ErrDoubleFree", err))
}

// --- Select

// endReady reports whether r, an end in the Select, has something for
// Receive: a record, the MPSC channel's end (io.EOF), or (closed) its
// ErrClosed.
func (m *mmModel) endReady(r Receiver) bool {
	switch r {
	case m.rc[0].c:
		return len(m.rc[0].f.q) > 0
	case m.rc[1].c:
		return len(m.rc[1].f.q) > 0
	}
	if c, ok := r.(*MPSCConsumer); ok && c == m.mp.cons {
		return m.mp.queued > 0 || m.eof()
	}
	return true // a closed end
}

// selReceive receives through the Select: the end that has something,
// first from the one after the end served last; with none, a dead
// context's error.
func (m *mmModel) selReceive() bool {
	t := m.t
	if m.sel == nil {
		return false
	}
	n := len(m.cases)
	if n == 0 {
		m.logf("Select.Receive with no ends")
		_, _, err := m.sel.Receive(m.ctx)
		require.ErrorIs(t, err, ErrInvalidArgument, m.at("Select.Receive with no ends"))
		return true
	}
	idx := -1
	for i := range n {
		if j := (m.next + i) % n; m.endReady(m.cases[j]) {
			idx = j
			break
		}
	}
	if idx < 0 {
		m.logf("Select.Receive, nothing ready (%d ends)", n)
		rcv, r, err := m.sel.Receive(m.dead)
		require.ErrorIs(t, err, context.DeadlineExceeded, m.at("Select.Receive with nothing ready"))
		require.Nil(t, rcv, m.at("Select.Receive with nothing ready"))
		require.True(t, r.IsZero())
		return true
	}
	want := m.cases[idx]
	m.logf("Select.Receive (%d ends, %d ready, want end %d: channel %d)", n, m.readyCount(), idx, want.ID())
	rcv, r, err := m.sel.Receive(m.ctx)
	if rcv != want {
		got := -1
		if rcv != nil {
			got = slices.Index(m.cases, rcv)
		}
		t.Fatalf("%s", m.at("Select.Receive served end %d (%v), want end %d (ends ready: %v); err %v", got, rcv, idx, m.readyList(), err))
	}
	m.next = idx + 1
	switch want {
	case m.rc[0].c, m.rc[1].c:
		c := m.rc[0]
		if want == m.rc[1].c {
			c = m.rc[1]
		}
		require.NoError(t, err, m.at("Select.Receive of a record channel's record"))
		m.recvOne, m.recvH = m.rcGot(c, r), mmCons
		m.thenFree()
		m.hits["select record"]++
		return true
	}
	if c, ok := want.(*MPSCConsumer); ok && c == m.mp.cons {
		if m.mp.queued > 0 {
			require.NoError(t, err, m.at("Select.Receive of an MPSC record"))
			m.recvOne, m.recvH = m.mpscGot(r), m.mp.ch
			m.thenFree()
			m.hits["select mpsc"]++
			return true
		}
		require.ErrorIs(t, err, io.EOF, m.at("Select.Receive of a finished MPSC channel"))
		require.True(t, r.IsZero())
		m.hits["select eof"]++
		return true
	}
	require.ErrorIs(t, err, ErrClosed, m.at("Select.Receive of a closed end"))
	require.True(t, r.IsZero())
	m.hits["select closed end"]++
	return true
}

func (m *mmModel) readyCount() int {
	n := 0
	for _, c := range m.cases {
		if m.endReady(c) {
			n++
		}
	}
	return n
}

func (m *mmModel) readyList() []int {
	var l []int
	for i, c := range m.cases {
		if m.endReady(c) {
			l = append(l, i)
		}
	}
	return l
}

// openEnds are the receiving ends that are open.
func (m *mmModel) openEnds() []Receiver {
	rs := []Receiver{m.rc[0].c, m.rc[1].c}
	if m.mp.cons != nil {
		rs = append(rs, m.mp.cons)
	}
	return rs
}

// selMaint changes the Select's set: Remove an end, Add one (ErrInvalidArgument
// for one in the set already, ErrClosed for a closed one, ErrBusy for
// one in another Select), or close it and make a new one over some ends.
func (m *mmModel) selMaint() bool {
	t := m.t
	switch x := m.rng.IntN(10); {
	case x < 3:
		if len(m.cases) == 0 {
			return false
		}
		r := m.cases[m.rng.IntN(len(m.cases))]
		m.logf("Select.Remove channel %d", r.ID())
		m.selRemove(r)
	case x < 6:
		var out []Receiver
		for _, r := range m.openEnds() {
			if !slices.Contains(m.cases, r) {
				out = append(out, r)
			}
		}
		if len(out) == 0 {
			return false
		}
		r := out[m.rng.IntN(len(out))]
		m.logf("Select.Add channel %d", r.ID())
		require.NoError(t, m.sel.Add(r), m.at("Select.Add"))
		m.cases = append(m.cases, r)
		require.Equal(t, len(m.cases), m.sel.Len(), m.at("Select.Len"))
	case x < 7:
		if len(m.cases) == 0 {
			return false
		}
		r := m.cases[m.rng.IntN(len(m.cases))]
		m.logf("Select.Add channel %d, in the set already", r.ID())
		require.ErrorIs(t, m.sel.Add(r), ErrInvalidArgument, m.at("Select.Add of an end in the set"))
	case x < 8:
		if m.mp.old == nil || slices.Contains(m.cases, Receiver(m.mp.old)) {
			return false
		}
		m.logf("Select.Add of the closed consumer")
		require.ErrorIs(t, m.sel.Add(m.mp.old), ErrClosed, m.at("Select.Add of a closed end"))
	case x < 9:
		var in []Receiver
		for _, r := range m.openEnds() {
			if slices.Contains(m.cases, r) {
				in = append(in, r)
			}
		}
		if len(in) == 0 {
			return false
		}
		r := in[m.rng.IntN(len(in))]
		m.logf("Select.Add of channel %d to a second Select", r.ID())
		s2, err := m.hs[m.rng.IntN(4)].NewSelect()
		require.NoError(t, err, m.at("NewSelect"))
		require.ErrorIs(t, s2.Add(r), ErrBusy, m.at("Select.Add of an end in another Select"))
		require.NoError(t, s2.Close())
	default:
		m.logf("Select.Close, and a new Select")
		require.NoError(t, m.sel.Close(), m.at("Select.Close"))
		_, _, err := m.sel.Receive(m.ctx)
		require.ErrorIs(t, err, ErrClosed, m.at("Receive on a closed Select"))
		require.ErrorIs(t, m.sel.Add(m.rc[0].c), ErrClosed, m.at("Add to a closed Select"))
		ends := m.openEnds()
		m.rng.Shuffle(len(ends), func(i, j int) { ends[i], ends[j] = ends[j], ends[i] })
		ends = ends[:m.rng.IntN(len(ends)+1)]
		s, err := m.hs[mmCons].NewSelect(ends...)
		require.NoError(t, err, m.at("NewSelect"))
		m.sel, m.cases, m.next = s, ends, 0
		require.Equal(t, len(ends), s.Len())
	}
	return true
}

// --- receive, then send on

func (m *mmModel) forward() bool {
	var v *mmVal
	switch x := m.rng.IntN(3); {
	case x == 0 && m.mp.cons != nil && m.mp.queued > 0:
		m.mpscReceive()
		v = m.recvOne
	case x == 1 && m.sel != nil && m.readyCount() > 0:
		before := m.recvOne
		m.selReceive()
		if m.recvOne != before {
			v = m.recvOne
		}
	default:
		c := m.rcOf()
		if len(c.f.q) == 0 {
			return false
		}
		m.rcReceive()
		v = m.recvOne
	}
	if v == nil || m.status(v) != stCurrent {
		return true
	}
	if m.rng.IntN(2) == 0 {
		m.mpscSend(v.rec)
	} else {
		m.rcSend(v.rec, m.rcOf())
	}
	return true
}

// --- frees

func (m *mmModel) freeOne() bool {
	rec := m.pickHeld()
	if rec == nil {
		return false
	}
	var err error
	if hi := m.rng.IntN(5); hi < 4 {
		m.logf("Free #%d on h%d", rec.id, hi)
		err = m.hs[hi].Free(rec.cur.r)
	} else {
		m.logf("Buffer.Free #%d", rec.id)
		err = m.b.Free(rec.cur.r)
	}
	require.NoError(m.t, err, m.at("free of a held record"))
	m.freed(rec)
	return true
}

func (m *mmModel) freeBatch() bool {
	recs := m.pickHelds(1 + m.rng.IntN(8))
	if len(recs) == 0 {
		return false
	}
	if vs := m.recvBatch; len(vs) > 0 && m.rng.IntN(3) == 0 {
		// The batch h3 received last, if it is all still held.
		all := make([]*mmRec, len(vs))
		for i, v := range vs {
			if v.rec.cur != v {
				all = nil
				break
			}
			all[i] = v.rec
		}
		if all != nil {
			recs = all
		}
	}
	hi := m.rng.IntN(4)
	m.logf("FreeBatch %s on h%d", mmIDs(recs), hi)
	require.NoError(m.t, m.hs[hi].FreeBatch(mmCur(recs)), m.at("FreeBatch of held records"))
	for _, rec := range recs {
		m.freed(rec)
	}
	return true
}

// --- misuse

// sendCtx is the context of a send that must be refused: a dead one if
// the ring is full (a send wrongly let through fails instead of waiting).
func (m *mmModel) sendCtx(full bool) context.Context {
	if full {
		return m.dead
	}
	return m.ctx
}

// misuseOne gives a bad Record to one send or free: MPSC Send or TrySend,
// a record channel's Send, TrySend or SendBatch, Handle.Free on any
// handle, Buffer.Free, FreeBatch.
func (m *mmModel) misuseOne() bool {
	v, st := m.pickBad()
	if v == nil {
		return false
	}
	c := m.rcOf()
	pr := m.openProd()
	f := m.rng.IntN(8)
	if f < 2 && pr == nil {
		f = 2 + m.rng.IntN(6)
	}
	var err error
	var what string
	switch f {
	case 0:
		what = fmt.Sprintf("MPSC Send of %s on %s", mmName(v, st), pr.f.name)
		m.logf("%s", what)
		err = pr.p.Send(m.sendCtx(m.mp.queued == m.mp.cap), v.r)
	case 1:
		what = fmt.Sprintf("MPSC TrySend of %s on %s", mmName(v, st), pr.f.name)
		m.logf("%s", what)
		err = pr.p.TrySend(v.r)
	case 2:
		what = fmt.Sprintf("Send of %s on %d", mmName(v, st), c.id)
		m.logf("%s", what)
		err = c.p.Send(m.sendCtx(c.room() == 0), v.r)
	case 3:
		what = fmt.Sprintf("TrySend of %s on %d", mmName(v, st), c.id)
		m.logf("%s", what)
		err = c.p.TrySend(v.r)
	case 4:
		what = fmt.Sprintf("SendBatch of %s on %d", mmName(v, st), c.id)
		m.logf("%s", what)
		var k int
		k, err = c.p.SendBatch(m.sendCtx(c.room() == 0), []Record{v.r})
		require.Zero(m.t, k, m.at("%s sent it", what))
	case 5:
		hi := m.rng.IntN(4)
		what = fmt.Sprintf("Free of %s on h%d", mmName(v, st), hi)
		m.logf("%s", what)
		err = m.hs[hi].Free(v.r)
	case 6:
		what = fmt.Sprintf("Buffer.Free of %s", mmName(v, st))
		m.logf("%s", what)
		err = m.b.Free(v.r)
	case 7:
		hi := m.rng.IntN(4)
		what = fmt.Sprintf("FreeBatch of %s on h%d", mmName(v, st), hi)
		m.logf("%s", what)
		err = m.hs[hi].FreeBatch([]Record{v.r})
	}
	m.refused(err, v, st, what, false)
	return true
}

// mixed is recs' current Records with bad at a random place.
func (m *mmModel) mixed(recs []*mmRec, bad Record) []Record {
	rs := mmCur(recs)
	i := m.rng.IntN(len(rs) + 1)
	return slices.Insert(rs, i, bad)
}

// misuseSendBatch: a SendBatch of held records with a bad one sends none,
// and the good ones stay the sender's (sent on the MPSC channel, or freed,
// right away now and then).
func (m *mmModel) misuseSendBatch() bool {
	t := m.t
	v, st := m.pickBad()
	if v == nil {
		return false
	}
	recs := m.pickHelds(m.rng.IntN(6))
	c := m.rcOf()
	what := fmt.Sprintf("SendBatch on %d of %s with %s", c.id, mmIDs(recs), mmName(v, st))
	m.logf("%s", what)
	k, err := c.p.SendBatch(m.sendCtx(c.room() == 0), m.mixed(recs, v.r))
	require.Zero(t, k, m.at("a batch with a bad record sent some"))
	m.refused(err, v, st, what, v.rec != nil && slices.Contains(recs, v.rec))
	m.checkLive()
	if len(recs) > 0 {
		switch m.rng.IntN(3) {
		case 0:
			m.mpscSend(recs[0])
		case 1:
			hi := m.rng.IntN(4)
			m.logf("FreeBatch %s on h%d (the good ones of the batch refused)", mmIDs(recs), hi)
			require.NoError(t, m.hs[hi].FreeBatch(mmCur(recs)), m.at("the good records of a refused batch are the sender's"))
			for _, rec := range recs {
				m.freed(rec)
			}
		}
	}
	return true
}

// misuseFreeBatch: a FreeBatch of held records with a bad one frees the
// good ones and reports the bad one.
func (m *mmModel) misuseFreeBatch() bool {
	v, st := m.pickBad()
	if v == nil {
		return false
	}
	recs := m.pickHelds(m.rng.IntN(6))
	hi := m.rng.IntN(4)
	what := fmt.Sprintf("FreeBatch on h%d of %s with %s", hi, mmIDs(recs), mmName(v, st))
	m.logf("%s", what)
	err := m.hs[hi].FreeBatch(m.mixed(recs, v.r))
	m.refused(err, v, st, what, v.rec != nil && slices.Contains(recs, v.rec))
	for _, rec := range recs {
		m.freed(rec)
	}
	m.checkLive()
	return true
}

// misuseTwice puts a held record twice into a SendBatch (refused, none
// sent) or a FreeBatch (freed once, the second reported).
func (m *mmModel) misuseTwice() bool {
	t := m.t
	recs := m.pickHelds(1 + m.rng.IntN(4))
	if len(recs) == 0 {
		return false
	}
	dup := recs[m.rng.IntN(len(recs))]
	rs := m.mixed(recs, dup.cur.r)
	if m.rng.IntN(2) == 0 {
		c := m.rcOf()
		what := fmt.Sprintf("SendBatch on %d of %s with #%d twice", c.id, mmIDs(recs), dup.id)
		m.logf("%s", what)
		k, err := c.p.SendBatch(m.sendCtx(c.room() == 0), rs)
		require.Zero(t, k, m.at("%s sent some", what))
		m.refused(err, &mmVal{rec: dup}, stQueued, what, false)
		m.checkLive()
		return true
	}
	hi := m.rng.IntN(4)
	what := fmt.Sprintf("FreeBatch on h%d of %s with #%d twice", hi, mmIDs(recs), dup.id)
	m.logf("%s", what)
	err := m.hs[hi].FreeBatch(rs)
	require.Error(t, err, m.at("%s accepted", what))
	require.True(t, errors.Is(err, ErrNotAllocated) || errors.Is(err, ErrDoubleFree), m.at("%s: %v", what, err))
	for _, rec := range recs {
		m.freed(rec)
	}
	m.checkLive()
	return true
}

// misuseViaReceiver gives the Record h3's consumers delivered last (one
// at a time: MPSC, Select, record channel), or the batch its ReceiveBatch
// delivered last, back to h3's Free or FreeBatch once they are no longer
// those Records' to free (h3 keeps what it needs to free them quickly).
func (m *mmModel) misuseViaReceiver() bool {
	if m.rng.IntN(2) == 0 {
		h, hi := m.hs[m.recvH], m.recvH
		v := m.recvOne
		if v == nil {
			return false
		}
		st := m.status(v)
		if st != stQueued && st != stHandedOver && st != stFreed {
			return false
		}
		var err error
		var what string
		if m.rng.IntN(2) == 0 {
			what = fmt.Sprintf("Free of %s on h%d, which received it", mmName(v, st), hi)
			m.logf("%s", what)
			err = h.Free(v.r)
		} else {
			what = fmt.Sprintf("FreeBatch of %s on h%d, which received it", mmName(v, st), hi)
			m.logf("%s", what)
			err = h.FreeBatch([]Record{v.r})
		}
		m.hits["via receiver"]++
		m.refused(err, v, st, what, false)
		return true
	}
	h, vs := m.hs[mmCons], m.recvBatch
	var good []*mmRec
	bad := 0
	for _, v := range vs {
		switch m.status(v) {
		case stCurrent:
			good = append(good, v.rec)
		case stQueued, stHandedOver, stFreed:
			bad++
		default:
			return false
		}
	}
	if bad == 0 {
		return false
	}
	rs := make([]Record, len(vs))
	for i, v := range vs {
		rs[i] = v.r
	}
	what := fmt.Sprintf("FreeBatch on h3 of the batch it received last, %d of %d no longer its Records' (current: [%s])", bad, len(vs), mmIDs(good))
	m.logf("%s", what)
	m.hits["via receiver, batch"]++
	err := h.FreeBatch(rs)
	require.Error(m.t, err, m.at("%s accepted", what))
	require.True(m.t, errors.Is(err, ErrNotAllocated) || errors.Is(err, ErrDoubleFree), m.at("%s: %v", what, err))
	for _, rec := range good {
		m.freed(rec)
	}
	m.checkLive()
	return true
}

// reuse puts a new record at the place of a freed one, of its size (see
// omModel.reuse): mostly the one h3 received last, whose slot h3 may keep.
func (m *mmModel) reuse() bool {
	var v *mmVal
	switch x := m.rng.IntN(4); {
	case x < 2:
		v = m.recvOne
	case x == 2:
		if vs := m.recvBatch; len(vs) > 0 {
			v = vs[m.rng.IntN(len(vs))]
		}
	default:
		if len(m.vals) > 0 {
			v = m.vals[len(m.vals)-1-m.rng.IntN(min(len(m.vals), 256))]
		}
	}
	if v == nil || v.rec.size > m.maxSmallPayload || m.status(v) != stFreed || m.liveAt[v.rec.off] != nil {
		return false
	}
	hi, size, target := v.rec.alloc, v.rec.size, v.rec.off
	h := m.hs[hi]
	m.logf("reuse the place of #%d (%d bytes at %#x) on h%d", v.rec.id, size, uint64(target), hi)
	const header = slab.HeaderSize
	var next mem.Off
	for range 256 {
		want := m.maxSmallPayload
		switch {
		case next == 0 || next == target:
			want = size
		case next < target && target-next >= 2*header:
			want = min(int(target-next)-2*header, m.maxSmallPayload)
		}
		r, err := h.Allocate(want)
		require.NoError(m.t, err, m.at("Allocate"))
		if r.off() == target && want == size && r.tag() != v.rec.tag {
			n := m.newHeld(r, m.newRec(size, mmPlain, omHeld), hi)
			m.what += fmt.Sprintf(" -> #%d", n.rec.id)
			m.hits["reused"]++
			return true
		}
		require.NoError(m.t, h.Free(r), m.at("Free"))
		next = r.off() + mem.Off(allocSize(want)+header)
	}
	m.what += ": not reached"
	return true
}

// --- checks

func (m *mmModel) checkLive() {
	if m.depth > 0 {
		return // a fill's records are live and not the model's yet
	}
	require.Equal(m.t, int64(m.live), liveRecords(m.t, m.b)-heldBack(m.b), m.at("live records: the buffer's less those freed and held back, the model's"))
}

// verify checks every held record's bytes, the live count, the channels
// and the buffer.
func (m *mmModel) verify() {
	t := m.t
	for _, rec := range m.held {
		if bad := m.content(rec, rec.cur.r); bad != "" {
			t.Fatalf("%s", m.at("held record #%d: %s", rec.id, bad))
		}
	}
	m.checkLive()
	st, err := m.b.Stats()
	require.NoError(t, err)
	want := uint64(2)
	if m.mp.exists {
		want++
	}
	require.Equal(t, want, st.Channels, m.at("channels (the MPSC channel in the registry: %v)", m.mp.exists))
	require.NoError(t, m.b.Check(), m.at("Check"))
}

// drain receives everything, closes the producers (io.EOF), frees what is
// held and checks that nothing is left; the consumer's Close then removes
// the MPSC channel.
func (m *mmModel) drain() {
	t := m.t
	m.op++
	m.logf("drain")
	if m.mp.cons == nil {
		m.consAttach()
	}
	for _, c := range m.rc {
		for len(c.f.q) > 0 {
			r, err := c.c.TryReceive()
			require.NoError(t, err, m.at("draining %d", c.id))
			m.rcGot(c, r)
		}
		_, err := c.c.TryReceive()
		require.ErrorIs(t, err, ErrWouldBlock, m.at("channel %d drained", c.id))
	}
	for m.mp.queued > 0 {
		r, err := m.mp.cons.TryReceive()
		require.NoError(t, err, m.at("draining the MPSC channel (%d queued)", m.mp.queued))
		m.mpscGot(r)
	}
	for _, f := range m.mp.fifos {
		require.Empty(t, f.q, m.at("%s's queue", f.name))
	}
	if m.attached() == 0 {
		m.prodAttachOn(0, 0) // a channel made anew reads io.EOF only once a producer came and went
	}
	for i := range m.mp.prods {
		if m.mp.prods[i] != nil {
			require.NoError(t, m.mp.prods[i].p.Close())
			m.mp.prods[i] = nil
		}
	}
	m.logf("drain: every producer closed")
	_, err := m.mp.cons.TryReceive()
	require.ErrorIs(t, err, io.EOF, m.at("MPSC TryReceive with no producer, all received"))
	_, err = m.mp.cons.Receive(m.ctx)
	require.ErrorIs(t, err, io.EOF, m.at("MPSC Receive with no producer, all received"))
	if m.sel != nil && slices.Contains(m.cases, Receiver(m.mp.cons)) {
		for range len(m.cases) {
			if !m.selReceive() {
				break
			}
		}
	}
	m.verify()
	for len(m.held) > 0 {
		recs := m.pickHelds(8)
		require.NoError(t, m.hs[m.rng.IntN(4)].FreeBatch(mmCur(recs)), m.at("freeing what is held"))
		for _, rec := range recs {
			m.freed(rec)
		}
	}
	require.Zero(t, m.live)
	require.Zero(t, liveRecords(t, m.b), m.at("live records after everything was freed"))
	require.NoError(t, m.b.Check(), m.at("Check after everything was freed"))
	m.consClose()
	require.False(t, m.mp.exists, m.at("the MPSC channel, drained, its ends closed"))
	m.verify()
	_, err = PackOf(Record{})
	require.ErrorIs(t, err, ErrNotAllocated, m.at("PackOf of the zero Record"))

	// h3's Close closes its ends and its Select; the record channels,
	// drained, go once their producers' handles close too.
	m.logf("close h3")
	require.NoError(t, m.hs[mmCons].Close(), m.at("Handle.Close"))
	if m.sel != nil {
		_, _, err = m.sel.Receive(m.ctx)
		require.ErrorIs(t, err, ErrClosed, m.at("Receive on the Select of a closed handle"))
	}
	for _, c := range m.rc {
		_, err = c.c.TryReceive()
		require.ErrorIs(t, err, ErrClosed, m.at("TryReceive on a consumer of a closed handle"))
	}
	m.logf("close h0, h1")
	require.NoError(t, m.hs[0].Close())
	require.NoError(t, m.hs[1].Close())
	st, err := m.b.Stats()
	require.NoError(t, err)
	require.Zero(t, st.Channels, m.at("channels whose ends all closed, drained"))
	require.NoError(t, m.b.Check(), m.at("Check"))
}

// TestStaleFreeInReceiveEachOf: inside ReceiveEachOf's use (which
// "may use the handle (allocate, free, ...)"), the sender's kept Record of
// a record that the same call delivered and freed already is refused by
// Free, as Record's doc says of a Record kept after it was sent, and a
// new record that takes its place stays its holder's.
//
// ReceiveEach (under ReceiveEachOf) marks each record freed in its trailer
// when use returns and sets the records' bits in their slabs after the
// batch (FreeRuns). In between (before the fix; found by TestMPSCModel),
// records.free's fallback for a Record that
// held() refuses finds the record still allocated, of the Record's tag,
// and a trailer that trailerIn does not take for a live one (it has the
// freed mark), and frees it in the pool: Free returns nil. The slab of
// x, whose only record it was, starts over, a new record takes x's
// place, and ReceiveEach's FreeRuns then frees that new record under its
// holder: ReceiveEachOf reports nothing, the new record is gone, and its
// holder's Free is a double free. Without the reuse, ReceiveEach reports
// "double free" for a record it delivered.
func TestStaleFreeInReceiveEachOf(t *testing.T) {
	ctx := context.Background()
	b := heapBuf(t, WithSlabSize(16<<10))
	h, p, co := loopback(t, b, 1, WithCapacity(1024))
	rs := make([]Record, 600) // 48 KiB of records: three slabs and more
	require.NoError(t, h.AllocateBatch(mmTSize, rs))
	x, y := rs[0], rs[len(rs)-1]
	require.NoError(t, h.FreeBatch(rs[1:len(rs)-1])) // x: its slab's only record
	require.NoError(t, p.Send(ctx, x))               // x, y: the sender's kept Records
	require.NoError(t, p.Send(ctx, y))
	var ferr error
	var nx Record
	uses := 0
	n, err := ReceiveEachOf(ctx, co, 2, func(*mmT) {
		uses++
		if uses == 2 { // x was delivered, and freed when its use returned
			ferr = h.Free(x)
			if ferr == nil {
				nx = reusePlace(t, h, x) // live at x's place, another tag
			}
		}
	})
	require.NoError(t, err, "ReceiveEachOf")
	require.Equal(t, 2, n)
	assert.True(t, errors.Is(ferr, ErrNotAllocated) || errors.Is(ferr, ErrDoubleFree),
		"Free of the sender's kept Record of a record ReceiveEachOf delivered and freed: %v, want refused", ferr)
	if nx.IsZero() {
		return
	}
	assert.Equal(t, int64(1), liveRecords(t, b), "the new record at x's place is live")
	assert.NoError(t, h.Free(nx), "the new record is its holder's to free")
	require.NoError(t, b.Check())
}
