// Package sys is the only package of heapipc that makes system calls. The
// rest of the module calls these typed wrappers: futex wait/wake, SysV
// semaphores and shared memory, file and mapping calls for POSIX shared
// memory, and process liveness (pid plus start time).
//
// On systems other than Linux the calls that have no equivalent return an
// error wrapping errs.ErrNotSupported; futex waits degrade to polling.
package sys

import (
	"fmt"
	"os"
	"sync"
)

// Identity names a process for liveness checks: its pid and its start time
// (clock ticks since boot, as in /proc/PID/stat), so that a reused pid is
// not mistaken for the process that died. It packs into one 64-bit word so
// that owner fields in shared memory can be claimed with one CAS:
// bits 0..21 the pid (Linux pid_max is at most 2^22), bits 22..63 the start
// time. Zero means "nobody".
type Identity uint64

const pidBits = 22

// MakeIdentity packs a pid and a start time.
func MakeIdentity(pid int, start uint64) Identity {
	return Identity(uint64(pid)&(1<<pidBits-1) | start<<pidBits)
}

// PID returns the process id.
func (id Identity) PID() int { return int(uint64(id) & (1<<pidBits - 1)) }

// Start returns the process start time in clock ticks since boot.
func (id Identity) Start() uint64 { return uint64(id) >> pidBits }

func (id Identity) String() string {
	if id == 0 {
		return "none"
	}
	return fmt.Sprintf("pid %d (start %d)", id.PID(), id.Start())
}

var self = sync.OnceValue(func() Identity {
	pid := os.Getpid()
	st, _, err := procStat(pid)
	if err != nil {
		// Without /proc the identity degrades to the pid alone.
		st = 0
	}
	return MakeIdentity(pid, st)
})

// Self returns the identity of the calling process.
func Self() Identity { return self() }

// IdentityOf returns the identity of a running process.
func IdentityOf(pid int) (Identity, error) {
	st, _, err := procStat(pid)
	if err != nil {
		return 0, err
	}
	return MakeIdentity(pid, st), nil
}

// Alive reports whether the process named by id is still running: the pid
// exists, is not a zombie, and started at the recorded time (a recorded
// start of 0 matches no running process on Linux). Without /proc (where
// every identity has a start of 0) it asks kill(pid, 0), which takes a
// reused pid for the process. A zero identity is never alive.
func Alive(id Identity) bool {
	if id == 0 {
		return false
	}
	if id == Self() {
		return true
	}
	return alive(id)
}

// AlivePID reports whether a process with this pid exists and is not a
// zombie, for the rare places that know a pid but no start time (the
// creator pid the kernel records for a SysV segment). A reused pid is
// mistaken for life.
func AlivePID(pid int) bool {
	if pid <= 0 {
		return false
	}
	return alivePID(pid)
}
