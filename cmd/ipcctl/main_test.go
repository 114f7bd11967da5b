package main

import (
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	ipc "github.com/heapipc/ipc"
	"github.com/heapipc/ipc/backend"
	"github.com/heapipc/ipc/internal/testutil"
)

func TestMain(m *testing.M) { testutil.Main(m) }

func TestIpcctl(t *testing.T) {
	bin := filepath.Join(t.TempDir(), "ipcctl")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	run := func(args ...string) (string, error) {
		out, err := exec.Command(bin, args...).CombinedOutput()
		return string(out), err
	}
	name := testutil.Name(t)
	b, err := ipc.Open(name, ipc.WithSize(4<<20))
	if err != nil {
		t.Fatal(err)
	}
	h, _ := b.NewHandle()
	p, err := h.Producer(7)
	if err != nil {
		t.Fatal(err)
	}
	r, _ := h.Allocate(100)
	p.TrySend(r)

	if backend.DefaultSegmentKind() == backend.POSIX {
		out, err := run("list")
		if err != nil || !strings.Contains(out, name) {
			t.Errorf("list: %v\n%s", err, out)
		}
	}
	seg, _ := b.Backends()
	out, err := run("stat", "-backends", seg, name)
	if err != nil || !strings.Contains(out, "channels  1") || !strings.Contains(out, "1 live") {
		t.Errorf("stat: %v\n%s", err, out)
	}
	out, err = run("check", "-backends", seg, name)
	if err != nil || !strings.Contains(out, "no violation") {
		t.Errorf("check: %v\n%s", err, out)
	}
	out, err = run("recover", "-backends", seg, name)
	if err != nil || !strings.Contains(out, "bytes reclaimed") {
		t.Errorf("recover: %v\n%s", err, out)
	}
	if _, err := run("stat", "nonexistent-buffer-name"); err == nil {
		t.Error("stat of a missing buffer succeeded")
	}
	if _, err := run("bogus"); err == nil {
		t.Error("an unknown command succeeded")
	}
	h.Close()
	b.Close()
	out, err = run("remove", "-backends", seg, name)
	if err != nil || !strings.Contains(out, "removed") {
		t.Errorf("remove: %v\n%s", err, out)
	}
	if _, err := ipc.Open(name, ipc.AttachOnly()); err == nil {
		t.Error("the buffer survived remove")
	}
}
