package backend

import (
	"errors"
	"testing"

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
