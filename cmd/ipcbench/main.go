// Command ipcbench measures heapipc side by side with what a Go programmer
// would otherwise use to move bytes between goroutines or processes — a Go
// channel, os.Pipe, a Unix domain socket, TCP over loopback — in one run,
// and prints a table (or JSON, or Markdown) and optionally draws a chart.
//
//	go run ./cmd/ipcbench -quick            # under a minute
//	go run ./cmd/ipcbench -png bench.png    # the full run (make ipcbench)
//	go run ./cmd/ipcbench -quick -format json
//
// See -help for the flags, what is measured and the JSON field names.
// Go benchmarks (go test -bench, benchstat) remain the developers' tool;
// ipcbench is the users'.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"
)

const about = `ipcbench measures heapipc beside its stdlib peers, on this machine, in one run.

Transports (-transports takes these ids):
  heapipc-spin, heapipc-park            record channel, one Send/Receive per message;
                                        blocking calls spin before parking (spin: 20µs,
                                        the library's default, or -spin) or park on a
                                        futex at once (park)
  heapipc-batch-spin, heapipc-batch-park  the same with the batch forms, up to 64
                                        records a call: AllocateBatch, SendBatch,
                                        ReceiveBatch, FreeBatch
  heapipc-pack-spin, heapipc-pack-park  the same messages in packs (ipc.Pack): up to
                                        64 messages in one record, AllocatePack,
                                        Send, Receive, PackOf, Free
  heapipc-stream-spin, heapipc-stream-park  stream channel: bytes written into and
                                        read from the ring's spans (1 MiB ring)
  heapipc-mailbox                       mailbox request/reply (latency only)
  gochan                                Go chan []byte (in-process only): a freshly
                                        allocated slice per message
  pipe, unix, tcp                       os.Pipe, a Unix stream socket pair, TCP on
                                        127.0.0.1: one write per message; the receiver
                                        frames messages through a 64 KiB bufio.Reader

Placements: in-process (two goroutines) and cross-process (ipcbench re-executes
itself as the peer; pipes and sockets are passed as descriptors).

Scenarios:
  throughput  one way, for -time per trial: the sender writes every byte of
              every message (into a heapipc record it allocates, a new slice,
              or its write buffer) and sends it; the receiver reads every byte
              (and checks them) and frees the record. MB/s = 10^6 bytes
              received per second, from the first send to the last byte read.
  latency     ping-pong: a message goes there and back (the echo reads it and
              writes it anew); each round trip is timed into a histogram, the
              first tenth of the trial is warm-up. p50 / p99 / p99.9 / max.

Each (scenario, size) runs every contender once per round, interleaved, for
-rounds rounds; a figure is the median over the rounds. Ratios say how many
times better heapipc is than a peer: throughput heapipc ÷ peer, latency
peer p50 ÷ heapipc p50 (above 1: heapipc wins). Figures vary with the machine
and its load; the ratios are the point.
`

