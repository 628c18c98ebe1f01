package cache

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"math/rand/v2"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

func newCache(t *testing.T, maxBytes int64) *Cache[string] {
	t.Helper()
	c, err := New[string](maxBytes)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// get returns a pinned handle to key, loading "v-"+key of size bytes when
// it is not cached.
func get(t *testing.T, c *Cache[string], key string, size int64) *Handle[string] {
	t.Helper()
	h, err := c.GetOrLoad(context.Background(), key, func(context.Context, string) (string, int64, error) {
		return "v-" + key, size, nil
	})
	if err != nil {
		t.Fatalf("GetOrLoad(%q, %d bytes): %v", key, size, err)
	}
	return h
}

// touch loads or looks up key and releases it at once.
func touch(t *testing.T, c *Cache[string], key string, size int64) { get(t, c, key, size).Release() }

// keys returns the cached keys: pinned entries first (sorted), then the
// unpinned ones from most to least recently used.
func keys[V any](c *Cache[V]) []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	var pinned, lru []string
	for k, e := range c.entries {
		if e.pins > 0 {
			pinned = append(pinned, k)
		}
	}
	slices.Sort(pinned)
	for el := c.lru.Front(); el != nil; el = el.Next() {
		lru = append(lru, el.Value.(*entry[V]).key)
	}
	return append(pinned, lru...)
}

func TestNewRejectsNonPositiveBound(t *testing.T) {
	for _, n := range []int64{0, -1} {
		if _, err := New[string](n); err == nil {
			t.Errorf("New(%d) succeeded, want an error", n)
		}
	}
}

func TestEvictsLeastRecentlyUsedFirst(t *testing.T) {
	c := newCache(t, 100)
	touch(t, c, "a", 30)
	touch(t, c, "b", 30)
	touch(t, c, "c", 30)
	touch(t, c, "a", 30) // a hit: b is now the least recently used
	if got, want := keys(c), []string{"a", "c", "b"}; !slices.Equal(got, want) {
		t.Fatalf("recency order = %v, want %v", got, want)
	}
	touch(t, c, "d", 30) // needs 10 more bytes: evicts b only
	if got, want := keys(c), []string{"d", "a", "c"}; !slices.Equal(got, want) {
		t.Fatalf("after d: keys = %v, want %v", got, want)
	}
	touch(t, c, "e", 70) // evicts c, then a
	if got, want := keys(c), []string{"e", "d"}; !slices.Equal(got, want) {
		t.Fatalf("after e: keys = %v, want %v", got, want)
	}
	s := c.Stats()
	if s.Bytes != 100 || s.Entries != 2 || s.Evictions != 3 || s.Hits != 1 || s.Loads != 5 {
		t.Fatalf("stats = %+v, want 100 bytes, 2 entries, 3 evictions, 1 hit, 5 loads", s)
	}
}

func TestPinnedEntryIsNeverEvicted(t *testing.T) {
	c := newCache(t, 100)
	h := get(t, c, "old", 50)
	touch(t, c, "x", 50)
	touch(t, c, "y", 50) // must evict x, not the pinned older entry
	if got, want := keys(c), []string{"old", "y"}; !slices.Equal(got, want) {
		t.Fatalf("keys = %v, want %v (old pinned)", got, want)
	}
	if h.Value() != "v-old" {
		t.Fatalf("pinned value = %q", h.Value())
	}
	h.Release()
	touch(t, c, "z", 100) // now old is evictable
	if got := keys(c); !slices.Equal(got, []string{"z"}) {
		t.Fatalf("keys = %v after release, want [z]", got)
	}
}

