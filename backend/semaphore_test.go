package backend

import (
	"context"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/heapipc/ipc/internal/testutil"
	"github.com/stretchr/testify/require"
)

// watchdog bounds how long an operation that must return "promptly" may
// take before the test calls it a hang. It is not a timing assertion.
const watchdog = 10 * time.Second

func newSem(t *testing.T, k Kind, value int, opts SemOptions) (Semaphore, string) {
	t.Helper()
	sems, err := Semaphores(k)
	require.NoError(t, err)
	name := testutil.Name(t)
	s, err := sems.Create(name, value, opts)
	require.NoError(t, err)
	t.Cleanup(func() {
		s.Unlink()
		s.Close()
	})
	return s, name
}

func TestSemaphoreBasics(t *testing.T) {
	for _, k := range Kinds {
		t.Run(string(k), func(t *testing.T) {
			sems, _ := Semaphores(k)
			s, name := newSem(t, k, 0, SemOptions{})
			require.Equal(t, k, s.Kind())
			require.ErrorIs(t, s.TryWait(), ErrWouldBlock)
			require.NoError(t, s.Post())
			require.NoError(t, s.Post())
			v, err := s.Value()
			require.NoError(t, err)
			require.Equal(t, 2, v)

			o, err := sems.Open(name, SemOptions{})
			require.NoError(t, err)
			require.NoError(t, o.TryWait())
			require.NoError(t, o.WaitTimeout(time.Second))
			require.ErrorIs(t, s.TryWait(), ErrWouldBlock)
			require.NoError(t, o.Close())
			require.ErrorIs(t, o.Post(), ErrClosed)
			require.NoError(t, o.Close(), "Close twice is harmless")

			_, err = sems.Create(name, 0, SemOptions{})
			require.ErrorIs(t, err, ErrExist)
			_, err = sems.Create(testutil.Name(t), -1, SemOptions{})
			require.ErrorIs(t, err, ErrInvalidArgument)
			_, err = sems.Create(testutil.Name(t), sems.MaxValue()+1, SemOptions{})
			require.ErrorIs(t, err, ErrInvalidArgument)
			_, err = sems.Open(testutil.Name(t), SemOptions{})
			require.ErrorIs(t, err, ErrNotExist)

			require.NoError(t, s.Unlink())
			_, err = sems.Open(name, SemOptions{})
			require.ErrorIs(t, err, ErrNotExist)
		})
	}
}

// TestSemaphoreTryWaitPollsFree: an empty semaphore's
// TryWait allocates nothing (a spinning waiter polls it: channel's
// mailbox ends) and still says which semaphore would block.
func TestSemaphoreTryWaitPollsFree(t *testing.T) {
	for _, k := range Kinds {
		s, name := newSem(t, k, 0, SemOptions{})
		err := s.TryWait()
		require.ErrorIs(t, err, ErrWouldBlock, k)
		require.Contains(t, err.Error(), name, k)
		if testutil.Race {
			continue // the race detector's allocations are not the code's
		}
		require.Zero(t, testing.AllocsPerRun(100, func() { _ = s.TryWait() }), k)
	}
}

func TestSemaphoreOverflow(t *testing.T) {
	for _, k := range Kinds {
		sems, _ := Semaphores(k)
		s, _ := newSem(t, k, sems.MaxValue(), SemOptions{})
		require.ErrorIs(t, s.Post(), ErrOverflow, k)
		v, err := s.Value()
		require.NoError(t, err)
		require.Equal(t, sems.MaxValue(), v, k)
	}
}

