package backend

import (
	"testing"

	"github.com/heapipc/ipc/internal/testutil"
)

func TestMain(m *testing.M) { testutil.Main(m) }

// realKinds are the kinds that cross processes.
var realKinds = []Kind{POSIX, SysV}
