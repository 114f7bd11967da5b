package testutil

import (
	"reflect"
	"sync/atomic"
	"testing"

	"github.com/stretchr/testify/require"
)

type portableOK struct {
	A uint32
	B uint32
	C uint64
	D [3]uint16
	_ [2]byte
	E atomic.Uint64
	F [2]struct{ X, Y uint32 }
}

type padded struct {
	A uint32
	B uint64 // 4 bytes of padding before it on 64-bit machines only
}

type shortTail struct {
	A uint64
	B uint32 // size 12 on 32-bit machines, 16 on 64-bit ones
}

type sized struct {
	A uint64
	N int
}

type paddedAtomic struct {
	A uint32
	B atomic.Uint64 // Go pads before it on every machine
}

type misplaced struct {
	A [3]uint32
	B [2]uint32
	C [1]struct{ X uint64 } // at 20: misaligned for its 64-bit word
}

func TestPortableLayout(t *testing.T) {
	require.NoError(t, PortableLayout(reflect.TypeFor[portableOK]()))
	require.NoError(t, PortableLayout(reflect.TypeFor[[4]uint64]()))
	for _, typ := range []reflect.Type{
		reflect.TypeFor[padded](), reflect.TypeFor[shortTail](), reflect.TypeFor[sized](),
		reflect.TypeFor[*uint64](), reflect.TypeFor[misplaced](), reflect.TypeFor[paddedAtomic](),
	} {
		require.Error(t, PortableLayout(typ), "%v", typ)
	}
}
