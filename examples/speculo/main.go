// Command speculo shows a speculo area: one writer process, two reader
// processes, one buffer.
//
// The writer creates the buffer and area 1, starts two readers (itself,
// re-executed with -reader), and publishes two things: a configuration
// block (well-known block id 1) that it changes now and then, and a
// stream of samples that expire after -ttl. Readers print every
// configuration version they see and count the samples (checking each
// one's checksum); a sample a slow reader reaches after it expired is
// skipped, never torn. The writer's GC runs as obsolete configurations
// and expired samples pile up; readers move to the new extent by
// themselves. At the end the writer publishes block 2 ("end"); each reader
// prints a summary and the latest configuration, and the writer removes
// the area and the buffer.
//
// The writer stops the readers and removes the buffer however the run
// ends: on an error, when a reader exits early or does not attach (the
// writer gives up at once and says how it exited), and on SIGINT or
// SIGTERM (the writer then exits 1). The readers die with the writer on
// Linux, even if it is killed.
//
//	go run ./examples/speculo [-samples 2000] [-every 200µs] [-ttl 20ms] [-mib 4] [-segments posix|sysv] [-semaphores posix|sysv]
package main

import (
	"context"
	"encoding/binary"
	"errors"
	"flag"
	"fmt"
	"hash/crc32"
	"math"
	"os"
	"os/signal"
	"strconv"
	"syscall"
	"time"

	ipc "github.com/heapipc/ipc"
	"github.com/heapipc/ipc/examples/internal/child"
)

var (
	samples = flag.Int("samples", 2000, "samples to publish")
	every   = flag.Duration("every", 200*time.Microsecond, "time between samples")
	ttl     = flag.Duration("ttl", 20*time.Millisecond, "how long a sample stays valid")
	mib     = flag.Int("mib", 4, "size of the shared buffer in MiB")
	segKind = flag.String("segments", "", "segment backend: posix or sysv (default: the build's)")
	semKind = flag.String("semaphores", "", "semaphore backend: posix or sysv (default: the build's)")
	reader  = flag.String("reader", "", "internal: run as a reader of this buffer")
	id      = flag.Int("id", 0, "internal: reader number")
)

const (
	area        ipc.ChannelID = 1
	configBlock ipc.BlockID   = 1
	endBlock    ipc.BlockID   = 2
	readers                   = 2
)

func main() {
	flag.Parse()
	if err := checkFlags(); err != nil {
		fmt.Fprintln(os.Stderr, "speculo:", err)
		os.Exit(2)
	}
	var err error
	if *reader != "" {
		err = read(*reader, *id)
	} else {
		// SIGINT and SIGTERM cancel ctx: the writer stops, kills the
		// readers and removes the buffer before it exits.
		ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
		defer stop()
		err = write(ctx)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "speculo:", err)
		os.Exit(1)
	}
}

// checkFlags rejects numbers the example cannot run with.
func checkFlags() error {
	switch {
	case *samples < 8 || *samples > 1_000_000:
		return fmt.Errorf("-samples %d: want 8 to 1000000 (the configuration changes every eighth)", *samples)
	case *every < 0 || *every > time.Second:
		return fmt.Errorf("-every %v: want 0 to 1s", *every)
	case *ttl <= 0 || *ttl > 400**every:
		// Up to ttl/every samples are valid at once, and the 64 KiB area
		// holds 512 valid blocks (one per 128 bytes): keep to 400.
		return fmt.Errorf("-ttl %v: want more than 0 and at most 400 × -every (%v)", *ttl, 400**every)
	case *mib < 1 || *mib > 1024:
		return fmt.Errorf("-mib %d: want 1 to 1024", *mib)
	}
	return nil
}

// A sample is {index, value, crc32 of the first 16 bytes}.
func putSample(b []byte, i int) {
	binary.LittleEndian.PutUint64(b, uint64(i))
	binary.LittleEndian.PutUint64(b[8:], math.Float64bits(math.Sin(float64(i)/50)))
	binary.LittleEndian.PutUint32(b[16:], crc32.ChecksumIEEE(b[:16]))
}

func getSample(b []byte) (int, float64, error) {
	if len(b) != 20 || binary.LittleEndian.Uint32(b[16:]) != crc32.ChecksumIEEE(b[:16]) {
		return 0, 0, fmt.Errorf("torn sample of %d bytes", len(b))
	}
	return int(binary.LittleEndian.Uint64(b)), math.Float64frombits(binary.LittleEndian.Uint64(b[8:])), nil
}

