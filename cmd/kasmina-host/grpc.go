package main

import (
	"context"
	"fmt"
	"log/slog"
	"net"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/esper/kasmina-host/runtime/oipgrpc"
	"github.com/esper/kasmina-host/runtime/shm"
)

// grpcFront is the gRPC listener of `serve` (--grpc-addr), over the same
// backend, token, limits and shared memory registry as HTTP.
type grpcFront struct {
	srv  *oipgrpc.Server
	ln   net.Listener
	addr string
}

// startGRPC listens on cfg.grpcAddr; nil when it is empty (disabled).
func startGRPC(cfg *serveConfig, b oipgrpc.Backend, version string, sharedMemory *shm.Registry, reg prometheus.Registerer, log *slog.Logger) (*grpcFront, error) {
	if cfg.grpcAddr == "" {
		return nil, nil
	}
	m, err := oipgrpc.NewMetrics(reg)
	if err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp", cfg.grpcAddr)
	if err != nil {
		return nil, fmt.Errorf("--grpc-addr %s: %w", cfg.grpcAddr, err)
	}
	srv := oipgrpc.New(b, oipgrpc.Options{
		ServerName: "kasmina-host", Version: version, Access: cfg.access(cfg.grpcAddr),
		MaxRecvBytes: int(cfg.maxBodyBytes), MaxElements: cfg.maxElements,
		SharedMemory: sharedMemory, Metrics: m,
	}, log)
	return &grpcFront{srv: srv, ln: ln, addr: ln.Addr().String()}, nil
}

// serve runs the listener; a failure goes to errs.
func (g *grpcFront) serve(errs chan<- error) {
	if g == nil {
		return
	}
	go func() {
		if err := g.srv.Serve(g.ln); err != nil {
			errs <- fmt.Errorf("gRPC: %w", err)
		}
	}()
}

// shutdown drains the RPCs in flight until ctx ends.
func (g *grpcFront) shutdown(ctx context.Context) error {
	if g == nil {
		return nil
	}
	return g.srv.Shutdown(ctx)
}

// sharedMemory is the system shared memory registry both front ends
// serve, or nil with --no-shared-memory.
func sharedMemory(cfg *serveConfig) *shm.Registry {
	if cfg.noSharedMemory {
		return nil
	}
	return shm.New(shm.Options{})
}
