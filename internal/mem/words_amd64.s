//go:build amd64 && gc

#include "textflag.h"

// func ZeroWords(p *atomic.Uint64, n int)
TEXT ·ZeroWords(SB), NOSPLIT, $0-16
	MOVQ p+0(FP), AX
	MOVQ n+8(FP), CX
	XORQ DX, DX
	TESTQ CX, CX
	JLE done
loop:
	MOVQ DX, (AX)
	ADDQ $8, AX
	DECQ CX
	JNZ loop
done:
	RET
