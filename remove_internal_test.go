package ipc

import (
	"encoding/binary"
	"os"
	"testing"

	"github.com/heapipc/ipc/alloc"
	"github.com/heapipc/ipc/backend"
	"github.com/heapipc/ipc/channel"
	"github.com/heapipc/ipc/internal/mem"
	"github.com/heapipc/ipc/internal/sys"
	"github.com/heapipc/ipc/internal/testutil"
	"github.com/stretchr/testify/require"
)

// removalCrash is the panic a test's removeHook throws to stand for the
// remover's death.
type removalCrash struct{}

// crashRemovalAt runs remove, which must die (panic out) at the nth time
// it reaches the crash point.
func crashRemovalAt(t *testing.T, point string, nth int, remove func()) {
	t.Helper()
	reached := 0
	removeHook = func(p string) {
		if p == point {
			if reached++; reached == nth {
				panic(removalCrash{})
			}
		}
	}
	defer func() {
		removeHook = nil
		require.Equal(t, removalCrash{}, recover())
	}()
	remove()
	t.Fatal("the crash point was not reached")
}

// mailboxOnDefaults opens a buffer on the default backends (where
// semaphores are names of the system's) with mailbox id created and its
// end closed, and returns the mailbox's semaphore backend and names.
func mailboxOnDefaults(t *testing.T, id ChannelID) (*Buffer, *Handle, backend.SemaphoreBackend, [4]string) {
	t.Helper()
	b, err := Open(testutil.Name(t), WithSize(32<<20))
	require.NoError(t, err)
	t.Cleanup(func() { b.Destroy() })
	h, err := b.NewHandle()
	require.NoError(t, err)
	t.Cleanup(func() { h.Close() })
	q, err := h.Requester(id)
	require.NoError(t, err)
	require.NoError(t, q.Close())
	sems, err := b.region.Semaphores()
	require.NoError(t, err)
	return b, h, sems, channel.MailboxSemNames(b.region.Name(), id)
}

// TestFinishInterruptedRemoval: RemoveChannel dies (a panic out of the
// registry's critical section, with a dead identity as the remover)
// after freeing the first of five queued records and taking the second
// off the ring. The entry is left "removing", which no lookup sees. Then
// either Recover finishes the removal, or creating the same id again
// does (and Recover frees the record the dead remover held): every record
// and the control block come back to the heap, once each.
func TestFinishInterruptedRemoval(t *testing.T) {
	for _, finish := range []string{"recover", "recreate"} {
		t.Run(finish, func(t *testing.T) {
			b := heapBuf(t)
			ctx := t.Context()
			const id = 1
			// A first channel, so that the registry's entry block (never
			// given back) is in the baseline.
			baseline := func() uint64 {
				s, err := b.Stats()
				require.NoError(t, err)
				return s.Heap.FreeBytes
			}
			h0, err := b.NewHandle()
			require.NoError(t, err)
			p0, err := h0.Producer(id)
			require.NoError(t, err)
			require.NoError(t, p0.Close())
			require.NoError(t, h0.RemoveChannel(ctx, id))
			require.NoError(t, h0.Close())
			base := baseline()

			hp, err := b.NewHandle()
			require.NoError(t, err)
			p, err := hp.Producer(id)
			require.NoError(t, err)
			for i := range 5 {
				r, err := hp.Allocate(64)
				require.NoError(t, err)
				r.Bytes()[0] = byte(i)
				require.NoError(t, p.Send(ctx, r))
			}
			require.NoError(t, p.Close())

			self := b.recs.self
			b.recs.self = testutil.DeadIdentity(t) // the remover, as the holder of what it takes
			crashRemovalAt(t, "records:taken", 2, func() { hp.RemoveChannel(ctx, id) })
			b.recs.self = self
			_, err = b.reg.Lookup(id)
			require.ErrorIs(t, err, ErrNotExist, "a channel being removed is not found")
			st, err := b.Stats()
			require.NoError(t, err)
			require.Equal(t, uint64(1), st.Channels, "the interrupted removal still counts")

			switch finish {
			case "recover":
				_, err := b.Recover()
				require.NoError(t, err)
			case "recreate":
				// The new channel reuses the entry, finishing the removal
				// (the three records still queued), and is empty.
				c, err := hp.Consumer(id)
				require.NoError(t, err)
				_, err = c.TryReceive()
				require.ErrorIs(t, err, ErrWouldBlock)
				p2, err := hp.Producer(id)
				require.NoError(t, err)
				require.NoError(t, p2.Close())
				require.NoError(t, c.Close())
				// The record the dead remover held.
				_, err = b.Recover()
				require.NoError(t, err)
			}
			u, err := b.reg.FinishRemovals(ctx, nil)
			require.NoError(t, err)
			require.Zero(t, u.Removals, "nothing left to finish")
			require.NoError(t, hp.Close())
			require.NoError(t, b.Check())
			st, err = b.Stats()
			require.NoError(t, err)
			require.Zero(t, st.Channels)
			require.Zero(t, st.Records.LiveRecords, "every queued record freed")
			require.Equal(t, base, baseline(), "the records' slabs and the control block are back in the heap")
			require.True(t, sys.Alive(self))
		})
	}
}

