package main

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
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

// TestDemoMixed32And64Bit runs the example with A and B built for
// different architectures, amd64 and 386, both ways round: the two kinds
// of process share one buffer, its registry, slabs and record channels.
func TestDemoMixed32And64Bit(t *testing.T) {
	if runtime.GOOS != "linux" || runtime.GOARCH != "amd64" {
		t.Skipf("needs an amd64 Linux host to run 386 programs beside amd64 ones (this is %s/%s)", runtime.GOOS, runtime.GOARCH)
	}
	dir := t.TempDir()
	bins := map[string]string{}
	for _, arch := range []string{"amd64", "386"} {
		bins[arch] = filepath.Join(dir, "twoproc-"+arch)
		cmd := exec.Command("go", "build", "-o", bins[arch], ".")
		cmd.Env = append(os.Environ(), "GOARCH="+arch)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("go build for %s: %v\n%s", arch, err, out)
		}
	}
	if err := exec.Command(bins["386"], "-h").Run(); err != nil {
		var ee *exec.ExitError
		if !errors.As(err, &ee) {
			t.Skipf("this kernel does not run 32-bit x86 programs: %v", err)
		}
	}
	for _, order := range [][2]string{{"amd64", "386"}, {"386", "amd64"}} {
		for _, kind := range []backend.Kind{backend.POSIX, backend.SysV} {
			a, b := order[0], order[1]
			out, err := exec.Command(bins[a], "-n", "20000", "-segments", string(kind), "-semaphores", string(kind), "-peer-exe", bins[b]).CombinedOutput()
			if err != nil {
				t.Fatalf("A %s, B %s, %s: %v\n%s", a, b, kind, err, out)
			}
			for _, want := range []string{"received in order", "40000 records of 64 bytes sent and verified", "buffer checked", "done"} {
				if !strings.Contains(string(out), want) {
					t.Errorf("A %s, B %s, %s: output lacks %q:\n%s", a, b, kind, want, out)
				}
			}
		}
	}
	if left, _ := filepath.Glob(backend.ShmDir + "/*twoproc-*"); len(left) > 0 {
		t.Errorf("the demo left %v behind", left)
	}
}

// TestBadFlagsAndEarlyPeerExit: numbers out of range are refused with exit
// status 2, and a B that exits before attaching makes A fail at once,
// naming B's exit status, and remove the buffer.
func TestBadFlagsAndEarlyPeerExit(t *testing.T) {
	bin := filepath.Join(t.TempDir(), "twoproc")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	for _, args := range [][]string{{"-n", "0"}, {"-size", "4"}, {"-mib", "0"}, {"-size", "100000"}} {
		out, err := exec.Command(bin, args...).CombinedOutput()
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.ExitCode() != 2 {
			t.Errorf("%v: %v, want exit status 2\n%s", args, err, out)
		}
	}
	if _, err := os.Stat("/bin/false"); err != nil {
		t.Skip("no /bin/false")
	}
	out, err := exec.Command(bin, "-peer-exe", "/bin/false").CombinedOutput()
	if err == nil || !strings.Contains(string(out), "exited early: exit status 1") {
		t.Errorf("B is /bin/false: %v, want a failure naming B's exit status\n%s", err, out)
	}
	if left, _ := filepath.Glob(backend.ShmDir + "/*twoproc-*"); len(left) > 0 {
		t.Errorf("left %v behind", left)
	}
}
