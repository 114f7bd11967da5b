package main

import (
	"fmt"
	"image"
	"image/color"
	"image/draw"
	"image/png"
	"math"
	"os"
	"strings"
)

// The chart: four panels — throughput and p50 latency, in-process and
// cross-process — with payload size on the x axis and the figure on the y
// axis (both logarithmic), one line per transport, drawn with the standard
// library and the font in font.go.

const (
	chartW, chartH = 1500, 1000
	titleH         = 70
	legendW        = 340
	textScale      = 2
)

var (
	white   = color.RGBA{255, 255, 255, 255}
	ink     = color.RGBA{40, 40, 40, 255}
	grid    = color.RGBA{225, 225, 225, 255}
	subgrid = color.RGBA{242, 242, 242, 255}
	frame   = color.RGBA{150, 150, 150, 255}
)

// style of a transport's line: colour, dashed (parked modes), width.
type lineStyle struct {
	c      color.RGBA
	dashed bool
	width  int
}

var styles = map[string]lineStyle{
	"heapipc-spin":        {color.RGBA{214, 39, 40, 255}, false, 4},
	"heapipc-park":        {color.RGBA{214, 39, 40, 255}, true, 3},
	"heapipc-batch-spin":  {color.RGBA{255, 127, 14, 255}, false, 4},
	"heapipc-batch-park":  {color.RGBA{255, 127, 14, 255}, true, 3},
	"heapipc-pack-spin":   {color.RGBA{140, 86, 75, 255}, false, 4},
	"heapipc-pack-park":   {color.RGBA{140, 86, 75, 255}, true, 3},
	"heapipc-stream-spin": {color.RGBA{148, 103, 189, 255}, false, 4},
	"heapipc-stream-park": {color.RGBA{148, 103, 189, 255}, true, 3},
	"heapipc-mailbox":     {color.RGBA{227, 119, 194, 255}, false, 4},
	"gochan":              {color.RGBA{44, 160, 44, 255}, false, 2},
	"pipe":                {color.RGBA{127, 127, 127, 255}, false, 2},
	"unix":                {color.RGBA{31, 119, 180, 255}, false, 2},
	"tcp":                 {color.RGBA{23, 190, 207, 255}, false, 2},
}

func styleOf(id string) lineStyle {
	if s, ok := styles[id]; ok {
		return s
	}
	return lineStyle{c: ink, width: 2}
}

