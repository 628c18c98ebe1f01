package oipgrpc

import (
	"context"
	"fmt"
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

func (m *Metrics) observe(method string, code codes.Code, d time.Duration) {
	m.requests.WithLabelValues(method, code.String()).Inc()
	m.duration.WithLabelValues(method).Observe(d.Seconds())
}

// statsHandler feeds Metrics from grpc-go's per-RPC events rather than
// from an interceptor, because it also sees the RPCs that end before any
// interceptor runs: a message over the size limit, one that does not
// decode, a method no service has.
type statsHandler struct {
	m      *Metrics
	served map[string]bool // the gate's, complete before Serve
}

type methodKey struct{}

func (h statsHandler) TagRPC(ctx context.Context, info *stats.RPCTagInfo) context.Context {
	method := info.FullMethodName
	if !h.served[method] {
		method = "unknown"
	}
	return context.WithValue(ctx, methodKey{}, method)
}

func (h statsHandler) HandleRPC(ctx context.Context, s stats.RPCStats) {
	end, ok := s.(*stats.End)
	if !ok {
		return
	}
	method, _ := ctx.Value(methodKey{}).(string)
	h.m.observe(method, status.Code(end.Error), end.EndTime.Sub(end.BeginTime))
}

func (statsHandler) TagConn(ctx context.Context, _ *stats.ConnTagInfo) context.Context { return ctx }

func (statsHandler) HandleConn(context.Context, stats.ConnStats) {}
