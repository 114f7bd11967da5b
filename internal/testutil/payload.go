package testutil

import (
	"encoding/binary"
	"time"
	"unsafe"
)

// Fill writes every byte of b (a pattern that depends on v), whole words
// at a time as a real producer's copy would; Sum reads every byte back. The
// throughput benchmarks use them on both sides of every comparison, so
// their cost is common. They go through b's words in place (b is 8-byte
// aligned in every benchmark: records and Go's slices are), 64 bytes at
// a time with no loop and no check inside a block, so that they cost what
// a copy of the bytes costs (memmove: about 2 ns for 64 bytes on an Intel
// Xeon VM) and add as little as they can to both sides: a loop of one
// word at a time took 7 ns for 64 bytes there, more than the record
// channel's own work per record in the batch benchmarks. Word j holds
// w+8j, w the byte v in every byte, in the machine's byte order; the
// bytes past the last whole word hold v+i.
func Fill(b []byte, v byte) {
	w := uint64(v) * 0x0101010101010101
	if len(b) == 64 && uintptr(unsafe.Pointer(unsafe.SliceData(b)))%8 == 0 {
		// The benchmarks' payload: one block, no loop.
		fillBlock((*[8]uint64)(unsafe.Pointer(unsafe.SliceData(b))), w)
		return
	}
	ws, i := words(b)
	j := 0
	for ; j+8 <= len(ws); j += 8 {
		fillBlock((*[8]uint64)(ws[j:j+8]), w+uint64(8*j))
	}
	for ; j < len(ws); j++ {
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
	if len(b) == 64 && uintptr(unsafe.Pointer(unsafe.SliceData(b)))%8 == 0 {
		// The benchmarks' payload: one block, no loop.
		return fold(sumBlock((*[8]uint64)(unsafe.Pointer(unsafe.SliceData(b)))))
	}
	var s uint64
	ws, i := words(b)
	j := 0
	for ; j+8 <= len(ws); j += 8 {
		s += sumBlock((*[8]uint64)(ws[j : j+8]))
	}
	for ; j < len(ws); j++ {
		s += ws[j]
	}
	for ; i+8 <= len(b); i += 8 { // not aligned
		s += binary.NativeEndian.Uint64(b[i:])
	}
	for ; i < len(b); i++ {
		s += uint64(b[i])
	}
	return fold(s)
}

// fillBlock writes a block of Fill's pattern whose first word is x.
func fillBlock(blk *[8]uint64, x uint64) {
	blk[0], blk[1], blk[2], blk[3] = x, x+8, x+16, x+24
	blk[4], blk[5], blk[6], blk[7] = x+32, x+40, x+48, x+56
}

// sumBlock is the sum of a block's words.
func sumBlock(blk *[8]uint64) uint64 {
	return (blk[0] + blk[1]) + (blk[2] + blk[3]) + ((blk[4] + blk[5]) + (blk[6] + blk[7]))
}

// fold is the exclusive or of s's bytes.
func fold(s uint64) byte {
	s ^= s >> 32
	s ^= s >> 16
	s ^= s >> 8
	return byte(s)
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
