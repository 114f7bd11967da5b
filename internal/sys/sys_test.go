package sys

import (
	"os"
	"os/exec"
	"runtime"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func TestIdentityPacking(t *testing.T) {
	for _, c := range []struct {
		pid   int
		start uint64
	}{{1, 0}, {4194303, 1<<42 - 1}, {12345, 987654321}} {
		id := MakeIdentity(c.pid, c.start)
		require.Equal(t, c.pid, id.PID())
		require.Equal(t, c.start, id.Start())
		require.NotZero(t, id)
	}
	require.Equal(t, "none", Identity(0).String())
}

func TestSelfAlive(t *testing.T) {
	self := Self()
	require.Equal(t, os.Getpid(), self.PID())
	require.True(t, Alive(self))
	require.False(t, Alive(0))
	if runtime.GOOS == "linux" {
		require.NotZero(t, self.Start(), "start time read from /proc")
		id, err := IdentityOf(os.Getpid())
		require.NoError(t, err)
		require.Equal(t, self, id)
		// Same pid, another start time: a reused pid is not the same process.
		require.False(t, Alive(MakeIdentity(os.Getpid(), self.Start()+1)))
		// A start of 0 (a forged owner word) names no running process...
		require.False(t, Alive(MakeIdentity(1, 0)))
		// ...but AlivePID checks the pid alone.
		require.True(t, AlivePID(os.Getpid()))
		require.False(t, AlivePID(0))
	}
}

func TestDeadAndZombieChildren(t *testing.T) {
	cmd := exec.Command("sleep", "60")
	require.NoError(t, cmd.Start())
	id, err := IdentityOf(cmd.Process.Pid)
	require.NoError(t, err)
	require.True(t, Alive(id))
	require.NoError(t, cmd.Process.Kill())
	if runtime.GOOS == "linux" {
		// Not yet reaped: a zombie, which must count as dead.
		deadline := time.Now().Add(10 * time.Second)
		for Alive(id) && time.Now().Before(deadline) {
			time.Sleep(time.Millisecond)
		}
		require.False(t, Alive(id), "a zombie is not alive")
	}
	cmd.Wait()
	require.False(t, Alive(id), "a reaped process is not alive")
}

func TestFutexWaitWake(t *testing.T) {
	var w atomic.Uint32
	require.ErrorIs(t, FutexWait(&w, 0, time.Millisecond), ErrTimedOut)
	require.NoError(t, FutexWait(&w, 1, -1), "value differs: EAGAIN is a nil return")
	done := make(chan struct{})
	go func() {
		for w.Load() == 0 {
			FutexWait(&w, 0, -1)
		}
		close(done)
	}()
	time.Sleep(5 * time.Millisecond)
	w.Store(1)
	FutexWake(&w, 1)
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("waiter not woken")
	}
}
