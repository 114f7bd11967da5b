// Command stream is an audio-like producer and consumer over a heapipc
// stream channel (libshbuf's shared buffer).
//
// Process A (the producer) creates a buffer and writes a 440 Hz tone as
// 48 kHz stereo 16-bit PCM in 10 ms periods, straight into the stream's
// writable spans. Process B (the consumer: A re-executed with -peer)
// plays it: it reads period by period through contiguous views, keeps one
// second of what it played as the stream's backlog, shows a level meter
// computed over the last 250 ms of the backlog (look-back), and every
// second "glitches" and rewinds 100 ms into the backlog to play it again.
// B checks every sample it plays (replays included) and waits with a
// select on the stream's data notification beside a meter ticker. A
// removes the buffer at the end and exits 0.
//
// A stops B and removes the buffer however the run ends: on an error, when
// B exits early (A gives up at once and says how B exited), and on SIGINT
// or SIGTERM (A then exits 1). B dies with A on Linux, even if A is killed.
//
//	go run ./examples/stream [-seconds 10] [-realtime] [-mib 4] [-segments posix|sysv] [-semaphores posix|sysv]
package main

import (
	"context"
	"encoding/binary"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	ipc "github.com/heapipc/ipc"
	"github.com/heapipc/ipc/examples/internal/child"
)

const (
	rate        = 48000 // frames per second
	channels    = 2
	frameBytes  = 2 * channels        // one 16-bit sample per channel
	period      = rate / 100          // frames per 10 ms period
	periodBytes = period * frameBytes // 1920
	tone        = 440.0
	streamID    = ipc.ChannelID(1)
	ringBytes   = 2 * rate * frameBytes // two seconds
	backlog     = rate * frameBytes     // one second kept after playing
)

var (
	seconds  = flag.Int("seconds", 10, "seconds of audio to produce")
	realtime = flag.Bool("realtime", false, "produce at the audio rate instead of as fast as possible")
	mib      = flag.Int("mib", 4, "size of the shared buffer in MiB")
	segKind  = flag.String("segments", "", "segment backend: posix or sysv (default: the build's)")
	semKind  = flag.String("semaphores", "", "semaphore backend: posix or sysv (default: the build's)")
	peer     = flag.String("peer", "", "internal: run as the consumer on this buffer")
)

// sample is the left (c=0) or right (c=1, an octave up) sample of frame
// i: a tone whose loudness swells and fades every four seconds.
func sample(i int64, c int) int16 {
	t := float64(i) / rate
	amp := 1000 + 11000*(0.5+0.5*math.Sin(2*math.Pi*t/4))
	return int16(math.Round(amp * math.Sin(2*math.Pi*tone*float64(1+c)*t)))
}

func main() {
	flag.Parse()
	if err := checkFlags(); err != nil {
		fmt.Fprintln(os.Stderr, "stream:", err)
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
		fmt.Fprintln(os.Stderr, "stream:", err)
		os.Exit(1)
	}
}

// checkFlags rejects numbers the example cannot run with.
func checkFlags() error {
	switch {
	case *seconds < 1 || *seconds > 3600:
		return fmt.Errorf("-seconds %d: want 1 to 3600", *seconds)
	case *mib < 1 || *mib > 1024:
		// The stream takes its ring of two seconds (384000 bytes): 1 MiB
		// holds it twice over.
		return fmt.Errorf("-mib %d: want 1 to 1024", *mib)
	}
	return nil
}

// timeout bounds each side's wait: the audio's length and then some.
func timeout() time.Duration { return 5*time.Minute + time.Duration(*seconds)*time.Second }

func produce(ctx context.Context) (err error) {
	name := fmt.Sprintf("stream-example-%d", os.Getpid())
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
	w, err := h.StreamWriter(streamID, ipc.WithStreamCapacity(ringBytes), ipc.WithBacklog(backlog), ipc.WithName("pcm"))
	if err != nil {
		return err
	}
	exe, err := os.Executable()
	if err != nil {
		return err
	}
	// B's exit cancels work: until A has closed the stream, that means B
	// failed (or never attached), and A gives up at once.
	work, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	defer func() {
		if errors.Is(err, context.Canceled) {
			err = context.Cause(work) // the signal, or how B exited
		}
	}()
	b, err := child.Start(cancel, "process B", exe, "-peer", name, "-seconds", strconv.Itoa(*seconds), "-segments", seg, "-semaphores", sem)
	if err != nil {
		return err
	}
	defer b.Stop()
	fmt.Printf("A (pid %d): buffer %q (%s segment, %s semaphores), %d-byte ring; B is pid %d\n",
		os.Getpid(), name, seg, sem, ringBytes, b.Pid())

	total := int64(*seconds) * rate
	start := time.Now()
	var frame int64
	for frame < total {
		if err := work.Err(); err != nil {
			return err
		}
		// Zero-copy: render the next period straight into the ring.
		a, b, err := w.Spans()
		if err != nil {
			return err
		}
		if len(a)+len(b) < periodBytes {
			if err := w.WaitSpace(work); err != nil {
				return err
			}
			continue
		}
		n := min(int64(period), total-frame)
		for i := int64(0); i < n; i++ {
			for c := 0; c < channels; c++ {
				off := int(i)*frameBytes + 2*c
				v := uint16(sample(frame+i, c))
				put(a, b, off, byte(v))
				put(a, b, off+1, byte(v>>8))
			}
		}
		if err := w.Commit(int(n) * frameBytes); err != nil {
			return err
		}
		frame += n
		if *realtime {
			select {
			case <-time.After(time.Until(start.Add(time.Duration(frame) * time.Second / rate))):
			case <-work.Done(): // the loop returns
			}
		}
	}
	st, err := w.Stats()
	if err != nil {
		return err
	}
	if err := w.Close(); err != nil {
		return err
	}
	if err := b.Wait(ctx); err != nil {
		return err
	}
	el := time.Since(start)
	fmt.Printf("A: %d s of audio (%d bytes) produced in %v: %.0fx real time, %.2f MB/s\n",
		*seconds, st.Written, el.Round(time.Millisecond), float64(*seconds)/el.Seconds(), float64(st.Written)/el.Seconds()/1e6)
	if err := buf.Check(); err != nil {
		return fmt.Errorf("check: %w", err)
	}
	fmt.Println("A: buffer checked, destroying it; done")
	return nil
}

