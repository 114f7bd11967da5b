//go:build amd64 && gc

package mem

import "unsafe"

// PrefetchWrite asks the processor to bring the two cache lines from p
// into this core's cache in the state that a store needs (PREFETCHW),
// without waiting for them: what a writer that will soon store there
// calls ahead of its stores. A line that another core has, because it
// read or wrote it last, then crosses over while the caller does other
// work, instead of stalling the caller's stores when they reach it. It
// is a hint: it changes no byte, never faults, and is a NOP where the
// processor lacks it.
//
//go:noescape
func PrefetchWrite(p unsafe.Pointer)
