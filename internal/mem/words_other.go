//go:build !amd64 || !gc

package mem

import (
	"sync/atomic"
	"unsafe"
)

// ZeroWords stores 0 into the n words from p, one atomic store each
// (see the amd64 version).
func ZeroWords(p *atomic.Uint64, n int) {
	for i := range n {
		(*atomic.Uint64)(unsafe.Add(unsafe.Pointer(p), 8*i)).Store(0)
	}
}
