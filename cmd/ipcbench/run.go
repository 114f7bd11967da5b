package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"runtime"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	ipc "github.com/heapipc/ipc"
)

const (
	scenThroughput = "throughput"
	scenLatency    = "latency"

	placeIn    = "in-process"
	placeCross = "cross-process"
)

// Config is one run of the benchmark.
type Config struct {
	Sizes      []int         // payload sizes, multiples of 8
	Rounds     int           // trials per transport and figure
	Trial      time.Duration // how long a trial sends (or pings)
	Scenarios  []string      // scenThroughput, scenLatency
	Placements []string      // placeIn, placeCross
	Transports []string      // ids; empty: all
	Buffer     string        // the heapipc buffer's name (made and destroyed by Run, if a heapipc transport runs)
	Spin       time.Duration // how long heapipc's spinning ends spin (0: the library's default)
	Quick      bool          // recorded in the report
	Progress   io.Writer     // progress lines; nil: none
	Terminal   bool          // Progress is a terminal: redraw one line
}

// QuickConfig and FullConfig are -quick and the default.
func QuickConfig() Config {
	return Config{Sizes: defaultSizes, Rounds: 3, Trial: 40 * time.Millisecond, Quick: true,
		Scenarios: []string{scenThroughput, scenLatency}, Placements: []string{placeIn, placeCross}}
}

func FullConfig() Config {
	return Config{Sizes: defaultSizes, Rounds: 7, Trial: 200 * time.Millisecond,
		Scenarios: []string{scenThroughput, scenLatency}, Placements: []string{placeIn, placeCross}}
}

var defaultSizes = []int{8, 64, 4 << 10, 64 << 10, 1 << 20}

const (
	minMessages = 16 // a throughput trial sends at least this many
	minSamples  = 16 // a latency trial records at least this many
)

// contender is a transport in a placement.
type contender struct {
	t     transport
	place string
}

type runner struct {
	cfg      Config
	e        env
	nextID   atomic.Uint64
	done     int
	total    int
	start    time.Time
	failures []string
}

// Run measures every transport of cfg and returns the report.
func Run(ctx context.Context, cfg Config) (rep *Report, err error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	r := &runner{cfg: cfg, start: time.Now()}
	if size := r.bufferSize(); size > 0 { // else only stdlib transports run
		if r.e.buf, err = openBuffer(cfg.Buffer, size); err != nil {
			return nil, err
		}
		defer func() {
			cerr := r.e.buf.Check()
			if cerr != nil {
				cerr = fmt.Errorf("heapipc buffer check after the run: %w", cerr)
			}
			err = errors.Join(err, cerr, r.e.buf.Destroy())
		}()
	}
	rep = newReport(cfg)
	for _, scen := range cfg.Scenarios {
		for range cfg.Sizes {
			r.total += cfg.Rounds * len(r.contenders(scen))
		}
	}
	for _, scen := range cfg.Scenarios {
		for _, size := range cfg.Sizes {
			cs := r.contenders(scen)
			figs := make([][]trialResult, len(cs))
			for round := 0; round < cfg.Rounds; round++ {
				// Interleaved: every contender once per round, starting
				// at a different one each round.
				for k := range cs {
					i := (k + round) % len(cs)
					if err := ctx.Err(); err != nil {
						return nil, err
					}
					r.progress(scen, size, round, cs[i])
					res, err := r.trial(ctx, cs[i], scen, size)
					if err != nil {
						if ctx.Err() != nil {
							return nil, ctx.Err()
						}
						r.failures = append(r.failures, fmt.Sprintf("%s %s %s %s round %d: %v",
							scen, cs[i].place, sizeLabel(size), cs[i].t.id, round+1, err))
						continue
					}
					figs[i] = append(figs[i], res)
				}
			}
			for _, place := range cfg.Placements {
				res := Result{Scenario: scen, Placement: place, Size: size, Transports: map[string]*Figure{}}
				for i, c := range cs {
					if c.place == place && len(figs[i]) > 0 {
						res.Transports[c.t.id] = summarize(c.t, scen, figs[i])
					}
				}
				res.Ratios = ratios(scen, res.Transports)
				rep.Results = append(rep.Results, res)
			}
		}
	}
	r.endProgress()
	rep.Seconds = time.Since(r.start).Seconds()
	rep.Failures = r.failures
	rep.Targets = evalTargets(rep)
	return rep, nil
}

