package backend

import (
	"testing"

	"github.com/heapipc/ipc/internal/sys"
)

func shmFree(t *testing.T) uint64 {
	n, err := sys.FreeBytes(ShmDir)
	if err != nil {
		t.Skipf("statfs %s: %v", ShmDir, err)
	}
	return n
}
