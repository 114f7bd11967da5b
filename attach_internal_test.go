package ipc

import (
	"io"
	"testing"

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
					ext, err := b.heap.Extent(yCtl)
					require.NoError(t, err)
					cb, err := mem.Bytes(b.region.Bytes(), yCtl, ext.Size)
					require.NoError(t, err)
					ySnap = append([]byte(nil), cb...)
				}
				defer func() { attachHook = nil }()

				end, err := k.ends[role](h2, x)
				require.NoError(t, err)
				require.Equal(t, 2, hooked, "attach looks x up again after its removal")
				ext, err := b.heap.Extent(yCtl)
				require.NoError(t, err)
				cb, err := mem.Bytes(b.region.Bytes(), yCtl, ext.Size)
				require.NoError(t, err)
				require.Equal(t, ySnap, cb, "the claim wrote into y's control block")
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
