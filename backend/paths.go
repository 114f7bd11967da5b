package backend

// ShmDir is where POSIX shared memory lives on Linux (what shm_open and
// sem_open use).
const ShmDir = "/dev/shm"

func posixSegPath(name string) string { return ShmDir + "/" + name }
