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

func newCache(t *testing.T, maxBytes int64, opts ...Option[string]) *Cache[string] {
	t.Helper()
	c, err := New(maxBytes, opts...)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func mustPut(t *testing.T, c *Cache[string], key string, size int64) {
	t.Helper()
	if err := c.Put(key, "v-"+key, size); err != nil {
		t.Fatalf("Put(%q, %d): %v", key, size, err)
	}
}

func TestNewRejectsNonPositiveBound(t *testing.T) {
	for _, n := range []int64{0, -1} {
		if _, err := New[string](n); err == nil {
			t.Errorf("New(%d) succeeded, want an error", n)
		}
	}
}

func TestEvictsLeastRecentlyUsedFirst(t *testing.T) {
	var evicted []string
	c := newCache(t, 100, WithOnRemove(func(k string, _ string) { evicted = append(evicted, k) }))
	mustPut(t, c, "a", 30)
	mustPut(t, c, "b", 30)
	mustPut(t, c, "c", 30)
	// Touch a: b is now the least recently used.
	h, ok := c.Acquire("a")
	if !ok {
		t.Fatal("a missing")
	}
	h.Release()
	if got, want := c.Keys(), []string{"a", "c", "b"}; !slices.Equal(got, want) {
		t.Fatalf("recency order = %v, want %v", got, want)
	}
	mustPut(t, c, "d", 30) // needs 10 more bytes: evicts b only
	if !slices.Equal(evicted, []string{"b"}) {
		t.Fatalf("evicted %v, want [b]", evicted)
	}
	mustPut(t, c, "e", 70) // evicts c, then a
	if !slices.Equal(evicted, []string{"b", "c", "a"}) {
		t.Fatalf("evicted %v, want [b c a]", evicted)
	}
	if got, want := c.Keys(), []string{"e", "d"}; !slices.Equal(got, want) {
		t.Fatalf("keys = %v, want %v", got, want)
	}
	s := c.Stats()
	if s.Bytes != 100 || s.Entries != 2 || s.Evictions != 3 {
		t.Fatalf("stats = %+v, want 100 bytes, 2 entries, 3 evictions", s)
	}
}

func TestPinnedEntryIsNeverEvicted(t *testing.T) {
	c := newCache(t, 100)
	mustPut(t, c, "old", 50)
	h, ok := c.Acquire("old")
	if !ok {
		t.Fatal("old missing")
	}
	mustPut(t, c, "x", 50)
	mustPut(t, c, "y", 50) // must evict x, not the pinned older entry
	if !c.Contains("old") || c.Contains("x") || !c.Contains("y") {
		t.Fatalf("keys = %v, want old (pinned) and y", c.Keys())
	}
	if h.Value() != "v-old" {
		t.Fatalf("pinned value = %q", h.Value())
	}
	h.Release()
	mustPut(t, c, "z", 100) // now old is evictable
	if c.Contains("old") {
		t.Fatal("old survived after release")
	}
}

func TestInsertThatCannotFitWhilePinnedReturnsErrCacheFull(t *testing.T) {
	var removed []string
	c := newCache(t, 100, WithOnRemove(func(k string, _ string) { removed = append(removed, k) }))
	mustPut(t, c, "a", 60)
	mustPut(t, c, "b", 20)
	ha, _ := c.Acquire("a")
	defer ha.Release()
	err := c.Put("big", "v", 50)
	if !errors.Is(err, ErrCacheFull) {
		t.Fatalf("Put = %v, want ErrCacheFull", err)
	}
	for _, want := range []string{`"big"`, "50 bytes", "40 of 100"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not mention %s", err, want)
		}
	}
	// A refused insert evicts nothing.
	if !c.Contains("b") || len(removed) != 0 {
		t.Fatalf("refused insert changed the cache: keys %v, removed %v", c.Keys(), removed)
	}
	if err := c.Put("fits", "v", 40); err != nil {
		t.Fatalf("Put of 40 bytes with 40 unpinned: %v", err)
	}
}

func TestInsertErrors(t *testing.T) {
	c := newCache(t, 100)
	if err := c.Put("huge", "v", 101); !errors.Is(err, ErrTooLarge) {
		t.Errorf("Put(101 bytes) = %v, want ErrTooLarge", err)
	}
	if err := c.Put("neg", "v", -1); !errors.Is(err, ErrInvalidSize) {
		t.Errorf("Put(-1 bytes) = %v, want ErrInvalidSize", err)
	}
	if c.Len() != 0 {
		t.Errorf("Len = %d after refused inserts", c.Len())
	}
}

func TestPutOfCachedKeyKeepsExistingEntry(t *testing.T) {
	var removed []string
	c := newCache(t, 100, WithOnRemove(func(k, v string) { removed = append(removed, k+"="+v) }))
	if err := c.Put("k", "first", 10); err != nil {
		t.Fatal(err)
	}
	if err := c.Put("k", "second", 10); err != nil {
		t.Fatal(err)
	}
	h, _ := c.Acquire("k")
	defer h.Release()
	if h.Value() != "first" || c.Stats().Bytes != 10 {
		t.Fatalf("value %q bytes %d, want first, 10", h.Value(), c.Stats().Bytes)
	}
	if !slices.Equal(removed, []string{"k=second"}) {
		t.Fatalf("removed %v, want the duplicate handed back", removed)
	}
}