const jsonHelp = `JSON (-format json):
  schema                    "ipcbench/1"
  machine                   cpu, cpus, os, arch, kernel, go, loadavg (the 1, 5 and
                            15-minute load averages when the run started)
  settings                  quick, rounds, trial_ms, sizes (bytes), spin_us (-spin;
                            0: the library's default), reference (the heapipc
                            transport the tables compare), transports (id → label)
  started, seconds          when the run started (UTC) and how long it took
  results[]                 one per scenario, placement and size:
    scenario                "throughput" or "latency"
    placement               "in-process" or "cross-process"
    size                    payload bytes
    transports{id}          each transport measured:
      label, heapipc        its name in the tables; whether it is heapipc's
      median, unit          the figure ratios use: MB/s (throughput) or us
                            (latency: the p50 round trip, microseconds)
      mb_per_s, msgs_per_s  throughput: medians over the rounds
      p50_us, p99_us, p999_us, max_us
                            latency: each the median over the rounds of that
                            round's statistic, in microseconds
      samples               latency: round trips timed, all rounds
      rounds, each          rounds that succeeded; each round's figure (mb_per_s or
                            p50_us), in run order
    ratios{heapipc id}{peer id}
                            how many times better the heapipc transport is than
                            the peer: throughput mb_per_s ÷ peer's, latency
                            peer's p50_us ÷ heapipc's (above 1: heapipc wins)
  targets[]                 issue 7's goals: name, scenario, placement, size, peer,
                            want (ratio), got (the best heapipc ratio), by (its id),
                            met, each{heapipc id} (every heapipc ratio considered)
  failures[]                trials that failed, if any (the exit status is then 1)
`

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("ipcbench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	quick := fs.Bool("quick", false, "a short run: 3 rounds of 40ms trials (under a minute)")
	rounds := fs.Int("rounds", 0, "rounds per figure (default 7, -quick 3)")
	trial := fs.Duration("time", 0, "how long each trial sends (default 200ms, -quick 40ms)")
	sizes := fs.String("sizes", "8,64,4K,64K,1M", "payload sizes (multiples of 8; K and M suffixes)")
	scenarios := fs.String("scenarios", "throughput,latency", "scenarios to run")
	placements := fs.String("placements", "in-process,cross-process", "placements: in-process, cross-process (or in, cross)")
	only := fs.String("transports", "", "transport ids to run (comma-separated; default all)")
	format := fs.String("format", "text", "output: text, markdown or json")
	pngFile := fs.String("png", "", "also draw a chart (throughput and latency by payload size) into this PNG file")
	in := fs.String("in", "", "render the JSON of an earlier run instead of running")
	spin := fs.Duration("spin", 0, "how long heapipc's spinning ends (\"spin\" transports) spin before they park (default: the library's, 20µs)")
	quiet := fs.Bool("q", false, "no progress on stderr")
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "usage: ipcbench [flags]\n\n%s\nFlags:\n", about)
		fs.PrintDefaults()
		fmt.Fprintf(fs.Output(), "\n%s", jsonHelp)
	}
	if err := fs.Parse(args); err != nil {
		if err == flag.ErrHelp {
			return 0
		}
		return 2
	}
	if fs.NArg() > 0 {
		fs.Usage()
		return 2
	}
	if *format != "text" && *format != "markdown" && *format != "json" {
		fmt.Fprintf(stderr, "ipcbench: unknown -format %q (text, markdown, json)\n", *format)
		return 2
	}

	var rep *Report
	var runErr error
	if *in != "" {
		b, err := os.ReadFile(*in)
		if err == nil {
			rep = new(Report)
			err = json.Unmarshal(b, rep)
		}
		if err != nil {
			fmt.Fprintf(stderr, "ipcbench: %s: %v\n", *in, err)
			return 1
		}
	} else {
		cfg := FullConfig()
		if *quick {
			cfg = QuickConfig()
		}
		if *rounds > 0 {
			cfg.Rounds = *rounds
		}
		if *trial > 0 {
			cfg.Trial = *trial
		}
		var err error
		if cfg.Sizes, err = parseSizes(*sizes); err != nil {
			fmt.Fprintln(stderr, "ipcbench:", err)
			return 2
		}
		cfg.Scenarios = splitList(*scenarios)
		cfg.Placements = nil
		for _, p := range splitList(*placements) {
			switch p {
			case "in":
				p = placeIn
			case "cross":
				p = placeCross
			}
			cfg.Placements = append(cfg.Placements, p)
		}
		cfg.Transports = splitList(*only)
		if *spin < 0 {
			fmt.Fprintln(stderr, "ipcbench: -spin must be positive (the park transports park at once)")
			return 2
		}
		cfg.Spin = *spin
		if !*quiet {
			cfg.Progress = stderr
			if f, ok := stderr.(*os.File); ok {
				if st, err := f.Stat(); err == nil && st.Mode()&os.ModeCharDevice != 0 {
					cfg.Terminal = true
				}
			}
		}
		ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
		defer stop()
		start := time.Now()
		rep, runErr = Run(ctx, cfg)
		if rep == nil {
			fmt.Fprintf(stderr, "\nipcbench: %v (after %s)\n", runErr, time.Since(start).Round(time.Millisecond))
			return 1
		}
	}

	var err error
	switch *format {
	case "json":
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		err = enc.Encode(rep)
	case "markdown":
		err = rep.WriteMarkdown(stdout)
	default:
		err = rep.WriteText(stdout)
	}
	if err == nil && *pngFile != "" {
		err = writeChart(rep, *pngFile)
	}
	if err != nil {
		fmt.Fprintln(stderr, "ipcbench:", err)
		return 1
	}
	if runErr != nil {
		fmt.Fprintln(stderr, "ipcbench:", runErr)
		return 1
	}
	if len(rep.Failures) > 0 && *in == "" {
		fmt.Fprintf(stderr, "ipcbench: %d trials failed\n", len(rep.Failures))
		return 1
	}
	return 0
}

func splitList(s string) []string {
	var out []string
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f != "" {
			out = append(out, f)
		}
	}
	return out
}

func parseSizes(s string) ([]int, error) {
	var out []int
	for _, f := range splitList(s) {
		n, err := parseSize(f)
		if err != nil {
			return nil, err
		}
		out = append(out, n)
	}
	return out, nil
}
