// Package examples holds the small example kernels the host serves when it
// runs on embedded defaults: esper-kernel/v1 files written by the project's
// own writer (gen.go), each with a CompiledKernel document beside it.
//
//	seed-linear-64   Linear(64→64) + ReLU, requirements [cuda, cpu]
//	mlp-gelu         Linear(16→32) + GELU + Linear(32→4), requirements [cuda]
//	conv-pool        Conv2d + BatchNorm2d + ReLU + AdaptiveAvgPool2d + Flatten, [cuda:0, cpu]
//	seq-layernorm    LayerNorm + Linear + Tanh over [8, 16], no requirements
//
// Regenerate them with `go generate ./kernels/examples`.
package examples

import "embed"

//go:generate go run gen.go

// FS holds the example kernel files (*.safetensors) and their
// CompiledKernel documents (*.json).
//
//go:embed *.safetensors *.json
var FS embed.FS
