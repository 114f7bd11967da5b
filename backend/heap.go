package backend

import (
	"fmt"
	"math"
	"os"
	"sync"

	"github.com/heapipc/ipc/internal/mem"
)

// The heap kind keeps its objects in this process's memory, in two
// name-keyed tables, so that Create/Attach/Remove behave as the
// cross-process kinds do between the goroutines of one process.
var heapTable = struct {
	sync.Mutex
	segs map[string]*heapSegObj
	sems map[string]*heapSemObj
}{segs: map[string]*heapSegObj{}, sems: map[string]*heapSemObj{}}

type heapSegObj struct{ b []byte }
type heapSemObj struct{ b []byte }

type heapSegments struct{}

func (heapSegments) Kind() Kind { return Heap }

func (heapSegments) Create(name string, size int64, mode os.FileMode, fill func([]byte) error) (Segment, error) {
	if err := ValidateObjectName(name); err != nil {
		return nil, err
	}
	if err := checkSegmentSize(size); err != nil {
		return nil, err
	}
	heapTable.Lock()
	_, taken := heapTable.segs[name]
	heapTable.Unlock()
	if taken {
		return nil, fmt.Errorf("create heap segment %q: %w", name, ErrExist)
	}
	obj := &heapSegObj{b: mem.Aligned(int(size), 4096)}
	if fill != nil {
		if err := fill(obj.b); err != nil {
			return nil, err
		}
	}
	heapTable.Lock()
	defer heapTable.Unlock()
	if _, taken := heapTable.segs[name]; taken {
		return nil, fmt.Errorf("create heap segment %q: %w", name, ErrExist)
	}
	heapTable.segs[name] = obj
	return &heapSegment{name: name, obj: obj}, nil
}

func (heapSegments) Attach(name string) (Segment, error) {
	if err := ValidateObjectName(name); err != nil {
		return nil, err
	}
	heapTable.Lock()
	defer heapTable.Unlock()
	obj := heapTable.segs[name]
	if obj == nil {
		return nil, fmt.Errorf("attach heap segment %q: %w", name, ErrNotExist)
	}
	return &heapSegment{name: name, obj: obj}, nil
}

func (heapSegments) Remove(name string) error {
	if err := ValidateObjectName(name); err != nil {
		return err
	}
	heapTable.Lock()
	defer heapTable.Unlock()
	if heapTable.segs[name] == nil {
		return fmt.Errorf("remove heap segment %q: %w", name, ErrNotExist)
	}
	delete(heapTable.segs, name)
	return nil
}

type heapSegment struct {
	name string
	obj  *heapSegObj
	mu   sync.Mutex
	done bool
}

func (s *heapSegment) Name() string    { return s.name }
func (s *heapSegment) Kind() Kind      { return Heap }
func (s *heapSegment) CreatorPID() int { return 0 }
func (s *heapSegment) Bytes() []byte {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.done {
		return nil
	}
	return s.obj.b
}
func (s *heapSegment) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.done = true
	return nil
}
func (s *heapSegment) Unlink() error {
	heapTable.Lock()
	defer heapTable.Unlock()
	if heapTable.segs[s.name] == s.obj {
		delete(heapTable.segs, s.name)
	}
	return nil
}

type heapSemaphores struct{}

func (heapSemaphores) Kind() Kind    { return Heap }
func (heapSemaphores) MaxValue() int { return semValueMax }

func (heapSemaphores) Create(name string, value int, opts SemOptions) (Semaphore, error) {
	if err := ValidateObjectName(name); err != nil {
		return nil, err
	}
	if value < 0 || value > semValueMax {
		return nil, fmt.Errorf("create heap semaphore %q: value %d outside [0,%d]: %w", name, value, semValueMax, ErrInvalidArgument)
	}
	heapTable.Lock()
	defer heapTable.Unlock()
	if heapTable.sems[name] != nil {
		return nil, fmt.Errorf("create heap semaphore %q: %w", name, ErrExist)
	}
	obj := &heapSemObj{b: mem.Aligned(semSize, 64)}
	initSem(obj.b, value)
	heapTable.sems[name] = obj
	return newHeapSem(name, obj)
}

func (heapSemaphores) Open(name string, opts SemOptions) (Semaphore, error) {
	if err := ValidateObjectName(name); err != nil {
		return nil, err
	}
	heapTable.Lock()
	defer heapTable.Unlock()
	obj := heapTable.sems[name]
	if obj == nil {
		return nil, fmt.Errorf("open heap semaphore %q: %w", name, ErrNotExist)
	}
	return newHeapSem(name, obj)
}

func (heapSemaphores) Remove(name string) error {
	if err := ValidateObjectName(name); err != nil {
		return err
	}
	heapTable.Lock()
	defer heapTable.Unlock()
	if heapTable.sems[name] == nil {
		return fmt.Errorf("remove heap semaphore %q: %w", name, ErrNotExist)
	}
	delete(heapTable.sems, name)
	return nil
}

func newHeapSem(name string, obj *heapSemObj) (Semaphore, error) {
	unlink := func() error {
		heapTable.Lock()
		defer heapTable.Unlock()
		if heapTable.sems[name] == obj {
			delete(heapTable.sems, name)
		}
		return nil
	}
	return newFutexSem(name, Heap, obj.b, nil, unlink)
}

// maxSegmentSize bounds segment sizes: beyond 64 TiB sizes are surely a
// mistake; on 32-bit machines a mapping's length must fit an int.
const maxSegmentSize = min(1<<46, math.MaxInt)

func checkSegmentSize(size int64) error {
	if size <= 0 || size > maxSegmentSize || int64(int(size)) != size {
		return fmt.Errorf("segment size %d (want 1..%d): %w", size, int64(maxSegmentSize), ErrInvalidSize)
	}
	return nil
}
