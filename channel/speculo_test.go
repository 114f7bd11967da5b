package channel

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"math/rand/v2"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
	"unsafe"

	"github.com/heapipc/ipc/alloc"
	"github.com/heapipc/ipc/backend"
	"github.com/heapipc/ipc/internal/errs"
	"github.com/heapipc/ipc/internal/mem"
	"github.com/heapipc/ipc/internal/testutil"
	"github.com/stretchr/testify/require"
)

// spFix is a region with a heap and a registry, sized for speculo tests.
type spFix struct {
	r    *backend.Region
	heap *alloc.Heap
	reg  *Registry
}

func newSpFix(t testing.TB, k backend.Kind, size int64) *spFix {
	t.Helper()
	f := &spFix{}
	r, err := backend.OpenRegion(testutil.Name(t), backend.RegionConfig{Segments: k, Semaphores: semKindFor(k), Size: size}, func(r *backend.Region) error {
		h, err := alloc.Init(r, alloc.Options{})
		if err != nil {
			return err
		}
		reg, err := InitRegistry(r, h, 16)
		if err != nil {
			return err
		}
		f.heap, f.reg = h, reg
		return nil
	})
	require.NoError(t, err)
	f.r = r
	// Grow the registry once so that heap figures taken by a test do not
	// count its first block of entries.
	en, _, err := f.reg.LookupOrCreate(context.Background(), 1<<40, Spec{Type: TypeStatic, Control: 1})
	require.NoError(t, err)
	_, err = f.reg.Remove(context.Background(), en, nil, nil)
	require.NoError(t, err)
	t.Cleanup(func() {
		require.NoError(t, f.heap.Check(), "heap consistent at the end")
		f.reg.Unlink()
		f.reg.Close()
		f.heap.Unlink()
		f.heap.Close()
		r.Unlink()
		r.Close()
	})
	return f
}

func (f *spFix) free(t testing.TB) uint64 {
	t.Helper()
	st, err := f.heap.Stats()
	require.NoError(t, err)
	return st.FreeBytes
}

type fakeClock struct{ ns atomic.Int64 }

func (c *fakeClock) now() int64 { return c.ns.Load() }

// area creates speculo area id and opens it; at cleanup it is removed (the
// caller closes its ends first) and the heap must have every byte back.
func (f *spFix) area(t testing.TB, id ID, capacity uint64, cfg SpeculoConfig, clock func() int64) (*Speculo, *Entry) {
	t.Helper()
	before := f.free(t)
	spec := Spec{Type: TypeSpeculo, Size: capacity, Control: SpeculoControlSize(cfg.Slots),
		Init: func(_ mem.Off, b []byte) error { return InitSpeculo(b, capacity, cfg) }}
	en, created, err := f.reg.LookupOrCreate(context.Background(), id, spec)
	require.NoError(t, err)
	require.True(t, created)
	sp, err := OpenSpeculo(f.r, f.heap, en, SpeculoEnv{Clock: clock, Wait: WaitOptions{Spin: time.Microsecond, CheckInterval: 5 * time.Millisecond}})
	require.NoError(t, err)
	t.Cleanup(func() {
		require.NoError(t, sp.Check(), "area consistent at the end")
		removed, err := f.reg.Remove(context.Background(), en, sp.Idle, sp.FreeExtents)
		require.NoError(t, err)
		require.True(t, removed, "no live end left")
		require.Equal(t, before, f.free(t), "every extent went back to the heap")
	})
	return sp, en
}

// stampPayload fills b with a pattern of tag and a CRC at the end (when
// there is room); verify checks it.
func stampPayload(b []byte, tag uint64) {
	for i := range b {
		b[i] = byte(tag*31) + byte(i*7)
	}
	if len(b) >= 12 {
		binary.LittleEndian.PutUint64(b, tag)
		binary.LittleEndian.PutUint32(b[len(b)-4:], crc32.ChecksumIEEE(b[:len(b)-4]))
	}
}

func verifyPayload(b []byte) (uint64, error) {
	if len(b) < 12 {
		return 0, nil
	}
	if got, want := binary.LittleEndian.Uint32(b[len(b)-4:]), crc32.ChecksumIEEE(b[:len(b)-4]); got != want {
		return 0, fmt.Errorf("torn payload of %d bytes (crc %#x, want %#x)", len(b), got, want)
	}
	return binary.LittleEndian.Uint64(b), nil
}

func put(t testing.TB, w *SpeculoWriter, block BlockID, size int, tag uint64, expiry int64) BlockID {
	t.Helper()
	var b []byte
	var err error
	for tries := 0; ; tries++ {
		if block == 0 {
			b, err = w.Append(size, expiry)
		} else {
			b, err = w.Replace(block, size, expiry)
		}
		if !errors.Is(err, errs.ErrNoSpace) || !strings.Contains(err.Error(), "old extents") || tries > 1e6 {
			break
		}
		// A reader (descheduled) still holds MaxSpeculoRetired old extents:
		// let it move on.
		runtime.Gosched()
	}
	require.NoError(t, err)
	require.Len(t, b, size)
	stampPayload(b, tag)
	id, err := w.Commit()
	require.NoError(t, err)
	return id
}

// drain reads every chunk TryNext has now.
func drain(t testing.TB, r *SpeculoReader) []SpeculoChunk {
	t.Helper()
	var out []SpeculoChunk
	for {
		c, err := r.TryNext()
		if errors.Is(err, errs.ErrWouldBlock) {
			return out
		}
		require.NoError(t, err)
		_, err = verifyPayload(c.Data)
		require.NoError(t, err)
		c.Data = append([]byte(nil), c.Data...)
		out = append(out, c)
	}
}