func TestLoadThatCannotFitWhilePinnedReturnsErrCacheFull(t *testing.T) {
	c := newCache(t, 100)
	ha := get(t, c, "a", 60)
	defer ha.Release()
	touch(t, c, "b", 20)
	_, err := c.GetOrLoad(context.Background(), "big", func(context.Context, string) (string, int64, error) { return "v", 50, nil })
	if !errors.Is(err, ErrCacheFull) {
		t.Fatalf("GetOrLoad = %v, want ErrCacheFull", err)
	}
	for _, want := range []string{`"big"`, "50 bytes", "40 of 100"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not mention %s", err, want)
		}
	}
	// A refused load evicts nothing.
	if got := keys(c); !slices.Equal(got, []string{"a", "b"}) || c.Stats().Evictions != 0 {
		t.Fatalf("refused load changed the cache: keys %v, stats %+v", got, c.Stats())
	}
	touch(t, c, "fits", 40) // 40 bytes with 40 unpinned
}

func TestLoadSizeErrors(t *testing.T) {
	for _, c := range []struct {
		size int64
		want error
	}{{101, ErrTooLarge}, {-1, ErrInvalidSize}} {
		cache := newCache(t, 100)
		_, err := cache.GetOrLoad(context.Background(), "k", func(context.Context, string) (string, int64, error) { return "v", c.size, nil })
		if !errors.Is(err, c.want) {
			t.Errorf("a %d-byte value: %v, want %v", c.size, err, c.want)
		}
		if s := cache.Stats(); s.Entries != 0 || s.Bytes != 0 {
			t.Errorf("a %d-byte value was kept: %+v", c.size, s)
		}
	}
}

func TestReleaseTwiceUnpinsOnce(t *testing.T) {
	c := newCache(t, 100)
	h1 := get(t, c, "a", 10)
	h2 := get(t, c, "a", 10)
	h1.Release()
	h1.Release()
	if s := c.Stats(); s.PinnedEntries != 1 || s.PinnedBytes != 10 {
		t.Fatalf("after double release of one of two handles: %+v, want still pinned", s)
	}
	h2.Release()
	if s := c.Stats(); s.PinnedEntries != 0 || s.PinnedBytes != 0 {
		t.Fatalf("after releasing both: %+v", s)
	}
}

func TestHitAndMissCounters(t *testing.T) {
	c := newCache(t, 100)
	for range 4 {
		touch(t, c, "a", 1)
	}
	if s := c.Stats(); s.Hits != 3 || s.Misses != 1 || s.Loads != 1 {
		t.Fatalf("hits %d misses %d loads %d, want 3, 1 and 1", s.Hits, s.Misses, s.Loads)
	}
}

// waitFor spins until cond holds; it never sleeps on a clock, so the tests
// have no timing assumptions.
func waitFor(cond func() bool) {
	for !cond() {
		runtime.Gosched()
	}
}

func TestGetOrLoadLoadsOnceForConcurrentCallers(t *testing.T) {
	const callers = 16
	c := newCache(t, 1000)
	var calls atomic.Int32
	release := make(chan struct{})
	loader := func(ctx context.Context, key string) (string, int64, error) {
		calls.Add(1)
		<-release
		return "loaded-" + key, 100, nil
	}
	var wg sync.WaitGroup
	handles := make([]*Handle[string], callers)
	errs := make([]error, callers)
	for i := range callers {
		wg.Go(func() {
			handles[i], errs[i] = c.GetOrLoad(context.Background(), "k", loader)
		})
	}
	// Every caller has looked the key up (and joined the flight) before the
	// load is allowed to finish.
	waitFor(func() bool { return c.Stats().Misses == callers })
	close(release)
	wg.Wait()
	if n := calls.Load(); n != 1 {
		t.Fatalf("loader called %d times, want 1", n)
	}
	for i := range callers {
		if errs[i] != nil || handles[i].Value() != "loaded-k" {
			t.Fatalf("caller %d: %v, %v", i, handles[i], errs[i])
		}
	}
	if s := c.Stats(); s.PinnedEntries != 1 || s.Loads != 1 {
		t.Fatalf("stats %+v, want one pinned entry and one load", s)
	}
	for _, h := range handles {
		h.Release()
	}
	if s := c.Stats(); s.PinnedEntries != 0 || s.Bytes != 100 {
		t.Fatalf("after release: %+v", s)
	}
	h, err := c.GetOrLoad(context.Background(), "k", loader)
	if err != nil {
		t.Fatal(err)
	}
	h.Release()
	if calls.Load() != 1 || c.Stats().Hits != 1 {
		t.Fatalf("cached key loaded again (calls %d) or not counted as a hit", calls.Load())
	}
}

