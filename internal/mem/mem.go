// Package mem is the only package of heapipc that does pointer arithmetic.
// It hands out typed views of a byte region (a mapped segment or a Go
// slice) after checking bounds and alignment. Callers never write
// unsafe.Pointer(&b[i]) themselves.
//
// Two flavours exist: the checked ones (At, Slice, Bytes) return an error
// wrapping errs.ErrCorrupt when an offset read from shared memory is bad;
// the Must ones panic with "assertion failed" and are for offsets the
// caller computed itself and has already validated.
package mem

import (
	"fmt"
	"sync/atomic"
	"unsafe"

	"github.com/heapipc/ipc/internal/errs"
)

// Off is an offset from the base of a shared region. Shared memory never
// holds addresses, only Offs.
type Off uint64

// CacheLine is the padding unit between words written by different sides.
// 128 bytes covers adjacent-line prefetch on x86 and the 128-byte lines of
// some arm64 cores.
const CacheLine = 128

// Pad keeps a Go structure that one goroutine writes on every operation
// (a channel end's cached indices, a handle's allocation cursor) off the
// cache lines of its neighbours on the Go heap: placed first and last, it
// leaves no other object within a line of the fields between. Without it
// a producer's and a consumer's ends, allocated side by side in the same
// size class, could share a line, and every record then moved that line
// between the cores twice (a two-goroutine benchmark ran at a third of
// its speed in about one run in eight).
type Pad [CacheLine]byte

// Problems check finds.
const (
	okRange = iota
	badRange
	badAlign
)

// sharedAlign is the alignment that a value of a type of this size and
// Go alignment needs in shared memory: Go's, except that on 32-bit
// machines a type that Go aligns to 4 bytes but whose size is a multiple
// of 8 is taken to hold 64-bit words (it does on 64-bit machines), which
// atomic operations there need 8-byte aligned. The same layouts are then
// valid on every machine, and a damaged offset is refused instead of
// faulting in a 64-bit atomic operation. Constants fold it away.
func sharedAlign(size, align uintptr) uintptr {
	if unsafe.Sizeof(uintptr(0)) == 4 && align == 4 && size%8 == 0 {
		return 8
	}
	return align
}

// check verifies that [off, off+size) lies in b and that b[off] is aligned
// to align. It does not format: the hot paths call it.
func check(b []byte, off Off, size, align uintptr) int {
	n := uint64(len(b))
	if uint64(off) > n || uint64(size) > n-uint64(off) {
		return badRange
	}
	if align > 1 && len(b) > 0 {
		p := uintptr(unsafe.Pointer(unsafe.SliceData(b))) + uintptr(off)
		if p%align != 0 {
			return badAlign
		}
	}
	return okRange
}

// problem builds the error for what check found.
func problem(what string, b []byte, off Off, size, align uintptr, p int) error {
	if p == badAlign {
		return errs.Corrupt(what, uint64(off), "misaligned for %d-byte alignment", align)
	}
	return errs.Corrupt(what, uint64(off), "range of %d bytes outside region of %d bytes", size, len(b))
}

// At returns a pointer to a T at offset off of b, after checking bounds and
// alignment. T must be a fixed-layout type without Go pointers.
func At[T any](b []byte, off Off) (*T, error) {
	var z T
	align := sharedAlign(unsafe.Sizeof(z), unsafe.Alignof(z))
	if p := check(b, off, unsafe.Sizeof(z), align); p != okRange {
		return nil, problem(fmt.Sprintf("%T", z), b, off, unsafe.Sizeof(z), align, p)
	}
	if unsafe.Sizeof(z) == 0 {
		// Not &z: that would make z escape, and every call allocate.
		return (*T)(unsafe.Pointer(&zeroSized)), nil
	}
	return (*T)(unsafe.Pointer(&b[off])), nil
}

// zeroSized is where views of zero-size types point.
var zeroSized [8]byte

// MustAt is At for offsets the caller has validated: a bad one is a broken
// internal invariant and panics.
func MustAt[T any](b []byte, off Off) *T {
	p, err := At[T](b, off)
	if err != nil {
		panic("assertion failed: " + err.Error())
	}
	return p
}

