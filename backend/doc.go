// Package backend provides the operating-system objects heapipc is built
// on, behind two small interfaces, and the header that makes a segment a
// heapipc buffer.
//
// # Segments and semaphores
//
// A [Segment] is a named block of shared memory: create-exclusive, attach,
// bytes, close, unlink. A [Semaphore] is a named counting semaphore: wait
// (with a context or a timeout), try-wait, post, value, close, unlink.
// Three kinds implement both:
//
//	kind    segment                                semaphore
//	posix   /dev/shm/NAME, ftruncate+fallocate,    /dev/shm/sem.NAME, 32 bytes, binary-
//	        mmap; published by link(2)             compatible with glibc sem_open; futex
//	sysv    shmget/shmat, key from the name,       semget set of 2 (value, name tag),
//	        name in the header detects collisions, semtimedop, optional SEM_UNDO
//	        the size (shm_segsz) marks ours
//	heap    aligned Go memory, per process         glibc's algorithm on Go memory
//
// The heap kind exists so the race detector and checkptr can see the
// algorithms (they do not see mmap'd memory), and for single-process use.
//
// The build tags ipc_sysvshm and ipc_sysvsem choose the default kinds
// ([DefaultSegmentKind], [DefaultSemaphoreKind]); on Linux every kind is
// compiled in and can be chosen by name. Elsewhere posix and sysv return
// ErrNotSupported and heap works.
//
// # Names
//
// Names are 1..[MaxNameLen] characters of [A-Za-z0-9._-], not starting with
// '.' or '-'. Anything else is ErrInvalidName and touches nothing. Objects
// are created with mode 0600 unless another mode is asked for; the mode is
// applied exactly (the umask does not narrow it).
//
// # The region header
//
// [OpenRegion] creates or attaches a segment with a header in its first
// page (see header.go for the byte layout):
//
//	0    magic "HEAPIPC\x01", layout version, header size
//	16   backend kinds, page size, total/data offsets and sizes
//	48   creator identity (pid + start time), creation time, name
//	200  creator's pid namespace
//	208  CRC-32C of bytes [0,208): the immutable fields
//	256  state word (initializing -> ready -> destroyed), own cache line
//	512  extension area for the layers above, up to the data offset
//
// One creator wins the exclusive create; everyone else waits for the state
// word to read ready. A creator that died while initializing is detected
// from its identity; its segment is removed (only if the name still refers
// to it) and created anew.
//
// Every process of a region must be in one pid namespace (liveness is
// judged by pid): attaching from another is ErrNotSupported.
//
// # Lifetimes
//
// After Close the bytes of a segment must not be touched: the mapping is
// gone. Unlink removes the name; processes that have the segment mapped
// keep using it until they close it.
package backend
