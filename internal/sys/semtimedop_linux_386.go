//go:build linux && 386

package sys

import (
	"unsafe"

	"golang.org/x/sys/unix"
)

// ipcSemTimedOp is the ipc(2) call number of semtimedop (linux/ipc.h).
const ipcSemTimedOp = 4

// semtimedop is semtimedop(2) through the ipc(2) multiplexer: 32-bit x86
// has no semtimedop system call of its own (only semtimedop_time64, since
// Linux 5.1), and the multiplexer takes the 32-bit timespec that
// unix.Timespec is here.
func semtimedop(id int, sops unsafe.Pointer, nsops int, timeout unsafe.Pointer) unix.Errno {
	_, _, e := unix.Syscall6(unix.SYS_IPC, ipcSemTimedOp, uintptr(id), uintptr(nsops), 0, uintptr(sops), uintptr(timeout))
	return e
}
