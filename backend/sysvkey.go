package backend

import "hash/fnv"

// SysVKey derives the SysV IPC key of a name: FNV-1a of a prefix, the
// object class ("shm" or "sem") and the name, never IPC_PRIVATE (0). Two
// names can share a key; the segment header stores the name and the
// semaphore set stores a name tag, so a collision is detected and refused.
func SysVKey(class, name string) int32 {
	h := fnv.New32a()
	h.Write([]byte("heapipc/" + class + "/" + name))
	k := int32(h.Sum32())
	if k == 0 {
		k = 1
	}
	return k
}
