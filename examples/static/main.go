// Command static shows static segments: processes sharing a configuration
// block and a counter inside one buffer.
//
// The first process creates the buffer and the "config" segment, whose
// init function runs exactly once, before anyone else can attach. It then
// starts three workers (itself, re-executed with -worker); each attaches,
// reads the configuration, and adds to the shared atomic counter. The
// first process checks the total and removes the buffer. If a worker
// fails, or on SIGINT or SIGTERM, it kills the workers still running,
// removes the buffer and exits 1; the workers die with it on Linux, even if
// it is killed.
//
//	go run ./examples/static [-workers 3] [-adds 100000]
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"strconv"
	"sync/atomic"
	"syscall"

	ipc "github.com/heapipc/ipc"
	"github.com/heapipc/ipc/examples/internal/child"
)

// config is the shared block: fixed-size fields only (no pointers), the
// counter an atomic for concurrent updates from every process.
type config struct {
	Version  uint32
	Workers  uint32
	Adds     uint64
	Greeting [32]byte
	Counter  atomic.Uint64
	Arrived  atomic.Uint32
}

var (
	workers = flag.Int("workers", 3, "worker processes")
	adds    = flag.Int("adds", 100_000, "increments per worker")
	worker  = flag.String("worker", "", "internal: the buffer to work on")
)

func main() {
	flag.Parse()
	if err := checkFlags(); err != nil {
		fmt.Fprintln(os.Stderr, "static:", err)
		os.Exit(2)
	}
	var err error
	if *worker != "" {
		err = work(*worker)
	} else {
		// SIGINT and SIGTERM cancel ctx: run kills the workers and
		// removes the buffer before it exits.
		ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
		defer stop()
		err = run(ctx)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "static:", err)
		os.Exit(1)
	}
}

// checkFlags rejects numbers the example cannot run with.
func checkFlags() error {
	switch {
	case *workers < 1 || *workers > 64:
		return fmt.Errorf("-workers %d: want 1 to 64", *workers)
	case *adds < 1 || *adds > 1e9:
		return fmt.Errorf("-adds %d: want 1 to 1000000000", *adds)
	}
	return nil
}

func segment(buf *ipc.Buffer, init func([]byte) error) (*config, error) {
	s, err := buf.Static(context.Background(), "config", 128, init)
	if err != nil {
		return nil, err
	}
	return ipc.StaticAt[config](s, 0)
}

func run(ctx context.Context) (err error) {
	name := fmt.Sprintf("static-%d", os.Getpid())
	buf, err := ipc.Open(name, ipc.WithSize(1<<20), ipc.CreateOnly())
	if err != nil {
		return err
	}
	defer func() { err = errors.Join(err, buf.Destroy()) }()
	defer func() {
		if err != nil && ctx.Err() != nil {
			err = context.Cause(ctx) // the signal, rather than what it interrupted
		}
	}()
	cfg, err := segment(buf, func(b []byte) error {
		fmt.Println("main: initializing the config segment (runs once)")
		c, err := ipc.StaticAtBytes[config](b)
		if err != nil {
			return err
		}
		c.Version = 3
		c.Workers = uint32(*workers)
		c.Adds = uint64(*adds)
		copy(c.Greeting[:], "hello from the creator")
		return nil
	})
	if err != nil {
		return err
	}
	exe, err := os.Executable()
	if err != nil {
		return err
	}
	var cmds []*exec.Cmd
	defer func() {
		for _, cmd := range cmds {
			if cmd.ProcessState == nil { // not waited for: may be running
				cmd.Process.Kill()
				cmd.Wait()
			}
		}
	}()
	for i := 0; i < *workers; i++ {
		// A signal (the end of ctx) kills the worker; so does this
		// process's death, on Linux.
		cmd := exec.CommandContext(ctx, exe, "-worker", name)
		cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
		child.DieWithParent(cmd)
		if err := cmd.Start(); err != nil {
			return err
		}
		cmds = append(cmds, cmd)
	}
	for _, cmd := range cmds {
		if err := cmd.Wait(); err != nil {
			return fmt.Errorf("worker %d: %w", cmd.Process.Pid, err)
		}
	}
	want := uint64(*workers) * uint64(*adds)
	got := cfg.Counter.Load()
	fmt.Printf("main: %d workers arrived; counter = %d (want %d)\n", cfg.Arrived.Load(), got, want)
	if got != want || cfg.Arrived.Load() != uint32(*workers) {
		return fmt.Errorf("counter %d, want %d", got, want)
	}
	return buf.Check()
}

func work(name string) error {
	buf, err := ipc.Open(name, ipc.AttachOnly())
	if err != nil {
		return err
	}
	defer buf.Close()
	cfg, err := segment(buf, func([]byte) error { return errors.New("init ran twice") })
	if err != nil {
		return err
	}
	greeting := string(cfg.Greeting[:])
	for i := range greeting {
		if greeting[i] == 0 {
			greeting = greeting[:i]
			break
		}
	}
	for i := uint64(0); i < cfg.Adds; i++ {
		cfg.Counter.Add(1)
	}
	n := cfg.Arrived.Add(1)
	fmt.Printf("worker %d: config v%d says %q; added %d (%d of %s workers done)\n",
		os.Getpid(), cfg.Version, greeting, cfg.Adds, n, strconv.Itoa(int(cfg.Workers)))
	return nil
}
