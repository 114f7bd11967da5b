package backend

import (
	"errors"
	"fmt"
	"io/fs"
	"syscall"

	"github.com/heapipc/ipc/internal/errs"
)

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

// osError wraps an errno from a backend call with the operation, the name,
// and the sentinel that matches it, keeping the errno for errors.Is too.
func osError(op, name string, err error) error {
	if err == nil {
		return nil
	}
	var sentinel error
	switch {
	case errors.Is(err, fs.ErrExist):
		sentinel = ErrExist
	case errors.Is(err, fs.ErrNotExist):
		sentinel = ErrNotExist
	case errors.Is(err, fs.ErrPermission):
		sentinel = ErrPermission
	case errors.Is(err, syscall.ENOSPC), errors.Is(err, syscall.ENOMEM):
		sentinel = ErrNoSpace
	case errors.Is(err, syscall.EIDRM):
		sentinel = ErrDestroyed
	}
	if sentinel == nil {
		return fmt.Errorf("%s %q: %w", op, name, err)
	}
	return fmt.Errorf("%s %q: %w (%w)", op, name, sentinel, err)
}

func unsupported(op string, k Kind) error {
	return fmt.Errorf("%s: %s backend on %s: %w", op, k, goos, ErrNotSupported)
}
