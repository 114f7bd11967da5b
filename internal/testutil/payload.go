package testutil

import (
	"encoding/binary"
	"time"
)

// Fill writes every byte of b (a pattern that depends on v), a word at a
// time as a real producer's copy would; Sum reads every byte back. The
// throughput benchmarks use them on both sides of every comparison, so
// their cost is common.
func Fill(b []byte, v byte) {
	w := uint64(v) * 0x0101010101010101
	i := 0
	for ; i+8 <= len(b); i += 8 {
		binary.LittleEndian.PutUint64(b[i:], w+uint64(i))
	}
	for ; i < len(b); i++ {
		b[i] = v + byte(i)
	}
}

// Sum reads every byte of b (see Fill).
func Sum(b []byte) byte {
	var s uint64
	i := 0
	for ; i+8 <= len(b); i += 8 {
		s += binary.LittleEndian.Uint64(b[i:])
	}
	for ; i < len(b); i++ {
		s += uint64(b[i])
	}
	return byte(s ^ s>>8 ^ s>>16 ^ s>>24 ^ s>>32 ^ s>>40 ^ s>>48 ^ s>>56)
}

// GoChanInProc is the Go peer of the in-process throughput benchmarks: it
// moves n freshly allocated slices of size bytes, each written with Fill,
// through a Go channel of capacity 1024 to another goroutine, which reads
// each with Sum, and returns how long that took.
func GoChanInProc(n, size int) time.Duration {
	ch := make(chan []byte, 1024)
	done := make(chan byte)
	go func() {
		var s byte
		for b := range ch {
			s += Sum(b)
		}
		done <- s
	}()
	start := time.Now()
	for i := range n {
		b := make([]byte, size)
		Fill(b, byte(i))
		ch <- b
	}
	close(ch)
	<-done
	return time.Since(start)
}
