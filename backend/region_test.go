package backend

import (
	"context"
	"errors"
	"fmt"
	"hash/crc32"
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/heapipc/ipc/internal/mem"
	"github.com/heapipc/ipc/internal/sys"
	"github.com/heapipc/ipc/internal/testutil"
	"github.com/stretchr/testify/require"
)

func regionCfg(k Kind, size int64) RegionConfig {
	return RegionConfig{Segments: k, Semaphores: DefaultSemaphoreKind(), Size: size}
}

func closeRegion(t *testing.T, r *Region) {
	t.Helper()
	require.NoError(t, r.Unlink())
	require.NoError(t, r.Close())
}

func TestRegionCreateAttach(t *testing.T) {
	for _, k := range Kinds {
		t.Run(string(k), func(t *testing.T) {
			name := testutil.Name(t)
			var sawInit bool
			r, err := OpenRegion(name, regionCfg(k, 100_000), func(r *Region) error {
				sawInit = true
				require.Equal(t, StateInitializing, r.State())
				copy(r.Ext(), "root")
				return nil
			})
			require.NoError(t, err)
			defer closeRegion(t, r)
			require.True(t, sawInit)
			require.True(t, r.Created())
			require.Equal(t, StateReady, r.State())
			require.Equal(t, int64(25*4096), int64(len(r.Bytes())), "size rounded up to pages")
			require.Equal(t, 24*4096, len(r.Data()))
			require.Equal(t, mem.Off(4096), r.DataOffset())
			require.Equal(t, 4096, r.PageSize())
			require.Equal(t, k, r.SegmentKind())
			require.Equal(t, sys.Self(), r.Creator())

			a, err := OpenRegion(name, regionCfg(k, 100_000), func(*Region) error {
				t.Error("init ran on attach")
				return nil
			})
			require.NoError(t, err)
			defer a.Close()
			require.False(t, a.Created())
			require.Equal(t, "root", string(a.Ext()[:4]))

			b, err := OpenRegion(name, RegionConfig{Segments: k, Open: AttachOnly}, nil)
			require.NoError(t, err, "attach with size 0 accepts any size")
			require.NoError(t, b.Close())

			_, err = OpenRegion(name, RegionConfig{Segments: k, Size: 100_000, Open: CreateOnly}, nil)
			require.ErrorIs(t, err, ErrExist)
		})
	}
}

func TestRegionBadInput(t *testing.T) {
	for _, k := range Kinds {
		t.Run(string(k), func(t *testing.T) {
			name := testutil.Name(t)
			for _, size := range []int64{-1, 1 << 50} {
				_, err := OpenRegion(name, regionCfg(k, size), nil)
				require.ErrorIs(t, err, ErrInvalidSize, "size %d", size)
			}
			_, err := OpenRegion(name, RegionConfig{Segments: k, Open: CreateOnly}, nil)
			require.ErrorIs(t, err, ErrInvalidSize, "create needs a size")
			for _, ps := range []int{1000, 2048, 4095, 1 << 25} {
				_, err := OpenRegion(name, RegionConfig{Segments: k, Size: 1 << 20, PageSize: ps}, nil)
				require.ErrorIs(t, err, ErrInvalidSize, "page size %d", ps)
			}
			_, err = OpenRegion(name, RegionConfig{Segments: k, Open: AttachOnly}, nil)
			require.ErrorIs(t, err, ErrNotExist)
			_, err = OpenRegion(name, RegionConfig{Segments: "shm"}, nil)
			require.ErrorIs(t, err, ErrInvalidArgument)

			r, err := OpenRegion(name, RegionConfig{Segments: k, Semaphores: POSIX, Size: 1 << 16}, nil)
			require.NoError(t, err)
			defer closeRegion(t, r)
			_, err = OpenRegion(name, RegionConfig{Segments: k, Semaphores: SysV, Open: AttachOnly}, nil)
			require.ErrorIs(t, err, ErrBackendMismatch)
			_, err = OpenRegion(name, RegionConfig{Segments: k, Semaphores: POSIX, Size: 1 << 17}, nil)
			require.ErrorIs(t, err, ErrSizeMismatch)
			_, err = OpenRegion(name, RegionConfig{Segments: k, Semaphores: POSIX, PageSize: 8192, Open: AttachOnly}, nil)
			require.ErrorIs(t, err, ErrSizeMismatch)
		})
	}
}