func TestSpeculoLayout(t *testing.T) {
	require.Equal(t, uintptr(speculoCBSize), unsafe.Sizeof(speculoCB{}))
	require.Equal(t, uintptr(128), unsafe.Offsetof(speculoCB{}.Current))
	require.Equal(t, uintptr(136), unsafe.Offsetof(speculoCB{}.Epoch))
	require.Equal(t, uintptr(256), unsafe.Offsetof(speculoCB{}.Writer))
	require.Equal(t, uintptr(264), unsafe.Offsetof(speculoCB{}.Closed))
	require.Equal(t, uintptr(268), unsafe.Offsetof(speculoCB{}.Threshold))
	require.Equal(t, uintptr(272), unsafe.Offsetof(speculoCB{}.Oldest))
	require.Equal(t, uintptr(312), unsafe.Offsetof(speculoCB{}.Freeing))
	require.Equal(t, uintptr(320), unsafe.Offsetof(speculoCB{}.WriterGen))
	require.Equal(t, uintptr(384), unsafe.Offsetof(speculoCB{}.Notify))
	require.Equal(t, uintptr(388), unsafe.Offsetof(speculoCB{}.Sleepers))
	require.Equal(t, uintptr(speculoSlotSize), unsafe.Sizeof(speculoSlot{}))
	require.Equal(t, uintptr(8), unsafe.Offsetof(speculoSlot{}.Epoch))
	require.Equal(t, uintptr(spExtHdrSize), unsafe.Sizeof(spExtentHdr{}))
	require.Equal(t, uintptr(128), unsafe.Offsetof(spExtentHdr{}.Committed))
	require.Equal(t, uintptr(136), unsafe.Offsetof(spExtentHdr{}.Next))
	require.Equal(t, uintptr(spChunkHdrSize), unsafe.Sizeof(spChunkHdr{}))
	require.Equal(t, uintptr(24), unsafe.Offsetof(spChunkHdr{}.Meta))
	g, err := speculoGeometry(1<<16, 8, 0)
	require.NoError(t, err)
	require.Equal(t, uint64(512), g.maxBlocks)
	require.Equal(t, uint64(1024), g.indexSlots, "load stays at most 3/4")
	require.Equal(t, uint64(256+8*1024), g.dataOff, "8 bytes an index slot")
	e := spEntry(77, 4096)
	require.Equal(t, uint64(4096), spEntryOff(e))
	require.Equal(t, spTag(77), e>>32)
	require.Zero(t, g.dataOff%128)
}

func TestSpeculoCreateValidation(t *testing.T) {
	for _, c := range []struct {
		capacity uint64
		cfg      SpeculoConfig
		want     error
	}{
		{capacity: 0, want: errs.ErrInvalidSize},
		{capacity: 63, want: errs.ErrInvalidSize},
		{capacity: 1 << 41, want: errs.ErrInvalidSize},
		{capacity: 1024, cfg: SpeculoConfig{Slots: MaxSpeculoSlots + 1}, want: errs.ErrInvalidArgument},
		{capacity: 1024, cfg: SpeculoConfig{MaxBlocks: 1024}, want: errs.ErrInvalidArgument},
		{capacity: 1024, cfg: SpeculoConfig{Threshold: 101}, want: errs.ErrInvalidArgument},
	} {
		b := make([]byte, SpeculoControlSize(c.cfg.Slots)+64)
		err := InitSpeculo(mem.Aligned(len(b), 8), c.capacity, c.cfg)
		require.ErrorIs(t, err, c.want, "capacity %d %+v", c.capacity, c.cfg)
	}
}

func TestSpeculoVisibilitySizes(t *testing.T) {
	for _, k := range []backend.Kind{backend.Heap, backend.POSIX, backend.SysV} {
		t.Run(string(k), func(t *testing.T) {
			f := newSpFix(t, k, 4<<20)
			sp, _ := f.area(t, 1, 4096, SpeculoConfig{Slots: 4}, nil)
			r, err := sp.AttachReader()
			require.NoError(t, err)
			defer r.Close()
			_, err = r.TryNext()
			require.ErrorIs(t, err, errs.ErrWouldBlock, "no writer yet: nothing")
			_, err = r.Latest(1)
			require.ErrorIs(t, err, errs.ErrNotExist)

			w, err := sp.AttachWriter()
			require.NoError(t, err)
			defer w.Close()
			_, err = sp.AttachWriter()
			require.ErrorIs(t, err, errs.ErrBusy, "one writer")

			sizes := []int{0, 1, 7, 8, 9, 100, 500}
			for i, n := range sizes {
				b, err := w.Append(n, 0)
				require.NoError(t, err)
				stampPayload(b, uint64(i))
				_, err = r.TryNext()
				require.ErrorIs(t, err, errs.ErrWouldBlock, "appended, not committed: invisible")
				_, err = w.Append(1, 0)
				require.ErrorIs(t, err, errs.ErrInvalidArgument, "one pending chunk at a time")
				id, err := w.Commit()
				require.NoError(t, err)
				require.Greater(t, id, uint64(SpeculoAutoBlock))
				c, err := r.TryNext()
				require.NoError(t, err, "visible once committed")
				require.Len(t, c.Data, n)
				require.Equal(t, id, c.Block)
				tag, err := verifyPayload(c.Data)
				require.NoError(t, err)
				if n >= 12 {
					require.Equal(t, uint64(i), tag)
				}
				l, err := r.Latest(id)
				require.NoError(t, err)
				require.Equal(t, c.Seq, l.Seq)
			}
			// Abort leaves nothing.
			_, err = w.Append(16, 0)
			require.NoError(t, err)
			w.Abort()
			_, err = r.TryNext()
			require.ErrorIs(t, err, errs.ErrWouldBlock)
			_, err = w.Commit()
			require.ErrorIs(t, err, errs.ErrInvalidArgument, "nothing pending")

			// Too large.
			_, err = w.Append(int(sp.MaxChunk())+1, 0)
			require.ErrorIs(t, err, errs.ErrInvalidSize)
			_, err = w.Append(-1, 0)
			require.ErrorIs(t, err, errs.ErrInvalidSize)
			// Full of valid chunks: no room, and nothing to collect.
			_, err = w.Append(int(sp.MaxChunk()), 0)
			require.ErrorIs(t, err, errs.ErrNoSpace)

			// Obsolete everything, then one chunk that fills the area:
			// the GC makes room.
			for _, c := range drainAll(t, sp) {
				put(t, w, c.Block, 0, 0, 1) // expired at once: invalid
			}
			big := put(t, w, 0, int(sp.MaxChunk()), 77, 0)
			c, err := r.Latest(big)
			require.NoError(t, err)
			require.Len(t, c.Data, int(sp.MaxChunk()))
			tag, err := verifyPayload(c.Data)
			require.NoError(t, err)
			require.Equal(t, uint64(77), tag)
			got := drain(t, r)
			require.Len(t, got, 1, "the reader moved to the new extent and sees only the big chunk")
			require.Equal(t, big, got[0].Block)
			st, err := sp.Stats()
			require.NoError(t, err)
			require.Equal(t, uint64(4096), st.Committed, "exactly full")
			require.Equal(t, 1, st.ValidChunks)
			require.Equal(t, 1, st.Readers)
		})
	}
}

