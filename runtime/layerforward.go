package runtime

import (
	"context"
	"errors"
	"fmt"
	"math"
	"slices"
	"strings"
	"time"

	"github.com/esper/kasmina-host/contracts"
	"github.com/esper/kasmina-host/runtime/admission"
	"github.com/esper/kasmina-host/runtime/failure"
)

// A layer's forward and backward (issue #15). The layer is a model: a
// request runs each of its active seeds' kernels through the kernel's
// executor, under the host's admission (one executor slot for the whole
// request, each kernel's circuit breaker) and into each seed's health
// window, and blends them:
//
//	output     = (1 − A)·default + Σ αᵢ·kᵢ(x)   (without default: Σ αᵢ·kᵢ(x))
//	grad_input = Σ αᵢ·J_kᵢ(x)ᵀ·grad_output
//	grad_default = (1 − A)·grad_output
//
// where the active seeds are those holding a kernel in state germinated,
// training or grafting (at their alpha, ramped while grafting) or
// fossilized (at alpha 1), A = Σ αᵢ, and every αᵢ is divided by A when A
// exceeds 1. Seeds at alpha 0 run (their health windows see the traffic,
// as Esper's KasminaLayer runs every active seed) but add nothing and keep
// no tape. A forward asked to keep itself is held in the host's
// forwardStore with its tapes, kernels, executors and alphas, so that its
// backward is the one of the forward that was answered.

// layerSeed is one seed of a layer holding a kernel, as the book has it.
type layerSeed struct {
	idx    int
	kernel string
	state  contracts.SeedState
	alpha  float64 // the seed's alpha now (ramped while grafting, 1 when fossilized)
}

// layerSeeds returns the seeds of layer that hold a kernel, by index, the
// layer's declared per-sample shapes (nil when not declared), and whether
// the layer is served as a layer: the book knows it, and it is not a
// directly served kernel's own layer (named after the kernel, one slot),
// whose name is the kernel's model. It is the one place the layer forward
// reads the book.
func (b *layerBook) layerSeeds(layer string, now time.Time, ramp time.Duration) (seeds []layerSeed, in, out []int, ok bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	l, known := b.layers[layer]
	if !known || l.direct {
		return nil, nil, nil, false
	}
	for idx, sl := range l.slots {
		if s := sl.seed; s != nil && s.kernel != "" {
			seeds = append(seeds, layerSeed{idx: idx, kernel: s.kernel, state: s.State, alpha: s.effectiveAlpha(now, ramp)})
		}
	}
	return seeds, l.in, l.out, true
}

// contributes says whether a seed in state st takes part in its layer's
// output: germinated, training, grafting or fossilized.
func contributes(st contracts.SeedState) bool {
	switch st {
	case contracts.SeedGerminated, contracts.SeedTraining, contracts.SeedGrafting, contracts.SeedFossilized:
		return true
	}
	return false
}

// seedRun is one active seed of a layer as one request runs it.
type seedRun struct {
	idx   int
	l     *loaded
	alpha float32 // as applied: scaled when the alphas summed over 1
}

// layerSnap is a layer's active seeds at one instant, with the applied
// alphas and the layer's per-sample shapes (its kernels', else its
// declaration's; nil when it has neither).
type layerSnap struct {
	name              string
	seeds             []seedRun
	blend             Blend
	inShape, outShape []int
	// conflict says why the active seeds cannot be blended (kernels of
	// different shapes), nil when they can.
	conflict error
	maxBatch int
}

