package ipc

import (
	"context"
	"fmt"
	"hash/fnv"

	"github.com/heapipc/ipc/alloc"
	"github.com/heapipc/ipc/channel"
	"github.com/heapipc/ipc/internal/errs"
	"github.com/heapipc/ipc/internal/mem"
)

// Static is a named, fixed-size segment inside the buffer (RaftLib's
// add_shared_segment): the place for shared flags, counters (use the
// atomic views of StaticAt) and configuration blocks. Its bytes stay valid
// until the Buffer is closed in this process (Remove takes them away for
// everyone).
type Static struct {
	buf   *Buffer
	en    *channel.Entry
	name  string
	bytes []byte
}

// MaxStaticName is the longest static segment name.
const MaxStaticName = 56

// StaticID is the registry id of the static segment called name: a hash
// of the name with the top bit set (choose channel ids below 2^63 to stay
// clear of them). The name is stored too, so a collision is detected.
func StaticID(name string) ChannelID {
	h := fnv.New64a()
	h.Write([]byte("static/" + name))
	return channel.ID(h.Sum64() | 1<<63)
}

// Static creates the static segment called name with size bytes, running
// init on its zeroed bytes exactly once, before anyone else can attach, or
// attaches to it if it exists (init is not called then). Another size is
// ErrSizeMismatch. A creator that died inside init is detected: the
// segment is made anew. ctx bounds the wait for a live creator.
func (b *Buffer) Static(ctx context.Context, name string, size int, init func([]byte) error) (*Static, error) {
	if !b.in() {
		return nil, b.closedErr("static")
	}
	defer b.out()
	if err := b.check("static"); err != nil {
		return nil, err
	}
	if err := validateStaticName(name); err != nil {
		return nil, fmt.Errorf("ipc: static %q: %w", name, err)
	}
	if size <= 0 {
		return nil, fmt.Errorf("ipc: static %q: size %d: %w", name, size, ErrInvalidSize)
	}
	spec := channel.Spec{
		Type:    channel.TypeStatic,
		Name:    name,
		Size:    uint64(size),
		Control: uint64(size),
		Init: func(_ mem.Off, bytes []byte) error {
			if init == nil {
				return nil
			}
			return init(bytes)
		},
	}
	open := func(en *channel.Entry, _ bool) (*channel.Entry, error) {
		if en.Name != name {
			return nil, fmt.Errorf("its id belongs to %q: %w", en.Name, ErrKeyCollision)
		}
		if en.Size != uint64(size) {
			return nil, fmt.Errorf("it has %d bytes, %d asked: %w", en.Size, size, ErrSizeMismatch)
		}
		return en, nil
	}
	var bytes []byte
	en, _, err := attachChannel(ctx, b, StaticID(name), spec, open, func(en *channel.Entry, _ *channel.Entry) error {
		return b.reg.Attach(ctx, en, func() (err error) {
			bytes, err = b.staticView(en)
			return err
		})
	})
	if err != nil {
		return nil, fmt.Errorf("ipc: static %q: %w", name, err)
	}
	return &Static{buf: b, en: en, name: name, bytes: bytes}, nil
}