// drainAll reads every valid chunk with a fresh reader.
func drainAll(t testing.TB, sp *Speculo) []SpeculoChunk {
	r, err := sp.AttachReader()
	require.NoError(t, err)
	defer r.Close()
	return drain(t, r)
}

func TestSpeculoExpiry(t *testing.T) {
	f := newSpFix(t, backend.Heap, 4<<20)
	clk := &fakeClock{}
	clk.ns.Store(1000)
	sp, _ := f.area(t, 1, 4096, SpeculoConfig{Slots: 2, Threshold: 0}, clk.now)
	w, err := sp.AttachWriter()
	require.NoError(t, err)
	defer w.Close()
	r, err := sp.AttachReader()
	require.NoError(t, err)
	defer r.Close()

	a := put(t, w, 0, 100, 1, 2000)
	b := put(t, w, 0, 100, 2, 0)
	c := put(t, w, 0, 100, 3, 3000)
	require.Len(t, drainAll(t, sp), 3)
	clk.ns.Store(2000) // a expires (expiry <= now)
	got := drainAll(t, sp)
	require.Len(t, got, 2)
	require.Equal(t, []BlockID{b, c}, []BlockID{got[0].Block, got[1].Block})
	_, err = r.Latest(a)
	require.ErrorIs(t, err, errs.ErrNotExist, "expired: no valid version")
	// The reader that saw nothing yet skips a.
	got = drain(t, r)
	require.Equal(t, []BlockID{b, c}, []BlockID{got[0].Block, got[1].Block})

	// A new version with no expiry revives block c.
	clk.ns.Store(5000)
	_, err = r.Latest(c)
	require.ErrorIs(t, err, errs.ErrNotExist)
	put(t, w, c, 10, 4, 0)
	l, err := r.Latest(c)
	require.NoError(t, err)
	require.Len(t, l.Data, 10)

	// The writer counts expired bytes (next time it looks) and the GC
	// drops them.
	require.NoError(t, w.GC())
	st, err := sp.Stats()
	require.NoError(t, err)
	require.Equal(t, 2, st.Chunks, "b and c's new version were copied")
	require.Zero(t, st.InvalidBytes)
	got = drain(t, r)
	require.Len(t, got, 1, "after the GC the reader sees only c's new version, not b again")
	require.Equal(t, c, got[0].Block)
}

func TestSpeculoObsoletionAndLatest(t *testing.T) {
	f := newSpFix(t, backend.Heap, 4<<20)
	sp, _ := f.area(t, 1, 8192, SpeculoConfig{Slots: 2, Threshold: 0}, nil)
	w, err := sp.AttachWriter()
	require.NoError(t, err)
	defer w.Close()
	r, err := sp.AttachReader()
	require.NoError(t, err)
	defer r.Close()

	_, err = w.Replace(0, 1, 0)
	require.ErrorIs(t, err, errs.ErrInvalidArgument)
	_, err = w.Replace(SpeculoAutoBlock+5, 1, 0)
	require.ErrorIs(t, err, errs.ErrInvalidArgument, "an auto id never given")

	auto := put(t, w, 0, 20, 100, 0)
	for v := uint64(1); v <= 5; v++ {
		require.Equal(t, BlockID(7), put(t, w, 7, 20, v, 0), "a well-known id")
		put(t, w, auto, 20, 100+v, 0)
		c, err := r.Latest(7)
		require.NoError(t, err)
		tag, err := verifyPayload(c.Data)
		require.NoError(t, err)
		require.Equal(t, v, tag)
	}
	got := drain(t, r)
	require.Len(t, got, 2, "only the latest version of each block is valid")
	require.Equal(t, []BlockID{7, auto}, []BlockID{got[0].Block, got[1].Block})
	st, err := sp.Stats()
	require.NoError(t, err)
	require.Equal(t, 11, st.Chunks)
	require.Equal(t, 2, st.ValidChunks)
	require.Equal(t, 2, st.Blocks)
	require.Equal(t, uint64(9*SpeculoChunkSpace(20)), st.InvalidBytes)
	require.Equal(t, st.InvalidBytes, w.InvalidBytes())

	// Ids and Latest survive a GC; the reader does not see them again.
	seq7 := got[0].Seq
	require.NoError(t, w.GC())
	c, err := r.Latest(7)
	require.NoError(t, err)
	require.Equal(t, seq7, c.Seq, "same sequence number after the copy")
	_, err = r.TryNext()
	require.ErrorIs(t, err, errs.ErrWouldBlock, "seen before the GC: not again")
	require.NoError(t, r.Rewind())
	require.Len(t, drain(t, r), 2, "Rewind starts over")
	put(t, w, 7, 20, 6, 0)
	got = drain(t, r)
	require.Len(t, got, 1)
	require.Equal(t, BlockID(7), got[0].Block)
	_, err = r.Latest(8)
	require.ErrorIs(t, err, errs.ErrNotExist)
}

func TestSpeculoNeverInvisible(t *testing.T) {
	// Readers hammer Latest while the writer replaces the blocks and the
	// GC copies them: every Latest finds a version, never an older one
	// than before. The heap backend lets the race detector see it all.
	f := newSpFix(t, backend.Heap, 8<<20)
	sp, _ := f.area(t, 1, 16<<10, SpeculoConfig{Slots: 4, Threshold: 25}, nil)
	w, err := sp.AttachWriter()
	require.NoError(t, err)
	defer w.Close()
	const blocks, updates = 8, 20000
	for b := BlockID(1); b <= blocks; b++ {
		put(t, w, b, 40, 0, 0)
	}
	var done atomic.Bool
	var wg sync.WaitGroup
	var reads atomic.Int64
	defer func() { done.Store(true); wg.Wait() }()
	for g := 0; g < 2; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r, err := sp.AttachReader()
			if err != nil {
				t.Error(err)
				return
			}
			defer r.Close()
			last := make([]uint64, blocks+1)
			rng := rand.New(rand.NewPCG(uint64(g), 1))
			for !done.Load() {
				b := 1 + rng.Uint64N(blocks)
				c, err := r.Latest(BlockID(b))
				if err != nil {
					t.Errorf("Latest(%d): %v", b, err)
					return
				}
				v, err := verifyPayload(c.Data)
				if err != nil {
					t.Error(err)
					return
				}
				if v < last[b] {
					t.Errorf("block %d went back from version %d to %d", b, last[b], v)
					return
				}
				last[b] = v
				reads.Add(1)
			}
		}()
	}
	for i := 1; i <= updates; i++ {
		put(t, w, BlockID(1+i%blocks), 40+i%64, uint64(i), 0)
	}
	done.Store(true)
	wg.Wait()
	st, err := sp.Stats()
	require.NoError(t, err)
	require.Greater(t, st.GCs, uint64(10), "the threshold collected many times")
	require.Positive(t, reads.Load())
	t.Logf("%d GCs, %d reads", st.GCs, reads.Load())
}