func (cfg *Config) validate() error {
	if len(cfg.Sizes) == 0 || cfg.Rounds < 1 || cfg.Trial <= 0 {
		return errors.New("need sizes, rounds ≥ 1 and a trial time > 0")
	}
	for _, s := range cfg.Sizes {
		if s < 8 || s%8 != 0 || s > 64<<20 {
			return fmt.Errorf("payload size %d: want a multiple of 8 from 8 B to 64 MiB", s)
		}
	}
	for _, s := range cfg.Scenarios {
		if s != scenThroughput && s != scenLatency {
			return fmt.Errorf("unknown scenario %q", s)
		}
	}
	for _, p := range cfg.Placements {
		if p != placeIn && p != placeCross {
			return fmt.Errorf("unknown placement %q", p)
		}
	}
	for _, id := range cfg.Transports {
		if _, ok := transportByID(id); !ok {
			return fmt.Errorf("unknown transport %q", id)
		}
	}
	if cfg.Buffer == "" {
		cfg.Buffer = fmt.Sprintf("ipcbench.%d", os.Getpid())
	}
	return nil
}

// bufferSize is the size of the run's heapipc buffer: room for what one
// trial keeps in it at most (trials run one at a time and remove their
// channels), twice over for the heap's fragmentation, and 8 MiB for the
// registry, slabs and rings. 0: no heapipc transport runs.
func (r *runner) bufferSize() int64 {
	var most int64
	for _, scen := range r.cfg.Scenarios {
		for _, c := range r.contenders(scen) {
			if !c.t.heapipc {
				continue
			}
			for _, size := range r.cfg.Sizes {
				most = max(most, inFlight(c.t.kind, size))
			}
		}
	}
	if most == 0 {
		return 0
	}
	return 2*most + 8<<20
}

// inFlight is the most bytes that a trial of a heapipc kind with messages
// of size bytes has in the buffer at once.
func inFlight(kind string, size int) int64 {
	switch kind {
	case kindStream:
		return 2 * ipc.DefaultStreamCapacity // a ring each way (latency)
	case kindMailbox:
		return 2 * ipc.DefaultWindow // a window each way
	}
	// A full ring, and the messages being filled and read: a batch (or a
	// pack) of them at each end with the batch forms, one otherwise. A
	// record carries a header and padding; one larger than an eighth of
	// a slab (8 KiB) has pages of its own.
	n := capacity(size) + 2
	if kind == kindBatch || kind == kindPack {
		n = capacity(size) + 2*batchOf(size)
	}
	per := int64(size) + 64
	if size > 8<<10 {
		per += 4 << 10
	}
	return int64(n) * per
}

// openBuffer creates the run's buffer of size bytes; a leftover of the
// same name (a killed run whose pid came round again) is removed first.
func openBuffer(name string, size int64) (*ipc.Buffer, error) {
	b, err := ipc.Open(name, ipc.WithSize(size), ipc.CreateOnly())
	if errors.Is(err, ipc.ErrExist) {
		if err := ipc.Remove(name, "", ""); err != nil {
			return nil, err
		}
		b, err = ipc.Open(name, ipc.WithSize(size), ipc.CreateOnly())
	}
	return b, err
}

func (r *runner) contenders(scen string) []contender {
	var cs []contender
	for _, place := range r.cfg.Placements {
		for _, t := range transports {
			if len(r.cfg.Transports) > 0 && !slices.Contains(r.cfg.Transports, t.id) {
				continue
			}
			if scen == scenThroughput && !t.throughput || scen == scenLatency && !t.latency {
				continue
			}
			if place == placeCross && t.inProcessOnly {
				continue
			}
			cs = append(cs, contender{t, place})
		}
	}
	return cs
}

// trialResult is one trial's figure.
type trialResult struct {
	mbps, msgsps        float64 // throughput
	p50, p99, p999, max time.Duration
	samples             int64
}

