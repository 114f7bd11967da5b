package ipc

import (
	"context"

	"github.com/heapipc/ipc/channel"
)

// attachHook, when set by a test, runs between opening a channel and
// claiming its end: the window in which another process may remove it.
var attachHook func(en *channel.Entry)

// maxAttachTries bounds how often attachChannel looks a channel up again
// after it was removed under it (each time by a process that closed its
// last end or recovered it as abandoned, so a few tries settle it).
const maxAttachTries = 8

// attachChannel looks channel id up, creating it from spec if it does not
// exist, opens it (open: created says whether this call made it) and
// claims an end (claim). Every claim runs under the registry lock against
// an entry that is still valid (Registry.Attach, or the channel type's own
// locked attach): a channel whose last end closed, or that Recover found
// abandoned, between the lookup and the claim has had its control block
// freed, and a claim then would write into memory the heap may have given
// to someone else. Such a channel is looked up again, which creates it
// anew.
func attachChannel[C any](ctx context.Context, b *Buffer, id ChannelID, spec channel.Spec,
	open func(en *channel.Entry, created bool) (C, error),
	claim func(en *channel.Entry, c C) error) (*channel.Entry, C, error) {
	for try := 1; ; try++ {
		var c C
		en, created, err := b.reg.LookupOrCreate(ctx, id, spec)
		if err != nil {
			return nil, c, err
		}
		if c, err = open(en, created); err == nil {
			if attachHook != nil {
				attachHook(en)
			}
			err = claim(en, c)
		}
		if err != nil && !en.Valid() && try < maxAttachTries {
			continue // removed under us (and open may have read freed memory)
		}
		return en, c, err
	}
}

// claimUnder returns a claim for attachChannel that runs attach under the
// registry lock if the entry is still valid (ErrNotExist if not).
func claimUnder[C, E any](ctx context.Context, b *Buffer, attach func(C) (E, error), end *E) func(*channel.Entry, C) error {
	return func(en *channel.Entry, c C) error {
		return b.reg.Attach(ctx, en, func() (err error) {
			*end, err = attach(c)
			return err
		})
	}
}
