package testutil

import (
	"os/exec"
	"testing"

	"github.com/heapipc/ipc/internal/sys"
)

// DeadIdentity returns the identity of a process that has exited: a
// `sleep 0` started and waited for. Tests store it where a dead peer,
// owner or holder is wanted.
func DeadIdentity(tb testing.TB) sys.Identity {
	tb.Helper()
	cmd := exec.Command("sleep", "0")
	if err := cmd.Start(); err != nil {
		tb.Fatal(err)
	}
	id, err := sys.IdentityOf(cmd.Process.Pid)
	if err != nil {
		id = sys.MakeIdentity(cmd.Process.Pid, 1)
	}
	if err := cmd.Wait(); err != nil {
		tb.Fatal(err)
	}
	if sys.Alive(id) {
		tb.Fatalf("%v should not be alive", id)
	}
	return id
}
