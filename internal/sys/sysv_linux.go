//go:build linux

package sys

import (
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// SysV IPC flags and semctl commands (linux/ipc.h, linux/sem.h).
const (
	IPCCreat  = unix.IPC_CREAT
	IPCExcl   = unix.IPC_EXCL
	IPCNoWait = unix.IPC_NOWAIT
	SemUndo   = 0x1000

	ipcRMID = 0
	getPID  = 11
	getVal  = 12
	getNcnt = 14
	setVal  = 16
)

// Sembuf is struct sembuf.
type Sembuf struct {
	Num uint16
	Op  int16
	Flg int16
}

// SemGet is semget(2).
func SemGet(key int32, nsems int, flags int) (int, error) {
	r, _, e := unix.Syscall(unix.SYS_SEMGET, uintptr(key), uintptr(nsems), uintptr(flags))
	if e != 0 {
		return -1, e
	}
	return int(r), nil
}

// SemTimedOp is semtimedop(2); timeout < 0 blocks without limit. It returns
// the raw errno (EAGAIN on timeout or IPC_NOWAIT, EINTR, EIDRM, ...).
func SemTimedOp(id int, ops []Sembuf, timeout time.Duration) error {
	var tsp unsafe.Pointer
	var ts unix.Timespec
	if timeout >= 0 {
		ts = unix.NsecToTimespec(int64(timeout))
		tsp = unsafe.Pointer(&ts)
	}
	if e := semtimedop(id, unsafe.Pointer(&ops[0]), len(ops), tsp); e != 0 {
		return e
	}
	return nil
}

func semctl(id, num, cmd int, arg uintptr) (int, error) {
	r, _, e := unix.Syscall6(unix.SYS_SEMCTL, uintptr(id), uintptr(num), uintptr(cmd), arg, 0, 0)
	if e != 0 {
		return -1, e
	}
	return int(r), nil
}

// SemGetVal is semctl(GETVAL).
func SemGetVal(id, num int) (int, error) { return semctl(id, num, getVal, 0) }

// SemSetVal is semctl(SETVAL). It also clears every process's SEM_UNDO
// adjustment for that semaphore.
func SemSetVal(id, num, val int) error { _, err := semctl(id, num, setVal, uintptr(val)); return err }

// SemGetPID is semctl(GETPID): the pid of the last process that operated on
// the semaphore (semop or SETVAL).
func SemGetPID(id, num int) (int, error) { return semctl(id, num, getPID, 0) }

// SemGetNcnt is semctl(GETNCNT): how many processes wait for an increase.
func SemGetNcnt(id, num int) (int, error) { return semctl(id, num, getNcnt, 0) }

// SemRemove is semctl(IPC_RMID): the set is removed at once and waiters
// get EIDRM.
func SemRemove(id int) error { _, err := semctl(id, 0, ipcRMID, 0); return err }

// ShmGet is shmget(2).
func ShmGet(key int32, size int, flags int) (int, error) {
	return unix.SysvShmGet(int(key), size, flags)
}

// ShmAttach is shmat(2); the slice covers the whole segment.
func ShmAttach(id int) ([]byte, error) { return unix.SysvShmAttach(id, 0, 0) }

// ShmDetach is shmdt(2).
func ShmDetach(b []byte) error { return unix.SysvShmDetach(b) }

// ShmRemove is shmctl(IPC_RMID): the key is freed now, the memory when the
// last process detaches.
func ShmRemove(id int) error { _, err := unix.SysvShmCtl(id, unix.IPC_RMID, nil); return err }

// ShmInfo is what shmctl(IPC_STAT) tells about a segment.
type ShmInfo struct {
	Size       uint64
	CreatorPID int
	Attached   uint64
	Mode       uint32
	Changed    time.Time
}

// ShmStat is shmctl(IPC_STAT).
func ShmStat(id int) (ShmInfo, error) {
	var d unix.SysvShmDesc
	if _, err := unix.SysvShmCtl(id, unix.IPC_STAT, &d); err != nil {
		return ShmInfo{}, err
	}
	return ShmInfo{
		Size:       uint64(d.Segsz), // uint32 on 32-bit platforms
		CreatorPID: int(d.Cpid),
		Attached:   uint64(d.Nattch),
		Mode:       uint32(d.Perm.Mode) & 0o777,
		Changed:    time.Unix(int64(d.Ctime), 0),
	}, nil
}