// TestDestroyRemovesUnfinishedMailboxSems: a mailbox whose removal died
// before its semaphores were removed leaves an entry "removing", which
// the walks of ready channels skip; Destroy removes its semaphores all
// the same (on the default backends, where they are names of the
// system's).
func TestDestroyRemovesUnfinishedMailboxSems(t *testing.T) {
	const id = 7
	b, h, sems, names := mailboxOnDefaults(t, id)
	crashRemovalAt(t, "mailbox:sems", 1, func() { h.RemoveMailbox(t.Context(), id) })
	for _, name := range names {
		s, err := sems.Open(name, backend.SemOptions{})
		require.NoError(t, err, "semaphore %s still there before Destroy", name)
		s.Close()
	}
	require.NoError(t, h.Close())
	require.NoError(t, b.Destroy())
	for _, name := range names {
		_, err := sems.Open(name, backend.SemOptions{})
		require.ErrorIs(t, err, ErrNotExist, "semaphore %s left behind", name)
	}
}

// TestDamagedRemovingStateRefused: damage that marks a live channel
// "removing" does not get it freed under its ends: Recover, and an attach
// that would reuse the entry, report ErrCorrupt and leave the channel as
// it is; with the state mended it works on.
func TestDamagedRemovingStateRefused(t *testing.T) {
	b := heapBuf(t)
	ctx := t.Context()
	h, err := b.NewHandle()
	require.NoError(t, err)
	defer h.Close()
	const id = 3
	p, err := h.Producer(id)
	require.NoError(t, err)
	defer p.Close()
	c, err := h.Consumer(id)
	require.NoError(t, err)
	defer c.Close()
	r, err := h.Allocate(64)
	require.NoError(t, err)
	r.Bytes()[0] = 42
	require.NoError(t, p.Send(ctx, r))
	en, err := b.reg.Lookup(id)
	require.NoError(t, err)
	state := b.region.Bytes()[en.Off : en.Off+4]
	require.Equal(t, []byte{2, 0, 0, 0}, state, "the test knows where an entry's state is")
	before := controlBlock(t, b, en.Control)
	before = append([]byte(nil), before...)
	state[0] = 3 // "removing"

	_, err = b.Recover()
	require.ErrorIs(t, err, ErrCorrupt)
	h2, err := b.NewHandle()
	require.NoError(t, err)
	defer h2.Close()
	_, err = h2.Producer(id)
	require.ErrorIs(t, err, ErrCorrupt)
	require.Equal(t, before, controlBlock(t, b, en.Control), "the control block is untouched and still allocated")

	state[0] = 2
	got, err := c.Receive(ctx)
	require.NoError(t, err)
	require.Equal(t, byte(42), got.Bytes()[0])
	require.NoError(t, h.Free(got))
	require.NoError(t, b.Check())
}

// TestRecoverRemovesHalfCreatedMailboxSems: a mailbox whose creator died
// before publishing it (its semaphores made, its entry still
// "initializing") has its semaphores removed when Recover frees its
// entry, which Destroy would no longer see.
func TestRecoverRemovesHalfCreatedMailboxSems(t *testing.T) {
	const id = 9
	b, _, sems, names := mailboxOnDefaults(t, id)
	en, err := b.reg.Lookup(id)
	require.NoError(t, err)
	// The entry as a creator that died left it.
	raw := b.region.Bytes()[en.Off : en.Off+48]
	require.Equal(t, []byte{2, 0, 0, 0}, raw[:4], "the test knows where an entry's state is")
	raw[0] = 1
	binary.LittleEndian.PutUint64(raw[40:], uint64(testutil.DeadIdentity(t)))
	_, err = b.Recover()
	require.NoError(t, err)
	for _, name := range names {
		_, err := sems.Open(name, backend.SemOptions{})
		require.ErrorIs(t, err, ErrNotExist, "semaphore %s left behind", name)
	}
	_, err = b.reg.Lookup(id)
	require.ErrorIs(t, err, ErrNotExist)
	require.NoError(t, b.Check())
}

