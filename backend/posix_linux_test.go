package backend

import (
	"golang.org/x/sys/unix"
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/heapipc/ipc/internal/testutil"
	"github.com/stretchr/testify/require"
)

// TestPosixNotAFile: a directory or a symbolic link under a segment's or
// a semaphore's name in ShmDir (anyone can make one there) is
// ErrNotHeapIPC for attach, open and remove (open's EISDIR or ELOOP used
// to come back with no sentinel), and Remove leaves a directory alone.
func TestPosixNotAFile(t *testing.T) {
	segs, _ := Segments(POSIX)
	sems, _ := Semaphores(POSIX)
	dir, link, semDir := testutil.Name(t), testutil.Name(t), testutil.Name(t)
	require.NoError(t, os.Mkdir(posixSegPath(dir), 0o700))
	defer os.Remove(posixSegPath(dir))
	require.NoError(t, os.Symlink(os.TempDir(), posixSegPath(link)))
	defer os.Remove(posixSegPath(link))
	require.NoError(t, os.Mkdir(posixSemPath(semDir), 0o700))
	defer os.Remove(posixSemPath(semDir))
	for _, n := range []string{dir, link} {
		_, err := segs.Attach(n)
		require.ErrorIs(t, err, ErrNotHeapIPC, "attach %s", n)
		_, err = OpenRegion(n, RegionConfig{Segments: POSIX, Open: AttachOnly}, nil)
		require.ErrorIs(t, err, ErrNotHeapIPC, "open region %s", n)
	}
	_, err := sems.Open(semDir, SemOptions{})
	require.ErrorIs(t, err, ErrNotHeapIPC)
	require.ErrorIs(t, segs.Remove(dir), ErrNotHeapIPC)
	require.ErrorIs(t, sems.Remove(semDir), ErrNotHeapIPC)
	fi, err := os.Stat(posixSegPath(dir))
	require.NoError(t, err)
	require.True(t, fi.IsDir(), "the directory is still there")
}

// TestPosixRemoveForeign: Remove of a POSIX segment or semaphore name
// under which another program's file, or a FIFO, lies leaves it there
// (ErrNotHeapIPC); it used to unlink whatever the name held, and an open
// of a FIFO would have blocked. Ours are removed.
func TestPosixRemoveForeign(t *testing.T) {
	segs, _ := Segments(POSIX)
	sems, _ := Semaphores(POSIX)
	seg, sem, fifo := testutil.Name(t), testutil.Name(t), testutil.Name(t)
	require.NoError(t, os.WriteFile(posixSegPath(seg), []byte("hello"), 0o600))
	defer os.Remove(posixSegPath(seg))
	require.NoError(t, os.WriteFile(posixSemPath(sem), make([]byte, semSize), 0o600)) // shared flag not set
	defer os.Remove(posixSemPath(sem))
	require.NoError(t, unix.Mkfifo(posixSegPath(fifo), 0o600))
	defer os.Remove(posixSegPath(fifo))
	require.NoError(t, unix.Mkfifo(posixSemPath(fifo), 0o600))
	defer os.Remove(posixSemPath(fifo))

	for _, n := range []string{seg, fifo} {
		require.ErrorIs(t, segs.Remove(n), ErrNotHeapIPC, "segment %s", n)
		_, err := os.Lstat(posixSegPath(n))
		require.NoError(t, err, "still there")
	}
	for _, n := range []string{sem, fifo} {
		require.ErrorIs(t, sems.Remove(n), ErrNotHeapIPC, "semaphore %s", n)
		_, err := os.Lstat(posixSemPath(n))
		require.NoError(t, err, "still there")
	}
	require.ErrorIs(t, segs.Remove(testutil.Name(t)), ErrNotExist)
	require.ErrorIs(t, sems.Remove(testutil.Name(t)), ErrNotExist)

	// Ours go.
	r, err := OpenRegion(testutil.Name(t), RegionConfig{Segments: POSIX, Semaphores: POSIX, Size: 1 << 16}, nil)
	require.NoError(t, err)
	require.NoError(t, r.Close())
	require.NoError(t, segs.Remove(r.Name()))
	s, err := sems.Create(testutil.Name(t), 0, SemOptions{})
	require.NoError(t, err)
	require.NoError(t, s.Close())
	require.NoError(t, sems.Remove(s.Name()))
}

// TestSemPrefixedNames: a region or a POSIX segment may not be named
// "sem.…": its file would be a POSIX semaphore's (region "sem.X.heap" is
// region X's heap semaphore, which opening X removed as stale).
func TestSemPrefixedNames(t *testing.T) {
	x := testutil.Name(t)
	require.ErrorIs(t, ValidateName("sem."+x), ErrInvalidName)
	require.NoError(t, ValidateName("semx"+x))
	segs, _ := Segments(POSIX)
	_, err := segs.Create("sem."+x+".heap", 1<<16, 0, nil)
	require.ErrorIs(t, err, ErrInvalidName)
	_, err = segs.Attach("sem." + x)
	require.ErrorIs(t, err, ErrInvalidName)
	sems, _ := Semaphores(POSIX)
	s, err := sems.Create(x, 0, SemOptions{})
	require.NoError(t, err)
	defer s.Close()
	defer s.Unlink()
	require.ErrorIs(t, segs.Remove("sem."+x), ErrInvalidName)
	o, err := sems.Open(x, SemOptions{})
	require.NoError(t, err, "the semaphore is still there")
	require.NoError(t, o.Close())
}

// TestSweepTempFiles: the temporary file of a creator that died before it
// published or removed it is removed (once per process, at the next
// create); one whose pid is alive, or younger than tempMinAge, is left.
func TestSweepTempFiles(t *testing.T) {
	dead := ShmDir + "/" + tempPrefix + strconv.Itoa(testutil.DeadIdentity(t).PID()) + ".0123"
	live := ShmDir + "/" + tempPrefix + strconv.Itoa(os.Getpid()) + ".4567"
	young := ShmDir + "/" + tempPrefix + strconv.Itoa(testutil.DeadIdentity(t).PID()) + ".89ab"
	old := time.Now().Add(-2 * tempMinAge)
	for _, p := range []string{dead, live, young} {
		require.NoError(t, os.WriteFile(p, nil, 0o600))
		if p != young {
			require.NoError(t, os.Chtimes(p, old, old))
		}
	}
	defer os.Remove(young)
	defer os.Remove(live)
	defer os.Remove(dead)
	sweepTempFiles()
	_, err := os.Stat(dead)
	require.ErrorIs(t, err, os.ErrNotExist, "a dead creator's file is removed")
	_, err = os.Stat(live)
	require.NoError(t, err, "a live process's file is left")
	_, err = os.Stat(young)
	require.NoError(t, err, "a file younger than tempMinAge is left (its pid may be of another namespace)")
}
