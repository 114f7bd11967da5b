package ipc

import (
	"context"
	"errors"
	"fmt"

	"github.com/heapipc/ipc/backend"
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
// exist (ctx bounds a wait for a live creator, and for the lock), opens it (open: created says whether this call made it) and
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
		if err != nil && !en.Valid() {
			// Removed under us (and open may have read freed memory).
			if try < maxAttachTries {
				continue
			}
			err = fmt.Errorf("channel %d: removed %d times while attaching: %w", id, try, ErrNotExist)
		}
		return en, c, err
	}
}

// attachEnd is attachChannel for a handle's end of a channel: the wait
// for a live creator is bounded (creatorWait), and an existing channel of
// another size than asked (want; 0: any) is ErrSizeMismatch.
func attachEnd[C any](b *Buffer, id ChannelID, spec channel.Spec, want uint64, open func(*channel.Entry) (C, error), claim func(*channel.Entry, C) error) (*channel.Entry, error) {
	ctx, cancel := b.creatorWait(context.Background())
	defer cancel()
	en, _, err := attachChannel(ctx, b, id, spec, func(en *channel.Entry, created bool) (C, error) {
		if !created && want != 0 && en.Size != want {
			var zero C
			return zero, fmt.Errorf("%s channel %d has size %d, %d asked: %w", spec.Type, id, en.Size, want, ErrSizeMismatch)
		}
		return open(en)
	}, claim)
	return en, err
}

// creatorWait bounds a wait for a live process to finish creating a
// channel (what WithReadyTimeout sets for the buffer): the library's own
// initialization takes microseconds, so a longer wait means damaged
// shared memory or a stopped creator, and ends in ErrNotReady.
func (b *Buffer) creatorWait(ctx context.Context) (context.Context, context.CancelFunc) {
	d := b.cfg.region.ReadyTimeout
	if d <= 0 {
		d = backend.DefaultReadyTimeout
	}
	return context.WithTimeout(ctx, d)
}

// claimUnder returns a claim for attachChannel that runs attach under the
// registry lock if the entry is still valid (ErrNotExist if not). The
// lock is robust and held only for short critical sections, so the wait
// for it is not bounded by a context.
func claimUnder[C, E any](b *Buffer, attach func(C) (E, error), end *E) func(*channel.Entry, C) error {
	return func(en *channel.Entry, c C) error {
		return b.reg.Attach(context.Background(), en, func() (err error) {
			*end, err = attach(c)
			return err
		})
	}
}

// closeEnd lets go of a channel end (release, which reports whether that
// left the channel removable: both ends closed and it drained) and removes
// the channel if so, in one critical section of the registry lock. Once an
// end's owner word is clear, another process's close or Recover may remove
// the channel and free its control block; the end's last writes there (its
// wake-ups) and the decision to remove must therefore not be separable
// from the release. If the lock cannot be had, the end is let go of
// anyway, and the channel is left for Recover.
func (b *Buffer) closeEnd(en *channel.Entry, release func() (removable bool), free func() error) error {
	released := false
	_, err := b.reg.Remove(context.Background(), en, func() bool {
		released = true
		return release()
	}, free)
	if !released {
		release()
	}
	return err
}

// removeChannel removes channel id of type typ for everyone if no live
// process holds an end (ErrBusy if one does). open opens the channel and
// says whether it is idle and what to free with it besides its control
// block; it runs under the registry lock once the entry is known to be
// still the same channel, since before that its control block may have
// been freed by a concurrent removal.
func (h *Handle) removeChannel(ctx context.Context, id ChannelID, typ channel.Type, open func(*channel.Entry) (idle bool, free func() error, err error)) error {
	what := "remove " + typ.String()
	if err := h.check(what); err != nil {
		return err
	}
	en, err := h.buf.reg.Lookup(id)
	if err != nil {
		return fmt.Errorf("ipc: %s %d: %w", what, id, err)
	}
	if en.Type != typ {
		return fmt.Errorf("ipc: %s %d: it is a %s channel: %w", what, id, en.Type, ErrWrongType)
	}
	var (
		busy bool
		free func() error
		oerr error
	)
	cond := func() bool {
		var idle bool
		idle, free, oerr = open(en)
		busy = oerr == nil && !idle
		return oerr == nil && idle
	}
	_, err = h.buf.reg.Remove(ctx, en, cond, func() error {
		if free == nil {
			return nil
		}
		return free()
	})
	if busy {
		return fmt.Errorf("ipc: %s %d: an end is held by a live process: %w", what, id, ErrBusy)
	}
	if err = errors.Join(err, oerr); err != nil {
		return fmt.Errorf("ipc: %s %d: %w", what, id, err)
	}
	return nil
}
