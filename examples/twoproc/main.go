// Command twoproc is heapipc's reference example (make demo).
//
// Process A creates a buffer and produces numbered records on record
// channels 1 and 2 from one handle. Process B (A re-executed with -peer)
// consumes them with two goroutines, each with a handle of its own. Both
// sides verify order and count; A prints the throughput, removes the buffer
// and exits 0.
//
// A stops B and removes the buffer however the run ends: on an error, when
// B exits early (A gives up at once and says how B exited), and on SIGINT
// or SIGTERM (A then exits 1). B dies with A on Linux, even if A is killed.
//
//	go run ./examples/twoproc [-n 1000000] [-size 64] [-mib 16] [-segments posix|sysv] [-semaphores posix|sysv] [-peer-exe B]
//
// With -peer-exe, process B runs from another build of this example: a
// 32-bit x86 B beside a 64-bit A, for instance (the layouts in shared
// memory are the same on both).
package main

import (
	"context"
	"encoding/binary"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strconv"
	"sync"
	"syscall"
	"time"

	ipc "github.com/heapipc/ipc"
	"github.com/heapipc/ipc/examples/internal/child"
)

var (
	n       = flag.Int("n", 1_000_000, "records per channel")
	size    = flag.Int("size", 64, "record payload bytes (at least 8)")
	mib     = flag.Int("mib", 16, "size of the shared buffer in MiB")
	segKind = flag.String("segments", "", "segment backend: posix or sysv (default: the build's)")
	semKind = flag.String("semaphores", "", "semaphore backend: posix or sysv (default: the build's)")
	peer    = flag.String("peer", "", "internal: run as process B on this buffer")
	peerExe = flag.String("peer-exe", "", "run process B from this executable (default: this one), e.g. this example built for another architecture")
)

var channels = []ipc.ChannelID{1, 2}

func main() {
	flag.Parse()
	if err := checkFlags(); err != nil {
		fmt.Fprintln(os.Stderr, "twoproc:", err)
		os.Exit(2)
	}
	var err error
	if *peer != "" {
		err = consume(*peer)
	} else {
		// SIGINT and SIGTERM cancel ctx: A stops, kills B and removes the
		// buffer before it exits.
		ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
		defer stop()
		err = produce(ctx)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "twoproc:", err)
		os.Exit(1)
	}
}

// checkFlags rejects numbers the example cannot run with.
func checkFlags() error {
	switch {
	case *n < 1:
		return fmt.Errorf("-n %d: want at least 1 record per channel", *n)
	case *size < 8:
		return fmt.Errorf("-size %d: want at least 8 bytes (a record carries its number)", *size)
	case *mib < 1 || *mib > 1024:
		return fmt.Errorf("-mib %d: want 1 to 1024", *mib)
	}
	if *peer != "" {
		return nil // B attaches to A's buffer, whatever its size
	}
	// In flight at most: a full ring (ipc.DefaultCapacity records) and the
	// record being filled, on each channel. Keep that under half the buffer,
	// which leaves room for slabs, rings and page rounding.
	if need := int64(len(channels)) * (ipc.DefaultCapacity + 1) * int64(*size+64); 2*need > int64(*mib)<<20 {
		return fmt.Errorf("-size %d: records in flight need a buffer of %d MiB or more (-mib)", *size, (2*need+1<<20-1)>>20)
	}
	return nil
}

func produce(ctx context.Context) (err error) {
	name := fmt.Sprintf("twoproc-%d", os.Getpid())
	buf, err := ipc.Open(name, ipc.WithSize(int64(*mib)<<20), ipc.WithBackends(*segKind, *semKind), ipc.CreateOnly())
	if err != nil {
		return err
	}
	defer func() { err = errors.Join(err, buf.Destroy()) }()
	seg, sem := buf.Backends()

	exe := *peerExe
	if exe == "" {
		if exe, err = os.Executable(); err != nil {
			return err
		}
	}
	// B's exit cancels work: until A has sent everything, that means B
	// failed (or never attached), and A gives up at once.
	work, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	defer func() {
		if errors.Is(err, context.Canceled) {
			err = context.Cause(work) // the signal, or how B exited
		}
	}()
	b, err := child.Start(cancel, "process B", exe, "-peer", name, "-n", strconv.Itoa(*n), "-size", strconv.Itoa(*size),
		"-segments", seg, "-semaphores", sem)
	if err != nil {
		return err
	}
	defer b.Stop()
	fmt.Printf("A (pid %d): buffer %q (%s segment, %s semaphores); B is pid %d\n", os.Getpid(), name, seg, sem, b.Pid())

	h, err := buf.NewHandle()
	if err != nil {
		return err
	}
	defer h.Close()
	var ps []*ipc.Producer
	for _, id := range channels {
		p, err := h.Producer(id)
		if err != nil {
			return err
		}
		ps = append(ps, p)
	}
	start := time.Now()
	for i := 0; i < *n; i++ {
		for _, p := range ps {
			r, err := h.Allocate(*size)
			if err != nil {
				return err
			}
			b := r.Bytes()
			binary.LittleEndian.PutUint64(b, uint64(i))
			b[len(b)-1] = byte(i)
			if err := p.Send(work, r); err != nil {
				return fmt.Errorf("record %d on channel %d: %w", i, p.ID(), err)
			}
		}
	}
	for _, p := range ps {
		if err := p.Close(); err != nil {
			return err
		}
	}
	if err := b.Wait(ctx); err != nil {
		return err
	}
	elapsed := time.Since(start)
	total := int64(*n) * int64(len(ps))
	fmt.Printf("A: %d records of %d bytes sent and verified in %v: %.2f M records/s (%.0f ns each)\n",
		total, *size, elapsed.Round(time.Millisecond), float64(total)/elapsed.Seconds()/1e6, float64(elapsed.Nanoseconds())/float64(total))
	if err := buf.Check(); err != nil {
		return fmt.Errorf("check: %w", err)
	}
	fmt.Println("A: buffer checked, destroying it; done")
	return nil
}

func consume(name string) error {
	buf, err := ipc.Open(name, ipc.AttachOnly(), ipc.WithBackends(*segKind, *semKind))
	if err != nil {
		return err
	}
	defer buf.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	var wg sync.WaitGroup
	errs := make([]error, len(channels))
	for i, id := range channels {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = consumeOne(ctx, buf, id)
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return err
	}
	fmt.Printf("B (pid %d): %d records on each of channels %v received in order\n", os.Getpid(), *n, channels)
	return nil
}

func consumeOne(ctx context.Context, buf *ipc.Buffer, id ipc.ChannelID) error {
	h, err := buf.NewHandle()
	if err != nil {
		return err
	}
	defer h.Close()
	c, err := h.Consumer(id)
	if err != nil {
		return err
	}
	defer c.Close()
	for i := 0; ; i++ {
		r, err := c.Receive(ctx)
		if err == io.EOF {
			if i != *n {
				return fmt.Errorf("channel %d: EOF after %d records, want %d", id, i, *n)
			}
			return nil
		}
		if err != nil {
			return fmt.Errorf("channel %d: %w", id, err)
		}
		b := r.Bytes()
		if got := binary.LittleEndian.Uint64(b); got != uint64(i) || b[len(b)-1] != byte(i) {
			return fmt.Errorf("channel %d: record %d arrived where %d was expected", id, got, i)
		}
		if err := h.Free(r); err != nil {
			return err
		}
	}
}
