package channel

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/bits"
	"structs"
	"sync/atomic"
	"time"

	"github.com/heapipc/ipc/backend"
	"github.com/heapipc/ipc/internal/errs"
	"github.com/heapipc/ipc/internal/mem"
	"github.com/heapipc/ipc/internal/sys"
)

// A mailbox is request/reply between a requester end and a responder end.
// Each direction has a window of Window bytes in the buffer and two
// semaphores of the buffer's semaphore backend forming a split binary
// semaphore: "write" starts at 1, "read" at 0. A sender waits on write,
// fills the window and its chunk header, and posts read; the receiver
// waits on read, copies the chunk out, and posts write. So the window's
// writes and reads strictly alternate, and the window is never cleared. A
// message of any length travels as max(1, ceil(len/Window)) chunks, each
// with a header (message sequence number, chunk index, total length, chunk
// length, flags) the receiver checks.
//
//	0    immutable: Magic, Window                       (creator)
//	128  Requester, ReqBusy, ReqClosed, Want, Seq       (requester end)
//	256  Responder, RespBusy, RespClosed                (responder end)
//	384  Epoch                                          (under the registry lock)
//	512  request chunk header                           (requester, inside its turn)
//	640  reply chunk header                             (responder, inside its turn)
//	768  request window [Window]byte                    (requester writes, responder reads)
//	768+Window  reply window [Window]byte               (responder writes, requester reads)
//
// Semaphores are named after the buffer and the channel id (see
// MailboxSemNames). They are created exclusively when the channel is
// created (a stale one of a crashed earlier buffer of the same name is
// removed and made anew: the registry entry is ours), and removed with the
// channel or the buffer.
//
// Crashes. An end sets its Busy word before it waits on a semaphore and
// clears it after its post, so an end that died with Busy set may have
// taken a unit with it. Whoever attaches while an end is held by such a
// dead process renews the semaphores under the registry lock: removes and
// creates all four anew with their initial values, and bumps Epoch. A live
// peer sees the new epoch before each wait and after each chunk it copies
// (a seqlock check), reopens the semaphores, and fails an exchange that
// was under way with ErrPeerDead.
type mailboxCB struct {
	_          structs.HostLayout
	Magic      uint64
	Window     uint64
	_          [112]byte
	Requester  atomic.Uint64 // sys.Identity of the requester end, 0: none
	ReqBusy    atomic.Uint32 // 1: the requester may hold a semaphore unit
	ReqClosed  atomic.Uint32 // 1: the requester closed its end
	Want       atomic.Uint64 // sequence number of the request awaiting its reply, 0: none
	Seq        atomic.Uint64 // last request sequence number used
	_          [96]byte
	Responder  atomic.Uint64 // sys.Identity of the responder end, 0: none
	RespBusy   atomic.Uint32 // 1: the responder may hold a semaphore unit
	RespClosed atomic.Uint32 // 1: the responder closed its end
	_          [112]byte
	Epoch      atomic.Uint64 // semaphore generation (bumped when they are renewed)
	_          [120]byte
	Req        mbChunkHeader
	Rep        mbChunkHeader
}

// mbChunkHeader describes the chunk in a window. The sender writes it inside
// its turn, the receiver reads it inside its turn; the semaphores order
// the accesses.
type mbChunkHeader struct {
	_     structs.HostLayout
	Seq   atomic.Uint64 // message sequence number (a reply carries its request's)
	Total atomic.Uint64 // message length
	Index atomic.Uint64 // chunk index, from 0
	Len   atomic.Uint64 // bytes of the message in the window
	Flags atomic.Uint32 // mbChunkLast, mbChunkAbort
	_     [92]byte
}

const (
	mailboxCBSize = 768
	mbChunkLast   = 1 // the message's last chunk
	mbChunkAbort  = 2 // the sender gave up the message: drop what came of it
)

var mailboxMagic = binary.LittleEndian.Uint64([]byte("HIPCMBOX"))

// Mailbox window bounds.
const (
	DefaultMailboxWindow = 4 << 20
	MinMailboxWindow     = 64
	MaxMailboxWindow     = 1 << 32
)

// MailboxControlSize is the size of the control block plus the two windows.
func MailboxControlSize(window uint64) uint64 { return mailboxCBSize + 2*window }

// The semaphores of a mailbox, in MailboxSemNames order.
const (
	mbReqWrite = iota // request window free for the requester (starts at 1)
	mbReqRead         // a request chunk for the responder (starts at 0)
	mbRepWrite        // reply window free for the responder (starts at 1)
	mbRepRead         // a reply chunk for the requester (starts at 0)
)

