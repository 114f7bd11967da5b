package backend

import (
	"context"
	"fmt"
	"os"
	"time"
)

// Kind names a backend implementation.
type Kind string

// The backend kinds.
const (
	POSIX Kind = "posix" // /dev/shm files and glibc-compatible named semaphores
	SysV  Kind = "sysv"  // shmget/shmat and semget/semtimedop
	Heap  Kind = "heap"  // Go memory in this process (for -race and tests)
)

// Kinds lists every kind, in a stable order.
var Kinds = []Kind{POSIX, SysV, Heap}

// ParseKind maps a name ("posix", "sysv", "heap") to a Kind.
func ParseKind(s string) (Kind, error) {
	for _, k := range Kinds {
		if string(k) == s {
			return k, nil
		}
	}
	return "", fmt.Errorf("backend kind %q (want posix, sysv or heap): %w", s, ErrInvalidArgument)
}

// code is the kind's number in the region header.
func (k Kind) code() uint8 {
	switch k {
	case POSIX:
		return 1
	case SysV:
		return 2
	case Heap:
		return 3
	}
	return 0
}

func kindOf(code uint8) Kind {
	for _, k := range Kinds {
		if k.code() == code {
			return k
		}
	}
	return Kind(fmt.Sprintf("unknown(%d)", code))
}

// DefaultSegmentKind is the segment backend chosen by the build tags:
// sysv with ipc_sysvshm, posix otherwise.
func DefaultSegmentKind() Kind { return defaultSegmentKind }

// DefaultSemaphoreKind is the semaphore backend chosen by the build tags:
// sysv with ipc_sysvsem, posix otherwise.
func DefaultSemaphoreKind() Kind { return defaultSemaphoreKind }

// DefaultMode is the permission of created objects: owner read-write.
const DefaultMode os.FileMode = 0o600

// Segment is a mapped block of named shared memory.
type Segment interface {
	// Name is the name the segment was created or attached by.
	Name() string
	// Kind is the backend.
	Kind() Kind
	// Bytes is the mapping. It must not be used after Close.
	Bytes() []byte
	// CreatorPID is the pid the operating system records as the
	// creator, or 0 where it records none (posix, heap).
	CreatorPID() int
	// Close unmaps the segment. The name stays.
	Close() error
	// Unlink removes the name if it still refers to this segment (a
	// segment created anew under the same name is left alone). Mappings
	// stay valid until closed.
	Unlink() error
}

// SegmentBackend creates, attaches and removes segments of one kind.
type SegmentBackend interface {
	Kind() Kind
	// Create makes a segment of size bytes, exclusively: ErrExist if the
	// name is taken. fill runs on the zeroed bytes before the name is
	// published where the backend can do so (posix, heap); on sysv the
	// segment is visible, zeroed, while fill runs.
	Create(name string, size int64, mode os.FileMode, fill func([]byte) error) (Segment, error)
	// Attach maps an existing segment: ErrNotExist if there is none.
	Attach(name string) (Segment, error)
	// Remove removes the name, whoever made it.
	Remove(name string) error
}

// Semaphore is a named counting semaphore shared between processes.
type Semaphore interface {
	Name() string
	Kind() Kind
	// Wait decrements the value, blocking while it is zero, until ctx is
	// done (ctx.Err() is returned, wrapped).
	Wait(ctx context.Context) error
	// WaitTimeout is Wait with a timeout; running out returns ErrTimeout.
	WaitTimeout(d time.Duration) error
	// TryWait decrements the value if it is positive, or returns
	// ErrWouldBlock.
	TryWait() error
	// Post increments the value and wakes one waiter; ErrOverflow at the
	// backend's maximum.
	Post() error
	// Value is the current value (a snapshot).
	Value() (int, error)
	// Close releases this handle; waiters in this process return
	// ErrClosed. The semaphore stays.
	Close() error
	// Unlink removes the name. Other handles keep working on posix and
	// heap; on sysv the kernel removes the set at once and their waits
	// fail with ErrDestroyed.
	Unlink() error
}

// SemOptions are the options of a semaphore handle.
type SemOptions struct {
	// Mode is the permission of a created semaphore (default 0600).
	Mode os.FileMode
	// Undo makes waits and posts on sysv use SEM_UNDO, so the kernel
	// gives back what a process holds when it dies: for semaphores used
	// as locks, where the process that waits is the one that posts. The
	// kernel keeps each process's adjustment within ±32767 (semop fails
	// with ERANGE beyond), so do not use it where one process only posts
	// and another only waits. Ignored by posix and heap, where the layers
	// above record the holder instead.
	Undo bool
	// Data are values (each 0..MaxValue) that a sysv semaphore's set
	// keeps after its value and its tag, so that the set can be found
	// and told apart without its name (SysVSemSets lists the sets with
	// as many): what makes sysv semaphores of a buffer that cannot be
	// opened any more removable. Ignored by posix and heap.
	Data []int
}

// SemaphoreBackend creates, opens and removes semaphores of one kind.
type SemaphoreBackend interface {
	Kind() Kind
	// Create makes a semaphore with the initial value, exclusively:
	// ErrExist if the name is taken.
	Create(name string, value int, opts SemOptions) (Semaphore, error)
	// Open opens an existing semaphore: ErrNotExist if there is none.
	Open(name string, opts SemOptions) (Semaphore, error)
	// Remove removes the name, whoever made it.
	Remove(name string) error
	// MaxValue is the largest value a semaphore of this kind can hold.
	MaxValue() int
}

// Segments returns the segment backend of kind k.
func Segments(k Kind) (SegmentBackend, error) {
	switch k {
	case POSIX:
		return posixSegments{}, nil
	case SysV:
		return sysvSegments{}, nil
	case Heap:
		return heapSegments{}, nil
	}
	_, err := ParseKind(string(k))
	return nil, err
}

// Semaphores returns the semaphore backend of kind k.
func Semaphores(k Kind) (SemaphoreBackend, error) {
	switch k {
	case POSIX:
		return posixSemaphores{}, nil
	case SysV:
		return sysvSemaphores{}, nil
	case Heap:
		return heapSemaphores{}, nil
	}
	_, err := ParseKind(string(k))
	return nil, err
}
