package backend

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"os"
	"structs"
	"sync/atomic"
	"time"

	"github.com/heapipc/ipc/internal/errs"
	"github.com/heapipc/ipc/internal/mem"
	"github.com/heapipc/ipc/internal/sys"
)

// LayoutVersion is the version of every shared structure heapipc lays out.
// A buffer of another version is refused with ErrVersion, never
// reinterpreted. Bump it whenever any shared layout changes (3: record
// channel slots carry the payload length, and record trailers are 16-byte
// aligned; 4: channel control blocks are extents of their own kind,
// alloc.KindControl; 5: a record channel's control block says since
// when its producer end sends, ProdSince; 6: an MPSC ring's consumer
// moves Head only and its slots carry the payload length, and a stream's
// Reader and RClosed words moved to the line of Gen; 7: the region header
// records the creator's pid namespace, PidNS; 8: a record queued in a
// channel says so in its trailer, a large record's header carries an
// incarnation, and SysV segments carry a size mark; 9: a record's
// trailer carries its hand, the number of sends it went through).
const LayoutVersion = 9

// Magic is "HEAPIPC\x01" read as a little-endian word.
var Magic = binary.LittleEndian.Uint64([]byte("HEAPIPC\x01"))

// Region geometry.
const (
	DefaultPageSize = 4096
	MinPageSize     = 4096
	MaxPageSize     = 1 << 24
	// ExtOffset is where the extension area for the layers above starts;
	// it ends at the data offset (one page).
	ExtOffset = 512
	// checksummed is the length of the immutable prefix of the header.
	checksummed = 208
	// DefaultReadyTimeout bounds how long an attacher waits for a live
	// creator to publish.
	DefaultReadyTimeout = 10 * time.Second
)

// State is the life-cycle word of a region (and of channels above it).
type State uint32

// Region states. A zero state word means the header is not written yet.
const (
	StateInitializing State = 1
	StateReady        State = 2
	StateDestroyed    State = 3
)

func (s State) String() string {
	switch s {
	case 0:
		return "unwritten"
	case StateInitializing:
		return "initializing"
	case StateReady:
		return "ready"
	case StateDestroyed:
		return "destroyed"
	}
	return fmt.Sprintf("state(%d)", uint32(s))
}

// header is the first 384 bytes of every region. The creator writes every
// field before publishing; nobody writes them after, except State.
type header struct {
	_          structs.HostLayout
	Magic      uint64           // 0: Magic
	Version    uint32           // 9: LayoutVersion
	HeaderSize uint32           // 12: bytes before the data region (= DataOffset)
	SegKind    uint8            // 16: Kind.code() of the segment backend
	SemKind    uint8            // 17: Kind.code() of the semaphore backend
	_          [2]uint8         // 18
	PageSize   uint32           // 20
	TotalSize  uint64           // 24: bytes in the segment
	DataOffset uint64           // 32: first byte of the data region, page aligned
	DataSize   uint64           // 40: bytes in the data region
	Creator    uint64           // 48: sys.Identity of the creator
	CreatedNs  int64            // 56: creation time, Unix ns
	NameLen    uint32           // 64
	Mode       uint32           // 68: permission of the segment, and of the semaphores the layers above make
	Name       [MaxNameLen]byte // 72
	PidNS      uint64           // 200: the creator's pid namespace (sys.PidNamespace; 0: unknown)
	Checksum   uint32           // 208: CRC-32C of bytes [0,208)
	_          [44]byte         // 212
	State      atomic.Uint32    // 256: State; any attached process may write destroyed
	_          [124]byte        // 260
}

const headerSize = 384

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// Mode says whether OpenRegion may create, attach, or both.
type Mode int

const (
	CreateOrAttach Mode = iota // create if absent, attach otherwise
	CreateOnly                 // fail with ErrExist if the region exists
	AttachOnly                 // fail with ErrNotExist if it does not
)

// RegionConfig describes the region to create or the expectations of an
// attacher. Zero values mean defaults.
type RegionConfig struct {
	Segments   Kind        // segment backend; "" = DefaultSegmentKind()
	Semaphores Kind        // semaphore backend recorded in the header; "" = default (attach-only: the header's)
	Size       int64       // total bytes (rounded up to pages); 0 = attach only, any size
	PageSize   int         // power of two in [MinPageSize, MaxPageSize]; 0 = 4096, or any on attach
	Mode       os.FileMode // permission of a created segment; 0 = 0600
	Open       Mode
	// ReadyTimeout bounds the wait for a live creator to publish
	// (default DefaultReadyTimeout).
	ReadyTimeout time.Duration
}

