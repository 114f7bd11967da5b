//go:build linux

package backend

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/heapipc/ipc/internal/mem"
	"github.com/heapipc/ipc/internal/sys"
)

type sysvSegments struct{}

// A heapipc SysV segment is marked by its size, which the kernel records
// at shmget (shm_segsz) and nothing can change: its bytes, rounded up to
// whole 4 KiB, and sysvSizeMark more. So a segment under a name's key
// that another program made (keys are hashes) is told from one of ours
// before its header is read, and in particular from one whose creator
// died before it wrote the header: that one is stale and removed, the
// other program's (which may well be all zeroes, its creator gone) is
// ErrNotHeapIPC and left alone. The mark's bytes are mapped (in the last
// page) and never used.
const (
	sysvPage     = 4096
	sysvSizeMark = 0x1d3 // odd, not a multiple of anything a program would round to
)

// sysvSegSize is the shm_segsz of a heapipc segment of size bytes.
func sysvSegSize(size int64) int64 { return (size+sysvPage-1)/sysvPage*sysvPage + sysvSizeMark }

// sysvDataSize is how many bytes of a segment of shm_segsz segsz are the
// heapipc segment's; ok false: segsz has no mark (not a heapipc segment).
func sysvDataSize(segsz uint64) (uint64, bool) {
	if segsz%sysvPage != sysvSizeMark {
		return 0, false
	}
	return segsz - sysvSizeMark, true
}

// sysvAttach maps segment id, which must carry the mark, and returns its
// heapipc bytes (op and name for errors).
func sysvAttach(op, name string, id int) ([]byte, error) {
	info, err := sys.ShmStat(id)
	if err != nil {
		return nil, goneError(op, name, err)
	}
	n, ok := sysvDataSize(info.Size)
	if !ok {
		return nil, fmt.Errorf("%s %q: segment of %d bytes, not the size of a heapipc segment: %w", op, name, info.Size, ErrNotHeapIPC)
	}
	b, err := sys.ShmAttach(id)
	if err != nil {
		return nil, goneError(op, name, err)
	}
	return b[:n:n], nil
}

func (sysvSegments) Kind() Kind { return SysV }

func (sysvSegments) Create(name string, size int64, mode os.FileMode, fill func([]byte) error) (Segment, error) {
	if err := ValidateObjectName(name); err != nil {
		return nil, err
	}
	if err := checkSegmentSize(size); err != nil {
		return nil, err
	}
	const op = "create sysv segment"
	id, err := sys.ShmGet(SysVKey("shm", name), int(sysvSegSize(size)), sys.IPCCreat|sys.IPCExcl|int(modeOr(mode)))
	if err != nil {
		if errors.Is(err, syscall.EINVAL) {
			return nil, fmt.Errorf("%s %q: size %d outside the kernel's limits (kernel.shmmax, kernel.shmall): %w", op, name, size, ErrInvalidSize)
		}
		return nil, osError(op, name, err)
	}
	b, err := sys.ShmAttach(id)
	if err != nil {
		sys.ShmRemove(id)
		return nil, osError(op, name, err)
	}
	n := (size + sysvPage - 1) / sysvPage * sysvPage
	b = b[:n:n]
	if fill != nil {
		if err := fill(b); err != nil {
			sys.ShmDetach(b)
			sys.ShmRemove(id)
			return nil, err
		}
	}
	return &sysvSegment{name: name, id: id, b: b}, nil
}

func (sysvSegments) Attach(name string) (Segment, error) {
	if err := ValidateObjectName(name); err != nil {
		return nil, err
	}
	const op = "attach sysv segment"
	id, err := sys.ShmGet(SysVKey("shm", name), 0, 0)
	if err != nil {
		return nil, osError(op, name, err)
	}
	b, err := sysvAttach(op, name, id)
	if err != nil {
		return nil, err
	}
	return &sysvSegment{name: name, id: id, b: b}, nil
}

