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
