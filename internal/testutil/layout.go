package testutil

import (
	"fmt"
	"reflect"
	"testing"
)

// RequirePortableLayouts fails t unless the shared-memory types that
// ptrs point to are laid out alike on 32-bit and 64-bit machines
// (PortableLayout).
func RequirePortableLayouts(t testing.TB, ptrs ...any) {
	t.Helper()
	for _, p := range ptrs {
		typ := reflect.TypeOf(p)
		if typ.Kind() != reflect.Pointer {
			t.Fatalf("RequirePortableLayouts: %v is not a pointer", typ)
		}
		if err := PortableLayout(typ.Elem()); err != nil {
			t.Errorf("%v is not laid out alike on 32-bit and 64-bit machines: %v", typ.Elem(), err)
		}
	}
}

// PortableLayout reports why typ might be laid out differently on 32-bit
// and 64-bit machines, or nil: its structs (recursively, through arrays)
// must have no padding that Go adds (every gap is an explicit _ field),
// every field must lie at a multiple of its alignment on a 64-bit machine
// (so 64-bit words are 8-byte aligned on 32-bit machines too), and no
// field may change size with the machine (int, uint, uintptr, pointers).
// Go pads a 64-bit field to 8 bytes on 64-bit machines only, so a type
// that relies on it is one layout there and another on 32-bit ones.
func PortableLayout(typ reflect.Type) error {
	_, err := portable(typ, typ.String(), 0)
	return err
}

// portable checks typ at byte offset off (from the start of the outer
// type) and returns its alignment on a 64-bit machine.
func portable(typ reflect.Type, path string, off uintptr) (uintptr, error) {
	var align uintptr
	switch typ.Kind() {
	case reflect.Bool, reflect.Int8, reflect.Uint8:
		align = 1
	case reflect.Int16, reflect.Uint16:
		align = 2
	case reflect.Int32, reflect.Uint32, reflect.Float32:
		align = 4
	case reflect.Int64, reflect.Uint64, reflect.Float64:
		align = 8
	case reflect.Array:
		a, err := portable(typ.Elem(), path+"[0]", off)
		if err != nil {
			return 0, err
		}
		align = a
	case reflect.Struct:
		align = 1
		var next uintptr // where the next field starts without padding
		for i := range typ.NumField() {
			f := typ.Field(i)
			if f.Offset != next {
				return 0, fmt.Errorf("%s.%s: %d bytes of implicit padding before it", path, f.Name, f.Offset-next)
			}
			a, err := portable(f.Type, path+"."+f.Name, off+f.Offset)
			if err != nil {
				return 0, err
			}
			align = max(align, a)
			next = f.Offset + f.Type.Size()
		}
		if typ.Size() != next {
			return 0, fmt.Errorf("%s: %d bytes of implicit padding at the end", path, typ.Size()-next)
		}
		if next%align != 0 {
			return 0, fmt.Errorf("%s: size %d, which 64-bit machines pad to a multiple of %d", path, next, align)
		}
	default:
		return 0, fmt.Errorf("%s: a %v has no fixed size across machines", path, typ)
	}
	if off%align != 0 {
		return 0, fmt.Errorf("%s: at offset %d, misaligned for %d bytes", path, off, align)
	}
	return align, nil
}