func TestSpeculoGCThresholdAndFull(t *testing.T) {
	f := newSpFix(t, backend.Heap, 4<<20)
	sp, _ := f.area(t, 1, 8192, SpeculoConfig{Slots: 2, MaxBlocks: 40, Threshold: 30}, nil)
	w, err := sp.AttachWriter()
	require.NoError(t, err)
	defer w.Close()
	// By threshold: replacing one block, invalid bytes grow until 30% of
	// 8192; the next append collects.
	n := SpeculoChunkSpace(100)
	for i := 0; i < 26; i++ {
		put(t, w, 1, 100, uint64(i), 0)
	}
	st, err := sp.Stats()
	require.NoError(t, err)
	require.Equal(t, uint64(1), st.GCs, "one GC at the threshold")
	require.Less(t, w.InvalidBytes(), 8192*30/100+n)

	// When full: with the threshold off, the area fills, then collects.
	require.NoError(t, w.SetThreshold(0))
	require.ErrorIs(t, w.SetThreshold(101), errs.ErrInvalidArgument)
	gcs := st.GCs
	for i := 0; i < 200; i++ {
		put(t, w, 1, 100, uint64(i), 0)
	}
	st, err = sp.Stats()
	require.NoError(t, err)
	require.Greater(t, st.GCs, gcs, "collected when full")
	require.Less(t, st.GCs-gcs, uint64(10), "only when full: 200 chunks of %d bytes in 8 KiB", n)

	// Full of valid chunks: ErrNoSpace, area unchanged.
	var ids []BlockID
	for {
		b, err := w.Append(100, 0)
		if err != nil {
			require.ErrorIs(t, err, errs.ErrNoSpace)
			break
		}
		stampPayload(b, 1)
		id, err := w.Commit()
		require.NoError(t, err)
		ids = append(ids, id)
	}
	require.NotEmpty(t, ids)
	require.Len(t, drainAll(t, sp), len(ids)+1)

	// Blocks limit: small chunks hit the index bound first.
	for _, id := range ids {
		put(t, w, id, 0, 0, 1) // expire them all
	}
	put(t, w, 1, 0, 0, 1)
	var k int
	for {
		_, err := w.Append(0, 0)
		if err != nil {
			require.ErrorIs(t, err, errs.ErrNoSpace)
			require.Contains(t, err.Error(), "blocks")
			break
		}
		_, err = w.Commit()
		require.NoError(t, err)
		k++
	}
	require.Equal(t, 40, k, "MaxBlocks valid blocks")
}

// TestSpeculoGCWhileReading: readers iterate while the writer appends
// chunks that must each be seen exactly once, interleaved with a block
// replaced over and over so the GC runs often.
func TestSpeculoGCWhileReading(t *testing.T) {
	f := newSpFix(t, backend.Heap, 16<<20)
	sp, _ := f.area(t, 1, 128<<10, SpeculoConfig{Slots: 8, Threshold: 20}, nil)
	w, err := sp.AttachWriter()
	require.NoError(t, err)
	defer w.Close()
	const keep, junkEvery = 1000, 5
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	var wg sync.WaitGroup
	defer func() { cancel(); wg.Wait() }()
	for g := 0; g < 3; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r, err := sp.AttachReader()
			if err != nil {
				t.Error(err)
				return
			}
			defer r.Close()
			if err := readKeep(ctx, r, keep); err != nil && ctx.Err() == nil {
				t.Error(err)
			}
		}()
	}
	for i := 0; i < keep; i++ {
		for j := 0; j < junkEvery; j++ {
			put(t, w, 1, 300+j*50, 1<<32|uint64(i*junkEvery+j), 0)
		}
		put(t, w, 0, 48+i%32, uint64(i), 0)
	}
	wg.Wait()
	st, err := sp.Stats()
	require.NoError(t, err)
	require.Greater(t, st.GCs, uint64(20))
	_, err = w.Reclaim()
	require.NoError(t, err)
	st, err = sp.Stats()
	require.NoError(t, err)
	require.Equal(t, 1, st.Extents, "readers left: every old extent freed")
	t.Logf("%d GCs", st.GCs)
}

// readKeep reads until it has seen keep chunks tagged 0..keep-1 (blocks
// other than 1), each once and in order, every payload intact, sequence
// numbers increasing.
func readKeep(ctx context.Context, r *SpeculoReader, keep int) error {
	want := uint64(0)
	var lastSeq, lastJunk uint64
	for want < uint64(keep) {
		c, err := r.Next(ctx)
		if err != nil {
			return err
		}
		if c.Seq <= lastSeq {
			return fmt.Errorf("sequence %d after %d: a chunk repeated", c.Seq, lastSeq)
		}
		lastSeq = c.Seq
		tag, err := verifyPayload(c.Data)
		if err != nil {
			return err
		}
		if c.Block == 1 {
			if tag <= lastJunk {
				return fmt.Errorf("junk version %d after %d", tag, lastJunk)
			}
			lastJunk = tag
			continue
		}
		if tag != want {
			return fmt.Errorf("chunk %d where %d was expected (lost or repeated)", tag, want)
		}
		want++
	}
	return nil
}

