//go:build linux

package sys

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// procStat reads the start time (field 22) and state (field 3) of
// /proc/PID/stat. The command name (field 2) may hold spaces and
// parentheses, so fields are counted after the last ')'.
func procStat(pid int) (start uint64, state byte, err error) {
	b, err := os.ReadFile(procRoot + "/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, 0, err
	}
	i := bytes.LastIndexByte(b, ')')
	if i < 0 || i+2 >= len(b) {
		return 0, 0, fmt.Errorf("/proc/%d/stat: unexpected format", pid)
	}
	f := bytes.Fields(b[i+1:])
	// f[0] is field 3 (state); field 22 (starttime) is f[19].
	if len(f) < 20 || len(f[0]) != 1 {
		return 0, 0, fmt.Errorf("/proc/%d/stat: unexpected format", pid)
	}
	start, err = strconv.ParseUint(string(f[19]), 10, 64)
	if err != nil {
		return 0, 0, fmt.Errorf("/proc/%d/stat: %w", pid, err)
	}
	return start, f[0][0], nil
}

// procRoot is where procfs is mounted (tests point it elsewhere).
var procRoot = "/proc"

// procMounted reports whether procRoot shows this process: if not, a
// missing /proc/PID says nothing about PID. Asked only when a process's
// stat file is missing (a dead peer, or no /proc).
func procMounted() bool {
	_, err := os.Stat(procRoot + "/" + strconv.Itoa(os.Getpid()) + "/stat")
	return err == nil
}

func alive(id Identity) bool {
	start, state, err := procStat(id.PID())
	if err != nil {
		if (errors.Is(err, os.ErrNotExist) || errors.Is(err, unix.ESRCH)) && procMounted() {
			return false
		}
		// Unreadable for another reason, or no /proc at all (where
		// every identity has a start time of 0, Self's too): fall back
		// to kill(pid, 0), which cannot tell a reused pid apart.
		e := unix.Kill(id.PID(), 0)
		return e == nil || e == unix.EPERM
	}
	if state == 'Z' || state == 'X' || state == 'x' {
		return false
	}
	// A recorded start time of 0 (a corrupted or forged owner word) does
	// not match a running process: only AlivePID checks by pid alone.
	if start&(1<<(64-pidBits)-1) != id.Start() {
		return false
	}
	return true
}

func alivePID(pid int) bool {
	if _, state, err := procStat(pid); err == nil {
		return state != 'Z' && state != 'X' && state != 'x'
	}
	e := unix.Kill(pid, 0)
	return e == nil || e == unix.EPERM
}

// Futex operations on a word that may be shared between processes (the
// non-private flavour: the kernel keys the wait on the physical page).
const (
	futexWait = 0
	futexWake = 1
)

// FutexWait blocks while *w == val, until woken, until timeout (negative:
// no timeout) or until a signal. A nil return means "woken or the word
// changed or interrupted": the caller re-checks its condition. Running out
// of time returns ErrTimedOut.
func FutexWait(w *atomic.Uint32, val uint32, timeout time.Duration) error {
	var tsp unsafe.Pointer
	var ts unix.Timespec
	if timeout >= 0 {
		ts = unix.NsecToTimespec(int64(timeout))
		tsp = unsafe.Pointer(&ts)
	}
	_, _, e := unix.Syscall6(unix.SYS_FUTEX, uintptr(unsafe.Pointer(w)), futexWait, uintptr(val), uintptr(tsp), 0, 0)
	switch e {
	case 0, unix.EAGAIN, unix.EINTR:
		return nil
	case unix.ETIMEDOUT:
		return ErrTimedOut
	default:
		return fmt.Errorf("futex wait: %w", e)
	}
}

// FutexWake wakes at most n waiters on w and returns how many it woke.
func FutexWake(w *atomic.Uint32, n int) (int, error) {
	r, _, e := unix.Syscall6(unix.SYS_FUTEX, uintptr(unsafe.Pointer(w)), futexWake, uintptr(n), 0, 0, 0)
	if e != 0 {
		return 0, fmt.Errorf("futex wake: %w", e)
	}
	return int(r), nil
}

// Yield gives the processor to another runnable thread, if any
// (sched_yield): spinners call it so that the peer they wait for can run
// when there are more runnable threads than cores.
func Yield() { unix.Syscall(unix.SYS_SCHED_YIELD, 0, 0, 0) }

// PidNamespace returns the inode number of this process's pid namespace
// (/proc/self/ns/pid), which names it on the host; 0 if it cannot be read.
func PidNamespace() uint64 { return pidNamespace() }

var pidNamespace = sync.OnceValue(func() uint64 {
	var st unix.Stat_t
	if err := unix.Stat(procRoot+"/self/ns/pid", &st); err != nil {
		return 0
	}
	return st.Ino
})
