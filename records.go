package ipc

import (
	"context"
	"errors"
	"fmt"
	"structs"
	"sync/atomic"

	"github.com/heapipc/ipc/alloc"
	"github.com/heapipc/ipc/backend"
	"github.com/heapipc/ipc/internal/errs"
	"github.com/heapipc/ipc/internal/mem"
	"github.com/heapipc/ipc/internal/sys"
)

// INTERIM: records are heap extents with a 16-byte header until the slab
// allocator lands; the interface below is what the facade uses and stays.

type recHeader struct {
	_      structs.HostLayout
	Word   atomic.Uint64 // magic (high 32) | payload length (low 32)
	Holder atomic.Uint64 // sys.Identity of the process responsible for the record
}

const (
	recHeaderSize = 16
	recMagic      = 0x48524543 // "HREC"
)

// RecordStats describes the record allocator.
type RecordStats struct {
	LiveRecords uint64
}

type records struct {
	region *backend.Region
	heap   *alloc.Heap
	b      []byte
	self   sys.Identity
}

func initRecords(r *backend.Region, h *alloc.Heap, cfg config) (*records, error) {
	return &records{region: r, heap: h, b: r.Bytes(), self: sys.Self()}, nil
}

func attachRecords(r *backend.Region, h *alloc.Heap, cfg config) (*records, error) {
	return initRecords(r, h, cfg)
}

type slabHandle struct{ rs *records }

func (rs *records) newHandle() (*slabHandle, error) { return &slabHandle{rs: rs}, nil }

func (sh *slabHandle) alloc(n int) (mem.Off, []byte, error) {
	rs := sh.rs
	off, err := rs.heap.AllocFor(context.Background(), recHeaderSize+n, alloc.KindLarge, rs.self)
	if err != nil {
		return 0, nil, err
	}
	hdr := mem.MustAt[recHeader](rs.b, off)
	hdr.Holder.Store(uint64(rs.self))
	hdr.Word.Store(recMagic<<32 | uint64(n))
	p := off + recHeaderSize
	return p, rs.b[p : p+mem.Off(n) : p+mem.Off(n)], nil
}

func (sh *slabHandle) close() error { return nil }

func (rs *records) header(off mem.Off) (*recHeader, uint64, error) {
	if off < recHeaderSize {
		return nil, 0, fmt.Errorf("record %#x: %w", uint64(off), ErrNotAllocated)
	}
	hdr, err := mem.At[recHeader](rs.b, off-recHeaderSize)
	if err != nil {
		return nil, 0, err
	}
	w := hdr.Word.Load()
	if w>>32 != recMagic {
		return nil, 0, fmt.Errorf("record %#x: %w", uint64(off), ErrNotAllocated)
	}
	n := w & (1<<32 - 1)
	if _, err := mem.Bytes(rs.b, off, n); err != nil {
		return nil, 0, err
	}
	return hdr, n, nil
}

func (rs *records) view(off mem.Off) ([]byte, error) {
	hdr, n, err := rs.header(off)
	if err != nil {
		return nil, err
	}
	// The receiver becomes responsible for the record, unless recovery
	// reclaimed it from a dead holder first.
	for {
		h := hdr.Holder.Load()
		if h == reclaimed {
			return nil, fmt.Errorf("record %#x was reclaimed from a dead holder: %w", uint64(off), ErrNotAllocated)
		}
		if h == uint64(rs.self) || hdr.Holder.CompareAndSwap(h, uint64(rs.self)) {
			break
		}
	}
	return rs.b[off : uint64(off)+n : uint64(off)+n], nil
}

// validateQueued checks a record offset found in a channel.
func (rs *records) validateQueued(off mem.Off) error {
	_, _, err := rs.header(off)
	return err
}

func (rs *records) validate(off mem.Off, b []byte) error {
	_, n, err := rs.header(off)
	if err != nil {
		return err
	}
	if uint64(len(b)) != n {
		return fmt.Errorf("record %#x: %w", uint64(off), ErrNotAllocated)
	}
	return nil
}

func (rs *records) free(off mem.Off, b []byte) error {
	if o, ok := mem.OffsetOf(rs.b, &b[:1][0]); !ok || o != off {
		return fmt.Errorf("record: %w", ErrForeign)
	}
	return rs.freeOff(off)
}

func (rs *records) freeOff(off mem.Off) error {
	hdr, _, err := rs.header(off)
	if err != nil {
		if errors.Is(err, ErrNotAllocated) {
			return fmt.Errorf("record %#x: %w", uint64(off), ErrDoubleFree)
		}
		return err
	}
	hdr.Word.Store(0)
	return rs.heap.Free(off - recHeaderSize)
}

func (rs *records) check() error { return nil }

// reclaimed marks a record's holder word while recovery frees it.
const reclaimed = ^uint64(0)

// recover frees the records whose holder died, except those in skip
// (queued in a channel: they will be delivered).
func (rs *records) recover(skip map[mem.Off]bool) (uint64, error) {
	ext, err := rs.heap.Allocated()
	if err != nil {
		return 0, err
	}
	var n uint64
	var all []error
	for _, e := range ext {
		if e.Kind != alloc.KindLarge {
			continue
		}
		hdr := mem.MustAt[recHeader](rs.b, e.Off)
		h := sys.Identity(hdr.Holder.Load())
		if hdr.Word.Load()>>32 != recMagic {
			// Allocated but never stamped: its allocator died in between.
			if e.Owner != 0 && !sys.Alive(e.Owner) {
				all = append(all, rs.heap.Free(e.Off))
				n += e.Size
			}
			continue
		}
		if h == 0 || uint64(h) == reclaimed || sys.Alive(h) || skip[e.Off+recHeaderSize] {
			continue
		}
		if !hdr.Holder.CompareAndSwap(uint64(h), reclaimed) {
			continue
		}
		hdr.Word.Store(0)
		all = append(all, rs.heap.Free(e.Off))
		n += e.Size
	}
	return n, errors.Join(all...)
}

func (rs *records) stats() RecordStats { return RecordStats{} }
func (rs *records) close() error       { return nil }
func (rs *records) unlink() error      { return nil }

var _ = errs.ErrCorrupt