var mbSemInitial = [4]int{1, 0, 1, 0}

// MailboxSemNames are the names of the four semaphores of mailbox id in the
// buffer called buf (at most 128 bytes, so the names stay under the 200 of
// backend.MaxObjectNameLen).
func MailboxSemNames(buf string, id ID) [4]string {
	base := fmt.Sprintf("%s.mb%x.", buf, uint64(id))
	return [4]string{base + "qw", base + "qr", base + "pw", base + "pr"}
}

// A mailbox semaphore's Data (backend.SemOptions: kept by sysv sets) say
// which it is, so that Remove finds the sysv semaphores of a buffer it
// cannot open (whose registry it cannot read): mbSemMark, the mailbox's
// id in five 15-bit parts (low first; a sysv semaphore holds up to
// 32767) and the semaphore's number in MailboxSemNames order.
const (
	mbSemMark = 0x6d62 // "mb"
	// MailboxSemDataLen is how many Data values a mailbox semaphore has.
	MailboxSemDataLen = 7
	mbIDPart          = 15
)

// MailboxSemData is the Data of semaphore i of mailbox id.
func MailboxSemData(id ID, i int) []int {
	d := make([]int, MailboxSemDataLen)
	d[0], d[MailboxSemDataLen-1] = mbSemMark, i
	for k := range MailboxSemDataLen - 2 {
		d[1+k] = int(uint64(id) >> (mbIDPart * k) & (1<<mbIDPart - 1))
	}
	return d
}

// MailboxSemOf reads a semaphore's Data as a mailbox semaphore's: the
// mailbox's id and the semaphore's number (MailboxSemNames order); ok is
// false for Data that are not a mailbox semaphore's.
func MailboxSemOf(d []int) (id ID, i int, ok bool) {
	if len(d) != MailboxSemDataLen || d[0] != mbSemMark || d[MailboxSemDataLen-1] < 0 || d[MailboxSemDataLen-1] >= 4 {
		return 0, 0, false
	}
	var v uint64
	for k := range MailboxSemDataLen - 2 {
		p := d[1+k]
		if p < 0 || p >= 1<<mbIDPart || mbIDPart*k+bits.Len64(uint64(p)) > 64 {
			return 0, 0, false
		}
		v |= uint64(p) << (mbIDPart * k)
	}
	return ID(v), d[MailboxSemDataLen-1], true
}

// newSem creates a semaphore exclusively; one left behind under the name
// (by a crashed earlier run) is removed and created anew.
func mbNewSem(sems backend.SemaphoreBackend, name string, v int, data []int) (backend.Semaphore, error) {
	s, err := sems.Create(name, v, backend.SemOptions{Data: data})
	if errors.Is(err, errs.ErrExist) {
		if rerr := sems.Remove(name); rerr != nil && !errors.Is(rerr, errs.ErrNotExist) {
			return nil, fmt.Errorf("remove stale semaphore: %w", rerr)
		}
		s, err = sems.Create(name, v, backend.SemOptions{Data: data})
	}
	return s, err
}

// makeSems creates the four semaphores of mailbox id with their initial
// values.
func mbMakeSems(sems backend.SemaphoreBackend, names [4]string, id ID) error {
	for i, name := range names {
		s, err := mbNewSem(sems, name, mbSemInitial[i], MailboxSemData(id, i))
		if err != nil {
			RemoveMailboxSems(sems, names)
			return fmt.Errorf("mailbox semaphore %q: %w", name, err)
		}
		s.Close()
	}
	return nil
}

// RemoveMailboxSems removes the four semaphores; ones already gone are
// not an error.
func RemoveMailboxSems(sems backend.SemaphoreBackend, names [4]string) error {
	var all []error
	for _, name := range names {
		if err := sems.Remove(name); err != nil && !errors.Is(err, errs.ErrNotExist) {
			all = append(all, err)
		}
	}
	return errors.Join(all...)
}

