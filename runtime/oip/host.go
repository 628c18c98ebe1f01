package oip

import (
	"context"
	"encoding/json"

	"github.com/esper/kasmina-host/contracts"
	"github.com/esper/kasmina-host/device"
	"github.com/esper/kasmina-host/runtime"
	"github.com/esper/kasmina-host/runtime/admission"
	"github.com/esper/kasmina-host/runtime/failure"
	"github.com/esper/kasmina-host/runtime/placement"
)

// HostBackend serves a runtime.Host over the Open Inference Protocol: the
// host's kernels are the models, its repository index the model
// repository. The runtime's errors carry their failure class, which the
// status table (statusOf) maps to HTTP; nothing here reclassifies them.
// The Backend returned is also a StatsBackend.
func HostBackend(h *runtime.Host) Backend { return &hostBackend{h: h} }

// hostBackend is HostBackend's Backend.
type hostBackend struct{ h *runtime.Host }

var (
	_ StatsBackend = (*hostBackend)(nil)
	_ LayerBackend = (*hostBackend)(nil)
)

func (b *hostBackend) Ready() (bool, string) { return b.h.Ready() }

// modelInfo describes a loaded kernel as a model, from its inference
// handle (no view of the kernel is built: this runs on every request):
// READY, or UNAVAILABLE with the reason while its circuit breaker is not
// closed (its inference still reaches the breaker, whose probe can close
// it again); max_batch is the kernel's own, from the host's batch and
// output limits. The handle rides along for Infer.
func modelInfo(m *runtime.Model) ModelInfo {
	s := m.Serving()
	state, reason := modelState(s.Breaker, s.BreakerReason)
	return ModelInfo{
		Name: m.Name(), Version: "1", State: state, Reason: reason,
		InputShape: m.InputShape(), OutputShape: m.OutputShape(),
		Placement: s.PlacedOn, Executor: s.Executor,
		Degraded: s.Degraded != "", DegradedReason: s.Degraded,
		MaxBatch: m.MaxBatch(), Layer: m.IsLayer(), Handle: m,
	}
}

// modelState is a loaded model's state given its breaker's.
func modelState(b admission.BreakerState, why string) (state, reason string) {
	if b != admission.Closed {
		return StateUnavailable, why
	}
	return StateReady, ""
}

// notLoaded describes a kernel the host knows but does not serve: in the
// repository and not loaded (or unloaded since Models listed it), or whose
// load failed (with the reason).
func notLoaded(st runtime.ModelState) ModelInfo {
	reason := st.Reason
	if st.Status != runtime.ModelFailed {
		reason = "unloaded"
	}
	return ModelInfo{Name: st.Name, Version: "1", State: StateUnavailable, Reason: reason}
}

func (b *hostBackend) Models() []ModelInfo {
	var out []ModelInfo
	for _, st := range b.h.Models() {
		if m, ok := b.h.Model(st.Name); ok {
			out = append(out, modelInfo(m))
			continue
		}
		out = append(out, notLoaded(st))
	}
	return out
}

func (b *hostBackend) Model(name string) (ModelInfo, bool) {
	if m, ok := b.h.Model(name); ok {
		return modelInfo(m), true
	}
	for _, st := range b.h.Models() {
		if st.Name == name {
			return notLoaded(st), true
		}
	}
	return ModelInfo{}, false
}

// Infer runs the model Model found (its handle), or finds it by name; the
// runtime computes into kr.Out when it is large enough.
func (b *hostBackend) Infer(ctx context.Context, mi ModelInfo, kr KernelRequest) (Tensor, ExecInfo, error) {
	req := runtime.Request{Input: kr.Input.Data, Shape: kr.Input.Shape, Out: kr.Out, Mapped: kr.Mapped}
	res, err := b.run(ctx, mi, req)
	if err != nil {
		return Tensor{}, ExecInfo{}, err
	}
	return Tensor{Shape: res.Shape, Data: res.Output}, execInfo(res.Exec), nil
}

// run runs req on the model Model found (its handle), or finds it by name.
func (b *hostBackend) run(ctx context.Context, mi ModelInfo, req runtime.Request) (runtime.Result, error) {
	if m, ok := mi.Handle.(*runtime.Model); ok {
		return m.Infer(ctx, req)
	}
	return b.h.Infer(ctx, mi.Name, req)
}

// execInfo is the runtime's ExecInfo as the front ends report it.
func execInfo(e runtime.ExecInfo) ExecInfo {
	return ExecInfo{
		PlacedOn: e.PlacedOn, ExecutedOn: e.ExecutedOn, Executor: e.Executor, Fallback: e.Fallback,
		Reason: e.Reason, QueueTime: e.QueueTime, ComputeTime: e.ComputeTime,
	}
}