// AttachStatic attaches to an existing static segment of any size:
// ErrNotExist if there is none.
func (b *Buffer) AttachStatic(name string) (*Static, error) {
	if !b.in() {
		return nil, b.closedErr("attachstatic")
	}
	defer b.out()
	if err := b.check("static"); err != nil {
		return nil, err
	}
	if err := validateStaticName(name); err != nil {
		return nil, fmt.Errorf("ipc: static %q: %w", name, err)
	}
	en, err := b.reg.Lookup(StaticID(name))
	if err != nil {
		return nil, fmt.Errorf("ipc: static %q: %w", name, err)
	}
	if en.Type != channel.TypeStatic {
		return nil, fmt.Errorf("ipc: static %q: %w", name, ErrWrongType)
	}
	if en.Name != name {
		return nil, fmt.Errorf("ipc: static %q: its id belongs to %q: %w", name, en.Name, ErrKeyCollision)
	}
	// The view is taken while the entry is known to be the segment's: a
	// segment removed since the lookup has had its memory freed.
	var bytes []byte
	err = b.reg.Attach(context.Background(), en, func() (err error) {
		bytes, err = b.staticView(en)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("ipc: static %q: %w", name, err)
	}
	return &Static{buf: b, en: en, name: name, bytes: bytes}, nil
}

// staticView is the bytes of the static segment of en: the first en.Size
// bytes of its control block. The entry must name a published control
// block (alloc.KindControl, nobody's) that starts at en.Control and holds
// en.Size bytes; a damaged Control or Size is ErrCorrupt, never a view of
// another extent or past the segment's own.
func (b *Buffer) staticView(en *channel.Entry) ([]byte, error) {
	x, err := b.heap.Extent(en.Control)
	if err != nil {
		return nil, err
	}
	if x.Off != en.Control || x.Kind != alloc.KindControl || x.Owner != 0 {
		return nil, errs.Corrupt("registry entry.Control", uint64(en.Off)+24, "static %q names a %v extent at %#x owned by %v, not its control block", en.Name, x.Kind, uint64(x.Off), x.Owner)
	}
	if en.Size == 0 || en.Size > x.Size {
		return nil, errs.Corrupt("registry entry.Size", uint64(en.Off)+32, "static %q of %d bytes in a control block of %d", en.Name, en.Size, x.Size)
	}
	return b.heap.View(en.Control, en.Size)
}

func validateStaticName(name string) error {
	if name == "" || len(name) > MaxStaticName {
		return fmt.Errorf("static name of %d bytes (1..%d): %w", len(name), MaxStaticName, ErrInvalidName)
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '-' || c == '/') {
			return fmt.Errorf("static name %q has %q: %w", name, c, ErrInvalidName)
		}
	}
	return nil
}

// Name is the segment's name.
func (s *Static) Name() string { return s.name }

// Bytes are the segment's bytes in shared memory. They are valid while the
// segment is (see Valid): after a Remove, by any process, its memory may
// hold another allocation.
func (s *Static) Bytes() []byte { return s.bytes }

// Valid reports whether the segment is still there: false once it was
// removed, by this process or another.
func (s *Static) Valid() bool { return s.bytes != nil && s.en.Valid() }

// Remove deletes the static segment from the buffer for everyone and gives
// its memory back. Nobody may use its bytes afterwards.
func (s *Static) Remove(ctx context.Context) error {
	if !s.buf.in() {
		return s.buf.closedErr("remove static")
	}
	defer s.buf.out()
	removed, err := s.buf.reg.Remove(ctx, s.en, nil, nil)
	if err != nil {
		return fmt.Errorf("ipc: remove static %q: %w", s.name, err)
	}
	if !removed {
		return fmt.Errorf("ipc: remove static %q: %w", s.name, ErrNotExist)
	}
	s.bytes = nil
	return nil
}

// StaticAt returns a *T at byte offset off of the segment (bounds and
// alignment checked). T must hold no pointers: fixed-size numbers, arrays
// and structs of them, and sync/atomic types for fields several processes
// update.
func StaticAt[T any](s *Static, off int) (*T, error) {
	if err := checkPlain[T](); err != nil {
		return nil, err
	}
	if off < 0 {
		return nil, fmt.Errorf("ipc: static %q: offset %d: %w", s.name, off, ErrInvalidArgument)
	}
	if !s.Valid() {
		return nil, fmt.Errorf("ipc: static %q was removed: %w", s.name, ErrNotExist)
	}
	return mem.At[T](s.bytes, mem.Off(off))
}

// StaticAtBytes is StaticAt for the bytes an init function is given.
func StaticAtBytes[T any](b []byte) (*T, error) {
	if err := checkPlain[T](); err != nil {
		return nil, err
	}
	return mem.At[T](b, 0)
}
