package main

import (
	"bytes"
	"context"
	"encoding/json"
	"image/png"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/heapipc/ipc/internal/testutil"
	"github.com/stretchr/testify/require"
)

func TestMain(m *testing.M) { testutil.Main(m) }

// TestRunTiny runs the tool's core in a tiny configuration — one size, a
// few milliseconds per trial, in-process and cross-process (this test
// binary is the peer) — and checks that the JSON is well formed and every
// transport produced a positive figure. Timing is never asserted.
func TestRunTiny(t *testing.T) {
	cfg := Config{
		Sizes: []int{64}, Rounds: 1, Trial: 5 * time.Millisecond,
		Scenarios:  []string{scenThroughput, scenLatency},
		Placements: []string{placeIn, placeCross},
		Buffer:     testutil.Name(t),
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	rep, err := Run(ctx, cfg)
	require.NoError(t, err)
	require.Empty(t, rep.Failures)

	js, err := json.Marshal(rep)
	require.NoError(t, err)
	var back Report
	dec := json.NewDecoder(bytes.NewReader(js))
	dec.DisallowUnknownFields()
	require.NoError(t, dec.Decode(&back))
	require.Equal(t, schema, back.Schema)

	r := &runner{cfg: cfg}
	for _, scen := range cfg.Scenarios {
		for _, place := range cfg.Placements {
			res := back.find(scen, place, 64)
			require.NotNil(t, res, "%s %s", scen, place)
			var peers, ours int
			for _, c := range r.contenders(scen) {
				if c.place != place {
					continue
				}
				f := res.Transports[c.t.id]
				require.NotNil(t, f, "%s %s %s: no figure", scen, place, c.t.id)
				require.Greater(t, f.Median, 0.0, "%s %s %s", scen, place, c.t.id)
				require.Len(t, f.Each, 1)
				if scen == scenThroughput {
					require.Greater(t, f.MBps, 0.0)
					require.Greater(t, f.MsgsPerSec, 0.0)
				} else {
					require.Greater(t, f.P50, 0.0)
					require.GreaterOrEqual(t, f.P99, f.P50)
					require.GreaterOrEqual(t, f.Max, f.P999)
					require.Greater(t, f.Samples, int64(0))
				}
				if c.t.heapipc {
					ours++
				} else {
					peers++
				}
			}
			require.Len(t, res.Ratios, ours, "%s %s: a ratio row per heapipc transport", scen, place)
			for id, m := range res.Ratios {
				require.Len(t, m, peers, "%s %s %s: a ratio per peer", scen, place, id)
				for _, v := range m {
					require.Greater(t, v, 0.0)
				}
			}
		}
	}
	require.NotEmpty(t, back.Targets)

	// The renderers work on what came back.
	var text, md bytes.Buffer
	require.NoError(t, back.WriteText(&text))
	require.NoError(t, back.WriteMarkdown(&md))
	require.Contains(t, text.String(), "Unix socket")
	require.Contains(t, md.String(), "| transport | 64 B |")
}

// TestRenderFromJSON renders a saved report (-in) as Markdown, JSON and a
// PNG through the command line.
func TestRenderFromJSON(t *testing.T) {
	rep := &Report{Schema: schema, Machine: machine(), Settings: Settings{Rounds: 3, TrialMS: 40,
		Sizes: []int{8, 64}, Reference: referenceID, Transports: map[string]string{}}}
	for _, tr := range transports {
		rep.Settings.Transports[tr.id] = tr.label
	}
	for i, size := range rep.Settings.Sizes {
		res := Result{Scenario: scenThroughput, Placement: placeCross, Size: size, Transports: map[string]*Figure{
			"heapipc-spin": {Label: "heapipc record, spin", Heapipc: true, Median: 100 * float64(i+1), Unit: "MB/s"},
			"unix":         {Label: "Unix socket", Median: 5, Unit: "MB/s"},
		}}
		res.Ratios = ratios(scenThroughput, res.Transports)
		rep.Results = append(rep.Results, res)
	}
	dir := t.TempDir()
	in := filepath.Join(dir, "r.json")
	js, err := json.Marshal(rep)
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(in, js, 0o600))

	var out, errs bytes.Buffer
	pngFile := filepath.Join(dir, "c.png")
	require.Equal(t, 0, run([]string{"-in", in, "-format", "markdown", "-png", pngFile}, &out, &errs), errs.String())
	require.Contains(t, out.String(), "| heapipc record, spin | 100 | 200 |")
	require.Contains(t, out.String(), "| _vs Unix socket_ | 20× | 40× |")
	f, err := os.Open(pngFile)
	require.NoError(t, err)
	defer f.Close()
	img, err := png.Decode(f)
	require.NoError(t, err)
	require.Equal(t, chartW, img.Bounds().Dx())

	out.Reset()
	require.Equal(t, 0, run([]string{"-in", in, "-format", "json"}, &out, &errs))
	var back Report
	require.NoError(t, json.Unmarshal(out.Bytes(), &back))
	require.Equal(t, rep.Results[1].Ratios, back.Results[1].Ratios)

	require.Equal(t, 2, run([]string{"-format", "yaml"}, &out, &errs))
}