// layerSnapshot reads layer's seeds and their kernels; false when the host
// does not know the layer.
func (h *Host) layerSnapshot(name string) (layerSnap, bool) {
	seeds, declIn, declOut, ok := h.book.layerSeeds(name, h.cfg.Now(), h.cfg.GraftingRamp)
	if !ok {
		return layerSnap{}, false
	}
	snap := layerSnap{name: name, blend: Blend{AlphaScale: 1}, maxBatch: h.cfg.MaxBatch}
	var sum float64
	var shaped *loaded // the kernel that gave the layer its shapes
	h.mu.RLock()
	for _, s := range seeds {
		l, ok := h.kernels[s.kernel]
		if !ok || l.seed != (seedKey{name, s.idx}) {
			continue // unloaded or moved since the book was read
		}
		if shaped == nil {
			shaped = l
		}
		if !contributes(s.state) {
			continue
		}
		if len(snap.seeds) == 0 {
			shaped = l // the active seeds' shapes win
		}
		snap.seeds = append(snap.seeds, seedRun{idx: s.idx, l: l})
		snap.blend.Seeds = append(snap.blend.Seeds, SeedAlpha{SeedIdx: s.idx, Alpha: s.alpha, Kernel: l.name})
		snap.maxBatch = min(snap.maxBatch, l.maxBatch)
		sum += s.alpha
	}
	h.mu.RUnlock()
	switch {
	case shaped != nil:
		snap.inShape, snap.outShape = shaped.inShape, shaped.shape1[1:]
	case declIn != nil && declOut != nil:
		// No seed holds a kernel: the declaration says what the layer takes.
		snap.inShape, snap.outShape = declIn, declOut
	}
	if sum > 1 {
		snap.blend.AlphaScale = 1 / sum
	}
	for i := range snap.seeds {
		a := snap.blend.Seeds[i].Alpha * snap.blend.AlphaScale
		snap.blend.Seeds[i].Alpha = a
		snap.seeds[i].alpha = float32(a)
		snap.blend.AlphaTotal += a
	}
	snap.blend.AlphaTotal = min(snap.blend.AlphaTotal, 1)
	first := snap.seeds
	for _, s := range first {
		if !slices.Equal(s.l.inShape, snap.inShape) || !slices.Equal(s.l.shape1[1:], snap.outShape) {
			snap.conflict = failure.Errorf(failure.Conflict, "layer %q cannot blend its seeds: seed %d's kernel %q maps %v → %v, seed %d's kernel %q maps %v → %v",
				name, first[0].idx, first[0].l.name, snap.inShape, snap.outShape, s.idx, s.l.name, s.l.inShape, s.l.shape1[1:])
			break
		}
	}
	return snap, true
}

// layerModel is what a layer's Model describes: its name, shapes, largest
// batch and how it is served, as its seeds were when it was looked up.
type layerModel struct {
	name              string
	inShape, outShape []int
	maxBatch          int
	serving           Serving
}

// layerModel returns the Model of layer name, or false when the host does
// not know the layer.
func (h *Host) layerModel(name string) (*Model, bool) {
	snap, ok := h.layerSnapshot(name)
	if !ok {
		return nil, false
	}
	lm := &layerModel{name: name, inShape: snap.inShape, outShape: snap.outShape, maxBatch: snap.maxBatch}
	lm.serving = snap.serving()
	return &Model{h: h, layer: lm}, true
}

// serving says how a layer is served: on its first active seed's executor
// (the CPU's without one), degraded when any seed is, and not serving
// normally while any seed's circuit breaker is not closed.
func (s *layerSnap) serving() Serving {
	out := Serving{PlacedOn: cpu.Device(), ExecutedOn: cpu.Device(), Executor: cpu.Name()}
	var degraded []string
	for i, sd := range s.seeds {
		rt := sd.l.route.Load()
		if i == 0 {
			out.PlacedOn, out.ExecutedOn, out.Executor = rt.placedOn, rt.exec.Device(), rt.exec.Name()
		}
		if rt.degraded != "" {
			degraded = append(degraded, fmt.Sprintf("seed %d: %s", sd.idx, rt.degraded))
		}
		if st, why := sd.l.breaker.Status(); st != admission.Closed && out.Breaker == admission.Closed {
			out.Breaker, out.BreakerReason = st, fmt.Sprintf("seed %d (kernel %q): %s", sd.idx, sd.l.name, why)
		}
	}
	out.Degraded = strings.Join(degraded, "; ")
	return out
}

