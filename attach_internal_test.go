package ipc

import (
	"context"
	"io"
	"testing"
	"time"

	"github.com/heapipc/ipc/channel"
	"github.com/heapipc/ipc/internal/mem"
	"github.com/stretchr/testify/require"
)

// endKind opens one end of a channel type; ends[0] and ends[1] are its
// two roles.
type endKind struct {
	name string
	ends [2]func(h *Handle, id ChannelID) (io.Closer, error)
}

func attachKinds() []endKind {
	return []endKind{
		{"record", [2]func(*Handle, ChannelID) (io.Closer, error){
			func(h *Handle, id ChannelID) (io.Closer, error) { return h.Producer(id) },
			func(h *Handle, id ChannelID) (io.Closer, error) { return h.Consumer(id) },
		}},
		{"mpsc", [2]func(*Handle, ChannelID) (io.Closer, error){
			func(h *Handle, id ChannelID) (io.Closer, error) { return h.MPSCProducer(id) },
			func(h *Handle, id ChannelID) (io.Closer, error) { return h.MPSCConsumer(id) },
		}},
		{"stream", [2]func(*Handle, ChannelID) (io.Closer, error){
			func(h *Handle, id ChannelID) (io.Closer, error) { return h.StreamWriter(id) },
			func(h *Handle, id ChannelID) (io.Closer, error) { return h.StreamReader(id) },
		}},
		{"mailbox", [2]func(*Handle, ChannelID) (io.Closer, error){
			func(h *Handle, id ChannelID) (io.Closer, error) { return h.Requester(id) },
			func(h *Handle, id ChannelID) (io.Closer, error) { return h.Responder(id) },
		}},
	}
}

// controlBlock is the whole heap extent of the control block at off.
func controlBlock(t *testing.T, b *Buffer, off mem.Off) []byte {
	t.Helper()
	ext, err := b.heap.Extent(off)
	require.NoError(t, err)
	cb, err := mem.Bytes(b.region.Bytes(), off, ext.Size)
	require.NoError(t, err)
	return cb
}

// TestAttachRemovedUnderUs: a channel whose last end closes between
// another handle's lookup and its claim of an end is removed, and its
// control block given to a new channel; the claim must not write into
// that block, and the attach must end with an end of a channel that
// exists (created anew).
func TestAttachRemovedUnderUs(t *testing.T) {
	for _, k := range attachKinds() {
		for role := range 2 {
			t.Run(k.name+"/"+[2]string{"first", "second"}[role], func(t *testing.T) {
				b := heapBuf(t)
				h1, err := b.NewHandle()
				require.NoError(t, err)
				defer h1.Close()
				h2, err := b.NewHandle()
				require.NoError(t, err)
				defer h2.Close()
				const x, y = 1, 2
				// x: both ends opened, the role's own end closed again, the
				// other end (other) left open until the hook.
				mine, err := k.ends[role](h1, x)
				require.NoError(t, err)
				other, err := k.ends[1-role](h1, x)
				require.NoError(t, err)
				require.NoError(t, mine.Close())
				old, err := b.reg.Lookup(x)
				require.NoError(t, err)

				var yEnd io.Closer
				var ySnap []byte
				var yCtl mem.Off
				hooked := 0
				attachHook = func(en *channel.Entry) {
					if en.ID != x {
						return // y's own attach, below
					}
					hooked++
					if hooked > 1 {
						return
					}
					require.Equal(t, old.Control, en.Control)
					require.NoError(t, other.Close()) // x is removed
					_, err := b.reg.Lookup(x)
					require.ErrorIs(t, err, ErrNotExist)
					// y takes x's control block.
					yEnd, err = k.ends[1-role](h1, y)
					require.NoError(t, err)
					yen, err := b.reg.Lookup(y)
					require.NoError(t, err)
					require.Equal(t, old.Control, yen.Control, "the test needs y in x's freed control block")
					yCtl = yen.Control
					ySnap = append([]byte(nil), controlBlock(t, b, yCtl)...)
				}
				defer func() { attachHook = nil }()

				end, err := k.ends[role](h2, x)
				require.NoError(t, err)
				require.Equal(t, 2, hooked, "attach looks x up again after its removal")
				require.Equal(t, ySnap, controlBlock(t, b, yCtl), "the claim wrote into y's control block")
				now, err := b.reg.Lookup(x)
				require.NoError(t, err, "x was created anew")
				require.NotEqual(t, old.Control, now.Control)
				require.NoError(t, b.Check())

				// The new x works end to end (its other end attaches).
				peer, err := k.ends[1-role](h1, x)
				require.NoError(t, err)
				require.NoError(t, end.Close())
				require.NoError(t, peer.Close())
				require.NoError(t, yEnd.Close())
				_, err = b.reg.Lookup(x)
				require.ErrorIs(t, err, ErrNotExist, "x removed when its ends closed")
			})
		}
	}
}

