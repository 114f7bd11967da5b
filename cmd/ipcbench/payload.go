package main

import (
	"encoding/binary"
	"fmt"
)

// A payload is what every transport carries: size bytes (a multiple of
// 8) of a fixed pattern whose first 8 bytes hold the message's sequence
// number. The sender writes every byte of every message (a copy of the
// pattern, then the number); the receiver reads every byte (a sum of the
// 64-bit little-endian words, which also checks the message arrived
// whole). Writing is a memmove and reading a word sum, both tens of GB/s
// on an ordinary core, so the work is real but does not hide what the
// transports cost.
type payload struct {
	size    int
	pattern []byte
	base    uint64 // word sum of a message, less its sequence number
}

func newPayload(size int) *payload {
	p := &payload{size: size, pattern: make([]byte, size)}
	for i := range p.pattern {
		p.pattern[i] = byte(i*131 + i>>8 + 7)
	}
	binary.LittleEndian.PutUint64(p.pattern, 0)
	p.base = wordSum(p.pattern)
	return p
}

// put writes message seq into b (len(b) == size).
func (p *payload) put(b []byte, seq uint64) {
	copy(b, p.pattern)
	binary.LittleEndian.PutUint64(b, seq)
}

// putPart writes bytes [off, off+len(b)) of message seq into b: how a
// message is written into a byte ring in pieces.
func (p *payload) putPart(b []byte, off int, seq uint64) {
	copy(b, p.pattern[off:])
	if off < 8 {
		var w [8]byte
		binary.LittleEndian.PutUint64(w[:], seq)
		copy(b, w[off:])
	}
}

// verify reads every byte of b and checks it is message seq.
func (p *payload) verify(b []byte, seq uint64) error {
	if len(b) != p.size {
		return fmt.Errorf("message %d: %d bytes, want %d", seq, len(b), p.size)
	}
	if s := wordSum(b); s != p.base+seq {
		return fmt.Errorf("message %d: torn or out of order (sum %#x, want %#x)", seq, s, p.base+seq)
	}
	return nil
}

// expected is the sum a receiver reports after messages 0..n-1.
func (p *payload) expected(n int64) uint64 {
	u := uint64(n)
	return u*p.base + u*(u-1)/2
}

// wordSum sums b's 64-bit little-endian words (len(b) a multiple of 8;
// a tail is ignored).
func wordSum(b []byte) uint64 {
	var s0, s1, s2, s3 uint64
	for len(b) >= 32 {
		s0 += binary.LittleEndian.Uint64(b[0:8])
		s1 += binary.LittleEndian.Uint64(b[8:16])
		s2 += binary.LittleEndian.Uint64(b[16:24])
		s3 += binary.LittleEndian.Uint64(b[24:32])
		b = b[32:]
	}
	for len(b) >= 8 {
		s0 += binary.LittleEndian.Uint64(b)
		b = b[8:]
	}
	return s0 + s1 + s2 + s3
}

// summer sums the words of a byte stream handed over in pieces of any
// length (a ring's spans, a socket's reads).
type summer struct {
	sum   uint64
	total int64
	part  [8]byte
	np    int
}

func (s *summer) add(b []byte) {
	s.total += int64(len(b))
	if s.np > 0 {
		k := copy(s.part[s.np:], b)
		s.np += k
		b = b[k:]
		if s.np < 8 {
			return
		}
		s.sum += binary.LittleEndian.Uint64(s.part[:])
		s.np = 0
	}
	n := len(b) &^ 7
	s.sum += wordSum(b[:n])
	s.np = copy(s.part[:], b[n:])
}
