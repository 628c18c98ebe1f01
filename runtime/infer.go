package runtime

import (
	"context"
	"errors"
	"fmt"
	"math"
	"slices"
	"strings"
	"time"

	"github.com/esper/kasmina-host/runtime/admission"
	"github.com/esper/kasmina-host/runtime/failure"
)

// Request is one inference: of a kernel, or of a layer (its seeds'
// blend, with gradients when asked; see Model).
type Request struct {
	// Input is [batch, *input_shape] row-major float32 (nil for a
	// layer's backward of a kept forward, ForwardID).
	Input []float32
	// Shape is the input's shape, batch first.
	Shape []int
	// Default, when set, is the layer's own output for the same input
	// ([batch, *output_shape]). A kernel's result is then its seed's
	// alpha blend (1 − α)·default + α·kernel(x); a layer's is
	// (1 − A)·default + Σ αᵢ·kᵢ(x).
	Default []float32
	// DefaultShape is Default's shape, batch first (nil: [batch,
	// *output_shape]).
	DefaultShape []int
	// GradOutput, for a layer, is ∂loss/∂output ([batch,
	// *output_shape]): the result then carries GradInput (and
	// GradDefault when the forward had a default).
	GradOutput []float32
	// GradShape is GradOutput's shape, batch first (nil: [batch,
	// *output_shape]).
	GradShape []int
	// KeepForward keeps what a layer's backward needs; the result's
	// Blend.ForwardID names it for a later request.
	KeepForward bool
	// ForwardID, with GradOutput and no Input, runs the backward of a
	// kept forward of the layer; it is used up unless RetainForward.
	ForwardID     string
	RetainForward bool
	// Out, when large enough, receives the output (no allocation).
	Out []float32
	// Mapped says that a kernel's Input or Out lies in memory that can
	// vanish while it is used: a shared memory region whose client may
	// truncate it (package shm). The caller runs Infer under shm.Guard,
	// which recovers a fault on its goroutine. The executor then touches
	// them in place when its faults reach the caller
	// (Executor.FaultsReachCaller); otherwise the runtime copies the
	// input and the output on the caller's goroutine so that the executor
	// never sees them. A layer's request always works on copies.
	Mapped bool
}

// Result is an inference's output and where it ran.
type Result struct {
	// Output and Shape are the output, nil for a backward of a kept
	// forward.
	Output []float32
	Shape  []int
	// GradInput (shaped GradInputShape) is ∂loss/∂input, when the
	// request had GradOutput.
	GradInput      []float32
	GradInputShape []int
	// GradDefault is ∂loss/∂default = (1 − A)·grad_output, shaped like
	// the output, when the request had GradOutput and its forward had a
	// default.
	GradDefault []float32
	// Blend says how a layer's seeds were blended; nil for a kernel.
	Blend *Blend
	Exec  ExecInfo
}

// Blend is how a layer's output was made from its seeds.
type Blend struct {
	// Seeds are the contributing seeds, by index, with the alphas applied.
	Seeds []SeedAlpha
	// AlphaTotal is A, the sum of the applied alphas (at most 1);
	// AlphaScale is what the seeds' alphas were multiplied by: 1/Σαᵢ when
	// that sum exceeded 1, else 1.
	AlphaTotal, AlphaScale float64
	// DefaultApplied says whether the output holds (1 − A)·default: false
	// when the request had no default.
	DefaultApplied bool
	// ForwardID names the kept forward (KeepForward), "" when none.
	ForwardID string
}

// SeedAlpha is one seed's part in a layer's output.
type SeedAlpha struct {
	SeedIdx int     `json:"seed_idx"`
	Alpha   float64 `json:"alpha"`
	Kernel  string  `json:"kernel"`
}

// ExecInfo says where a request ran. A fallback is never silent.
type ExecInfo struct {
	PlacedOn    string
	ExecutedOn  string
	Executor    string
	Fallback    bool
	Reason      string
	Alpha       float64
	Blended     bool
	QueueTime   time.Duration
	ComputeTime time.Duration
}

