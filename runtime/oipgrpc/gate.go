package oipgrpc

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/esper/kasmina-host/runtime/failure"
	"github.com/esper/kasmina-host/runtime/oip"
	"github.com/esper/kasmina-host/runtime/oipgrpc/inferencepb"
)

// access says which guards an RPC passes through, as in the HTTP front end.
type access int

const (
	accessOpen  access = iota // probes: no guard at all
	accessRead                // authority check; token only with TokenForReads
	accessWrite               // authority check and token
)

// accessOf is the access class of every RPC served; a served method
// missing here is guarded as if it changed state, so a new RPC is never
// open by mistake.
var accessOf = map[string]access{
	inferencepb.GRPCInferenceService_ServerLive_FullMethodName:                   accessOpen,
	inferencepb.GRPCInferenceService_ServerReady_FullMethodName:                  accessOpen,
	healthpb.Health_Check_FullMethodName:                                         accessOpen,
	healthpb.Health_Watch_FullMethodName:                                         accessOpen,
	healthpb.Health_List_FullMethodName:                                          accessOpen,
	inferencepb.GRPCInferenceService_ServerMetadata_FullMethodName:               accessRead,
	inferencepb.GRPCInferenceService_ModelReady_FullMethodName:                   accessRead,
	inferencepb.GRPCInferenceService_ModelMetadata_FullMethodName:                accessRead,
	inferencepb.GRPCInferenceService_RepositoryIndex_FullMethodName:              accessRead,
	inferencepb.GRPCInferenceService_SystemSharedMemoryStatus_FullMethodName:     accessRead,
	inferencepb.GRPCInferenceService_ModelInfer_FullMethodName:                   accessWrite,
	inferencepb.GRPCInferenceService_RepositoryModelLoad_FullMethodName:          accessWrite,
	inferencepb.GRPCInferenceService_RepositoryModelUnload_FullMethodName:        accessWrite,
	inferencepb.GRPCInferenceService_SystemSharedMemoryRegister_FullMethodName:   accessWrite,
	inferencepb.GRPCInferenceService_SystemSharedMemoryUnregister_FullMethodName: accessWrite,
}

// authError is a refusal by the gate.
type authError struct {
	code codes.Code
	msg  string
}

func (e *authError) Error() string { return e.msg }

// codeOf maps an error to its gRPC code. This is the one table from the
// host's error classes (package failure) to gRPC, beside oip's table to
// HTTP; API.md lists both side by side.
func codeOf(err error) codes.Code {
	var authErr *authError
	if errors.As(err, &authErr) {
		return authErr.code
	}
	if s, ok := status.FromError(err); ok && s.Code() != codes.Unknown {
		return s.Code() // grpc-go's own (a message over the size limit)
	}
	switch failure.ClassOf(err) {
	case failure.NotFound:
		return codes.NotFound
	case failure.BadInput, failure.Malformed:
		return codes.InvalidArgument
	case failure.Refused, failure.Conflict:
		return codes.FailedPrecondition
	case failure.TooLarge:
		return codes.ResourceExhausted
	case failure.Unsupported:
		return codes.Unimplemented
	case failure.Unavailable, failure.QueueFull:
		return codes.Unavailable
	case failure.Timeout:
		return codes.DeadlineExceeded
	case failure.Canceled:
		return codes.Canceled
	}
	return codes.Internal
}

// gate is every RPC's way in: the guards, error mapping, logging and panic
// recovery, as the HTTP front end's handle (the metrics are statsHandler's).
type gate struct {
	// served holds the full names of the methods the services register,
	// filled by New before Serve; anything else goes to unknown.
	served        map[string]bool
	log           *slog.Logger
	metrics       *Metrics
	bearer        oip.Bearer
	tokenForReads bool
	hosts         oip.HostCheck
	retryAfterMS  string
}

func newGate(o Options, log *slog.Logger) *gate {
	return &gate{
		served:        map[string]bool{},
		log:           log,
		metrics:       o.Metrics,
		bearer:        oip.NewBearer(o.Token),
		tokenForReads: o.TokenForReads,
		hosts:         oip.NewHostCheck(o.Loopback, o.AllowedHosts),
		retryAfterMS:  strconv.FormatInt(o.RetryAfter.Milliseconds(), 10),
	}
}

func (g *gate) unary(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (resp any, err error) {
	defer func() {
		if p := recover(); p != nil {
			err = g.panicked(info.FullMethod, p)
		}
		err = g.finish(ctx, info.FullMethod, err)
	}()
	if err := g.check(ctx, info.FullMethod); err != nil {
		return nil, err
	}
	return handler(ctx, req)
}

func (g *gate) stream(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) (err error) {
	ctx := ss.Context()
	defer func() {
		if p := recover(); p != nil {
			err = g.panicked(info.FullMethod, p)
		}
		err = g.finish(ctx, info.FullMethod, err)
	}()
	if err := g.check(ctx, info.FullMethod); err != nil {
		return err
	}
	return handler(srv, ss)
}

// unknown answers methods no service registers.
func (g *gate) unknown(_ any, ss grpc.ServerStream) error {
	method, _ := grpc.MethodFromServerStream(ss)
	return status.Errorf(codes.Unimplemented, "%s is not served by this host", method)
}

func (g *gate) panicked(method string, p any) error {
	g.log.Error("panic in gRPC handler", slog.String("method", method), slog.Any("panic", p))
	if g.metrics != nil {
		g.metrics.panics.Inc()
	}
	return fmt.Errorf("internal error while serving %s", method)
}

// finish turns err into a status with its code, logs and counts it.
func (g *gate) finish(ctx context.Context, method string, err error) error {
	code := codes.OK
	if err != nil {
		code = codeOf(err)
		level := slog.LevelDebug
		if code == codes.Internal || code == codes.Unknown {
			level = slog.LevelError
		}
		g.log.Log(ctx, level, "RPC failed", slog.String("method", method), slog.String("code", code.String()), slog.String("error", err.Error()))
		if code == codes.Unavailable {
			// Only a client with a retry policy reads it; the others are
			// told as much in the message.
			_ = grpc.SetTrailer(ctx, metadata.Pairs("grpc-retry-pushback-ms", g.retryAfterMS))
		}
		if _, ok := status.FromError(err); !ok || code != status.Code(err) {
			err = status.Error(code, err.Error())
		}
	}
	return err
}

// check returns nil when the RPC may run. A method no service has is let
// through to unknown, which refuses it.
func (g *gate) check(ctx context.Context, method string) error {
	if !g.served[method] {
		return nil
	}
	a, known := accessOf[method]
	if !known {
		a = accessWrite
	}
	if a == accessOpen {
		return nil
	}
	if g.hosts.On() {
		if authority := first(ctx, ":authority"); !g.hosts.Allows(authority) {
			return &authError{codes.PermissionDenied, fmt.Sprintf(":authority %q is not allowed on this listener (loopback names and the configured allow-list only)", authority)}
		}
	}
	if g.bearer.Set() && (a == accessWrite || g.tokenForReads) {
		switch err := g.bearer.Verify(first(ctx, "authorization")); {
		case errors.Is(err, oip.ErrNoBearer):
			return &authError{codes.Unauthenticated, "this RPC needs authorization: Bearer <token> metadata"}
		case err != nil:
			return &authError{codes.Unauthenticated, err.Error()}
		}
	}
	return nil
}

// first is the first value of an incoming metadata key, read without
// copying the whole metadata.
func first(ctx context.Context, key string) string {
	if v := metadata.ValueFromIncomingContext(ctx, key); len(v) > 0 {
		return v[0]
	}
	return ""
}
