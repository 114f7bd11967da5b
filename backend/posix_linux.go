//go:build linux

package backend

import (
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/heapipc/ipc/internal/sys"
)

// tempPath names a file that no valid name can collide with (valid names
// do not start with '.'); the pid in it tells whose it is.
// tempPrefix starts the names of the files a creator makes in ShmDir
// before it publishes them (createPublished), followed by its pid.
const tempPrefix = ".hipc-tmp."

// tempMinAge is how old a temporary file of a dead pid must be for
// sweepTemps to remove it.
const tempMinAge = time.Minute

// sweepTemps removes, once per process, the temporary files of creators
// that died between making one and removing it (they are never
// published, and nothing else would remove them). A file whose pid is
// alive (its creator, or another process that has the pid now) is left.
var sweepTemps = sync.OnceFunc(sweepTempFiles)

func sweepTempFiles() {
	ents, err := os.ReadDir(ShmDir)
	if err != nil {
		return
	}
	for _, e := range ents {
		rest, ok := strings.CutPrefix(e.Name(), tempPrefix)
		if !ok {
			continue
		}
		pid, _, _ := strings.Cut(rest, ".")
		n, err := strconv.Atoi(pid)
		if err != nil || n <= 0 || sys.AlivePID(n) {
			continue
		}
		// A creator holds its file for the time of a fill; a young
		// one may be of a process this one cannot see (another pid
		// namespace sharing ShmDir).
		if info, err := e.Info(); err == nil && time.Since(info.ModTime()) > tempMinAge {
			sys.Unlink(ShmDir + "/" + e.Name())
		}
	}
}

func tempPath() string {
	var r [8]byte
	rand.Read(r[:])
	return ShmDir + "/" + tempPrefix + strconv.Itoa(os.Getpid()) + "." + hex.EncodeToString(r[:])
}

// createPublished makes a file of size bytes under a temporary name with
// the exact mode, maps it, lets fill write it, and publishes it under path
// with link(2), which fails if path exists: so a file under the final name
// is always complete. It returns the mapping and the file's identity.
func createPublished(op, name, path string, size int64, mode os.FileMode, fill func([]byte) error) (b []byte, fi sys.FileInfo, err error) {
	sweepTemps()
	tmp := tempPath()
	fd, err := sys.Open(tmp, sys.ORdwr|sys.OCreat|sys.OExcl, modeOr(mode))
	if err != nil {
		return nil, fi, osError(op, name, err)
	}
	defer func() {
		sys.Unlink(tmp)
		if err != nil && b != nil {
			sys.Munmap(b)
			b = nil
		}
	}()
	defer sys.Close(fd)
	if err := sys.Fchmod(fd, modeOr(mode)); err != nil {
		return nil, fi, osError(op, name, err)
	}
	if err := sys.Ftruncate(fd, size); err != nil {
		return nil, fi, osError(op, name, err)
	}
	if err := sys.Fallocate(fd, size); err != nil {
		return nil, fi, fmt.Errorf("%s %q: reserving %d bytes in %s (is it large enough? containers often mount 64 MiB): %w",
			op, name, size, ShmDir, osError("fallocate", name, err))
	}
	if fi, err = sys.Fstat(fd); err != nil {
		return nil, fi, osError(op, name, err)
	}
	if b, err = sys.Mmap(fd, int(size)); err != nil {
		return nil, fi, osError(op, name, err)
	}
	if fill != nil {
		if err = fill(b); err != nil {
			return b, fi, err
		}
	}
	if err = sys.Link(tmp, path); err != nil {
		return b, fi, osError(op, name, err)
	}
	return b, fi, nil
}

