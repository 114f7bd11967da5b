//go:build amd64 && gc

#include "textflag.h"

// func PrefetchWrite(p unsafe.Pointer)
//
// PREFETCHW (0F 0D /1), spelled out: the Go assembler has no mnemonic for
// it. Processors without it execute the encoding as a hint NOP.
TEXT ·PrefetchWrite(SB), NOSPLIT, $0-8
	MOVQ p+0(FP), AX
	BYTE $0x0F; BYTE $0x0D; BYTE $0x08 // PREFETCHW (AX)
	BYTE $0x0F; BYTE $0x0D; BYTE $0x48; BYTE $0x40 // PREFETCHW 64(AX)
	RET
