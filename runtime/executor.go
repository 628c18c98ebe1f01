package runtime

import (
	"context"
	"fmt"

	"github.com/esper/kasmina-host/kernels"
	"github.com/esper/kasmina-host/kernels/gemm"
	"github.com/esper/kasmina-host/runtime/placement"
)

// Executor runs loaded kernels on one kind of device. The CPU executor
// (package kernels' Kernel.Run, Kernel.Forward and Tape.Backward) is the
// first implementation; a GPU backend is one new type, to which
// executorFor routes the placements it serves.
type Executor interface {
	// Name names the executor in responses, views and metric labels.
	Name() string
	// Device names the device it executes on, reported as executed_on.
	Device() string
	// Run computes out = k(in) for batch samples, both row-major float32
	// of batch × the kernel's per-sample sizes.
	Run(ctx context.Context, k *kernels.Kernel, in []float32, batch int, out []float32) error
	// Forward is Run that also returns the executor's record of the
	// forward pass, what Backward needs: the caller may reuse in and out
	// at once.
	Forward(ctx context.Context, k *kernels.Kernel, in []float32, batch int, out []float32) (Tape, error)
	// Backward computes the vector-Jacobian product of the forward pass
	// tape records: gradIn = (∂out/∂in)ᵀ · gradOut, gradOut holding
	// batch × the kernel's output size, gradIn receiving batch × its
	// input size. The kernel's weights are constants. A tape serves any
	// number of backward passes, one at a time; it must come from this
	// executor's Forward.
	Backward(ctx context.Context, tape Tape, gradOut, gradIn []float32) error
	// TapeBytes is what Forward of batch samples of k keeps in its tape,
	// so that a caller bounds the tapes it keeps before running one.
	TapeBytes(k *kernels.Kernel, batch int) int64
	// FaultsReachCaller reports whether a memory fault while Run touches
	// in or out is raised as a panic on the goroutine that called it,
	// once Run no longer touches them: what lets a caller hand it memory
	// that can vanish (Request.Mapped) and recover.
	FaultsReachCaller() bool
}

// Tape is an executor's record of one forward pass, for its Backward.
type Tape interface {
	// Bytes is the memory the tape holds.
	Bytes() int64
}

// cpuExecutor runs kernels on the CPU with package kernels' executor.
type cpuExecutor struct{}

func (cpuExecutor) Name() string   { return "cpu-f32" }
func (cpuExecutor) Device() string { return placement.CPUName }
func (cpuExecutor) Run(ctx context.Context, k *kernels.Kernel, in []float32, batch int, out []float32) error {
	return k.Run(ctx, in, batch, out)
}

func (cpuExecutor) Forward(ctx context.Context, k *kernels.Kernel, in []float32, batch int, out []float32) (Tape, error) {
	t := new(kernels.Tape)
	if err := k.Forward(ctx, in, batch, out, t); err != nil {
		return nil, err
	}
	return t, nil
}

func (cpuExecutor) Backward(ctx context.Context, tape Tape, gradOut, gradIn []float32) error {
	t, ok := tape.(*kernels.Tape)
	if !ok {
		return fmt.Errorf("%w: a %T is not the CPU executor's", kernels.ErrTape, tape)
	}
	return t.Backward(ctx, gradOut, gradIn)
}

func (cpuExecutor) TapeBytes(k *kernels.Kernel, batch int) int64 { return k.TapeBytes(batch) }

// FaultsReachCaller: kernels run on the calling goroutine and on the GEMM
// worker pool, which raises its workers' faults on the caller; not so
// with OpenBLAS, whose threads are C's.
func (cpuExecutor) FaultsReachCaller() bool { return gemm.FaultsReachCaller() }

// cpu is the CPU executor, the only one built in.
var cpu Executor = cpuExecutor{}

// noGPUBackend is why a kernel placed on a GPU executes on the CPU.
const noGPUBackend = "no GPU backend is built in"

// executorFor routes a placement to the executor that runs it. why says
// why that executor's device is not the placed one ("" when it is): a
// kernel placed on a GPU runs on the CPU executor because no GPU backend
// is built in.
func executorFor(d *placement.Decision) (ex Executor, why string) {
	if d.Kind == placement.KindCPU {
		return cpu, ""
	}
	return cpu, noGPUBackend
}

// execRoute is how a kernel's requests run, derived from its placement once
// (setDecision) rather than on every request.
type execRoute struct {
	placedOn string
	exec     Executor
	// degraded says why the kernel is not served as its requirements ask
	// ("" when it is): it fell back to the CPU, or its placement's
	// executor runs elsewhere.
	degraded string
}

// routeFor derives a kernel's route from its placement.
func routeFor(d *placement.Decision) *execRoute {
	ex, why := executorFor(d)
	r := &execRoute{placedOn: d.Device, exec: ex}
	switch {
	case d.Degraded:
		r.degraded = "fell back to the CPU: " + d.FallbackReason()
	case why != "":
		r.degraded = fmt.Sprintf("placed on %s, executed on %s because %s", d.Device, ex.Device(), why)
	}
	return r
}
