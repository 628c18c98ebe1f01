// Package oipgrpc is the Kasmina host's gRPC front end: the Open Inference
// Protocol's service inference.GRPCInferenceService (KServe v2, as Triton
// serves it, so that Triton's and KServe's gRPC clients work unchanged),
// with Triton's model repository and system shared memory extensions, and
// the standard health service grpc.health.v1 for Kubernetes gRPC probes.
//
// It is the second thin front end over the same backend as the HTTP one
// (package oip): the same model views (oip.ModelInfo, oip.Tensor), the
// same error classes (package failure), mapped to gRPC codes in one table
// (codeOf), the same bearer-token and loopback rules, the same limits and
// one shared memory registry for both protocols. The RPCs are documented
// in API.md beside this file.
package oipgrpc

import (
	"context"
	"log/slog"
	"net"
	goruntime "runtime"
	"time"

	"google.golang.org/grpc"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/keepalive"

	"github.com/esper/kasmina-host/runtime/oip"
	"github.com/esper/kasmina-host/runtime/oipgrpc/inferencepb"
	"github.com/esper/kasmina-host/runtime/shm"
)

// DefaultAddr is where the daemon serves gRPC by default: loopback, next
// to the HTTP port (8470).
const DefaultAddr = "127.0.0.1:8471"

// Defaults for Options fields left at their zero value.
const (
	DefaultMaxRecvBytes         = oip.DefaultMaxBodyBytes
	DefaultMaxSendBytes         = 64 << 20
	DefaultLoadTimeout          = 45 * time.Second
	DefaultMaxConcurrentStreams = 256
	DefaultRetryAfter           = time.Second
	DefaultHealthPoll           = time.Second
	handshakeTimeout            = 5 * time.Second // as the HTTP ReadHeaderTimeout
	maxHeaderListBytes          = 64 << 10        // as the HTTP MaxHeaderBytes
)

// Options configures the server. The zero value serves without a token,
// without an authority check and without system shared memory, with the
// default limits.
type Options struct {
	// ServerName and Version are reported by ServerMetadata.
	ServerName, Version string
	// Access is who may call (oip.Access): the bearer token, sent as
	// "authorization: Bearer ..." metadata, and the :authority check.
	oip.Access
	// MaxRecvBytes caps one request message; larger ones get
	// RESOURCE_EXHAUSTED before they are decoded.
	MaxRecvBytes int
	// MaxSendBytes caps one answer; an inference whose output would not
	// fit gets RESOURCE_EXHAUSTED.
	MaxSendBytes int
	// MaxElements caps the element count of one input tensor.
	MaxElements int64
	// LoadTimeout bounds RepositoryModelLoad; past it the load is
	// cancelled and the answer is DEADLINE_EXCEEDED.
	LoadTimeout time.Duration
	// MaxConcurrentStreams bounds the RPCs in flight on one connection.
	MaxConcurrentStreams uint32
	// RetryAfter is sent as grpc-retry-pushback-ms with UNAVAILABLE
	// answers, which gRPC clients with a retry policy honour.
	RetryAfter time.Duration
	// HealthPoll is how often a grpc.health.v1 Watch re-reads readiness.
	HealthPoll time.Duration
	// SharedMemory, when set, serves the system shared memory extension
	// on this registry (shared with the HTTP front end). When nil those
	// RPCs answer UNIMPLEMENTED and a tensor naming a region is refused.
	SharedMemory *shm.Registry
	// Metrics, when set, records the requests and their latency per RPC.
	Metrics *Metrics
}

