package ipc

import (
	"fmt"
	"os"
	"time"

	"github.com/heapipc/ipc/alloc"
	"github.com/heapipc/ipc/backend"
)

// Option configures Open.
type Option func(*config) error

type config struct {
	region        backend.RegionConfig
	checkInterval time.Duration
	buckets       int
	slabSize      int
	recordAlign   int
	debug         bool
}

// interval is the check interval of blocked calls: WithCheckInterval's,
// or the default (alloc.DefaultCheckInterval, as the channels' own).
func (c *config) interval() time.Duration {
	if c.checkInterval > 0 {
		return c.checkInterval
	}
	return alloc.DefaultCheckInterval
}

// DefaultSize is the size of a buffer created without WithSize: 64 MiB.
const DefaultSize = 64 << 20

func defaultConfig() config {
	return config{region: backend.RegionConfig{Size: DefaultSize}}
}

// WithSize sets the total size of a buffer to create, in bytes (rounded up
// to pages). Attachers may pass it too: another size is ErrSizeMismatch.
func WithSize(n int64) Option {
	return func(c *config) error {
		if n <= 0 {
			return fmt.Errorf("size %d: %w", n, ErrInvalidSize)
		}
		c.region.Size = n
		return nil
	}
}

// WithBackends chooses the segment and semaphore backends by name
// ("posix", "sysv", "heap"; "" keeps the build's default). With
// AttachOnly, an empty semaphore backend accepts whichever the buffer was
// made with.
func WithBackends(segments, semaphores string) Option {
	return func(c *config) error {
		if segments != "" {
			k, err := backend.ParseKind(segments)
			if err != nil {
				return err
			}
			c.region.Segments = k
		}
		if semaphores != "" {
			k, err := backend.ParseKind(semaphores)
			if err != nil {
				return err
			}
			c.region.Semaphores = k
		}
		return nil
	}
}

// WithMode sets the permission of the objects a created buffer makes
// (default 0600).
func WithMode(m os.FileMode) Option {
	return func(c *config) error {
		if m&^os.ModePerm != 0 || m == 0 {
			return fmt.Errorf("mode %v: %w", m, ErrInvalidArgument)
		}
		c.region.Mode = m
		return nil
	}
}

// WithPageSize sets the heap's page size (a power of two, 4 KiB to 16 MiB;
// default 4 KiB).
func WithPageSize(n int) Option {
	return func(c *config) error { c.region.PageSize = n; return nil }
}

// CreateOnly makes Open fail with ErrExist if the buffer exists.
func CreateOnly() Option {
	return func(c *config) error { c.region.Open = backend.CreateOnly; return nil }
}

// AttachOnly makes Open fail with ErrNotExist if the buffer does not exist.
func AttachOnly() Option {
	return func(c *config) error { c.region.Open = backend.AttachOnly; return nil }
}

// WithReadyTimeout bounds how long Open waits for a live creator to finish
// creating the buffer, and how long opening a channel end waits for a live
// creator to finish creating the channel (default 10 s; ErrNotReady).
func WithReadyTimeout(d time.Duration) Option {
	return func(c *config) error { c.region.ReadyTimeout = d; return nil }
}

// WithCheckInterval sets how often a blocked call checks whether its peer
// is alive and the buffer not destroyed (default 50 ms): the bound on how
// long a dead peer goes unnoticed.
func WithCheckInterval(d time.Duration) Option {
	return func(c *config) error {
		if d <= 0 {
			return fmt.Errorf("check interval %v: %w", d, ErrInvalidArgument)
		}
		c.checkInterval = d
		return nil
	}
}

// WithChannelBuckets sizes the registry's bucket directory (a power of
// two; default 1024): lookups stay O(1) up to a few times this many
// channels. Only the creator's value counts.
func WithChannelBuckets(n int) Option {
	return func(c *config) error { c.buckets = n; return nil }
}

// WithSlabSize sets the size of the slabs handles carve records from.
func WithSlabSize(n int) Option {
	return func(c *config) error { c.slabSize = n; return nil }
}

// WithCacheLineRecords aligns records to 128 bytes instead of 16.
func WithCacheLineRecords() Option {
	return func(c *config) error { c.recordAlign = 128; return nil }
}

// WithDebug turns on checks that cost time on every call: a handle used
// from two goroutines at once is reported with a panic.
func WithDebug() Option {
	return func(c *config) error { c.debug = true; return nil }
}

// ChannelOption configures a channel end.
type ChannelOption func(*chanConfig) error

type chanConfig struct {
	capacity  uint64
	name      string
	spin      time.Duration
	producers uint64
}

// DefaultCapacity is the ring capacity of a record channel created
// without WithCapacity.
const DefaultCapacity = 1024

// WithCapacity sets the ring capacity of a record channel to create (a
// power of two; at least 2 for an MPSC channel, whose one slot could not
// tell a queued record from a free slot: ErrInvalidSize). Attaching with
// another capacity is ErrSizeMismatch.
func WithCapacity(n int) ChannelOption {
	return func(c *chanConfig) error {
		if n <= 0 || n&(n-1) != 0 || n > 1<<30 {
			return fmt.Errorf("capacity %d (want a power of two up to 2^30): %w", n, ErrInvalidSize)
		}
		c.capacity = uint64(n)
		return nil
	}
}

// WithName gives a channel a name (at most 56 bytes), shown by Stats and
// ipcctl.
func WithName(name string) ChannelOption {
	return func(c *chanConfig) error { c.name = name; return nil }
}

// WithSpin sets how long a blocking call on the channel end keeps
// checking before it parks on a futex (default 20µs; negative: park at
// once). Spinning answers a busy peer in well under a microsecond;
// parking costs a futex wake-up (several µs) but no CPU.
func WithSpin(d time.Duration) ChannelOption {
	return func(c *chanConfig) error { c.spin = d; return nil }
}