// rewriteHeader changes a ready region's header and fixes the checksum.
func rewriteHeader(r *Region, change func(h *header)) {
	h := mem.MustAt[header](r.b, 0)
	change(h)
	h.Checksum = crc32.Checksum(r.b[:checksummed], castagnoli)
}

func TestRegionCorruptHeaders(t *testing.T) {
	for _, k := range Kinds {
		t.Run(string(k), func(t *testing.T) {
			name := testutil.Name(t)
			cfg := RegionConfig{Segments: k, Semaphores: POSIX, Size: 1 << 16}
			r, err := OpenRegion(name, cfg, nil)
			require.NoError(t, err)
			defer closeRegion(t, r)
			orig := append([]byte(nil), r.b[:headerSize]...)
			attach := func() error {
				a, err := OpenRegion(name, RegionConfig{Segments: k, Semaphores: POSIX, Open: AttachOnly, ReadyTimeout: 50 * time.Millisecond}, nil)
				if err == nil {
					a.Close()
				}
				return err
			}
			cases := []struct {
				what   string
				change func(h *header)
				want   error
			}{
				{"version", func(h *header) { h.Version = LayoutVersion + 1 }, ErrVersion},
				{"magic", func(h *header) { h.Magic = 0x1234 }, ErrNotHeapIPC},
				{"page size", func(h *header) { h.PageSize = 3000 }, ErrCorrupt},
				{"data offset", func(h *header) { h.DataOffset = 1 << 40 }, ErrCorrupt},
				{"total size", func(h *header) { h.TotalSize = 1 << 40 }, ErrCorrupt},
				{"data size", func(h *header) { h.DataSize++ }, ErrCorrupt},
				{"name length", func(h *header) { h.NameLen = 1000 }, ErrCorrupt},
				{"state", func(h *header) { h.State.Store(77) }, ErrCorrupt},
				{"seg kind", func(h *header) { h.SegKind = 9 }, ErrBackendMismatch},
			}
			for _, c := range cases {
				rewriteHeader(r, c.change)
				err := attach()
				if k == SysV && c.what == "name length" {
					require.ErrorIs(t, err, ErrKeyCollision, c.what)
				} else {
					require.ErrorIs(t, err, c.want, c.what)
				}
				copy(r.b, orig)
			}
			// A flipped byte without a fixed checksum.
			r.b[30] ^= 0x40
			require.ErrorIs(t, attach(), ErrCorrupt, "checksum")
			copy(r.b, orig)
			require.NoError(t, attach(), "the restored header attaches")

			// Another name in the header: on sysv that is a key collision.
			rewriteHeader(r, func(h *header) { h.Name[0] ^= 1 })
			if k == SysV {
				require.ErrorIs(t, attach(), ErrKeyCollision)
			} else {
				require.ErrorIs(t, attach(), ErrCorrupt)
			}
			copy(r.b, orig)
		})
	}
}

// TestRegionHeaderDamagedLater: the header's sizes are validated once, on
// create or attach; a peer that overwrites them afterwards changes nothing
// this process cuts its slices with.
func TestRegionHeaderDamagedLater(t *testing.T) {
	r, err := OpenRegion(testutil.Name(t), regionCfg(Heap, 1<<16), nil)
	require.NoError(t, err)
	defer closeRegion(t, r)
	n, data, ext, ps := len(r.Bytes()), len(r.Data()), len(r.Ext()), r.PageSize()
	r.hdr.TotalSize, r.hdr.DataOffset, r.hdr.PageSize, r.hdr.SegKind = ^uint64(0), 1<<40, 3, 99
	require.Len(t, r.Bytes(), n)
	require.Len(t, r.Data(), data)
	require.Len(t, r.Ext(), ext)
	require.Equal(t, ps, r.PageSize())
	require.Equal(t, mem.Off(ps), r.DataOffset())
	require.Equal(t, Heap, r.SegmentKind())
}

