//go:build race

package tests

// raceBuild scales down record counts: the race detector slows every
// shared-memory access by an order of magnitude.
const raceBuild = true
