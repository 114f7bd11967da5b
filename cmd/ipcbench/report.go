package main

import (
	"bufio"
	"fmt"
	"io"
	"math"
	"os"
	"runtime"
	"slices"
	"sort"
	"strings"
	"text/tabwriter"
	"time"
)

// Report is what a run produces; -format json writes it as is. The field
// names are documented in the -help text (jsonHelp), which a test keeps
// in step with this type.
type Report struct {
	Schema   string    `json:"schema"`
	Machine  Machine   `json:"machine"`
	Settings Settings  `json:"settings"`
	Started  time.Time `json:"started"`
	Seconds  float64   `json:"seconds"`
	Results  []Result  `json:"results"`
	Targets  []Target  `json:"targets"`
	Failures []string  `json:"failures,omitempty"`
}

const schema = "ipcbench/1"

type Machine struct {
	CPU    string `json:"cpu"`
	CPUs   int    `json:"cpus"`
	OS     string `json:"os"`
	Arch   string `json:"arch"`
	Kernel string `json:"kernel,omitempty"`
	Go     string `json:"go"`
	Load   string `json:"loadavg,omitempty"`
}

type Settings struct {
	Quick      bool              `json:"quick"`
	Rounds     int               `json:"rounds"`
	TrialMS    float64           `json:"trial_ms"`
	Sizes      []int             `json:"sizes"`
	SpinUS     float64           `json:"spin_us"`
	Reference  string            `json:"reference"`
	Transports map[string]string `json:"transports"`
}

// Result is one scenario, placement and payload size.
type Result struct {
	Scenario   string                        `json:"scenario"`
	Placement  string                        `json:"placement"`
	Size       int                           `json:"size"`
	Transports map[string]*Figure            `json:"transports"`
	Ratios     map[string]map[string]float64 `json:"ratios"`
}

// Figure is one transport's median over the rounds.
type Figure struct {
	Label      string    `json:"label"`
	Heapipc    bool      `json:"heapipc"`
	Median     float64   `json:"median"`
	Unit       string    `json:"unit"`
	MBps       float64   `json:"mb_per_s,omitempty"`
	MsgsPerSec float64   `json:"msgs_per_s,omitempty"`
	P50        float64   `json:"p50_us,omitempty"`
	P99        float64   `json:"p99_us,omitempty"`
	P999       float64   `json:"p999_us,omitempty"`
	Max        float64   `json:"max_us,omitempty"`
	Samples    int64     `json:"samples,omitempty"`
	Rounds     int       `json:"rounds"`
	Each       []float64 `json:"each"`
}

func (f *Figure) round() {
	for _, p := range []*float64{&f.Median, &f.MBps, &f.MsgsPerSec, &f.P50, &f.P99, &f.P999, &f.Max} {
		*p = round3(*p)
	}
}

// round3 keeps 4 significant digits.
func round3(v float64) float64 {
	if v == 0 || math.IsInf(v, 0) || math.IsNaN(v) {
		return v
	}
	e := math.Pow(10, 3-math.Floor(math.Log10(math.Abs(v))))
	return math.Round(v*e) / e
}

// Target is one of issue 7's "done when" ratios.
type Target struct {
	Name      string             `json:"name"`
	Scenario  string             `json:"scenario"`
	Placement string             `json:"placement"`
	Size      int                `json:"size"`
	Peer      string             `json:"peer"`
	Want      float64            `json:"want"`
	Got       float64            `json:"got"`
	By        string             `json:"by"`
	Met       bool               `json:"met"`
	Each      map[string]float64 `json:"each"`
}

func newReport(cfg Config) *Report {
	rep := &Report{Schema: schema, Machine: machine(), Started: time.Now().UTC().Truncate(time.Second),
		Settings: Settings{Quick: cfg.Quick, Rounds: cfg.Rounds, TrialMS: float64(cfg.Trial) / 1e6,
			Sizes: cfg.Sizes, SpinUS: float64(cfg.Spin) / 1e3, Reference: referenceID, Transports: map[string]string{}}}
	for _, t := range transports {
		rep.Settings.Transports[t.id] = t.label
	}
	return rep
}