func TestGetOrLoadErrorIsSharedAndNotCached(t *testing.T) {
	c := newCache(t, 1000)
	boom := errors.New("boom")
	var calls atomic.Int32
	failing := func(ctx context.Context, key string) (string, int64, error) {
		calls.Add(1)
		return "", 0, boom
	}
	if _, err := c.GetOrLoad(context.Background(), "k", failing); !errors.Is(err, boom) || !strings.Contains(err.Error(), `"k"`) {
		t.Fatalf("err = %v, want boom naming the key", err)
	}
	ok := func(ctx context.Context, key string) (string, int64, error) { return "v", 1, nil }
	h, err := c.GetOrLoad(context.Background(), "k", ok)
	if err != nil {
		t.Fatalf("retry after failure: %v", err)
	}
	h.Release()
	if s := c.Stats(); s.LoadFailures != 1 || s.Loads != 2 {
		t.Fatalf("stats %+v, want 1 failure of 2 loads", s)
	}
}

func TestGetOrLoadPanickingLoaderBecomesError(t *testing.T) {
	c := newCache(t, 1000)
	_, err := c.GetOrLoad(context.Background(), "k", func(context.Context, string) (string, int64, error) {
		panic("bad kernel")
	})
	if err == nil || !strings.Contains(err.Error(), "bad kernel") {
		t.Fatalf("err = %v, want the panic as an error", err)
	}
}

func TestGetOrLoadCancelledWaiterDoesNotFailOthers(t *testing.T) {
	c := newCache(t, 1000)
	release := make(chan struct{})
	// The loader fails if its context was cancelled while it worked.
	loader := func(ctx context.Context, key string) (string, int64, error) {
		<-release
		return "v", 10, ctx.Err()
	}
	ctx1, cancel1 := context.WithCancel(context.Background())
	err1 := make(chan error, 1)
	go func() {
		_, err := c.GetOrLoad(ctx1, "k", loader)
		err1 <- err
	}()
	waitFor(func() bool { return c.Stats().Misses == 1 })
	type result struct {
		h   *Handle[string]
		err error
	}
	res2 := make(chan result, 1)
	go func() {
		h, err := c.GetOrLoad(context.Background(), "k", loader)
		res2 <- result{h, err}
	}()
	waitFor(func() bool { return c.Stats().Misses == 2 })
	cancel1()
	if err := <-err1; !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled caller got %v, want context.Canceled", err)
	}
	close(release)
	r := <-res2
	if r.err != nil || r.h.Value() != "v" {
		t.Fatalf("remaining caller got %v, %v", r.h, r.err)
	}
	r.h.Release()
	if s := c.Stats(); s.PinnedEntries != 0 {
		t.Fatalf("pins leaked: %+v", s)
	}
}

func TestGetOrLoadLastWaiterLeavingCancelsLoad(t *testing.T) {
	c := newCache(t, 1000)
	cancelled := make(chan struct{})
	loader := func(ctx context.Context, key string) (string, int64, error) {
		<-ctx.Done()
		close(cancelled)
		return "", 0, ctx.Err()
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		_, err := c.GetOrLoad(ctx, "k", loader)
		done <- err
	}()
	waitFor(func() bool { return c.Stats().Misses == 1 })
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v", err)
	}
	<-cancelled // the test hangs (and times out) if the load is never cancelled
	waitFor(func() bool { return c.Stats().LoadFailures == 1 })
	if c.Stats().Entries != 0 {
		t.Fatal("failed load cached something")
	}
}