// trial runs one contender once: the parent's end here, the other end in
// a goroutine (in-process) or in a peer process (cross-process).
func (r *runner) trial(ctx context.Context, c contender, scen string, size int) (res trialResult, err error) {
	sp := &spec{Kind: c.t.kind, Scenario: scen, Size: size, Spin: c.t.spin, SpinFor: r.cfg.Spin,
		Cap: capacity(size), Timeout: r.cfg.Trial + 2*time.Minute}
	if c.t.kind == kindBatch || c.t.kind == kindPack {
		sp.Batch = batchOf(size)
	}
	if c.t.kind == kindPack {
		// A slot carries a pack: as many messages in flight as the others.
		sp.Cap /= sp.Batch
	}
	if c.t.heapipc {
		sp.Buffer = r.e.buf.Name()
		sp.ID = r.nextID.Add(2)
	}
	runtime.GC() // garbage of the trial before is not this one's to collect
	tctx, cancel := context.WithTimeout(ctx, sp.Timeout)
	defer cancel()
	o, err := openA(tctx, r.e, sp)
	if err != nil {
		return res, err
	}
	closeA := func() error {
		if s, ok := o.a.(interface{ close() error }); ok {
			return s.close()
		}
		return nil
	}
	aClosed := false
	var peer *peerProc
	defer func() {
		// This end first: the other one may be waiting for it to close.
		if !aClosed {
			closeA()
		}
		o.closeFiles()
		if peer != nil {
			if werr := peer.wait(10 * time.Second); err == nil {
				err = werr
			}
		}
	}()

	// The other end: ready, then a result.
	type outcome struct {
		n   int64
		sum uint64
		err error
	}
	done := make(chan outcome, 1)
	if c.place == placeIn {
		ready := make(chan error, 1)
		files, local := o.files, o.local
		o.files = nil
		go func() {
			b, err := openB(tctx, r.e, sp, files, local)
			ready <- err
			if err != nil {
				return
			}
			var oc outcome
			if scen == scenThroughput {
				oc.n, oc.sum, oc.err = b.(drainer).drain()
			} else {
				oc.n, oc.err = b.(echoer).echo()
			}
			done <- oc
		}()
		select {
		case err = <-ready:
		case <-tctx.Done():
			err = tctx.Err()
		}
		if err != nil {
			return res, err
		}
	} else {
		if peer, err = startPeer(sp, o.files); err != nil {
			return res, err
		}
		o.closeFiles()
		stop := context.AfterFunc(tctx, func() {
			peer.cmd.Process.Kill()
			if o.abort != nil {
				o.abort()
			}
		})
		defer stop()
		line, err := peer.line(tctx)
		if err != nil {
			return res, err
		}
		if line != "ready" {
			return res, fmt.Errorf("peer said %q, want \"ready\"", line)
		}
		go func() {
			var oc outcome
			line, oc.err = peer.line(tctx)
			if oc.err == nil {
				oc.n, oc.sum, oc.err = parseDone(line)
			}
			done <- oc
		}()
	}

	pl := newPayload(size)
	var sent int64
	var start time.Time
	var hist histogram
	if scen == scenThroughput {
		start = time.Now()
		sent, err = pumpThroughput(tctx, o.a.(sender), r.cfg.Trial, size)
	} else {
		sent, err = pumpLatency(tctx, o.a.(pinger), r.cfg.Trial, &hist)
	}
	aClosed = true
	if cerr := closeA(); err == nil {
		err = cerr
	}
	if err != nil {
		return res, err
	}
	var oc outcome
	select {
	case oc = <-done:
	case <-tctx.Done():
		return res, fmt.Errorf("the other end did not finish: %w", tctx.Err())
	}
	elapsed := time.Since(start)
	if oc.err != nil {
		return res, fmt.Errorf("the other end: %w", oc.err)
	}
	if scen == scenThroughput {
		if oc.n != sent*int64(size) {
			return res, fmt.Errorf("sent %d messages of %d B, %d bytes received", sent, size, oc.n)
		}
		if oc.sum != pl.expected(sent) {
			return res, errors.New("received bytes differ from those sent")
		}
		res.mbps = float64(oc.n) / elapsed.Seconds() / 1e6
		res.msgsps = float64(sent) / elapsed.Seconds()
		return res, nil
	}
	if oc.n != sent {
		return res, fmt.Errorf("%d round trips, the other end answered %d", sent, oc.n)
	}
	res.p50, res.p99, res.p999, res.max = hist.quantile(0.5), hist.quantile(0.99), hist.quantile(0.999), hist.max
	res.samples = hist.n
	return res, nil
}

// pumpThroughput sends messages for d (and at least minMessages) and
// returns how many.
func pumpThroughput(ctx context.Context, a sender, d time.Duration, size int) (int64, error) {
	every := uint64(1)
	if size < 4<<10 {
		every = 64
	}
	deadline := time.Now().Add(d)
	for seq := uint64(0); ; seq++ {
		if seq%every == 0 && seq >= minMessages && !time.Now().Before(deadline) {
			return int64(seq), ctx.Err()
		}
		if err := a.send(seq); err != nil {
			return int64(seq), err
		}
	}
}

// pumpLatency makes round trips for d: the first tenth to warm up, the
// rest (at least minSamples) timed one by one into h. It returns how many
// round trips it made.
func pumpLatency(ctx context.Context, a pinger, d time.Duration, h *histogram) (int64, error) {
	start := time.Now()
	warm, deadline := start.Add(d/10), start.Add(d)
	for seq := uint64(0); ; seq++ {
		t0 := time.Now()
		if !t0.Before(deadline) && h.n >= minSamples {
			return int64(seq), ctx.Err()
		}
		if err := a.roundTrip(seq); err != nil {
			return int64(seq) + 1, err
		}
		if seq >= 4 && !t0.Before(warm) {
			h.add(time.Since(t0))
		}
	}
}

