// Command twoproc is heapipc's reference example (make demo).
//
// Process A creates a buffer and produces numbered records on record
// channels 1 and 2 from one handle. Process B (A re-executed with -peer)
// consumes them with two goroutines, each with a handle of its own. Both
// sides verify order and count; A prints the throughput, removes the buffer
// and exits 0.
//
//	go run ./examples/twoproc [-n 1000000] [-size 64] [-segments posix|sysv] [-semaphores posix|sysv] [-peer-exe B]
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
	"os/exec"
	"strconv"
	"sync"
	"time"

	ipc "github.com/heapipc/ipc"
)

var (
	n       = flag.Int("n", 1_000_000, "records per channel")
	size    = flag.Int("size", 64, "record payload bytes (at least 8)")
	segKind = flag.String("segments", "", "segment backend: posix or sysv (default: the build's)")
	semKind = flag.String("semaphores", "", "semaphore backend: posix or sysv (default: the build's)")
	peer    = flag.String("peer", "", "internal: run as process B on this buffer")
	peerExe = flag.String("peer-exe", "", "run process B from this executable (default: this one), e.g. this example built for another architecture")
)

var channels = []ipc.ChannelID{1, 2}

func main() {
	flag.Parse()
	if *size < 8 {
		*size = 8
	}
	var err error
	if *peer != "" {
		err = consume(*peer)
	} else {
		err = produce()
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "twoproc:", err)
		os.Exit(1)
	}
}

func produce() (err error) {
	name := fmt.Sprintf("twoproc-%d", os.Getpid())
	buf, err := ipc.Open(name, ipc.WithSize(64<<20), ipc.WithBackends(*segKind, *semKind), ipc.CreateOnly())
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
	cmd := exec.Command(exe, "-peer", name, "-n", strconv.Itoa(*n), "-size", strconv.Itoa(*size),
		"-segments", seg, "-semaphores", sem)
	cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
	if err := cmd.Start(); err != nil {
		return err
	}
	defer func() {
		if cmd.ProcessState == nil {
			cmd.Process.Kill()
			cmd.Wait()
		}
	}()
	fmt.Printf("A (pid %d): buffer %q (%s segment, %s semaphores); B is pid %d\n", os.Getpid(), name, seg, sem, cmd.Process.Pid)

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
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
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
			if err := p.Send(ctx, r); err != nil {
				return fmt.Errorf("record %d on channel %d: %w", i, p.ID(), err)
			}
		}
	}
	for _, p := range ps {
		if err := p.Close(); err != nil {
			return err
		}
	}
	if err := cmd.Wait(); err != nil {
		return fmt.Errorf("process B failed: %w", err)
	}
	elapsed := time.Since(start)
	total := *n * len(ps)
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