// enter admits the request to every seed's kernel; false (having entered
// none) when one is being unloaded.
func (s *layerSnap) enter() bool {
	for i, sd := range s.seeds {
		if !sd.l.gate.enter() {
			for _, prev := range s.seeds[:i] {
				prev.l.gate.leave()
			}
			return false
		}
	}
	return true
}

func (s *layerSnap) leave() {
	for _, sd := range s.seeds {
		sd.l.gate.leave()
	}
}

// inferLayer runs a request on layer lm: a forward (with its backward
// when the request has grad_output), or the backward of a kept forward.
func (h *Host) inferLayer(ctx context.Context, lm *layerModel, req Request) (Result, error) {
	name := lm.name
	if req.Mapped {
		// Tapes and kept forwards outlive the request: nothing of it may
		// stay in memory that can vanish.
		// (slices.Clone keeps an absent tensor nil.)
		req.Input, req.Default, req.GradOutput = slices.Clone(req.Input), slices.Clone(req.Default), slices.Clone(req.GradOutput)
		req.Out, req.Mapped = nil, false
	}
	switch {
	case req.ForwardID != "":
		switch {
		case req.Input != nil || req.Default != nil:
			return Result{}, failure.Errorf(failure.BadInput, "forward_id %q: the backward of a kept forward takes grad_output alone, without input or default", req.ForwardID)
		case req.KeepForward:
			return Result{}, failure.Errorf(failure.BadInput, "keep_forward with forward_id %q: that forward is kept already (retain_forward keeps it past this backward)", req.ForwardID)
		case req.GradOutput == nil:
			return Result{}, failure.Errorf(failure.BadInput, "forward_id %q needs grad_output: it names a kept forward for a backward", req.ForwardID)
		}
		return h.backwardKept(ctx, name, req)
	case req.RetainForward:
		return Result{}, failure.Errorf(failure.BadInput, "retain_forward goes with forward_id (the backward of a kept forward)")
	case req.Input == nil:
		return Result{}, failure.Errorf(failure.BadInput, "layer %q: a request needs input (a forward), or forward_id and grad_output (the backward of a kept forward)", name)
	}
	return h.forwardLayer(ctx, name, req)
}

// maxSnapshotTries bounds how often a request takes a new snapshot of a
// layer whose kernel was unloaded or swapped under it.
const maxSnapshotTries = 3

