//go:build ipc_sysvsem

package backend

const wantSemaphoreKind = SysV