func TestSemaphoreTimeoutAndCancel(t *testing.T) {
	for _, k := range Kinds {
		t.Run(string(k), func(t *testing.T) {
			s, _ := newSem(t, k, 0, SemOptions{})
			start := time.Now()
			err := s.WaitTimeout(30 * time.Millisecond)
			require.ErrorIs(t, err, ErrTimeout)
			require.GreaterOrEqual(t, time.Since(start), 30*time.Millisecond, "a timeout never returns early")

			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Millisecond)
			defer cancel()
			require.ErrorIs(t, s.Wait(ctx), context.DeadlineExceeded)

			ctx, cancel = context.WithCancel(context.Background())
			done := make(chan error, 1)
			go func() { done <- s.Wait(ctx) }()
			time.Sleep(20 * time.Millisecond)
			cancel()
			select {
			case err := <-done:
				require.ErrorIs(t, err, context.Canceled)
			case <-time.After(watchdog):
				t.Fatal("Wait did not return after cancel")
			}
			v, err := s.Value()
			require.NoError(t, err)
			require.Equal(t, 0, v, "a cancelled wait takes nothing")

			// A post still reaches a waiter after all that.
			go func() { done <- s.Wait(context.Background()) }()
			time.Sleep(10 * time.Millisecond)
			require.NoError(t, s.Post())
			select {
			case err := <-done:
				require.NoError(t, err)
			case <-time.After(watchdog):
				t.Fatal("Wait missed a Post")
			}
		})
	}
}

func TestSemaphoreCloseWakesWaiters(t *testing.T) {
	for _, k := range Kinds {
		t.Run(string(k), func(t *testing.T) {
			sems, _ := Semaphores(k)
			_, name := newSem(t, k, 0, SemOptions{})
			h, err := sems.Open(name, SemOptions{})
			require.NoError(t, err)
			done := make(chan error, 3)
			for i := 0; i < 3; i++ {
				go func() { done <- h.Wait(context.Background()) }()
			}
			time.Sleep(20 * time.Millisecond)
			require.NoError(t, h.Close())
			for i := 0; i < 3; i++ {
				select {
				case err := <-done:
					require.ErrorIs(t, err, ErrClosed)
				case <-time.After(watchdog):
					t.Fatal("Close left a waiter blocked")
				}
			}
		})
	}
}

func TestSemaphoreManyGoroutines(t *testing.T) {
	// Counting semantics under contention: every post is taken exactly once.
	for _, k := range Kinds {
		t.Run(string(k), func(t *testing.T) {
			s, _ := newSem(t, k, 0, SemOptions{})
			const workers, each = 4, 500
			var wg sync.WaitGroup
			errs := make(chan error, 2*workers)
			for i := 0; i < workers; i++ {
				wg.Add(2)
				go func() {
					defer wg.Done()
					for j := 0; j < each; j++ {
						if err := s.Wait(context.Background()); err != nil {
							errs <- err
							return
						}
					}
				}()
				go func() {
					defer wg.Done()
					for j := 0; j < each; j++ {
						if err := s.Post(); err != nil {
							errs <- err
							return
						}
					}
				}()
			}
			wg.Wait()
			close(errs)
			for err := range errs {
				t.Fatal(err)
			}
			v, err := s.Value()
			require.NoError(t, err)
			require.Equal(t, 0, v)
		})
	}
}

func TestSysVSemaphoreUnlinkWakesWithDestroyed(t *testing.T) {
	s, _ := newSem(t, SysV, 0, SemOptions{})
	done := make(chan error, 1)
	go func() { done <- s.Wait(context.Background()) }()
	time.Sleep(20 * time.Millisecond)
	require.NoError(t, s.Unlink())
	select {
	case err := <-done:
		require.ErrorIs(t, err, ErrDestroyed)
	case <-time.After(watchdog):
		t.Fatal("waiter hung after IPC_RMID")
	}
}

// TestChildPingPong is the child side of TestSemaphoreCrossProcess.
func TestChildPingPong(t *testing.T) {
	testutil.ChildOnly(t)
	sems, err := Semaphores(Kind(testutil.Env(t, "SEM_KIND")))
	require.NoError(t, err)
	ping, err := sems.Open(testutil.Env(t, "SEM_PING"), SemOptions{})
	require.NoError(t, err)
	defer ping.Close()
	pong, err := sems.Open(testutil.Env(t, "SEM_PONG"), SemOptions{})
	require.NoError(t, err)
	defer pong.Close()
	n, _ := strconv.Atoi(testutil.Env(t, "SEM_ROUNDS"))
	ctx := testutil.Context(t, time.Minute)
	for i := 0; i < n; i++ {
		require.NoError(t, ping.Wait(ctx))
		require.NoError(t, pong.Post())
	}
	testutil.Say("done %d", n)
}