func TestRegionForeignFile(t *testing.T) {
	segs, _ := Segments(POSIX)
	for _, content := range [][]byte{nil, []byte("hello"), make([]byte, 8192), []byte(string(make([]byte, 100)) + "not a header")} {
		name := testutil.Name(t)
		require.NoError(t, os.WriteFile(posixSegPath(name), content, 0o600))
		_, err := OpenRegion(name, RegionConfig{Segments: POSIX, Open: AttachOnly, ReadyTimeout: 20 * time.Millisecond}, nil)
		if len(content) == 8192 {
			// All zeros: looks like a header not yet written, by nobody.
			require.ErrorIs(t, err, ErrNotReady, "zeroed file")
		} else {
			require.ErrorIs(t, err, ErrNotHeapIPC, "content of %d bytes", len(content))
		}
		_, err = OpenRegion(name, RegionConfig{Segments: POSIX, Size: 1 << 16, ReadyTimeout: 20 * time.Millisecond}, nil)
		require.Error(t, err, "create-or-attach never takes over a foreign file")
		require.ErrorIs(t, segs.Remove(name), ErrNotHeapIPC, "Remove leaves a foreign file alone")
		got, err := os.ReadFile(posixSegPath(name))
		require.NoError(t, err)
		require.Equal(t, len(content), len(got))
		require.NoError(t, os.Remove(posixSegPath(name)))
	}
}

func staleSegment(t *testing.T, k Kind, name string, creator sys.Identity) Segment {
	segs, _ := Segments(k)
	cfg, _ := regionCfg(k, 1<<16).normalize()
	s, err := segs.Create(name, cfg.Size, 0, func(b []byte) error {
		h := mem.MustAt[header](b, 0)
		h.Version = LayoutVersion
		h.PageSize = 4096
		h.Creator = uint64(creator)
		h.State.Store(uint32(StateInitializing))
		h.Magic = Magic
		return nil
	})
	require.NoError(t, err)
	return s
}

func TestRegionStaleCreatorRecovered(t *testing.T) {
	for _, k := range Kinds {
		t.Run(string(k), func(t *testing.T) {
			name := testutil.Name(t)
			stale := staleSegment(t, k, name, testutil.DeadIdentity(t))
			defer stale.Close()
			_, err := OpenRegion(name, RegionConfig{Segments: k, Open: AttachOnly}, nil)
			require.ErrorIs(t, err, ErrStale, "attach-only reports it")

			r, err := OpenRegion(name, regionCfg(k, 1<<16), nil)
			require.NoError(t, err, "create-or-attach removes the leftover and creates anew")
			require.True(t, r.Created())
			require.Equal(t, StateReady, r.State())
			closeRegion(t, r)
		})
	}
}

func TestRegionLiveCreatorNotReady(t *testing.T) {
	for _, k := range Kinds {
		name := testutil.Name(t)
		s := staleSegment(t, k, name, sys.Self())
		_, err := OpenRegion(name, RegionConfig{Segments: k, Size: 1 << 16, ReadyTimeout: 30 * time.Millisecond}, nil)
		require.ErrorIs(t, err, ErrNotReady, "a live creator is never robbed (%s)", k)
		require.NoError(t, s.Unlink())
		require.NoError(t, s.Close())
	}
}

func TestRegionInitFailureRemoves(t *testing.T) {
	for _, k := range Kinds {
		name := testutil.Name(t)
		boom := errors.New("init failed")
		_, err := OpenRegion(name, regionCfg(k, 1<<16), func(*Region) error { return boom })
		require.ErrorIs(t, err, boom)
		_, err = OpenRegion(name, RegionConfig{Segments: k, Open: AttachOnly}, nil)
		require.ErrorIs(t, err, ErrNotExist, "%s: a failed create leaves nothing", k)
	}
}

func TestRegionDestroyedState(t *testing.T) {
	for _, k := range Kinds {
		name := testutil.Name(t)
		r, err := OpenRegion(name, regionCfg(k, 1<<16), nil)
		require.NoError(t, err)
		r.MarkDestroyed()
		_, err = OpenRegion(name, RegionConfig{Segments: k, Open: AttachOnly}, nil)
		require.ErrorIs(t, err, ErrDestroyed, k)
		closeRegion(t, r)
	}
}