// InitMailbox lays out the control block of mailbox id of the buffer
// called buf with the given window and creates its semaphores.
func InitMailbox(b []byte, window uint64, sems backend.SemaphoreBackend, buf string, id ID) error {
	if window < MinMailboxWindow || window > MaxMailboxWindow {
		return fmt.Errorf("mailbox window %d (%d..%d): %w", window, MinMailboxWindow, uint64(MaxMailboxWindow), errs.ErrInvalidSize)
	}
	if uint64(len(b)) < MailboxControlSize(window) {
		return fmt.Errorf("mailbox control block of %d bytes for window %d: %w", len(b), window, errs.ErrInvalidSize)
	}
	cb, err := mem.At[mailboxCB](b, 0)
	if err != nil {
		return err
	}
	if err := mbMakeSems(sems, MailboxSemNames(buf, id), id); err != nil {
		return err
	}
	cb.Window = window
	cb.Epoch.Store(1)
	cb.Magic = mailboxMagic
	return nil
}

// Mailbox is a process's view of a mailbox channel.
type Mailbox struct {
	cb       *mailboxCB
	req, rep []byte // the windows
	win      uint64
	cbOff    mem.Off
	reg      *Registry
	en       *Entry
	sems     backend.SemaphoreBackend
	names    [4]string
	opts     WaitOptions
}

// OpenMailbox validates a mailbox channel's control block. Its semaphores
// are of the region's semaphore kind.
func OpenMailbox(reg *Registry, en *Entry, opts WaitOptions) (*Mailbox, error) {
	b := reg.r.Bytes()
	cb, err := mem.At[mailboxCB](b, en.Control)
	if err != nil {
		return nil, err
	}
	if cb.Magic != mailboxMagic {
		return nil, errs.Corrupt("mailbox magic", uint64(en.Control), "magic %#x", cb.Magic)
	}
	w := cb.Window
	if w < MinMailboxWindow || w > MaxMailboxWindow || w != en.Size {
		return nil, errs.Corrupt("mailbox window", uint64(en.Control)+8, "window %d (registry says %d)", w, en.Size)
	}
	req, err := mem.Bytes(b, en.Control+mailboxCBSize, w)
	if err != nil {
		return nil, err
	}
	rep, err := mem.Bytes(b, en.Control+mailboxCBSize+mem.Off(w), w)
	if err != nil {
		return nil, err
	}
	sems, err := reg.r.Semaphores()
	if err != nil {
		return nil, err
	}
	return &Mailbox{cb: cb, req: req, rep: rep, win: w, cbOff: en.Control, reg: reg, en: en, sems: sems,
		names: MailboxSemNames(reg.r.Name(), en.ID), opts: opts.norm()}, nil
}

// Window is the size of each direction's window.
func (m *Mailbox) Window() int { return int(m.win) }

// RemoveSems removes the mailbox's semaphore names (with the channel, or
// when the buffer is destroyed).
func (m *Mailbox) RemoveSems() error { return RemoveMailboxSems(m.sems, m.names) }

// Removable reports whether both ends have closed.
func (m *Mailbox) Removable() bool {
	return m.cb.ReqClosed.Load() != 0 && m.cb.RespClosed.Load() != 0 &&
		m.cb.Requester.Load() == 0 && m.cb.Responder.Load() == 0
}

// Idle reports whether no live process holds either end.
func (m *Mailbox) Idle() bool {
	return !heldByLive(&m.cb.Requester, &m.cb.Responder)
}

// Abandoned reports whether no live process holds either end and both
// have gone (closed, or held by a dead process).
func (m *Mailbox) Abandoned() bool {
	if !m.Idle() {
		return false
	}
	qGone := m.cb.ReqClosed.Load() != 0 || m.cb.Requester.Load() != 0
	rGone := m.cb.RespClosed.Load() != 0 || m.cb.Responder.Load() != 0
	return qGone && rGone
}

// Check reports what is wrong with the mailbox's words.
func (m *Mailbox) Check() error {
	var all []error
	off := uint64(m.cbOff)
	for i, h := range []*mbChunkHeader{&m.cb.Req, &m.cb.Rep} {
		at := off + 512 + uint64(i)*128
		if n := h.Len.Load(); n > m.win {
			all = append(all, errs.Corrupt("mailbox chunk length", at+24, "%d bytes in a window of %d", n, m.win))
		}
		if f := h.Flags.Load(); f&^(mbChunkLast|mbChunkAbort) != 0 {
			all = append(all, errs.Corrupt("mailbox chunk flags", at+32, "flags %#x", f))
		}
	}
	for _, f := range []struct {
		at uint64
		v  uint32
	}{{136, m.cb.ReqBusy.Load()}, {140, m.cb.ReqClosed.Load()}, {264, m.cb.RespBusy.Load()}, {268, m.cb.RespClosed.Load()}} {
		if f.v > 1 {
			all = append(all, errs.Corrupt("mailbox end flag", off+f.at, "value %d", f.v))
		}
	}
	if m.cb.Epoch.Load() == 0 {
		all = append(all, errs.Corrupt("mailbox epoch", off+384, "epoch 0"))
	}
	return errors.Join(all...)
}

