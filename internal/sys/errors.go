package sys

import "errors"

// ErrTimedOut is returned by FutexWait when its timeout runs out.
var ErrTimedOut = errors.New("futex wait timed out")