// InferLayer runs a layer's forward and backward (runtime.Request's
// layer fields) and reports its blend.
func (b *hostBackend) InferLayer(ctx context.Context, mi ModelInfo, lr LayerRequest) (LayerResult, ExecInfo, error) {
	req := runtime.Request{
		Input: lr.Input.Data, Shape: lr.Input.Shape,
		Default: lr.Default.Data, DefaultShape: lr.Default.Shape,
		GradOutput: lr.GradOutput.Data, GradShape: lr.GradOutput.Shape,
		KeepForward: lr.KeepForward, ForwardID: lr.ForwardID, RetainForward: lr.RetainForward,
		Out: lr.Out,
	}
	res, err := b.run(ctx, mi, req)
	if err != nil {
		return LayerResult{}, ExecInfo{}, err
	}
	if res.Blend == nil {
		// The name is a kernel's now (a layer retired between lookup and
		// inference); its answer has no blend to report.
		return LayerResult{}, ExecInfo{}, failure.Errorf(failure.Conflict, "model %q is no longer a layer", mi.Name)
	}
	out := LayerResult{
		Output:    Tensor{Shape: res.Shape, Data: res.Output},
		GradInput: Tensor{Shape: res.GradInputShape, Data: res.GradInput},
		Blend: LayerBlend{AlphaTotal: res.Blend.AlphaTotal, AlphaScale: res.Blend.AlphaScale,
			DefaultApplied: res.Blend.DefaultApplied, ForwardID: res.Blend.ForwardID},
	}
	if res.GradDefault != nil {
		// grad_default is shaped like grad_output, which the runtime
		// checked against the output.
		out.GradDefault = Tensor{Shape: lr.GradOutput.Shape, Data: res.GradDefault}
	}
	out.Blend.Seeds = make([]LayerSeed, len(res.Blend.Seeds))
	for i, s := range res.Blend.Seeds {
		out.Blend.Seeds[i] = LayerSeed{SeedIdx: s.SeedIdx, Alpha: s.Alpha, Kernel: s.Kernel}
	}
	return out, execInfo(res.Exec), nil
}

func (b *hostBackend) LoadModel(ctx context.Context, name string) error {
	return b.h.LoadModel(ctx, name)
}

func (b *hostBackend) UnloadModel(ctx context.Context, name string) error {
	return b.h.Unload(ctx, name)
}

// ModelStats serves GET /v2/models/{name}/stats.
func (b *hostBackend) ModelStats(name string) (any, bool) {
	v, ok := b.h.Kernel(name)
	if !ok {
		return nil, false
	}
	return map[string]any{"name": v.Name, "calls": v.Calls, "failures": v.Failures, "breaker": v.Breaker,
		"placement": v.Placement.Device, "executed_on": v.ExecutedOn, "moves": v.Moves}, true
}

// Snapshotter gives the device inventory's latest snapshot
// (device.Inventory is one).
type Snapshotter interface {
	Snapshot() device.Snapshot
}

// loadKernelRequest is the body of POST /v1/kernels: a CompiledKernel
// document, optionally wrapped with loading options.
type loadKernelRequest struct {
	Compiled    json.RawMessage `json:"compiled_kernel"`
	Name        string          `json:"name"`
	Layer       string          `json:"layer_name"`
	SeedIdx     int             `json:"seed_idx"`
	CPUFallback string          `json:"cpu_fallback"`
	Replace     bool            `json:"replace"`
}

// planRequest is the body of POST /v1/placement/plan.
type planRequest struct {
	Compiled    json.RawMessage `json:"compiled_kernel"`
	Metadata    json.RawMessage `json:"metadata"`
	Batch       int             `json:"batch"`
	CPUFallback string          `json:"cpu_fallback"`
}

// parseFallback reads a request's cpu_fallback ("" leaves the host's).
func parseFallback(s string) (*placement.Fallback, error) {
	if s == "" {
		return nil, nil
	}
	fb, err := placement.ParseFallback(s)
	if err != nil {
		return nil, failure.Errorf(failure.BadInput, "cpu_fallback: %w", err)
	}
	return &fb, nil
}

