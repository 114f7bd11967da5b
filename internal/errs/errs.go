// Package errs holds the sentinel errors of heapipc. Every public package
// re-exports the ones it returns under the same value, so errors.Is works
// whichever package a caller imported the sentinel from.
package errs

import (
	"errors"
	"fmt"
)

var (
	// ErrInvalidName: a name outside [A-Za-z0-9._-], empty, too long, or
	// starting with '.' or '-'. Nothing was touched.
	ErrInvalidName = errors.New("invalid name")
	// ErrInvalidSize: a size that is zero, negative, too large, or not
	// what the operation allows.
	ErrInvalidSize = errors.New("invalid size")
	// ErrInvalidArgument: an option or argument out of its range.
	ErrInvalidArgument = errors.New("invalid argument")
	// ErrNotExist: no object of that name (or id).
	ErrNotExist = errors.New("does not exist")
	// ErrExist: an object of that name already exists (exclusive create).
	ErrExist = errors.New("already exists")
	// ErrNotSupported: the backend or operation does not exist on this OS.
	ErrNotSupported = errors.New("not supported")
	// ErrNotHeapIPC: the object exists but is not a heapipc segment (wrong
	// magic): a foreign file or segment.
	ErrNotHeapIPC = errors.New("not a heapipc object")
	// ErrVersion: a heapipc segment of another layout version.
	ErrVersion = errors.New("layout version mismatch")
	// ErrBackendMismatch: the segment was made with other backends than
	// the ones asked for.
	ErrBackendMismatch = errors.New("backend mismatch")
	// ErrSizeMismatch: the segment (or channel) exists with another size.
	ErrSizeMismatch = errors.New("size mismatch")
	// ErrKeyCollision: a SysV key derived from the name belongs to an
	// object of another name.
	ErrKeyCollision = errors.New("SysV key collision")
	// ErrCorrupt: shared memory holds a value that breaks an invariant.
	// Returned errors are *CorruptError, which say where.
	ErrCorrupt = errors.New("corrupt shared memory")
	// ErrNotReady: a segment stayed in the initializing state past the
	// ready timeout while its creator is still alive.
	ErrNotReady = errors.New("not ready")
	// ErrStale: the creator died before the object was ready, and it could
	// not be recovered.
	ErrStale = errors.New("stale object left by a dead creator")
	// ErrTimeout: a wait with a timeout ran out.
	ErrTimeout = errors.New("timed out")
	// ErrWouldBlock: a non-blocking operation could not proceed now.
	ErrWouldBlock = errors.New("would block")
	// ErrClosed: the handle, segment or semaphore was closed by this process.
	ErrClosed = errors.New("closed")
	// ErrDestroyed: the buffer was destroyed by another user.
	ErrDestroyed = errors.New("destroyed")
	// ErrNoSpace: not enough memory: /dev/shm is full, or the heap has no
	// free run large enough.
	ErrNoSpace = errors.New("no space")
	// ErrOverflow: a counter (semaphore value) would exceed its maximum.
	ErrOverflow = errors.New("overflow")
	// ErrPermission: the OS refused access to the object.
	ErrPermission = errors.New("permission denied")
	// ErrPeerDead: the other end of a channel (or a lock holder) died.
	ErrPeerDead = errors.New("peer is dead")
	// ErrBusy: the exclusive end is held by a live owner.
	ErrBusy = errors.New("busy")
	// ErrWrongType: the channel exists with another type.
	ErrWrongType = errors.New("wrong channel type")
	// ErrDoubleFree: the extent or record was already free. Nothing was
	// changed.
	ErrDoubleFree = errors.New("double free")
	// ErrNotAllocated: the offset (or view) is not the start of a live
	// allocation of this buffer: not an extent of the heap, not a record
	// of a slab. Nothing was changed.
	ErrNotAllocated = errors.New("not an allocation of this buffer")
	// ErrForeign: the view lies outside this buffer's mapping (a record of
	// another buffer, or Go memory). Nothing was changed.
	ErrForeign = errors.New("memory of another buffer")
	// ErrReset: a stream was reset (or zeroed) while the operation was in
	// flight: the commit or consume it would have made was dropped, never
	// applied to the new state. Ask for fresh spans and go on.
	ErrReset = errors.New("stream was reset")
	// ErrAborted: the peer gave up a message it had begun to send (a
	// mailbox responder whose handler or reply source failed); what came
	// of it was dropped.
	ErrAborted = errors.New("message aborted by the sender")
)

// CorruptError reports a bad value read from shared memory, and where.
type CorruptError struct {
	Where  string // structure and field, e.g. "header.dataOffset"
	Off    uint64 // offset in the buffer where the bad value was found
	Detail string
}

func (e *CorruptError) Error() string {
	return fmt.Sprintf("corrupt shared memory: %s at offset %#x: %s", e.Where, e.Off, e.Detail)
}

// Is makes errors.Is(err, ErrCorrupt) true.
func (e *CorruptError) Is(target error) bool { return target == ErrCorrupt }

// Corrupt builds a *CorruptError.
func Corrupt(where string, off uint64, format string, args ...any) error {
	return &CorruptError{Where: where, Off: off, Detail: fmt.Sprintf(format, args...)}
}
