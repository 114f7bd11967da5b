//go:build ipc_sysvsem

package backend

const defaultSemaphoreKind = SysV
