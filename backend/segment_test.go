package backend

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"testing"
	"time"

	"github.com/heapipc/ipc/internal/testutil"
	"github.com/stretchr/testify/require"
)

func TestSegmentLifecycle(t *testing.T) {
	for _, k := range Kinds {
		t.Run(string(k), func(t *testing.T) {
			segs, err := Segments(k)
			require.NoError(t, err)
			name := testutil.Name(t)
			var filled bool
			s, err := segs.Create(name, 8192, 0, func(b []byte) error {
				filled = len(b) == 8192
				copy(b, "hello")
				return nil
			})
			require.NoError(t, err)
			require.True(t, filled, "fill saw the whole segment")
			require.Equal(t, k, s.Kind())
			require.Equal(t, name, s.Name())

			_, err = segs.Create(name, 8192, 0, nil)
			require.ErrorIs(t, err, ErrExist)

			a, err := segs.Attach(name)
			require.NoError(t, err)
			require.Equal(t, "hello", string(a.Bytes()[:5]))
			copy(a.Bytes()[100:], "from a")
			require.Equal(t, "from a", string(s.Bytes()[100:106]), "writes through one mapping show in the other")

			require.NoError(t, s.Unlink())
			_, err = segs.Attach(name)
			require.ErrorIs(t, err, ErrNotExist)
			require.Equal(t, "from a", string(a.Bytes()[100:106]), "mappings outlive the name")
			require.NoError(t, a.Unlink(), "unlinking an already removed name is not an error")

			s2, err := segs.Create(name, 4096, 0, nil)
			require.NoError(t, err, "re-create after unlink")
			require.Equal(t, make([]byte, 16), s2.Bytes()[:16], "a new segment starts zeroed")
			require.NoError(t, a.Unlink(), "unlink through a handle of the old segment")
			b2, err := segs.Attach(name)
			require.NoError(t, err, "the new segment must survive an old handle's Unlink")
			require.NoError(t, b2.Close())

			require.NoError(t, s.Close())
			require.NoError(t, a.Close())
			require.NoError(t, s2.Unlink())
			require.NoError(t, s2.Close())
			require.ErrorIs(t, segs.Remove(name), ErrNotExist)
		})
	}
}

func TestSegmentFillErrorLeavesNothing(t *testing.T) {
	for _, k := range Kinds {
		segs, _ := Segments(k)
		name := testutil.Name(t)
		boom := errors.New("boom")
		_, err := segs.Create(name, 4096, 0, func([]byte) error { return boom })
		require.ErrorIs(t, err, boom, k)
		_, err = segs.Attach(name)
		require.ErrorIs(t, err, ErrNotExist, k)
	}
}

func TestSegmentSizes(t *testing.T) {
	for _, k := range Kinds {
		segs, _ := Segments(k)
		for _, size := range []int64{0, -1, -4096, 1 << 50} {
			_, err := segs.Create(testutil.Name(t), size, 0, nil)
			require.ErrorIs(t, err, ErrInvalidSize, "%s size %d", k, size)
		}
	}
}

func TestPosixSegmentMode(t *testing.T) {
	segs, _ := Segments(POSIX)
	for _, mode := range []os.FileMode{0, 0o640} {
		name := testutil.Name(t)
		s, err := segs.Create(name, 4096, mode, nil)
		require.NoError(t, err)
		fi, err := os.Stat(posixSegPath(name))
		require.NoError(t, err)
		want := mode
		if want == 0 {
			want = DefaultMode
		}
		require.Equal(t, want, fi.Mode().Perm())
		require.NoError(t, s.Unlink())
		require.NoError(t, s.Close())
	}
}

// TestChildSegment is the child side of TestSegmentCrossProcess.
func TestChildSegment(t *testing.T) {
	testutil.ChildOnly(t)
	k := Kind(testutil.Env(t, "SEG_KIND"))
	segs, err := Segments(k)
	require.NoError(t, err)
	s, err := segs.Attach(testutil.Env(t, "SEG_NAME"))
	require.NoError(t, err)
	defer s.Close()
	b := s.Bytes()
	for i := 0; i < 4096; i++ {
		if b[i] != byte(i*7) {
			t.Fatalf("byte %d = %d, want %d", i, b[i], byte(i*7))
		}
	}
	copy(b[4096:], fmt.Sprintf("child %d was here", os.Getpid()))
	testutil.Say("done")
}

func TestSegmentCrossProcess(t *testing.T) {
	for _, k := range realKinds {
		t.Run(string(k), func(t *testing.T) {
			segs, _ := Segments(k)
			name := testutil.Name(t)
			s, err := segs.Create(name, 3*4096, 0, nil)
			require.NoError(t, err)
			defer s.Close()
			defer s.Unlink()
			for i := 0; i < 4096; i++ {
				s.Bytes()[i] = byte(i * 7)
			}
			c := testutil.StartChild(t, "TestChildSegment", "SEG_KIND="+string(k), "SEG_NAME="+name)
			require.Equal(t, "done", c.Line(t, 30*time.Second))
			c.MustSucceed(t, 30*time.Second)
			want := fmt.Sprintf("child %d was here", c.Pid())
			require.True(t, bytes.HasPrefix(s.Bytes()[4096:], []byte(want)), "the child's write is visible: %q", s.Bytes()[4096:4096+len(want)])
		})
	}
}
