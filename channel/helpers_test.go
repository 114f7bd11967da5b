package channel

import (
	"context"
	"os/exec"
	"testing"

	"github.com/heapipc/ipc/internal/mem"
	"github.com/heapipc/ipc/internal/sys"
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

func deadIdentity(t *testing.T) sys.Identity {
	cmd := exec.Command("sleep", "0")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	id, err := sys.IdentityOf(cmd.Process.Pid)
	if err != nil {
		id = sys.MakeIdentity(cmd.Process.Pid, 1)
	}
	cmd.Wait()
	return id
}