// Region is a segment with a validated heapipc header.
type Region struct {
	seg     Segment
	b       []byte // the mapping cut to the header's total size, once
	hdr     *header
	fix     fixed
	created bool
	closing atomic.Bool // this process is closing the region: Closing
}

// fixed is the header's immutable fields as they were when the region was
// created or validated on attach. Accessors answer from it, never from the
// shared header again: a damaged or hostile peer may overwrite the header
// later, and a size read again from it would cut slices out of range.
type fixed struct {
	totalSize, dataOffset uint64
	pageSize, mode        uint32
	segKind, semKind      uint8
	creator               uint64
	createdNs             int64
}

func newRegion(seg Segment, b []byte, h *header, created bool) *Region {
	f := fixed{totalSize: h.TotalSize, dataOffset: h.DataOffset, pageSize: h.PageSize, mode: h.Mode,
		segKind: h.SegKind, semKind: h.SemKind, creator: h.Creator, createdNs: h.CreatedNs}
	return &Region{seg: seg, b: b[:f.totalSize:f.totalSize], hdr: h, fix: f, created: created}
}

// OpenRegion creates or attaches the region called name. When this call
// creates it, init runs on the region while its state is initializing,
// before anyone else can use it; an init error removes the region again.
// Attachers wait (bounded) for the creator to publish; a region whose
// creator died while initializing, or one marked destroyed whose name is
// still there, is removed and created anew (an attach-only open says
// ErrStale or ErrDestroyed).
func OpenRegion(name string, cfg RegionConfig, init func(*Region) error) (*Region, error) {
	if err := ValidateName(name); err != nil {
		return nil, fmt.Errorf("open region: %w", err)
	}
	cfg, err := cfg.normalize()
	if err != nil {
		return nil, fmt.Errorf("open region %q: %w", name, err)
	}
	segs, err := Segments(cfg.Segments)
	if err != nil {
		return nil, err
	}
	if cfg.Semaphores != "" {
		if _, err := Semaphores(cfg.Semaphores); err != nil {
			return nil, err
		}
	}
	var lastErr error
	for attempt := 0; attempt < 4; attempt++ {
		if cfg.Open != AttachOnly {
			if cfg.Size == 0 {
				if cfg.Open == CreateOnly {
					return nil, fmt.Errorf("create region %q: size 0: %w", name, ErrInvalidSize)
				}
			} else {
				r, err := createRegion(segs, name, cfg, init)
				if err == nil || !errors.Is(err, ErrExist) || cfg.Open == CreateOnly {
					return r, err
				}
			}
		}
		seg, err := segs.Attach(name)
		if errors.Is(err, ErrNotExist) && cfg.Open == CreateOrAttach && cfg.Size != 0 {
			lastErr = err
			continue // removed between our create and attach: try again
		}
		if err != nil {
			return nil, fmt.Errorf("attach region: %w", err)
		}
		r, err := attachRegion(seg, name, cfg)
		if err == nil {
			return r, nil
		}
		if (errors.Is(err, ErrStale) || errors.Is(err, ErrDestroyed)) && cfg.Open != AttachOnly && cfg.Size != 0 {
			// Remove the dead creator's leftover, or the name of a
			// region destroyed whose destroyer has not removed it yet
			// (or died before it did: the name would stay taken), if
			// nobody has yet, and create anew. The unlink is of this
			// segment only (Segment.Unlink); processes still attached
			// keep what they have mapped, as Destroy promises.
			seg.Unlink()
			seg.Close()
			lastErr = err
			continue
		}
		seg.Close()
		return nil, err
	}
	return nil, fmt.Errorf("open region %q: gave up after repeated races: %w", name, lastErr)
}

