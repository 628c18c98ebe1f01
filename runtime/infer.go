package runtime

import (
	"context"
	"errors"
	"fmt"
	"math"
	"time"

	"github.com/esper/kasmina-host/runtime/dispatch"
)

// Request is one inference.
type Request struct {
	// Input is [batch, *input_shape] row-major float32.
	Input []float32
	// Shape is the input's shape, batch first.
	Shape []int
	// Default, when set, is the host layer's own output for the same input
	// ([batch, *output_shape]): the result is then the seed's alpha blend
	// (1 − α)·default + α·kernel(x), applied once.
	Default []float32
	// Out, when large enough, receives the output (no allocation).
	Out []float32
}

// Result is an inference's output and where it ran.
type Result struct {
	Output []float32
	Shape  []int
	Exec   ExecInfo
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

// Failure classes, for metrics and error mapping.
const (
	reasonBadInput  = "bad_input"
	reasonRefused   = "refused"
	reasonRuntime   = "runtime"
	reasonDevice    = "device"
	reasonQueueFull = "queue_full"
)

// Infer runs the named kernel on req.Input.
func (h *Host) Infer(ctx context.Context, name string, req Request) (Result, error) {
	h.mu.RLock()
	l, ok := h.kernels[name]
	h.mu.RUnlock()
	if !ok {
		return Result{}, fmt.Errorf("%w: kernel %q is not loaded", ErrNotFound, name)
	}
	obs := l.obs.Load()
	in := l.inShape
	if len(req.Shape) != len(in)+1 {
		obs.fail(reasonBadInput)
		return Result{}, fmt.Errorf("%w: input has shape %v; kernel %q takes [batch %s]", ErrBadInput, req.Shape, name, dims(in))
	}
	for i, d := range in {
		if req.Shape[i+1] != d {
			obs.fail(reasonBadInput)
			return Result{}, fmt.Errorf("%w: input dimension %d is %d, kernel %q takes [batch %s]", ErrBadInput, i+1, req.Shape[i+1], name, dims(in))
		}
	}
	batch := req.Shape[0]
	if batch < 1 || batch > h.cfg.MaxBatch {
		obs.fail(reasonBadInput)
		return Result{}, fmt.Errorf("%w: batch %d outside 1..%d", ErrBadInput, batch, h.cfg.MaxBatch)
	}
	if want := batch * l.kernel.InputSize(); len(req.Input) != want {
		obs.fail(reasonBadInput)
		return Result{}, fmt.Errorf("%w: input holds %d values, shape %v needs %d", ErrBadInput, len(req.Input), req.Shape, want)
	}
	outN := batch * l.kernel.OutputSize()
	if req.Default != nil && len(req.Default) != outN {
		obs.fail(reasonBadInput)
		return Result{}, fmt.Errorf("%w: default output holds %d values, want %d", ErrBadInput, len(req.Default), outN)
	}
	if l.unloading.Load() {
		obs.fail(reasonRefused)
		return Result{}, fmt.Errorf("%w: kernel %q is being unloaded", ErrUnavailable, name)
	}
	if err := l.breaker.Allow(); err != nil {
		obs.fail(reasonRefused)
		return Result{}, fmt.Errorf("%w: kernel %q: %w", ErrUnavailable, name, err)
	}
	l.inflight.Add(1)
	defer l.inflight.Done()

	queued := time.Now()
	waited, err := h.cpu.AcquireWithin(ctx, h.cfg.RequestTimeout)
	if err != nil {
		l.breaker.Done(false) // not the kernel's fault
		if errors.Is(err, dispatch.ErrQueueFull) {
			obs.fail(reasonQueueFull)
			return Result{}, fmt.Errorf("kernel %q: %w", name, err)
		}
		obs.fail(reasonRuntime)
		return Result{}, fmt.Errorf("%w: kernel %q waited for the executor: %w", ErrRuntime, name, err)
	}
	started := queued
	if waited {
		started = time.Now()
	}
	out := req.Out
	if cap(out) < outN {
		out = make([]float32, outN)
	}
	out = out[:outN]
	err = l.kernel.Run(ctx, req.Input, batch, out)
	h.cpu.Release()
	done := time.Now()
	compute := done.Sub(started)
	l.calls.Add(1)
	if err != nil {
		l.failures.Add(1)
		l.breaker.Done(true)
		l.window.ObserveError(compute)
		obs.fail(reasonRuntime)
		return Result{}, fmt.Errorf("%w: kernel %q: %w", ErrRuntime, name, err)
	}
	l.breaker.Done(false)
	l.window.Observe(out, batch, compute)

	l.mu.Lock()
	info := ExecInfo{PlacedOn: l.decision.Device, ExecutedOn: "cpu", Executor: executorName,
		Fallback: l.execReason != "", Reason: l.execReason,
		QueueTime: started.Sub(queued), ComputeTime: compute}
	l.mu.Unlock()
	if req.Default != nil {
		alpha := h.alpha(l)
		blend(out, req.Default, alpha)
		info.Alpha, info.Blended = alpha, true
	}
	obs.ok(info.QueueTime, compute, done.Sub(queued))
	return Result{Output: out, Shape: l.outShape(batch), Exec: info}, nil
}

// blend computes out = (1 − α)·def + α·out in place.
func blend(out, def []float32, alpha float64) {
	a := float32(math.Max(0, math.Min(1, alpha)))
	b := 1 - a
	for i := range out {
		out[i] = b*def[i] + a*out[i]
	}
}

func dims(s []int) string {
	out := ""
	for _, d := range s {
		out += fmt.Sprintf(", %d", d)
	}
	return out
}