func TestReleaseTwiceUnpinsOnce(t *testing.T) {
	c := newCache(t, 100)
	mustPut(t, c, "a", 10)
	h1, _ := c.Acquire("a")
	h2, _ := c.Acquire("a")
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

func TestRemovePinnedKeepsBytesUntilRelease(t *testing.T) {
	var removed []string
	c := newCache(t, 100, WithOnRemove(func(k string, _ string) { removed = append(removed, k) }))
	mustPut(t, c, "a", 40)
	h, _ := c.Acquire("a")
	if !c.Remove("a") {
		t.Fatal("Remove(a) = false")
	}
	if _, ok := c.Acquire("a"); ok {
		t.Fatal("removed key still found")
	}
	if s := c.Stats(); s.Bytes != 40 || len(removed) != 0 {
		t.Fatalf("pinned removal freed early: %+v, removed %v", s, removed)
	}
	if h.Value() != "v-a" {
		t.Fatal("handle lost its value")
	}
	h.Release()
	if s := c.Stats(); s.Bytes != 0 || s.Entries != 0 || !slices.Equal(removed, []string{"a"}) {
		t.Fatalf("after release: %+v, removed %v", s, removed)
	}
	if c.Remove("a") {
		t.Fatal("second Remove(a) = true")
	}
}

func TestHitAndMissCounters(t *testing.T) {
	c := newCache(t, 100)
	if _, ok := c.Acquire("a"); ok {
		t.Fatal("empty cache hit")
	}
	mustPut(t, c, "a", 1)
	for range 3 {
		h, ok := c.Acquire("a")
		if !ok {
			t.Fatal("miss on cached key")
		}
		h.Release()
	}
	if s := c.Stats(); s.Hits != 3 || s.Misses != 1 {
		t.Fatalf("hits %d misses %d, want 3 and 1", s.Hits, s.Misses)
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
	if c.Len() != 0 {
		t.Fatal("failed load cached something")
	}
}

func TestGetOrLoadValueThatCannotFitIsReturnedAsError(t *testing.T) {
	var removed []string
	c := newCache(t, 100, WithOnRemove(func(k string, _ string) { removed = append(removed, k) }))
	mustPut(t, c, "a", 80)
	h, _ := c.Acquire("a")
	defer h.Release()
	_, err := c.GetOrLoad(context.Background(), "b", func(context.Context, string) (string, int64, error) {
		return "vb", 30, nil
	})
	if !errors.Is(err, ErrCacheFull) {
		t.Fatalf("err = %v, want ErrCacheFull", err)
	}
	if !slices.Equal(removed, []string{"b"}) {
		t.Fatalf("refused value not handed to OnRemove: %v", removed)
	}
}

func TestConcurrentUseKeepsBoundAndAccounting(t *testing.T) {
	const maxBytes = 1000
	var live atomic.Int64 // values handed out by loaders and not yet removed
	c := newCache(t, maxBytes, WithOnRemove(func(string, string) { live.Add(-1) }))
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			r := rand.New(rand.NewPCG(uint64(g), 7))
			for range 400 {
				key := fmt.Sprintf("k%d", r.IntN(40))
				size := int64(len(key)) * 37 // same key, same size
				switch r.IntN(4) {
				case 0:
					if h, ok := c.Acquire(key); ok {
						h.Release()
					}
				case 1:
					c.Remove(key)
				default:
					h, err := c.GetOrLoad(context.Background(), key, func(context.Context, string) (string, int64, error) {
						live.Add(1)
						return key, size, nil
					})
					if err != nil {
						if !errors.Is(err, ErrCacheFull) {
							t.Errorf("GetOrLoad: %v", err)
						}
						continue
					}
					if h.Value() != key {
						t.Errorf("value %q for key %q", h.Value(), key)
					}
					if s := c.Stats(); s.Bytes > maxBytes {
						t.Errorf("bytes %d over the bound %d", s.Bytes, maxBytes)
					}
					h.Release()
				}
			}
		})
	}
	wg.Wait()
	s := c.Stats()
	if s.PinnedEntries != 0 || s.PinnedBytes != 0 {
		t.Fatalf("pins leaked: %+v", s)
	}
	var sum int64
	for _, k := range c.Keys() {
		sum += int64(len(k)) * 37
	}
	if sum != s.Bytes || int64(len(c.Keys())) != int64(s.Entries) {
		t.Fatalf("accounting: keys sum to %d bytes, stats say %+v", sum, s)
	}
	if live.Load() != int64(s.Entries) {
		t.Fatalf("%d values not handed back to OnRemove, %d cached", live.Load(), s.Entries)
	}
}

func TestCollectorExportsStats(t *testing.T) {
	c := newCache(t, 100)
	mustPut(t, c, "a", 60)
	mustPut(t, c, "b", 30)
	h, _ := c.Acquire("a")
	c.Acquire("zz")
	mustPut(t, c, "c", 30) // evicts b
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
		"kasmina_kernel_cache_misses_total":        1,
		"kasmina_kernel_cache_evictions_total":     1,
		"kasmina_kernel_cache_load_failures_total": 0,
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
