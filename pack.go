package ipc

import (
	"fmt"
	"iter"
	"math"
	"reflect"
	"structs"

	"github.com/heapipc/ipc/internal/errs"
	"github.com/heapipc/ipc/internal/mem"
)

// A Pack is many payloads of one size in one record: allocated, sent,
// received, forwarded and freed as one. It is the batch form that costs
// one allocation, one ring slot, one holder hand-over and one free per
// pack instead of per payload — what AllocateBatch, SendBatch,
// ReceiveBatch and FreeBatch still pay for each record — so a stream of
// small payloads moves at close to the speed of the bare ring (see the
// README's Performance section). Its payloads share the pack's fate:
// none can be sent or freed alone.
//
// A pack is an ordinary record whose bytes end with a 16-byte header, so
// it travels on any record channel: send it with Producer.Send(ctx,
// p.Record()), receive a Record and read it with PackOf, free it with
// Handle.Free(p.Record()). A Pack is a view, like a Record's bytes: it
// stays valid until the record is freed.
//
//	record bytes: payload 0 | payload 1 | ... | payload Len-1 | padding to
//	              16 bytes | header: magic "HPAK", count, size, stride
//
// Payload i starts at i×stride; the stride is the size rounded up to 8
// bytes (so that each payload is 8-byte aligned, like the record), or for
// packs of Go values (Typed.AllocateSlice) the value's size.
type Pack struct {
	r      Record
	n      int // payloads
	size   int // bytes in each
	stride int // bytes from one payload to the next
}

// packHeader ends a pack's record bytes.
type packHeader struct {
	_      structs.HostLayout
	Magic  uint32 // packMagic
	Count  uint32 // payloads, ≥ 1
	Size   uint32 // bytes in each, ≥ 1
	Stride uint32 // Size ≤ Stride ≤ Size rounded up to 8
}

const (
	packHeaderSize = 16
	packMagic      = 0x4b415048 // "HPAK"
	// maxPackBytes bounds a pack's record (as ring slots bound offsets).
	maxPackBytes = 1 << 46
)

// packBytes is the record length of a pack of count payloads stride bytes
// apart, and whether the geometry is one a pack can have.
func packBytes(count, size, stride int) (int, bool) {
	if count < 1 || size < 1 || stride < size || stride > (size+7)&^7 || uint64(count) > math.MaxUint32 || uint64(stride) > math.MaxUint32 {
		return 0, false
	}
	body := uint64(count) * uint64(stride) // < 2^64: both are below 2^32
	if body > maxPackBytes || body > math.MaxInt-2*packHeaderSize {
		return 0, false
	}
	return int((body+15)&^15 + packHeaderSize), true
}

// AllocatePack returns a pack of count payloads of size bytes each
// (count, size ≥ 1; not zeroed), allocated as one record: from this
// handle's slabs if it is small enough (an eighth of a slab), else from
// its own extent of the heap. ErrInvalidSize for a count or size out of
// range, ErrNoSpace if the buffer is full.
func (h *Handle) AllocatePack(count, size int) (Pack, error) {
	return h.allocatePack(count, size, (size+7)&^7)
}

func (h *Handle) allocatePack(count, size, stride int) (Pack, error) {
	n, ok := packBytes(count, size, stride)
	if !ok {
		return Pack{}, fmt.Errorf("ipc: allocate a pack of %d payloads of %d bytes: %w", count, size, ErrInvalidSize)
	}
	r, err := h.Allocate(n)
	if err != nil {
		return Pack{}, fmt.Errorf("ipc: allocate a pack of %d payloads of %d bytes: %w", count, size, err)
	}
	// Not handed out yet: plain stores.
	*mem.MustAt[packHeader](r.b, mem.Off(n-packHeaderSize)) = packHeader{Magic: packMagic, Count: uint32(count), Size: uint32(size), Stride: uint32(stride)}
	return Pack{r: r, n: count, size: size, stride: stride}, nil
}