func writeChart(rep *Report, file string) error {
	img := drawChart(rep)
	f, err := os.Create(file)
	if err != nil {
		return err
	}
	if err := (&png.Encoder{CompressionLevel: png.BestCompression}).Encode(f, img); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

func drawChart(rep *Report) *image.RGBA {
	img := image.NewRGBA(image.Rect(0, 0, chartW, chartH))
	draw.Draw(img, img.Bounds(), &image.Uniform{white}, image.Point{}, draw.Src)
	drawText(img, 20, 12, "heapipc beside the stdlib peers (ipcbench)", 3, ink)
	m := rep.Machine
	drawText(img, 20, 42, fmt.Sprintf("%s, %d CPUs, %s, %s; median of %d rounds; figures vary with the machine and its load",
		m.CPU, m.CPUs, m.Go, rep.Started.Format("2006-01-02"), rep.Settings.Rounds), textScale, frame)

	panelW := (chartW - legendW) / 2
	panelH := (chartH - titleH) / 2
	type panel struct {
		scen, place, title string
	}
	panels := []panel{
		{scenThroughput, placeIn, "Throughput, in-process (MB/s)"},
		{scenThroughput, placeCross, "Throughput, cross-process (MB/s)"},
		{scenLatency, placeIn, "Round trip p50, in-process (µs)"},
		{scenLatency, placeCross, "Round trip p50, cross-process (µs)"},
	}
	for i, p := range panels {
		r := image.Rect(0, 0, panelW, panelH).Add(image.Pt((i%2)*panelW, titleH+(i/2)*panelH))
		drawPanel(img, r, rep, p.scen, p.place, p.title)
	}

	// The legend: every transport in the report.
	seen := map[string]bool{}
	for _, res := range rep.Results {
		for id := range res.Transports {
			seen[id] = true
		}
	}
	x, y := chartW-legendW+10, titleH+40
	drawText(img, x, y-28, "transports", textScale, ink)
	for _, t := range transports {
		if !seen[t.id] {
			continue
		}
		st := styleOf(t.id)
		line(img, x, y+8, x+40, y+8, st)
		fillRect(img, x+20-3, y+8-3, 7, 7, st.c)
		drawText(img, x+50, y, legendLabel(t.label), textScale, ink)
		y += 30
	}
	y += 16
	for _, s := range []string{"solid: spins, then parks", "dashed: parks at once", "payloads written and read", "log scales"} {
		drawText(img, x, y, s, textScale, frame)
		y += 24
	}
	return img
}

func legendLabel(s string) string { return strings.ReplaceAll(s, "[]byte", "") }

func drawPanel(img *image.RGBA, r image.Rectangle, rep *Report, scen, place, title string) {
	const left, right, top, bottom = 78, 24, 44, 46
	drawText(img, r.Min.X+left, r.Min.Y+14, title, textScale, ink)
	plot := image.Rect(r.Min.X+left, r.Min.Y+top, r.Max.X-right, r.Max.Y-bottom)
	sizes := rep.Settings.Sizes
	ids := rep.transportIDs(scen, place)
	lo, hi := math.Inf(1), math.Inf(-1)
	for _, id := range ids {
		for _, s := range sizes {
			if v := rep.figure(scen, place, s, id, func(f *Figure) float64 { return f.Median }); v > 0 {
				lo, hi = math.Min(lo, v), math.Max(hi, v)
			}
		}
	}
	if len(ids) == 0 || math.IsInf(lo, 1) {
		drawText(img, plot.Min.X+20, plot.Min.Y+20, "not measured", textScale, frame)
		return
	}
	d0, d1 := math.Floor(math.Log10(lo)), math.Ceil(math.Log10(hi))
	if d1 == d0 {
		d1++
	}
	yOf := func(v float64) int {
		f := (math.Log10(v) - d0) / (d1 - d0)
		return plot.Max.Y - int(math.Round(f*float64(plot.Dy())))
	}
	x0, x1 := math.Log2(float64(sizes[0])), math.Log2(float64(sizes[len(sizes)-1]))
	xOf := func(s int) int {
		if x1 == x0 {
			return plot.Min.X + plot.Dx()/2
		}
		f := (math.Log2(float64(s)) - x0) / (x1 - x0)
		return plot.Min.X + 12 + int(math.Round(f*float64(plot.Dx()-24)))
	}
	// Grid: decades, and 2× and 5× lighter.
	for d := d0; d <= d1; d++ {
		y := yOf(math.Pow(10, d))
		hline(img, plot.Min.X, plot.Max.X, y, grid)
		lbl := decadeLabel(d)
		drawText(img, plot.Min.X-8-textWidth(lbl, textScale), y-8, lbl, textScale, ink)
		for _, k := range []float64{2, 5} {
			if v := k * math.Pow(10, d); math.Log10(v) < d1 {
				hline(img, plot.Min.X, plot.Max.X, yOf(v), subgrid)
			}
		}
	}
	for _, s := range sizes {
		x := xOf(s)
		vline(img, x, plot.Min.Y, plot.Max.Y, grid)
		lbl := sizeLabel(s)
		drawText(img, x-textWidth(lbl, textScale)/2, plot.Max.Y+10, lbl, textScale, ink)
	}
	rectOutline(img, plot, frame)
	// Peers first, so heapipc's lines are on top.
	order := append([]string{}, ids...)
	for pass := 0; pass < 2; pass++ {
		for _, id := range order {
			if isHeapipc(id) != (pass == 1) {
				continue
			}
			st := styleOf(id)
			px, py := -1, -1
			for _, s := range sizes {
				v := rep.figure(scen, place, s, id, func(f *Figure) float64 { return f.Median })
				if !(v > 0) {
					px = -1
					continue
				}
				x, y := xOf(s), yOf(v)
				if px >= 0 {
					line(img, px, py, x, y, st)
				}
				fillRect(img, x-3, y-3, 7, 7, st.c)
				px, py = x, y
			}
		}
	}
}

func decadeLabel(d float64) string {
	switch {
	case d >= 6:
		return fmt.Sprintf("%gM", math.Pow(10, d-6))
	case d >= 3:
		return fmt.Sprintf("%gk", math.Pow(10, d-3))
	}
	return fmt.Sprintf("%g", math.Pow(10, d))
}

// ---- drawing ----

func fillRect(img *image.RGBA, x, y, w, h int, c color.RGBA) {
	draw.Draw(img, image.Rect(x, y, x+w, y+h), &image.Uniform{c}, image.Point{}, draw.Src)
}

func hline(img *image.RGBA, x0, x1, y int, c color.RGBA) { fillRect(img, x0, y, x1-x0+1, 1, c) }
func vline(img *image.RGBA, x, y0, y1 int, c color.RGBA) { fillRect(img, x, y0, 1, y1-y0+1, c) }

func rectOutline(img *image.RGBA, r image.Rectangle, c color.RGBA) {
	hline(img, r.Min.X, r.Max.X, r.Min.Y, c)
	hline(img, r.Min.X, r.Max.X, r.Max.Y, c)
	vline(img, r.Min.X, r.Min.Y, r.Max.Y, c)
	vline(img, r.Max.X, r.Min.Y, r.Max.Y, c)
}

// line draws a thick (dashed) line from (x0, y0) to (x1, y1).
func line(img *image.RGBA, x0, y0, x1, y1 int, st lineStyle) {
	n := max(abs(x1-x0), abs(y1-y0))
	w := max(st.width, 1)
	for i := 0; i <= n; i++ {
		t := 0.0
		if n > 0 {
			t = float64(i) / float64(n)
		}
		if st.dashed {
			// 10 px on, 6 off, measured along the line.
			along := t * math.Hypot(float64(x1-x0), float64(y1-y0))
			if math.Mod(along, 16) >= 10 {
				continue
			}
		}
		x := x0 + int(math.Round(t*float64(x1-x0)))
		y := y0 + int(math.Round(t*float64(y1-y0)))
		fillRect(img, x-w/2, y-w/2, w, w, st.c)
	}
}

func abs(v int) int {
	if v < 0 {
		return -v
	}
	return v
}

func textWidth(s string, scale int) int {
	n := len([]rune(s))
	if n == 0 {
		return 0
	}
	return n*(glyphW+1)*scale - scale
}

// drawText draws s with its top-left corner at (x, y), each font pixel a
// scale×scale square.
func drawText(img *image.RGBA, x, y int, s string, scale int, c color.RGBA) {
	for _, r := range s {
		g, ok := glyphs[r]
		if !ok {
			g = []string{"#####", "#...#", "#...#", "#...#", "#...#", "#...#", "#####"}
		}
		for row, bits := range g {
			for col, b := range bits {
				if b == '#' {
					fillRect(img, x+col*scale, y+row*scale, scale, scale, c)
				}
			}
		}
		x += (glyphW + 1) * scale
	}
}
