//go:build !linux

package backend

import (
	"fmt"
	"os"
	"runtime"
)

func unsupported(op string, k Kind) error {
	return fmt.Errorf("%s: %s backend on %s: %w", op, k, runtime.GOOS, ErrNotSupported)
}

type posixSegments struct{}
type posixSemaphores struct{}
type sysvSegments struct{}
type sysvSemaphores struct{}

func (posixSegments) Kind() Kind { return POSIX }
func (posixSegments) Create(name string, size int64, mode os.FileMode, fill func([]byte) error) (Segment, error) {
	return nil, unsupported("create segment", POSIX)
}
func (posixSegments) Attach(name string) (Segment, error) {
	return nil, unsupported("attach segment", POSIX)
}
func (posixSegments) Remove(name string) error { return unsupported("remove segment", POSIX) }

func (sysvSegments) Kind() Kind { return SysV }
func (sysvSegments) Create(name string, size int64, mode os.FileMode, fill func([]byte) error) (Segment, error) {
	return nil, unsupported("create segment", SysV)
}
func (sysvSegments) Attach(name string) (Segment, error) {
	return nil, unsupported("attach segment", SysV)
}
func (sysvSegments) Remove(name string) error { return unsupported("remove segment", SysV) }

func (posixSemaphores) Kind() Kind    { return POSIX }
func (posixSemaphores) MaxValue() int { return semValueMax }
func (posixSemaphores) Create(name string, value int, opts SemOptions) (Semaphore, error) {
	return nil, unsupported("create semaphore", POSIX)
}
func (posixSemaphores) Open(name string, opts SemOptions) (Semaphore, error) {
	return nil, unsupported("open semaphore", POSIX)
}
func (posixSemaphores) Remove(name string) error { return unsupported("remove semaphore", POSIX) }

func (sysvSemaphores) Kind() Kind    { return SysV }
func (sysvSemaphores) MaxValue() int { return 32767 }
func (sysvSemaphores) Create(name string, value int, opts SemOptions) (Semaphore, error) {
	return nil, unsupported("create semaphore", SysV)
}
func (sysvSemaphores) Open(name string, opts SemOptions) (Semaphore, error) {
	return nil, unsupported("open semaphore", SysV)
}
func (sysvSemaphores) Remove(name string) error { return unsupported("remove semaphore", SysV) }

// SysVSemSet is a sysv semaphore set SysVSemSets found.
type SysVSemSet struct {
	Key  int32
	ID   int
	Data []int
}

// SysVSemSets lists sysv semaphore sets: not on this system.
func SysVSemSets(n int) ([]SysVSemSet, error) {
	return nil, unsupported("list semaphores", SysV)
}