func (o Options) withDefaults() Options {
	if o.ServerName == "" {
		o.ServerName = oip.DefaultServerName
	}
	if o.Version == "" {
		o.Version = "dev"
	}
	if o.MaxRecvBytes <= 0 {
		o.MaxRecvBytes = DefaultMaxRecvBytes
	}
	if o.MaxSendBytes <= 0 {
		o.MaxSendBytes = DefaultMaxSendBytes
	}
	if o.MaxElements <= 0 {
		o.MaxElements = oip.DefaultMaxElements
	}
	if o.LoadTimeout <= 0 {
		o.LoadTimeout = DefaultLoadTimeout
	}
	if o.MaxConcurrentStreams == 0 {
		o.MaxConcurrentStreams = DefaultMaxConcurrentStreams
	}
	if o.RetryAfter <= 0 {
		o.RetryAfter = DefaultRetryAfter
	}
	if o.HealthPoll <= 0 {
		o.HealthPoll = DefaultHealthPoll
	}
	return o
}

// Server is the gRPC front end: create it with New, run it with Serve,
// end it with Shutdown.
type Server struct {
	grpc   *grpc.Server
	health *health
	gate   *gate
}

// New returns a server for backend; a nil logger discards logs.
func New(backend Backend, opts Options, logger *slog.Logger) *Server {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	opts = opts.withDefaults()
	g := newGate(opts, logger)
	serverOpts := []grpc.ServerOption{
		grpc.MaxRecvMsgSize(opts.MaxRecvBytes),
		grpc.MaxSendMsgSize(opts.MaxSendBytes),
		grpc.MaxConcurrentStreams(opts.MaxConcurrentStreams),
		grpc.ConnectionTimeout(handshakeTimeout),
		grpc.MaxHeaderListSize(maxHeaderListBytes),
		// Clients may ping an idle connection every 10 s at most;
		// faster pings close it (GOAWAY), as grpc-go's default policy
		// would after 5 minutes' worth.
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 10 * time.Second, PermitWithoutStream: true}),
		grpc.ChainUnaryInterceptor(g.unary),
		grpc.ChainStreamInterceptor(g.stream),
		grpc.UnknownServiceHandler(g.unknown),
		// RPCs run on a pool of GOMAXPROCS goroutines (a new one only
		// when all are busy) rather than one new goroutine each: a
		// kernel's call stack is deep, and a fresh goroutine grew and
		// copied its stack on every inference (about a tenth of the
		// CPU of a small one in a profile).
		grpc.NumStreamWorkers(uint32(goruntime.GOMAXPROCS(0))),
	}
	var methods *methodTable // filled below, before Serve
	if opts.Metrics != nil {
		serverOpts = append(serverOpts, grpc.StatsHandler(statsHandler{methods: &methods}))
	}
	gs := grpc.NewServer(serverOpts...)
	inferencepb.RegisterGRPCInferenceServiceServer(gs, &service{backend: backend, opts: opts, log: logger})
	h := newHealth(backend, opts.HealthPoll)
	healthpb.RegisterHealthServer(gs, h)
	for name, info := range gs.GetServiceInfo() {
		for _, m := range info.Methods {
			g.served["/"+name+"/"+m.Name] = true
		}
	}
	if opts.Metrics != nil {
		methods = newMethodTable(opts.Metrics, g.served)
	}
	return &Server{grpc: gs, health: h, gate: g}
}

// Serve accepts connections on ln until Shutdown; it returns nil after
// Shutdown, and the listener's error otherwise.
func (s *Server) Serve(ln net.Listener) error { return s.grpc.Serve(ln) }

// Shutdown stops accepting connections and waits for the RPCs in flight
// until ctx ends; then it closes every connection, which cancels the
// contexts of the RPCs left, and returns ctx's error without waiting for
// handlers that ignore their context. The health service answers
// NOT_SERVING from its start, and its Watch streams end at once.
func (s *Server) Shutdown(ctx context.Context) error {
	s.health.drain()
	done := make(chan struct{})
	go func() {
		s.grpc.GracefulStop()
		close(done)
	}()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		// Stop closes every connection at once, but may then wait on
		// the lock GracefulStop holds while it waits for handlers that
		// ignore their cancelled context: it runs on its own so that
		// the deadline holds.
		go s.grpc.Stop()
		return ctx.Err()
	}
}
