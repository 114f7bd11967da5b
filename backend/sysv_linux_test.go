package backend

import "github.com/heapipc/ipc/internal/sys"

func setSysVTag(s Semaphore, tag int) error { return sys.SemSetVal(s.(*sysvSem).id, 1, tag) }
