package main

import (
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/heapipc/ipc/backend"
	"github.com/heapipc/ipc/internal/testutil"
)

func TestMain(m *testing.M) { testutil.Main(m) }

// TestExampleAllBackends builds the example and runs it on every
// combination of real backends, with a small window so that messages
// travel in many chunks.
func TestExampleAllBackends(t *testing.T) {
	bin := filepath.Join(t.TempDir(), "mailbox")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	for _, seg := range []backend.Kind{backend.POSIX, backend.SysV} {
		for _, sem := range []backend.Kind{backend.POSIX, backend.SysV} {
			out, err := exec.Command(bin, "-n", "500", "-window", "262144", "-segments", string(seg), "-semaphores", string(sem)).CombinedOutput()
			if err != nil {
				t.Fatalf("%s/%s: %v\n%s", seg, sem, err, out)
			}
			for _, want := range []string{`-> "HELLO, MAILBOX"`, "G 10 MiB -> 10485760 bytes", "context deadline exceeded", "refused", "500 round trips", "after 505 requests", "done"} {
				if !strings.Contains(string(out), want) {
					t.Errorf("%s/%s: output lacks %q:\n%s", seg, sem, want, out)
				}
			}
			if left, _ := filepath.Glob(backend.ShmDir + "/*mailbox-example-*"); len(left) > 0 {
				t.Errorf("%s/%s: the example left %v behind", seg, sem, left)
			}
		}
	}
}
