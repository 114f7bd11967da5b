// Package slab carves records from slabs of a buffer's shared heap:
// per-handle allocation with no lock and no atomic read-modify-write, and
// lock-free freeing from any goroutine of any process.
//
// # Handles, slabs and records
//
// A Handle (one per goroutine: RaftLib's per-thread allocation structure)
// takes a slab from the heap (alloc.Heap.AllocFor, kind KindSlab, owner
// the process) and bumps a cursor through it. Allocation writes the
// record's 16-byte header and hands out the bytes after it; that header
// is the only shared write. When the slab is full the handle starts over
// a slab of its own whose records have all been freed already — the full
// one itself, or one of up to two earlier full slabs it keeps as spares —
// with a new generation (no heap lock, memory still in the cache; headers
// of the earlier records no longer validate). Only when none is free does
// it take another slab from the heap; the full one becomes a spare (the
// oldest spare beyond two is retired). So a producer whose consumer lags
// by up to two slabs (a record channel's ring of 1024 64-byte records
// spans about a slab and a half; a slab holds fifteen 4 KiB records)
// cycles through three slabs that stay in the cache instead of walking
// the heap — which hands out the largest free run, so fresh pages, page
// faults and cache misses — and a handle pins at most three slabs. "In
// the cache" means in the consumer's, too: it read those lines last. So
// each allocation also asks, without waiting, for the lines a few records
// ahead of the cursor (writeAhead, mem.PrefetchWrite), which then cross
// over from the consumer's core while the producer fills this record.
// Records larger than an eighth of a slab get their own heap extent
// (kind KindLarge) with the same header.
//
// A slab of S bytes (DefaultSlabSize, 64 KiB; see there for why):
//
//	+0     slab header (256 bytes)
//	       line 0: Ident (generation | magic), salt, pages, self offset,
//	               first slot, limit, bitmap words, alignment, version
//	       line 1: Owner, Returner, Count, Retired
//	+256   free bitmap: one bit per 16-byte granule of the record area
//	+16·RecBase  slot, slot, ... up to S
//
//	slot:  [ header 16 B | data (size bytes) | padding to the alignment ]
//	header: Pos (slot granule from the slab start), Len (slot granules),
//	        Size (bytes asked), Check (hash of the three, the buffer's
//	        salt and the slab's generation)
//
// Record data are aligned to 16 bytes (Options.Align: up to the page
// size; CacheLineAlign for 64). A large record's header sits at 16 (or
// Align) bytes into its extent, with Pos 0 and the size in Len:Size (the
// high bits of Len an incarnation, which the Check mixes in: so the Check
// of a large record differs from the one before it at its place, as a
// slab record's does from one slab generation to the next).
//
// # Freeing
//
// Given a record's offset (or its view, mapped back with mem.OffsetOf),
// any process reads the header, finds the slab at offset - 16·Pos,
// checks the slab header (magic, its own offset, salt, geometry) and the
// header's Check, and sets the slot's bits in the bitmap with one CAS that
// fails if any of them is already set: a double free changes nothing and
// returns ErrDoubleFree, a pointer that is not a record's ErrNotAllocated,
// a view outside the buffer ErrForeign. A free whose CAS makes a bitmap
// word complete (all 64 granules, 1 KiB, free) also decrements the slab's
// Count; that is the only second atomic, once per KiB of records.
//
// Count starts at the number of bitmap words plus a large "active" value.
// Retiring (a spare the handle gives up, or Handle.Close) records where
// allocation stopped, sets the bits of the never-allocated tail, and
// subtracts the active value and the words it completed. Whoever brings
// Count to zero (the last free, or the retirement) returns the slab to
// the heap: it claims Returner with a CAS, and clears the magic and frees
// the extent in one critical section of the heap lock. Count carries the
// slab's generation in its upper half, and every change to it is a CAS
// that expects the generation its maker saw when it located the slab: a
// late change, by a process that was slow rather than dead, never
// touches the count of a slab that Recover has taken over or that has
// started over since.
//
// # Who writes what
//
//	record header        the allocating handle, once, before handing the
//	                     record out (a large record's Check also when it
//	                     is freed, atomically, under the heap lock)
//	slab line 0          the handle that took the slab, before its first
//	                     record; Ident's magic by the returner
//	bitmap               freers (CAS), the retiring handle or reclaimer
//	Count                freers that complete a word, the retirer (CAS
//	                     expecting the generation); Recover (stalled
//	                     slabs, and its pin while it finishes a cut free)
//	Owner                the handle's process; a reclaimer (CAS from a
//	                     dead owner)
//	Retired              the retiring process
//	Returner             the process returning the slab (CAS from 0, or
//	                     from a dead returner)
//
// # Concurrency
//
// A Pool is safe for concurrent use. A Handle is not: one goroutine uses
// it at a time. Records may be freed by any goroutine of any process.
// Views stay valid while the record is live and the region mapped.
//
// # Crashes
//
// Slabs and large records carry their owner (in the heap's page map and
// in the slab header), so what a dead process allocated can be reclaimed:
// Pool.Reclaim for one dead process, Pool.Recover for all. Its active
// slabs are retired on its behalf (the allocation point is found by
// walking the valid record headers), and its live records are freed except
// those the caller keeps (records still queued in channels, or held by
// live processes), which are handed over: their slabs no longer name the
// dead process, and go back to the heap when the kept records are freed.
// KeepAll only retires and hands over. Slabs that a dead process took
// but never initialised, and slab returns whose returner died, are
// finished too — also one whose returner died inside the heap's critical
// section, after clearing the magic and before the heap freed the extent
// (Pool.returnCut; a slab's header is zeroed under the heap lock when it
// is taken, so a slab being made never looks like that). A freer killed
// between two bitmap words of one slot (a record over a word boundary,
// or a FreeBatch run) leaves the record partly free: its first word, which
// decides the free, set, a later one not. Pool.Recover finishes it
// (finishCutFrees), with the slab pinned by one more on its count so that
// its owner cannot start it over meanwhile; a live freer that was only
// slow finds its later words set and takes them as done. A freer of a
// large record killed inside the heap's critical section, the record's
// header marked freed and the heap's update not committed, leaves the
// extent allocated with no record in it: Pool.Recover frees it
// (finishCutLargeFrees; a large record's header place is zeroed under the
// heap lock when its extent is taken, so one being made never looks like
// that). A process killed
// within the few instructions between a word-completing CAS and the Count
// decrement leaves the count one above the bitmap: harmless while the
// slab is active (Check does not report it while a live owner has the
// slab, as a freer on its way looks the same), and once the slab is
// retired and all free, stalled. A process killed between the decrement
// to zero and claiming Returner, or in the middle of a retirement or of a
// restart, also leaves a slab that is retired and all free but not
// returned (stalled): Check reports it, and Pool.Recover returns it once
// it has stayed so, its count unchanged, for a few milliseconds.
//
// # Checks
//
// Pool.Check runs the heap's Check and then walks every slab and large
// record: headers against extents, every record slot all-free or
// all-live, the granules past the allocation point, Count against the
// bitmap (not above it in an active slab of a live owner), retired slabs
// that are free but were not returned, returns that a dead returner cut
// short (Pool.returnCut). It takes no lock and is exact when nobody
// allocates or frees.
package slab