func machine() Machine {
	m := Machine{CPUs: runtime.NumCPU(), OS: runtime.GOOS, Arch: runtime.GOARCH, Go: runtime.Version()}
	if f, err := os.Open("/proc/cpuinfo"); err == nil {
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			if k, v, ok := strings.Cut(sc.Text(), ":"); ok && strings.TrimSpace(k) == "model name" {
				m.CPU = strings.TrimSpace(v)
				break
			}
		}
		f.Close()
	}
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		m.Kernel = strings.TrimSpace(string(b))
	}
	if b, err := os.ReadFile("/proc/loadavg"); err == nil {
		if f := strings.Fields(string(b)); len(f) >= 3 {
			m.Load = strings.Join(f[:3], " ")
		}
	}
	if m.CPU == "" {
		m.CPU = "unknown CPU"
	}
	return m
}

// targets are issue 7's: heapipc's best transport against a peer.
var targets = []struct {
	name, scen, place string
	size              int
	peer              string
	want              float64
	spinOnly          bool
}{
	{"in-process 64 B throughput ≥ 2× Go chan", scenThroughput, placeIn, 64, "gochan", 2, false},
	{"cross-process 64 B throughput ≥ 20× Unix socket", scenThroughput, placeCross, 64, "unix", 20, false},
	{"cross-process 1 MiB throughput ≥ 5× Unix socket", scenThroughput, placeCross, 1 << 20, "unix", 5, false},
	{"cross-process 64 B spinning ping-pong p50 ≤ ¼ Unix socket's", scenLatency, placeCross, 64, "unix", 4, true},
}

func evalTargets(rep *Report) []Target {
	var out []Target
	for _, t := range targets {
		res := rep.find(t.scen, t.place, t.size)
		if res == nil {
			continue
		}
		tg := Target{Name: t.name, Scenario: t.scen, Placement: t.place, Size: t.size, Peer: t.peer, Want: t.want, Each: map[string]float64{}}
		for hid, m := range res.Ratios {
			tr, _ := transportByID(hid)
			v, ok := m[t.peer]
			// Spinning: the ends whose spin WithSpin sets (not the
			// mailbox: its semaphores spin briefly, whatever the mode).
			if !ok || t.spinOnly && (!tr.spin || tr.kind == kindMailbox) {
				continue
			}
			tg.Each[hid] = v
			if v > tg.Got || v == tg.Got && hid == referenceID {
				tg.Got, tg.By = v, hid
			}
		}
		if len(tg.Each) == 0 {
			continue
		}
		tg.Met = tg.Got >= t.want
		out = append(out, tg)
	}
	return out
}

func (rep *Report) find(scen, place string, size int) *Result {
	for i := range rep.Results {
		r := &rep.Results[i]
		if r.Scenario == scen && r.Placement == place && r.Size == size {
			return r
		}
	}
	return nil
}

// ---- tables ----

type table struct {
	title string
	head  []string
	rows  [][]string
}

