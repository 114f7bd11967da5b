package backend

import (
	"os"
	"testing"

	"github.com/heapipc/ipc/internal/sys"
	"github.com/heapipc/ipc/internal/testutil"
	"github.com/stretchr/testify/require"
)

func shmFree(t *testing.T) uint64 {
	n, err := sys.FreeBytes(ShmDir)
	if err != nil {
		t.Skipf("statfs %s: %v", ShmDir, err)
	}
	return n
}

func TestPosixNoSpaceIsCleanError(t *testing.T) {
	// A segment larger than /dev/shm can hold must fail at create with
	// ErrNoSpace (fallocate), not SIGBUS later.
	var free uint64
	if fi, err := os.Stat(ShmDir); err != nil || !fi.IsDir() {
		t.Skip("no /dev/shm on this machine")
	}
	free = shmFree(t)
	if free == 0 || free > 1<<45 {
		t.Skipf("cannot size a segment beyond /dev/shm's free space (%d bytes free)", free)
	}
	segs, _ := Segments(POSIX)
	name := testutil.Name(t)
	size := int64(free) + 1<<30
	_, err := segs.Create(name, size, 0, nil)
	if size > maxSegmentSize {
		// A 32-bit machine cannot map it at all.
		require.ErrorIs(t, err, ErrInvalidSize)
	} else {
		require.ErrorIs(t, err, ErrNoSpace)
	}
	_, err = segs.Attach(name)
	require.ErrorIs(t, err, ErrNotExist, "nothing is left behind")
}
