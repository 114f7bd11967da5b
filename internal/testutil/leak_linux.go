//go:build linux

package testutil

import "github.com/heapipc/ipc/internal/sys"

func semLastPID(id, num int) (int, error) { return sys.SemGetPID(id, num) }

func removeSysV(o sysvObject) {
	if o.class == "shm" {
		sys.ShmRemove(o.id)
	} else {
		sys.SemRemove(o.id)
	}
}
