// Command pipeline runs three processes as the stages of a pipeline that
// forwards records without copying them.
//
//	source (process 1) --channel 1--> transform (process 2) --channel 2--> sink (process 3)
//
// The source allocates records in the shared buffer and fills them; the
// transform stage rewrites each record in place and sends the same record
// on (no copy, no allocation); the sink verifies and frees them. The first
// process starts the other two (re-executing itself with -stage) and
// removes the buffer at the end.
//
//	go run ./examples/pipeline [-n 200000]
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
	"time"

	ipc "github.com/heapipc/ipc"
)

var (
	n     = flag.Int("n", 200_000, "records")
	stage = flag.String("stage", "", "internal: transform or sink")
	name  = flag.String("buffer", "", "internal: the buffer's name")
)

const size = 128

func main() {
	flag.Parse()
	var err error
	switch *stage {
	case "":
		err = source()
	case "transform":
		err = transform()
	case "sink":
		err = sink()
	default:
		err = fmt.Errorf("unknown stage %q", *stage)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "pipeline %s: %v\n", *stage, err)
		os.Exit(1)
	}
}

func ctx() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), 5*time.Minute)
}

func source() (err error) {
	bufName := fmt.Sprintf("pipeline-%d", os.Getpid())
	buf, err := ipc.Open(bufName, ipc.WithSize(32<<20), ipc.CreateOnly())
	if err != nil {
		return err
	}
	defer func() { err = errors.Join(err, buf.Destroy()) }()
	exe, err := os.Executable()
	if err != nil {
		return err
	}
	var cmds []*exec.Cmd
	for _, s := range []string{"transform", "sink"} {
		cmd := exec.Command(exe, "-stage", s, "-buffer", bufName, "-n", strconv.Itoa(*n))
		cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
		if err := cmd.Start(); err != nil {
			return err
		}
		cmds = append(cmds, cmd)
		defer func() {
			if cmd.ProcessState == nil {
				cmd.Process.Kill()
				cmd.Wait()
			}
		}()
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
	c, cancel := ctx()
	defer cancel()
	start := time.Now()
	for i := 0; i < *n; i++ {
		r, err := h.Allocate(size)
		if err != nil {
			return err
		}
		binary.LittleEndian.PutUint64(r.Bytes(), uint64(i))
		if err := p.Send(c, r); err != nil {
			return err
		}
	}
	if err := p.Close(); err != nil {
		return err
	}
	for _, cmd := range cmds {
		if err := cmd.Wait(); err != nil {
			return fmt.Errorf("%v: %w", cmd.Args[1:3], err)
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