// forwardLayer runs a layer's forward (and backward, with grad_output).
func (h *Host) forwardLayer(ctx context.Context, name string, req Request) (Result, error) {
	var snap layerSnap
	for try := 1; ; try++ {
		var ok bool
		if snap, ok = h.layerSnapshot(name); !ok {
			return Result{}, failure.Errorf(failure.NotFound, "layer %q is no longer served here", name)
		}
		if snap.enter() {
			break
		}
		if try == maxSnapshotTries {
			return Result{}, failure.Errorf(failure.Unavailable, "layer %q: its seeds' kernels are being unloaded", name)
		}
	}
	defer snap.leave()
	if snap.conflict != nil {
		return Result{}, snap.conflict
	}
	sh, err := snap.check(&req)
	if err != nil {
		return Result{}, err
	}
	batch := sh.batch
	grad := req.GradOutput != nil
	if need := snap.requestBytes(batch, sh, req.KeepForward, grad); h.cfg.MaxOutputBytes > 0 && need > h.cfg.MaxOutputBytes {
		return Result{}, failure.Errorf(failure.TooLarge, "batch %d of layer %q needs %s for its output, its seeds' activations, tapes and gradients, over the host's limit of %s per request",
			batch, name, byteSize(need), byteSize(h.cfg.MaxOutputBytes))
	}
	if req.KeepForward {
		if err := h.forwards.fits(snap.tapeBytes(batch) + keptOverhead); err != nil {
			return Result{}, err
		}
	}

	outN := batch * sh.outSize
	out := req.Out
	if cap(out) < outN {
		out = make([]float32, outN)
	}
	out = out[:outN]
	a := float32(1 - snap.blend.AlphaTotal)
	if req.Default != nil {
		for i, d := range req.Default {
			out[i] = a * d
		}
	} else {
		clear(out)
	}
	res := Result{Output: out, Shape: append([]int{batch}, sh.outShape...), Blend: &snap.blend}
	res.Blend.DefaultApplied = req.Default != nil
	res.Exec = snap.execInfo()
	res.Exec.Blended = req.Default != nil

	var tapes []Tape
	var gradIn []float32
	if len(snap.seeds) > 0 {
		tapes, err = h.runSeeds(ctx, &snap, &req, batch, out, &res.Exec)
		if err != nil {
			return Result{}, err
		}
		if grad {
			started := time.Now()
			gradIn, err = backwardSeeds(ctx, snap.seeds, tapes, nil, req.GradOutput, batch*sh.inSize)
			h.admit.Release()
			if err != nil {
				return Result{}, fmt.Errorf("layer %q: %w", name, err)
			}
			res.Exec.ComputeTime += time.Since(started)
		} else {
			h.admit.Release()
		}
	}
	if grad {
		if gradIn == nil {
			gradIn = make([]float32, batch*sh.inSize) // no seed: no gradient through x
		}
		res.GradInput, res.GradInputShape = gradIn, slices.Clone(req.Shape)
		if req.Default != nil {
			res.GradDefault = scaled(req.GradOutput, a)
		}
	}
	if req.KeepForward {
		f := &keptForward{layer: name, batch: batch, inShape: sh.inShape, outShape: sh.outShape,
			inSize: sh.inSize, outSize: sh.outSize, blend: snap.blend, hasDefault: req.Default != nil}
		for i, sd := range snap.seeds {
			ks := keptSeed{idx: sd.idx, l: sd.l, exec: sd.l.route.Load().exec, alpha: sd.alpha, tape: tapes[i]}
			if ks.tape != nil {
				f.bytes += ks.tape.Bytes()
			}
			f.seeds = append(f.seeds, ks)
		}
		id, err := h.forwards.put(f, h.cfg.Now())
		if err != nil {
			return Result{}, err
		}
		res.Blend.ForwardID = id
	}
	return res, nil
}

