package runtime

import (
	"strconv"
	"time"

	"github.com/esper/kasmina-host/contracts"
	"github.com/esper/kasmina-host/kernels"
	"github.com/esper/kasmina-host/runtime/admission"
	"github.com/esper/kasmina-host/runtime/health"
	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the runtime's Prometheus metrics (names follow the table in
// the project's research notes: prefix kasmina_, base units, device and
// executor labels).
type metrics struct {
	requests       *prometheus.CounterVec   // kernel, device, executor, outcome
	failures       *prometheus.CounterVec   // kernel, reason
	duration       *prometheus.HistogramVec // kernel, device, executor
	queue          *prometheus.HistogramVec // kernel
	compute        *prometheus.HistogramVec // kernel, executor
	fallbacks      *prometheus.CounterVec   // kernel, reason
	replacements   *prometheus.CounterVec   // from, to, reason
	reserved       *prometheus.GaugeVec     // kernel, device
	estimateError  *prometheus.GaugeVec     // kernel
	observedMemory *prometheus.GaugeVec     // kernel
	declaredError  *prometheus.GaugeVec     // kernel
	loadDuration   prometheus.Histogram
	seedHealth     *prometheus.GaugeVec   // layer, seed
	signals        *prometheus.CounterVec // layer
	nonFinite      *prometheus.CounterVec // kernel
	signalsInvalid prometheus.Counter
	pending        *admission.Limiter
}

// kernelObservers are one kernel's metric children, resolved once so the
// request path does no label lookups.
type kernelObservers struct {
	success     prometheus.Counter
	failed      map[string]prometheus.Counter
	failedTotal prometheus.Counter
	duration    prometheus.Observer
	queue       prometheus.Observer
	compute     prometheus.Observer
}

func (o *kernelObservers) fail(reason string) {
	if o == nil {
		return
	}
	o.failedTotal.Inc()
	if c, ok := o.failed[reason]; ok {
		c.Inc()
	}
}

func (o *kernelObservers) ok(queue, compute, total time.Duration) {
	if o == nil {
		return
	}
	o.success.Inc()
	o.queue.Observe(queue.Seconds())
	o.compute.Observe(compute.Seconds())
	o.duration.Observe(total.Seconds())
}

var latencyBuckets = []float64{25e-6, 50e-6, 100e-6, 250e-6, 500e-6, 1e-3, 2.5e-3, 5e-3, 10e-3, 25e-3, 50e-3, 100e-3, 250e-3, 500e-3, 1, 2.5}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kasmina_inference_requests_total",
			Help: "Inference requests by kernel, placed device, executor and outcome (success or failure).",
		}, []string{"kernel", "device", "executor", "outcome"}),
		failures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kasmina_inference_failures_total",
			Help: "Failed inference requests by kernel and reason (bad_input, too_large, refused, runtime, device, queue_full, canceled, timeout).",
		}, []string{"kernel", "reason"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "kasmina_inference_duration_seconds", Help: "Inference time from admission to result (queue plus compute).",
			Buckets: latencyBuckets,
		}, []string{"kernel", "device", "executor"}),
		queue: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "kasmina_queue_duration_seconds", Help: "Time requests waited for an executor slot.",
			Buckets: latencyBuckets,
		}, []string{"kernel"}),
		compute: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "kasmina_compute_duration_seconds", Help: "Time the executor spent running the kernel.",
			Buckets: latencyBuckets,
		}, []string{"kernel", "executor"}),
		fallbacks: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kasmina_fallbacks_total",
			Help: "Kernels placed on the CPU although they asked for a GPU, by reason.",
		}, []string{"kernel", "reason"}),
		replacements: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kasmina_replacements_total", Help: "Kernels moved between devices, by reason.",
		}, []string{"from", "to", "reason"}),
		reserved: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "kasmina_kernel_reserved_bytes", Help: "Memory the host has reserved for a kernel on its device.",
		}, []string{"kernel", "device"}),
		estimateError: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "kasmina_kernel_memory_estimate_error_bytes",
			Help: "The placement estimate (at the placement batch) minus the memory the kernel's load was observed to take; for calibrating estimates.",
		}, []string{"kernel"}),
		observedMemory: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "kasmina_kernel_memory_observed_bytes",
			Help: "Bytes the kernel's load allocated (weights, buffers, graph, parse garbage).",
		}, []string{"kernel"}),
		declaredError: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "kasmina_kernel_declared_footprint_error_bytes",
			Help: "The loader's own weights-plus-activations estimate minus the kernel's declared memory_footprint_mb, at the placement batch.",
		}, []string{"kernel"}),
		loadDuration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "kasmina_kernel_load_duration_seconds", Help: "Time to fetch, verify, parse and place a kernel.",
			Buckets: prometheus.ExponentialBuckets(0.001, 4, 8),
		}),
		seedHealth: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "kasmina_seed_health_score", Help: "The latest health_score of each seed's HealthSignal.",
		}, []string{"layer", "seed"}),
		signals: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kasmina_health_signals_total", Help: "HealthSignals emitted, by layer.",
		}, []string{"layer"}),
		nonFinite: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kasmina_nonfinite_outputs_total", Help: "NaN or Inf values in kernel outputs.",
		}, []string{"kernel"}),
		signalsInvalid: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "kasmina_health_signals_invalid_total", Help: "HealthSignals refused by the contract and not published.",
		}),
	}
	if reg == nil {
		return m, nil
	}
	for _, c := range []prometheus.Collector{m.requests, m.failures, m.duration, m.queue, m.compute, m.fallbacks,
		m.replacements, m.reserved, m.estimateError, m.observedMemory, m.declaredError, m.loadDuration, m.seedHealth, m.signals, m.nonFinite, m.signalsInvalid,
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "kasmina_pending_requests", Help: "Requests waiting for an executor slot.",
			ConstLabels: prometheus.Labels{"executor": cpu.Name()},
		}, func() float64 {
			if m.pending == nil {
				return 0
			}
			return float64(m.pending.Queued())
		}),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "kasmina_running_requests", Help: "Requests holding an executor slot.",
			ConstLabels: prometheus.Labels{"executor": cpu.Name()},
		}, func() float64 {
			if m.pending == nil {
				return 0
			}
			return float64(m.pending.Running())
		}),
	} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return m, nil
}

