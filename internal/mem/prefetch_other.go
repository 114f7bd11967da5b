//go:build !amd64 || !gc

package mem

import "unsafe"

// PrefetchWrite is a hint that does nothing here (see the amd64 version).
func PrefetchWrite(p unsafe.Pointer) {}