// goneError is osError for a call on an id that shmget or semget just
// returned: EINVAL or EIDRM there mean that the object was removed in
// between, which is ErrNotExist (an Open racing a Destroy creates anew).
func goneError(op, name string, err error) error {
	if errors.Is(err, syscall.EINVAL) || errors.Is(err, syscall.EIDRM) {
		return fmt.Errorf("%s %q: removed meanwhile: %w (%w)", op, name, ErrNotExist, err)
	}
	return osError(op, name, err)
}

// segmentNamed checks, before a removal by name, that the segment id
// under the name's key is that name's region: a region header with the
// name, or no header yet and a dead creator (one killed before it wrote
// the header: stale). A key is a hash of the name, so another name's
// region (ErrKeyCollision) or another program's segment (ErrNotHeapIPC:
// no size mark, or a header that is not a region's) can hold it; a
// segment whose live creator has not written its header yet is
// ErrNotReady.
func segmentNamed(id int, name string) error {
	const op = "remove sysv segment"
	b, err := sysvAttach(op, name, id)
	if err != nil {
		return err
	}
	defer sys.ShmDetach(b)
	fail := func(err error) error { return fmt.Errorf("%s %q: %w", op, name, err) }
	if len(b) < headerSize {
		return fail(fmt.Errorf("segment of %d bytes: %w", len(b), ErrNotHeapIPC))
	}
	switch m := atomicMagic(b).Load(); m {
	case 0:
		info, err := sys.ShmStat(id)
		if err != nil {
			return goneError(op, name, err)
		}
		if info.CreatorPID != 0 && sys.AlivePID(info.CreatorPID) {
			return fail(fmt.Errorf("segment being made by pid %d: %w", info.CreatorPID, ErrNotReady))
		}
		return nil
	case Magic:
		h := mem.MustAt[header](b, 0)
		if n := h.NameLen; n > MaxNameLen || string(h.Name[:n]) != name {
			return fail(fmt.Errorf("segment belongs to %q: %w", h.Name[:min(n, MaxNameLen)], ErrKeyCollision))
		}
		return nil
	default:
		return fail(fmt.Errorf("magic %#x: %w", m, ErrNotHeapIPC))
	}
}

func (sysvSegments) Remove(name string) error {
	if err := ValidateObjectName(name); err != nil {
		return err
	}
	id, err := sys.ShmGet(SysVKey("shm", name), 0, 0)
	if err != nil {
		return osError("remove sysv segment", name, err)
	}
	if err := segmentNamed(id, name); err != nil {
		return err
	}
	return goneError("remove sysv segment", name, sys.ShmRemove(id))
}

type sysvSegment struct {
	name string
	id   int
	mu   sync.Mutex
	b    []byte
}

func (s *sysvSegment) Name() string { return s.name }
func (s *sysvSegment) Kind() Kind   { return SysV }

// ID is the kernel's shmid.
func (s *sysvSegment) ID() int { return s.id }

func (s *sysvSegment) Bytes() []byte {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b
}

func (s *sysvSegment) CreatorPID() int {
	info, err := sys.ShmStat(s.id)
	if err != nil {
		return 0
	}
	return info.CreatorPID
}

func (s *sysvSegment) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.b == nil {
		return nil
	}
	err := sys.ShmDetach(s.b)
	s.b = nil
	return osError("close sysv segment", s.name, err)
}

// Unlink removes the segment by its id, which no later segment of the
// same name can have.
func (s *sysvSegment) Unlink() error {
	err := sys.ShmRemove(s.id)
	if errors.Is(err, syscall.EINVAL) || errors.Is(err, syscall.EIDRM) {
		return nil // already removed
	}
	return osError("unlink sysv segment", s.name, err)
}

// A heapipc SysV semaphore is a set of two: [0] holds the value, [1] a tag
// derived from the name, set last by the creator. Attachers wait for a
// nonzero tag (initialised) and compare it (key collisions).
const (
	sysvSemMax     = 32767 // SEMVMX
	sysvReadyWait  = 2 * time.Second
	sysvWaitSlice  = 10 * time.Millisecond
	sysvSemsPerSet = 2
	sysvSpin       = 40 // non-blocking attempts before a blocking wait
)

