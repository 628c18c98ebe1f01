// Package oiptest provides an in-memory oip.Backend for tests of the HTTP
// layer and of code that mounts it: models are plain Go functions over FP32
// tensors, with states, readiness and errors set by the test.
package oiptest

import (
	"context"
	"slices"
	"sync"

	"github.com/esper/kasmina-host/runtime/failure"
	"github.com/esper/kasmina-host/runtime/oip"
)

// Func computes a model's output from its input.
type Func func(in oip.Tensor) (oip.Tensor, error)

// Backend is a fake oip.Backend. The zero value is not usable; call New.
type Backend struct {
	mu         sync.Mutex
	notReady   string
	models     map[string]*model
	order      []string
	stats      map[string]any
	lastInput  oip.Tensor
	inferCalls int
	load       func(ctx context.Context, name string) error
}

type model struct {
	info oip.ModelInfo
	fn   Func
	exec oip.ExecInfo
	err  error
}

var _ oip.Backend = (*Backend)(nil)
var _ oip.StatsBackend = (*Backend)(nil)

// New returns a ready fake backend with no models.
func New() *Backend {
	return &Backend{models: map[string]*model{}, stats: map[string]any{}}
}

// Add registers a model. Its state defaults to READY and its ExecInfo to
// running on its placement.
func (b *Backend) Add(info oip.ModelInfo, fn Func) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if info.State == "" {
		info.State = oip.StateReady
	}
	if _, ok := b.models[info.Name]; !ok {
		b.order = append(b.order, info.Name)
	}
	b.models[info.Name] = &model{info: info, fn: fn, exec: oip.ExecInfo{
		PlacedOn: info.Placement, ExecutedOn: info.Placement, Executor: info.Executor,
	}}
}

// SetExec sets the ExecInfo that Infer reports for a model.
func (b *Backend) SetExec(name string, e oip.ExecInfo) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.models[name].exec = e
}

// SetInferError makes Infer on a model fail with err (nil clears it).
func (b *Backend) SetInferError(name string, err error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.models[name].err = err
}

// SetStats sets what ModelStats returns for a model.
func (b *Backend) SetStats(name string, v any) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.stats[name] = v
}

// SetReady sets the server's readiness; reason explains false.
func (b *Backend) SetReady(ready bool, reason string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if ready {
		b.notReady = ""
	} else {
		b.notReady = reason
		if reason == "" {
			b.notReady = "not ready"
		}
	}
}

// LastInput returns the tensor of the most recent Infer call and how many
// calls there were.
func (b *Backend) LastInput() (oip.Tensor, int) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.lastInput, b.inferCalls
}

// Ready implements oip.Backend.
func (b *Backend) Ready() (bool, string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.notReady == "", b.notReady
}

// Models implements oip.Backend, in the order models were added.
func (b *Backend) Models() []oip.ModelInfo {
	b.mu.Lock()
	defer b.mu.Unlock()
	out := make([]oip.ModelInfo, 0, len(b.order))
	for _, n := range b.order {
		out = append(out, b.models[n].info)
	}
	return out
}

// Model implements oip.Backend.
func (b *Backend) Model(name string) (oip.ModelInfo, bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	m, ok := b.models[name]
	if !ok {
		return oip.ModelInfo{}, false
	}
	return m.info, true
}

// Infer implements oip.Backend; the model's Func allocates its output
// (req.Out is not used).
func (b *Backend) Infer(ctx context.Context, mi oip.ModelInfo, req oip.KernelRequest) (oip.Tensor, oip.ExecInfo, error) {
	name := mi.Name
	in := req.Input
	// Copied before the lock is taken: a mapped input may fault.
	last := oip.Tensor{Shape: slices.Clone(in.Shape), Data: slices.Clone(in.Data)}
	b.mu.Lock()
	m, ok := b.models[name]
	if ok {
		b.lastInput = last
		b.inferCalls++
	}
	var info oip.ModelInfo
	var exec oip.ExecInfo
	var fn Func
	var ferr error
	if ok {
		info, exec, fn, ferr = m.info, m.exec, m.fn, m.err
	}
	b.mu.Unlock()
	switch {
	case !ok:
		return oip.Tensor{}, oip.ExecInfo{}, failure.Errorf(failure.NotFound, "no model %q", name)
	case info.State != oip.StateReady:
		return oip.Tensor{}, oip.ExecInfo{}, failure.Errorf(failure.Unavailable, "model %q is %s", name, info.State)
	case ferr != nil:
		return oip.Tensor{}, oip.ExecInfo{}, ferr
	}
	if err := ctx.Err(); err != nil {
		return oip.Tensor{}, oip.ExecInfo{}, err
	}
	out, err := fn(in)
	return out, exec, err
}

// SetLoadFunc makes LoadModel call fn first and fail with its error.
func (b *Backend) SetLoadFunc(fn func(ctx context.Context, name string) error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.load = fn
}

// LoadModel implements oip.Backend: a known model becomes READY.
func (b *Backend) LoadModel(ctx context.Context, name string) error {
	b.mu.Lock()
	load := b.load
	b.mu.Unlock()
	if load != nil {
		if err := load(ctx, name); err != nil {
			return err
		}
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	m, ok := b.models[name]
	if !ok {
		return failure.Errorf(failure.NotFound, "no model %q in the repository", name)
	}
	m.info.State, m.info.Reason = oip.StateReady, ""
	return nil
}

// UnloadModel implements oip.Backend: a known model becomes UNAVAILABLE.
func (b *Backend) UnloadModel(ctx context.Context, name string) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	m, ok := b.models[name]
	if !ok {
		return failure.Errorf(failure.NotFound, "no model %q in the repository", name)
	}
	m.info.State, m.info.Reason = oip.StateUnavailable, "unloaded"
	return nil
}

// ModelStats implements oip.StatsBackend.
func (b *Backend) ModelStats(name string) (any, bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	v, ok := b.stats[name]
	return v, ok
}

// Scale returns a model function computing factor·x elementwise, shape kept.
func Scale(factor float32) Func {
	return func(in oip.Tensor) (oip.Tensor, error) {
		out := make([]float32, len(in.Data))
		for i, v := range in.Data {
			out[i] = factor * v
		}
		return oip.Tensor{Shape: slices.Clone(in.Shape), Data: out}, nil
	}
}

// RowSum returns a model function summing each sample: [batch, ...] →
// [batch, 1].
func RowSum() Func {
	return func(in oip.Tensor) (oip.Tensor, error) {
		if len(in.Shape) == 0 || in.Shape[0] == 0 {
			return oip.Tensor{Shape: []int{0, 1}}, nil
		}
		per := len(in.Data) / in.Shape[0]
		out := make([]float32, in.Shape[0])
		for i := range out {
			for _, v := range in.Data[i*per : (i+1)*per] {
				out[i] += v
			}
		}
		return oip.Tensor{Shape: []int{in.Shape[0], 1}, Data: out}, nil
	}
}