// kernel resolves one kernel's metric children: placed on device, run by
// the executor named executor.
func (m *metrics) kernel(name, device, executor string) *kernelObservers {
	o := &kernelObservers{
		success:     m.requests.WithLabelValues(name, device, executor, "success"),
		failedTotal: m.requests.WithLabelValues(name, device, executor, "failure"),
		failed:      make(map[string]prometheus.Counter, len(failureReasons)),
		duration:    m.duration.WithLabelValues(name, device, executor),
		queue:       m.queue.WithLabelValues(name),
		compute:     m.compute.WithLabelValues(name, executor),
	}
	for _, r := range failureReasons {
		o.failed[r] = m.failures.WithLabelValues(name, r)
	}
	return o
}

// failureReasons are the values of the failures counter's reason label.
var failureReasons = []string{reasonBadInput, reasonTooLarge, reasonRefused, reasonRuntime, reasonDevice, reasonQueueFull, reasonCanceled, reasonTimeout}

func (m *metrics) setReserved(kernel, device string, mib float64) {
	m.reserved.WithLabelValues(kernel, device).Set(mib * (1 << 20))
}

// observeMemory records a load's memory numbers: estimate against observed
// use, and the loader's estimate against the declared footprint.
func (m *metrics) observeMemory(kernel string, estimateMiB float64, observed int64, mc kernels.MemoryCheck) {
	m.observedMemory.WithLabelValues(kernel).Set(float64(observed))
	m.estimateError.WithLabelValues(kernel).Set(estimateMiB*(1<<20) - float64(observed))
	if mc.Declared {
		m.declaredError.WithLabelValues(kernel).Set(mc.DifferenceMiB * (1 << 20))
	}
}

func (m *metrics) moveKernel(kernel, from, to string, mib float64) {
	m.reserved.DeleteLabelValues(kernel, from)
	m.setReserved(kernel, to, mib)
}

func (m *metrics) deleteKernel(kernel, device string) {
	m.reserved.DeleteLabelValues(kernel, device)
	m.estimateError.DeleteLabelValues(kernel)
	m.observedMemory.DeleteLabelValues(kernel)
	m.declaredError.DeleteLabelValues(kernel)
	m.nonFinite.DeleteLabelValues(kernel)
	m.requests.DeletePartialMatch(prometheus.Labels{"kernel": kernel})
	m.failures.DeletePartialMatch(prometheus.Labels{"kernel": kernel})
	m.duration.DeletePartialMatch(prometheus.Labels{"kernel": kernel})
	m.queue.DeletePartialMatch(prometheus.Labels{"kernel": kernel})
	m.compute.DeletePartialMatch(prometheus.Labels{"kernel": kernel})
	m.fallbacks.DeletePartialMatch(prometheus.Labels{"kernel": kernel})
}

// breakerCollector reports each loaded kernel's circuit breaker at scrape
// time, so an unloaded kernel's series goes with it and the request path
// pays nothing.
type breakerCollector struct{ h *Host }

var breakerOpenDesc = prometheus.NewDesc("kasmina_kernel_breaker_open",
	"1 while the kernel's circuit breaker is open or half-open (its model readiness answers 503), else 0; the node's readiness does not depend on it.",
	[]string{"kernel"}, nil)

func (c breakerCollector) Describe(ch chan<- *prometheus.Desc) { ch <- breakerOpenDesc }

func (c breakerCollector) Collect(ch chan<- prometheus.Metric) {
	c.h.mu.RLock()
	defer c.h.mu.RUnlock()
	for name, l := range c.h.kernels {
		v := 0.0
		if l.breaker.State() != admission.Closed {
			v = 1
		}
		ch <- prometheus.MustNewConstMetric(breakerOpenDesc, prometheus.GaugeValue, v, name)
	}
}

func (m *metrics) observeSignal(layer string, idx int, kernel string, s *contracts.HealthSignal, sum health.Summary) {
	m.seedHealth.WithLabelValues(layer, strconv.Itoa(idx)).Set(s.HealthScore)
	m.signals.WithLabelValues(layer).Inc()
	if sum.NonFinite > 0 {
		m.nonFinite.WithLabelValues(kernel).Add(float64(sum.NonFinite))
	}
}