func (cfg RegionConfig) normalize() (RegionConfig, error) {
	if cfg.Segments == "" {
		cfg.Segments = DefaultSegmentKind()
	}
	if cfg.Semaphores == "" && cfg.Open != AttachOnly {
		// An attach-only open with no semaphore kind accepts the
		// header's (Region.SemaphoreKind).
		cfg.Semaphores = DefaultSemaphoreKind()
	}
	if cfg.ReadyTimeout <= 0 {
		cfg.ReadyTimeout = DefaultReadyTimeout
	}
	if cfg.PageSize != 0 && (cfg.PageSize < MinPageSize || cfg.PageSize > MaxPageSize || cfg.PageSize&(cfg.PageSize-1) != 0) {
		return cfg, fmt.Errorf("page size %d (want a power of two in [%d, %d]): %w", cfg.PageSize, MinPageSize, MaxPageSize, ErrInvalidSize)
	}
	if cfg.Size < 0 {
		return cfg, fmt.Errorf("size %d: %w", cfg.Size, ErrInvalidSize)
	}
	if cfg.Size > 0 {
		ps := int64(cfg.PageSize)
		if ps == 0 {
			ps = DefaultPageSize
		}
		if cfg.Size > maxSegmentSize {
			return cfg, fmt.Errorf("size %d (at most %d): %w", cfg.Size, int64(maxSegmentSize), ErrInvalidSize)
		}
		cfg.Size = (cfg.Size + ps - 1) / ps * ps
		if cfg.Size < 2*ps {
			cfg.Size = 2 * ps // the header page and at least one data page
		}
	}
	return cfg, nil
}

func createRegion(segs SegmentBackend, name string, cfg RegionConfig, init func(*Region) error) (*Region, error) {
	ps := cfg.PageSize
	if ps == 0 {
		ps = DefaultPageSize
	}
	fill := func(b []byte) error {
		h, err := mem.At[header](b, 0)
		if err != nil {
			return err
		}
		h.Version = LayoutVersion
		h.HeaderSize = uint32(ps)
		h.SegKind = cfg.Segments.code()
		h.SemKind = cfg.Semaphores.code()
		h.PageSize = uint32(ps)
		h.TotalSize = uint64(cfg.Size)
		h.DataOffset = uint64(ps)
		h.DataSize = uint64(cfg.Size) - uint64(ps)
		h.Creator = uint64(sys.Self())
		h.PidNS = sys.PidNamespace()
		h.CreatedNs = time.Now().UnixNano()
		h.NameLen = uint32(len(name))
		copy(h.Name[:], name)
		h.Mode = uint32(cfg.Mode.Perm())
		if h.Mode == 0 {
			h.Mode = uint32(DefaultMode)
		}
		h.State.Store(uint32(StateInitializing))
		// The magic goes last: on sysv, where the segment is visible
		// while this runs, a nonzero magic means the rest is written.
		atomicMagic(b).Store(Magic)
		h.Checksum = crc32.Checksum(b[:checksummed], castagnoli)
		return nil
	}
	seg, err := segs.Create(name, cfg.Size, cfg.Mode, fill)
	if err != nil {
		return nil, fmt.Errorf("create region: %w", err)
	}
	r := newRegion(seg, seg.Bytes(), mem.MustAt[header](seg.Bytes(), 0), true)
	if init != nil {
		if err := init(r); err != nil {
			r.hdr.State.Store(uint32(StateDestroyed))
			Wake(&r.hdr.State, 0)
			seg.Unlink()
			seg.Close()
			return nil, fmt.Errorf("create region %q: init: %w", name, err)
		}
	}
	r.hdr.State.Store(uint32(StateReady))
	Wake(&r.hdr.State, 0)
	return r, nil
}

func atomicMagic(b []byte) *atomic.Uint64 { return mem.MustAt[atomic.Uint64](b, 0) }

