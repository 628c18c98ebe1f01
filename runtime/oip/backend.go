// Package oip is the Kasmina host's HTTP API: the Open Inference Protocol
// (KServe v2, as Triton serves it) with Triton's binary tensor data
// extension and the model repository extension, plus the host's own JSON
// endpoints under /v1 (devices, kernels, placement, seeds, health signals).
//
// The package owns routing, request decoding and validation, response
// encoding, the mapping from error classes to status codes, bearer-token
// authorisation, DNS-rebinding protection and the HTTP request metrics. What
// is served comes from two small boundaries: Backend (models and inference)
// and HostViews (the /v1 JSON views). HostBackend and HostViewsFor (host.go)
// implement them over a runtime.Host (oip imports the runtime; the runtime
// never imports oip); tests of the HTTP layer alone use oiptest's fake.
// The routes are documented in API.md beside this file.
package oip

import (
	"context"
	"time"
)

// Backend is what the HTTP layer needs from the host. Errors returned by its
// methods carry their failure class (package failure), which statusOf maps
// to HTTP; an unclassified error is answered with 500.
type Backend interface {
	// Ready reports whether the server can serve every loaded model
	// somewhere (CPU included); reason explains a false answer.
	Ready() (ready bool, reason string)
	// Models lists every known model, loaded or not, for the repository index.
	Models() []ModelInfo
	// Model returns one model's description, or false when the name is unknown.
	Model(name string) (ModelInfo, bool)
	// Infer runs model m, as Model described it (so that the model is
	// looked up once per request: see ModelInfo.Handle), on req's FP32
	// tensor named "input" and returns the tensor named "output" together
	// with where and how it was executed.
	Infer(ctx context.Context, m ModelInfo, req KernelRequest) (out Tensor, info ExecInfo, err error)
	// LoadModel loads (or reloads) a model from the host's repository.
	LoadModel(ctx context.Context, name string) error
	// UnloadModel unloads a model; the repository index still lists it.
	UnloadModel(ctx context.Context, name string) error
}

// StatsBackend is an optional extension of Backend: when the Backend also
// implements it, GET /v2/models/{name}/stats answers with the returned view
// encoded as JSON; otherwise that route answers 501.
type StatsBackend interface {
	// ModelStats returns a JSON-encodable statistics view for one model, or
	// false when the name is unknown.
	ModelStats(name string) (any, bool)
}

// Tensor is a dense FP32 tensor in row-major order. The product of Shape
// equals len(Data).
type Tensor struct {
	Shape []int
	Data  []float32
}

// Model states, as Triton's repository index names them.
const (
	StateReady       = "READY"
	StateUnavailable = "UNAVAILABLE"
	StateLoading     = "LOADING"
	StateUnloading   = "UNLOADING"
)

// ModelInfo describes one model (a loaded or loadable kernel).
type ModelInfo struct {
	// Name is the model's name in URLs (the kernel id).
	Name string
	// Version is the model's version; empty means "1".
	Version string
	// State is one of StateReady, StateUnavailable, StateLoading, StateUnloading.
	State string
	// Reason explains a state other than READY (for example the load error).
	Reason string
	// InputShape and OutputShape are the per-sample shapes, without the
	// batch dimension. A nil InputShape disables the HTTP layer's own shape
	// check and leaves it to the backend.
	InputShape, OutputShape []int
	// Placement names the device the model is placed on (for example
	// "cuda:0" or "cpu").
	Placement string
	// Executor names the executor that serves it (for example "cpu-f32").
	Executor string
	// Degraded is true while the model is served somewhere other than its
	// placement (a fallback); DegradedReason says why.
	Degraded       bool
	DegradedReason string
	// MaxBatch bounds the batch dimension; 0 means no limit beyond the
	// element cap of Options.
	MaxBatch int
	// Layer says the model is a layer: its seeds' blend, served through
	// LayerBackend with the tensors and parameters LayerRequest has.
	Layer bool
	// Handle is the backend's own reference to the model, set by Model
	// and handed back to Infer with the rest of the ModelInfo, so that an
	// inference looks its model up once. The HTTP layer never reads it;
	// nil is allowed (Infer then finds the model by Name).
	Handle any
}