// TestChildOpenRegion is the child side of TestRegionCreateRace.
func TestChildOpenRegion(t *testing.T) {
	testutil.ChildOnly(t)
	k := Kind(testutil.Env(t, "REGION_KIND"))
	r, err := OpenRegion(testutil.Env(t, "REGION_NAME"), regionCfg(k, 1<<20), slowInit)
	require.NoError(t, err)
	defer r.Close()
	require.Equal(t, "initialized", string(r.Ext()[:11]), "never attached half-made")
	testutil.Say("created=%v", r.Created())
}

func slowInit(r *Region) error {
	time.Sleep(30 * time.Millisecond)
	copy(r.Ext(), "initialized")
	return nil
}

func TestRegionCreateRace(t *testing.T) {
	for _, k := range realKinds {
		t.Run(string(k), func(t *testing.T) {
			name := testutil.Name(t)
			const n = 4
			var cs []*testutil.Child
			for i := 0; i < n; i++ {
				cs = append(cs, testutil.StartChild(t, "TestChildOpenRegion", "REGION_KIND="+string(k), "REGION_NAME="+name))
			}
			r, err := OpenRegion(name, regionCfg(k, 1<<20), slowInit)
			require.NoError(t, err)
			defer closeRegion(t, r)
			require.Equal(t, "initialized", string(r.Ext()[:11]))
			creators := 0
			if r.Created() {
				creators++
			}
			for _, c := range cs {
				line := c.Line(t, 30*time.Second)
				if line == "created=true" {
					creators++
				} else {
					require.Equal(t, "created=false", line)
				}
				c.MustSucceed(t, 30*time.Second)
			}
			require.Equal(t, 1, creators, "exactly one of %d openers created the region", n+1)
		})
	}
}

func FuzzAttach(f *testing.F) {
	// Seeds: a valid header, zeros, and a few damaged variants.
	cfg, _ := RegionConfig{Segments: Heap, Semaphores: POSIX, Size: 1 << 14}.normalize()
	valid := mem.Aligned(int(cfg.Size), 4096)
	name := "fuzz-attach"
	fillValid(valid, name, cfg)
	f.Add(append([]byte(nil), valid...))
	f.Add(make([]byte, 8192))
	f.Add(valid[:300])
	bad := append([]byte(nil), valid...)
	bad[21] = 0x80
	f.Add(bad)
	f.Fuzz(func(t *testing.T, data []byte) {
		if len(data) == 0 || len(data) > 1<<20 {
			return
		}
		segs, _ := Segments(Heap)
		n := "fuzz-" + strconv.Itoa(os.Getpid()) + "-" + fmt.Sprint(time.Now().UnixNano())
		s, err := segs.Create(n, int64(len(data)), 0, func(b []byte) error { copy(b, data); return nil })
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		defer s.Unlink()
		r, err := OpenRegion(n, RegionConfig{Segments: Heap, Semaphores: POSIX, Open: AttachOnly, ReadyTimeout: time.Millisecond}, nil)
		if err != nil {
			return
		}
		// A region that attaches must be self-consistent.
		if len(r.Data()) != int(r.hdr.DataSize) || r.PageSize() < MinPageSize || len(r.Bytes()) > len(data) {
			t.Fatalf("inconsistent region accepted: %+v", r.hdr)
		}
		r.Close()
	})
}

// fillValid writes a ready header for name, as createRegion does.
func fillValid(b []byte, name string, cfg RegionConfig) {
	h := mem.MustAt[header](b, 0)
	h.Version = LayoutVersion
	h.HeaderSize = 4096
	h.SegKind = cfg.Segments.code()
	h.SemKind = cfg.Semaphores.code()
	h.PageSize = 4096
	h.TotalSize = uint64(cfg.Size)
	h.DataOffset = 4096
	h.DataSize = uint64(cfg.Size) - 4096
	h.NameLen = uint32(len(name))
	copy(h.Name[:], name)
	h.Magic = Magic
	h.Checksum = crc32.Checksum(b[:checksummed], castagnoli)
	h.State.Store(uint32(StateReady))
}