// TestSpeculoViewLifetime: a view stays valid (the extent is not freed)
// until the reader's next call, however many GCs happen; then the old
// extents go back to the heap.
func TestSpeculoViewLifetime(t *testing.T) {
	f := newSpFix(t, backend.Heap, 4<<20)
	sp, _ := f.area(t, 1, 4096, SpeculoConfig{Slots: 2, Threshold: 0}, nil)
	w, err := sp.AttachWriter()
	require.NoError(t, err)
	defer w.Close()
	r, err := sp.AttachReader()
	require.NoError(t, err)
	defer r.Close()
	put(t, w, 1, 200, 1, 0)
	put(t, w, 2, 200, 2, 0)
	c, err := r.TryNext()
	require.NoError(t, err)
	view := c.Data
	snapshot := append([]byte(nil), view...)
	base := f.free(t)
	for i := 0; i < 3; i++ {
		put(t, w, 1, 200, uint64(10+i), 0) // obsoletes what the view shows
		require.NoError(t, w.GC())
		n, err := w.Reclaim()
		require.NoError(t, err)
		require.Zero(t, n, "the reader pins the first extent: nothing can be freed")
	}
	st, err := sp.Stats()
	require.NoError(t, err)
	require.Equal(t, 4, st.Extents)
	require.Equal(t, base-3*st.ExtentBytes, f.free(t))
	require.Equal(t, snapshot, view, "the view is intact until the reader's next call")
	require.Equal(t, uint64(1), r.Epoch())
	require.NoError(t, sp.Check(), "a chain of four extents checks")

	// The next call moves the reader; the writer frees the old extents.
	c, err = r.TryNext()
	require.NoError(t, err)
	require.Equal(t, BlockID(2), c.Block)
	require.Equal(t, uint64(4), r.Epoch())
	n, err := w.Reclaim()
	require.NoError(t, err)
	require.Equal(t, 3, n)
	require.Equal(t, base, f.free(t), "old extents back in the heap")

	// A parked reader pins nothing.
	require.Len(t, drain(t, r), 1, "block 1's latest version")
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	_, err = r.Next(ctx)
	require.ErrorIs(t, err, context.DeadlineExceeded)
	ctx = testutil.Context(t, time.Minute)
	require.Zero(t, r.Epoch(), "after a failed wait the reader holds no extent")
	require.NoError(t, w.GC())
	st, err = sp.Stats()
	require.NoError(t, err)
	require.Equal(t, 1, st.Extents, "the reader waited unpinned: the old extent was freed by the GC at once")
	require.Equal(t, base, f.free(t))
	put(t, w, 3, 8, 3, 0)
	c, err = r.Next(ctx)
	require.NoError(t, err, "and it moves on with its next call")
	require.Equal(t, BlockID(3), c.Block)
}

func TestSpeculoDeadReaderDoesNotPin(t *testing.T) {
	f := newSpFix(t, backend.Heap, 4<<20)
	sp, _ := f.area(t, 1, 4096, SpeculoConfig{Slots: 2}, nil)
	w, err := sp.AttachWriter()
	require.NoError(t, err)
	defer w.Close()
	put(t, w, 1, 10, 1, 0)
	// A reader of a process that died, pinned on epoch 1 and parked.
	dead := testutil.DeadIdentity(t)
	sp.slots[0].Owner.Store(uint64(dead))
	sp.slots[0].Epoch.Store(1)
	sp.cb.Sleepers.Store(1)
	require.NoError(t, w.GC())
	_, err = w.Reclaim()
	require.NoError(t, err)
	st, err := sp.Stats()
	require.NoError(t, err)
	require.Equal(t, 1, st.Extents, "the dead reader's pin does not count")
	require.Zero(t, sp.slots[0].Owner.Load(), "its slot is free again")
	put(t, w, 1, 10, 2, 0)
	require.Zero(t, sp.cb.Sleepers.Load(), "a commit woke whoever was parked, once")

	// Slots held by dead readers are taken over by new readers.
	sp.slots[0].Owner.Store(uint64(dead))
	sp.slots[1].Owner.Store(uint64(dead))
	r, err := sp.AttachReader()
	require.NoError(t, err)
	r2, err := sp.AttachReader()
	require.NoError(t, err)
	_, err = sp.AttachReader()
	require.ErrorIs(t, err, errs.ErrBusy, "two slots, two live readers")
	r.Close()
	r2.Close()
}

func TestSpeculoWriterTakeover(t *testing.T) {
	f := newSpFix(t, backend.Heap, 4<<20)
	sp, _ := f.area(t, 1, 4096, SpeculoConfig{Slots: 2}, nil)
	w, err := sp.AttachWriter()
	require.NoError(t, err)
	id := put(t, w, 0, 10, 1, 0)
	_, err = w.Append(100, 0) // dies in the middle of this append
	require.NoError(t, err)
	sp.cb.Writer.Store(uint64(testutil.DeadIdentity(t)))
	w2, err := sp.AttachWriter()
	require.NoError(t, err, "a dead writer's end is taken over")
	defer w2.Close()
	got := drainAll(t, sp)
	require.Len(t, got, 1, "the half-made chunk is not visible")
	require.Equal(t, id, got[0].Block)
	id2 := put(t, w2, 0, 10, 2, 0)
	require.Greater(t, id2, id, "block ids go on")
	got = drainAll(t, sp)
	require.Len(t, got, 2)
	require.Greater(t, got[1].Seq, got[0].Seq)
	require.NoError(t, w.Close(), "the old writer object releases nothing it does not hold")
	_, err = sp.AttachWriter()
	require.ErrorIs(t, err, errs.ErrBusy)
}

// TestSpeculoSequenceSurvivesGCAndCrash: the newest chunk expires and a
// GC drops it, then the writer dies; the next writer's chunks must still
// be new to a reader that saw the dropped one (sequence numbers and block
// ids never go back).
func TestSpeculoSequenceSurvivesGCAndCrash(t *testing.T) {
	f := newSpFix(t, backend.Heap, 4<<20)
	clk := &fakeClock{}
	clk.ns.Store(100)
	sp, _ := f.area(t, 1, 4096, SpeculoConfig{Slots: 2, Threshold: 0}, clk.now)
	w, err := sp.AttachWriter()
	require.NoError(t, err)
	r, err := sp.AttachReader()
	require.NoError(t, err)
	defer r.Close()
	a := put(t, w, 0, 10, 1, 0)
	b := put(t, w, 0, 10, 2, 200)
	got := drain(t, r)
	require.Len(t, got, 2)
	clk.ns.Store(300) // b expires
	require.NoError(t, w.GC())
	sp.cb.Writer.Store(uint64(testutil.DeadIdentity(t))) // dies without Close
	w2, err := sp.AttachWriter()
	require.NoError(t, err)
	defer w2.Close()
	c := put(t, w2, 0, 10, 3, 0)
	require.Greater(t, c, b, "block ids do not go back")
	got2 := drain(t, r)
	require.Len(t, got2, 1, "the new chunk is new to the reader")
	require.Equal(t, c, got2[0].Block)
	require.Greater(t, got2[0].Seq, got[1].Seq)
	// A clean close and a new writer go on too.
	require.NoError(t, w2.Close())
	w3, err := sp.AttachWriter()
	require.NoError(t, err)
	defer w3.Close()
	d := put(t, w3, a, 10, 4, 0)
	require.Equal(t, a, d)
	got3 := drain(t, r)
	require.Len(t, got3, 1)
	require.Greater(t, got3[0].Seq, got2[0].Seq)
}