// Slice returns a []T of n elements starting at offset off of b.
func Slice[T any](b []byte, off Off, n int) ([]T, error) {
	var z T
	if n < 0 {
		return nil, errs.Corrupt(fmt.Sprintf("[]%T", z), uint64(off), "negative length %d", n)
	}
	size := unsafe.Sizeof(z)
	if size != 0 && uint64(n) > uint64(len(b))/uint64(size) {
		return nil, errs.Corrupt(fmt.Sprintf("[]%T", z), uint64(off), "%d elements do not fit in %d bytes", n, len(b))
	}
	align := sharedAlign(size, unsafe.Alignof(z))
	if p := check(b, off, size*uintptr(n), align); p != okRange {
		return nil, problem(fmt.Sprintf("[]%T", z), b, off, size*uintptr(n), align, p)
	}
	if n == 0 {
		return []T{}, nil
	}
	return unsafe.Slice((*T)(unsafe.Pointer(&b[off])), n), nil
}

// SliceN is Slice for a count read from shared memory (a uint64): a
// count that cannot fit in b is reported as Slice reports it, before it
// becomes an int (on a 32-bit platform a huge count would wrap to a small
// or negative one).
func SliceN[T any](b []byte, off Off, n uint64) ([]T, error) {
	var z T
	if size := uint64(unsafe.Sizeof(z)); size != 0 && n > uint64(len(b))/size {
		return nil, errs.Corrupt(fmt.Sprintf("[]%T", z), uint64(off), "%d elements do not fit in %d bytes", n, len(b))
	}
	return Slice[T](b, off, int(n))
}

// Bytes returns b[off:off+n] after a bounds check that cannot overflow.
func Bytes(b []byte, off Off, n uint64) ([]byte, error) {
	if uint64(off) > uint64(len(b)) || n > uint64(len(b))-uint64(off) {
		return nil, errs.Corrupt("bytes", uint64(off), "range of %d bytes outside region of %d bytes", n, len(b))
	}
	return b[off : uint64(off)+n : uint64(off)+n], nil
}

// Uint32 returns the 32-bit atomic word at off.
func Uint32(b []byte, off Off) (*atomic.Uint32, error) { return At[atomic.Uint32](b, off) }

// Uint64 returns the 64-bit atomic word at off (8-byte aligned).
func Uint64(b []byte, off Off) (*atomic.Uint64, error) { return At[atomic.Uint64](b, off) }

// OffsetOf returns the offset of p within b, and whether p points into b.
// It is how a view handed to a user (a record's bytes) is traced back to
// its place in the region.
func OffsetOf(b []byte, p *byte) (Off, bool) {
	if len(b) == 0 || p == nil {
		return 0, false
	}
	base := uintptr(unsafe.Pointer(unsafe.SliceData(b)))
	q := uintptr(unsafe.Pointer(p))
	if q < base || q-base >= uintptr(len(b)) {
		return 0, false
	}
	return Off(q - base), true
}

// Aligned returns a zeroed byte slice of n bytes whose first byte is
// aligned to align (a power of two, at most 4096). It backs the in-process
// backend, whose memory must look like a mapping: page-aligned words.
func Aligned(n int, align int) []byte {
	if align <= 0 || align&(align-1) != 0 || align > 4096 {
		panic(fmt.Sprintf("assertion failed: alignment %d", align))
	}
	words := make([]uint64, (n+align+7)/8)
	raw := unsafe.Slice((*byte)(unsafe.Pointer(unsafe.SliceData(words))), len(words)*8)
	p := uintptr(unsafe.Pointer(unsafe.SliceData(raw)))
	skip := int((uintptr(align) - p%uintptr(align)) % uintptr(align))
	return raw[skip : skip+n : skip+n]
}

// AtomicUint64 views a word of a shared struct as an atomic. It lets a
// writer that owns the word exclusively (a record not yet handed out)
// initialise it with a plain store, and everyone else use atomics.
func AtomicUint64(p *uint64) *atomic.Uint64 { return (*atomic.Uint64)(unsafe.Pointer(p)) }
