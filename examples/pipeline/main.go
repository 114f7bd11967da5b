// Command pipeline runs three processes as the stages of a pipeline that
// forwards records without copying them.
//
//	source (process 1) --channel 1--> transform (process 2) --channel 2--> sink (process 3)
//
// The source allocates records in the shared buffer and fills them; the
// transform stage rewrites each record in place and sends the same record
// on (no copy, no allocation); the sink verifies and frees them. The first
// process starts the other two (re-executing itself with -stage) and
// removes the buffer at the end. If a stage fails, or on SIGINT or SIGTERM,
// it stops the other stages, removes the buffer and exits 1; the stages die
// with it on Linux, even if it is killed.
//
//	go run ./examples/pipeline [-n 200000] [-mib 4]
package main

import (
	"cmp"
	"context"
	"encoding/binary"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strconv"
	"syscall"
	"time"

	ipc "github.com/heapipc/ipc"
	"github.com/heapipc/ipc/examples/internal/child"
)

var (
	n     = flag.Int("n", 200_000, "records")
	mib   = flag.Int("mib", 4, "size of the shared buffer in MiB")
	stage = flag.String("stage", "", "internal: transform or sink")
	name  = flag.String("buffer", "", "internal: the buffer's name")
)

const size = 128

func main() {
	flag.Parse()
	if err := checkFlags(); err != nil {
		fmt.Fprintln(os.Stderr, "pipeline:", err)
		os.Exit(2)
	}
	var err error
	switch *stage {
	case "":
		// SIGINT and SIGTERM cancel ctx: the source stops, kills the other
		// stages and removes the buffer before it exits.
		ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
		defer stop()
		err = source(ctx)
	case "transform":
		err = transform()
	case "sink":
		err = sink()
	default:
		err = fmt.Errorf("unknown stage %q", *stage)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "pipeline %s: %v\n", cmp.Or(*stage, "source"), err)
		os.Exit(1)
	}
}

// checkFlags rejects numbers the example cannot run with.
func checkFlags() error {
	switch {
	case *n < 1:
		return fmt.Errorf("-n %d: want at least 1 record", *n)
	case *mib < 1 || *mib > 1024:
		// In flight at most: a full ring of 1024 records on each channel,
		// 144 bytes each with its header; 1 MiB holds them twice over.
		return fmt.Errorf("-mib %d: want 1 to 1024", *mib)
	}
	return nil
}

func ctx() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), 5*time.Minute)
}

func source(ctx context.Context) (err error) {
	bufName := fmt.Sprintf("pipeline-%d", os.Getpid())
	buf, err := ipc.Open(bufName, ipc.WithSize(int64(*mib)<<20), ipc.CreateOnly())
	if err != nil {
		return err
	}
	defer func() { err = errors.Join(err, buf.Destroy()) }()
	exe, err := os.Executable()
	if err != nil {
		return err
	}
	// A stage's exit cancels work: until the source has sent everything,
	// that means the stage failed, and the source gives up at once.
	work, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	defer func() {
		if errors.Is(err, context.Canceled) {
			err = context.Cause(work) // the signal, or how the stage exited
		}
	}()
	var stages []*child.Child
	defer func() {
		for _, c := range stages {
			c.Stop()
		}
	}()
	for _, s := range []string{"transform", "sink"} {
		c, err := child.Start(cancel, s, exe, "-stage", s, "-buffer", bufName, "-n", strconv.Itoa(*n))
		if err != nil {
			return err
		}
		stages = append(stages, c)
	}
	h, err := buf.NewHandle()
	if err != nil {
		return err
	}
	defer h.Close()
	p, err := h.Producer(1)
	if err != nil {
		return err
	}
	start := time.Now()
	for i := 0; i < *n; i++ {
		r, err := h.Allocate(size)
		if err != nil {
			return err
		}
		binary.LittleEndian.PutUint64(r.Bytes(), uint64(i))
		if err := p.Send(work, r); err != nil {
			return err
		}
	}
	if err := p.Close(); err != nil {
		return err
	}
	for _, c := range stages {
		if err := c.Wait(ctx); err != nil {
			return err
		}
	}
	el := time.Since(start)
	fmt.Printf("source: %d records through 3 processes in %v (%.2f M records/s)\n", *n, el.Round(time.Millisecond), float64(*n)/el.Seconds()/1e6)
	return buf.Check()
}

func attach() (*ipc.Buffer, *ipc.Handle, error) {
	buf, err := ipc.Open(*name, ipc.AttachOnly())
	if err != nil {
		return nil, nil, err
	}
	h, err := buf.NewHandle()
	if err != nil {
		buf.Close()
		return nil, nil, err
	}
	return buf, h, nil
}

func transform() error {
	buf, h, err := attach()
	if err != nil {
		return err
	}
	defer buf.Close()
	in, err := h.Consumer(1)
	if err != nil {
		return err
	}
	out, err := h.Producer(2)
	if err != nil {
		return err
	}
	c, cancel := ctx()
	defer cancel()
	forwarded := 0
	for {
		r, err := in.Receive(c)
		if err == io.EOF {
			break
		}
		if err != nil {
			return err
		}
		b := r.Bytes()
		seq := binary.LittleEndian.Uint64(b)
		binary.LittleEndian.PutUint64(b[8:], seq*seq) // in place
		if err := out.Send(c, r); err != nil {        // the same record: zero-copy
			return err
		}
		forwarded++
	}
	fmt.Printf("transform (pid %d): forwarded %d records in place\n", os.Getpid(), forwarded)
	return errors.Join(in.Close(), out.Close())
}

func sink() error {
	buf, h, err := attach()
	if err != nil {
		return err
	}
	defer buf.Close()
	in, err := h.Consumer(2)
	if err != nil {
		return err
	}
	c, cancel := ctx()
	defer cancel()
	for i := 0; ; i++ {
		r, err := in.Receive(c)
		if err == io.EOF {
			if i != *n {
				return fmt.Errorf("EOF after %d records, want %d", i, *n)
			}
			break
		}
		if err != nil {
			return err
		}
		b := r.Bytes()
		seq, sq := binary.LittleEndian.Uint64(b), binary.LittleEndian.Uint64(b[8:])
		if seq != uint64(i) || sq != seq*seq {
			return fmt.Errorf("record %d: got seq %d square %d", i, seq, sq)
		}
		if err := h.Free(r); err != nil {
			return err
		}
	}
	fmt.Printf("sink (pid %d): %d records verified and freed\n", os.Getpid(), *n)
	return in.Close()
}
