package cache

import "github.com/prometheus/client_golang/prometheus"

// statsSource is what the collector reads: any Cache, whatever its value type.
type statsSource interface {
	Stats() Stats
}

// collector exports a cache's Stats as Prometheus metrics, read at scrape
// time so that the cache's hot path touches no metric.
type collector struct {
	src statsSource

	hits, misses, evictions, loadFailures *prometheus.Desc
	bytes, pinnedBytes, maxBytes          *prometheus.Desc
	entries, pinnedEntries                *prometheus.Desc
}

// newCollector returns a collector for src. constLabels (may be nil) are
// attached to every metric, for a process with several caches.
func newCollector(src statsSource, constLabels prometheus.Labels) *collector {
	d := func(name, help string) *prometheus.Desc {
		return prometheus.NewDesc("kasmina_kernel_cache_"+name, help, nil, constLabels)
	}
	return &collector{
		src:           src,
		hits:          d("hits_total", "Kernel lookups answered from the cache."),
		misses:        d("misses_total", "Kernel lookups that did not find the kernel in the cache."),
		evictions:     d("evictions_total", "Kernels evicted from the cache to make room."),
		loadFailures:  d("load_failures_total", "Kernel loads started by the cache that failed."),
		bytes:         d("bytes", "Bytes held by cached kernels."),
		pinnedBytes:   d("pinned_bytes", "Bytes held by cached kernels that are in use and cannot be evicted."),
		maxBytes:      d("max_bytes", "The cache's configured bound in bytes."),
		entries:       d("entries", "Kernels in the cache."),
		pinnedEntries: d("pinned_entries", "Cached kernels in use."),
	}
}

// Describe implements prometheus.Collector.
func (c *collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{
		c.hits, c.misses, c.evictions, c.loadFailures,
		c.bytes, c.pinnedBytes, c.maxBytes, c.entries, c.pinnedEntries,
	} {
		ch <- d
	}
}

// Collect implements prometheus.Collector.
func (c *collector) Collect(ch chan<- prometheus.Metric) {
	s := c.src.Stats()
	counter := func(d *prometheus.Desc, v uint64) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v))
	}
	gauge := func(d *prometheus.Desc, v float64) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v)
	}
	counter(c.hits, s.Hits)
	counter(c.misses, s.Misses)
	counter(c.evictions, s.Evictions)
	counter(c.loadFailures, s.LoadFailures)
	gauge(c.bytes, float64(s.Bytes))
	gauge(c.pinnedBytes, float64(s.PinnedBytes))
	gauge(c.maxBytes, float64(s.MaxBytes))
	gauge(c.entries, float64(s.Entries))
	gauge(c.pinnedEntries, float64(s.PinnedEntries))
}

// Register registers a collector of the cache's Stats on reg, as the
// kasmina_kernel_cache_* metrics; constLabels (may be nil) are attached to
// every metric, for a process with several caches.
func (c *Cache[V]) Register(reg prometheus.Registerer, constLabels prometheus.Labels) error {
	return reg.Register(newCollector(c, constLabels))
}
