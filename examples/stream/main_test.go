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
// combination of real backends.
func TestExampleAllBackends(t *testing.T) {
	bin := filepath.Join(t.TempDir(), "stream")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	for _, seg := range []backend.Kind{backend.POSIX, backend.SysV} {
		for _, sem := range []backend.Kind{backend.POSIX, backend.SysV} {
			out, err := exec.Command(bin, "-seconds", "3", "-segments", string(seg), "-semaphores", string(sem)).CombinedOutput()
			if err != nil {
				t.Fatalf("%s/%s: %v\n%s", seg, sem, err, out)
			}
			for _, want := range []string{"glitch: replaying the last 100 ms", "EOF after 3.00 s of audio", "every sample checked", "done"} {
				if !strings.Contains(string(out), want) {
					t.Errorf("%s/%s: output lacks %q:\n%s", seg, sem, want, out)
				}
			}
			if left, _ := filepath.Glob(backend.ShmDir + "/*stream-example-*"); len(left) > 0 {
				t.Errorf("%s/%s: the example left %v behind", seg, sem, left)
			}
		}
	}
}
