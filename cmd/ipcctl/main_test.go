package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	ipc "github.com/heapipc/ipc"
	"github.com/heapipc/ipc/backend"
	"github.com/heapipc/ipc/internal/testutil"
	"golang.org/x/sys/unix"
)

func TestMain(m *testing.M) { testutil.Main(m) }

func buildIpcctl(t *testing.T) func(args ...string) (string, error) {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "ipcctl")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return func(args ...string) (string, error) {
		ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
		defer cancel()
		out, err := exec.CommandContext(ctx, bin, args...).CombinedOutput()
		if ctx.Err() != nil {
			t.Fatalf("ipcctl %v did not finish in a minute:\n%s", args, out)
		}
		return string(out), err
	}
}

// TestIpcctlForeignObjects: list passes over a FIFO in /dev/shm (opening
// it blocked for ever) and names the temporary file of an unfinished
// create; remove leaves a file that is not heapipc's (it unlinked
// whatever the name held).
func TestIpcctlForeignObjects(t *testing.T) {
	if backend.DefaultSegmentKind() != backend.POSIX {
		t.Skip("list and the foreign files are of /dev/shm: POSIX segments are not the default here")
	}
	run := buildIpcctl(t)
	fifo, foreign := testutil.Name(t), testutil.Name(t)
	tmp := fmt.Sprintf(".hipc-tmp.%d.%s", os.Getpid(), testutil.Name(t))
	for _, f := range []struct {
		name string
		make func(string) error
	}{
		{fifo, func(p string) error { return unix.Mkfifo(p, 0o600) }},
		{foreign, func(p string) error { return os.WriteFile(p, []byte("not ours"), 0o600) }},
		{tmp, func(p string) error { return os.WriteFile(p, make([]byte, 4096), 0o600) }},
	} {
		p := backend.ShmDir + "/" + f.name
		if err := f.make(p); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { os.Remove(p) })
	}
	out, err := run("list")
	if err != nil || strings.Contains(out, fifo) || strings.Contains(out, foreign) ||
		!strings.Contains(out, tmp) || !strings.Contains(out, fmt.Sprintf("unfinished create by pid %d", os.Getpid())) {
		t.Errorf("list: %v\n%s", err, out)
	}
	for _, n := range []string{foreign, fifo} {
		out, err = run("remove", "-backends", "posix,posix", n)
		if err == nil || !strings.Contains(out, "not a heapipc object") {
			t.Errorf("remove %s: %v\n%s", n, err, out)
		}
		if _, err := os.Lstat(backend.ShmDir + "/" + n); err != nil {
			t.Errorf("remove took %s: %v", n, err)
		}
	}
}

func TestIpcctl(t *testing.T) {
	run := buildIpcctl(t)
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
	if _, err := b.Static(t.Context(), "cfg", 64, nil); err != nil {
		t.Fatal(err)
	}

	if backend.DefaultSegmentKind() == backend.POSIX {
		out, err := run("list")
		if err != nil || !strings.Contains(out, name) {
			t.Errorf("list: %v\n%s", err, out)
		}
	}
	seg, _ := b.Backends()
	out, err := run("stat", "-backends", seg, name)
	if err != nil || !strings.Contains(out, "channels  1, and 1 static segments") || !strings.Contains(out, "1 live") {
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
