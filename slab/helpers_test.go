package slab

import (
	"encoding/binary"
	"math/rand/v2"
	"os"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/heapipc/ipc/alloc"
	"github.com/heapipc/ipc/backend"
	"github.com/heapipc/ipc/internal/mem"
	"github.com/heapipc/ipc/internal/testutil"
)

func TestMain(m *testing.M) { testutil.Main(m) }

type combo struct{ seg, sem backend.Kind }

func (c combo) String() string { return string(c.seg) + "+" + string(c.sem) }

var heapCombo = combo{backend.Heap, backend.Heap}

func defaultCombo() combo { return combo{backend.DefaultSegmentKind(), backend.DefaultSemaphoreKind()} }

func dedupe(cs []combo) []combo {
	var out []combo
	seen := map[combo]bool{}
	for _, c := range cs {
		if !seen[c] {
			seen[c] = true
			out = append(out, c)
		}
	}
	return out
}

func inProcess() []combo {
	return dedupe([]combo{defaultCombo(), heapCombo, {backend.POSIX, backend.POSIX}, {backend.SysV, backend.SysV}})
}

func crossProcess() []combo {
	return dedupe([]combo{defaultCombo(), {backend.POSIX, backend.POSIX}, {backend.SysV, backend.SysV}})
}

// newPool creates a region of size bytes with a heap and a pool; all is
// removed at cleanup.
func newPool(tb testing.TB, c combo, size int64, opts Options) *Pool {
	tb.Helper()
	name := testutil.Name(tb)
	var h *alloc.Heap
	r, err := backend.OpenRegion(name, backend.RegionConfig{Segments: c.seg, Semaphores: c.sem, Size: size, Open: backend.CreateOnly},
		func(r *backend.Region) error {
			var err error
			h, err = alloc.Init(r, alloc.Options{CheckInterval: 10 * time.Millisecond})
			return err
		})
	if err != nil {
		tb.Fatalf("create region on %v: %v", c, err)
	}
	tb.Cleanup(func() {
		h.Unlink()
		h.Close()
		r.Unlink()
		r.Close()
	})
	p, err := New(h, opts)
	if err != nil {
		tb.Fatal(err)
	}
	return p
}

// attachPool attaches a region by name, its heap, and makes a pool.
func attachPool(tb testing.TB, name string, c combo, opts Options) *Pool {
	tb.Helper()
	r, err := backend.OpenRegion(name, backend.RegionConfig{Segments: c.seg, Semaphores: c.sem, Open: backend.AttachOnly}, nil)
	if err != nil {
		tb.Fatalf("attach region %s: %v", name, err)
	}
	h, err := alloc.AttachWith(r, alloc.Options{CheckInterval: 10 * time.Millisecond})
	if err != nil {
		r.Close()
		tb.Fatalf("attach heap: %v", err)
	}
	tb.Cleanup(func() { h.Close(); r.Close() })
	p, err := New(h, opts)
	if err != nil {
		tb.Fatal(err)
	}
	return p
}

func childEnv(p *Pool, c combo, extra ...string) []string {
	return append([]string{"SLAB_NAME=" + p.heap.Region().Name(), "SLAB_SEG=" + string(c.seg), "SLAB_SEM=" + string(c.sem),
		"SLAB_SIZE=" + strconv.FormatUint(p.slabSize, 10), "SLAB_ALIGN=" + strconv.FormatUint(p.align, 10)}, extra...)
}

func childPool(t *testing.T) *Pool {
	t.Helper()
	c := combo{backend.Kind(testutil.Env(t, "SLAB_SEG")), backend.Kind(testutil.Env(t, "SLAB_SEM"))}
	size, _ := strconv.Atoi(testutil.Env(t, "SLAB_SIZE"))
	align, _ := strconv.Atoi(testutil.Env(t, "SLAB_ALIGN"))
	return attachPool(t, testutil.Env(t, "SLAB_NAME"), c, Options{SlabSize: size, Align: align})
}

func seed(tb testing.TB) uint64 {
	tb.Helper()
	s := uint64(time.Now().UnixNano())
	if v := os.Getenv("HEAPIPC_SEED"); v != "" {
		n, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			tb.Fatalf("HEAPIPC_SEED: %v", err)
		}
		s = n
	}
	tb.Logf("seed %d (rerun with HEAPIPC_SEED=%d)", s, s)
	return s
}

func newRand(s uint64) *rand.Rand { return rand.New(rand.NewPCG(s, s^0x9e3779b97f4a7c15)) }

func heapStats(tb testing.TB, p *Pool) alloc.Stats {
	tb.Helper()
	s, err := p.heap.Stats()
	if err != nil {
		tb.Fatal(err)
	}
	return s
}

func poolStats(tb testing.TB, p *Pool) Stats {
	tb.Helper()
	s, err := p.Stats()
	if err != nil {
		tb.Fatal(err)
	}
	return s
}

func mustCheck(tb testing.TB, p *Pool, when string) {
	tb.Helper()
	if err := p.Check(); err != nil {
		tb.Fatalf("check %s: %v", when, err)
	}
}

// fill writes a pattern derived from the record's offset over its bytes;
// intact checks it.
func fill(r Record) {
	for i := range r.Data {
		r.Data[i] = byte(uint64(r.Off)>>4) + byte(i)
	}
}

func intact(b []byte, off mem.Off) bool {
	for i := range b {
		if b[i] != byte(uint64(off)>>4)+byte(i) {
			return false
		}
	}
	return true
}

// A board is an array of atomic words in a plain heap extent, through
// which processes hand each other record offsets.
const boardSlots = 256

func newBoard(tb testing.TB, p *Pool) (mem.Off, []atomic.Uint64) {
	tb.Helper()
	off, err := p.heap.Alloc(boardSlots * 8)
	if err != nil {
		tb.Fatal(err)
	}
	b, _ := p.heap.Bytes(off)
	clear(b)
	return off, board(tb, p, off)
}

func board(tb testing.TB, p *Pool, off mem.Off) []atomic.Uint64 {
	tb.Helper()
	b, err := p.heap.View(off, boardSlots*8)
	if err != nil {
		tb.Fatal(err)
	}
	s, err := mem.Slice[atomic.Uint64](b, 0, boardSlots)
	if err != nil {
		tb.Fatal(err)
	}
	return s
}

func stampRec(r Record) {
	binary.LittleEndian.PutUint64(r.Data, uint64(r.Off))
	binary.LittleEndian.PutUint64(r.Data[len(r.Data)-8:], ^uint64(r.Off))
}

func stampOK(b []byte, off mem.Off) bool {
	return len(b) >= 16 && binary.LittleEndian.Uint64(b) == uint64(off) && binary.LittleEndian.Uint64(b[len(b)-8:]) == ^uint64(off)
}

// locateAll locates the records of offs (of sizes[i] bytes) with a
// RunCursor, as a consumer takes a batch: how many it located (a prefix:
// up to the first it refused), their header checks in keys, and their
// runs.
func locateAll(p *Pool, offs []mem.Off, sizes, keys []uint32) (int, []Run) {
	var c RunCursor
	c.Reset(p, nil)
	for i, off := range offs {
		k, ok := c.Next(off, sizes[i])
		if !ok {
			return i, c.Runs()
		}
		keys[i] = k
	}
	return len(offs), c.Runs()
}
