// Package alloc is the shared heap of a heapipc buffer: it hands out
// extents of whole pages of the region's data area to every goroutine of
// every process attached to the buffer, under a robust cross-process lock.
//
// # Layout
//
// The heap's root takes the first RootSize (512) bytes of the region's
// extension area (Region.Ext); the page map and the index open the data
// area; the allocatable pages follow.
//
//	region offset
//	0          region header (package backend)
//	512        heap root (Ext()[0:512]):
//	           +0    geometry: magic, version, page size, N pages, offsets
//	                 of the page map, index and first page, salt; CRC-32C
//	           +128  LockWord: owner identity, waiter count (own line)
//	           +256  FreePages, AllocPages, HeapLen, AllocExtents, Repairs,
//	                 LogState, LogN, NeedRepair, redo log [12]{word, value}
//	1024       rest of Ext(): not ours (the channel registry)
//	DataOffset page map: N × {Tag, Aux uint64}
//	           index: (N/2+1) × uint64 keys (a binary max-heap)
//	FirstOff   page 0 ... page N-1 (allocatable, page aligned)
//
// The page map is the source of truth. Every extent has a boundary tag on
// its first and last page (one tag when it is one page long): state (free
// or allocated), length in pages, head/tail flags, the caller's Kind, and
// a marker; pages inside an extent have zero tags. The Aux word of an
// allocated extent's first page is its owner (a sys.Identity, 0: none).
//
// The index is derived: a max-heap of the free extents keyed by length
// (lowest address first among equal lengths), whose positions live in the
// Aux word of each free extent's first page. Allocation takes the largest
// free run (the index's top) and carves the request from its start;
// freeing coalesces with free neighbours found through the boundary tags.
// Both are O(log n) in the number of free extents: nothing on the hot path
// scans the region. One allocation may be as large as the largest free
// run; there is no other limit.
//
// # Crash safety
//
// Every update writes its page-map words to the redo log in the root,
// marks the log valid (LogState), applies the words, and clears the mark.
// A holder that dies leaves either no valid log and an untouched page map,
// or a valid log whose writes are applied again (they are idempotent).
// The index, the free-extent positions and the counters are then rebuilt
// from the page map (Repair), which also coalesces any free neighbours.
//
// # The lock
//
// Lock is a robust mutex over a LockWord and a semaphore (named
// REGION.heap, of the region's semaphore kind, initial value 0). The owner
// word is the lock: acquiring is one CAS from 0 to the caller's identity
// (pid and start time), so no moment exists where the lock is held but
// its holder unrecorded, and the uncontended path makes no system call.
// Waiters announce themselves, sleep on the semaphore for at most the
// check interval (50 ms by default), and on timeout check the holder: if
// sys.Alive says it is dead, they CAS the owner word from the dead
// identity to their own, and the heap repairs before going on. A live
// holder is never robbed, however slow. See Lock for why the semaphore is
// not opened with SEM_UNDO.
//
// # Who writes what
//
//	root geometry        the creator, before the region is published
//	LockWord.owner       acquirers (CAS), the holder (store 0)
//	LockWord.waiters     waiters (atomic add)
//	everything else      the lock holder only
//
// # Concurrency and lifetimes
//
// A Heap is safe for concurrent use by goroutines. Bytes returned by Bytes
// and View stay valid while the extent is allocated and the region is
// mapped; nothing in this package keeps a freed extent's bytes from being
// handed to someone else. Close releases the handle's semaphore; Unlink
// removes the semaphore's name when the buffer is destroyed.
//
// # Checks
//
// Check walks the page map and the index (O(pages)) and reports every
// violation: malformed or lost tags, overlapping extents, free neighbours
// not coalesced, index entries out of step with the page map, a pending
// log, counters that do not add up. Attach validates the root in O(1).
// Bad metadata is reported as an error wrapping ErrCorrupt, never a panic.
//
// # Owners and recovery
//
// AllocFor records an owner and a Kind with an extent. Reclaim frees the
// extents of a dead owner (a live one is refused with ErrBusy); Recover
// frees the KindPlain extents of every dead owner, and RecoverKind those of
// another kind that the layer above names orphans. The kinds KindSlab and
// KindLarge belong to package slab, KindDoorbell to package ipc, and
// KindExtent and KindControl (channel control blocks, owned only while
// their channel is being made or removed: the registry frees them) to
// package channel, which reclaim them by their own rules.
package alloc