type crash struct{ point string }

// crashAt runs f, which must reach the crash point point, and stops it
// there as if its process died (a panic out of the protocol).
func crashAt(t *testing.T, point string, f func()) {
	t.Helper()
	speculoHook = func(p string) {
		if p == point {
			panic(crash{p})
		}
	}
	defer func() {
		speculoHook = nil
		require.Equal(t, crash{point}, recover())
	}()
	f()
	t.Fatal("the crash point was not reached")
}

// TestSpeculoCrashPoints kills the writer (a panic out of the protocol,
// then a dead identity in its end) at each crash point; the next writer
// must finish or undo what it left, keep the block visible, and leak no
// extent.
func TestSpeculoCrashPoints(t *testing.T) {
	for _, point := range []string{"commit:published", "commit:indexed", "extent:pending", "gc:copied", "gc:linked", "gc:current", "gc:switched", "reap:unlinked"} {
		t.Run(point, func(t *testing.T) {
			f := newSpFix(t, backend.Heap, 4<<20)
			sp, _ := f.area(t, 1, 4096, SpeculoConfig{Slots: 2}, nil)
			w, err := sp.AttachWriter()
			require.NoError(t, err)
			for v := uint64(1); v <= 3; v++ {
				put(t, w, 7, 50, v, 0)
			}
			fresh := put(t, w, 0, 50, 100, 0)
			before, err := f.heap.Stats()
			require.NoError(t, err)
			crashAt(t, point, func() {
				if point[:2] == "gc" || point[:4] == "reap" || point[:6] == "extent" {
					w.GC()
				} else {
					put(t, w, 7, 50, 4, 0)
				}
			})
			sp.cb.Writer.Store(uint64(testutil.DeadIdentity(t)))

			r, err := sp.AttachReader()
			require.NoError(t, err)
			defer r.Close()
			c, err := r.Latest(7)
			require.NoError(t, err, "never invisible, even with the writer dead mid-way")
			wantV := uint64(3)
			if point[:6] == "commit" {
				wantV = 4
			}
			v, err := verifyPayload(c.Data)
			require.NoError(t, err)
			require.GreaterOrEqual(t, v, uint64(3))

			w2, err := sp.AttachWriter()
			require.NoError(t, err)
			defer w2.Close()
			require.NoError(t, sp.Check(), "repaired")
			c, err = r.Latest(7)
			require.NoError(t, err)
			v, err = verifyPayload(c.Data)
			require.NoError(t, err)
			require.Equal(t, wantV, v)
			got := drainAll(t, sp)
			require.Len(t, got, 2, "one valid version of each block")
			_, err = r.Latest(fresh)
			require.NoError(t, err)
			n, err := w2.Reclaim()
			require.NoError(t, err)
			_ = n
			st, err := sp.Stats()
			require.NoError(t, err)
			require.Equal(t, 1, st.Extents, "nothing left behind")
			after, err := f.heap.Stats()
			require.NoError(t, err)
			require.Equal(t, before.FreeBytes, after.FreeBytes, "no extent lost in the heap")
			// More work goes on normally.
			put(t, w2, 7, 50, 9, 0)
			require.NoError(t, w2.GC())
		})
	}
}

// TestSpeculoCrashFirstExtent kills the first writer of an area while it
// makes the first extent (once recorded as Pending, once as Oldest too):
// the next writer starts the area afresh and no extent is lost.
func TestSpeculoCrashFirstExtent(t *testing.T) {
	for _, point := range []string{"extent:pending", "first:oldest"} {
		t.Run(point, func(t *testing.T) {
			f := newSpFix(t, backend.Heap, 4<<20)
			sp, _ := f.area(t, 1, 4096, SpeculoConfig{Slots: 2}, nil)
			before, err := f.heap.Stats()
			require.NoError(t, err)
			crashAt(t, point, func() { sp.AttachWriter() })
			sp.cb.Writer.Store(uint64(testutil.DeadIdentity(t)))

			w, err := sp.AttachWriter()
			require.NoError(t, err, "the next writer starts the area")
			require.NoError(t, sp.Check())
			put(t, w, 7, 50, 1, 0)
			require.NoError(t, w.GC())
			_, err = w.Reclaim()
			require.NoError(t, err)
			st, err := sp.Stats()
			require.NoError(t, err)
			require.Equal(t, 1, st.Extents)
			after, err := f.heap.Stats()
			require.NoError(t, err)
			require.Equal(t, before.FreeBytes-st.ExtentBytes, after.FreeBytes, "one extent in use, none lost")
			require.NoError(t, w.Close())
		})
	}
}

// TestSpeculoCrashNewExtent kills the writer while it makes a new extent
// for a GC, before the extent carries the area's magic: right after the
// allocation, and once Pending names it; once in memory that showed the
// magic before (stale). The extent is its dead writer's in the heap;
// RecoverExtents frees it, clearing Pending, whether it runs before the
// next writer attaches or after, and leaves the area consistent and the
// heap as it was. The area's current extent is the dead writer's too,
// and RecoverExtents leaves it alone: it carries the magic.
func TestSpeculoCrashNewExtent(t *testing.T) {
	for _, point := range []string{"extent:alloc", "extent:noted"} {
		for _, c := range []struct {
			name                string
			recoverFirst, stale bool
		}{{"recover-first", true, false}, {"writer-first", false, false}, {"stale-magic", true, true}} {
			t.Run(point+"/"+c.name, func(t *testing.T) {
				f := newSpFix(t, backend.Heap, 4<<20)
				sp, _ := f.area(t, 1, 4096, SpeculoConfig{Slots: 2}, nil)
				w, err := sp.AttachWriter()
				require.NoError(t, err)
				put(t, w, 7, 50, 1, 0)
				dead := testutil.DeadIdentity(t)
				w.self = dead // the owner in the heap of the extents it makes
				require.NoError(t, w.GC())
				before, err := f.heap.Stats()
				require.NoError(t, err)
				if c.stale {
					// Memory that showed the magic, where the next
					// extent goes (the heap takes the start of its
					// largest free run).
					off, err := f.heap.Alloc(int(sp.g.extBytes))
					require.NoError(t, err)
					mem.MustAt[spExtentHdr](sp.buf, off).Magic.Store(spExtentMagic)
					require.NoError(t, f.heap.Free(off))
				}
				crashAt(t, point, func() { w.GC() })
				sp.cb.Writer.Store(uint64(dead))
				if point == "extent:noted" {
					require.NotZero(t, sp.cb.Pending.Load())
				}
				recoverExtents := func() {
					rc, err := RecoverExtents(f.heap, f.r.Bytes(), []*Speculo{sp})
					require.NoError(t, err)
					require.Equal(t, 1, rc.Extents, "the dead writer's unmarked extent, not its current one")
				}
				if c.recoverFirst {
					recoverExtents()
					require.Zero(t, sp.cb.Pending.Load(), "Pending no longer names the freed extent")
					require.NoError(t, sp.Check())
				}
				w2, err := sp.AttachWriter()
				require.NoError(t, err)
				defer w2.Close()
				if !c.recoverFirst {
					recoverExtents()
				}
				require.NoError(t, sp.Check())
				after, err := f.heap.Stats()
				require.NoError(t, err)
				require.Equal(t, before.FreeBytes, after.FreeBytes, "no extent lost in the heap")
				rc, err := RecoverExtents(f.heap, f.r.Bytes(), []*Speculo{sp})
				require.NoError(t, err)
				require.Zero(t, rc.Extents, "the area's own extents are left alone")
				r, err := sp.AttachReader()
				require.NoError(t, err)
				defer r.Close()
				c, err := r.Latest(7)
				require.NoError(t, err)
				v, err := verifyPayload(c.Data)
				require.NoError(t, err)
				require.Equal(t, uint64(1), v)
				put(t, w2, 7, 50, 2, 0)
				require.NoError(t, w2.GC())
				require.NoError(t, sp.Check())
			})
		}
	}
}

