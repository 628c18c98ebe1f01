// Package dense is the gorgonia.org/tensor face of package kernels, for Go
// programs that embed Esper kernels and hold their data as *tensor.Dense:
// Parameters exposes a kernel's weights as tensors, Run runs a kernel on a
// tensor, and BLAS routes gorgonia's float32 matrix products through
// kernels/gemm.
//
// The Kasmina host daemon does not link this package (nor gorgonia, which
// would double its binary): the executor keeps its weights as plain
// []float32 (kernels.Kernel.Weights) and runs on slices (Kernel.Run).
package dense

import (
	"context"
	"fmt"
	"slices"

	"github.com/esper/kasmina-host/kernels"
	"gorgonia.org/tensor"
)

// Parameters returns the kernel's float32 tensors by PyTorch name. They
// share memory with the kernel's executor: callers must not modify them.
func Parameters(k *kernels.Kernel) map[string]*tensor.Dense {
	ws := k.Weights()
	out := make(map[string]*tensor.Dense, len(ws))
	for _, w := range ws {
		out[w.Name] = tensor.New(tensor.WithShape(w.Shape...), tensor.WithBacking(w.Values))
	}
	return out
}

// Run runs k on a [batch, *k.InputShape()] float32 tensor and returns a new
// [batch, *k.OutputShape()] tensor. A view (a slice or a transpose) is
// materialized first; column-major data is refused. It allocates its output; Kernel.Run is the
// allocation-free path. Errors wrap kernels.ErrShape for a tensor of the
// wrong dtype or shape.
func Run(ctx context.Context, k *kernels.Kernel, input *tensor.Dense) (*tensor.Dense, error) {
	shape := input.Shape()
	in := k.InputShape()
	if input.Dtype() != tensor.Float32 {
		return nil, fmt.Errorf("%w: input dtype %v, want float32", kernels.ErrShape, input.Dtype())
	}
	if len(shape) != len(in)+1 || !slices.Equal(shape[1:], in) {
		return nil, fmt.Errorf("%w: input shape %v, want [batch %v]", kernels.ErrShape, []int(shape), in)
	}
	if input.IsMaterializable() { // a slice or a lazy transpose
		input = input.Materialize().(*tensor.Dense)
	}
	if !input.IsNativelyAccessible() || !input.DataOrder().IsRowMajor() {
		return nil, fmt.Errorf("%w: input must be a row-major tensor in Go memory", kernels.ErrShape)
	}
	batch := shape[0]
	out := make([]float32, batch*k.OutputSize())
	if err := k.Run(ctx, input.Data().([]float32), batch, out); err != nil {
		return nil, err
	}
	return tensor.New(tensor.WithShape(append([]int{batch}, k.OutputShape()...)...), tensor.WithBacking(out)), nil
}
