package testutil

import (
	"encoding/binary"
	"time"
	"unsafe"
)

// Fill writes every byte of b (a pattern that depends on v), a word at a
// time as a real producer's copy would; Sum reads every byte back. The
// throughput benchmarks use them on both sides of every comparison, so
// their cost is common. They go through b's words in place (b is 8-byte
// aligned in every benchmark: records and Go's slices are) with no check
// per word: their cost is what writing and reading the bytes costs, and
// adds as little as it can to both sides. Word j holds w+8j, w the byte
// v in every byte, in the machine's byte order; the bytes past the last
// whole word hold v+i.
func Fill(b []byte, v byte) {
	w := uint64(v) * 0x0101010101010101
	ws, i := words(b)
	for j := range ws {
		ws[j] = w + uint64(8*j)
	}
	for ; i+8 <= len(b); i += 8 { // not aligned
		binary.NativeEndian.PutUint64(b[i:], w+uint64(i))
	}
	for ; i < len(b); i++ {
		b[i] = v + byte(i)
	}
}

// Sum reads every byte of b (see Fill).
func Sum(b []byte) byte {
	var s uint64
	ws, i := words(b)
	for _, w := range ws {
		s += w
	}
	for ; i+8 <= len(b); i += 8 { // not aligned
		s += binary.NativeEndian.Uint64(b[i:])
	}
	for ; i < len(b); i++ {
		s += uint64(b[i])
	}
	return byte(s ^ s>>8 ^ s>>16 ^ s>>24 ^ s>>32 ^ s>>40 ^ s>>48 ^ s>>56)
}

// words is b's whole 8-byte words, if b is 8-byte aligned, and the index
// of its first byte past them (0 if it is not aligned: byte by byte).
func words(b []byte) ([]uint64, int) {
	n := len(b) / 8
	if n == 0 || uintptr(unsafe.Pointer(unsafe.SliceData(b)))%8 != 0 {
		return nil, 0
	}
	return unsafe.Slice((*uint64)(unsafe.Pointer(unsafe.SliceData(b))), n), 8 * n
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