func sysvTag(name string) int {
	h := fnv.New32a()
	h.Write([]byte("heapipc-tag/" + name))
	return 1 + int(h.Sum32()%(sysvSemMax-1))
}

type sysvSemaphores struct{}

func (sysvSemaphores) Kind() Kind    { return SysV }
func (sysvSemaphores) MaxValue() int { return sysvSemMax }

func (sysvSemaphores) Create(name string, value int, opts SemOptions) (Semaphore, error) {
	if err := ValidateObjectName(name); err != nil {
		return nil, err
	}
	const op = "create sysv semaphore"
	if value < 0 || value > sysvSemMax {
		return nil, fmt.Errorf("%s %q: value %d outside [0,%d]: %w", op, name, value, sysvSemMax, ErrInvalidArgument)
	}
	for _, v := range opts.Data {
		if v < 0 || v > sysvSemMax {
			return nil, fmt.Errorf("%s %q: data value %d outside [0,%d]: %w", op, name, v, sysvSemMax, ErrInvalidArgument)
		}
	}
	id, err := sys.SemGet(SysVKey("sem", name), sysvSemsPerSet+len(opts.Data), sys.IPCCreat|sys.IPCExcl|int(modeOr(opts.Mode)))
	if err != nil {
		if errors.Is(err, syscall.EEXIST) {
			// Another name's set under the key is not this name's
			// stale one (which callers remove and make again).
			if _, terr := semNamed(name); errors.Is(terr, ErrKeyCollision) {
				return nil, fmt.Errorf("%s %q: %w", op, name, terr)
			}
		}
		return nil, osError(op, name, err)
	}
	if err := sys.SemSetVal(id, 0, value); err != nil {
		sys.SemRemove(id)
		return nil, osError(op, name, err)
	}
	for i, v := range opts.Data {
		if err := sys.SemSetVal(id, sysvSemsPerSet+i, v); err != nil {
			sys.SemRemove(id)
			return nil, osError(op, name, err)
		}
	}
	// The tag last: it says the set is made (Open waits for it).
	if err := sys.SemSetVal(id, 1, sysvTag(name)); err != nil {
		sys.SemRemove(id)
		return nil, osError(op, name, err)
	}
	return newSysvSem(name, id, opts.Undo), nil
}

func (sysvSemaphores) Open(name string, opts SemOptions) (Semaphore, error) {
	if err := ValidateObjectName(name); err != nil {
		return nil, err
	}
	const op = "open sysv semaphore"
	id, err := sys.SemGet(SysVKey("sem", name), sysvSemsPerSet, 0)
	if err != nil {
		if errors.Is(err, syscall.EINVAL) {
			return nil, fmt.Errorf("%s %q: the key's set is not a heapipc semaphore: %w", op, name, ErrKeyCollision)
		}
		return nil, osError(op, name, err)
	}
	want := sysvTag(name)
	deadline := time.Now().Add(sysvReadyWait)
	for {
		tag, err := sys.SemGetVal(id, 1)
		if err != nil {
			return nil, goneError(op, name, err)
		}
		if tag == want {
			return newSysvSem(name, id, opts.Undo), nil
		}
		if tag != 0 {
			return nil, fmt.Errorf("%s %q: the key belongs to another name (tag %d, want %d): %w", op, name, tag, want, ErrKeyCollision)
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("%s %q: the set was never initialised: %w", op, name, ErrNotReady)
		}
		time.Sleep(time.Millisecond)
	}
}

func (sysvSemaphores) Remove(name string) error {
	if err := ValidateObjectName(name); err != nil {
		return err
	}
	id, err := semNamed(name)
	if err != nil {
		return fmt.Errorf("remove sysv semaphore %q: %w", name, err)
	}
	return goneError("remove sysv semaphore", name, sys.SemRemove(id))
}

