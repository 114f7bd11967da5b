// Package ipc is heapipc: shared-memory IPC for Go programs on one host.
//
// One named Buffer holds a shared heap, per-handle slabs and any number of
// channels, found by a user-chosen 64-bit id. Goroutines and processes
// that Open the same name share it; records travel between them without
// being copied.
//
//	buf, err := ipc.Open("pipeline", ipc.WithSize(256<<20))
//	h, err := buf.NewHandle()                  // one per goroutine
//	p, err := h.Producer(1)                    // record channel 1
//	r, err := h.Allocate(64)                   // a record in shared memory
//	copy(r.Bytes(), payload)
//	err = p.Send(ctx, r)                       // zero-copy
//
//	// in another goroutine or process:
//	c, err := h2.Consumer(1)
//	r, err := c.Receive(ctx)                   // io.EOF after the producer closes
//	use(r.Bytes())
//	err = h2.Free(r)                           // or send it on another channel
//
// # Coming from RaftLib's ipc
//
//	RaftLib ipc                      heapipc
//	initialize(name, size)           Open(name, WithSize(size))
//	get_tls_structure()              Buffer.NewHandle (one Handle per goroutine)
//	add_spsc_lf_record_channel(id)   Handle.Producer(id) / Handle.Consumer(id)
//	allocate_record(tls, size)       Handle.Allocate(size) (AllocateBatch)
//	send_record(tls, id, rec)        Producer.Send(ctx, rec) (TrySend, SendBatch, SendEach)
//	receive_record(tls, id)          Consumer.Receive(ctx) (TryReceive, ReceiveBatch, ReceiveEach)
//	free_record(tls, rec)            Handle.Free(rec) (FreeBatch; any handle of the holding process)
//	add_shared_segment(id, size)     Buffer.Static(ctx, name, size, init)
//	destruct()                       Buffer.Close (detach) / Buffer.Destroy (remove)
//
// Beyond RaftLib: a Pack (Handle.AllocatePack) is many payloads of one
// size in one record, allocated, sent, received and freed as one — the
// cheapest way to move many small payloads; Typed.AllocateSlice makes one
// of Go values, seen as a []T. Producer.SendEach and Consumer.ReceiveEach
// are the fused batch forms: the caller's func fills each record as it is
// allocated, or reads it before it is freed, in one pass over the batch —
// the least CPU per record, for streams whose records need not outlive
// the call; SendEachOf and ReceiveEachOf are the same for values of a
// pointer-free type T, each record one T seen in place as a *T.
//
// Differences that matter: records queued by a producer that closed before
// the consumer attached are delivered; a dead peer is reported
// (ErrPeerDead) instead of hanging; a record can be any size the heap can
// hold; blocking calls take a context and park on a futex instead of
// spinning forever; bad input gets an error, not undefined behaviour.
//
// # Concurrency
//
// A Buffer is safe for concurrent use. A Handle, and the Producer and
// Consumer ends it opened, belong to one goroutine at a time (WithDebug
// catches violations). Records may be freed from any goroutine or
// process. A record channel has one producer and one consumer: a second
// one gets ErrBusy while the first is alive, and takes over a dead one's
// end.
//
// # Lifetimes
//
// Record.Bytes and Static.Bytes are views into shared memory: valid until
// the record is freed (or removed with its channel) and never after the
// Buffer is closed. Close detaches this process; Destroy also removes the
// buffer's names, while processes still attached keep what they have
// mapped and see ErrDestroyed from blocked calls.
//
// # Errors
//
// Every documented condition has a sentinel in this package matched by
// errors.Is: ErrInvalidName, ErrInvalidSize, ErrNoSpace, ErrWrongType,
// ErrBusy, ErrPeerDead, ErrDestroyed, ErrCorrupt (a *CorruptError says
// where), and the rest listed with their comments.
package ipc
