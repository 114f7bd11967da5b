package tests

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"math/rand/v2"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	ipc "github.com/heapipc/ipc"
	"github.com/heapipc/ipc/alloc"
	"github.com/heapipc/ipc/backend"
	"github.com/heapipc/ipc/channel"
	"github.com/heapipc/ipc/internal/testutil"
	"github.com/stretchr/testify/require"
)

const mailboxID ipc.ChannelID = 60

// mbAnswer is what the test responders reply: the request's CRC, then the
// request itself (copied, so it stays fast under the race detector).
func mbAnswer(req []byte) []byte {
	out := make([]byte, 4+len(req))
	binary.LittleEndian.PutUint32(out, crc32.ChecksumIEEE(req))
	copy(out[4:], req)
	return out
}

func checkAnswer(t *testing.T, req, reply []byte) {
	t.Helper()
	require.Len(t, reply, 4+len(req))
	require.Equal(t, crc32.ChecksumIEEE(req), binary.LittleEndian.Uint32(reply), "the responder saw the request whole")
	require.Equal(t, crc32.ChecksumIEEE(req), crc32.ChecksumIEEE(reply[4:]), "the reply arrived whole")
}

func randomBytes(rng *rand.Rand, n int) []byte {
	b := make([]byte, n)
	for i := 0; i+8 <= n; i += 8 {
		binary.LittleEndian.PutUint64(b[i:], rng.Uint64())
	}
	for i := n &^ 7; i < n; i++ {
		b[i] = byte(rng.Uint32())
	}
	return b
}

func mbOptions(t *testing.T) []ipc.MailboxOption {
	if v := os.Getenv("HIPC_WIN"); v != "" {
		return []ipc.MailboxOption{ipc.WithWindow(envInt(t, "HIPC_WIN"))}
	}
	return nil
}

// mbSemValues reads the four semaphores of mailbox id of the buffer.
func mbSemValues(t *testing.T, b *ipc.Buffer, id ipc.ChannelID) [4]int {
	t.Helper()
	_, semKind := b.Backends()
	k, err := backend.ParseKind(semKind)
	require.NoError(t, err)
	sems, err := backend.Semaphores(k)
	require.NoError(t, err)
	var v [4]int
	for i, name := range channel.MailboxSemNames(b.Name(), id) {
		s, err := sems.Open(name, backend.SemOptions{})
		require.NoError(t, err)
		v[i], err = s.Value()
		require.NoError(t, err)
		s.Close()
	}
	return v
}

// TestChildMailbox is the other process of the mailbox tests; HIPC_MODE
// says what it does.
func TestChildMailbox(t *testing.T) {
	testutil.ChildOnly(t)
	ctx := ctxFor(t)
	mode := os.Getenv("HIPC_MODE")
	if mode == "crash-run" {
		crashRun(t, ctx)
		return
	}
	b := attach(t)
	h := newHandle(t, b)
	switch mode {
	case "serve": // answers until the requester closes
		r, err := h.Responder(mailboxID, mbOptions(t)...)
		require.NoError(t, err)
		testutil.Say("serving")
		err = r.Serve(ctx, func(_ context.Context, req []byte) ([]byte, error) {
			if bytes.HasPrefix(req, []byte("slow")) {
				time.Sleep(200 * time.Millisecond)
			}
			if bytes.Equal(req, []byte("fail")) {
				return nil, errors.New("the handler refuses")
			}
			return mbAnswer(req), nil
		})
		if err != nil && strings.Contains(err.Error(), "the handler refuses") {
			err = r.Serve(ctx, func(_ context.Context, req []byte) ([]byte, error) { return mbAnswer(req), nil })
		}
		require.NoError(t, err)
		require.NoError(t, r.Close())
	case "request-die": // killed in the middle of sending a large request
		q, err := h.Requester(mailboxID, mbOptions(t)...)
		require.NoError(t, err)
		testutil.Say("sending")
		q.Request(ctx, make([]byte, 10<<20))
		time.Sleep(time.Hour)
	case "reply-die": // killed in the middle of sending a large reply
		r, err := h.Responder(mailboxID, mbOptions(t)...)
		require.NoError(t, err)
		_, err = r.Receive(ctx, nil)
		require.NoError(t, err)
		r.ReplyFrom(ctx, 10<<20, &stallingReader{left: 64 << 10})
		time.Sleep(time.Hour)
	default:
		t.Fatalf("unknown mode %q", mode)
	}
}

// stallingReader gives left bytes, then says "mid" and blocks forever.
type stallingReader struct{ left int }

