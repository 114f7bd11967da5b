//go:build 386 || amd64 || arm || arm64 || loong64 || mips64le || mipsle || ppc64le || riscv64 || wasm

package slab

// littleEndian says how two uint32 fields lie in a uint64 word (see
// packHalves). A constant, so that the hot paths that pack and unpack
// record headers have no branch on it.
const littleEndian = true
