package tests

import (
	"errors"
	"os"
	"syscall"
	"testing"
	"time"

	ipc "github.com/heapipc/ipc"
	"github.com/heapipc/ipc/internal/testutil"
	"github.com/stretchr/testify/require"
)

// TestOtherPidNamespaceRefused: a process in another pid namespace (here
// a child in new user and pid namespaces, sharing /dev/shm and the IPC
// namespace, as a container run with the host's IPC does) cannot tell
// this buffer's live peers from dead ones by pid: its Open is refused
// with ErrNotSupported, whether it may create or only attach, and leaves
// the buffer and its users alone (a create-capable Open must not take
// the region for a dead creator's and replace it).
func TestOtherPidNamespaceRefused(t *testing.T) {
	b, name := openBuf(t)
	ctx := ctxFor(t)
	h := newHandle(t, b)
	p, err := h.Producer(7)
	require.NoError(t, err)
	r, err := h.Allocate(8)
	require.NoError(t, err)
	copy(r.Bytes(), "pidns ok")
	require.NoError(t, p.Send(ctx, r))

	attr := &syscall.SysProcAttr{
		Cloneflags:  syscall.CLONE_NEWUSER | syscall.CLONE_NEWPID,
		UidMappings: []syscall.SysProcIDMap{{ContainerID: 0, HostID: os.Getuid(), Size: 1}},
		GidMappings: []syscall.SysProcIDMap{{ContainerID: 0, HostID: os.Getgid(), Size: 1}},
	}
	c, err := testutil.StartChildAttr(t, "TestChildOtherPidNamespace", nil, attr, envBuf+"="+name)
	if err != nil {
		t.Skipf("this machine does not let an unprivileged test make user and pid namespaces: %v", err)
	}
	require.Equal(t, "refused twice", c.Line(t, time.Minute))
	c.MustSucceed(t, time.Minute)

	// The buffer is the same one, and works.
	ch := newHandle(t, b)
	con, err := ch.Consumer(7)
	require.NoError(t, err)
	got, err := con.Receive(ctx)
	require.NoError(t, err)
	require.Equal(t, "pidns ok", string(got.Bytes()))
	require.NoError(t, ch.Free(got))
	require.NoError(t, b.Check())
}

// TestChildOtherPidNamespace opens HIPC_BUF from another pid namespace.
func TestChildOtherPidNamespace(t *testing.T) {
	testutil.ChildOnly(t)
	name := testutil.Env(t, envBuf)
	require.Equal(t, 1, os.Getpid(), "the child is the first process of its pid namespace")
	for _, opts := range [][]ipc.Option{{ipc.AttachOnly()}, nil} {
		b, err := ipc.Open(name, opts...)
		if err == nil {
			b.Close()
		}
		if !errors.Is(err, ipc.ErrNotSupported) {
			t.Fatalf("Open %v from another pid namespace: %v, want ErrNotSupported", opts, err)
		}
	}
	testutil.Say("refused twice")
}
