package channel

import (
	"context"
	"fmt"
	"io"
	"testing"
	"time"

	"github.com/heapipc/ipc/backend"
	"github.com/heapipc/ipc/internal/errs"
	"github.com/heapipc/ipc/internal/mem"
	"github.com/heapipc/ipc/internal/testutil"
	"github.com/stretchr/testify/require"
)

// spEnds attaches a writer and a reader to sp, closed when the test ends.
func spEnds(t *testing.T, sp *Speculo) (*SpeculoWriter, *SpeculoReader) {
	t.Helper()
	w, err := sp.AttachWriter()
	require.NoError(t, err)
	t.Cleanup(func() { w.Close() })
	r, err := sp.AttachReader()
	require.NoError(t, err)
	t.Cleanup(func() { r.Close() })
	return w, r
}

// TestSpeculoNotifyKeepsLateSleeper: a reader arms Sleepers while the
// writer is waking an earlier one (after the writer saw the flag, before
// it cleared it) and loads Notify after the writer bumped it. The
// writer's clear must not leave it parked with Sleepers clear: the next
// commit would skip the wake (a lost wake-up, made good only by the
// check interval).
func TestSpeculoNotifyKeepsLateSleeper(t *testing.T) {
	f := newSpFix(t, backend.Heap, 4<<20)
	sp, _ := f.area(t, 1, 4096, SpeculoConfig{Slots: 2}, nil)
	sp.wait.Spin = -1                 // park at once
	sp.wait.CheckInterval = time.Hour // only a wake brings it back
	w, r := spEnds(t, sp)
	put(t, w, 0, 10, 1, 0)
	require.Len(t, drain(t, r), 1)

	ctx, cancel := context.WithCancel(testutil.Context(t, time.Minute))
	armed, notified, atPark, done := make(chan struct{}), make(chan struct{}), make(chan uint32, 4), make(chan error, 1)
	woke, first, waited := false, true, false // the writer's, the reader's, the test's
	defer func() {
		cancel() // a failed test does not leave the reader parked
		if woke && !waited {
			<-done
		}
		speculoHook = nil
	}()
	speculoHook = func(p string) {
		switch p {
		case "notify:seen": // the writer, about to clear the flag
			if !woke {
				woke = true
				go func() {
					// The reader takes the chunk being notified, then waits.
					c, err := r.TryNext()
					if err == nil && c.Seq != 2 {
						err = fmt.Errorf("got chunk %d", c.Seq)
					}
					if err == nil {
						err = r.Wait(ctx)
					}
					done <- err
				}()
				<-armed
			}
		case "wait:armed": // the reader: flag set, Notify not loaded yet
			if first {
				first = false
				close(armed)
				<-notified
			}
		case "wait:park":
			atPark <- sp.cb.Sleepers.Load()
		}
	}
	sp.cb.Sleepers.Store(1) // an earlier reader is parked
	put(t, w, 0, 10, 2, 0)
	close(notified)
	sl := <-atPark
	require.EqualValues(t, 1, sl, "a reader parks with Sleepers set, or the next commit does not wake it")
	put(t, w, 0, 10, 3, 0)
	waited = true
	require.NoError(t, <-done, "woken by the commit")
	require.Len(t, drain(t, r), 1)
}

// TestSpeculoWaitAfterClose: a reader waiting when the writer closes its
// end cleanly, and one that starts waiting after that, get io.EOF once
// they have read what was committed, instead of waiting for a writer
// that may never come (a dead writer is ErrPeerDead). A later writer's
// chunks are read as before.
func TestSpeculoWaitAfterClose(t *testing.T) {
	f := newSpFix(t, backend.Heap, 4<<20)
	sp, _ := f.area(t, 1, 4096, SpeculoConfig{Slots: 2}, nil)
	sp.wait.Spin = -1                 // park at once
	sp.wait.CheckInterval = time.Hour // only a wake brings it back
	r, err := sp.AttachReader()
	require.NoError(t, err)
	defer r.Close()
	w, err := sp.AttachWriter()
	require.NoError(t, err)
	ctx := testutil.Context(t, time.Minute)
	got := nextParked(sp, r, ctx)
	require.NoError(t, w.Close())
	require.ErrorIs(t, (<-got).err, io.EOF, "the reader waiting when the writer closed")
	require.ErrorIs(t, r.Wait(ctx), io.EOF, "a Wait that starts after the close")

	w, err = sp.AttachWriter()
	require.NoError(t, err)
	put(t, w, 0, 10, 1, 0)
	require.NoError(t, w.Close())
	c, err := r.Next(ctx)
	require.NoError(t, err, "what was committed before the close comes first")
	require.EqualValues(t, 1, c.Seq)
	_, err = r.Next(ctx)
	require.ErrorIs(t, err, io.EOF)

	w, err = sp.AttachWriter()
	require.NoError(t, err)
	defer w.Close()
	put(t, w, 0, 10, 2, 0)
	c, err = r.Next(ctx)
	require.NoError(t, err, "a later writer's chunk")
	require.EqualValues(t, 2, c.Seq)
}

