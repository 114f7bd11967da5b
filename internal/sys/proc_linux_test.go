package sys

import (
	"os/exec"
	"testing"

	"github.com/stretchr/testify/require"
)

// TestAliveWithoutProc: where /proc is not mounted (a bare container or
// chroot), every identity has a start time of 0, Self's included, and a
// missing /proc/PID/stat says nothing: a live process must not count as
// dead (its channels would be taken over), so Alive asks kill(pid, 0).
func TestAliveWithoutProc(t *testing.T) {
	cmd := exec.Command("sleep", "60")
	require.NoError(t, cmd.Start())
	pid := cmd.Process.Pid
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })

	_ = Self() // read from the real /proc, once per process
	saved := procRoot
	procRoot = t.TempDir() // an empty directory: no /proc
	t.Cleanup(func() { procRoot = saved })
	require.False(t, procMounted())
	id := MakeIdentity(pid, 0) // what the child would record there
	require.True(t, Alive(id), "a live process without /proc")

	require.NoError(t, cmd.Process.Kill())
	_ = cmd.Wait() // reaped: the pid is gone
	require.False(t, Alive(id), "a reaped process without /proc")

	// With /proc, the same pid-only identity does not match a process
	// (a recorded start of 0 names none) and a missing stat file is a
	// dead process.
	procRoot = saved
	require.True(t, procMounted())
	require.False(t, Alive(id))
}