func TestSemaphoreCrossProcess(t *testing.T) {
	for _, k := range realKinds {
		t.Run(string(k), func(t *testing.T) {
			ping, pingName := newSem(t, k, 0, SemOptions{})
			pong, pongName := newSem(t, k, 0, SemOptions{})
			const rounds = 2000
			c := testutil.StartChild(t, "TestChildPingPong", "SEM_KIND="+string(k),
				"SEM_PING="+pingName, "SEM_PONG="+pongName, "SEM_ROUNDS="+strconv.Itoa(rounds))
			ctx := testutil.Context(t, time.Minute)
			for i := 0; i < rounds; i++ {
				require.NoError(t, ping.Post())
				require.NoError(t, pong.Wait(ctx), "round %d", i)
			}
			require.Equal(t, "done 2000", c.Line(t, watchdog))
			c.MustSucceed(t, watchdog)
			for _, s := range []Semaphore{ping, pong} {
				v, err := s.Value()
				require.NoError(t, err)
				require.Equal(t, 0, v, "strict alternation leaves both at zero")
			}
		})
	}
}

// TestChildHoldUndo takes a SysV semaphore with SEM_UNDO and waits to be
// killed.
func TestChildHoldUndo(t *testing.T) {
	testutil.ChildOnly(t)
	sems, _ := Semaphores(SysV)
	s, err := sems.Open(testutil.Env(t, "SEM_NAME"), SemOptions{Undo: true})
	require.NoError(t, err)
	require.NoError(t, s.WaitTimeout(10*time.Second))
	testutil.Say("held")
	time.Sleep(time.Minute)
}

func TestSysVUndoReleasesKilledHolder(t *testing.T) {
	s, name := newSem(t, SysV, 1, SemOptions{Undo: true})
	c := testutil.StartChild(t, "TestChildHoldUndo", "SEM_NAME="+name)
	require.Equal(t, "held", c.Line(t, watchdog))
	v, err := s.Value()
	require.NoError(t, err)
	require.Equal(t, 0, v, "the child holds the semaphore")
	c.Kill()
	require.NoError(t, s.WaitTimeout(watchdog), "the kernel gave the dead holder's unit back")
	require.NoError(t, s.Post())
}

func TestSysVObjectsVisibleInIpcs(t *testing.T) {
	sem, semName := newSem(t, SysV, 0, SemOptions{})
	segs, _ := Segments(SysV)
	seg, err := segs.Create(testutil.Name(t), 4096, 0, nil)
	require.NoError(t, err)
	defer seg.Close()
	segKey := SysVKey("shm", seg.Name())
	semKey := SysVKey("sem", semName)

	require.True(t, ipcsHas(t, "-m", segKey), "segment listed while alive")
	require.True(t, ipcsHas(t, "-s", semKey), "semaphore listed while alive")
	require.NoError(t, seg.Unlink())
	require.NoError(t, sem.Unlink())
	require.False(t, ipcsHas(t, "-m", segKey), "segment gone after unlink")
	require.False(t, ipcsHas(t, "-s", semKey), "semaphore gone after unlink")
}

