package alloc

import (
	"reflect"
	"testing"

	"github.com/heapipc/ipc/internal/testutil"
)

// TestPortableLayouts: the types this package lays out in shared memory
// are laid out alike on 32-bit and 64-bit machines.
func TestPortableLayouts(t *testing.T) {
	for _, typ := range []reflect.Type{
		reflect.TypeFor[LockWord](),
		reflect.TypeFor[root](),
		reflect.TypeFor[logEntry](),
		reflect.TypeFor[pageEnt](),
	} {
		testutil.RequirePortableLayout(t, typ)
	}
}