// TestCheckControlKind: Check reports a channel whose Control word names
// an extent that is not a control block (alloc.KindControl).
func TestCheckControlKind(t *testing.T) {
	b := heapBuf(t)
	_, err := b.Static(t.Context(), "cfg", 256, nil)
	require.NoError(t, err)
	var en *channel.Entry
	require.NoError(t, b.reg.Each(func(e *channel.Entry) error { en = e; return nil }))
	require.NotNil(t, en)
	require.NoError(t, b.Check())
	plain, err := b.heap.Alloc(256)
	require.NoError(t, err)
	w, err := mem.Uint64(b.region.Bytes(), en.Off+24)
	require.NoError(t, err)
	require.Equal(t, uint64(en.Control), w.Load(), "the test knows where an entry's Control is")
	w.Store(uint64(plain))
	require.ErrorIs(t, b.Check(), ErrCorrupt)
	w.Store(uint64(en.Control))
	require.NoError(t, b.heap.Free(plain))
	require.NoError(t, b.Check())
}

// TestOpenOverCrashedDestroy: a Destroy killed after it marked the
// region destroyed and before it removed the names (region, semaphores)
// leaves a name that a new Open of the same name takes over (it used to
// fail with ErrDestroyed until ipc.Remove), on every backend pair; the
// new buffer works and the old one's holders keep their mapping.
func TestOpenOverCrashedDestroy(t *testing.T) {
	for _, seg := range []string{"posix", "sysv"} {
		for _, sem := range []string{"posix", "sysv"} {
			t.Run(seg+","+sem, func(t *testing.T) {
				name := testutil.Name(t)
				old, err := Open(name, WithBackends(seg, sem), WithSize(4<<20))
				require.NoError(t, err)
				old.region.MarkDestroyed() // the destroyer dies here
				b, err := Open(name, WithBackends(seg, sem), WithSize(4<<20))
				require.NoError(t, err)
				h := testHandle(t, b)
				_, p, c := loopback(t, b, 1)
				r, err := h.Allocate(64)
				require.NoError(t, err)
				require.NoError(t, p.Send(t.Context(), r))
				got, err := c.Receive(t.Context())
				require.NoError(t, err)
				require.NoError(t, h.Free(got))
				require.NoError(t, b.Check())
				require.NoError(t, old.Close())
				require.NoError(t, p.Close())
				require.NoError(t, c.Close())
				require.NoError(t, h.Close())
				require.NoError(t, b.Destroy())
			})
		}
	}
}

// TestRemoveUnopenableRemovesMailboxSems: Remove of a buffer that cannot
// be opened (a damaged header) removes its mailboxes' semaphores too:
// posix ones found by name in /dev/shm, sysv ones by the Data of their
// sets (the mailbox's id, in parts, and the semaphore's number). It
// removed only the heap's and the registry's, and left the mailboxes' for
// good (no later Remove found the buffer). Another buffer whose name
// starts with this one's ".mb" keeps its objects.
func TestRemoveUnopenableRemovesMailboxSems(t *testing.T) {
	for _, kind := range []string{"posix", "sysv"} {
		t.Run(kind, func(t *testing.T) {
			name := testutil.Name(t)
			open := func(name string) *Buffer {
				b, err := Open(name, WithBackends("posix", kind), WithSize(4<<20))
				require.NoError(t, err)
				return b
			}
			sems, err := backend.Semaphores(backend.Kind(kind))
			require.NoError(t, err)
			has := func(n string) bool {
				s, err := sems.Open(n, backend.SemOptions{})
				if err == nil {
					require.NoError(t, s.Close())
					return true
				}
				require.ErrorIs(t, err, ErrNotExist, n)
				return false
			}
			b := open(name)
			t.Cleanup(func() { Remove(name, "posix", kind) })
			other := open(name + ".mb5")
			defer other.Destroy()
			h, err := b.NewHandle()
			require.NoError(t, err)
			ids := []ChannelID{5, 0xabc, 1<<63 | 0x1234_5678_9abc}
			for _, id := range ids {
				q, err := h.Requester(id, WithWindow(4096))
				require.NoError(t, err)
				require.NoError(t, q.Close())
			}
			oh, err := other.NewHandle()
			require.NoError(t, err)
			oq, err := oh.Requester(1, WithWindow(4096))
			require.NoError(t, err)
			require.NoError(t, oq.Close())
			require.NoError(t, oh.Close())
			require.NoError(t, h.Close())
			require.NoError(t, b.Close())

			// Damage a checksummed header byte in the file: Open says
			// ErrCorrupt.
			path := backend.ShmDir + "/" + name
			f, err := os.OpenFile(path, os.O_RDWR, 0)
			require.NoError(t, err)
			var one [1]byte
			_, err = f.ReadAt(one[:], 100)
			require.NoError(t, err)
			_, err = f.WriteAt([]byte{one[0] ^ 0xff}, 100)
			require.NoError(t, err)
			require.NoError(t, f.Close())
			_, err = Open(name, AttachOnly(), WithBackends("posix", kind))
			require.Error(t, err)

			require.NoError(t, Remove(name, "posix", kind))
			for _, id := range ids {
				for _, n := range channel.MailboxSemNames(name, id) {
					require.False(t, has(n), "mailbox semaphore %s left behind", n)
				}
			}
			_, err = os.Stat(path)
			require.ErrorIs(t, err, os.ErrNotExist)
			require.NoError(t, other.Check(), "the other buffer is whole")
			for _, n := range channel.MailboxSemNames(name+".mb5", 1) {
				require.True(t, has(n), "the other buffer's semaphore %s", n)
			}
		})
	}
}