func (s *stallingReader) Read(p []byte) (int, error) {
	if s.left == 0 {
		testutil.Say("mid")
		select {}
	}
	n := min(len(p), s.left)
	clear(p[:n])
	s.left -= n
	return n, nil
}

// crashRun opens (HIPC_CREATE: creates) the buffer, starts an exchange
// between a requester and a responder of its own and stops it half-way:
// the responder is inside its turn, filling the reply window (it holds
// the reply direction's unit), and the requester waits for the reply. It
// says "mid" and waits for the SIGKILL.
func crashRun(t *testing.T, ctx context.Context) {
	name := testutil.Env(t, envBuf)
	opts := []ipc.Option{ipc.WithCheckInterval(20 * time.Millisecond)}
	if os.Getenv("HIPC_CREATE") != "" {
		opts = append(opts, ipc.WithSize(64<<20), ipc.CreateOnly())
	} else {
		opts = append(opts, ipc.AttachOnly())
	}
	b, err := ipc.Open(name, opts...)
	require.NoError(t, err)
	r, err := newHandle(t, b).Responder(mailboxID, ipc.WithWindow(4096))
	require.NoError(t, err)
	q, err := newHandle(t, b).Requester(mailboxID)
	require.NoError(t, err)
	go func() {
		if _, err := r.Receive(ctx, nil); err != nil {
			panic(err)
		}
		r.ReplyFrom(ctx, 1<<20, &stallingReader{left: 4096 + 100})
	}()
	q.Request(ctx, make([]byte, 3*4096+5))
	time.Sleep(time.Hour)
}

// TestMailboxSizesAcrossProcesses: messages of 0, 1, window-1, window,
// window+1 bytes and 10 MiB to a responder in another process, and
// replies 4 bytes longer, all checksummed, through the default 4 MiB
// window.
func TestMailboxSizesAcrossProcesses(t *testing.T) {
	b, name := openBuf(t)
	q, err := newHandle(t, b).Requester(mailboxID)
	require.NoError(t, err)
	child := testutil.StartChild(t, "TestChildMailbox", envBuf+"="+name, "HIPC_MODE=serve")
	require.Equal(t, "serving", child.Line(t, time.Minute))
	_, err = newHandle(t, b).Responder(mailboxID)
	require.ErrorIs(t, err, ipc.ErrBusy, "one responder: the child's")
	ctx := ctxFor(t)
	w := ipc.DefaultWindow
	rng := rand.New(rand.NewPCG(5, 6))
	var reply []byte
	for _, n := range []int{0, 1, w - 1, w, w + 1, 10 << 20} {
		msg := randomBytes(rng, n)
		reply, err = q.RequestInto(ctx, msg, reply)
		require.NoError(t, err, "%d bytes", n)
		checkAnswer(t, msg, reply)
	}
	require.Equal(t, [4]int{1, 0, 1, 0}, mbSemValues(t, b, mailboxID), "every unit back where it started")
	require.NoError(t, b.Check())
	require.NoError(t, q.Close())
	child.MustSucceed(t, time.Minute) // Serve ends when the requester closes
	require.ErrorIs(t, newHandle(t, b).RemoveMailbox(ctx, mailboxID), ipc.ErrNotExist, "removed with both ends closed")
}

// TestMailboxAlternationStress sends thousands of messages of random sizes
// through a 256-byte window to a responder in another process. Every
// chunk's header is checked on arrival (a lost, doubled or overwritten
// turn would be ErrCorrupt or a bad checksum), and at the end every
// semaphore holds its initial value: writes and reads alternated.
func TestMailboxAlternationStress(t *testing.T) {
	seed := uint64(time.Now().UnixNano())
	t.Logf("seed %d", seed)
	b, name := openBuf(t)
	q, err := newHandle(t, b).Requester(mailboxID, ipc.WithWindow(256))
	require.NoError(t, err)
	child := testutil.StartChild(t, "TestChildMailbox", envBuf+"="+name, "HIPC_MODE=serve", "HIPC_WIN=256")
	require.Equal(t, "serving", child.Line(t, time.Minute))
	ctx := ctxFor(t)
	n := 3000
	if testutil.Race {
		n = 1000
	}
	rng := rand.New(rand.NewPCG(seed, 7))
	var reply []byte
	for i := 0; i < n; i++ {
		msg := randomBytes(rng, rng.IntN(2000))
		reply, err = q.RequestInto(ctx, msg, reply)
		require.NoError(t, err)
		checkAnswer(t, msg, reply)
	}
	require.Equal(t, [4]int{1, 0, 1, 0}, mbSemValues(t, b, mailboxID))
	require.NoError(t, q.Close())
	child.MustSucceed(t, time.Minute)
}

