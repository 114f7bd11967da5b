package backend

import "github.com/heapipc/ipc/internal/errs"

// Sentinel errors; see the package ipc for the full list. They are the same
// values as the ones ipc exports.
var (
	ErrInvalidName     = errs.ErrInvalidName
	ErrInvalidSize     = errs.ErrInvalidSize
	ErrInvalidArgument = errs.ErrInvalidArgument
	ErrNotExist        = errs.ErrNotExist
	ErrExist           = errs.ErrExist
	ErrNotSupported    = errs.ErrNotSupported
	ErrNotHeapIPC      = errs.ErrNotHeapIPC
	ErrVersion         = errs.ErrVersion
	ErrBackendMismatch = errs.ErrBackendMismatch
	ErrSizeMismatch    = errs.ErrSizeMismatch
	ErrKeyCollision    = errs.ErrKeyCollision
	ErrCorrupt         = errs.ErrCorrupt
	ErrNotReady        = errs.ErrNotReady
	ErrStale           = errs.ErrStale
	ErrTimeout         = errs.ErrTimeout
	ErrWouldBlock      = errs.ErrWouldBlock
	ErrClosed          = errs.ErrClosed
	ErrDestroyed       = errs.ErrDestroyed
	ErrNoSpace         = errs.ErrNoSpace
	ErrOverflow        = errs.ErrOverflow
	ErrPermission      = errs.ErrPermission
)