// tables lays the report out: per scenario and placement, the figure of
// every transport by size, then how many times better the reference
// heapipc transport is than each peer; for latency also the tails.
func (rep *Report) tables() []table {
	var out []table
	sizes := rep.Settings.Sizes
	head := []string{"transport"}
	for _, s := range sizes {
		head = append(head, sizeLabel(s))
	}
	for _, scen := range []string{scenThroughput, scenLatency} {
		for _, place := range []string{placeIn, placeCross} {
			ids := rep.transportIDs(scen, place)
			if len(ids) == 0 {
				continue
			}
			t := table{head: head}
			if scen == scenThroughput {
				t.title = fmt.Sprintf("Throughput, %s: MB/s (higher is better)", place)
			} else {
				t.title = fmt.Sprintf("Latency, %s: round trip p50 in µs (lower is better)", place)
			}
			for _, id := range ids {
				row := []string{rep.Settings.Transports[id]}
				for _, s := range sizes {
					row = append(row, fmtNum(rep.figure(scen, place, s, id, func(f *Figure) float64 { return f.Median })))
				}
				t.rows = append(t.rows, row)
			}
			// Ratio rows: the reference against each peer; for latency
			// also the parked record channel, whose round trips do not
			// depend on a free core the way spinning ones do.
			refs := []string{rep.Settings.Reference}
			if scen == scenLatency && rep.Settings.Reference != parkedID && slices.Contains(ids, parkedID) {
				refs = append(refs, parkedID)
			}
			for _, ref := range refs {
				first := true
				for _, id := range ids {
					if isHeapipc(id) {
						continue
					}
					if first {
						blank := make([]string, len(head))
						blank[0] = rep.Settings.Transports[ref] + ", times better:"
						t.rows = append(t.rows, blank)
						first = false
					}
					row := []string{"  vs " + rep.Settings.Transports[id]}
					for _, s := range sizes {
						v := math.NaN()
						if res := rep.find(scen, place, s); res != nil {
							if r, ok := res.Ratios[ref][id]; ok {
								v = r
							}
						}
						row = append(row, fmtRatio(v))
					}
					t.rows = append(t.rows, row)
				}
			}
			out = append(out, t)
			if scen == scenLatency {
				tails := table{head: head, title: fmt.Sprintf("Latency tails, %s: round trip p99 / p99.9 / max in µs", place)}
				for _, id := range ids {
					row := []string{rep.Settings.Transports[id]}
					for _, s := range sizes {
						f := rep.fig(scen, place, s, id)
						if f == nil {
							row = append(row, "-")
							continue
						}
						row = append(row, fmtNum(f.P99)+"/"+fmtNum(f.P999)+"/"+fmtNum(f.Max))
					}
					tails.rows = append(tails.rows, row)
				}
				out = append(out, tails)
			}
		}
	}
	return out
}

func isHeapipc(id string) bool {
	t, ok := transportByID(id)
	return ok && t.heapipc || !ok && strings.HasPrefix(id, "heapipc")
}

// transportIDs lists the transports measured in a scenario and placement,
// in the tool's order.
func (rep *Report) transportIDs(scen, place string) []string {
	seen := map[string]bool{}
	for _, r := range rep.Results {
		if r.Scenario == scen && r.Placement == place {
			for id := range r.Transports {
				seen[id] = true
			}
		}
	}
	var ids []string
	for _, t := range transports {
		if seen[t.id] {
			ids = append(ids, t.id)
			delete(seen, t.id)
		}
	}
	var rest []string
	for id := range seen {
		rest = append(rest, id)
	}
	sort.Strings(rest)
	return append(ids, rest...)
}

func (rep *Report) fig(scen, place string, size int, id string) *Figure {
	if r := rep.find(scen, place, size); r != nil {
		return r.Transports[id]
	}
	return nil
}

func (rep *Report) figure(scen, place string, size int, id string, get func(*Figure) float64) float64 {
	if f := rep.fig(scen, place, size, id); f != nil {
		return get(f)
	}
	return math.NaN()
}

func fmtNum(v float64) string {
	switch {
	case math.IsNaN(v) || v <= 0:
		return "-"
	case v >= 100:
		return fmt.Sprintf("%.0f", v)
	case v >= 10:
		return fmt.Sprintf("%.1f", v)
	case v >= 1:
		return fmt.Sprintf("%.2f", v)
	}
	return fmt.Sprintf("%.3f", v)
}

func fmtRatio(v float64) string {
	switch {
	case math.IsNaN(v) || v <= 0:
		return "-"
	case v >= 10:
		return fmt.Sprintf("%.0f×", v)
	case v >= 1:
		return fmt.Sprintf("%.1f×", v)
	}
	return fmt.Sprintf("%.2f×", v)
}

func (rep *Report) header() string {
	m := rep.Machine
	kind := "full run"
	if rep.Settings.Quick {
		kind = "-quick run"
	}
	spin := "heapipc's default spin"
	if rep.Settings.SpinUS > 0 {
		spin = fmt.Sprintf("spin %gµs", rep.Settings.SpinUS)
	}
	load := ""
	if m.Load != "" {
		load = " (load average " + m.Load + " at the start)"
	}
	return fmt.Sprintf("%s, %d CPUs, %s/%s, Linux %s, %s%s; %s: median of %d rounds of %s per figure, %s, %s in %.0f s",
		m.CPU, m.CPUs, m.OS, m.Arch, m.Kernel, m.Go, load, kind, rep.Settings.Rounds,
		time.Duration(rep.Settings.TrialMS*1e6), spin, rep.Started.Format("2006-01-02"), rep.Seconds)
}

