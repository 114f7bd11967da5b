package ipc

import (
	"reflect"
	"testing"

	"github.com/heapipc/ipc/internal/testutil"
)

// TestPortableLayouts: the types this package lays out in shared memory
// are laid out alike on 32-bit and 64-bit machines.
func TestPortableLayouts(t *testing.T) {
	for _, typ := range []reflect.Type{
		reflect.TypeFor[trailer](),
		reflect.TypeFor[packHeader](),
	} {
		testutil.RequirePortableLayout(t, typ)
	}
}
