//go:build linux

package mem_test

import (
	"bytes"
	"testing"
	"unsafe"

	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/heapipc/ipc/internal/mem"
)

// PrefetchWrite is a hint: it changes no byte, and asking for the line
// after the last of a mapping (its second line, past the end) does not
// fault.
func TestPrefetchWriteChangesNothing(t *testing.T) {
	ps := unix.Getpagesize()
	b, err := unix.Mmap(-1, 0, 2*ps, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	require.NoError(t, err)
	defer unix.Munmap(b)
	// The second page is a guard: touching it would fault.
	require.NoError(t, unix.Mprotect(b[ps:], unix.PROT_NONE))
	page := b[:ps]
	for i := range page {
		page[i] = byte(i * 7)
	}
	want := bytes.Clone(page)
	for _, off := range []int{0, 1, 63, 64, 100, ps - 64, ps - 16, ps - 1} {
		mem.PrefetchWrite(unsafe.Pointer(&page[off]))
	}
	require.Equal(t, want, page)
}
