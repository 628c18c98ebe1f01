package oipgrpc

import (
	"context"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/stats"
	"google.golang.org/grpc/status"
)

// Metrics are the gRPC front end's own metrics: RPCs and their latency per
// method (the full method name of a served RPC, or "unknown", so
// cardinality is fixed) and recovered panics. Inference metrics per
// kernel, device and executor belong to the runtime.
type Metrics struct {
	requests *prometheus.CounterVec
	duration *prometheus.HistogramVec
	panics   prometheus.Counter
}

// NewMetrics creates the gRPC metrics and registers them on reg.
func NewMetrics(reg prometheus.Registerer) (*Metrics, error) {
	m := &Metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kasmina_grpc_requests_total",
			Help: "gRPC requests answered, by full method name and status code.",
		}, []string{"method", "code"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "kasmina_grpc_request_duration_seconds",
			Help:    "Time from the start of a gRPC request to its status, by full method name.",
			Buckets: []float64{.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10},
		}, []string{"method"}),
		panics: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "kasmina_grpc_panics_total",
			Help: "Panics recovered in gRPC handlers and answered with INTERNAL.",
		}),
	}
	for _, c := range []prometheus.Collector{m.requests, m.duration, m.panics} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("registering gRPC metrics: %w", err)
		}
	}
	return m, nil
}

// methodMetrics are one method's series, resolved on first use and then
// read without a label lookup: an RPC costs two atomic loads here, not
// two hashes of its labels.
type methodMetrics struct {
	m        *Metrics
	name     string
	duration atomic.Pointer[prometheus.Observer]
	codes    [17]atomic.Pointer[prometheus.Counter] // by codes.Code; grpc-go defines 0 to 16
}

func (mm *methodMetrics) observe(code codes.Code, d time.Duration) {
	mm.counter(code).Inc()
	o := mm.duration.Load()
	if o == nil {
		v := mm.m.duration.WithLabelValues(mm.name)
		o = &v
		mm.duration.Store(o)
	}
	(*o).Observe(d.Seconds())
}

func (mm *methodMetrics) counter(code codes.Code) prometheus.Counter {
	if int(code) >= len(mm.codes) {
		return mm.m.requests.WithLabelValues(mm.name, code.String())
	}
	if c := mm.codes[code].Load(); c != nil {
		return *c
	}
	c := mm.m.requests.WithLabelValues(mm.name, code.String())
	mm.codes[code].Store(&c)
	return c
}

// methodTable maps the served methods' full names to their series; any
// other name is "unknown". It is filled before Serve and only read after.
type methodTable struct {
	byName  map[string]*methodMetrics
	unknown *methodMetrics
}

func newMethodTable(m *Metrics, served map[string]bool) *methodTable {
	t := &methodTable{byName: make(map[string]*methodMetrics, len(served)), unknown: &methodMetrics{m: m, name: "unknown"}}
	for name := range served {
		t.byName[name] = &methodMetrics{m: m, name: name}
	}
	return t
}

// statsHandler feeds Metrics from grpc-go's per-RPC events rather than
// from an interceptor, because it also sees the RPCs that end before any
// interceptor runs: a message over the size limit, one that does not
// decode, a method no service has.
type statsHandler struct {
	methods **methodTable // set by New once the services are registered
}

type methodKey struct{}

func (h statsHandler) TagRPC(ctx context.Context, info *stats.RPCTagInfo) context.Context {
	t := *h.methods
	mm, ok := t.byName[info.FullMethodName]
	if !ok {
		mm = t.unknown
	}
	return context.WithValue(ctx, methodKey{}, mm)
}

func (h statsHandler) HandleRPC(ctx context.Context, s stats.RPCStats) {
	end, ok := s.(*stats.End)
	if !ok {
		return
	}
	if mm, ok := ctx.Value(methodKey{}).(*methodMetrics); ok {
		mm.observe(status.Code(end.Error), end.EndTime.Sub(end.BeginTime))
	}
}

func (statsHandler) TagConn(ctx context.Context, _ *stats.ConnTagInfo) context.Context { return ctx }

func (statsHandler) HandleConn(context.Context, stats.ConnStats) {}
