package testutil

import (
	"bytes"
	"testing"
)

// TestFillSumAlignment: Fill writes, and Sum reads, the same bytes
// whether the slice is 8-byte aligned (a word at a time in place) or not.
func TestFillSumAlignment(t *testing.T) {
	buf := make([]byte, 8+200)
	for _, n := range []int{0, 1, 7, 8, 64, 67, 200} {
		aligned := buf[:n:n]
		Fill(aligned, 5)
		want := bytes.Clone(aligned)
		for off := 1; off < 8; off++ {
			odd := buf[off : off+n : off+n]
			clear(buf)
			Fill(odd, 5)
			if !bytes.Equal(odd, want) {
				t.Fatalf("%d bytes at offset %d: Fill wrote %x, aligned %x", n, off, odd, want)
			}
			if Sum(odd) != Sum(want) {
				t.Fatalf("%d bytes at offset %d: Sum differs", n, off)
			}
		}
		if n >= 16 && bytes.Equal(want[:8], want[8:16]) {
			t.Fatalf("%d bytes: words do not differ", n)
		}
	}
}
