package ipc

import (
	"testing"
	"time"

	"github.com/heapipc/ipc/channel"
	"github.com/heapipc/ipc/internal/testutil"
	"github.com/stretchr/testify/require"
)

// TestSpeculoSmallAreaWrites: an area of the documented minimum capacity
// (channel.MinSpeculoCapacity) up to 504 bytes is made with the default
// options and written (AddSpeculo refused them all: the default max
// blocks did not fit; TestSpeculoSmallCapacityDefault in channel).
func TestSpeculoSmallAreaWrites(t *testing.T) {
	b, err := Open(testutil.Name(t), WithBackends("heap", "heap"), WithSize(8<<20), WithCheckInterval(10*time.Millisecond))
	require.NoError(t, err)
	t.Cleanup(func() { _ = b.Destroy() })
	h, err := b.NewHandle()
	require.NoError(t, err)
	defer h.Close()
	for i, capacity := range []int{channel.MinSpeculoCapacity, 256, 504} {
		sp, err := h.AddSpeculo(ChannelID(100+i), capacity)
		require.NoError(t, err, "capacity %d (minimum %d) with default options", capacity, channel.MinSpeculoCapacity)
		w, err := sp.Writer()
		require.NoError(t, err)
		_, err = w.Write([]byte("x"), time.Time{})
		require.NoError(t, err)
		require.NoError(t, w.Close())
	}
}
