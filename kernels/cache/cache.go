// Package cache keeps loaded kernels in memory, bounded by the bytes they
// occupy rather than by their number.
//
// Entries are keyed by content hash (the lowercase hex SHA-256 of the kernel
// file), so two references to the same bytes share one entry. The least
// recently used entry is evicted first, but an entry that someone holds (a
// [Handle] obtained from [Cache.GetOrLoad] and not yet released) is pinned
// and never evicted: a kernel that is executing is never
// freed under its caller. Concurrent [Cache.GetOrLoad] calls for the same key
// share one load.
package cache

import (
	"container/list"
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
)

// ErrCacheFull is returned when an entry cannot be stored because the bytes
// held by pinned entries leave no room for it even after evicting everything
// that may be evicted.
var ErrCacheFull = errors.New("kernel cache full")

// ErrTooLarge is returned when a single entry is larger than the whole cache.
var ErrTooLarge = errors.New("kernel larger than the cache")

// ErrInvalidSize is returned for a negative entry size.
var ErrInvalidSize = errors.New("invalid kernel size")

// Loader produces the value for a key that is not cached, with its size in
// bytes. It is called at most once at a time per key.
type Loader[V any] func(ctx context.Context, key string) (value V, size int64, err error)

// Stats is a snapshot of the cache's counters and occupancy.
type Stats struct {
	Hits          uint64 // lookups answered from the cache
	Misses        uint64 // lookups that did not find the key
	Evictions     uint64 // entries removed to make room
	Loads         uint64 // loader calls started by GetOrLoad
	LoadFailures  uint64 // loader calls that returned an error
	Bytes         int64  // bytes held by all entries
	PinnedBytes   int64  // bytes held by entries in use
	Entries       int    // number of entries
	PinnedEntries int    // number of entries in use
	MaxBytes      int64  // the configured bound
}

// Cache is a byte-bounded LRU cache of values keyed by content hash. It is
// safe for concurrent use. The zero value is not usable; call New.
type Cache[V any] struct {
	maxBytes int64

	mu          sync.Mutex
	entries     map[string]*entry[V]
	lru         *list.List // unpinned entries only, most recently used at the front
	flights     map[string]*flight[V]
	bytes       int64
	pinnedBytes int64
	pinned      int

	hits, misses, evictions, loads, loadFailures uint64
}

type entry[V any] struct {
	key   string
	value V
	size  int64
	pins  int
	elem  *list.Element // position in lru while unpinned, nil while pinned
}

// flight is one load in progress, shared by every caller waiting on its key.
type flight[V any] struct {
	done     chan struct{} // closed once the outcome is settled and callbacks have run
	cancel   context.CancelFunc
	waiters  int
	resolved bool      // set under the lock when the waiters' pins have been taken
	handle   *entry[V] // pinned once per waiter on success
	err      error
}

// New returns a cache that holds at most maxBytes bytes of entries.
func New[V any](maxBytes int64) (*Cache[V], error) {
	if maxBytes <= 0 {
		return nil, fmt.Errorf("kernel cache: max bytes must be positive, got %d", maxBytes)
	}
	c := &Cache[V]{
		maxBytes: maxBytes,
		entries:  make(map[string]*entry[V]),
		lru:      list.New(),
		flights:  make(map[string]*flight[V]),
	}
	return c, nil
}

// Handle is a pinned reference to a cached value. The entry cannot be evicted
// until Release is called. A Handle must be released exactly once; further
// calls to Release do nothing.
type Handle[V any] struct {
	c        *Cache[V]
	e        *entry[V]
	released atomic.Bool
}

// Value returns the cached value. It stays valid until Release.
func (h *Handle[V]) Value() V { return h.e.value }

// Release unpins the entry, making it evictable once no other handle holds it.
func (h *Handle[V]) Release() {
	if h.released.Swap(true) {
		return
	}
	h.c.unpin(h.e)
}

// storeLocked makes room for and stores a new entry. It evicts only when the
// entry will fit afterwards, so a refused insert leaves the cache unchanged.
func (c *Cache[V]) storeLocked(key string, value V, size int64) (*entry[V], error) {
	if size < 0 {
		return nil, fmt.Errorf("%w: kernel %q has size %d bytes", ErrInvalidSize, key, size)
	}
	if size > c.maxBytes {
		return nil, fmt.Errorf("%w: kernel %q needs %d bytes, cache holds at most %d",
			ErrTooLarge, key, size, c.maxBytes)
	}
	if free := c.maxBytes - c.pinnedBytes; size > free {
		return nil, fmt.Errorf("%w: kernel %q needs %d bytes, only %d of %d are not pinned by %d kernels in use",
			ErrCacheFull, key, size, free, c.maxBytes, c.pinned)
	}
	for c.bytes+size > c.maxBytes {
		back := c.lru.Back()
		if back == nil {
			// Unreachable while the accounting is right: the free-space check
			// above guarantees enough unpinned bytes.
			return nil, fmt.Errorf("%w: kernel %q: accounting error, %d bytes held with nothing evictable",
				ErrCacheFull, key, c.bytes)
		}
		victim := back.Value.(*entry[V])
		c.dropLocked(victim)
		c.evictions++
	}
	e := &entry[V]{key: key, value: value, size: size}
	c.entries[key] = e
	c.bytes += size
	e.elem = c.lru.PushFront(e)
	return e, nil
}