// runSeeds runs every seed of snap on req.Input under one executor slot,
// which it leaves held on success (the caller releases it once the
// backward, if any, is done), and adds αᵢ·kᵢ(x) into out. Each seed's
// breaker, health window and metrics see its kernel's run. It returns the
// tapes of the seeds with an alpha when the request keeps its forward or
// has grad_output.
func (h *Host) runSeeds(ctx context.Context, snap *layerSnap, req *Request, batch int, out []float32, info *ExecInfo) ([]Tape, error) {
	seeds := snap.seeds
	for i, sd := range seeds {
		if err := sd.l.breaker.Allow(); err != nil {
			notRun(seeds[:i])
			sd.l.obs.Load().fail(reasonRefused)
			return nil, fmt.Errorf("layer %q seed %d (kernel %q): %w", snap.name, sd.idx, sd.l.name, err)
		}
	}
	queued := time.Now()
	waited, err := h.admit.AcquireWithin(ctx, h.cfg.RequestTimeout)
	if err != nil {
		notRun(seeds)
		reason := notRunReason(err)
		if failure.Is(err, failure.QueueFull) {
			reason = reasonQueueFull
		}
		for _, sd := range seeds {
			sd.l.obs.Load().fail(reason)
		}
		return nil, fmt.Errorf("layer %q waited for the executor: %w", snap.name, err)
	}
	started := queued
	if waited {
		started = time.Now()
	}
	info.QueueTime = started.Sub(queued)
	wantTape := req.KeepForward || req.GradOutput != nil
	tapes := make([]Tape, len(seeds))
	y := make([]float32, len(out))
	for i, sd := range seeds {
		l := sd.l
		exec := l.route.Load().exec
		t0 := time.Now()
		if wantTape && sd.alpha != 0 {
			tapes[i], err = exec.Forward(ctx, l.kernel, req.Input, batch, y)
		} else {
			err = exec.Run(ctx, l.kernel, req.Input, batch, y)
		}
		done := time.Now()
		compute := done.Sub(t0)
		info.ComputeTime += compute
		if err != nil {
			h.admit.Release()
			notRun(seeds[i+1:])
			if ctx.Err() != nil && errors.Is(err, ctx.Err()) {
				l.breaker.Done(admission.NotRun)
				l.obs.Load().fail(notRunReason(err))
				return nil, fmt.Errorf("layer %q seed %d (kernel %q): %w", snap.name, sd.idx, l.name, err)
			}
			l.calls.Add(1)
			l.failures.Add(1)
			l.breaker.Done(admission.Failed)
			l.window.ObserveError(compute)
			l.obs.Load().fail(reasonRuntime)
			return nil, failure.Errorf(failure.Internal, "layer %q seed %d: kernel %q failed: %w", snap.name, sd.idx, l.name, err)
		}
		l.calls.Add(1)
		l.breaker.Done(admission.Succeeded)
		l.window.Observe(y, batch, compute)
		l.obs.Load().ok(info.QueueTime, compute, done.Sub(queued))
		axpy(out, sd.alpha, y)
	}
	return tapes, nil
}

// notRun tells the breakers of seeds that Allow let through that their
// kernels did not run.
func notRun(seeds []seedRun) {
	for _, sd := range seeds {
		sd.l.breaker.Done(admission.NotRun)
	}
}

// backwardSeeds computes Σ αᵢ·J_kᵢᵀ·gradOut from the seeds' tapes, each on
// the executor given (execs[i], or the seed's kernel's route now when
// execs is nil), into a new slice of n values.
func backwardSeeds(ctx context.Context, seeds []seedRun, tapes []Tape, execs []Executor, gradOut []float32, n int) ([]float32, error) {
	gradIn := make([]float32, n)
	var gi []float32
	for i, sd := range seeds {
		if sd.alpha == 0 || tapes[i] == nil {
			continue
		}
		if gi == nil {
			gi = make([]float32, n)
		}
		exec := sd.l.route.Load().exec
		if execs != nil {
			exec = execs[i]
		}
		if err := exec.Backward(ctx, tapes[i], gradOut, gi); err != nil {
			if ctx.Err() != nil && errors.Is(err, ctx.Err()) {
				return nil, fmt.Errorf("seed %d (kernel %q): %w", sd.idx, sd.l.name, err)
			}
			return nil, failure.Errorf(failure.Internal, "seed %d: the backward of kernel %q failed: %w", sd.idx, sd.l.name, err)
		}
		axpy(gradIn, sd.alpha, gi)
	}
	return gradIn, nil
}

