// Package tests holds heapipc's cross-process integration tests. They use
// the default backends, so `make test-matrix` runs them under all four
// combinations; children are the re-executed test binary.
package tests

import (
	"context"
	"encoding/binary"
	"errors"
	"strconv"
	"testing"
	"time"

	ipc "github.com/heapipc/ipc"
	"github.com/heapipc/ipc/internal/testutil"
	"github.com/stretchr/testify/require"
)

func TestMain(m *testing.M) { testutil.Main(m) }

const (
	envBuf = "HIPC_BUF"
	envN   = "HIPC_N"
)

// openBuf creates a uniquely named buffer and destroys it (after a Check)
// when the test ends.
func openBuf(t *testing.T, opts ...ipc.Option) (*ipc.Buffer, string) {
	t.Helper()
	name := testutil.Name(t)
	b, err := ipc.Open(name, append([]ipc.Option{ipc.WithSize(64 << 20), ipc.WithCheckInterval(20 * time.Millisecond)}, opts...)...)
	require.NoError(t, err)
	t.Cleanup(func() {
		if err := b.Check(); err != nil && !errors.Is(err, ipc.ErrClosed) {
			t.Errorf("Check after the test: %v", err)
		}
		if err := b.Destroy(); err != nil && !errors.Is(err, ipc.ErrClosed) {
			t.Errorf("Destroy: %v", err)
		}
	})
	// Grow the channel registry once, so that memory figures taken by a
	// test do not count the registry's first block of entries.
	s, err := b.Static(context.Background(), "warm-up", 1, nil)
	require.NoError(t, err)
	require.NoError(t, s.Remove(context.Background()))
	return b, name
}

// attach opens an existing buffer from a child.
func attach(t *testing.T) *ipc.Buffer {
	t.Helper()
	b, err := ipc.Open(testutil.Env(t, envBuf), ipc.AttachOnly(), ipc.WithCheckInterval(20*time.Millisecond))
	require.NoError(t, err)
	t.Cleanup(func() { b.Close() })
	return b
}

func envInt(t *testing.T, key string) int {
	n, err := strconv.Atoi(testutil.Env(t, key))
	require.NoError(t, err)
	return n
}

func newHandle(t *testing.T, b *ipc.Buffer) *ipc.Handle {
	t.Helper()
	h, err := b.NewHandle()
	require.NoError(t, err)
	t.Cleanup(func() { h.Close() })
	return h
}

// stamp writes a sequence number (and a pattern derived from it) into a
// record; check verifies it. stampBytes and checkBytes do the same for
// any bytes (at least 8).
func stamp(r ipc.Record, seq uint64) { stampBytes(r.Bytes(), seq) }

func check(t testing.TB, r ipc.Record, want uint64) { checkBytes(t, r.Bytes(), want) }

func stampBytes(b []byte, seq uint64) {
	binary.LittleEndian.PutUint64(b, seq)
	for i := 8; i < len(b); i++ {
		b[i] = byte(seq) + byte(i)
	}
}

func checkBytes(t testing.TB, b []byte, want uint64) {
	if got := binary.LittleEndian.Uint64(b); got != want {
		t.Fatalf("record %d arrived where %d was expected", got, want)
	}
	for i := 8; i < len(b); i++ {
		if b[i] != byte(want)+byte(i) {
			t.Fatalf("record %d: byte %d torn", want, i)
		}
	}
}

func ctxFor(t *testing.T) context.Context { return testutil.Context(t, 3*time.Minute) }