// TestSelectSkipsClosedEnds: an end closed while in a Select may have had
// its channel removed and the control block given to another channel; the
// Select's Remove and Close must not write there (they used to clear the
// new channel's doorbell word, so its own Select was never woken).
func TestSelectSkipsClosedEnds(t *testing.T) {
	b := heapBuf(t)
	h, err := b.NewHandle()
	require.NoError(t, err)
	defer h.Close()
	// Both Selects' doorbells first, so that channel 1's control block is
	// the last allocation and channel 2 gets it back.
	sel, err := h.NewSelect()
	require.NoError(t, err)
	sel2, err := h.NewSelect()
	require.NoError(t, err)
	defer sel2.Close()
	p1, err := h.Producer(1)
	require.NoError(t, err)
	c1, err := h.Consumer(1)
	require.NoError(t, err)
	old, err := b.reg.Lookup(1)
	require.NoError(t, err)
	require.NoError(t, sel.Add(c1))
	require.NoError(t, p1.Close())
	require.NoError(t, c1.Close()) // drained: channel 1 is removed
	_, err = b.reg.Lookup(1)
	require.ErrorIs(t, err, ErrNotExist)

	c2, err := h.Consumer(2)
	require.NoError(t, err)
	defer c2.Close()
	require.NoError(t, sel2.Add(c2))
	en2, err := b.reg.Lookup(2)
	require.NoError(t, err)
	require.Equal(t, old.Control, en2.Control, "the test needs channel 2 in channel 1's freed control block")
	cb := controlBlock(t, b, en2.Control)
	snap := append([]byte(nil), cb...)

	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Millisecond)
	_, _, err = sel.Receive(ctx)
	cancel()
	require.ErrorIs(t, err, ErrClosed, "Receive reports the closed end")
	require.Equal(t, snap, cb, "Select.Receive wrote into channel 2's control block")
	sel.Remove(c1)
	require.Equal(t, snap, cb, "Select.Remove wrote into channel 2's control block")
	require.ErrorIs(t, sel.Add(c1), ErrClosed)
	require.NoError(t, sel.Close())
	require.Equal(t, snap, cb, "Select.Close wrote into channel 2's control block")
}

// TestCloseReleasesUnderRegistryLock: an end is let go of inside the
// registry's critical section that also decides the channel's removal, so
// another process's close or Recover (which remove under that lock) cannot
// free the control block between the release and the end's last writes.
func TestCloseReleasesUnderRegistryLock(t *testing.T) {
	b := heapBuf(t)
	h, err := b.NewHandle()
	require.NoError(t, err)
	defer h.Close()
	p, err := h.Producer(1)
	require.NoError(t, err)
	c, err := h.Consumer(1)
	require.NoError(t, err)
	require.NoError(t, p.Close())
	en, err := b.reg.Lookup(1)
	require.NoError(t, err)
	ring, err := channel.OpenRing(b.region, en, channel.WaitOptions{})
	require.NoError(t, err)

	locked, unlock := make(chan struct{}), make(chan struct{})
	holder := make(chan error, 1)
	go func() {
		holder <- b.reg.Attach(t.Context(), en, func() error {
			close(locked)
			<-unlock
			return nil
		})
	}()
	<-locked
	closed := make(chan error, 1)
	go func() { closed <- c.Close() }()
	time.Sleep(20 * time.Millisecond) // room for a Close that does not wait for the lock
	select {
	case err := <-closed:
		t.Fatalf("Close returned while another held the registry lock: %v", err)
	default:
	}
	require.False(t, ring.Idle(), "the consumer end was let go of outside the registry lock")
	close(unlock)
	require.NoError(t, <-holder)
	require.NoError(t, <-closed)
	_, err = b.reg.Lookup(1)
	require.ErrorIs(t, err, ErrNotExist, "the last close removed the drained channel")
}