// backwardKept runs the backward of the kept forward req.ForwardID, on the
// kernels, executors and alphas that forward used.
func (h *Host) backwardKept(ctx context.Context, name string, req Request) (Result, error) {
	f, err := h.forwards.get(name, req.ForwardID, h.cfg.Now())
	if err != nil {
		return Result{}, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.consumed {
		return Result{}, failure.Errorf(failure.NotFound, "forward_id %q is not kept: a backward used it already (send retain_forward: true to keep a forward for several backwards)", f.id)
	}
	outShape := append([]int{f.batch}, f.outShape...)
	if req.GradShape != nil && !slices.Equal(req.GradShape, outShape) {
		return Result{}, failure.Errorf(failure.BadInput, "grad_output has shape %v; the output of forward %q has shape %v", req.GradShape, f.id, outShape)
	}
	if len(req.GradOutput) != f.batch*f.outSize {
		return Result{}, failure.Errorf(failure.BadInput, "grad_output holds %d values; the output of forward %q, shape %v, has %d", len(req.GradOutput), f.id, outShape, f.batch*f.outSize)
	}
	res := Result{Blend: &Blend{}}
	*res.Blend = f.blend
	res.Blend.ForwardID = f.id
	seeds := make([]seedRun, len(f.seeds))
	tapes := make([]Tape, len(f.seeds))
	execs := make([]Executor, len(f.seeds))
	needRun := false
	for i, ks := range f.seeds {
		seeds[i], tapes[i], execs[i] = seedRun{idx: ks.idx, l: ks.l, alpha: ks.alpha}, ks.tape, ks.exec
		needRun = needRun || ks.tape != nil
	}
	res.Exec = ExecInfo{PlacedOn: cpu.Device(), ExecutedOn: cpu.Device(), Executor: cpu.Name(), Alpha: f.blend.AlphaTotal, Blended: f.hasDefault}
	if len(execs) > 0 {
		res.Exec.PlacedOn, res.Exec.ExecutedOn, res.Exec.Executor = f.seeds[0].l.route.Load().placedOn, execs[0].Device(), execs[0].Name()
	}
	n := f.batch * f.inSize
	var gradIn []float32
	if needRun {
		queued := time.Now()
		waited, err := h.admit.AcquireWithin(ctx, h.cfg.RequestTimeout)
		if err != nil {
			return Result{}, fmt.Errorf("layer %q waited for the executor: %w", name, err)
		}
		started := queued
		if waited {
			started = time.Now()
		}
		gradIn, err = backwardSeeds(ctx, seeds, tapes, execs, req.GradOutput, n)
		h.admit.Release()
		if err != nil {
			return Result{}, fmt.Errorf("layer %q: %w", name, err)
		}
		res.Exec.QueueTime, res.Exec.ComputeTime = started.Sub(queued), time.Since(started)
	} else {
		gradIn = make([]float32, n)
	}
	res.GradInput, res.GradInputShape = gradIn, append([]int{f.batch}, f.inShape...)
	if f.hasDefault {
		res.GradDefault = scaled(req.GradOutput, float32(1-f.blend.AlphaTotal))
	}
	if !req.RetainForward {
		f.consumed = true
		h.forwards.consume(f)
	}
	return res, nil
}

// reqShapes are a layer request's checked sizes.
type reqShapes struct {
	batch             int
	inShape, outShape []int // per sample
	inSize, outSize   int
}

// check checks req against the layer's shapes (or, for a layer whose seeds
// hold no kernel, the request's own) and its largest batch.
func (s *layerSnap) check(req *Request) (reqShapes, error) {
	var sh reqShapes
	if len(req.Shape) < 1 {
		return sh, failure.Errorf(failure.BadInput, "input has no shape; layer %q takes [batch%s]", s.name, dims(s.inShape))
	}
	if s.inShape != nil {
		if len(req.Shape) != len(s.inShape)+1 || !slices.Equal(req.Shape[1:], s.inShape) {
			return sh, failure.Errorf(failure.BadInput, "input has shape %v; layer %q takes [batch%s]", req.Shape, s.name, dims(s.inShape))
		}
	}
	sh.batch, sh.inShape = req.Shape[0], req.Shape[1:]
	if sh.batch < 1 {
		return sh, failure.Errorf(failure.BadInput, "batch %d: layer %q needs at least one sample", sh.batch, s.name)
	}
	if sh.batch > s.maxBatch {
		return sh, failure.Errorf(failure.TooLarge, "batch %d is over layer %q's largest batch of %d (the host's batch and output limits for its seeds' kernels)", sh.batch, s.name, s.maxBatch)
	}
	sh.inSize = product(sh.inShape)
	if want := sh.batch * sh.inSize; len(req.Input) != want {
		return sh, failure.Errorf(failure.BadInput, "input holds %d values; shape %v needs %d", len(req.Input), req.Shape, want)
	}
	sh.outShape = s.outShape
	if sh.outShape == nil {
		// No seed holds a kernel: the output is the default, shaped as sent.
		switch {
		case req.Default != nil && len(req.DefaultShape) > 0:
			sh.outShape = req.DefaultShape[1:]
		case req.GradOutput != nil && len(req.GradShape) > 0:
			sh.outShape = req.GradShape[1:]
		default:
			return sh, failure.Errorf(failure.BadInput, "layer %q: none of its seeds holds a kernel, so its output shape is unknown: send default", s.name)
		}
	}
	sh.outSize = product(sh.outShape)
	want := append([]int{sh.batch}, sh.outShape...)
	for _, t := range []struct {
		what  string
		data  []float32
		shape []int
	}{{"default", req.Default, req.DefaultShape}, {"grad_output", req.GradOutput, req.GradShape}} {
		if t.data == nil {
			continue
		}
		if t.shape != nil && !slices.Equal(t.shape, want) {
			return sh, failure.Errorf(failure.BadInput, "%s has shape %v; layer %q gives %v for this input", t.what, t.shape, s.name, want)
		}
		if len(t.data) != sh.batch*sh.outSize {
			return sh, failure.Errorf(failure.BadInput, "%s holds %d values; layer %q gives %v for this input (%d values)", t.what, len(t.data), s.name, want, sh.batch*sh.outSize)
		}
	}
	return sh, nil
}

// requestBytes is what a request of batch samples needs besides its input:
// the output, one seed output at a time and the largest seed's
// activations, the tapes it records, and for a backward the gradient, one
// seed's gradient at a time and the backward's activations.
func (s *layerSnap) requestBytes(batch int, sh reqShapes, keep, grad bool) int64 {
	var maxRun int64
	for _, sd := range s.seeds {
		maxRun = max(maxRun, sd.l.kernel.RunBytes(batch))
	}
	n := 4*int64(batch)*int64(sh.outSize) + maxRun
	if keep || grad {
		n += s.tapeBytes(batch)
	}
	if grad {
		n += 8*int64(batch)*int64(sh.inSize) + maxRun
	}
	return n
}

// tapeBytes is what the seeds' tapes of a forward of batch samples hold.
func (s *layerSnap) tapeBytes(batch int) int64 {
	var n int64
	for _, sd := range s.seeds {
		if sd.alpha != 0 {
			n += sd.l.route.Load().exec.TapeBytes(sd.l.kernel, batch)
		}
	}
	return n
}

// execInfo says where a layer request runs: on its first seed's executor
// (the CPU's without a seed), a fallback when any seed's is.
func (s *layerSnap) execInfo() ExecInfo {
	sv := s.serving()
	return ExecInfo{PlacedOn: sv.PlacedOn, ExecutedOn: sv.ExecutedOn, Executor: sv.Executor,
		Fallback: sv.Degraded != "", Reason: sv.Degraded, Alpha: s.blend.AlphaTotal}
}

// axpy adds a·x into y.
func axpy(y []float32, a float32, x []float32) {
	if a == 1 {
		for i, v := range x {
			y[i] += v
		}
		return
	}
	for i, v := range x {
		y[i] += a * v
	}
}

// scaled returns a·x in a new slice.
func scaled(x []float32, a float32) []float32 {
	out := make([]float32, len(x))
	for i, v := range x {
		out[i] = a * v
	}
	return out
}

// product is the element count of a per-sample shape, -1 when a
// dimension is negative or the count overflows (no tensor has it).
func product(shape []int) int {
	n := 1
	for _, d := range shape {
		if d < 0 || (d > 0 && n > math.MaxInt/d) {
			return -1
		}
		n *= d
	}
	return n
}
