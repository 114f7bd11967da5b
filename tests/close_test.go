package tests

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	ipc "github.com/heapipc/ipc"
)

// TestCloseWhileBlocked closes a buffer while other goroutines are
// blocked in it — a consumer in Receive, a producer in Send on a full
// ring, a Select, a stream reader, an MPSC consumer, a consumer and a
// producer whose peers are idle ends of this process (parked in the Go
// scheduler) — and while two more stream records with the batch forms. Close must wake the blocked calls
// (ErrClosed), wait for the calls in progress to end before it unmaps
// (a call on unmapped memory would crash the process), and leave the
// buffer sound for the other attachment. The closed attachment's check
// interval is a minute, so only Close's interruption can end the waits
// within the test's bound.
func TestCloseWhileBlocked(t *testing.T) {
	other, name := openBuf(t)
	b, err := ipc.Open(name, ipc.WithCheckInterval(time.Minute))
	require.NoError(t, err)
	ctx := context.Background()
	handle := func() *ipc.Handle {
		h, err := b.NewHandle()
		require.NoError(t, err)
		return h
	}
	calls := map[string]func() error{}
	{
		h := handle()
		c, err := h.Consumer(1)
		require.NoError(t, err)
		calls["receive"] = func() error { _, err := c.Receive(ctx); return err }
	}
	{
		h := handle()
		p, err := h.Producer(2, ipc.WithCapacity(2))
		require.NoError(t, err)
		calls["send"] = func() error {
			for {
				r, err := h.Allocate(8)
				if err != nil {
					return err
				}
				if err := p.Send(ctx, r); err != nil {
					return err
				}
			}
		}
	}
	{
		h := handle()
		c, err := h.Consumer(3)
		require.NoError(t, err)
		s, err := h.NewSelect(c)
		require.NoError(t, err)
		calls["select"] = func() error { _, _, err := s.Receive(ctx); return err }
	}
	{
		h := handle()
		r, err := h.StreamReader(4)
		require.NoError(t, err)
		calls["stream read"] = func() error { _, err := r.Read(make([]byte, 16)); return err }
	}
	{
		h := handle()
		c, err := h.MPSCConsumer(5)
		require.NoError(t, err)
		calls["mpsc receive"] = func() error { _, err := c.Receive(ctx); return err }
	}
	{
		hp, hc := handle(), handle()
		p, err := hp.Producer(6)
		require.NoError(t, err)
		c, err := hc.Consumer(6)
		require.NoError(t, err)
		calls["send batch"] = func() error {
			rs := make([]ipc.Record, 16)
			for {
				if err := hp.AllocateBatch(64, rs); err != nil {
					return err
				}
				if _, err := p.SendBatch(ctx, rs); err != nil {
					return err
				}
			}
		}
		calls["receive batch"] = func() error {
			rs := make([]ipc.Record, 16)
			for {
				k, err := c.ReceiveBatch(ctx, rs)
				if err != nil {
					return err
				}
				if err := hc.FreeBatch(rs[:k]); err != nil {
					return err
				}
			}
		}
	}
	{
		// Both ends in this process, nothing moving: the waits park in
		// the Go scheduler (the peer is local), not on the futex.
		hp, hc := handle(), handle()
		_, err := hp.Producer(7, ipc.WithSpin(-1))
		require.NoError(t, err)
		c, err := hc.Consumer(7, ipc.WithSpin(-1))
		require.NoError(t, err)
		calls["receive, local producer"] = func() error { _, err := c.Receive(ctx); return err }
		hp2, hc2 := handle(), handle()
		p2, err := hp2.Producer(8, ipc.WithCapacity(2), ipc.WithSpin(-1))
		require.NoError(t, err)
		_, err = hc2.Consumer(8)
		require.NoError(t, err)
		calls["send, local consumer"] = func() error {
			for {
				r, err := hp2.Allocate(8)
				if err != nil {
					return err
				}
				if err := p2.Send(ctx, r); err != nil {
					return err
				}
			}
		}
	}
	var wg sync.WaitGroup
	errs := make(map[string]error, len(calls))
	var mu sync.Mutex
	for what, call := range calls {
		wg.Add(1)
		go func() {
			defer wg.Done()
			err := call()
			mu.Lock()
			errs[what] = err
			mu.Unlock()
		}()
	}
	time.Sleep(100 * time.Millisecond) // let them park (or stream)
	closed := make(chan error, 1)
	go func() { closed <- b.Close() }()
	select {
	case err := <-closed:
		require.NoError(t, err)
	case <-time.After(20 * time.Second):
		t.Fatal("Close did not return: blocked calls were not woken")
	}
	wg.Wait()
	for what, err := range errs {
		require.ErrorIs(t, err, ipc.ErrClosed, what)
	}
	// Calls after Close touch nothing.
	_, err = b.Stats()
	require.ErrorIs(t, err, ipc.ErrClosed)
	require.NoError(t, other.Check())
	// What the closed attachment's channels held comes back when the
	// other side removes them (Recover: nothing of this live process is
	// robbed, and nothing is corrupt).
	_, err = other.Recover()
	require.NoError(t, err)
	require.NoError(t, other.Check())
}
