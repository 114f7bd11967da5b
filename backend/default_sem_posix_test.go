//go:build !ipc_sysvsem

package backend

const wantSemaphoreKind = POSIX