// semNamed returns the id of the set under name's key if it is that
// name's semaphore (its tag, or no tag yet: being made, or left so by a
// creator that died); another name's set (ErrKeyCollision: keys are
// hashes of names) or another program's is not removed.
func semNamed(name string) (int, error) {
	id, err := sys.SemGet(SysVKey("sem", name), sysvSemsPerSet, 0)
	if err != nil {
		if errors.Is(err, syscall.EINVAL) {
			return 0, fmt.Errorf("the key's set is not a heapipc semaphore: %w", ErrKeyCollision)
		}
		return 0, osError("sysv semaphore", name, err)
	}
	tag, err := sys.SemGetVal(id, 1)
	if err != nil {
		return 0, goneError("sysv semaphore", name, err)
	}
	if want := sysvTag(name); tag != want && tag != 0 {
		return 0, fmt.Errorf("the key belongs to another name (tag %d, want %d): %w", tag, want, ErrKeyCollision)
	}
	return id, nil
}

// SysVSemSet is a sysv semaphore set SysVSemSets found: its key, id and
// the Data it was created with.
type SysVSemSet struct {
	Key  int32
	ID   int
	Data []int
}

// SysVSemSets lists the sysv semaphore sets of this IPC namespace, as far
// as this process may read them, that a heapipc semaphore created with n
// Data values would be (n values after the value and the tag) and that
// are made (their tag set). A set is another program's, or another
// name's, unless its key and tag are those of a name the caller derives
// from the Data: Remove by that name checks both.
func SysVSemSets(n int) ([]SysVSemSet, error) {
	f, err := os.ReadFile("/proc/sysvipc/sem")
	if err != nil {
		return nil, fmt.Errorf("list sysv semaphores: %w", err)
	}
	var out []SysVSemSet
	lines := strings.Split(string(f), "\n")
	for _, line := range lines[min(1, len(lines)):] { // after the heading
		fs := strings.Fields(line)
		if len(fs) < 4 {
			continue
		}
		key, err1 := strconv.ParseInt(fs[0], 10, 32)
		id, err2 := strconv.Atoi(fs[1])
		nsems, err3 := strconv.Atoi(fs[3])
		if err1 != nil || err2 != nil || err3 != nil || nsems != sysvSemsPerSet+n || key == 0 {
			continue
		}
		if tag, err := sys.SemGetVal(id, 1); err != nil || tag == 0 {
			continue // gone, not ours to read, or not made yet
		}
		set := SysVSemSet{Key: int32(key), ID: id, Data: make([]int, n)}
		ok := true
		for i := range n {
			v, err := sys.SemGetVal(id, sysvSemsPerSet+i)
			if err != nil {
				ok = false
				break
			}
			set.Data[i] = v
		}
		if ok {
			out = append(out, set)
		}
	}
	return out, nil
}

type sysvSem struct {
	name   string
	id     int
	undo   bool
	closed atomic.Bool
	// wouldBlock is TryWait's error, made once (a waiter polls TryWait
	// while it spins: see futexSem).
	wouldBlock error
}

func newSysvSem(name string, id int, undo bool) *sysvSem {
	return &sysvSem{name: name, id: id, undo: undo, wouldBlock: fmt.Errorf("semaphore trywait %q: %w", name, ErrWouldBlock)}
}

func (s *sysvSem) Name() string { return s.name }
func (s *sysvSem) Kind() Kind   { return SysV }

// ID is the kernel's semid.
func (s *sysvSem) ID() int { return s.id }

func (s *sysvSem) flags() int16 {
	if s.undo {
		return sys.SemUndo
	}
	return 0
}

func (s *sysvSem) err(op string, err error) error {
	if errors.Is(err, syscall.EINVAL) || errors.Is(err, syscall.EIDRM) {
		return fmt.Errorf("semaphore %s %q: removed: %w", op, s.name, ErrDestroyed)
	}
	if errors.Is(err, syscall.ERANGE) {
		return fmt.Errorf("semaphore %s %q: %w", op, s.name, ErrOverflow)
	}
	return osError("semaphore "+op, s.name, err)
}