// TestSpeculoRemoveAfterCrashNewExtent: an area whose writer died with an
// unmarked extent in Pending is removed without an error (FreeExtents
// leaves that extent to RecoverExtents), and nothing is lost.
func TestSpeculoRemoveAfterCrashNewExtent(t *testing.T) {
	f := newSpFix(t, backend.Heap, 4<<20)
	sp, _ := f.area(t, 1, 4096, SpeculoConfig{Slots: 2}, nil)
	before, err := f.heap.Stats()
	require.NoError(t, err)
	w, err := sp.AttachWriter()
	require.NoError(t, err)
	put(t, w, 7, 50, 1, 0)
	dead := testutil.DeadIdentity(t)
	w.self = dead
	crashAt(t, "extent:noted", func() { w.GC() })
	sp.cb.Writer.Store(uint64(dead))
	require.NoError(t, sp.FreeExtents())
	rc, err := RecoverExtents(f.heap, f.r.Bytes(), []*Speculo{sp})
	require.NoError(t, err)
	require.Equal(t, 1, rc.Extents)
	after, err := f.heap.Stats()
	require.NoError(t, err)
	require.Equal(t, before.FreeBytes, after.FreeBytes)
}

// spNext is what a SpeculoReader's Next returned.
type spNext struct {
	c   SpeculoChunk
	err error
}

// nextParked calls r.Next(ctx) in a goroutine and returns once the reader
// has parked (sp's Sleepers set); the channel gets what Next returned.
func nextParked(sp *Speculo, r *SpeculoReader, ctx context.Context) <-chan spNext {
	got := make(chan spNext, 1)
	go func() {
		c, err := r.Next(ctx)
		got <- spNext{c, err}
	}()
	for sp.cb.Sleepers.Load() == 0 {
		time.Sleep(time.Millisecond)
	}
	return got
}

func TestSpeculoWaitAndNotify(t *testing.T) {
	f := newSpFix(t, backend.Heap, 4<<20)
	sp, _ := f.area(t, 1, 4096, SpeculoConfig{Slots: 2}, nil)
	sp.wait.Spin = -1 // park at once
	r, err := sp.AttachReader()
	require.NoError(t, err)
	defer r.Close()
	w, err := sp.AttachWriter()
	require.NoError(t, err)
	ctx := testutil.Context(t, time.Minute)
	got := nextParked(sp, r, ctx)
	put(t, w, 0, 33, 1, 0)
	woken := <-got
	require.NoError(t, woken.err, "woken by the commit")
	require.Len(t, woken.c.Data, 33)
	require.Zero(t, sp.cb.Sleepers.Load(), "the writer cleared the flag as it woke the reader")

	cctx, cancel := context.WithCancel(ctx)
	got = nextParked(sp, r, cctx)
	cancel()
	require.ErrorIs(t, (<-got).err, context.Canceled)

	// The writer dies: a waiting reader hears of it.
	require.NoError(t, w.Close())
	sp.cb.Writer.Store(uint64(testutil.DeadIdentity(t)))
	_, err = r.Next(ctx)
	require.ErrorIs(t, err, errs.ErrPeerDead)
	sp.cb.Writer.Store(0)
	require.True(t, sp.Abandoned() == false, "a live reader holds a slot")
}