func TestConcurrentUseKeepsBoundAndAccounting(t *testing.T) {
	const maxBytes = 1000
	c := newCache(t, maxBytes)
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			r := rand.New(rand.NewPCG(uint64(g), 7))
			var held []*Handle[string]
			for range 400 {
				key := fmt.Sprintf("k%d", r.IntN(40))
				size := int64(len(key)) * 37 // same key, same size
				h, err := c.GetOrLoad(context.Background(), key, func(context.Context, string) (string, int64, error) {
					return key, size, nil
				})
				if err != nil {
					if !errors.Is(err, ErrCacheFull) {
						t.Errorf("GetOrLoad: %v", err)
					}
				} else {
					if h.Value() != key {
						t.Errorf("value %q for key %q", h.Value(), key)
					}
					held = append(held, h)
				}
				if s := c.Stats(); s.Bytes > maxBytes || s.PinnedBytes > s.Bytes {
					t.Errorf("stats %+v: over the bound %d or more pinned than held", s, maxBytes)
				}
				// Hold up to two handles, releasing the oldest.
				if len(held) > 2 || (len(held) > 0 && r.IntN(2) == 0) {
					held[0].Release()
					held = held[1:]
				}
			}
			for _, h := range held {
				h.Release()
			}
		})
	}
	wg.Wait()
	s := c.Stats()
	if s.PinnedEntries != 0 || s.PinnedBytes != 0 {
		t.Fatalf("pins leaked: %+v", s)
	}
	var sum int64
	ks := keys(c)
	for _, k := range ks {
		sum += int64(len(k)) * 37
	}
	if sum != s.Bytes || len(ks) != s.Entries {
		t.Fatalf("accounting: keys %v sum to %d bytes, stats say %+v", ks, sum, s)
	}
}

func TestCollectorExportsStats(t *testing.T) {
	c := newCache(t, 100)
	h := get(t, c, "a", 60)
	touch(t, c, "b", 30)
	touch(t, c, "a", 60) // a hit
	touch(t, c, "c", 30) // evicts b
	_, _ = c.GetOrLoad(context.Background(), "bad", func(context.Context, string) (string, int64, error) {
		return "", 0, errors.New("boom")
	})
	reg := prometheus.NewPedanticRegistry()
	if err := c.Register(reg, prometheus.Labels{"cache": "cpu"}); err != nil {
		t.Fatal(err)
	}
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]float64{}
	for _, mf := range families {
		for _, m := range mf.GetMetric() {
			if l := m.GetLabel(); len(l) != 1 || l[0].GetName() != "cache" || l[0].GetValue() != "cpu" {
				t.Errorf("%s: labels %v, want cache=cpu", mf.GetName(), l)
			}
			switch mf.GetType() {
			case dto.MetricType_COUNTER:
				got[mf.GetName()] = m.GetCounter().GetValue()
			case dto.MetricType_GAUGE:
				got[mf.GetName()] = m.GetGauge().GetValue()
			default:
				t.Errorf("%s has type %v", mf.GetName(), mf.GetType())
			}
		}
	}
	want := map[string]float64{
		"kasmina_kernel_cache_hits_total":          1,
		"kasmina_kernel_cache_misses_total":        4,
		"kasmina_kernel_cache_evictions_total":     1,
		"kasmina_kernel_cache_load_failures_total": 1,
		"kasmina_kernel_cache_bytes":               90,
		"kasmina_kernel_cache_pinned_bytes":        60,
		"kasmina_kernel_cache_max_bytes":           100,
		"kasmina_kernel_cache_entries":             2,
		"kasmina_kernel_cache_pinned_entries":      1,
	}
	if !maps.Equal(got, want) {
		t.Fatalf("metrics\n got %v\nwant %v", got, want)
	}
	h.Release()
}
