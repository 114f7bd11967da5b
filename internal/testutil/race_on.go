//go:build race

package testutil

// Race says whether the race detector is on: it slows every shared-memory
// access by an order of magnitude, so tests scale their counts down.
const Race = true
