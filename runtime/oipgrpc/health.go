package oipgrpc

import (
	"context"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	"github.com/esper/kasmina-host/runtime/oipgrpc/inferencepb"
)

// health is grpc.health.v1 for Kubernetes gRPC probes and load balancers:
// the empty service name (the whole server) and the inference service are
// SERVING while the backend is ready, NOT_SERVING otherwise and from the
// start of a shutdown on; any other name is NOT_FOUND, as the protocol
// says.
type health struct {
	healthpb.UnimplementedHealthServer
	backend  Backend
	poll     time.Duration
	draining chan struct{} // closed by drain
	once     sync.Once
}

func newHealth(b Backend, poll time.Duration) *health {
	return &health{backend: b, poll: poll, draining: make(chan struct{})}
}

// drain answers NOT_SERVING from now on and ends every Watch, which would
// otherwise hold a graceful stop until its client hangs up.
func (h *health) drain() { h.once.Do(func() { close(h.draining) }) }

// healthServices are the names the health service knows.
var healthServices = []string{"", inferencepb.GRPCInferenceService_ServiceDesc.ServiceName}

func (h *health) status(service string) (healthpb.HealthCheckResponse_ServingStatus, bool) {
	for _, s := range healthServices {
		if s == service {
			select {
			case <-h.draining:
				return healthpb.HealthCheckResponse_NOT_SERVING, true
			default:
			}
			if ok, _ := h.backend.Ready(); ok {
				return healthpb.HealthCheckResponse_SERVING, true
			}
			return healthpb.HealthCheckResponse_NOT_SERVING, true
		}
	}
	return healthpb.HealthCheckResponse_SERVICE_UNKNOWN, false
}

func (h *health) Check(_ context.Context, req *healthpb.HealthCheckRequest) (*healthpb.HealthCheckResponse, error) {
	st, ok := h.status(req.GetService())
	if !ok {
		return nil, status.Errorf(codes.NotFound, "no service named %q", req.GetService())
	}
	return &healthpb.HealthCheckResponse{Status: st}, nil
}

func (h *health) List(context.Context, *healthpb.HealthListRequest) (*healthpb.HealthListResponse, error) {
	out := &healthpb.HealthListResponse{Statuses: map[string]*healthpb.HealthCheckResponse{}}
	for _, s := range healthServices {
		st, _ := h.status(s)
		out.Statuses[s] = &healthpb.HealthCheckResponse{Status: st}
	}
	return out, nil
}

// Watch sends the status now and again whenever it changes (read every
// poll interval), until the client goes or the server drains: then it
// sends NOT_SERVING and ends with UNAVAILABLE. An unknown name is answered
// SERVICE_UNKNOWN, as the protocol says for Watch.
func (h *health) Watch(req *healthpb.HealthCheckRequest, stream grpc.ServerStreamingServer[healthpb.HealthCheckResponse]) error {
	tick := time.NewTicker(h.poll)
	defer tick.Stop()
	last := healthpb.HealthCheckResponse_ServingStatus(-1)
	for {
		st, _ := h.status(req.GetService())
		if st != last {
			if err := stream.Send(&healthpb.HealthCheckResponse{Status: st}); err != nil {
				return err
			}
			last = st
		}
		select {
		case <-stream.Context().Done():
			return stream.Context().Err()
		case <-h.draining:
			if last != healthpb.HealthCheckResponse_NOT_SERVING && last != healthpb.HealthCheckResponse_SERVICE_UNKNOWN {
				_ = stream.Send(&healthpb.HealthCheckResponse{Status: healthpb.HealthCheckResponse_NOT_SERVING})
			}
			return status.Error(codes.Unavailable, "the server is shutting down")
		case <-tick.C:
		}
	}
}