// HostViewsFor serves the host's own /v1 routes from a runtime.Host and
// the device inventory.
func HostViewsFor(h *runtime.Host, inv Snapshotter) HostViews {
	return HostViews{
		Devices: func(context.Context) (any, error) {
			s := inv.Snapshot()
			return map[string]any{"source": s.Source, "driver_version": s.DriverVersion,
				"cuda_driver_version": s.CUDADriverVersion, "devices": s.Visible(), "warnings": s.Warnings,
				"taken_at": s.TakenAt}, nil
		},
		Kernels: func(context.Context) (any, error) {
			failed := map[string]string{}
			for _, st := range h.Models() {
				if st.Status == runtime.ModelFailed {
					failed[st.Name] = st.Reason
				}
			}
			return map[string]any{"kernels": h.Kernels(), "failed": failed, "cache": h.Stats().Cache}, nil
		},
		Kernel: func(_ context.Context, id string) (any, error) {
			v, ok := h.Kernel(id)
			if !ok {
				return nil, failure.Errorf(failure.NotFound, "kernel %q is not loaded", id)
			}
			return v, nil
		},
		LoadKernel: func(ctx context.Context, doc []byte) (any, bool, error) {
			var req loadKernelRequest
			if err := json.Unmarshal(doc, &req); err != nil {
				return nil, false, failure.Errorf(failure.BadInput, "load request: %w", err)
			}
			raw := doc
			if len(req.Compiled) > 0 {
				raw = req.Compiled
			}
			ck, err := contracts.DecodeCompiledKernel(raw)
			if err != nil {
				return nil, false, failure.Wrap(failure.BadInput, err)
			}
			fb, err := parseFallback(req.CPUFallback)
			if err != nil {
				return nil, false, err
			}
			v, err := h.Load(ctx, runtime.LoadRequest{Name: req.Name, Compiled: &ck, Layer: req.Layer,
				SeedIdx: req.SeedIdx, Fallback: fb, Replace: req.Replace})
			if err != nil {
				return nil, false, err
			}
			return v, !v.Unchanged, nil
		},
		UnloadKernel: func(ctx context.Context, id string) error { return h.Unload(ctx, id) },
		PlanPlacement: func(_ context.Context, body []byte) (any, error) {
			var req planRequest
			if err := json.Unmarshal(body, &req); err != nil {
				return nil, failure.Errorf(failure.BadInput, "plan request: %w", err)
			}
			var md *contracts.KernelMetadata
			switch {
			case len(req.Compiled) > 0:
				ck, err := contracts.DecodeCompiledKernel(req.Compiled)
				if err != nil {
					return nil, failure.Wrap(failure.BadInput, err)
				}
				md = &ck.Metadata
			case len(req.Metadata) > 0:
				m, err := contracts.DecodeKernelMetadata(req.Metadata)
				if err != nil {
					return nil, failure.Wrap(failure.BadInput, err)
				}
				md = &m
			default:
				got, err := runtime.MetadataOf(body)
				if err != nil {
					return nil, failure.Errorf(failure.BadInput, "give compiled_kernel, metadata, or a CompiledKernel document: %w", err)
				}
				md = got
			}
			fb, err := parseFallback(req.CPUFallback)
			if err != nil {
				return nil, err
			}
			return h.Plan(md, req.Batch, fb)
		},
		Seeds:         func(context.Context) (any, error) { return h.Seeds(), nil },
		HealthSignals: func(context.Context) (any, error) { return h.Signals(), nil },
		Layers:        func(context.Context) (any, error) { return map[string]any{"layers": h.Layers()}, nil },
		Layer: func(_ context.Context, name string) (any, error) {
			v, ok := h.Layer(name)
			if !ok {
				return nil, failure.Errorf(failure.NotFound, "no layer %q on this host", name)
			}
			return v, nil
		},
		DeclareLayer: func(ctx context.Context, name string, body []byte) (any, bool, error) {
			spec, err := runtime.DecodeLayerSpec(body)
			if err != nil {
				return nil, false, err
			}
			o, err := h.Apply(ctx, runtime.DeclareLayer{Layer: name, Spec: spec, By: runtime.ByHTTP})
			if err != nil {
				return nil, false, err
			}
			v, ok := h.Layer(name)
			if !ok {
				return nil, false, failure.Errorf(failure.Unavailable, "layer %q was retired while it was declared", name)
			}
			return v, o.Created, nil
		},
		RetireLayer: func(ctx context.Context, name string) (any, error) {
			if _, err := h.Apply(ctx, runtime.RetireLayer{Layer: name}); err != nil {
				return nil, err
			}
			return map[string]string{"layer_name": name, "state": "retired"}, nil
		},
		SeedControl: func(ctx context.Context, req SeedRequest) (any, error) {
			var op runtime.Op
			switch req.Action {
			case SeedLoad:
				op = runtime.LoadKernel{Layer: req.Layer, SeedIdx: req.SeedIdx, Artifact: req.ArtifactID}
			case SeedUnload:
				op = runtime.UnloadKernel{Layer: req.Layer, SeedIdx: req.SeedIdx}
			case SeedSetState:
				op = runtime.SetSeedState{Layer: req.Layer, SeedIdx: req.SeedIdx, State: contracts.SeedState(req.State), Why: "PUT state"}
			case SeedSetAlpha:
				op = runtime.SetAlpha{Layer: req.Layer, SeedIdx: req.SeedIdx, Alpha: req.Alpha}
			default:
				return nil, failure.Errorf(failure.Unsupported, "seed action %d", req.Action)
			}
			o, err := h.Apply(runtime.WithOrigin(ctx, runtime.Origin{TraceID: req.TraceID}), op)
			if err != nil {
				return nil, err
			}
			return o, nil
		},
	}
}