// Failure reasons, the bounded values of kasmina_inference_failures_total's
// reason label.
const (
	reasonBadInput  = "bad_input"
	reasonTooLarge  = "too_large"
	reasonRefused   = "refused"
	reasonRuntime   = "runtime"
	reasonDevice    = "device"
	reasonQueueFull = "queue_full"
	reasonCanceled  = "canceled" // the caller went away before the kernel ran
	reasonTimeout   = "timeout"  // the request's deadline passed before the kernel ran
)

// notRunReason is the failure reason of a request whose context ended
// before its kernel ran.
func notRunReason(err error) string {
	if failure.ClassOf(err) == failure.Timeout {
		return reasonTimeout
	}
	return reasonCanceled
}

// Model is a loaded kernel, or a layer, as inference sees it: a handle
// that a front end looks up once (Host.Model), checks a request against
// (shapes, largest batch) and runs (Infer), without a view of the kernel
// being built per request. A kernel's handle stays usable after the
// kernel is unloaded or replaced: its inference is then refused
// (Unavailable) or, for requests already admitted, finishes on the kernel
// it names. A layer's handle blends the seeds the layer has when each
// request runs (layerforward.go).
type Model struct {
	h *Host
	l *loaded
	// layer is set on a layer's model, l on a kernel's.
	layer *layerModel
}

// Model returns the model named name, or false: a kernel served directly
// (its own layer), else a layer the host knows (its seeds' blend), else a
// kernel serving a seed of a layer. A kernel's lookup allocates nothing.
func (h *Host) Model(name string) (*Model, bool) {
	h.mu.RLock()
	l, ok := h.kernels[name]
	h.mu.RUnlock()
	if ok && l.seed.layer == name {
		return &l.model, true
	}
	if m, isLayer := h.layerModel(name); isLayer {
		return m, true
	}
	if !ok {
		return nil, false
	}
	return &l.model, true
}

// Name is the model's name.
func (m *Model) Name() string {
	if m.layer != nil {
		return m.layer.name
	}
	return m.l.name
}

// InputShape is the per-sample input shape (without the batch), nil for a
// layer whose seeds hold no kernel yet and that declares no shapes. It is shared: the caller must not
// modify it.
func (m *Model) InputShape() []int {
	if m.layer != nil {
		return m.layer.inShape
	}
	return m.l.inShape
}

// OutputShape is the per-sample output shape (without the batch), nil for
// a layer whose seeds hold no kernel yet and that declares no shapes. It is shared: the caller must
// not modify it.
func (m *Model) OutputShape() []int {
	if m.layer != nil {
		return m.layer.outShape
	}
	return m.l.shape1[1:]
}

// MaxBatch is the largest batch one request may have.
func (m *Model) MaxBatch() int {
	if m.layer != nil {
		return m.layer.maxBatch
	}
	return m.l.maxBatch
}

// IsLayer says whether the model is a layer: its requests may carry a
// default, gradients and kept forwards, and its results a Blend.
func (m *Model) IsLayer() bool { return m.layer != nil }

// Serving says how a model is served now.
type Serving struct {
	// PlacedOn is the device the model is placed on; ExecutedOn the one
	// its executor, Executor, runs on.
	PlacedOn, ExecutedOn, Executor string
	// Degraded says why the model is not served as its requirements ask
	// ("" when it is): it fell back to the CPU, or its placement's
	// executor runs elsewhere.
	Degraded string
	// Breaker is its circuit breaker's state; BreakerReason says why the
	// model is not serving normally while it is not closed.
	Breaker       admission.BreakerState
	BreakerReason string
}

// Serving says how the model is served now. It allocates only while the
// breaker is not closed (for its reason). A layer is served as its seeds
// are: see layerModel.serving.
func (m *Model) Serving() Serving {
	if m.layer != nil {
		return m.layer.serving
	}
	rt := m.l.route.Load()
	s := Serving{PlacedOn: rt.placedOn, ExecutedOn: rt.exec.Device(), Executor: rt.exec.Name(), Degraded: rt.degraded}
	s.Breaker, s.BreakerReason = m.l.breaker.Status()
	return s
}

// Infer runs the named model on req: Model, then Model.Infer.
func (h *Host) Infer(ctx context.Context, name string, req Request) (Result, error) {
	m, ok := h.Model(name)
	if !ok {
		return Result{}, failure.Errorf(failure.NotFound, "no kernel or layer %q is served here", name)
	}
	return m.Infer(ctx, req)
}