func write(ctx context.Context) (err error) {
	name := fmt.Sprintf("speculo-%d", os.Getpid())
	buf, err := ipc.Open(name, ipc.WithSize(int64(*mib)<<20), ipc.WithBackends(*segKind, *semKind), ipc.CreateOnly())
	if err != nil {
		return err
	}
	defer func() { err = errors.Join(err, buf.Destroy()) }()
	seg, sem := buf.Backends()
	h, err := buf.NewHandle()
	if err != nil {
		return err
	}
	defer h.Close()
	sp, err := h.AddSpeculo(area, 64<<10, ipc.SpeculoGCThreshold(40))
	if err != nil {
		return err
	}
	w, err := sp.Writer()
	if err != nil {
		return err
	}
	config := func(v int) []byte {
		return fmt.Appendf(nil, "config v%d: gain=%.2f window=%d", v, 1+float64(v)/10, 16*v)
	}
	version := 1
	if err := w.Update(configBlock, config(version), time.Time{}); err != nil {
		return err
	}
	fmt.Printf("writer (pid %d): buffer %q (%s segment, %s semaphores), area of %d bytes\n", os.Getpid(), name, seg, sem, sp.Capacity())

	exe, err := os.Executable()
	if err != nil {
		return err
	}
	// A reader's exit cancels work: until the writer has published the
	// end, that means the reader failed (or never attached), and the writer
	// gives up at once.
	work, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	var cmds []*child.Child
	defer func() {
		for _, c := range cmds {
			c.Stop()
		}
	}()
	for i := 1; i <= readers; i++ {
		c, err := child.Start(cancel, fmt.Sprintf("reader %d", i), exe, "-reader", name, "-id", strconv.Itoa(i),
			"-samples", strconv.Itoa(*samples), "-every", every.String(), "-ttl", ttl.String(), "-segments", seg, "-semaphores", sem)
		if err != nil {
			return err
		}
		cmds = append(cmds, c)
	}
	attach, stopAttach := context.WithTimeoutCause(work, 30*time.Second, errors.New("the readers did not attach within 30s"))
	defer stopAttach()
	for { // wait for both readers to attach
		st, err := sp.Stats()
		if err != nil {
			return err
		}
		if st.Readers == readers {
			break
		}
		select {
		case <-time.After(time.Millisecond):
		case <-attach.Done():
			return context.Cause(attach) // a reader exited, a signal, or the timeout
		}
	}

	start := time.Now()
	for i := 0; i < *samples; i++ {
		if work.Err() != nil {
			return context.Cause(work) // a reader exited, or a signal
		}
		if i > 0 && i%(*samples/8) == 0 {
			version++
			if err := w.Update(configBlock, config(version), time.Time{}); err != nil {
				return err
			}
		}
		b, err := w.Append(20, time.Now().Add(*ttl))
		if err != nil {
			return err
		}
		putSample(b, i)
		if _, err := w.Commit(); err != nil {
			return err
		}
		time.Sleep(*every)
	}
	if err := w.Update(endBlock, []byte("end"), time.Time{}); err != nil {
		return err
	}
	for _, c := range cmds {
		if err := c.Wait(ctx); err != nil {
			return err
		}
	}
	st, err := sp.Stats()
	if err != nil {
		return err
	}
	fmt.Printf("writer: published %d samples and %d config versions in %v; %d GCs, %d extent(s) left\n",
		*samples, version, time.Since(start).Round(time.Millisecond), st.GCs, st.Extents)
	if err := w.Close(); err != nil {
		return err
	}
	if err := buf.Check(); err != nil {
		return err
	}
	if err := sp.Remove(context.Background()); err != nil {
		return err
	}
	fmt.Println("writer: area removed; done")
	return nil
}

func read(name string, id int) error {
	buf, err := ipc.Open(name, ipc.AttachOnly(), ipc.WithBackends(*segKind, *semKind))
	if err != nil {
		return err
	}
	defer buf.Close()
	h, err := buf.NewHandle()
	if err != nil {
		return err
	}
	sp, err := h.AddSpeculo(area, 0)
	if err != nil {
		return err
	}
	r, err := sp.Reader()
	if err != nil {
		return err
	}
	// The readers give up by themselves a minute after the writer should
	// have finished (a time.Sleep takes a millisecond or so more).
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute+time.Duration(*samples)*(*every+time.Millisecond))
	defer cancel()
	var (
		seen, skipped, last = 0, 0, -1
		sum                 float64
		epochs              = map[uint64]bool{}
	)
	for {
		c, err := r.Next(ctx)
		if err != nil {
			return err
		}
		epochs[r.Epoch()] = true
		switch c.Block {
		case configBlock:
			fmt.Printf("reader %d: %s\n", id, c.Data)
			continue
		case endBlock:
		default:
			i, v, err := getSample(c.Data)
			if err != nil {
				return err
			}
			if i <= last {
				return fmt.Errorf("sample %d after %d: seen twice", i, last)
			}
			skipped += i - last - 1
			last, sum = i, sum+v
			seen++
			if i%max(*samples/4, 1) == 0 {
				fmt.Printf("reader %d: sample %d = %+.3f (extent %d)\n", id, i, v, r.Epoch())
			}
			continue
		}
		break
	}
	cfg, err := r.Latest(configBlock)
	if err != nil {
		return err
	}
	fmt.Printf("reader %d: %d samples in order, checksums ok (%d expired before it got to them); mean %.3f; followed %d extent(s); latest %q\n",
		id, seen, skipped, sum/float64(max(seen, 1)), len(epochs), cfg.Data)
	return r.Close()
}