func TestParkWake(t *testing.T) {
	var w = mem.Aligned(64, 64)
	word, _ := mem.Uint32(w, 0)
	require.ErrorIs(t, Park(context.Background(), word, 0, 10*time.Millisecond), ErrTimeout)
	require.NoError(t, Park(context.Background(), word, 1, -1), "value differs: returns at once")

	done := make(chan error, 1)
	go func() {
		for word.Load() == 0 {
			if err := Park(context.Background(), word, 0, -1); err != nil {
				done <- err
				return
			}
		}
		done <- nil
	}()
	time.Sleep(10 * time.Millisecond)
	word.Store(1)
	Wake(word, 1)
	select {
	case err := <-done:
		require.NoError(t, err)
	case <-time.After(watchdog):
		t.Fatal("Wake did not wake the parked goroutine")
	}

	word.Store(0)
	ctx, cancel := context.WithCancel(context.Background())
	go func() { done <- Park(ctx, word, 0, -1) }()
	time.Sleep(10 * time.Millisecond)
	cancel()
	select {
	case err := <-done:
		require.ErrorIs(t, err, context.Canceled)
	case <-time.After(watchdog):
		t.Fatal("cancel did not reach the parked goroutine")
	}
}

// TestRegionCreateOverDestroyed: a region marked destroyed whose name is
// still there (its destroyer is between the mark and the unlink, or died
// there) is replaced by an open that may create (it used to fail with
// ErrDestroyed until someone removed the name); an attacher of the old
// region keeps its mapping.
func TestRegionCreateOverDestroyed(t *testing.T) {
	for _, k := range Kinds {
		t.Run(string(k), func(t *testing.T) {
			name := testutil.Name(t)
			old, err := OpenRegion(name, regionCfg(k, 1<<16), nil)
			require.NoError(t, err)
			copy(old.Ext(), "old")
			old.MarkDestroyed() // and the destroyer dies here
			r, err := OpenRegion(name, regionCfg(k, 1<<16), nil)
			require.NoError(t, err)
			require.True(t, r.Created(), "a new region")
			require.Equal(t, StateReady, r.State())
			require.Equal(t, "old", string(old.Ext()[:3]), "the old mapping is still there")
			require.NoError(t, old.Unlink(), "the old region's unlink leaves the new name alone")
			a, err := OpenRegion(name, RegionConfig{Segments: k, Open: AttachOnly}, nil)
			require.NoError(t, err, "the new region is still attachable")
			require.NoError(t, a.Close())
			require.NoError(t, old.Close())
			closeRegion(t, r)
		})
	}
}

// TestRegionOtherPidNamespace: a region whose header names another pid
// namespace than this process's is refused with ErrNotSupported, before
// its creator's liveness is judged: a region "initializing" by a creator
// whose pid is dead here is not taken for stale and replaced by a
// create-capable Open. A header that names no namespace (0) is accepted.
func TestRegionOtherPidNamespace(t *testing.T) {
	self := sys.PidNamespace()
	if self == 0 {
		t.Skip("this process cannot read its pid namespace (/proc/self/ns/pid)")
	}
	for _, k := range Kinds {
		t.Run(string(k), func(t *testing.T) {
			name := testutil.Name(t)
			cfg := RegionConfig{Segments: k, Semaphores: POSIX, Size: 1 << 16}
			r, err := OpenRegion(name, cfg, nil)
			require.NoError(t, err)
			defer closeRegion(t, r)
			r.Data()[0] = 42
			open := func(mode Mode) error {
				a, err := OpenRegion(name, RegionConfig{Segments: k, Semaphores: POSIX, Open: mode, ReadyTimeout: 50 * time.Millisecond}, nil)
				if err == nil {
					defer a.Close()
					if a.Data()[0] != 42 {
						return fmt.Errorf("attached another region")
					}
				}
				return err
			}
			rewriteHeader(r, func(h *header) { h.PidNS = self + 1 })
			require.ErrorIs(t, open(AttachOnly), ErrNotSupported)
			require.ErrorIs(t, open(CreateOrAttach), ErrNotSupported)

			dead := testutil.DeadIdentity(t)
			rewriteHeader(r, func(h *header) { h.Creator = uint64(dead) })
			r.hdr.State.Store(uint32(StateInitializing))
			require.ErrorIs(t, open(CreateOrAttach), ErrNotSupported)
			r.hdr.State.Store(uint32(StateReady))

			rewriteHeader(r, func(h *header) { h.PidNS = 0 })
			require.NoError(t, open(AttachOnly), "a header that names no namespace")
			rewriteHeader(r, func(h *header) { h.PidNS = self })
			require.NoError(t, open(AttachOnly))
		})
	}
}
