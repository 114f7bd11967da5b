package channel

import (
	"reflect"
	"testing"

	"github.com/heapipc/ipc/internal/testutil"
)

// TestPortableLayouts: the types this package lays out in shared memory
// are laid out alike on 32-bit and 64-bit machines.
func TestPortableLayouts(t *testing.T) {
	for _, typ := range []reflect.Type{
		reflect.TypeFor[mailboxCB](),
		reflect.TypeFor[mbChunkHeader](),
		reflect.TypeFor[entry](),
		reflect.TypeFor[regRoot](),
		reflect.TypeFor[speculoCB](),
		reflect.TypeFor[speculoSlot](),
		reflect.TypeFor[spExtentHdr](),
		reflect.TypeFor[spChunkHdr](),
		reflect.TypeFor[streamCB](),
		reflect.TypeFor[mpscCB](),
		reflect.TypeFor[prodSlot](),
		reflect.TypeFor[mpscSlot](),
		reflect.TypeFor[recordCB](),
	} {
		testutil.RequirePortableLayout(t, typ)
	}
}
