// Command twoproc is heapipc's reference example. Until the channel layer
// exists it shows the foundation every channel stands on: two processes
// share one named buffer (a region with a validated header) and hand
// messages back and forth through it, paced by two named semaphores.
//
// Process A creates the buffer and the semaphores, starts process B (the
// same binary with -peer), and for each round writes a numbered message
// into the buffer and posts "ping"; B checks it, writes a reply and posts
// "pong"; A checks the reply. Both verify every message, then A reports
// the round-trip rate, removes everything it created and exits 0.
//
//	go run ./examples/twoproc [-n 100000] [-segments posix|sysv|heap] [-semaphores posix|sysv]
package main

import (
	"context"
	"encoding/binary"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"time"

	"github.com/heapipc/ipc/backend"
)

func main() {
	n := flag.Int("n", 100_000, "round trips")
	segKind := flag.String("segments", string(backend.DefaultSegmentKind()), "segment backend: posix or sysv")
	semKind := flag.String("semaphores", string(backend.DefaultSemaphoreKind()), "semaphore backend: posix or sysv")
	peer := flag.String("peer", "", "internal: run as process B on this buffer")
	flag.Parse()
	var err error
	if *peer != "" {
		err = runB(*peer, backend.Kind(*segKind), backend.Kind(*semKind), *n)
	} else {
		err = runA(backend.Kind(*segKind), backend.Kind(*semKind), *n)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "twoproc:", err)
		os.Exit(1)
	}
}

const msgSize = 64

func runA(segKind, semKind backend.Kind, n int) (err error) {
	name := fmt.Sprintf("twoproc-%d", os.Getpid())
	r, err := backend.OpenRegion(name, backend.RegionConfig{
		Segments: segKind, Semaphores: semKind, Size: 1 << 20, Open: backend.CreateOnly,
	}, nil)
	if err != nil {
		return err
	}
	defer func() { err = errors.Join(err, r.Unlink(), r.Close()) }()
	sems, err := backend.Semaphores(semKind)
	if err != nil {
		return err
	}
	ping, err := sems.Create(name+".ping", 0, backend.SemOptions{})
	if err != nil {
		return err
	}
	defer func() { err = errors.Join(err, ping.Unlink(), ping.Close()) }()
	pong, err := sems.Create(name+".pong", 0, backend.SemOptions{})
	if err != nil {
		return err
	}
	defer func() { err = errors.Join(err, pong.Unlink(), pong.Close()) }()

	exe, err := os.Executable()
	if err != nil {
		return err
	}
	cmd := exec.Command(exe, "-peer", name, "-segments", string(segKind), "-semaphores", string(semKind), "-n", strconv.Itoa(n))
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
	fmt.Printf("A (pid %d): created buffer %q (%s segment, %d bytes, %s semaphores), started B (pid %d)\n",
		os.Getpid(), name, segKind, len(r.Bytes()), semKind, cmd.Process.Pid)

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	req, rep := r.Data()[:msgSize], r.Data()[msgSize:2*msgSize]
	start := time.Now()
	for i := 0; i < n; i++ {
		binary.LittleEndian.PutUint64(req, uint64(i))
		copy(req[8:], "ping from A")
		if err := ping.Post(); err != nil {
			return err
		}
		if err := pong.Wait(ctx); err != nil {
			return fmt.Errorf("round %d: %w", i, err)
		}
		if got := binary.LittleEndian.Uint64(rep); got != uint64(i)+1 || string(rep[8:21]) != "pong from B  " {
			return fmt.Errorf("round %d: bad reply %d %q", i, got, rep[8:21])
		}
	}
	elapsed := time.Since(start)
	if err := cmd.Wait(); err != nil {
		return fmt.Errorf("B failed: %w", err)
	}
	fmt.Printf("A: %d round trips verified in %v: %.0f round trips/s, %.0f ns each\n",
		n, elapsed.Round(time.Millisecond), float64(n)/elapsed.Seconds(), float64(elapsed.Nanoseconds())/float64(n))
	fmt.Println("A: removed the buffer and semaphores; done")
	return nil
}

func runB(name string, segKind, semKind backend.Kind, n int) error {
	r, err := backend.OpenRegion(name, backend.RegionConfig{Segments: segKind, Semaphores: semKind, Open: backend.AttachOnly}, nil)
	if err != nil {
		return err
	}
	defer r.Close()
	sems, err := backend.Semaphores(semKind)
	if err != nil {
		return err
	}
	ping, err := sems.Open(name+".ping", backend.SemOptions{})
	if err != nil {
		return err
	}
	defer ping.Close()
	pong, err := sems.Open(name+".pong", backend.SemOptions{})
	if err != nil {
		return err
	}
	defer pong.Close()
	fmt.Printf("B (pid %d): attached %q, created by %v\n", os.Getpid(), name, r.Creator())
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	req, rep := r.Data()[:msgSize], r.Data()[msgSize:2*msgSize]
	for i := 0; i < n; i++ {
		if err := ping.Wait(ctx); err != nil {
			return fmt.Errorf("round %d: %w", i, err)
		}
		if got := binary.LittleEndian.Uint64(req); got != uint64(i) || string(req[8:19]) != "ping from A" {
			return fmt.Errorf("round %d: bad request %d %q", i, got, req[8:19])
		}
		binary.LittleEndian.PutUint64(rep, uint64(i)+1)
		copy(rep[8:], "pong from B  ")
		if err := pong.Post(); err != nil {
			return err
		}
	}
	fmt.Printf("B: %d requests verified\n", n)
	return nil
}
