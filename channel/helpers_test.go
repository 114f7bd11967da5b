package channel

import (
	"context"
	"testing"

	"github.com/heapipc/ipc/internal/mem"
)

// freeEntryLocked hands a test a free entry linked into id's bucket.
func (g *Registry) freeEntryLocked(t *testing.T, id ID) (*entry, mem.Off, error) {
	var (
		e   *entry
		off mem.Off
	)
	err := g.withLock(context.Background(), func() error {
		var err error
		e, off, err = g.freeEntry(id)
		return err
	})
	return e, off, err
}