// ExecInfo tells where one inference ran. The HTTP layer returns it in the
// response parameters so that a fallback is never silent.
type ExecInfo struct {
	// PlacedOn is the device the model is placed on.
	PlacedOn string
	// ExecutedOn is the device that actually ran this request.
	ExecutedOn string
	// Executor names the executor that ran it.
	Executor string
	// Fallback is true when ExecutedOn differs from the placement by policy
	// or by failure; Reason says why.
	Fallback bool
	Reason   string
	// QueueTime and ComputeTime are the time spent waiting and computing;
	// zero when unknown.
	QueueTime, ComputeTime time.Duration
}

// HostViews supplies the host's own JSON endpoints under /v1. Each field is
// optional: a nil field makes its route answer 501. Every function returns a
// value that is encoded as JSON, or an error whose failure class statusOf
// maps to HTTP.
type HostViews struct {
	// Devices backs GET /v1/devices.
	Devices func(ctx context.Context) (any, error)
	// Kernels backs GET /v1/kernels.
	Kernels func(ctx context.Context) (any, error)
	// LoadKernel backs POST /v1/kernels; doc is the request body, a
	// CompiledKernel JSON document, already checked to be valid JSON, and
	// valid only until LoadKernel returns (its buffer is reused). created
	// is false when the same kernel was loaded already and nothing changed
	// (200 instead of 201). ctx carries the load deadline: a load that
	// sees it end must commit nothing.
	LoadKernel func(ctx context.Context, doc []byte) (view any, created bool, err error)
	// Kernel backs GET /v1/kernels/{id}.
	Kernel func(ctx context.Context, id string) (any, error)
	// UnloadKernel backs DELETE /v1/kernels/{id}.
	UnloadKernel func(ctx context.Context, id string) error
	// PlanPlacement backs POST /v1/placement/plan (a dry run); req is the
	// request body, already checked to be valid JSON ("{}" when empty),
	// and valid only until PlanPlacement returns.
	PlanPlacement func(ctx context.Context, req []byte) (any, error)
	// Seeds backs GET /v1/seeds.
	Seeds func(ctx context.Context) (any, error)
	// HealthSignals backs GET /v1/health/signals (the latest signals).
	HealthSignals func(ctx context.Context) (any, error)
	// Layers backs GET /v1/layers.
	Layers func(ctx context.Context) (any, error)
	// Layer backs GET /v1/layers/{layer_name}.
	Layer func(ctx context.Context, name string) (any, error)
	// DeclareLayer backs PUT /v1/layers/{layer_name}; body is the
	// request's JSON document (valid JSON, "{}" when empty), valid only
	// until DeclareLayer returns. created says 201 (a new layer) rather
	// than 200.
	DeclareLayer func(ctx context.Context, name string, body []byte) (view any, created bool, err error)
	// RetireLayer backs DELETE /v1/layers/{layer_name}.
	RetireLayer func(ctx context.Context, name string) (any, error)
	// SeedControl backs the seed-control routes under
	// /v1/layers/{layer_name}/seeds/{seed_idx}: the answer (200) is what
	// the operation did; a failed operation answers its error's status.
	// A load (SeedLoad) carries the load deadline in ctx.
	SeedControl func(ctx context.Context, req SeedRequest) (any, error)
}

// SeedAction is what a seed-control route asks.
type SeedAction uint8

// The seed-control routes.
const (
	// SeedLoad: POST .../kernel {"artifact_id": ...}.
	SeedLoad SeedAction = iota + 1
	// SeedUnload: DELETE .../kernel.
	SeedUnload
	// SeedSetState: PUT .../state {"state": ...}.
	SeedSetState
	// SeedSetAlpha: PUT .../alpha {"alpha": ...}.
	SeedSetAlpha
)

