package alloc

import (
	"fmt"
	"math/rand/v2"
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/heapipc/ipc/backend"
	"github.com/heapipc/ipc/internal/testutil"
)

func TestMain(m *testing.M) { testutil.Main(m) }

// combo is a segment and a semaphore backend.
type combo struct{ seg, sem backend.Kind }

func (c combo) String() string { return string(c.seg) + "+" + string(c.sem) }

// inProcess lists the combinations a single-process test runs on: every
// kind, and the defaults of the build tags.
func inProcess() []combo {
	return dedupe([]combo{
		{backend.DefaultSegmentKind(), backend.DefaultSemaphoreKind()},
		{backend.Heap, backend.Heap},
		{backend.POSIX, backend.POSIX},
		{backend.SysV, backend.SysV},
		{backend.POSIX, backend.SysV},
	})
}

// crossProcess lists the combinations that work between processes: the
// defaults first, then the pure posix and sysv ones.
func crossProcess() []combo {
	return dedupe([]combo{
		{backend.DefaultSegmentKind(), backend.DefaultSemaphoreKind()},
		{backend.POSIX, backend.POSIX},
		{backend.SysV, backend.SysV},
	})
}

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

// newHeap creates a region of size bytes with a heap and removes both at
// cleanup.
func newHeap(tb testing.TB, c combo, size int64) *Heap {
	tb.Helper()
	name := testutil.Name(tb)
	var h *Heap
	r, err := backend.OpenRegion(name, backend.RegionConfig{Segments: c.seg, Semaphores: c.sem, Size: size, Open: backend.CreateOnly},
		func(r *backend.Region) error {
			var err error
			h, err = Init(r, Options{CheckInterval: 10 * time.Millisecond})
			return err
		})
	if err != nil {
		tb.Fatalf("create region %s on %v: %v", name, c, err)
	}
	tb.Cleanup(func() {
		if err := h.Unlink(); err != nil {
			tb.Errorf("heap unlink: %v", err)
		}
		h.Close()
		r.Unlink()
		r.Close()
	})
	return h
}

// attachHeap attaches a region by name and its heap; closed at cleanup.
func attachHeap(tb testing.TB, name string, c combo) *Heap {
	tb.Helper()
	r, err := backend.OpenRegion(name, backend.RegionConfig{Segments: c.seg, Semaphores: c.sem, Open: backend.AttachOnly}, nil)
	if err != nil {
		tb.Fatalf("attach region %s: %v", name, err)
	}
	h, err := AttachWith(r, Options{CheckInterval: 10 * time.Millisecond})
	if err != nil {
		r.Close()
		tb.Fatalf("attach heap %s: %v", name, err)
	}
	tb.Cleanup(func() { h.Close(); r.Close() })
	return h
}

// childEnv passes a region to a child.
func childEnv(h *Heap, c combo, extra ...string) []string {
	return append([]string{"HEAP_NAME=" + h.Region().Name(), "HEAP_SEG=" + string(c.seg), "HEAP_SEM=" + string(c.sem)}, extra...)
}

// childHeap attaches the region a parent passed with childEnv.
func childHeap(t *testing.T) *Heap {
	t.Helper()
	c := combo{backend.Kind(testutil.Env(t, "HEAP_SEG")), backend.Kind(testutil.Env(t, "HEAP_SEM"))}
	return attachHeap(t, testutil.Env(t, "HEAP_NAME"), c)
}

// seed returns the seed of a randomized test (HEAPIPC_SEED overrides) and
// logs it.
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

func mustStats(tb testing.TB, h *Heap) Stats {
	tb.Helper()
	s, err := h.Stats()
	if err != nil {
		tb.Fatalf("stats: %v", err)
	}
	return s
}

func mustCheck(tb testing.TB, h *Heap, when string) {
	tb.Helper()
	if err := h.Check(); err != nil {
		tb.Fatalf("check %s: %v", when, err)
	}
}

func describe(s Stats) string {
	return fmt.Sprintf("free %d (largest %d, %d extents), allocated %d in %d extents", s.FreeBytes, s.LargestFree, s.FreeExtents, s.AllocBytes, s.AllocExtents)
}
