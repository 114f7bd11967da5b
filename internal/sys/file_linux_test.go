package sys

import (
	"fmt"
	"os"
	"sync"
	"syscall"
	"testing"

	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

// TestFallocateChunks: Fallocate reserves the whole size, over several
// chunk calls and a size that is not a multiple of a chunk, while signals
// arrive (kernels that stop a tmpfs fallocate at any signal return EINTR,
// which Fallocate repeats; this kernel may not, and the size must still
// come out whole).
func TestFallocateChunks(t *testing.T) {
	path := fmt.Sprintf("/dev/shm/hipc-sys-falloc-%d", os.Getpid())
	fd, err := Open(path, unix.O_RDWR|unix.O_CREAT|unix.O_EXCL, 0o600)
	require.NoError(t, err)
	t.Cleanup(func() { Close(fd); os.Remove(path) })
	size := int64(2*fallocChunk + 3*4096)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			default:
				// SIGURG: the runtime's preemption signal, which
				// it takes and otherwise ignores.
				_ = syscall.Kill(os.Getpid(), syscall.SIGURG)
			}
		}
	}()
	err = Fallocate(fd, size)
	close(stop)
	wg.Wait()
	require.NoError(t, err)
	var st unix.Stat_t
	require.NoError(t, unix.Fstat(fd, &st))
	require.Equal(t, size, st.Size, "file size after Fallocate")
	require.GreaterOrEqual(t, st.Blocks*512, size, "blocks reserved")
}
