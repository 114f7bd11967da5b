package ipc

import (
	"math/rand/v2"
	"os"
	"runtime/debug"
	"strconv"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// What the randomized model tests (TestOwnershipModel, TestMPSCModel,
// TestStreamModel, TestSpeculoModel) share.

// modelSeeds are the seeds a model test runs: fixed, and one from the
// clock; or, if the environment variable env is set (to the seed a
// failure logged), that one alone (single).
func modelSeeds(t *testing.T, env string, fixed ...uint64) (seeds []uint64, single bool) {
	if s := os.Getenv(env); s != "" {
		seed, err := strconv.ParseUint(s, 0, 64)
		require.NoError(t, err, env)
		return []uint64{seed}, true
	}
	return append(fixed, uint64(time.Now().UnixNano())), false
}

// modelOps is how many random operations a model test's seed runs: full,
// an eighth of it under the race detector (which makes the models some 15
// times slower) and a quarter of that with -short.
func modelOps(full int) int {
	n := full
	if bi, ok := debug.ReadBuildInfo(); ok {
		for _, s := range bi.Settings {
			if s.Key == "-race" && s.Value == "true" {
				n /= 8
			}
		}
	}
	if testing.Short() {
		n /= 4
	}
	return n
}

// modelOp is an operation of a model test and its weight; f reports
// whether it did anything (false: it cannot be done now).
type modelOp struct {
	w int
	f func() bool
}

// modelStep runs one of ops, picked at random by weight, picking again
// while the one picked cannot be done now.
func modelStep(rng *rand.Rand, ops []modelOp) {
	total := 0
	for _, o := range ops {
		total += o.w
	}
	for {
		x := rng.IntN(total)
		i := 0
		for x >= ops[i].w {
			x -= ops[i].w
			i++
		}
		if ops[i].f() {
			return
		}
	}
}

// heldBack is how many records the consumers of b's handles freed and
// hold back, to free with their windows (see ahead): Stats counts them
// live until then.
func heldBack(b *Buffer) int64 {
	b.mu.Lock()
	defer b.mu.Unlock()
	var n int64
	for h := range b.handles {
		for e := range h.ends {
			if c, ok := e.(*Consumer); ok {
				n += int64(c.ahead.freed)
			}
		}
	}
	return n
}
