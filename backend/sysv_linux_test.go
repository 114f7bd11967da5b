package backend

import (
	"errors"
	"strconv"
	"testing"
	"time"

	"github.com/heapipc/ipc/internal/sys"
	"github.com/heapipc/ipc/internal/testutil"
	"github.com/stretchr/testify/require"
)

func setSysVTag(s Semaphore, tag int) error { return sys.SemSetVal(s.(*sysvSem).id, 1, tag) }

func TestSysVKeyCollisionDetected(t *testing.T) {
	// Make a set under the key of name b that carries a's tag, as a
	// colliding heapipc name would: opening b must refuse it.
	a, b := testutil.Name(t), testutil.Name(t)
	sems, _ := Semaphores(SysV)
	sb, err := sems.Create(b, 0, SemOptions{})
	require.NoError(t, err)
	defer sb.Unlink()
	defer sb.Close()
	require.NoError(t, setSysVTag(sb, sysvTag(a)))
	_, err = sems.Open(b, SemOptions{})
	require.ErrorIs(t, err, ErrKeyCollision)
	require.False(t, errors.Is(err, ErrNotExist))
}

// collidingNames returns two names of this test whose SysV keys of class
// are the same (FNV-1a of 32 bits: a pair turns up within ~10^5 names).
func collidingNames(t *testing.T, class string) (string, string) {
	t.Helper()
	base := testutil.Name(t) + "."
	seen := map[int32]string{}
	for i := range 1 << 22 {
		n := base + strconv.Itoa(i)
		k := SysVKey(class, n)
		if o, ok := seen[k]; ok {
			return o, n
		}
		seen[k] = n
	}
	t.Fatal("no two names with one key")
	return "", ""
}

// TestSysVRemoveKeyCollision: removing a name removes nothing of another
// name whose key is the same (a removal by key used to delete it), and
// creating a semaphore under such a key says ErrKeyCollision rather than
// ErrExist (which callers take for their own stale semaphore and remove).
func TestSysVRemoveKeyCollision(t *testing.T) {
	t.Run("semaphore", func(t *testing.T) {
		a, b := collidingNames(t, "sem")
		sems, _ := Semaphores(SysV)
		sa, err := sems.Create(a, 0, SemOptions{})
		require.NoError(t, err)
		defer sa.Close()
		defer sa.Unlink()
		require.ErrorIs(t, sems.Remove(b), ErrKeyCollision)
		_, err = sems.Create(b, 0, SemOptions{})
		require.ErrorIs(t, err, ErrKeyCollision)
		require.NoError(t, sa.Post(), "a's semaphore is still there")
		require.NoError(t, sems.Remove(a), "a itself is removed by its name")
		require.ErrorIs(t, sems.Remove(a), ErrNotExist)
	})
	t.Run("segment", func(t *testing.T) {
		a, b := collidingNames(t, "shm")
		r, err := OpenRegion(a, RegionConfig{Segments: SysV, Size: 1 << 16}, nil)
		require.NoError(t, err)
		defer r.Close()
		defer r.Unlink()
		segs, _ := Segments(SysV)
		require.ErrorIs(t, segs.Remove(b), ErrKeyCollision)
		r2, err := OpenRegion(a, RegionConfig{Segments: SysV, Open: AttachOnly}, nil)
		require.NoError(t, err, "a is still there")
		require.NoError(t, r2.Close())
		require.NoError(t, segs.Remove(a), "a itself is removed by its name")
		require.ErrorIs(t, segs.Remove(a), ErrNotExist)
	})
}

// TestSysVRemoveForeignSegment: a segment under the name's key that is
// not a heapipc region (another program's) is not removed; one whose
// creator died before writing the header is (it is stale).
func TestSysVRemoveForeignSegment(t *testing.T) {
	segs, _ := Segments(SysV)
	name := testutil.Name(t)
	id, err := sys.ShmGet(SysVKey("shm", name), 1<<16, sys.IPCCreat|sys.IPCExcl|0o600)
	require.NoError(t, err)
	defer sys.ShmRemove(id)
	b, err := sys.ShmAttach(id)
	require.NoError(t, err)
	copy(b, "not heapipc")
	require.NoError(t, sys.ShmDetach(b))
	require.ErrorIs(t, segs.Remove(name), ErrNotHeapIPC)
	_, err = sys.ShmStat(id)
	require.NoError(t, err, "still there")
}

// TestChildShmGet is the child side of headerless: it makes a segment of
// SHM_SIZE bytes under SHM_NAME's key, writes nothing in it and exits.
func TestChildShmGet(t *testing.T) {
	testutil.ChildOnly(t)
	size, err := strconv.Atoi(testutil.Env(t, "SHM_SIZE"))
	require.NoError(t, err)
	_, err = sys.ShmGet(SysVKey("shm", testutil.Env(t, "SHM_NAME")), size, sys.IPCCreat|sys.IPCExcl|0o600)
	require.NoError(t, err)
	testutil.Say("made")
}

// headerless has a child make a segment of size bytes under name's key,
// all zeroes, and exit: a segment whose creator is dead and whose header
// was never written. It returns the segment's id, removed at the end if
// the test failed.
func headerless(t *testing.T, name string, size int64) int {
	c := testutil.StartChild(t, "TestChildShmGet", "SHM_NAME="+name, "SHM_SIZE="+strconv.FormatInt(size, 10))
	require.Equal(t, "made", c.Line(t, 30*time.Second))
	c.MustSucceed(t, 30*time.Second)
	id, err := sys.ShmGet(SysVKey("shm", name), 0, 0)
	require.NoError(t, err)
	t.Cleanup(func() {
		if t.Failed() {
			sys.ShmRemove(id)
		}
	})
	return id
}