// FuzzSpeculoCorrupt corrupts one word of an area (control block, extent
// header, index or chunks) and drives readers, a writer, Check and
// removal over it: errors are fine, panics and hangs are not.
func FuzzSpeculoCorrupt(f *testing.F) {
	for _, s := range []struct {
		part uint8
		off  uint32
		val  uint64
	}{
		{0, 0, 0}, {0, 16, 1 << 20}, {0, 24, 3}, {0, 128, 8}, {0, 136, 0}, {0, 136, 99}, {0, 272, 4096},
		{0, 280, 12345}, {0, 288, 0}, {0, 312, 8192}, {0, 388, 1000}, {0, 520, 7},
		{1, 0, 0}, {1, 8, 1}, {1, 16, 0}, {1, 128, 1 << 40}, {1, 128, 4}, {1, 136, 4096},
		{2, 0, 5}, {2, 8, 1 << 30}, {2, 8, 3}, {2, 24, 0}, {2, 16, 7},
		{3, 0, 0}, {3, 24, 1 << 31}, {3, 24, 9 << 32}, {3, 8, 0}, {3, 56, 1 << 33}, {3, 64, 0}, {3, 88, ^uint64(0)},
	} {
		f.Add(s.part, s.off, s.val)
	}
	f.Fuzz(func(t *testing.T, part uint8, off uint32, val uint64) {
		fx := newSpFix(t, backend.Heap, 2<<20)
		spec := Spec{Type: TypeSpeculo, Size: 2048, Control: SpeculoControlSize(2),
			Init: func(_ mem.Off, b []byte) error { return InitSpeculo(b, 2048, SpeculoConfig{Slots: 2, MaxBlocks: 16}) }}
		en, _, err := fx.reg.LookupOrCreate(context.Background(), 1, spec)
		require.NoError(t, err)
		sp, err := OpenSpeculo(fx.r, fx.heap, en, SpeculoEnv{Wait: WaitOptions{Spin: -1, CheckInterval: time.Millisecond}})
		require.NoError(t, err)
		w, err := sp.AttachWriter()
		require.NoError(t, err)
		for i := 0; i < 12; i++ {
			put(t, w, BlockID(1+i%3), 10+i*3, uint64(i), int64(i%4))
		}
		require.NoError(t, w.GC())
		put(t, w, 2, 5, 99, 0)
		w.Close()
		// Corrupt.
		b := fx.r.Bytes()
		var base, size uint64
		ext := sp.cb.Current.Load()
		switch part % 4 {
		case 0:
			base, size = uint64(en.Control), SpeculoControlSize(2)
		case 1:
			base, size = ext, spExtHdrSize
		case 2:
			base, size = ext+spExtHdrSize, sp.g.dataOff-spExtHdrSize
		case 3:
			base, size = ext+sp.g.dataOff, sp.g.capacity
		}
		at := base + uint64(off)%size&^7
		binary.LittleEndian.PutUint64(b[at:], val)

		sp, err = OpenSpeculo(fx.r, fx.heap, en, SpeculoEnv{Wait: WaitOptions{Spin: -1, CheckInterval: time.Millisecond}})
		if err != nil {
			require.True(t, errors.Is(err, errs.ErrCorrupt) || errors.Is(err, errs.ErrVersion), "%v", err)
			return
		}
		_ = sp.Check()
		_, _ = sp.Stats()
		if r, err := sp.AttachReader(); err == nil {
			for i := 0; i < 100; i++ {
				if _, err := r.TryNext(); err != nil {
					break
				}
			}
			for blk := BlockID(0); blk < 5; blk++ {
				r.Latest(blk)
			}
			r.Rewind()
			r.TryNext()
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Millisecond)
			r.Next(ctx)
			cancel()
			r.Close()
		}
		if w, err := sp.AttachWriter(); err == nil {
			for i := 0; i < 20; i++ {
				if b, err := w.Replace(BlockID(1+i%4), 20, 0); err == nil {
					stampPayload(b, 1)
					w.Commit()
				}
			}
			w.GC()
			w.Reclaim()
			w.Close()
		}
		_ = sp.Check()
		fx.reg.Remove(context.Background(), en, nil, sp.FreeExtents)
	})
}

// TestSpeculoFreeExtentsResumes: a removal that dies after freeing the
// first extent of a chain of four (a panic out of FreeExtents) is run
// again and frees the other three, with no error and nothing freed twice:
// each extent leaves the chain in the critical section that frees it.
func TestSpeculoFreeExtentsResumes(t *testing.T) {
	f := newSpFix(t, backend.Heap, 4<<20)
	sp, _ := f.area(t, 1, 4096, SpeculoConfig{Slots: 2, Threshold: 0}, nil)
	w, err := sp.AttachWriter()
	require.NoError(t, err)
	r, err := sp.AttachReader()
	require.NoError(t, err)
	put(t, w, 1, 200, 1, 0)
	_, err = r.TryNext()
	require.NoError(t, err) // pins the first extent
	for i := range 3 {
		put(t, w, 1, 200, uint64(10+i), 0)
		require.NoError(t, w.GC())
	}
	st, err := sp.Stats()
	require.NoError(t, err)
	require.Equal(t, 4, st.Extents)
	require.NoError(t, w.Close())
	r.Close()
	first := sp.cb.Oldest.Load()
	before := f.free(t)
	crashAt(t, "free:one", func() { sp.FreeExtents() })
	require.NotEqual(t, first, sp.cb.Oldest.Load(), "the freed extent left the chain with its free")
	require.Equal(t, before+st.ExtentBytes, f.free(t), "one extent freed before the crash")
	require.NoError(t, sp.FreeExtents(), "the run again finds the rest of the chain")
	require.Equal(t, before+4*st.ExtentBytes, f.free(t), "every extent freed once")
	require.Zero(t, sp.cb.Current.Load())
	require.Zero(t, sp.cb.Oldest.Load())
}

// TestSpeculoRemoveAfterReapCrash: a writer killed in a reap, after it
// unlinked the oldest extent and before it freed it, and no writer after
// it: removing the area frees that extent too (it is in none of the
// chains, only in Freeing). Killed after the free instead (Freeing names
// a freed extent), the removal frees the rest and reports nothing.
func TestSpeculoRemoveAfterReapCrash(t *testing.T) {
	for _, freed := range []bool{false, true} {
		t.Run(map[bool]string{false: "unlinked", true: "freed"}[freed], func(t *testing.T) {
			f := newSpFix(t, backend.Heap, 4<<20)
			sp, _ := f.area(t, 1, 4096, SpeculoConfig{Slots: 2}, nil)
			empty := f.free(t)
			w, err := sp.AttachWriter()
			require.NoError(t, err)
			for v := uint64(1); v <= 3; v++ {
				put(t, w, 7, 50, v, 0)
			}
			crashAt(t, "reap:unlinked", func() { w.GC() })
			sp.cb.Writer.Store(uint64(testutil.DeadIdentity(t)))
			out := sp.cb.Freeing.Load()
			require.NotZero(t, out)
			require.NotEqual(t, out, sp.cb.Oldest.Load(), "unlinked")
			if freed {
				require.NoError(t, sp.freeExtent(out))
			}
			require.NoError(t, sp.FreeExtents())
			require.Zero(t, sp.cb.Freeing.Load())
			require.Equal(t, empty, f.free(t), "every extent back in the heap")
		})
	}
}

// TestSpeculoSmallCapacityDefault: the default max blocks of a small area
// fits it: every capacity from the minimum up to 504 bytes was refused
// with default options (the default, at least 16, was above what the
// check allows, capacity/32), blaming max blocks the caller never set.
func TestSpeculoSmallCapacityDefault(t *testing.T) {
	for c := uint64(MinSpeculoCapacity); c <= 1024; c += 8 {
		g, err := speculoGeometry(c, 4, 0)
		require.NoError(t, err, "capacity %d with default options", c)
		require.GreaterOrEqual(t, g.maxBlocks, uint64(1))
	}
	_, err := speculoGeometry(64, 4, 16)
	require.ErrorIs(t, err, errs.ErrInvalidArgument, "max blocks set beyond the capacity is still refused")
}
