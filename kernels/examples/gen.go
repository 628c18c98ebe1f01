//go:build ignore

// gen writes the example kernels with the project's own writer:
//
//	go generate ./kernels/examples
//
// Each kernel gets its esper-kernel/v1 file and a CompiledKernel document
// (NAME.json) whose checksum is the file's SHA-256, for `kasmina-host place`
// and POST /v1/kernels.
package main

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"log"
	"math"
	"math/rand/v2"
	"os"
	"time"

	"github.com/esper/kasmina-host/contracts"
	"github.com/esper/kasmina-host/kernels"
)

type example struct {
	id, desc    string
	reqs        []string
	in, out     []int
	module      *kernels.Module
	tensors     func(r *rand.Rand) []kernels.Tensor
	footprintMB float64
}

func uniform(r *rand.Rand, n, fanIn int) []float32 {
	bound := 1 / math.Sqrt(float64(fanIn))
	v := make([]float32, n)
	for i := range v {
		v[i] = float32((r.Float64()*2 - 1) * bound)
	}
	return v
}

func ones(n int, v float32) []float32 {
	out := make([]float32, n)
	for i := range out {
		out[i] = v
	}
	return out
}

func main() {
	examples := []example{
		{
			id: "seed-linear-64", desc: "a seed-sized adapter: Linear(64→64) + ReLU",
			reqs: []string{"cuda", "cpu"}, in: []int{64}, out: []int{64}, footprintMB: 2,
			module: &kernels.Module{Type: "sequential", Layers: []*kernels.Module{
				{Type: "linear", InFeatures: 64, OutFeatures: 64, Bias: true}, {Type: "relu"}}},
			tensors: func(r *rand.Rand) []kernels.Tensor {
				return []kernels.Tensor{
					kernels.F32Tensor("0.weight", []int{64, 64}, uniform(r, 64*64, 64)),
					kernels.F32Tensor("0.bias", []int{64}, uniform(r, 64, 64)),
				}
			},
		},
		{
			id: "mlp-gelu", desc: "Linear(16→32) + GELU + Linear(32→4)",
			reqs: []string{"cuda"}, in: []int{16}, out: []int{4}, footprintMB: 1,
			module: &kernels.Module{Type: "sequential", Layers: []*kernels.Module{
				{Type: "linear", InFeatures: 16, OutFeatures: 32, Bias: true},
				{Type: "gelu", Approximate: "none"},
				{Type: "linear", InFeatures: 32, OutFeatures: 4, Bias: true}}},
			tensors: func(r *rand.Rand) []kernels.Tensor {
				return []kernels.Tensor{
					kernels.F32Tensor("0.weight", []int{32, 16}, uniform(r, 32*16, 16)),
					kernels.F32Tensor("0.bias", []int{32}, uniform(r, 32, 16)),
					kernels.F32Tensor("2.weight", []int{4, 32}, uniform(r, 4*32, 32)),
					kernels.F32Tensor("2.bias", []int{4}, uniform(r, 4, 32)),
				}
			},
		},
		{
			id: "conv-pool", desc: "Conv2d(1→4, 3×3, padding 1) + BatchNorm2d + ReLU + AdaptiveAvgPool2d(1) + Flatten",
			reqs: []string{"cuda:0", "cpu"}, in: []int{1, 8, 8}, out: []int{4}, footprintMB: 1,
			module: &kernels.Module{Type: "sequential", Layers: []*kernels.Module{
				{Type: "conv2d", InChannels: 1, OutChannels: 4, KernelSize: [2]int{3, 3}, Stride: [2]int{1, 1},
					Padding: [2]int{1, 1}, Dilation: [2]int{1, 1}, Groups: 1, Bias: true},
				{Type: "batchnorm2d", NumFeatures: 4, Eps: 1e-5, Affine: true},
				{Type: "relu"},
				{Type: "adaptive_avg_pool2d", OutputSize: [2]int{1, 1}},
				{Type: "flatten", StartDim: 1, EndDim: -1}}},
			tensors: func(r *rand.Rand) []kernels.Tensor {
				return []kernels.Tensor{
					kernels.F32Tensor("0.weight", []int{4, 1, 3, 3}, uniform(r, 36, 9)),
					kernels.F32Tensor("0.bias", []int{4}, uniform(r, 4, 9)),
					kernels.F32Tensor("1.weight", []int{4}, ones(4, 1)),
					kernels.F32Tensor("1.bias", []int{4}, ones(4, 0.1)),
					kernels.F32Tensor("1.running_mean", []int{4}, uniform(r, 4, 4)),
					kernels.F32Tensor("1.running_var", []int{4}, ones(4, 0.9)),
				}
			},
		},
		{
			id: "seq-layernorm", desc: "a sequence block: LayerNorm(16) + Linear(16→16) + Tanh over [8, 16]",
			reqs: nil, in: []int{8, 16}, out: []int{8, 16}, footprintMB: 1,
			module: &kernels.Module{Type: "sequential", Layers: []*kernels.Module{
				{Type: "layernorm", NormalizedShape: []int{16}, Eps: 1e-5, ElementwiseAffine: true},
				{Type: "linear", InFeatures: 16, OutFeatures: 16, Bias: true},
				{Type: "tanh"}}},
			tensors: func(r *rand.Rand) []kernels.Tensor {
				return []kernels.Tensor{
					kernels.F32Tensor("0.weight", []int{16}, ones(16, 1)),
					kernels.F32Tensor("0.bias", []int{16}, ones(16, 0)),
					kernels.F32Tensor("1.weight", []int{16, 16}, uniform(r, 256, 16)),
					kernels.F32Tensor("1.bias", []int{16}, uniform(r, 16, 16)),
				}
			},
		},
	}
	created := time.Date(2026, 11, 25, 0, 0, 0, 0, time.UTC)
	for i, ex := range examples {
		r := rand.New(rand.NewPCG(uint64(i)+1, 2026))
		tensors := ex.tensors(r)
		params := 0
		for _, t := range tensors {
			n := 1
			for _, d := range t.Shape {
				n *= d
			}
			params += n
		}
		for _, l := range ex.module.Layers {
			if l.Type == "batchnorm2d" {
				params -= 2 * l.NumFeatures // running statistics are buffers
			}
		}
		md := contracts.NewKernelMetadata(ex.id, "bp-"+ex.id, ex.desc)
		md.InputShape, md.OutputShape, md.ParameterCount = ex.in, ex.out, params
		md.DeviceRequirements = ex.reqs
		md.MemoryFootprintMB = ex.footprintMB
		md.CompilationTarget = "esper-kernel/v1"
		md.CreatedAt = created
		var buf bytes.Buffer
		if err := kernels.WriteKernel(&buf, ex.module, tensors, &md); err != nil {
			log.Fatalf("%s: %v", ex.id, err)
		}
		if _, err := kernels.Load(buf.Bytes(), kernels.LoadOptions{}); err != nil {
			log.Fatalf("%s does not load: %v", ex.id, err)
		}
		if err := os.WriteFile(ex.id+".safetensors", buf.Bytes(), 0o644); err != nil {
			log.Fatal(err)
		}
		sum := sha256.Sum256(buf.Bytes())
		checksum := hex.EncodeToString(sum[:])
		md.Checksum = &checksum
		ck := contracts.NewCompiledKernel(md.BlueprintID, ex.id+".safetensors", md) // relative to the kernel root
		ck.KernelID = ex.id
		ck.Status = "validated"
		ck.CreatedAt = created
		doc, err := json.MarshalIndent(ck, "", "  ")
		if err != nil {
			log.Fatal(err)
		}
		if err := os.WriteFile(ex.id+".json", append(doc, '\n'), 0o644); err != nil {
			log.Fatal(err)
		}
	}
}
