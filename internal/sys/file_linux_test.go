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

// fallocTemp makes an empty file in /dev/shm for a Fallocate test and
// removes it at the end.
func fallocTemp(t *testing.T, tag string) int {
	t.Helper()
	path := fmt.Sprintf("/dev/shm/hipc-sys-%s-%d", tag, os.Getpid())
	fd, err := Open(path, unix.O_RDWR|unix.O_CREAT|unix.O_EXCL, 0o600)
	require.NoError(t, err)
	t.Cleanup(func() { Close(fd); os.Remove(path) })
	return fd
}

// stubFallocate replaces fallocate(2) for one test.
func stubFallocate(t *testing.T, f func(fd int, mode uint32, off, n int64) error) {
	old := fallocate
	fallocate = f
	t.Cleanup(func() { fallocate = old })
}

// TestFallocateBeyondFreeSpace: a size beyond the filesystem's free space
// is ENOSPC before a single byte is reserved. Reserving it chunk by chunk
// until the kernel refuses filled the whole tmpfs — all of the machine's
// memory on a machine whose /dev/shm is sized to it — for as long as the
// caller took to remove the file, or for good when the caller was killed
// meanwhile (by the memory shortage itself).
func TestFallocateBeyondFreeSpace(t *testing.T) {
	fd := fallocTemp(t, "falloc-full")
	free, err := FreeBytes("/dev/shm")
	require.NoError(t, err)
	var fs unix.Statfs_t
	require.NoError(t, unix.Fstatfs(fd, &fs))
	if fs.Blocks == 0 {
		t.Skip("/dev/shm reports no size: Fallocate does not judge free space there")
	}
	calls := 0
	stubFallocate(t, func(int, uint32, int64, int64) error { calls++; return nil })
	err = Fallocate(fd, int64(free)+1<<30)
	require.ErrorIs(t, err, unix.ENOSPC)
	require.Zero(t, calls, "fallocate calls made for a size that cannot fit")

	// A size that fits is reserved (through the stub: nothing real).
	require.NoError(t, Fallocate(fd, 3*fallocChunk))
	require.Equal(t, 3, calls)
}

// TestFallocateGivesBackOnFailure: a call that fails after earlier chunks
// were reserved (the space was taken meanwhile) punches those out again
// before Fallocate returns.
func TestFallocateGivesBackOnFailure(t *testing.T) {
	fd := fallocTemp(t, "falloc-back")
	require.NoError(t, Ftruncate(fd, 3*fallocChunk))
	calls := 0
	stubFallocate(t, func(fd int, mode uint32, off, n int64) error {
		if mode != 0 {
			return unix.Fallocate(fd, mode, off, n)
		}
		calls++
		if calls == 3 {
			return unix.ENOSPC
		}
		return unix.Fallocate(fd, mode, off, n)
	})
	err := Fallocate(fd, 3*fallocChunk)
	require.ErrorIs(t, err, unix.ENOSPC)
	var st unix.Stat_t
	require.NoError(t, unix.Fstat(fd, &st))
	require.Zero(t, st.Blocks, "blocks still reserved after a failed Fallocate")
	require.Equal(t, int64(3*fallocChunk), st.Size, "the size is the caller's")
}
