package runtime

import (
	"context"
	"fmt"

	"github.com/esper/kasmina-host/kernels"
	"github.com/esper/kasmina-host/runtime/placement"
)

// Executor runs loaded kernels on one kind of device. The CPU executor
// (package kernels' Kernel.Run) is the first implementation; a GPU backend
// is one new type, to which executorFor routes the placements it serves.
// Training through a seed (issue #15) adds a backward pass here: package
// kernels already has Kernel.Forward with a Tape and Kernel.Backward.
type Executor interface {
	// Name names the executor in responses, views and metric labels.
	Name() string
	// Device names the device it executes on, reported as executed_on.
	Device() string
	// Run computes out = k(in) for batch samples, both row-major float32
	// of batch × the kernel's per-sample sizes.
	Run(ctx context.Context, k *kernels.Kernel, in []float32, batch int, out []float32) error
}

// cpuExecutor runs kernels on the CPU with package kernels' executor.
type cpuExecutor struct{}

func (cpuExecutor) Name() string   { return "cpu-f32" }
func (cpuExecutor) Device() string { return placement.CPUName }
func (cpuExecutor) Run(ctx context.Context, k *kernels.Kernel, in []float32, batch int, out []float32) error {
	return k.Run(ctx, in, batch, out)
}

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
