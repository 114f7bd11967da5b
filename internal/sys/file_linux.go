//go:build linux

package sys

import (
	"golang.org/x/sys/unix"
)

// Open flags used by the POSIX backend.
const (
	ORdwr     = unix.O_RDWR
	OCreat    = unix.O_CREAT
	OExcl     = unix.O_EXCL
	ONofollow = unix.O_NOFOLLOW
	OCloexec  = unix.O_CLOEXEC
	ONonblock = unix.O_NONBLOCK
)

// Open is open(2) with O_CLOEXEC and O_NOFOLLOW always added.
func Open(path string, flags int, mode uint32) (int, error) {
	return unix.Open(path, flags|unix.O_CLOEXEC|unix.O_NOFOLLOW, mode)
}

// Close is close(2).
func Close(fd int) error { return unix.Close(fd) }

// Ftruncate is ftruncate(2).
func Ftruncate(fd int, size int64) error { return unix.Ftruncate(fd, size) }

// Fallocate reserves [0, size) so that later page faults cannot fail with
// SIGBUS on a full tmpfs. Filesystems without fallocate are accepted.
//
// A size the filesystem's free space cannot hold fails at once with
// ENOSPC and nothing reserved (tmpfs does the same check for a single
// call). Otherwise it reserves fallocChunk bytes a call and repeats a call
// that a signal interrupted: older kernels stopped a tmpfs fallocate with
// EINTR at any pending signal, not only a fatal one, and gave back what
// that call had reserved, so a large buffer made while signals arrive (the
// Go runtime's own, a profiler's timer) could fail, or never finish if
// retried whole. A call that fails half-way (another process took the
// space meanwhile) gives back what the earlier calls reserved before it
// returns: a tmpfs is memory, and the machine must not stay short of it
// until the caller removes the file.
func Fallocate(fd int, size int64) error {
	if err := fitsFree(fd, size); err != nil {
		return err
	}
	for off := int64(0); off < size; {
		n := min(size-off, fallocChunk)
		switch err := fallocate(fd, 0, off, n); err {
		case nil:
			off += n
		case unix.EINTR:
		case unix.EOPNOTSUPP, unix.ENOSYS:
			return nil
		default:
			if off > 0 {
				_ = fallocate(fd, unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, 0, off)
			}
			return err
		}
	}
	return nil
}

// fallocate is fallocate(2); tests replace it.
var fallocate = unix.Fallocate

// fitsFree says ENOSPC when the filesystem holding fd has less room than
// what [0, size) still needs beyond the blocks fd already has. A
// filesystem that reports no size (a tmpfs without a limit) is not
// judged.
func fitsFree(fd int, size int64) error {
	var fs unix.Statfs_t
	var st unix.Stat_t
	if unix.Fstatfs(fd, &fs) != nil || fs.Blocks == 0 || unix.Fstat(fd, &st) != nil {
		return nil
	}
	unit := uint64(fs.Frsize)
	if unit == 0 {
		unit = uint64(fs.Bsize)
	}
	need := uint64(size) - min(uint64(size), uint64(st.Blocks)*512)
	if fs.Bavail < (need+unit-1)/unit {
		return unix.ENOSPC
	}
	return nil
}

// fallocChunk is how much one fallocate call of Fallocate reserves: what
// a signal can make it redo.
const fallocChunk = 64 << 20

// Fchmod is fchmod(2) (the umask does not apply to it).
func Fchmod(fd int, mode uint32) error { return unix.Fchmod(fd, mode) }

// FileInfo is what fstat/stat tell the backends.
type FileInfo struct {
	Dev, Ino uint64
	Size     int64
	Mode     uint32
	Regular  bool
}

func fromStat(st *unix.Stat_t) FileInfo {
	return FileInfo{Dev: uint64(st.Dev), Ino: st.Ino, Size: st.Size, Mode: st.Mode & 0o7777, Regular: st.Mode&unix.S_IFMT == unix.S_IFREG}
}

// Fstat is fstat(2).
func Fstat(fd int) (FileInfo, error) {
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return FileInfo{}, err
	}
	return fromStat(&st), nil
}

// Lstat is lstat(2).
func Lstat(path string) (FileInfo, error) {
	var st unix.Stat_t
	if err := unix.Lstat(path, &st); err != nil {
		return FileInfo{}, err
	}
	return fromStat(&st), nil
}

// Mmap maps size bytes of fd shared, read-write.
func Mmap(fd int, size int) ([]byte, error) {
	return unix.Mmap(fd, 0, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
}

// Munmap is munmap(2).
func Munmap(b []byte) error { return unix.Munmap(b) }

// Link is link(2): it fails with EEXIST if newpath exists, which is what
// makes publishing a fully written file atomic.
func Link(oldpath, newpath string) error { return unix.Link(oldpath, newpath) }

// Pread is pread(2).
func Pread(fd int, b []byte, off int64) (int, error) { return unix.Pread(fd, b, off) }

// Unlink is unlink(2).
func Unlink(path string) error { return unix.Unlink(path) }

// Flock is flock(2) with LOCK_EX (exclusive) or LOCK_UN (unlock).
func Flock(fd int, exclusive bool) error {
	how := unix.LOCK_UN
	if exclusive {
		how = unix.LOCK_EX
	}
	for {
		err := unix.Flock(fd, how)
		if err != unix.EINTR {
			return err
		}
	}
}

// FreeBytes is the space available to unprivileged users on the
// filesystem holding path (statfs f_bavail * f_bsize).
func FreeBytes(path string) (uint64, error) {
	var st unix.Statfs_t
	if err := unix.Statfs(path, &st); err != nil {
		return 0, err
	}
	return st.Bavail * uint64(st.Bsize), nil
}