// attachRegion waits for the region to be ready and validates it. It
// returns an error wrapping ErrStale when the creator died before
// publishing.
func attachRegion(seg Segment, name string, cfg RegionConfig) (*Region, error) {
	b := seg.Bytes()
	fail := func(err error) (*Region, error) { return nil, fmt.Errorf("attach region %q: %w", name, err) }
	if len(b) < headerSize {
		return fail(fmt.Errorf("segment of %d bytes is too small for a header: %w", len(b), ErrNotHeapIPC))
	}
	h := mem.MustAt[header](b, 0)
	deadline := time.Now().Add(cfg.ReadyTimeout)
	for {
		m := atomicMagic(b).Load()
		if m == 0 {
			// sysv: the creator has not written the header yet.
			if pid := seg.CreatorPID(); pid != 0 && !sys.AlivePID(pid) {
				return fail(fmt.Errorf("creator pid %d died before writing the header: %w", pid, ErrStale))
			}
			if time.Now().After(deadline) {
				return fail(fmt.Errorf("header still unwritten after %v: %w", cfg.ReadyTimeout, ErrNotReady))
			}
			time.Sleep(time.Millisecond)
			continue
		}
		if m != Magic {
			return fail(fmt.Errorf("magic %#x: %w", m, ErrNotHeapIPC))
		}
		if h.Version != LayoutVersion {
			return fail(fmt.Errorf("layout version %d, this library reads %d: %w", h.Version, LayoutVersion, ErrVersion))
		}
		// Before anything judges the creator's liveness: from another
		// pid namespace it would be judged wrong.
		if err := samePidNamespace(h.PidNS); err != nil {
			return fail(err)
		}
		st := State(h.State.Load())
		switch st {
		case StateReady:
			if err := validateHeader(b, h, name, seg.Kind(), cfg); err != nil {
				return fail(err)
			}
			return newRegion(seg, b, h, false), nil
		case StateDestroyed:
			return fail(ErrDestroyed)
		case StateInitializing:
			if !sys.Alive(sys.Identity(h.Creator)) {
				return fail(fmt.Errorf("creator %v died while initializing: %w", sys.Identity(h.Creator), ErrStale))
			}
			left := time.Until(deadline)
			if left <= 0 {
				return fail(fmt.Errorf("creator %v still initializing after %v: %w", sys.Identity(h.Creator), cfg.ReadyTimeout, ErrNotReady))
			}
			futexWait(&h.State, uint32(StateInitializing), min(left, 20*time.Millisecond))
		default:
			return fail(errs.Corrupt("header.State", 256, "unknown state %d", uint32(st)))
		}
	}
}

// samePidNamespace refuses a region made in another pid namespace than
// this process's (ns, from its header; 0 on either side: unknown, allowed).
// Every liveness judgement in a buffer (a dead peer, a stale lock, a
// creator that died while initializing) reads pids, and a pid means
// another process, or none, in another namespace: a live peer would be
// taken for dead and its records freed under it. Such sharing happens
// when /dev/shm or the IPC namespace is shared and the pid namespace is
// not (a container run with the host's IPC, the containers of a pod).
func samePidNamespace(ns uint64) error {
	self := sys.PidNamespace()
	if ns == 0 || self == 0 || ns == self {
		return nil
	}
	return fmt.Errorf("made in pid namespace %d, attached from %d: heapipc tells live peers from dead ones by pid, which is not shared across pid namespaces: %w", ns, self, ErrNotSupported)
}

func validateHeader(b []byte, h *header, name string, segKind Kind, cfg RegionConfig) error {
	if sum := crc32.Checksum(b[:checksummed], castagnoli); sum != h.Checksum {
		return errs.Corrupt("header.Checksum", checksummed, "checksum %#x, fields sum to %#x", h.Checksum, sum)
	}
	if h.NameLen > MaxNameLen || string(h.Name[:h.NameLen]) != name {
		n := min(h.NameLen, MaxNameLen)
		if segKind == SysV {
			return fmt.Errorf("segment belongs to %q: %w", h.Name[:n], ErrKeyCollision)
		}
		return errs.Corrupt("header.Name", 72, "name %q, attached as %q", h.Name[:n], name)
	}
	ps := uint64(h.PageSize)
	if ps < MinPageSize || ps > MaxPageSize || ps&(ps-1) != 0 {
		return errs.Corrupt("header.PageSize", 20, "page size %d", ps)
	}
	if uint64(h.HeaderSize) != h.DataOffset || h.DataOffset != ps {
		return errs.Corrupt("header.DataOffset", 32, "data offset %d, header size %d, page size %d", h.DataOffset, h.HeaderSize, ps)
	}
	if h.TotalSize > uint64(len(b)) || h.TotalSize%ps != 0 || h.TotalSize < 2*ps {
		return errs.Corrupt("header.TotalSize", 24, "total size %d, mapping %d bytes, page size %d", h.TotalSize, len(b), ps)
	}
	if h.DataSize != h.TotalSize-h.DataOffset {
		return errs.Corrupt("header.DataSize", 40, "data size %d, total %d, offset %d", h.DataSize, h.TotalSize, h.DataOffset)
	}
	if k := kindOf(h.SegKind); k != segKind || k != cfg.Segments {
		return fmt.Errorf("made with %s segments, opened as %s: %w", k, cfg.Segments, ErrBackendMismatch)
	}
	if k := kindOf(h.SemKind); cfg.Semaphores != "" && k != cfg.Semaphores {
		return fmt.Errorf("made with %s semaphores, opened with %s: %w", k, cfg.Semaphores, ErrBackendMismatch)
	}
	if cfg.Size != 0 && uint64(cfg.Size) != h.TotalSize {
		return fmt.Errorf("region has %d bytes, %d asked: %w", h.TotalSize, cfg.Size, ErrSizeMismatch)
	}
	if cfg.PageSize != 0 && uint64(cfg.PageSize) != ps {
		return fmt.Errorf("region has %d-byte pages, %d asked: %w", ps, cfg.PageSize, ErrSizeMismatch)
	}
	return nil
}

