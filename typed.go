package ipc

import (
	"fmt"
	"reflect"
)

// checkPlain refuses a type that cannot live in shared memory: anything
// holding a Go pointer (pointers, slices, strings, maps, interfaces,
// channels, functions, unsafe pointers), since another process cannot
// follow it and the garbage collector cannot see it.
func checkPlain[T any]() error {
	t := reflect.TypeFor[T]()
	if path, bad := pointerPath(t, t.String()); bad {
		return fmt.Errorf("ipc: type %v cannot live in shared memory: %s holds a pointer: %w", t, path, ErrInvalidArgument)
	}
	return nil
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
	if n := int(reflect.TypeFor[T]().Size()); r.Len() != n {
		return nil, fmt.Errorf("ipc: record of %d bytes holds no %v (%d bytes): %w", r.Len(), reflect.TypeFor[T](), n, ErrSizeMismatch)
	}
	if r.Len() == 0 {
		return new(T), nil
	}
	return StaticAtBytes[T](r.b)
}