// summarize makes a transport's figure of its rounds: the median of each
// statistic over the rounds.
func summarize(t transport, scen string, rs []trialResult) *Figure {
	f := &Figure{Label: t.label, Heapipc: t.heapipc, Rounds: len(rs)}
	med := func(get func(trialResult) float64) float64 {
		v := make([]float64, len(rs))
		for i, r := range rs {
			v[i] = get(r)
		}
		return median(v)
	}
	us := func(d time.Duration) float64 { return float64(d) / 1e3 }
	if scen == scenThroughput {
		f.Unit = "MB/s"
		f.MBps = med(func(r trialResult) float64 { return r.mbps })
		f.MsgsPerSec = med(func(r trialResult) float64 { return r.msgsps })
		f.Median = f.MBps
		for _, r := range rs {
			f.Each = append(f.Each, round3(r.mbps))
		}
	} else {
		f.Unit = "us"
		f.P50 = med(func(r trialResult) float64 { return us(r.p50) })
		f.P99 = med(func(r trialResult) float64 { return us(r.p99) })
		f.P999 = med(func(r trialResult) float64 { return us(r.p999) })
		f.Max = med(func(r trialResult) float64 { return us(r.max) })
		for _, r := range rs {
			f.Samples += r.samples
			f.Each = append(f.Each, round3(us(r.p50)))
		}
		f.Median = f.P50
	}
	f.round()
	return f
}

func median(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	s := slices.Clone(v)
	sort.Float64s(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// ratios: for each heapipc transport, how many times better it is than
// each peer (throughput: heapipc ÷ peer; latency: peer p50 ÷ heapipc p50).
func ratios(scen string, figs map[string]*Figure) map[string]map[string]float64 {
	out := map[string]map[string]float64{}
	for hid, h := range figs {
		if !h.Heapipc || h.Median <= 0 {
			continue
		}
		m := map[string]float64{}
		for pid, p := range figs {
			if p.Heapipc || p.Median <= 0 {
				continue
			}
			if scen == scenThroughput {
				m[pid] = round3(h.Median / p.Median)
			} else {
				m[pid] = round3(p.Median / h.Median)
			}
		}
		if len(m) > 0 {
			out[hid] = m
		}
	}
	return out
}

// ---- progress ----

func (r *runner) progress(scen string, size, round int, c contender) {
	if r.cfg.Progress == nil {
		return
	}
	r.done++
	el := time.Since(r.start).Truncate(time.Second)
	msg := fmt.Sprintf("[%3d/%d %5s] %-10s %6s  round %d/%d  %-13s %s",
		r.done, r.total, el, scen, sizeLabel(size), round+1, r.cfg.Rounds, c.place, c.t.label)
	if r.cfg.Terminal {
		fmt.Fprintf(r.cfg.Progress, "\r\033[K%s", msg)
		return
	}
	// Not a terminal: one line per scenario, size and round.
	if c == r.contenders(scen)[round%len(r.contenders(scen))] {
		fmt.Fprintf(r.cfg.Progress, "[%3d/%d %5s] %s %s round %d/%d\n",
			r.done, r.total, el, scen, sizeLabel(size), round+1, r.cfg.Rounds)
	}
}

func (r *runner) endProgress() {
	if r.cfg.Progress != nil && r.cfg.Terminal {
		fmt.Fprint(r.cfg.Progress, "\r\033[K")
	}
	if r.cfg.Progress != nil {
		fmt.Fprintf(r.cfg.Progress, "ipcbench: %d trials in %s\n", r.done, time.Since(r.start).Round(100*time.Millisecond))
	}
}

func sizeLabel(n int) string {
	switch {
	case n >= 1<<20 && n%(1<<20) == 0:
		return fmt.Sprintf("%d MiB", n>>20)
	case n >= 1<<10 && n%(1<<10) == 0:
		return fmt.Sprintf("%d KiB", n>>10)
	}
	return fmt.Sprintf("%d B", n)
}

// parseSize reads 8, 64, 4K, 4KiB, 1M, 1MiB.
func parseSize(s string) (int, error) {
	s = strings.TrimSpace(s)
	mult := 1
	low := strings.ToLower(s)
	for _, suf := range []struct {
		s string
		m int
	}{{"kib", 1 << 10}, {"mib", 1 << 20}, {"k", 1 << 10}, {"m", 1 << 20}, {"b", 1}} {
		if strings.HasSuffix(low, suf.s) {
			mult, s = suf.m, strings.TrimSpace(s[:len(s)-len(suf.s)])
			break
		}
	}
	n, err := strconv.Atoi(s)
	if err != nil || n <= 0 {
		return 0, fmt.Errorf("bad size %q", s)
	}
	return n * mult, nil
}
