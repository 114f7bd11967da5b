//go:build amd64 && gc

package mem

import "sync/atomic"

// ZeroWords stores 0 into the n words from p, each store atomic (an
// aligned 8-byte MOV) and in program order, as n calls of Store would,
// but without their full fence each: on amd64 a plain store already has
// release order, and an XCHG per word (what atomic.Uint64.Store is
// here) cost a slab's restart ~20 cycles a bitmap word. The caller
// publishes the words with a later atomic store that readers load
// first, as after Store.
//
//go:noescape
func ZeroWords(p *atomic.Uint64, n int)