// TestMailboxSemData: a mailbox semaphore's Data give back its mailbox's
// id and its number, for ids that fill each 15-bit part; Data that are
// not a mailbox semaphore's are told apart.
func TestMailboxSemData(t *testing.T) {
	for _, id := range []ChannelID{0, 1, 0x7fff, 0x8000, 1<<60 - 1, 1 << 60, ^ChannelID(0)} {
		for i := range 4 {
			d := channel.MailboxSemData(id, i)
			for _, v := range d {
				require.True(t, v >= 0 && v <= 32767, "%d fits a sysv semaphore", v)
			}
			gid, gi, ok := channel.MailboxSemOf(d)
			require.True(t, ok)
			require.Equal(t, id, gid)
			require.Equal(t, i, gi)
		}
	}
	good := channel.MailboxSemData(7, 1)
	for _, bad := range [][]int{nil, good[:6], {1, 0, 0, 0, 0, 0, 0}, {0x6d62, 0, 0, 0, 0, 0x10, 0}, {0x6d62, 0, 0, 0, 0, 0, 4}, {0x6d62, -1, 0, 0, 0, 0, 0}} {
		_, _, ok := channel.MailboxSemOf(bad)
		require.False(t, ok, "%v", bad)
	}
}

// TestRemoveWithOtherSemaphoreKind: Remove asked for semaphores of
// another kind than the buffer's destroys it with the kind its header
// records: it removed the segment, looked for semaphores of the kind
// asked, and left the buffer's own (heap, registry, mailboxes) behind
// while saying "removed".
func TestRemoveWithOtherSemaphoreKind(t *testing.T) {
	for _, kinds := range [][2]string{{"posix", "sysv"}, {"sysv", "posix"}} {
		made, asked := kinds[0], kinds[1]
		t.Run(made+" asked as "+asked, func(t *testing.T) {
			name := testutil.Name(t)
			b, err := Open(name, WithBackends("posix", made), WithSize(4<<20))
			require.NoError(t, err)
			t.Cleanup(func() { Remove(name, "posix", made) })
			h, err := b.NewHandle()
			require.NoError(t, err)
			q, err := h.Requester(3, WithWindow(4096))
			require.NoError(t, err)
			require.NoError(t, q.Close())
			require.NoError(t, h.Close())
			sems, err := b.region.Semaphores()
			require.NoError(t, err)
			require.NoError(t, b.Close())

			require.NoError(t, Remove(name, "posix", asked))
			mb := channel.MailboxSemNames(name, 3)
			names := append(mb[:], name+alloc.SemSuffix, name+".reg")
			for _, n := range names {
				_, err := sems.Open(n, backend.SemOptions{})
				require.ErrorIs(t, err, ErrNotExist, "semaphore %s left behind", n)
			}
			_, err = os.Stat(backend.ShmDir + "/" + name)
			require.ErrorIs(t, err, os.ErrNotExist)
		})
	}
}