// openMapped opens an existing file and maps all of it (at least min
// bytes). A file that is not a regular file, or too small, is not ours.
func openMapped(op, name, path string, min int64) ([]byte, sys.FileInfo, error) {
	fd, err := sys.Open(path, sys.ORdwr, 0)
	if err != nil {
		if notFile(err) {
			return nil, sys.FileInfo{}, fmt.Errorf("%s %q: %s is not a heapipc object: %w (%w)", op, name, path, ErrNotHeapIPC, err)
		}
		return nil, sys.FileInfo{}, osError(op, name, err)
	}
	defer sys.Close(fd)
	fi, err := sys.Fstat(fd)
	if err != nil {
		return nil, fi, osError(op, name, err)
	}
	if !fi.Regular || fi.Size < min {
		return nil, fi, fmt.Errorf("%s %q: %s is not a heapipc object (%d bytes): %w", op, name, path, fi.Size, ErrNotHeapIPC)
	}
	if fi.Size > maxSegmentSize || int64(int(fi.Size)) != fi.Size {
		return nil, fi, fmt.Errorf("%s %q: size %d: %w", op, name, fi.Size, ErrInvalidSize)
	}
	b, err := sys.Mmap(fd, int(fi.Size))
	if err != nil {
		return nil, fi, osError(op, name, err)
	}
	return b, fi, nil
}

// notFile reports whether err is open's or unlink's for a name that is not
// a regular file: a directory, or a symbolic link (sys.Open does not
// follow them). Anyone can make either in ShmDir; neither is heapipc's.
func notFile(err error) bool {
	return errors.Is(err, syscall.EISDIR) || errors.Is(err, syscall.ELOOP)
}

// removeFile unlinks the file of a segment or semaphore; a directory
// there is not heapipc's (ErrNotHeapIPC).
// removeFile removes path if it is a heapipc object: a regular file whose
// first bytes ours says they are (a region's header, a semaphore's
// shared flag). Anything else under the name (another program's file, a
// directory, a FIFO) is ErrNotHeapIPC and stays. The check and the unlink
// are of one file (unlinkIfSame).
func removeFile(op, name, path string, ours func(fi sys.FileInfo, head []byte) bool) error {
	fd, err := sys.Open(path, sys.ONonblock, 0) // a FIFO must not block the open
	if err != nil {
		if errors.Is(err, syscall.ELOOP) {
			return fmt.Errorf("%s %q: %s is not a heapipc object: %w (%w)", op, name, path, ErrNotHeapIPC, err)
		}
		return osError(op, name, err)
	}
	fi, err := sys.Fstat(fd)
	var head [16]byte
	n := 0
	if err == nil && fi.Regular {
		n, err = sys.Pread(fd, head[:], 0)
	}
	sys.Close(fd)
	if err != nil {
		return osError(op, name, err)
	}
	if !fi.Regular || !ours(fi, head[:n]) {
		return fmt.Errorf("%s %q: %s is not a heapipc object (remove it by hand if it is garbage): %w", op, name, path, ErrNotHeapIPC)
	}
	return unlinkIfSame(op, name, path, fi)
}

// isRegionFile: a POSIX segment is published (renamed to its name) only
// after its header is written, so the file under a name starts with Magic.
func isRegionFile(fi sys.FileInfo, head []byte) bool {
	return fi.Size >= headerSize && len(head) >= 8 && binary.NativeEndian.Uint64(head) == Magic
}

// isSemFile: a named semaphore is semSize bytes with the shared flag set,
// as glibc's and ours are.
func isSemFile(fi sys.FileInfo, head []byte) bool {
	return fi.Size == semSize && len(head) >= semPrivateOff+4 && binary.NativeEndian.Uint32(head[semPrivateOff:]) == semShared
}

// unlinkIfSame removes path only if it is still the file fi. The check and
// the unlink happen under flock on the file, which every remover takes, so
// two processes removing a stale object cannot remove a new one made
// between the check and the unlink by a third.
func unlinkIfSame(op, name, path string, fi sys.FileInfo) error {
	fd, err := sys.Open(path, sys.ONonblock, 0) // never blocks, whatever lies under the name
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil
		}
		return osError(op, name, err)
	}
	defer sys.Close(fd)
	cur, err := sys.Fstat(fd)
	if err != nil {
		return osError(op, name, err)
	}
	if cur.Dev != fi.Dev || cur.Ino != fi.Ino {
		return nil
	}
	if err := sys.Flock(fd, true); err != nil {
		return osError(op, name, err)
	}
	defer sys.Flock(fd, false)
	now, err := sys.Lstat(path)
	if err != nil || now.Dev != fi.Dev || now.Ino != fi.Ino {
		return nil
	}
	if err := sys.Unlink(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return osError(op, name, err)
	}
	return nil
}

