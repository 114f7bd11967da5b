//go:build linux

package backend

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"syscall"
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

func modeOr(m os.FileMode) uint32 {
	if m == 0 {
		return uint32(DefaultMode)
	}
	return uint32(m.Perm())
}