// TestJSONFieldsDocumented: every JSON field name of the report appears in
// the -help text.
func TestJSONFieldsDocumented(t *testing.T) {
	var walk func(reflect.Type)
	seen := map[reflect.Type]bool{}
	walk = func(ty reflect.Type) {
		for ty.Kind() == reflect.Pointer || ty.Kind() == reflect.Slice || ty.Kind() == reflect.Map {
			ty = ty.Elem()
		}
		if ty.Kind() != reflect.Struct || seen[ty] || ty == reflect.TypeOf(time.Time{}) {
			return
		}
		seen[ty] = true
		for i := 0; i < ty.NumField(); i++ {
			f := ty.Field(i)
			name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
			require.NotEmpty(t, name, "%s.%s has no json name", ty.Name(), f.Name)
			require.Contains(t, jsonHelp, name, "%s.%s (%q) is not in the -help text", ty.Name(), f.Name, name)
			walk(f.Type)
		}
	}
	walk(reflect.TypeOf(Report{}))
}

func TestHistogram(t *testing.T) {
	var h histogram
	for i := 1; i <= 1000; i++ {
		h.add(time.Duration(i) * time.Microsecond)
	}
	near := func(got, want time.Duration) {
		t.Helper()
		require.InEpsilon(t, float64(want), float64(got), 0.02)
	}
	near(h.quantile(0.5), 500*time.Microsecond)
	near(h.quantile(0.99), 990*time.Microsecond)
	near(h.quantile(0.999), 999*time.Microsecond)
	require.Equal(t, 1000*time.Microsecond, h.max)
	for v := uint64(0); v < 1<<40; v = v*3 + 1 {
		require.InEpsilon(t, float64(v+1), float64(valueOf(bucketOf(v))+1), 0.02, "%d", v)
	}
}

// TestSummerSplits: a message stream sums the same however it is split.
func TestSummerSplits(t *testing.T) {
	pl := newPayload(4096)
	msgs := make([]byte, 0, 3*4096)
	for seq := uint64(0); seq < 3; seq++ {
		m := make([]byte, 4096)
		pl.put(m, seq)
		require.NoError(t, pl.verify(m, seq))
		part := make([]byte, 4096)
		for off := 0; off < 4096; off += 13 {
			pl.putPart(part[off:min(off+13, 4096)], off, seq)
		}
		require.Equal(t, m, part)
		msgs = append(msgs, m...)
	}
	for _, step := range []int{1, 3, 8, 13, 4096, 5000} {
		var s summer
		for off := 0; off < len(msgs); off += step {
			s.add(msgs[off:min(off+step, len(msgs))])
		}
		require.Equal(t, pl.expected(3), s.sum, "pieces of %d", step)
		require.Equal(t, int64(len(msgs)), s.total)
	}
}

func TestParseSizes(t *testing.T) {
	got, err := parseSizes("8, 64,4K,64KiB,1M, 2mib,16b")
	require.NoError(t, err)
	require.Equal(t, []int{8, 64, 4 << 10, 64 << 10, 1 << 20, 2 << 20, 16}, got)
	_, err = parseSizes("4x")
	require.Error(t, err)
	require.Equal(t, "64 KiB", sizeLabel(64<<10))
	require.Equal(t, "1 MiB", sizeLabel(1<<20))
}