// renew removes and creates the four semaphores anew with their initial
// values and bumps the epoch. Registry lock held.
func (m *Mailbox) renew() error {
	if err := RemoveMailboxSems(m.sems, m.names); err != nil {
		return err
	}
	if err := mbMakeSems(m.sems, m.names, m.en.ID); err != nil {
		return err
	}
	m.cb.Epoch.Add(1)
	return nil
}

// Roles of mailbox ends.
const (
	mbRequester = iota
	mbResponder
)

// mbEnd is what both ends of a mailbox have.
type mbEnd struct {
	*Mailbox
	role       int
	self       sys.Identity
	me, peer   *atomic.Uint64
	busy       *atomic.Uint32
	peerBusy   *atomic.Uint32
	closedW    *atomic.Uint32
	peerClosed *atomic.Uint32
	epoch      uint64
	s          [4]backend.Semaphore
	closed     bool
	// sawPeer: a peer end was attached during the current exchange (a
	// requester then fails when it closes; with none, it waits for one).
	sawPeer bool
}

var errMbGone = fmt.Errorf("mailbox was removed: %w", errs.ErrNotExist)

// attach claims an end under the registry lock, renewing the semaphores if
// an end is held by a process that died while it may have held a unit,
// and opens them.
func (m *Mailbox) attach(ctx context.Context, role int) (*mbEnd, error) {
	e := &mbEnd{Mailbox: m, role: role, self: sys.Self()}
	if role == mbRequester {
		e.me, e.busy, e.closedW = &m.cb.Requester, &m.cb.ReqBusy, &m.cb.ReqClosed
		e.peer, e.peerBusy, e.peerClosed = &m.cb.Responder, &m.cb.RespBusy, &m.cb.RespClosed
	} else {
		e.me, e.busy, e.closedW = &m.cb.Responder, &m.cb.RespBusy, &m.cb.RespClosed
		e.peer, e.peerBusy, e.peerClosed = &m.cb.Requester, &m.cb.ReqBusy, &m.cb.ReqClosed
	}
	what := [2]string{"mailbox requester end", "mailbox responder end"}[role]
	err := m.reg.withLock(ctx, func() error {
		if !m.en.Valid() {
			return errMbGone
		}
		prev, err := claim(e.me, e.self, what)
		if err != nil {
			return err
		}
		dirty := prev != 0 && e.busy.Load() != 0
		if p := sys.Identity(e.peer.Load()); p != 0 && e.peerBusy.Load() != 0 && !sys.Alive(p) {
			dirty = true
		}
		if dirty {
			if err := m.renew(); err != nil {
				e.me.CompareAndSwap(uint64(e.self), 0)
				return err
			}
			e.peerBusy.Store(0) // its holder is dead: the renewal took care of it
		}
		e.busy.Store(0)
		e.closedW.Store(0)
		if err := e.open(); err != nil {
			e.me.CompareAndSwap(uint64(e.self), 0)
			return err
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return e, nil
}

// open opens the semaphores of the current epoch. Registry lock held.
func (e *mbEnd) open() error {
	var s [4]backend.Semaphore
	for i, name := range e.names {
		h, err := e.sems.Open(name, backend.SemOptions{})
		if err != nil {
			for _, o := range s[:i] {
				o.Close()
			}
			return fmt.Errorf("mailbox semaphore %q: %w", name, err)
		}
		s[i] = h
	}
	e.closeSems()
	e.s = s
	e.epoch = e.cb.Epoch.Load()
	return nil
}

func (e *mbEnd) closeSems() error {
	var all []error
	for i, s := range e.s {
		if s != nil {
			all = append(all, s.Close())
			e.s[i] = nil
		}
	}
	return errors.Join(all...)
}

// reopen follows the semaphores to a new epoch.
func (e *mbEnd) reopen(ctx context.Context) error {
	return e.reg.withLock(ctx, func() error {
		if e.cb.Epoch.Load() == e.epoch {
			return nil
		}
		return e.open()
	})
}

var errMbTakenOver = fmt.Errorf("mailbox: the peer's end was taken over after it died, mid-exchange: %w", errs.ErrPeerDead)

// checkEpoch follows a renewal of the semaphores; one in the middle of an
// exchange is ErrPeerDead (what was sent went with the old semaphores).
func (e *mbEnd) checkEpoch(ctx context.Context, mid bool) error {
	if e.cb.Epoch.Load() == e.epoch {
		return nil
	}
	if err := e.reopen(ctx); err != nil {
		return err
	}
	if mid {
		return errMbTakenOver
	}
	return nil
}

// errMbAbandoned: the requester stopped waiting for the reply being sent.
var errMbAbandoned = errors.New("mailbox: the requester gave the request up")

// mbPhase says where in an exchange an end waits, for what a timeout
// check should conclude.
type mbPhase struct {
	mid       bool        // an exchange is under way: a dead peer fails it
	abandoned func() bool // for a reply: the requester gave up
}

// acquire waits for the semaphore's unit in slices of the check interval,
// checking between slices the epoch, the peer and the buffer. On success
// the end's Busy word is set; the caller clears it after its post.
func (e *mbEnd) acquire(ctx context.Context, which int, ph mbPhase) error {
	e.busy.Store(1)
	fail := func(err error) error {
		e.busy.Store(0)
		return err
	}
	for first := true; ; first = false {
		if err := e.checkEpoch(ctx, ph.mid); err != nil {
			return fail(err)
		}
		if ph.abandoned != nil && ph.abandoned() {
			return fail(errMbAbandoned)
		}
		if first && e.spinWait(e.s[which]) {
			return nil
		}
		err := e.waitSlice(ctx, e.s[which])
		if err == nil {
			return nil
		}
		if cerr := ctx.Err(); cerr != nil {
			return fail(fmt.Errorf("mailbox wait: %w", cerr))
		}
		if !errors.Is(err, errs.ErrTimeout) && !errors.Is(err, errs.ErrDestroyed) {
			return fail(err)
		}
		if errors.Is(err, errs.ErrDestroyed) && e.cb.Epoch.Load() == e.epoch && e.region().State() != backend.StateDestroyed {
			// The semaphore was removed without a renewal: the channel
			// or the buffer is going away.
			return fail(fmt.Errorf("mailbox: %w", err))
		}
		if err := e.checkPeer(ph.mid); err != nil {
			return fail(err)
		}
	}
}

func (e *mbEnd) region() *backend.Region { return e.reg.r }

// spinWait polls s for the end's spin time before the wait sleeps, as
// channels' blocking calls do: a peer that is running posts within
// microseconds, far less than a sleep and wake-up costs each way (a
// 64-byte round trip between two goroutines: ~13 µs with each side
// sleeping on a futex semaphore, under 2 µs spinning). A poll of a sysv
// semaphore is a system call (semop with IPC_NOWAIT, ~0.5 µs): it is made
// at every eighth turn of the spin, which reads the clock every 64. It
// reports whether it took the unit.
func (e *mbEnd) spinWait(s backend.Semaphore) bool {
	if s.Kind() != backend.SysV {
		return spin(e.opts.Spin, func() bool { return s.TryWait() == nil })
	}
	turn := 0
	return spin(e.opts.Spin, func() bool {
		turn++
		return turn%8 == 0 && s.TryWait() == nil
	})
}

// waitSlice waits on s for at most the check interval (and at most until
// ctx is done): ErrTimeout when the slice ran out.
func (e *mbEnd) waitSlice(ctx context.Context, s backend.Semaphore) error {
	d := e.opts.CheckInterval
	if ctx.Done() == nil {
		return s.WaitTimeout(d)
	}
	if dl, ok := ctx.Deadline(); ok {
		d = max(min(d, time.Until(dl)), 0)
	}
	c, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	err := s.Wait(c)
	if err != nil && ctx.Err() == nil && errors.Is(err, context.DeadlineExceeded) {
		return fmt.Errorf("mailbox wait: %w", errs.ErrTimeout)
	}
	return err
}

// checkPeer is what a wait concludes after a slice ran out: ErrDestroyed,
// ErrPeerDead (a dead peer), io.ErrClosedPipe (the responder closed) or
// io.EOF (the requester closed, for an idle responder), or nil to wait on.
func (e *mbEnd) checkPeer(mid bool) error {
	if e.region().Closing() {
		return fmt.Errorf("mailbox: %w", errs.ErrClosed)
	}
	if e.region().State() == backend.StateDestroyed {
		return fmt.Errorf("mailbox: %w", errs.ErrDestroyed)
	}
	p := sys.Identity(e.peer.Load())
	if p != 0 && !sys.Alive(p) {
		return fmt.Errorf("mailbox: the %s (%v) died: %w", e.peerName(), p, errs.ErrPeerDead)
	}
	if p != 0 {
		e.sawPeer = true
	}
	if p == 0 && e.peerClosed.Load() != 0 {
		if e.role == mbRequester {
			if !e.sawPeer {
				return nil // closed before this request: wait for a new responder
			}
			return fmt.Errorf("mailbox: the responder closed its end: %w", io.ErrClosedPipe)
		}
		if !mid {
			return io.EOF
		}
		return fmt.Errorf("mailbox: the requester closed its end mid-message: %w", io.ErrUnexpectedEOF)
	}
	return nil
}

func (e *mbEnd) peerName() string {
	if e.role == mbRequester {
		return "responder"
	}
	return "requester"
}

// post releases the unit to the peer and clears Busy.
func (e *mbEnd) post(which int) error {
	err := e.s[which].Post()
	e.busy.Store(0)
	if err != nil {
		if e.cb.Epoch.Load() != e.epoch {
			return errMbTakenOver
		}
		return fmt.Errorf("mailbox: %w", err)
	}
	return nil
}

// send moves a message of total bytes through the window of the end's
// direction; fill writes the bytes of the message from off into dst.
func (e *mbEnd) send(ctx context.Context, seq, total uint64, fill func(dst []byte, off uint64) error, abandoned func() bool) error {
	win, hdr, wr, rd := e.req, &e.cb.Req, mbReqWrite, mbReqRead
	if e.role == mbResponder {
		win, hdr, wr, rd = e.rep, &e.cb.Rep, mbRepWrite, mbRepRead
	}
	chunks := max(1, (total+e.win-1)/e.win)
	for i := uint64(0); i < chunks; i++ {
		off := i * e.win
		n := min(e.win, total-off)
		mid := i > 0 || e.role == mbResponder
		if err := e.acquire(ctx, wr, mbPhase{mid: mid, abandoned: abandoned}); err != nil {
			return err
		}
		flags := uint32(0)
		if i == chunks-1 {
			flags = mbChunkLast
		}
		if err := fill(win[:n:n], off); err != nil {
			// Tell the receiver to drop the message, then give up.
			hdr.Seq.Store(seq)
			hdr.Total.Store(total)
			hdr.Index.Store(i)
			hdr.Len.Store(0)
			hdr.Flags.Store(mbChunkAbort)
			return errors.Join(err, e.post(rd))
		}
		hdr.Seq.Store(seq)
		hdr.Total.Store(total)
		hdr.Index.Store(i)
		hdr.Len.Store(n)
		hdr.Flags.Store(flags)
		if err := e.post(rd); err != nil {
			return err
		}
	}
	return nil
}

// mbChunk is a received chunk header.
type mbChunk struct {
	seq, total, index, n uint64
	flags                uint32
}

// take waits for the next chunk of the end's incoming direction and reads
// its header (bounds-checked). The caller copies what it wants and calls
// done (which posts the unit back) — always, once take succeeded.
func (e *mbEnd) take(ctx context.Context, mid bool) (mbChunk, []byte, error) {
	win, hdr, rd := e.rep, &e.cb.Rep, mbRepRead
	if e.role == mbResponder {
		win, hdr, rd = e.req, &e.cb.Req, mbReqRead
	}
	if err := e.acquire(ctx, rd, mbPhase{mid: mid}); err != nil {
		return mbChunk{}, nil, err
	}
	c := mbChunk{seq: hdr.Seq.Load(), total: hdr.Total.Load(), index: hdr.Index.Load(), n: hdr.Len.Load(), flags: hdr.Flags.Load()}
	if c.n > e.win || c.flags&^(mbChunkLast|mbChunkAbort) != 0 {
		err := errs.Corrupt("mailbox chunk header", uint64(e.cbOff)+512+uint64(e.role^1)*128, "length %d in a window of %d, flags %#x", c.n, e.win, c.flags)
		return mbChunk{}, nil, errors.Join(err, e.done())
	}
	return c, win[:c.n:c.n], nil
}

// done gives the incoming window back to the sender.
func (e *mbEnd) done() error {
	if e.role == mbResponder {
		return e.post(mbReqWrite)
	}
	return e.post(mbRepWrite)
}

// torn reports whether the semaphores were renewed while a chunk was
// being copied (the window may have been rewritten under the copy).
func (e *mbEnd) torn() bool { return e.cb.Epoch.Load() != e.epoch }

// grow returns dst with room for total more bytes where that is sane.
func mbGrow(dst []byte, total uint64) []byte {
	const maxPrealloc = 256 << 20
	if want := min(total, maxPrealloc); uint64(cap(dst)) < want {
		return make([]byte, 0, want)
	}
	return dst[:0]
}

func (e *mbEnd) close() {
	if e.closed {
		return
	}
	e.closed = true
	e.busy.Store(0)
	e.closedW.Store(1)
	e.me.CompareAndSwap(uint64(e.self), 0)
	e.closeSems()
}

// ---- requester ----

// MailboxRequester is the requester end. Its methods must be called from
// one goroutine at a time.
type MailboxRequester struct {
	*mbEnd
}

// AttachRequester claims the requester end: ErrBusy if a live process
// holds it (a dead holder's end is taken over), ErrNotExist if the mailbox
// was removed meanwhile.
func (m *Mailbox) AttachRequester(ctx context.Context) (*MailboxRequester, error) {
	e, err := m.attach(ctx, mbRequester)
	if err != nil {
		return nil, err
	}
	return &MailboxRequester{e}, nil
}

var errMbReplyAborted = fmt.Errorf("mailbox: the responder aborted the reply: %w", errs.ErrAborted)

// Request sends msg and waits for the reply, appended to dst[:0]. It
// returns ErrPeerDead if the responder dies (or its end is taken over)
// before the reply is complete, io.ErrClosedPipe if a responder that was
// attached during the request closed its end (with none attached, it
// waits for one), ErrDestroyed, or ctx's error; after an error the mailbox stays
// usable (a late reply to an abandoned request is recognised by its
// sequence number and dropped).
func (q *MailboxRequester) Request(ctx context.Context, msg, dst []byte) ([]byte, error) {
	if q.closed {
		return nil, errClosedEnd
	}
	seq := q.cb.Seq.Add(1)
	q.sawPeer = q.peer.Load() != 0
	q.cb.Want.Store(seq)
	defer q.cb.Want.CompareAndSwap(seq, 0)
	err := q.send(ctx, seq, uint64(len(msg)), func(dst []byte, off uint64) error {
		copy(dst, msg[off:])
		return nil
	}, nil)
	if err != nil {
		return nil, err
	}
	return q.receiveReply(ctx, seq, dst)
}

func (q *MailboxRequester) receiveReply(ctx context.Context, seq uint64, dst []byte) ([]byte, error) {
	var next, got, total uint64
	dst = dst[:0]
	for {
		c, win, err := q.take(ctx, true)
		if err != nil {
			return nil, err
		}
		switch {
		case c.seq < seq:
			// A late reply (or part of one) to a request given up: drop.
			if err := q.done(); err != nil {
				return nil, err
			}
			continue
		case c.seq > seq:
			err := errs.Corrupt("mailbox reply sequence", uint64(q.cbOff)+640, "reply %d to request %d", c.seq, seq)
			return nil, errors.Join(err, q.done())
		case c.flags&mbChunkAbort != 0:
			return nil, errors.Join(errMbReplyAborted, q.done())
		case c.index != next || (next > 0 && c.total != total):
			err := errs.Corrupt("mailbox reply chunk", uint64(q.cbOff)+640, "chunk %d of %d bytes where chunk %d of %d was due", c.index, c.total, next, total)
			return nil, errors.Join(err, q.done())
		}
		if next == 0 {
			total = c.total
			dst = mbGrow(dst, total)
		}
		last := c.flags&mbChunkLast != 0
		if got+c.n > total || last != (got+c.n == total) {
			err := errs.Corrupt("mailbox reply chunk", uint64(q.cbOff)+640, "chunk %d: %d bytes after %d of %d (last %v)", c.index, c.n, got, total, last)
			return nil, errors.Join(err, q.done())
		}
		dst = append(dst, win...)
		if q.torn() {
			q.busy.Store(0)
			return nil, errMbTakenOver
		}
		if err := q.done(); err != nil {
			return nil, err
		}
		got += c.n
		next++
		if last {
			return dst, nil
		}
	}
}

// Close releases the requester end and reports whether the mailbox can be
// removed (the responder closed too).
func (q *MailboxRequester) Close() (removable bool) {
	if q.closed {
		return false
	}
	q.cb.Want.Store(0)
	q.close()
	return q.Removable()
}

// ---- responder ----

// MailboxResponder is the responder end. Its methods must be called from
// one goroutine at a time.
type MailboxResponder struct {
	*mbEnd
	pending  bool   // a request was received and not replied to
	seq      uint64 // its sequence number
	reported sys.Identity
}

// AttachResponder claims the responder end: ErrBusy if a live process
// holds it (a dead holder's end is taken over), ErrNotExist if the
// mailbox was removed meanwhile.
func (m *Mailbox) AttachResponder(ctx context.Context) (*MailboxResponder, error) {
	e, err := m.attach(ctx, mbResponder)
	if err != nil {
		return nil, err
	}
	return &MailboxResponder{mbEnd: e}, nil
}

// Receive waits for the next complete request and returns it appended to
// dst[:0]; Reply answers it. A request the requester gave up meanwhile is
// dropped. It returns io.EOF when the requester closed its end (nothing
// pending), ErrPeerDead once when the requester died (mid-message, or
// while idle: after that a new requester may attach), ErrDestroyed, or
// ctx's error.
func (r *MailboxResponder) Receive(ctx context.Context, dst []byte) ([]byte, error) {
	if r.closed {
		return nil, errClosedEnd
	}
	r.pending = false
	var (
		partial        bool
		cur, next, got uint64
		total          uint64
	)
	dst = dst[:0]
	for {
		c, win, err := r.take(ctx, partial)
		if err != nil {
			if errors.Is(err, errs.ErrPeerDead) && !errors.Is(err, errMbTakenOver) {
				p := sys.Identity(r.peer.Load())
				if !partial && p == r.reported {
					continue // reported already: wait for a new requester
				}
				r.reported = p
			}
			return nil, err
		}
		switch {
		case c.flags&mbChunkAbort != 0:
			partial = false
			if err := r.done(); err != nil {
				return nil, err
			}
			continue
		case c.index == 0:
			partial, cur, next, got, total = true, c.seq, 0, 0, c.total
			dst = mbGrow(dst, total)
		case !partial:
			// The rest of a message whose start this end did not see
			// (a Receive given up): drop.
			if err := r.done(); err != nil {
				return nil, err
			}
			continue
		case c.seq != cur || c.index != next || c.total != total:
			err := errs.Corrupt("mailbox request chunk", uint64(r.cbOff)+512, "chunk %d of request %d (%d bytes) where chunk %d of request %d (%d bytes) was due", c.index, c.seq, c.total, next, cur, total)
			return nil, errors.Join(err, r.done())
		}
		last := c.flags&mbChunkLast != 0
		if got+c.n > total || last != (got+c.n == total) {
			err := errs.Corrupt("mailbox request chunk", uint64(r.cbOff)+512, "chunk %d: %d bytes after %d of %d (last %v)", c.index, c.n, got, total, last)
			return nil, errors.Join(err, r.done())
		}
		dst = append(dst, win...)
		if r.torn() {
			r.busy.Store(0)
			return nil, errMbTakenOver
		}
		if err := r.done(); err != nil {
			return nil, err
		}
		got += c.n
		next++
		if !last {
			continue
		}
		partial = false
		if r.cb.Want.Load() != cur {
			continue // the requester gave it up
		}
		r.pending, r.seq = true, cur
		return dst, nil
	}
}

// Reply answers the request Receive returned. If the requester gave up
// waiting meanwhile, the reply is dropped (nil is returned). It returns
// ErrPeerDead if the requester dies before the reply is through.
func (r *MailboxResponder) Reply(ctx context.Context, msg []byte) error {
	return r.ReplyFrom(ctx, uint64(len(msg)), func(dst []byte, off uint64) error {
		copy(dst, msg[off:])
		return nil
	})
}

// ReplyFrom answers the request Receive returned with a reply of total
// bytes that fill writes into the window, chunk by chunk (dst is the
// window; off the reply offset it starts at). If fill fails, the
// requester's Request fails too and fill's error is returned.
func (r *MailboxResponder) ReplyFrom(ctx context.Context, total uint64, fill func(dst []byte, off uint64) error) error {
	if r.closed {
		return errClosedEnd
	}
	if !r.pending {
		return fmt.Errorf("mailbox reply without a request: %w", errs.ErrInvalidArgument)
	}
	r.pending = false
	seq := r.seq
	err := r.send(ctx, seq, total, fill, func() bool { return r.cb.Want.Load() != seq })
	if err == errMbAbandoned {
		return nil
	}
	return err
}

// Close releases the responder end and reports whether the mailbox can be
// removed (the requester closed too).
func (r *MailboxResponder) Close() (removable bool) {
	if r.closed {
		return false
	}
	r.close()
	return r.Removable()
}
