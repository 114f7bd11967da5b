//go:build !ipc_sysvshm

package backend

const wantSegmentKind = POSIX
