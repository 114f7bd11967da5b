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

// TestDemoAllBackends builds the example and runs it on every combination
// of real backends, as `make demo` does on the default one.
func TestDemoAllBackends(t *testing.T) {
	bin := filepath.Join(t.TempDir(), "twoproc")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	for _, seg := range []backend.Kind{backend.POSIX, backend.SysV} {
		for _, sem := range []backend.Kind{backend.POSIX, backend.SysV} {
			out, err := exec.Command(bin, "-n", "20000", "-segments", string(seg), "-semaphores", string(sem)).CombinedOutput()
			if err != nil {
				t.Fatalf("%s/%s: %v\n%s", seg, sem, err, out)
			}
			for _, want := range []string{"received in order", "40000 records of 64 bytes sent and verified", "done"} {
				if !strings.Contains(string(out), want) {
					t.Errorf("%s/%s: output lacks %q:\n%s", seg, sem, want, out)
				}
			}
			if left, _ := filepath.Glob(backend.ShmDir + "/*twoproc-*"); len(left) > 0 {
				t.Errorf("%s/%s: the demo left %v behind", seg, sem, left)
			}
		}
	}
}