// SeedRequest is one seed-control request, its body decoded.
type SeedRequest struct {
	Action  SeedAction
	Layer   string
	SeedIdx int
	// ArtifactID (SeedLoad), State (SeedSetState) and Alpha
	// (SeedSetAlpha) are the body's member.
	ArtifactID string
	State      string
	Alpha      float64
	// TraceID is the X-Trace-Id header ("" when none), the trace_id of
	// the outcome event.
	TraceID string
}

// LayerBackend is an optional extension of Backend for a host whose
// models include layers (ModelInfo.Layer): a layer's inference takes the
// inputs "input", "default" and "grad_output" and the request parameters
// keep_forward, forward_id and retain_forward, and answers "output",
// "grad_input" and "grad_default" with how its seeds were blended. A
// front end whose backend lacks it answers a layer's inference 501.
type LayerBackend interface {
	// InferLayer runs layer m, as Model described it, on req.
	InferLayer(ctx context.Context, m ModelInfo, req LayerRequest) (LayerResult, ExecInfo, error)
}

// Names of a layer model's tensors besides InputName and OutputName.
const (
	DefaultName     = "default"
	GradOutputName  = "grad_output"
	GradInputName   = "grad_input"
	GradDefaultName = "grad_default"
)

// Names of a layer request's parameters.
const (
	ParamKeepForward   = "keep_forward"
	ParamForwardID     = "forward_id"
	ParamRetainForward = "retain_forward"
)

// KernelRequest is one inference of a model that is not a layer.
type KernelRequest struct {
	Input Tensor
	// Out, when it holds at least the output's elements, may receive the
	// output (the answer's Data is then Out[:n]), sparing an allocation;
	// nil asks the backend to allocate. The backend keeps neither
	// Input.Data nor Out once Infer returns.
	Out []float32
	// Mapped says that Input.Data or Out is a shared memory region's own
	// bytes, which its client may truncate while the model runs: the
	// caller runs Infer under shm.Guard, and the backend touches them only
	// on the calling goroutine or where a fault reaches it (see
	// runtime.Request.Mapped).
	Mapped bool
}

// LayerRequest is one inference of a layer: a forward (Input, with
// Default), its backward in the same call (GradOutput too), or the
// backward of a kept forward (ForwardID and GradOutput alone). An absent
// tensor has nil Data and Shape.
type LayerRequest struct {
	Input, Default, GradOutput Tensor
	// KeepForward keeps what a later backward needs; the result's
	// ForwardID names it.
	KeepForward bool
	// ForwardID names a kept forward whose backward this request runs;
	// the backward uses it up unless RetainForward.
	ForwardID     string
	RetainForward bool
	// Out, when large enough, may receive the output (the caller's
	// buffer, which it reads until the answer is written); the result's
	// Output then aliases it.
	Out []float32
}

// LayerResult is a layer's answer. An absent tensor has nil Data.
type LayerResult struct {
	// Output is the blend, when the request had an input.
	Output Tensor
	// GradInput and GradDefault are the gradients, when the request had
	// grad_output (GradDefault only when its forward had a default).
	GradInput, GradDefault Tensor
	Blend                  LayerBlend
}

// LayerBlend is how a layer's answer was made from its seeds.
type LayerBlend struct {
	// Seeds are the contributing seeds with the alphas applied.
	Seeds []LayerSeed
	// AlphaTotal is the sum of the applied alphas (at most 1);
	// AlphaScale is 1/Σαᵢ when that sum exceeded 1, else 1.
	AlphaTotal, AlphaScale float64
	// DefaultApplied says whether the output holds (1 − A)·default.
	DefaultApplied bool
	// ForwardID names the kept forward, "" when none.
	ForwardID string
}

// LayerSeed is one contributing seed, as the "seeds" response parameter
// lists it.
type LayerSeed struct {
	SeedIdx int     `json:"seed_idx"`
	Alpha   float64 `json:"alpha"`
	Kernel  string  `json:"kernel"`
}