// Infer runs the model on req.Input. Every error names the kernel or the
// input that is wrong, once, and carries its failure class. A layer's
// model blends its seeds (inferLayer); a kernel's takes no gradient.
func (m *Model) Infer(ctx context.Context, req Request) (Result, error) {
	if m.layer != nil {
		return m.h.inferLayer(ctx, m.layer, req)
	}
	h, l, name := m.h, m.l, m.l.name
	obs := l.obs.Load()
	if err := kernelTakes(name, &req); err != nil {
		obs.fail(reasonBadInput)
		return Result{}, err
	}
	in := l.inShape
	if len(req.Shape) != len(in)+1 {
		obs.fail(reasonBadInput)
		return Result{}, failure.Errorf(failure.BadInput, "input has shape %v; kernel %q takes [batch%s]", req.Shape, name, dims(in))
	}
	for i, d := range in {
		if req.Shape[i+1] != d {
			obs.fail(reasonBadInput)
			return Result{}, failure.Errorf(failure.BadInput, "input dimension %d is %d; kernel %q takes [batch%s]", i+1, req.Shape[i+1], name, dims(in))
		}
	}
	batch := req.Shape[0]
	if batch < 1 {
		obs.fail(reasonBadInput)
		return Result{}, failure.Errorf(failure.BadInput, "batch %d: kernel %q needs at least one sample", batch, name)
	}
	if batch > l.maxBatch {
		obs.fail(reasonTooLarge)
		return Result{}, h.batchTooLarge(l, batch)
	}
	if want := batch * l.kernel.InputSize(); len(req.Input) != want {
		obs.fail(reasonBadInput)
		return Result{}, failure.Errorf(failure.BadInput, "input holds %d values; shape %v needs %d", len(req.Input), req.Shape, want)
	}
	outN := batch * l.kernel.OutputSize()
	if req.Default != nil && len(req.Default) != outN {
		obs.fail(reasonBadInput)
		return Result{}, failure.Errorf(failure.BadInput, "default output holds %d values; kernel %q at batch %d gives %d", len(req.Default), name, batch, outN)
	}
	if !l.gate.enter() {
		// The kernel left the table since this handle was found: replaced
		// (the replacement takes the request) or unloaded.
		if now, ok := h.Model(name); ok && now.layer == nil && now.l != l {
			return now.Infer(ctx, req)
		}
		obs.fail(reasonRefused)
		return Result{}, failure.Errorf(failure.Unavailable, "kernel %q is being unloaded", name)
	}
	defer l.gate.leave()
	if err := l.breaker.Allow(); err != nil {
		obs.fail(reasonRefused)
		return Result{}, fmt.Errorf("kernel %q: %w", name, err)
	}

	rt := l.route.Load()
	queued := time.Now()
	waited, err := h.admit.AcquireWithin(ctx, h.cfg.RequestTimeout)
	if err != nil {
		l.breaker.Done(admission.NotRun) // the kernel never ran: nothing to learn
		if failure.Is(err, failure.QueueFull) {
			obs.fail(reasonQueueFull)
			return Result{}, fmt.Errorf("kernel %q: %w", name, err)
		}
		obs.fail(notRunReason(err))
		return Result{}, fmt.Errorf("kernel %q waited for the executor: %w", name, err)
	}
	started := queued
	if waited {
		started = time.Now()
	}
	input, out := req.Input, req.Out
	onCopies := req.Mapped && !rt.exec.FaultsReachCaller()
	if onCopies {
		// A fault in this executor would end the process: it computes on
		// copies, made and delivered on the guarded goroutine.
		input, out = slices.Clone(input), nil
	}
	if cap(out) < outN {
		out = make([]float32, outN)
	}
	out = out[:outN]
	if req.Mapped {
		err = h.runMapped(l, obs, func() error { return rt.exec.Run(ctx, l.kernel, input, batch, out) })
	} else {
		err = rt.exec.Run(ctx, l.kernel, input, batch, out)
	}
	h.admit.Release()
	if err != nil && ctx.Err() != nil && errors.Is(err, ctx.Err()) {
		// The caller went away (or its deadline passed) before the kernel
		// ran: not the kernel's failure.
		l.breaker.Done(admission.NotRun)
		obs.fail(notRunReason(err))
		return Result{}, fmt.Errorf("kernel %q: %w", name, err)
	}
	done := time.Now()
	compute := done.Sub(started)
	l.calls.Add(1)
	if err != nil {
		l.failures.Add(1)
		l.breaker.Done(admission.Failed)
		l.window.ObserveError(compute)
		obs.fail(reasonRuntime)
		return Result{}, failure.Errorf(failure.Internal, "kernel %q failed: %w", name, err)
	}
	l.breaker.Done(admission.Succeeded)
	l.window.Observe(out, batch, compute)

	info := ExecInfo{PlacedOn: rt.placedOn, ExecutedOn: rt.exec.Device(), Executor: rt.exec.Name(),
		Fallback: rt.degraded != "", Reason: rt.degraded,
		QueueTime: started.Sub(queued), ComputeTime: compute}
	if req.Default != nil {
		alpha := h.alpha(l)
		blend(out, req.Default, alpha)
		info.Alpha, info.Blended = alpha, true
	}
	if onCopies && cap(req.Out) >= outN {
		out = req.Out[:copy(req.Out[:outN], out)]
	}
	obs.ok(info.QueueTime, compute, done.Sub(queued))
	return Result{Output: out, Shape: l.outShape(batch), Exec: info}, nil
}