// dropLocked removes an unpinned entry from the index, the LRU list and the
// byte count.
func (c *Cache[V]) dropLocked(e *entry[V]) {
	if e.elem != nil {
		c.lru.Remove(e.elem)
		e.elem = nil
	}
	delete(c.entries, e.key)
	c.bytes -= e.size
}

func (c *Cache[V]) pinLocked(e *entry[V]) *Handle[V] {
	if e.pins == 0 {
		if e.elem != nil {
			c.lru.Remove(e.elem)
			e.elem = nil
		}
		c.pinnedBytes += e.size
		c.pinned++
	}
	e.pins++
	return &Handle[V]{c: c, e: e}
}

func (c *Cache[V]) unpin(e *entry[V]) {
	c.mu.Lock()
	e.pins--
	if e.pins > 0 {
		c.mu.Unlock()
		return
	}
	c.pinnedBytes -= e.size
	c.pinned--
	e.elem = c.lru.PushFront(e)
	c.mu.Unlock()
}

// GetOrLoad returns a pinned handle to the entry for key, calling load to
// produce it when it is not cached. Concurrent calls for the same key share a
// single call to load; each caller gets its own handle and must release it.
//
// The load runs with a context that is cancelled only when every caller
// waiting on it has given up (its ctx done), so one impatient caller does not
// fail the others. A load error is returned to every waiter and nothing is
// cached, so the next call tries again. A loaded value that cannot fit
// (ErrCacheFull, ErrTooLarge) is returned as an error and dropped.
func (c *Cache[V]) GetOrLoad(ctx context.Context, key string, load Loader[V]) (*Handle[V], error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	c.mu.Lock()
	if e, ok := c.entries[key]; ok {
		c.hits++
		h := c.pinLocked(e)
		c.mu.Unlock()
		return h, nil
	}
	c.misses++
	f, joined := c.flights[key]
	if !joined {
		loadCtx, cancel := context.WithCancel(context.WithoutCancel(ctx))
		f = &flight[V]{done: make(chan struct{}), cancel: cancel}
		c.flights[key] = f
		c.loads++
		go c.runLoad(loadCtx, key, f, load)
	}
	f.waiters++
	c.mu.Unlock()

	select {
	case <-f.done:
		// f.handle and f.err are written before done is closed.
		if f.err != nil {
			return nil, f.err
		}
		return &Handle[V]{c: c, e: f.handle}, nil
	case <-ctx.Done():
		c.mu.Lock()
		if f.resolved {
			// The load finished while we were giving up: the pin it took for
			// us must be returned.
			c.mu.Unlock()
			<-f.done
			if f.err == nil {
				(&Handle[V]{c: c, e: f.handle}).Release()
			}
		} else {
			f.waiters--
			if f.waiters == 0 {
				f.cancel()
			}
			c.mu.Unlock()
		}
		return nil, fmt.Errorf("kernel cache: waiting for %q: %w", key, ctx.Err())
	}
}

func (c *Cache[V]) runLoad(ctx context.Context, key string, f *flight[V], load Loader[V]) {
	defer f.cancel()
	value, size, err := callLoader(ctx, key, load)

	c.mu.Lock()
	delete(c.flights, key)
	if err != nil {
		c.loadFailures++
		f.err = fmt.Errorf("kernel cache: loading %q: %w", key, err)
	} else if e, err := c.storeLocked(key, value, size); err != nil {
		f.err = err
	} else {
		// Even when every waiter has gone, a value that fits is kept: it
		// cost a load and the next request will probably want it. (No one
		// else can have stored key meanwhile: only this flight stores it.)
		for range f.waiters {
			c.pinLocked(e)
		}
		f.handle = e
	}
	f.resolved = true
	c.mu.Unlock()
	close(f.done)
}

// callLoader runs load, turning a panic into an error so that waiters are not
// left blocked forever.
func callLoader[V any](ctx context.Context, key string, load Loader[V]) (value V, size int64, err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("loader panicked: %v", r)
		}
	}()
	return load(ctx, key)
}

// Stats returns a snapshot of the counters and occupancy.
func (c *Cache[V]) Stats() Stats {
	c.mu.Lock()
	defer c.mu.Unlock()
	return Stats{
		Hits:          c.hits,
		Misses:        c.misses,
		Evictions:     c.evictions,
		Loads:         c.loads,
		LoadFailures:  c.loadFailures,
		Bytes:         c.bytes,
		PinnedBytes:   c.pinnedBytes,
		Entries:       len(c.entries),
		PinnedEntries: c.pinned,
		MaxBytes:      c.maxBytes,
	}
}
