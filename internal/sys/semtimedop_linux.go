//go:build linux && !386

package sys

import (
	"unsafe"

	"golang.org/x/sys/unix"
)

// semtimedop is the semtimedop(2) system call.
func semtimedop(id int, sops unsafe.Pointer, nsops int, timeout unsafe.Pointer) unix.Errno {
	_, _, e := unix.Syscall6(unix.SYS_SEMTIMEDOP, uintptr(id), uintptr(sops), uintptr(nsops), uintptr(timeout), 0, 0)
	return e
}