// put writes byte v at offset off of the two spans a, b.
func put(a, b []byte, off int, v byte) {
	if off < len(a) {
		a[off] = v
	} else {
		b[off-len(a)] = v
	}
}

func consume(name string) error {
	buf, err := ipc.Open(name, ipc.AttachOnly(), ipc.WithBackends(*segKind, *semKind))
	if err != nil {
		return err
	}
	defer buf.Close()
	h, err := buf.NewHandle()
	if err != nil {
		return err
	}
	defer h.Close()
	r, err := h.StreamReader(streamID)
	if err != nil {
		return err
	}
	defer r.Close()
	ctx, cancel := context.WithTimeout(context.Background(), timeout())
	defer cancel()
	data := r.Notify(ctx, ipc.StreamData)
	meter := time.NewTicker(time.Second)
	defer meter.Stop()

	var played, replayed int64 // frames
	next := int64(0)           // the frame the stream will deliver next
	nextGlitch := int64(rate)
	for {
		select {
		case <-meter.C: // in real time: a meter every second
			fmt.Printf("B: %6.2f s played  level %s\n", float64(played)/rate, level(r))
			continue
		case _, ok := <-data:
			if !ok { // EOF (or the producer died: Read tells which)
				if _, err := r.TryRead(make([]byte, 1)); err != io.EOF {
					return fmt.Errorf("stream ended: %v", err)
				}
				fmt.Printf("B: EOF after %.2f s of audio (%d frames, %d replayed after glitches), every sample checked; level %s\n",
					float64(next)/rate, played, replayed, level(r))
				if want := int64(*seconds) * rate; next != want {
					return fmt.Errorf("played up to frame %d, want %d", next, want)
				}
				return nil
			}
		}
		// Play every whole period that is buffered.
		for {
			v, err := r.View(periodBytes)
			if errors.Is(err, ipc.ErrWouldBlock) {
				// The last period may be short: play what is left
				// once the producer has closed.
				if st, _ := r.Stats(); st.WriterClosed && st.Buffered > 0 {
					if v, err = r.View(st.Buffered); err != nil {
						return err
					}
				} else {
					break
				}
			} else if err != nil {
				return err
			}
			if err := check(v, next); err != nil {
				return err
			}
			if err := r.Consume(len(v)); err != nil {
				return err
			}
			frames := int64(len(v) / frameBytes)
			next += frames
			played += frames
			if next >= nextGlitch {
				// A glitch: rewind 100 ms into the backlog and play it
				// again (the backlog is never overwritten by the
				// producer, so the rewind cannot fail).
				fmt.Printf("B: at %5.2f s of audio  level %s  glitch: replaying the last 100 ms\n", float64(next)/rate, level(r))
				nextGlitch += rate
				back := rate / 10 * frameBytes
				if err := r.Rewind(back); err != nil {
					return err
				}
				next -= int64(back / frameBytes)
				replayed += int64(back / frameBytes)
			}
		}
	}
}

// check verifies that v holds the frames from first on.
func check(v []byte, first int64) error {
	for i := 0; i+frameBytes <= len(v); i += frameBytes {
		f := first + int64(i/frameBytes)
		for c := 0; c < channels; c++ {
			got := int16(binary.LittleEndian.Uint16(v[i+2*c:]))
			if want := sample(f, c); got != want {
				return fmt.Errorf("frame %d channel %d: sample %d, want %d", f, c, got, want)
			}
		}
	}
	return nil
}

// level is a meter of the RMS of the last 250 ms played, computed from the
// stream's backlog (look-back without copying).
func level(r *ipc.StreamReader) string {
	a, b, err := r.Backlog()
	if err != nil {
		return err.Error()
	}
	total := len(a) + len(b)
	at := func(i int) byte {
		if i < len(a) {
			return a[i]
		}
		return b[i-len(a)]
	}
	var sum float64
	n := 0
	for i := max(0, total-rate/4*frameBytes); i+1 < total; i += 2 {
		s := float64(int16(uint16(at(i)) | uint16(at(i+1))<<8))
		sum += s * s
		n++
	}
	if n == 0 {
		return "(silence)"
	}
	db := 20 * math.Log10(math.Sqrt(sum/float64(n))/32768)
	return fmt.Sprintf("%-20s %5.1f dBFS", strings.Repeat("#", max(0, int((db+40)/2))), db)
}
