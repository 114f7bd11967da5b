package main

import (
	"math/bits"
	"time"
)

// histogram counts durations in log-linear buckets: exact below 128 ns,
// then 64 buckets per power of two (under 1.6% error), like HdrHistogram.
type histogram struct {
	counts [subBuckets*2 + 57*subBuckets]uint64
	n      int64
	max    time.Duration
}

const subBuckets = 64

func bucketOf(v uint64) int {
	if v < 2*subBuckets {
		return int(v)
	}
	shift := bits.Len64(v) - 7 // v>>shift in [64, 128)
	return 2*subBuckets + (shift-1)*subBuckets + int(v>>shift) - subBuckets
}

// valueOf is the middle of bucket i.
func valueOf(i int) uint64 {
	if i < 2*subBuckets {
		return uint64(i)
	}
	i -= 2 * subBuckets
	shift := i/subBuckets + 1
	lo := uint64(i%subBuckets+subBuckets) << shift
	return lo + (uint64(1)<<shift)/2
}

func (h *histogram) add(d time.Duration) {
	if d < 0 {
		d = 0
	}
	h.counts[bucketOf(uint64(d))]++
	h.n++
	h.max = max(h.max, d)
}

// quantile returns the smallest bucket value with at least q of the
// samples at or below it (q in (0, 1]); the maximum is exact.
func (h *histogram) quantile(q float64) time.Duration {
	if h.n == 0 {
		return 0
	}
	rank := int64(q*float64(h.n) + 0.9999999)
	rank = min(max(rank, 1), h.n)
	var seen int64
	for i, c := range h.counts {
		seen += int64(c)
		if seen >= rank {
			return min(time.Duration(valueOf(i)), h.max)
		}
	}
	return h.max
}