func posixSemPath(name string) string { return ShmDir + "/sem." + name }

type posixSegments struct{}

// posixSegName validates a segment's name: a valid object name whose file
// is not a semaphore's (ValidateName).
func posixSegName(name string) error {
	if err := ValidateObjectName(name); err != nil {
		return err
	}
	return notSemPrefixed(name)
}

func (posixSegments) Kind() Kind { return POSIX }

func (posixSegments) Create(name string, size int64, mode os.FileMode, fill func([]byte) error) (Segment, error) {
	if err := posixSegName(name); err != nil {
		return nil, err
	}
	if err := checkSegmentSize(size); err != nil {
		return nil, err
	}
	b, fi, err := createPublished("create posix segment", name, posixSegPath(name), size, mode, fill)
	if err != nil {
		return nil, err
	}
	return &posixSegment{name: name, b: b, fi: fi}, nil
}

func (posixSegments) Attach(name string) (Segment, error) {
	if err := posixSegName(name); err != nil {
		return nil, err
	}
	b, fi, err := openMapped("attach posix segment", name, posixSegPath(name), 1)
	if err != nil {
		return nil, err
	}
	return &posixSegment{name: name, b: b, fi: fi}, nil
}

func (posixSegments) Remove(name string) error {
	if err := posixSegName(name); err != nil {
		return err
	}
	return removeFile("remove posix segment", name, posixSegPath(name), isRegionFile)
}

type posixSegment struct {
	name string
	fi   sys.FileInfo
	mu   sync.Mutex
	b    []byte
}

func (s *posixSegment) Name() string    { return s.name }
func (s *posixSegment) Kind() Kind      { return POSIX }
func (s *posixSegment) CreatorPID() int { return 0 }
func (s *posixSegment) Bytes() []byte {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b
}

func (s *posixSegment) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.b == nil {
		return nil
	}
	err := sys.Munmap(s.b)
	s.b = nil
	return osError("close posix segment", s.name, err)
}

func (s *posixSegment) Unlink() error {
	return unlinkIfSame("unlink posix segment", s.name, posixSegPath(s.name), s.fi)
}

type posixSemaphores struct{}

func (posixSemaphores) Kind() Kind    { return POSIX }
func (posixSemaphores) MaxValue() int { return semValueMax }

func (posixSemaphores) Create(name string, value int, opts SemOptions) (Semaphore, error) {
	if err := ValidateObjectName(name); err != nil {
		return nil, err
	}
	if value < 0 || value > semValueMax {
		return nil, fmt.Errorf("create posix semaphore %q: value %d outside [0,%d]: %w", name, value, semValueMax, ErrInvalidArgument)
	}
	b, fi, err := createPublished("create posix semaphore", name, posixSemPath(name), semSize, opts.Mode,
		func(b []byte) error { initSem(b, value); return nil })
	if err != nil {
		return nil, err
	}
	return newPosixSem(name, b, fi)
}

func (posixSemaphores) Open(name string, opts SemOptions) (Semaphore, error) {
	if err := ValidateObjectName(name); err != nil {
		return nil, err
	}
	b, fi, err := openMapped("open posix semaphore", name, posixSemPath(name), semSize)
	if err != nil {
		return nil, err
	}
	if fi.Size != semSize || binary.NativeEndian.Uint32(b[semPrivateOff:]) != semShared {
		sys.Munmap(b)
		return nil, fmt.Errorf("open posix semaphore %q: %s is not a named semaphore: %w", name, posixSemPath(name), ErrNotHeapIPC)
	}
	return newPosixSem(name, b, fi)
}

func (posixSemaphores) Remove(name string) error {
	if err := ValidateObjectName(name); err != nil {
		return err
	}
	return removeFile("remove posix semaphore", name, posixSemPath(name), isSemFile)
}

func newPosixSem(name string, b []byte, fi sys.FileInfo) (Semaphore, error) {
	unlink := func() error {
		return unlinkIfSame("unlink posix semaphore", name, posixSemPath(name), fi)
	}
	s, err := newFutexSem(name, POSIX, b, sys.Munmap, unlink)
	if err != nil {
		sys.Munmap(b)
		return nil, err
	}
	return s, nil
}
