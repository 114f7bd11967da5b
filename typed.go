package ipc

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"sync"
	"sync/atomic"
	"unsafe"

	"github.com/heapipc/ipc/internal/mem"
)

// checkPlain refuses a type that cannot live in shared memory: anything
// holding a Go pointer (pointers, slices, strings, maps, interfaces,
// channels, functions, unsafe pointers), since another process cannot
// follow it and the garbage collector cannot see it.
//
// The verdict is kept per type (plainTypes): ValueOf and the typed
// helpers check on every call, and walking a type's fields (and naming
// the path to a pointer) cost ~380 ns and 8 allocations for a struct of
// four fields; a kept verdict is one map load, or none for the type
// asked for last (~10 and ~5 ns a ValueOf).
func checkPlain[T any]() error {
	t := reflect.TypeFor[T]()
	if v := lastPlain.Load(); v != nil && v.t == t {
		return v.err
	}
	var v *plainVerdict
	if e, ok := plainTypes.Load(t); ok {
		v = e.(*plainVerdict)
	} else {
		v = &plainVerdict{t: t}
		if path, bad := pointerPath(t, t.String()); bad {
			v.err = fmt.Errorf("ipc: type %v cannot live in shared memory: %s holds a pointer: %w", t, path, ErrInvalidArgument)
		}
		plainTypes.Store(t, v)
	}
	lastPlain.Store(v)
	return v.err
}

// plainTypes holds checkPlain's verdicts: reflect.Type → *plainVerdict;
// lastPlain is the last one asked for (a loop over records of one type:
// no map load).
var (
	plainTypes sync.Map
	lastPlain  atomic.Pointer[plainVerdict]
)

type plainVerdict struct {
	t   reflect.Type
	err error
}

func pointerPath(t reflect.Type, path string) (string, bool) {
	switch t.Kind() {
	case reflect.Bool, reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64, reflect.Uintptr,
		reflect.Float32, reflect.Float64, reflect.Complex64, reflect.Complex128:
		return "", false
	case reflect.Array:
		return pointerPath(t.Elem(), path+"[]")
	case reflect.Struct:
		for i := 0; i < t.NumField(); i++ {
			f := t.Field(i)
			if p, bad := pointerPath(f.Type, path+"."+f.Name); bad {
				return p, true
			}
		}
		return "", false
	}
	return path + " (" + t.Kind().String() + ")", true
}

// Typed allocates records that hold one value of a pointer-free type T
// and gives typed access to them: the zero-copy way to pass structs.
type Typed[T any] struct {
	h    *Handle
	size int
}

// NewTyped returns the typed allocator of h for T. A T that holds
// pointers, slices, strings, maps, interfaces, channels or functions is
// refused with ErrInvalidArgument: another process could not follow them.
func NewTyped[T any](h *Handle) (*Typed[T], error) {
	if err := checkPlain[T](); err != nil {
		return nil, err
	}
	return &Typed[T]{h: h, size: int(reflect.TypeFor[T]().Size())}, nil
}

// Allocate returns a new record holding a T (not zeroed) and the pointer
// to it.
func (t *Typed[T]) Allocate() (*T, Record, error) {
	r, err := t.h.Allocate(t.size)
	if err != nil {
		return nil, Record{}, err
	}
	v, err := ValueOf[T](r)
	if err != nil {
		t.h.Free(r)
		return nil, Record{}, err
	}
	return v, r, nil
}

// ValueOf returns the T a record holds: ErrSizeMismatch if the record is
// not exactly one T.
func ValueOf[T any](r Record) (*T, error) {
	if err := checkPlain[T](); err != nil {
		return nil, err
	}
	if n := int(unsafe.Sizeof(*new(T))); r.Len() != n {
		return nil, fmt.Errorf("ipc: record of %d bytes holds no %v (%d bytes): %w", r.Len(), reflect.TypeFor[T](), n, ErrSizeMismatch)
	}
	if r.Len() == 0 {
		return new(T), nil
	}
	return mem.At[T](r.b, 0)
}

// SendEachOf is Producer.SendEach for records that each hold one T:
// fill(i, v) sets the value of record i in place (its memory is not
// zeroed: fill sets every field, or assigns *v whole). T is checked as
// NewTyped checks it (ErrInvalidArgument for a type with pointers).
// Each record is exactly one T, what ValueOf and ReceiveEachOf take.
func SendEachOf[T any](ctx context.Context, p *Producer, n int, fill func(i int, v *T)) (int, error) {
	if err := checkPlain[T](); err != nil {
		return 0, err
	}
	if fill == nil {
		return 0, fmt.Errorf("ipc: send each of %v: nil fill: %w", reflect.TypeFor[T](), ErrInvalidArgument)
	}
	return p.SendEach(ctx, n, int(unsafe.Sizeof(*new(T))), func(i int, b []byte) {
		fill(i, valueIn[T](b))
	})
}

// ReceiveEachOf is Consumer.ReceiveEach for records that each hold one
// T: use(v) reads (or changes) the value in place, valid only while use
// runs. It returns how many values use got. A record that is not exactly
// one T (a producer that sent something else) is taken off the channel
// and freed without use seeing it, and reported with ErrSizeMismatch
// after the batch; the records around it are delivered. T is checked as
// NewTyped checks it.
func ReceiveEachOf[T any](ctx context.Context, c *Consumer, limit int, use func(v *T)) (int, error) {
	if err := checkPlain[T](); err != nil {
		return 0, err
	}
	if use == nil {
		return 0, fmt.Errorf("ipc: receive each of %v: nil use: %w", reflect.TypeFor[T](), ErrInvalidArgument)
	}
	size := int(unsafe.Sizeof(*new(T)))
	odd, oddLen := 0, 0
	n, err := c.ReceiveEach(ctx, limit, func(b []byte) {
		if len(b) != size {
			odd, oddLen = odd+1, len(b)
			return
		}
		use(valueIn[T](b))
	})
	if odd > 0 {
		err = errors.Join(err, fmt.Errorf("ipc: receive each of %v (%d bytes): %d records did not hold one (the last of %d bytes), freed unread: %w",
			reflect.TypeFor[T](), size, odd, oddLen, ErrSizeMismatch))
		n -= odd
	}
	return n, err
}

// valueIn is the T at the start of b, a record's bytes of T's size
// (records are 16-byte aligned, more than any plain type needs).
func valueIn[T any](b []byte) *T {
	if len(b) == 0 {
		return new(T) // zero-size: no allocation
	}
	return (*T)(unsafe.Pointer(unsafe.SliceData(b)))
}
