package backend

import (
	"context"
	"encoding/binary"
	"fmt"
	"math"
	"sync"
	"sync/atomic"
	"time"

	"github.com/heapipc/ipc/internal/mem"
)

// The glibc (64-bit atomics) layout of a sem_t, as sem_open writes it:
//
//	0   uint64 data: value in the low 32 bits, waiter count in the high 32
//	8   int32  private: 128 (FUTEX_SHARED) for a named semaphore
//	12  pad to 32 bytes
//
// Waiters futex-wait on the 32-bit half of data that holds the value.
const (
	semSize       = 32
	semPrivateOff = 8
	semShared     = 128
	semValueMask  = 1<<32 - 1
	semWaiterOne  = 1 << 32
	semValueMax   = math.MaxInt32 // SEM_VALUE_MAX
	semSpin       = 4000          // loads before a waiter registers and sleeps
)

// semValueOff is where the value half of data sits: glibc's
// SEM_VALUE_OFFSET, 0 on little-endian machines.
var semValueOff = func() mem.Off {
	if binary.NativeEndian.Uint16([]byte{1, 0}) == 1 {
		return 0
	}
	return 4
}()

// futexSem runs glibc's semaphore algorithm on 32 bytes of memory (a
// mapped sem.NAME file, or Go memory for the heap kind), so that C programs
// using sem_wait/sem_post on the same name interoperate.
type futexSem struct {
	name   string
	kind   Kind
	mem    []byte
	data   *atomic.Uint64
	value  *atomic.Uint32
	closed atomic.Bool
	// ops is read-held by every operation touching mem and write-held
	// by Close, so that the memory is not unmapped under a waiter.
	ops   sync.RWMutex
	unmap func([]byte) error
	unlk  func() error
	// wouldBlock is TryWait's error, made once: a caller that polls
	// TryWait (a spinning waiter) allocates nothing per poll.
	wouldBlock error
}

func newFutexSem(name string, kind Kind, b []byte, unmap func([]byte) error, unlink func() error) (*futexSem, error) {
	data, err := mem.Uint64(b, 0)
	if err != nil {
		return nil, err
	}
	value, err := mem.Uint32(b, semValueOff)
	if err != nil {
		return nil, err
	}
	return &futexSem{name: name, kind: kind, mem: b, data: data, value: value, unmap: unmap, unlk: unlink,
		wouldBlock: fmt.Errorf("semaphore trywait %q: %w", name, ErrWouldBlock)}, nil
}

// initSem writes a new semaphore with value v into b (before it is
// published).
func initSem(b []byte, v int) {
	binary.NativeEndian.PutUint64(b[0:], uint64(v))
	binary.NativeEndian.PutUint32(b[semPrivateOff:], semShared)
}

func (s *futexSem) Name() string { return s.name }
func (s *futexSem) Kind() Kind   { return s.kind }

func (s *futexSem) enter(op string) error {
	s.ops.RLock()
	if s.closed.Load() {
		s.ops.RUnlock()
		return fmt.Errorf("semaphore %s %q: %w", op, s.name, ErrClosed)
	}
	return nil
}

func (s *futexSem) tryWait() bool {
	d := s.data.Load()
	for d&semValueMask != 0 {
		if s.data.CompareAndSwap(d, d-1) {
			return true
		}
		d = s.data.Load()
	}
	return false
}

func (s *futexSem) TryWait() error {
	if err := s.enter("trywait"); err != nil {
		return err
	}
	defer s.ops.RUnlock()
	if s.tryWait() {
		return nil
	}
	return s.wouldBlock
}

func (s *futexSem) Wait(ctx context.Context) error { return s.wait(ctx, -1) }

func (s *futexSem) WaitTimeout(d time.Duration) error {
	if d < 0 {
		d = 0
	}
	return s.wait(context.Background(), d)
}

func (s *futexSem) wait(ctx context.Context, timeout time.Duration) error {
	if err := s.enter("wait"); err != nil {
		return err
	}
	defer s.ops.RUnlock()
	// Spin briefly before sleeping: a post from a peer running on another
	// core usually lands within a few microseconds, far less than a
	// futex sleep and wake-up cost. glibc does not spin; it makes no
	// difference to the protocol.
	for i := 0; i < semSpin; i++ {
		if s.data.Load()&semValueMask != 0 && s.tryWait() {
			return nil
		}
	}
	var deadline time.Time
	if timeout >= 0 {
		deadline = time.Now().Add(timeout)
	}
	// Register as a waiter, then either take a unit and unregister in one
	// CAS, or sleep while the value is zero (glibc's __new_sem_wait_slow).
	d := s.data.Add(semWaiterOne)
	for {
		if d&semValueMask != 0 {
			if s.data.CompareAndSwap(d, d-1-semWaiterOne) {
				return nil
			}
			d = s.data.Load()
			continue
		}
		var err error
		switch {
		case s.closed.Load():
			err = ErrClosed
		case timeout >= 0:
			left := time.Until(deadline)
			if left <= 0 {
				err = ErrTimeout
				break
			}
			err = Park(ctx, s.value, 0, left)
		default:
			err = Park(ctx, s.value, 0, -1)
		}
		if err != nil {
			// Unregister. A Post may have woken this waiter (its one
			// wake) just as the wait ended for another reason (Park
			// reports the context's error even then): with a unit
			// there and waiters left, the wake is passed on, or the
			// unit would sit there while another waiter sleeps.
			if d := s.data.Add(^uint64(semWaiterOne - 1)); d&semValueMask != 0 && d>>32 != 0 {
				Wake(s.value, 1)
			}
			return fmt.Errorf("semaphore wait %q: %w", s.name, err)
		}
		d = s.data.Load()
	}
}

func (s *futexSem) Post() error {
	if err := s.enter("post"); err != nil {
		return err
	}
	defer s.ops.RUnlock()
	d := s.data.Load()
	for {
		if d&semValueMask >= semValueMax {
			return fmt.Errorf("semaphore post %q: %w", s.name, ErrOverflow)
		}
		if s.data.CompareAndSwap(d, d+1) {
			break
		}
		d = s.data.Load()
	}
	if d>>32 != 0 {
		Wake(s.value, 1)
	}
	return nil
}

func (s *futexSem) Value() (int, error) {
	if err := s.enter("value"); err != nil {
		return 0, err
	}
	defer s.ops.RUnlock()
	return int(s.data.Load() & semValueMask), nil
}

// Close marks the handle closed, wakes this process's waiters out of the
// kernel until they have left, then unmaps.
func (s *futexSem) Close() error {
	if s.closed.Swap(true) {
		return nil
	}
	for !s.ops.TryLock() {
		Wake(s.value, 0)
		time.Sleep(50 * time.Microsecond)
	}
	defer s.ops.Unlock()
	if s.unmap != nil {
		if err := s.unmap(s.mem); err != nil {
			return fmt.Errorf("semaphore close %q: %w", s.name, err)
		}
	}
	return nil
}

func (s *futexSem) Unlink() error { return s.unlk() }