// PackOf reads the pack a record holds (one received from a channel):
// ErrWrongType if the record is not a pack, ErrCorrupt if its header
// says it is but describes payloads that do not fit it (its bytes were
// overwritten), ErrNotAllocated for the zero Record. The record is left
// as it is either way: it is still the caller's to free.
func PackOf(r Record) (Pack, error) {
	if r.b == nil {
		return Pack{}, fmt.Errorf("ipc: pack of a zero record: %w", ErrNotAllocated)
	}
	n := len(r.b)
	if n < packHeaderSize || n%16 != 0 {
		return Pack{}, fmt.Errorf("ipc: a record of %d bytes is not a pack: %w", n, ErrWrongType)
	}
	hd, err := mem.At[packHeader](r.b, mem.Off(n-packHeaderSize))
	if err != nil {
		return Pack{}, fmt.Errorf("ipc: pack: %w", err)
	}
	if hd.Magic != packMagic {
		return Pack{}, fmt.Errorf("ipc: a record of %d bytes is not a pack (no pack header): %w", n, ErrWrongType)
	}
	count, size, stride := int(hd.Count), int(hd.Size), int(hd.Stride)
	if want, ok := packBytes(count, size, stride); !ok || want != n {
		return Pack{}, errs.Corrupt("pack header", uint64(r.off())+uint64(n-packHeaderSize), "%d payloads of %d bytes, %d apart, in a record of %d bytes", count, size, stride, n)
	}
	return Pack{r: r, n: count, size: size, stride: stride}, nil
}

// Record is the record that holds the pack: send it, forward it or free
// it as any other.
func (p Pack) Record() Record { return p.r }

// Len is the number of payloads.
func (p Pack) Len() int { return p.n }

// Size is the length of each payload.
func (p Pack) Size() int { return p.size }

// IsZero reports whether p is the zero Pack.
func (p Pack) IsZero() bool { return p.r.b == nil }

// At is payload i (0 ≤ i < Len; out of range panics, as indexing a slice
// does), a view into shared memory.
func (p Pack) At(i int) []byte {
	if uint(i) >= uint(p.n) {
		panic(fmt.Sprintf("ipc: payload %d of a pack of %d", i, p.n))
	}
	o := i * p.stride
	return p.r.b[o : o+p.size : o+p.size]
}

// All yields each payload with its index, in order.
func (p Pack) All() iter.Seq2[int, []byte] {
	return func(yield func(int, []byte) bool) {
		for i := range p.n {
			o := i * p.stride
			if !yield(i, p.r.b[o:o+p.size:o+p.size]) {
				return
			}
		}
	}
}

// AllocateSlice returns a pack of n Ts (n ≥ 1; not zeroed) and the slice
// of them in shared memory: the zero-copy way to pass many values at
// once. A T of size 0 is refused (ErrInvalidSize).
func (t *Typed[T]) AllocateSlice(n int) ([]T, Pack, error) {
	p, err := t.h.allocatePack(n, t.size, t.size)
	if err != nil {
		return nil, Pack{}, err
	}
	s, err := SliceOf[T](p)
	if err != nil {
		t.h.Free(p.r)
		return nil, Pack{}, err
	}
	return s, p, nil
}

// SliceOf returns the Ts a pack holds, in shared memory: ErrSizeMismatch
// if its payloads are not Ts (of another size, or not packed as Ts are).
func SliceOf[T any](p Pack) ([]T, error) {
	if err := checkPlain[T](); err != nil {
		return nil, err
	}
	z := int(reflect.TypeFor[T]().Size())
	if p.IsZero() || p.size != z || p.stride != z {
		return nil, fmt.Errorf("ipc: a pack of %d payloads of %d bytes (%d apart) holds no %v (%d bytes): %w", p.n, p.size, p.stride, reflect.TypeFor[T](), z, ErrSizeMismatch)
	}
	return mem.Slice[T](p.r.b, 0, p.n)
}
