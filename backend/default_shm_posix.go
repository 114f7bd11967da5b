//go:build !ipc_sysvshm

package backend

const defaultSegmentKind = POSIX
