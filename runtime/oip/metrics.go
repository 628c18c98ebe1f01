package oip

import (
	"fmt"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Metrics are the HTTP layer's own metrics: requests and latency per route
// (the registered pattern, never a request field, so cardinality is fixed)
// and recovered panics. Inference metrics per kernel, device and executor
// belong to the runtime's dispatcher.
type Metrics struct {
	requests *prometheus.CounterVec
	duration *prometheus.HistogramVec
	panics   prometheus.Counter
	bodyHeld prometheus.Gauge
}

// NewMetrics creates the HTTP metrics and registers them on reg.
func NewMetrics(reg prometheus.Registerer) (*Metrics, error) {
	m := &Metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kasmina_http_requests_total",
			Help: "HTTP requests answered, by route pattern and status code.",
		}, []string{"route", "code"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "kasmina_http_request_duration_seconds",
			Help:    "Time from routing an HTTP request to the end of its answer, by route pattern.",
			Buckets: []float64{.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10},
		}, []string{"route"}),
		panics: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "kasmina_http_panics_total",
			Help: "Panics recovered in HTTP handlers and answered with 500.",
		}),
		bodyHeld: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "kasmina_http_body_bytes_held",
			Help: "Bytes of request-body buffers held now across all connections (bounded by the body budget).",
		}),
	}
	for _, c := range []prometheus.Collector{m.requests, m.duration, m.panics, m.bodyHeld} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("registering HTTP metrics: %w", err)
		}
	}
	return m, nil
}

func (m *Metrics) observe(route string, code int, d time.Duration) {
	m.requests.WithLabelValues(route, strconv.Itoa(code)).Inc()
	if d > 0 {
		m.duration.WithLabelValues(route).Observe(d.Seconds())
	}
}