// TestSpeculoPinReleasedOnErrors: a reader's pin does not outlive a call
// that fails: a move to a damaged current extent (ErrCorrupt) and a
// canceled Wait leave its slot unpinned, so the writer frees the extents
// it was on.
func TestSpeculoPinReleasedOnErrors(t *testing.T) {
	f := newSpFix(t, backend.Heap, 4<<20)
	sp, _ := f.area(t, 1, 4096, SpeculoConfig{Slots: 2, Threshold: 0}, nil)
	w, r := spEnds(t, sp)
	put(t, w, 1, 10, 1, 0)
	require.Len(t, drain(t, r), 1)
	require.EqualValues(t, 1, r.slot.Epoch.Load(), "pinned on the first extent")
	require.NoError(t, w.GC())

	cur, err := sp.openExtent(sp.cb.Current.Load())
	require.NoError(t, err)
	cur.hdr.Magic.Store(0) // damaged
	_, err = r.TryNext()
	require.ErrorIs(t, err, errs.ErrCorrupt)
	require.Zero(t, r.slot.Epoch.Load(), "no pin left by the failed move")
	n, err := w.Reclaim()
	require.NoError(t, err)
	require.Equal(t, 1, n, "the extent the reader was on is freed")
	cur.hdr.Magic.Store(spExtentMagic)

	put(t, w, 1, 10, 2, 0)
	require.Len(t, drain(t, r), 1)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	require.ErrorIs(t, r.Wait(ctx), context.Canceled)
	require.Zero(t, r.slot.Epoch.Load(), "no pin left by the canceled Wait")
	require.NoError(t, w.GC())
	st, err := sp.Stats()
	require.NoError(t, err)
	require.Equal(t, 1, st.Extents, "the GC freed the extent the reader was on")
	require.Len(t, drain(t, r), 0, "and the reader goes on where it was")
}

// TestSpeculoScribbledPending: Pending overwritten with the offset of a
// retired extent of the chain, one a live reader is on. No crash leaves
// that (a pending extent is newer than the current one), so it is
// damage: the next writer must refuse it (ErrCorrupt) instead of freeing
// the extent under the reader, Check must report it, and removing the
// area must free every extent once.
func TestSpeculoScribbledPending(t *testing.T) {
	f := newSpFix(t, backend.Heap, 4<<20)
	before := f.free(t)
	spec := Spec{Type: TypeSpeculo, Size: 4096, Control: SpeculoControlSize(2),
		Init: func(_ mem.Off, b []byte) error { return InitSpeculo(b, 4096, SpeculoConfig{Slots: 2, Threshold: 0}) }}
	en, _, err := f.reg.LookupOrCreate(context.Background(), 1, spec)
	require.NoError(t, err)
	sp, err := OpenSpeculo(f.r, f.heap, en, SpeculoEnv{})
	require.NoError(t, err)
	w, err := sp.AttachWriter()
	require.NoError(t, err)
	r, err := sp.AttachReader()
	require.NoError(t, err)
	put(t, w, 1, 200, 1, 0)
	c, err := r.TryNext() // pins the first extent
	require.NoError(t, err)
	require.NoError(t, w.GC())
	require.NoError(t, w.GC())
	oldest := sp.cb.Oldest.Load()
	x, err := sp.openExtent(oldest)
	require.NoError(t, err)
	middle := x.hdr.Next.Load()
	sp.cb.Writer.Store(uint64(testutil.DeadIdentity(t))) // the writer dies

	for _, at := range []uint64{oldest, middle} {
		sp.cb.Pending.Store(at)
		_, err = sp.AttachWriter()
		require.ErrorIs(t, err, errs.ErrCorrupt, "Pending names extent %#x of the chain", at)
		_, err = sp.openExtent(at)
		require.NoError(t, err, "the extent is still there")
		_, err = verifyPayload(c.Data)
		require.NoError(t, err, "the reader's view is intact")
		require.ErrorIs(t, sp.Check(), errs.ErrCorrupt)
	}
	st, err := sp.Stats()
	require.NoError(t, err)
	require.Equal(t, 3, st.Extents)

	sp.cb.Pending.Store(oldest)
	r.Close()
	removed, err := f.reg.Remove(context.Background(), en, sp.Idle, sp.FreeExtents)
	require.True(t, removed)
	require.ErrorIs(t, err, errs.ErrCorrupt, "the damage is reported")
	require.Equal(t, before, f.free(t), "every extent freed, once")
	_ = w
}