func (s *sysvSem) check(op string) error {
	if s.closed.Load() {
		return fmt.Errorf("semaphore %s %q: %w", op, s.name, ErrClosed)
	}
	return nil
}

func (s *sysvSem) TryWait() error {
	if err := s.check("trywait"); err != nil {
		return err
	}
	err := sys.SemTimedOp(s.id, []sys.Sembuf{{Num: 0, Op: -1, Flg: s.flags() | sys.IPCNoWait}}, -1)
	if err == syscall.EAGAIN {
		return s.wouldBlock
	}
	if err != nil {
		return s.err("trywait", err)
	}
	return nil
}

func (s *sysvSem) Wait(ctx context.Context) error { return s.wait(ctx, -1) }

func (s *sysvSem) WaitTimeout(d time.Duration) error {
	if d < 0 {
		d = 0
	}
	return s.wait(context.Background(), d)
}

// wait sleeps in semtimedop slices of at most sysvWaitSlice, so that a
// cancelled context or a Close is noticed promptly: the kernel offers no
// way to interrupt one thread's semtimedop.
func (s *sysvSem) wait(ctx context.Context, timeout time.Duration) error {
	if err := s.check("wait"); err != nil {
		return err
	}
	var deadline time.Time
	if timeout >= 0 {
		deadline = time.Now().Add(timeout)
	}
	ops := []sys.Sembuf{{Num: 0, Op: -1, Flg: s.flags()}}
	// Try a few non-blocking takes first: a peer on another core usually
	// posts within microseconds, cheaper than a sleep and a wake-up.
	try := []sys.Sembuf{{Num: 0, Op: -1, Flg: s.flags() | sys.IPCNoWait}}
	for i := 0; i < sysvSpin; i++ {
		if err := sys.SemTimedOp(s.id, try, -1); err == nil {
			return nil
		} else if !errors.Is(err, syscall.EAGAIN) {
			return s.err("wait", err)
		}
	}
	for {
		if err := s.check("wait"); err != nil {
			return err
		}
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("semaphore wait %q: %w", s.name, ctxError(err))
		}
		slice := sysvWaitSlice
		if timeout >= 0 {
			left := time.Until(deadline)
			if left <= 0 {
				ops[0].Flg |= sys.IPCNoWait
				if err := sys.SemTimedOp(s.id, ops, -1); err == nil {
					return nil
				}
				return fmt.Errorf("semaphore wait %q: %w", s.name, ErrTimeout)
			}
			slice = min(slice, left)
		}
		if d, ok := ctx.Deadline(); ok {
			slice = max(min(slice, time.Until(d)), 0)
		}
		err := sys.SemTimedOp(s.id, ops, slice)
		switch {
		case err == nil:
			return nil
		case errors.Is(err, syscall.EAGAIN), errors.Is(err, syscall.EINTR):
			continue
		default:
			return s.err("wait", err)
		}
	}
}

func (s *sysvSem) Post() error {
	if err := s.check("post"); err != nil {
		return err
	}
	err := sys.SemTimedOp(s.id, []sys.Sembuf{{Num: 0, Op: 1, Flg: s.flags()}}, -1)
	if err != nil {
		return s.err("post", err)
	}
	return nil
}

func (s *sysvSem) Value() (int, error) {
	if err := s.check("value"); err != nil {
		return 0, err
	}
	v, err := sys.SemGetVal(s.id, 0)
	if err != nil {
		return 0, s.err("value", err)
	}
	return v, nil
}

func (s *sysvSem) Close() error {
	s.closed.Store(true)
	return nil
}

func (s *sysvSem) Unlink() error {
	err := sys.SemRemove(s.id)
	if errors.Is(err, syscall.EINVAL) || errors.Is(err, syscall.EIDRM) {
		return nil
	}
	return osError("unlink sysv semaphore", s.name, err)
}