// TestSysVHeaderlessSegment: a segment under a name's key, all zeroes,
// whose creator is dead, is a heapipc segment whose creator died before
// writing the header if it has a heapipc segment's size (sysvSegSize):
// Remove removes it and Open makes the region anew. With another size it
// is another program's (keys are hashes), and neither Remove nor Open
// touches it; both used to take it for a stale one of ours and remove it.
func TestSysVHeaderlessSegment(t *testing.T) {
	segs, _ := Segments(SysV)
	gone := func(id int) bool { _, err := sys.ShmStat(id); return err != nil }
	t.Run("ours", func(t *testing.T) {
		name := testutil.Name(t)
		id := headerless(t, name, sysvSegSize(1<<16))
		require.NoError(t, segs.Remove(name))
		require.True(t, gone(id), "removed")

		id = headerless(t, name, sysvSegSize(1<<16))
		r, err := OpenRegion(name, regionCfg(SysV, 1<<16), nil)
		require.NoError(t, err, "the stale segment is replaced")
		require.True(t, r.Created())
		require.True(t, gone(id), "the stale one removed")
		closeRegion(t, r)
	})
	t.Run("foreign", func(t *testing.T) {
		name := testutil.Name(t)
		id := headerless(t, name, 1<<16)
		defer sys.ShmRemove(id)
		require.ErrorIs(t, segs.Remove(name), ErrNotHeapIPC)
		_, err := segs.Attach(name)
		require.ErrorIs(t, err, ErrNotHeapIPC)
		_, err = OpenRegion(name, regionCfg(SysV, 1<<16), nil)
		require.ErrorIs(t, err, ErrNotHeapIPC)
		require.False(t, gone(id), "another program's segment is left alone")
	})
}

// TestSysVAttachRacingRemove: an attach or open that finds the key's
// object removed between the lookup and the use says ErrNotExist (it used
// to say EINVAL, which no sentinel matched, and an Open racing a Destroy
// failed instead of making the region anew).
func TestSysVAttachRacingRemove(t *testing.T) {
	segs, _ := Segments(SysV)
	sems, _ := Semaphores(SysV)
	for _, what := range []string{"segment", "semaphore"} {
		t.Run(what, func(t *testing.T) {
			name := testutil.Name(t)
			stop, done := make(chan struct{}), make(chan struct{})
			go func() {
				defer close(done)
				for {
					select {
					case <-stop:
						return
					default:
					}
					if what == "segment" {
						if s, err := segs.Create(name, 1<<16, 0, nil); err == nil {
							s.Close()
							s.Unlink()
						}
					} else if s, err := sems.Create(name, 0, SemOptions{}); err == nil {
						s.Unlink()
						s.Close()
					}
				}
			}()
			defer func() {
				close(stop)
				<-done
				segs.Remove(name)
				sems.Remove(name)
			}()
			for deadline := time.Now().Add(time.Second); time.Now().Before(deadline); {
				var err error
				if what == "segment" {
					var s Segment
					if s, err = segs.Attach(name); err == nil {
						s.Close()
					}
				} else {
					var s Semaphore
					if s, err = sems.Open(name, SemOptions{}); err == nil {
						s.Close()
					}
				}
				if err != nil && !errors.Is(err, ErrNotExist) && !errors.Is(err, ErrNotReady) {
					t.Fatalf("racing a removal: %v (no sentinel)", err)
				}
			}
		})
	}
}

// TestSysVSemData: a semaphore created with Data keeps them after its
// value and tag: SysVSemSets lists its set, with the Data, among those of
// as many values (and not among those of another count), and it works as
// any other (Open, Post, Value). A value a semaphore cannot hold is
// ErrInvalidArgument, and nothing is created.
func TestSysVSemData(t *testing.T) {
	sems, _ := Semaphores(SysV)
	name := testutil.Name(t)
	data := []int{0, 1, sysvSemMax, 12345}
	s, err := sems.Create(name, 2, SemOptions{Data: data})
	require.NoError(t, err)
	defer s.Close()
	defer s.Unlink()
	find := func(n int) *SysVSemSet {
		sets, err := SysVSemSets(n)
		require.NoError(t, err)
		for _, set := range sets {
			if set.Key == SysVKey("sem", name) {
				return &set
			}
		}
		return nil
	}
	set := find(len(data))
	require.NotNil(t, set, "listed among the sets of %d values", len(data))
	require.Equal(t, data, set.Data)
	require.Equal(t, s.(*sysvSem).id, set.ID)
	require.Nil(t, find(len(data)-1), "not among another count's")
	o, err := sems.Open(name, SemOptions{})
	require.NoError(t, err)
	defer o.Close()
	require.NoError(t, o.Post())
	v, err := s.Value()
	require.NoError(t, err)
	require.Equal(t, 3, v)

	bad := testutil.Name(t)
	for _, d := range [][]int{{-1}, {sysvSemMax + 1}} {
		_, err = sems.Create(bad, 0, SemOptions{Data: d})
		require.ErrorIs(t, err, ErrInvalidArgument)
		_, err = sems.Open(bad, SemOptions{})
		require.ErrorIs(t, err, ErrNotExist, "nothing was created")
	}
}