// Name is the region's name.
func (r *Region) Name() string { return r.seg.Name() }

// Created reports whether this Open created the region.
func (r *Region) Created() bool { return r.created }

// Segment is the underlying segment.
func (r *Region) Segment() Segment { return r.seg }

// Bytes is the whole mapping, header included.
func (r *Region) Bytes() []byte { return r.b }

// DataOffset is where the data region starts in Bytes.
func (r *Region) DataOffset() mem.Off { return mem.Off(r.fix.dataOffset) }

// Data is the data region, for the allocator.
func (r *Region) Data() []byte { return r.b[r.fix.dataOffset:] }

// Ext is the extension area of the header page, for the layers above.
func (r *Region) Ext() []byte { return r.b[ExtOffset:r.fix.dataOffset] }

// PageSize is the page size recorded in the header.
func (r *Region) PageSize() int { return int(r.fix.pageSize) }

// SegmentKind and SemaphoreKind are the backends recorded in the header.
func (r *Region) SegmentKind() Kind   { return kindOf(r.fix.segKind) }
func (r *Region) SemaphoreKind() Kind { return kindOf(r.fix.semKind) }

// Mode is the permission the region was created with (0600 by default).
func (r *Region) Mode() os.FileMode {
	if m := os.FileMode(r.fix.mode).Perm(); m != 0 {
		return m
	}
	return DefaultMode
}

// Semaphores returns the region's semaphore backend, creating semaphores
// with the region's mode unless told otherwise: the layers above name
// their semaphores after the region, and whoever may open the region must
// be able to open them.
func (r *Region) Semaphores() (SemaphoreBackend, error) {
	sems, err := Semaphores(r.SemaphoreKind())
	if err != nil {
		return nil, err
	}
	return modeSemaphores{sems, r.Mode()}, nil
}

type modeSemaphores struct {
	SemaphoreBackend
	mode os.FileMode
}

func (m modeSemaphores) Create(name string, value int, opts SemOptions) (Semaphore, error) {
	if opts.Mode == 0 {
		opts.Mode = m.mode
	}
	return m.SemaphoreBackend.Create(name, value, opts)
}

// Creator is the identity of the process that created the region.
func (r *Region) Creator() sys.Identity { return sys.Identity(r.fix.creator) }

// CreatedAt is when the region was created.
func (r *Region) CreatedAt() time.Time { return time.Unix(0, r.fix.createdNs) }

// State is the region's state word.
func (r *Region) State() State { return State(r.hdr.State.Load()) }

// MarkDestroyed sets the state to destroyed and wakes everyone parked on
// the state word: processes still attached learn the region is going away.
func (r *Region) MarkDestroyed() {
	r.hdr.State.Store(uint32(StateDestroyed))
	Wake(&r.hdr.State, 0)
}

// SetClosing marks the region as being closed by this process: its
// blocking calls still in progress return errs.ErrClosed at their next
// check (Closing), so that the closer can wait for them before it unmaps.
func (r *Region) SetClosing() { r.closing.Store(true) }

// Closing reports whether this process is closing the region (SetClosing).
func (r *Region) Closing() bool { return r.closing.Load() }

// Close unmaps the region.
func (r *Region) Close() error { return r.seg.Close() }

// Unlink removes the region's name if it still refers to this region.
func (r *Region) Unlink() error { return r.seg.Unlink() }