// WriteText writes the tables for a terminal.
func (rep *Report) WriteText(w io.Writer) error {
	bw := bufio.NewWriter(w)
	fmt.Fprintf(bw, "ipcbench: heapipc beside the stdlib peers\n%s\n", rep.header())
	fmt.Fprintf(bw, "ratio rows: how many times better %s is than the peer (above 1: heapipc wins)\n",
		rep.Settings.Transports[rep.Settings.Reference])
	for _, t := range rep.tables() {
		fmt.Fprintf(bw, "\n%s\n", t.title)
		tw := tabwriter.NewWriter(bw, 0, 0, 2, ' ', tabwriter.AlignRight)
		for i, row := range append([][]string{t.head}, t.rows...) {
			if i == 0 {
				row = append([]string{""}, row[1:]...)
			}
			// The first column is left-aligned: pad it by hand.
			fmt.Fprintf(tw, "%-*s\t%s\t\n", labelWidth(t), row[0], strings.Join(row[1:], "\t"))
		}
		tw.Flush()
	}
	rep.writeTargets(bw, false)
	rep.writeFailures(bw)
	return bw.Flush()
}

func labelWidth(t table) int {
	w := 0
	for _, r := range t.rows {
		w = max(w, len([]rune(r[0])))
	}
	return w
}

// WriteMarkdown writes the tables as Markdown (the README's).
func (rep *Report) WriteMarkdown(w io.Writer) error {
	bw := bufio.NewWriter(w)
	fmt.Fprintf(bw, "%s.\n", rep.header())
	for _, t := range rep.tables() {
		// The tails are long: folded.
		tails := strings.HasPrefix(t.title, "Latency tails")
		if tails {
			fmt.Fprintf(bw, "\n<details><summary>%s</summary>\n\n", t.title)
		} else {
			fmt.Fprintf(bw, "\n**%s**\n\n", t.title)
		}
		fmt.Fprintf(bw, "| %s |\n|:---|%s\n", strings.Join(t.head, " | "), strings.Repeat("---:|", len(t.head)-1))
		for _, row := range t.rows {
			label := row[0]
			switch {
			case strings.HasPrefix(label, "  vs "):
				label = "_" + strings.TrimSpace(label) + "_"
			case strings.HasSuffix(label, "times better:"):
				label = "**" + label + "**"
			}
			fmt.Fprintf(bw, "| %s |\n", strings.Join(append([]string{label}, row[1:]...), " | "))
		}
		if tails {
			fmt.Fprintf(bw, "\n</details>\n")
		}
	}
	rep.writeTargets(bw, true)
	rep.writeFailures(bw)
	return bw.Flush()
}

func (rep *Report) writeTargets(w io.Writer, md bool) {
	if len(rep.Targets) == 0 {
		return
	}
	if md {
		fmt.Fprintf(w, "\n**Targets** (issue 7; best heapipc transport, then every one measured)\n\n")
	} else {
		fmt.Fprintf(w, "\nTargets (issue 7; best heapipc transport, then every one measured)\n")
	}
	for _, t := range rep.Targets {
		verdict := "met"
		if !t.Met {
			verdict = fmt.Sprintf("MISSED by %.3g%% (%.2f× more needed)", 100*(1-t.Got/t.Want), t.Want/t.Got)
		}
		var each []string
		for _, id := range rep.transportIDs(t.Scenario, t.Placement) {
			if v, ok := t.Each[id]; ok {
				each = append(each, fmt.Sprintf("%s %.3g×", id, v))
			}
		}
		line := fmt.Sprintf("%s: %.3g× by %s, %s [%s]", t.Name, t.Got, t.By, verdict, strings.Join(each, ", "))
		if md {
			fmt.Fprintf(w, "- %s\n", line)
		} else {
			fmt.Fprintf(w, "  %s\n", line)
		}
	}
}

func (rep *Report) writeFailures(w io.Writer) {
	if len(rep.Failures) == 0 {
		return
	}
	fmt.Fprintf(w, "\n%d trials failed (their transports' medians are of the other rounds):\n", len(rep.Failures))
	for _, f := range rep.Failures {
		fmt.Fprintf(w, "  %s\n", f)
	}
}
