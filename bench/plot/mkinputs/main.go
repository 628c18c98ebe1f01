// Command mkinputs writes what bench/plot's latency sweep runs: a
// Linear(IN→OUT)+ReLU esper-kernel/v1 file with deterministic weights, its
// weights again as a plain safetensors file for PyTorch, and one input
// file per batch size holding the tensor "input" of shape [batch, IN].
//
//	go run ./bench/plot/mkinputs -dir DIR [-in 512] [-out 512] [-batches 1,2,4,...]
package main

import (
	"bytes"
	"flag"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/esper/kasmina-host/contracts"
	"github.com/esper/kasmina-host/kernels"
)

func main() {
	dir := flag.String("dir", ".", "output directory")
	in := flag.Int("in", 512, "input features")
	out := flag.Int("out", 512, "output features")
	batches := flag.String("batches", "1,2,4,8,16,32,64,128,256", "comma-separated batch sizes")
	flag.Parse()
	if err := run(*dir, *in, *out, *batches); err != nil {
		fmt.Fprintln(os.Stderr, "mkinputs:", err)
		os.Exit(1)
	}
}

func run(dir string, in, out int, batches string) error {
	rng := rand.New(rand.NewPCG(8, 512))
	vals := func(n int, scale float32) []float32 {
		v := make([]float32, n)
		for i := range v {
			v[i] = (rng.Float32()*2 - 1) * scale
		}
		return v
	}
	w, b := vals(out*in, 0.05), vals(out, 0.1)
	weights := []kernels.Tensor{kernels.F32Tensor("0.weight", []int{out, in}, w), kernels.F32Tensor("0.bias", []int{out}, b)}
	id := fmt.Sprintf("linear-%d-%d", in, out)
	md := contracts.NewKernelMetadata(id, "bp-"+id, fmt.Sprintf("Linear(%d→%d) + ReLU", in, out))
	md.InputShape, md.OutputShape, md.ParameterCount = []int{in}, []int{out}, out*in+out
	md.MemoryFootprintMB = float64(4*(out*in+out))/(1<<20) + 1
	md.CompilationTarget = kernels.FormatV1
	mod := &kernels.Module{Type: "sequential", Layers: []*kernels.Module{
		{Type: "linear", InFeatures: in, OutFeatures: out, Bias: true}, {Type: "relu"},
	}}
	var buf bytes.Buffer
	if err := kernels.WriteKernel(&buf, mod, weights, &md); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, "kernel.safetensors"), buf.Bytes(), 0o644); err != nil {
		return err
	}
	buf.Reset()
	if err := kernels.WriteSafetensors(&buf, weights, nil); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, "weights.safetensors"), buf.Bytes(), 0o644); err != nil {
		return err
	}
	for _, s := range strings.Split(batches, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil || n < 1 {
			return fmt.Errorf("-batches: %q is not a positive integer", s)
		}
		buf.Reset()
		if err := kernels.WriteSafetensors(&buf, []kernels.Tensor{kernels.F32Tensor("input", []int{n, in}, vals(n*in, 1))}, nil); err != nil {
			return err
		}
		if err := os.WriteFile(filepath.Join(dir, fmt.Sprintf("input-b%d.safetensors", n)), buf.Bytes(), 0o644); err != nil {
			return err
		}
	}
	return nil
}