// TestMailboxTimeouts: a request with nobody serving times out; one whose
// handler is slow times out, and the late reply is dropped so the next
// request gets its own; a failing handler aborts its request only.
func TestMailboxTimeouts(t *testing.T) {
	b, name := openBuf(t)
	q, err := newHandle(t, b).Requester(mailboxID, ipc.WithWindow(1024))
	require.NoError(t, err)
	ctx := ctxFor(t)
	short := func() context.Context {
		c, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
		t.Cleanup(cancel)
		return c
	}
	_, err = q.Request(short(), []byte("anyone?"))
	require.ErrorIs(t, err, context.DeadlineExceeded)
	require.Contains(t, err.Error(), fmt.Sprintf("mailbox %d", mailboxID))

	child := testutil.StartChild(t, "TestChildMailbox", envBuf+"="+name, "HIPC_MODE=serve", "HIPC_WIN=1024")
	require.Equal(t, "serving", child.Line(t, time.Minute))
	_, err = q.Request(short(), []byte("slow request"))
	require.ErrorIs(t, err, context.DeadlineExceeded)
	for _, msg := range [][]byte{[]byte("fast"), bytes.Repeat([]byte("big"), 1000)} {
		reply, err := q.Request(ctx, msg)
		require.NoError(t, err)
		checkAnswer(t, msg, reply)
	}
	_, err = q.Request(ctx, []byte("fail"))
	require.ErrorIs(t, err, ipc.ErrAborted)
	reply, err := q.Request(ctx, []byte("after"))
	require.NoError(t, err)
	checkAnswer(t, []byte("after"), reply)
	require.NoError(t, q.Close())
	child.MustSucceed(t, time.Minute)
}

// TestMailboxPeerKilledMidMessage: a requester SIGKILLed half-way through
// a 10 MiB request (the responder holds its first chunk) gives the
// responder ErrPeerDead; a responder SIGKILLed half-way through a 10 MiB
// reply gives the requester ErrPeerDead. A new responder then takes the
// dead one's end over and the mailbox works again.
func TestMailboxPeerKilledMidMessage(t *testing.T) {
	b, name := openBuf(t)
	ctx := ctxFor(t)
	const win = 64 << 10
	r, err := newHandle(t, b).Responder(mailboxID, ipc.WithWindow(win))
	require.NoError(t, err)
	child := testutil.StartChild(t, "TestChildMailbox", envBuf+"="+name, "HIPC_MODE=request-die", "HIPC_WIN="+strconv.Itoa(win))
	require.Equal(t, "sending", child.Line(t, time.Minute))
	require.Eventually(t, func() bool { return mbSemValues(t, b, mailboxID)[1] == 1 }, time.Minute, time.Millisecond,
		"the first chunk of the request is in the window")
	child.Kill()
	_, err = r.Receive(ctx, nil)
	require.ErrorIs(t, err, ipc.ErrPeerDead, "the requester died mid-message")
	require.NoError(t, r.Close())

	q, err := newHandle(t, b).Requester(mailboxID) // takes the dead one's end over
	require.NoError(t, err)
	child = testutil.StartChild(t, "TestChildMailbox", envBuf+"="+name, "HIPC_MODE=reply-die", "HIPC_WIN="+strconv.Itoa(win))
	done := make(chan error, 1)
	go func() { _, err := q.Request(ctx, []byte("give me 10 MiB")); done <- err }()
	require.Equal(t, "mid", child.Line(t, time.Minute))
	child.Kill()
	select {
	case err := <-done:
		require.ErrorIs(t, err, ipc.ErrPeerDead, "the responder died mid-reply")
	case <-time.After(time.Minute):
		t.Fatal("the requester did not learn that the responder died")
	}

	// The dead responder held the reply window's unit: the next one
	// renews the semaphores, and exchanges work.
	child = testutil.StartChild(t, "TestChildMailbox", envBuf+"="+name, "HIPC_MODE=serve", "HIPC_WIN="+strconv.Itoa(win))
	require.Equal(t, "serving", child.Line(t, time.Minute))
	for _, n := range []int{0, win + 1} {
		msg := bytes.Repeat([]byte{byte(n)}, n)
		reply, err := q.Request(ctx, msg)
		require.NoError(t, err)
		checkAnswer(t, msg, reply)
	}
	require.Equal(t, [4]int{1, 0, 1, 0}, mbSemValues(t, b, mailboxID))
	require.NoError(t, q.Close())
	child.MustSucceed(t, time.Minute)
	require.NoError(t, b.Check())
}

