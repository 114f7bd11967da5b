//go:build !ipc_sysvsem

package backend

const defaultSemaphoreKind = POSIX