// ipcsHas asks ipcs(1) whether a key is listed.
func ipcsHas(t *testing.T, flag string, key int32) bool {
	out, err := exec.Command("ipcs", flag).Output()
	if err != nil {
		t.Skipf("ipcs(1) not usable here (%v); /proc/sysvipc is checked by the leak check instead", err)
	}
	want := "0x" + strings.TrimLeft(strconv.FormatUint(uint64(uint32(key)), 16), "")
	for _, line := range strings.Split(string(out), "\n") {
		f := strings.Fields(line)
		if len(f) > 0 && strings.EqualFold(strings.TrimLeft(strings.TrimPrefix(f[0], "0x"), "0"), strings.TrimLeft(strings.TrimPrefix(want, "0x"), "0")) {
			return true
		}
	}
	return false
}

// slowErrCtx is a context whose Err, once armed, stops until released:
// a waiter preempted between its wake-up and Park's look at the context.
type slowErrCtx struct {
	context.Context
	armed   atomic.Bool
	inErr   chan struct{}
	release chan struct{}
}

func (c *slowErrCtx) Err() error {
	if c.armed.CompareAndSwap(true, false) {
		close(c.inErr)
		<-c.release
	}
	return c.Context.Err()
}

// TestSemaphoreWakePassedOnAtCancel: of two waiters, the one a Post wakes
// sees its context cancelled as it wakes and returns the context's error
// without the unit: the other waiter must get it (the futex semaphores
// used to keep the one wake, and the second waiter slept with the value
// at 1).
func TestSemaphoreWakePassedOnAtCancel(t *testing.T) {
	for _, k := range []Kind{POSIX, Heap} {
		t.Run(string(k), func(t *testing.T) {
			s, _ := newSem(t, k, 0, SemOptions{})
			fs := s.(*futexSem)
			inner, cancel := context.WithCancel(t.Context())
			defer cancel()
			ctx := &slowErrCtx{Context: inner, inErr: make(chan struct{}), release: make(chan struct{})}
			waiters := func(n uint64) {
				deadline := time.Now().Add(watchdog)
				for fs.data.Load()>>32 != n {
					require.True(t, time.Now().Before(deadline), "waiter %d never registered", n)
					time.Sleep(100 * time.Microsecond)
				}
				time.Sleep(20 * time.Millisecond) // and asleep in the kernel, most likely
			}
			aDone := make(chan error, 1)
			go func() { aDone <- s.Wait(ctx) }()
			waiters(1)
			bDone := make(chan error, 1)
			go func() { bDone <- s.Wait(context.Background()) }()
			waiters(2)
			ctx.armed.Store(true)
			require.NoError(t, s.Post()) // wakes one of them: A, the first
			select {
			case <-ctx.inErr:
			case err := <-bDone:
				// The kernel woke B instead: nothing to test this time.
				require.NoError(t, err)
				cancel()
				close(ctx.release)
				require.ErrorIs(t, <-aDone, context.Canceled)
				return
			case <-time.After(watchdog):
				t.Fatal("no waiter was woken")
			}
			cancel()
			close(ctx.release)
			require.ErrorIs(t, <-aDone, context.Canceled)
			select {
			case err := <-bDone:
				require.NoError(t, err, "the second waiter took the unit")
			case <-time.After(watchdog):
				v, _ := s.Value()
				require.NoError(t, s.Post())
				<-bDone
				t.Fatalf("lost wake-up: value %d and the second waiter asleep", v)
			}
		})
	}
}

// TestSemaphoreWaitAfterClose: a closed handle takes no unit: every kind
// says ErrClosed (a SysV wait used to take the unit in its spin first).
func TestSemaphoreWaitAfterClose(t *testing.T) {
	for _, k := range Kinds {
		t.Run(string(k), func(t *testing.T) {
			s, name := newSem(t, k, 1, SemOptions{})
			require.NoError(t, s.Close())
			require.ErrorIs(t, s.WaitTimeout(time.Second), ErrClosed)
			require.ErrorIs(t, s.Wait(t.Context()), ErrClosed)
			sems, _ := Semaphores(k)
			o, err := sems.Open(name, SemOptions{})
			require.NoError(t, err)
			defer o.Close()
			v, err := o.Value()
			require.NoError(t, err)
			require.Equal(t, 1, v, "the unit is still there")
		})
	}
}