// exchange checks a few request sizes through a fresh requester and
// responder of mailbox id.
func exchange(t *testing.T, b *ipc.Buffer) {
	t.Helper()
	ctx := ctxFor(t)
	r, err := newHandle(t, b).Responder(mailboxID)
	require.NoError(t, err)
	q, err := newHandle(t, b).Requester(mailboxID)
	require.NoError(t, err)
	done := make(chan error, 1)
	go func() {
		done <- r.Serve(ctx, func(_ context.Context, req []byte) ([]byte, error) { return mbAnswer(req), nil })
	}()
	rng := rand.New(rand.NewPCG(8, 9))
	for _, n := range []int{0, 1, 4095, 4096, 4097, 100 << 10} {
		msg := randomBytes(rng, n)
		reply, err := q.Request(ctx, msg)
		require.NoError(t, err, "%d bytes", n)
		checkAnswer(t, msg, reply)
	}
	require.Equal(t, [4]int{1, 0, 1, 0}, mbSemValues(t, b, mailboxID))
	require.NoError(t, q.Close())
	require.NoError(t, <-done)
	require.NoError(t, r.Close())
}

// TestMailboxStaleSemaphoresAfterKilledRun: a run is SIGKILLed with a
// reply half-way (the dead responder holds the reply window's unit, so
// the semaphores left behind are 1,0,0,0: reusing them would hang the
// next reply). The next run attaches to the surviving buffer: the
// semaphores are renewed, not reused, and exchanges work.
func TestMailboxStaleSemaphoresAfterKilledRun(t *testing.T) {
	b, name := openBuf(t)
	child := testutil.StartChild(t, "TestChildMailbox", envBuf+"="+name, "HIPC_MODE=crash-run")
	require.Equal(t, "mid", child.Line(t, time.Minute))
	child.Kill()
	require.Equal(t, [4]int{1, 0, 0, 0}, mbSemValues(t, b, mailboxID), "the killed run's semaphores: a unit lost")
	exchange(t, b)
	require.NoError(t, b.Check())
}

// TestMailboxStaleSemaphoresAfterKilledBuffer: the killed run's buffer
// segment is gone (removed by name, as a hand clean-up after a crash may do)
// while the mailbox's semaphores stay behind, lost unit and all. A new
// buffer of the same name creates the mailbox: the stale semaphores are
// replaced, not reused; Destroy removes them (the leak check of TestMain
// verifies it).
func TestMailboxStaleSemaphoresAfterKilledBuffer(t *testing.T) {
	name := testutil.Name(t)
	child := testutil.StartChild(t, "TestChildMailbox", envBuf+"="+name, "HIPC_MODE=crash-run", "HIPC_CREATE=1")
	require.Equal(t, "mid", child.Line(t, time.Minute))
	child.Kill()
	segs, err := backend.Segments(backend.DefaultSegmentKind())
	require.NoError(t, err)
	require.NoError(t, segs.Remove(name))
	semKind := backend.DefaultSemaphoreKind()
	sems, err := backend.Semaphores(semKind)
	require.NoError(t, err)
	// The buffer's own semaphores, by name (ipc.Remove would find the
	// mailbox's too, by their names, on POSIX semaphores).
	require.NoError(t, sems.Remove(name+alloc.SemSuffix))
	require.NoError(t, sems.Remove(name+".reg"))
	names := channel.MailboxSemNames(name, mailboxID)
	stale, err := sems.Open(names[2], backend.SemOptions{})
	require.NoError(t, err, "the killed run's semaphores survive the buffer")
	v, err := stale.Value()
	require.NoError(t, err)
	require.Zero(t, v, "with the reply window's unit lost")
	stale.Close()

	b, err := ipc.Open(name, ipc.WithSize(64<<20), ipc.WithCheckInterval(20*time.Millisecond), ipc.CreateOnly())
	require.NoError(t, err)
	defer func() {
		require.NoError(t, b.Check())
		require.NoError(t, b.Destroy())
		for _, n := range names {
			_, err := sems.Open(n, backend.SemOptions{})
			require.ErrorIs(t, err, ipc.ErrNotExist, "Destroy removes the mailbox's semaphores")
		}
	}()
	exchange(t, b)
}
