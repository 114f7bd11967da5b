package backend

import (
	"testing"
	"unsafe"

	"github.com/heapipc/ipc/internal/testutil"
	"github.com/stretchr/testify/require"
)

// The header is an ABI between processes: its layout is pinned here.
func TestHeaderLayout(t *testing.T) {
	var h header
	testutil.RequirePortableLayouts(t, &h)
	require.Equal(t, uintptr(headerSize), unsafe.Sizeof(h))
	require.Equal(t, uintptr(0), unsafe.Offsetof(h.Magic))
	require.Equal(t, uintptr(8), unsafe.Offsetof(h.Version))
	require.Equal(t, uintptr(12), unsafe.Offsetof(h.HeaderSize))
	require.Equal(t, uintptr(16), unsafe.Offsetof(h.SegKind))
	require.Equal(t, uintptr(17), unsafe.Offsetof(h.SemKind))
	require.Equal(t, uintptr(20), unsafe.Offsetof(h.PageSize))
	require.Equal(t, uintptr(24), unsafe.Offsetof(h.TotalSize))
	require.Equal(t, uintptr(32), unsafe.Offsetof(h.DataOffset))
	require.Equal(t, uintptr(40), unsafe.Offsetof(h.DataSize))
	require.Equal(t, uintptr(48), unsafe.Offsetof(h.Creator))
	require.Equal(t, uintptr(56), unsafe.Offsetof(h.CreatedNs))
	require.Equal(t, uintptr(64), unsafe.Offsetof(h.NameLen))
	require.Equal(t, uintptr(68), unsafe.Offsetof(h.Mode))
	require.Equal(t, uintptr(72), unsafe.Offsetof(h.Name))
	require.Equal(t, uintptr(200), unsafe.Offsetof(h.PidNS))
	require.Equal(t, uintptr(checksummed), unsafe.Offsetof(h.Checksum))
	require.Equal(t, uintptr(256), unsafe.Offsetof(h.State))
	require.LessOrEqual(t, headerSize, ExtOffset)
}