// runMapped runs a kernel on memory that can vanish (Request.Mapped). A
// fault there comes back as a panic, on its way to the caller's guard;
// the executor slot and the breaker's turn are given back first, and the
// kernel is not blamed: the client's memory went away.
func (h *Host) runMapped(l *loaded, obs *kernelObservers, run func() error) error {
	defer func() {
		if p := recover(); p != nil {
			h.admit.Release()
			l.breaker.Done(admission.NotRun)
			obs.fail(reasonBadInput)
			panic(p)
		}
	}()
	return run()
}

// kernelTakes refuses the parts of a request only a layer serves.
func kernelTakes(name string, req *Request) error {
	what := ""
	switch {
	case req.GradOutput != nil:
		what = "grad_output"
	case req.KeepForward:
		what = "keep_forward"
	case req.ForwardID != "":
		what = "forward_id"
	case req.RetainForward:
		what = "retain_forward"
	}
	if what != "" {
		return failure.Errorf(failure.BadInput, "%s: model %q is a kernel served directly, and gradients are served on layers (declare a layer and load the kernel into one of its seeds)", what, name)
	}
	return nil
}

// batchTooLarge explains why a batch is over a kernel's max_batch: the
// host's batch limit, or the output and activations the batch needs.
func (h *Host) batchTooLarge(l *loaded, batch int) error {
	if batch > h.cfg.MaxBatch {
		return failure.Errorf(failure.TooLarge, "batch %d is over the host's batch limit of %d", batch, h.cfg.MaxBatch)
	}
	return failure.Errorf(failure.TooLarge, "batch %d of kernel %q needs %s for its output and intermediate activations, over the host's limit of %s per request; its largest batch is %d",
		batch, l.name, byteSize(l.kernel.RunBytes(batch)), byteSize(h.cfg.MaxOutputBytes), l.maxBatch)
}

// byteSize writes a byte count for a message: exact below 1 KiB, else in
// the largest binary unit that keeps it at least 1, with one decimal.
func byteSize(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d bytes", n)
	}
	v, i := float64(n), 0
	for v >= unit && i < 4 {
		v /= unit
		i++
	}
	return fmt.Sprintf("%.1f %s", v, [...]string{"", "KiB", "MiB", "GiB", "TiB"}[i])
}

// alpha is the blend factor of the seed l serves, now.
func (h *Host) alpha(l *loaded) float64 { return h.book.alpha(l.seed, h.cfg.Now(), h.cfg.GraftingRamp) }

// blend computes out = (1 − α)·def + α·out in place.
func blend(out, def []float32, alpha float64) {
	a := float32(math.Max(0, math.Min(1, alpha)))
	b := 1 - a
	for i := range out {
		out[i] = b*def[i] + a*out[i]
	}
}

// dims lists a per-sample shape as ", d1, d2" to follow "[batch".
func dims(s []int) string {
	var b strings.Builder
	for _, d := range s {
		fmt.Fprintf(&b, ", %d", d)
	}
	return b.String()
}
