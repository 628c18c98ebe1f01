package oipgrpc

import (
	"context"

	"github.com/esper/kasmina-host/runtime/oip"
)

// Backend is what the gRPC front end needs from the host. It is the HTTP
// front end's boundary too (oip.Backend has the same methods), so one
// adapter over the runtime, oip.HostBackend, serves both protocols and a
// change of the runtime's API is absorbed in one place. Errors carry their
// class (package failure); an unclassified error is INTERNAL.
type Backend interface {
	// Ready reports whether the server can serve every loaded model;
	// reason explains a false answer.
	Ready() (ready bool, reason string)
	// Models lists every known model, loaded or not.
	Models() []oip.ModelInfo
	// Model returns one model's description, or false when the name is
	// unknown.
	Model(name string) (oip.ModelInfo, bool)
	// Infer runs model m, as Model described it (its Handle spares a
	// second lookup), on one FP32 tensor and returns its output together
	// with where and how it ran (as oip.Backend's Infer says).
	Infer(ctx context.Context, m oip.ModelInfo, req oip.KernelRequest) (oip.Tensor, oip.ExecInfo, error)
	// LoadModel loads (or reloads) a model from the host's repository.
	LoadModel(ctx context.Context, name string) error
	// UnloadModel unloads a model; the repository index still lists it.
	UnloadModel(ctx context.Context, name string) error
}

var _ Backend = oip.Backend(nil)
