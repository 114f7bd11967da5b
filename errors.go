package ipc

import "github.com/heapipc/ipc/internal/errs"

// Sentinel errors. Every error heapipc returns for a documented condition
// wraps one of these (with the operation and the name), so errors.Is works;
// errno values from the system stay in the chain too. Errors about bytes
// read from shared memory are *CorruptError values, which say where.
var (
	// ErrInvalidName: a buffer or object name that is empty, too long, has
	// characters outside [A-Za-z0-9._-], or starts with '.' or '-'.
	ErrInvalidName = errs.ErrInvalidName
	// ErrInvalidSize: a size that is zero, negative, too large, or not a
	// power of two where one is needed.
	ErrInvalidSize = errs.ErrInvalidSize
	// ErrInvalidArgument: an option or argument out of its range.
	ErrInvalidArgument = errs.ErrInvalidArgument
	// ErrNotExist: no buffer, channel or static segment of that name or id.
	ErrNotExist = errs.ErrNotExist
	// ErrExist: the buffer exists and Open was asked to create it only.
	ErrExist = errs.ErrExist
	// ErrNotSupported: the backend does not exist on this OS.
	ErrNotSupported = errs.ErrNotSupported
	// ErrNotHeapIPC: the name refers to something that is not a heapipc
	// buffer.
	ErrNotHeapIPC = errs.ErrNotHeapIPC
	// ErrVersion: a buffer made by a heapipc of another layout version.
	ErrVersion = errs.ErrVersion
	// ErrBackendMismatch: the buffer was made with other backends.
	ErrBackendMismatch = errs.ErrBackendMismatch
	// ErrSizeMismatch: the buffer, channel or static segment exists with
	// another size.
	ErrSizeMismatch = errs.ErrSizeMismatch
	// ErrKeyCollision: a SysV key of the name belongs to another object.
	ErrKeyCollision = errs.ErrKeyCollision
	// ErrCorrupt: shared memory breaks an invariant (see CorruptError).
	ErrCorrupt = errs.ErrCorrupt
	// ErrNotReady: the creator of the buffer or a channel is alive but has
	// not finished creating it in time.
	ErrNotReady = errs.ErrNotReady
	// ErrStale: the creator died before the object was ready.
	ErrStale = errs.ErrStale
	// ErrTimeout: a wait with a timeout ran out.
	ErrTimeout = errs.ErrTimeout
	// ErrWouldBlock: a Try operation could not proceed now (ring full or
	// empty). It is returned as it is, not wrapped, so that a poll that
	// finds nothing allocates nothing.
	ErrWouldBlock = errs.ErrWouldBlock
	// ErrClosed: the buffer, handle or channel end was closed by this
	// process.
	ErrClosed = errs.ErrClosed
	// ErrDestroyed: the buffer was destroyed (by this or another process).
	ErrDestroyed = errs.ErrDestroyed
	// ErrNoSpace: the heap has no free run large enough, or /dev/shm is
	// full. Nothing was changed.
	ErrNoSpace = errs.ErrNoSpace
	// ErrOverflow: a counter would exceed its maximum.
	ErrOverflow = errs.ErrOverflow
	// ErrPermission: the OS refused access.
	ErrPermission = errs.ErrPermission
	// ErrPeerDead: the other end of a channel died.
	ErrPeerDead = errs.ErrPeerDead
	// ErrBusy: the end of a channel is held by a live process.
	ErrBusy = errs.ErrBusy
	// ErrWrongType: the channel exists with another type.
	ErrWrongType = errs.ErrWrongType
	// ErrDoubleFree: the record was already freed.
	ErrDoubleFree = errs.ErrDoubleFree
	// ErrNotAllocated: not a live record of this buffer.
	ErrNotAllocated = errs.ErrNotAllocated
	// ErrForeign: memory of another buffer (or Go memory).
	ErrForeign = errs.ErrForeign
	// ErrReset: a stream was reset or zeroed (by either end) while a
	// commit or consume was in flight; it was dropped, never applied to
	// the new state.
	ErrReset = errs.ErrReset
	// ErrAborted: a mailbox responder failed to produce its reply (its
	// handler returned an error, or its reply source failed) and aborted
	// it; the request failed, the mailbox stays usable.
	ErrAborted = errs.ErrAborted
)

// CorruptError reports a bad value read from shared memory, and where.
type CorruptError = errs.CorruptError
