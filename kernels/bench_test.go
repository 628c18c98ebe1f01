package kernels

import (
	"context"
	"testing"
)

// benchKernel times Run on a steady stream of same-shaped requests and
// reports GFLOP/s (2 × multiply-adds per call / time per call).
func benchKernel(b *testing.B, k *Kernel, batch int) {
	ctx := context.Background()
	in := randomInput(batch*k.InputSize(), 1)
	out := make([]float32, batch*k.OutputSize())
	if err := k.Run(ctx, in, batch, out); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		if err := k.Run(ctx, in, batch, out); err != nil {
			b.Fatal(err)
		}
	}
	flops := 2 * float64(k.MACsPerSample()) * float64(batch) * float64(b.N)
	b.ReportMetric(flops/b.Elapsed().Seconds()/1e9, "GFLOP/s")
}

// BenchmarkSeedLinear64ReLUBatch1 is a seed-sized kernel: linear 64→64 +
// ReLU on one sample.
func BenchmarkSeedLinear64ReLUBatch1(b *testing.B) { benchKernel(b, seedKernel(b, 64, 64), 1) }

// BenchmarkLinear512ReLUBatch32 is a large kernel: linear 512→512 + ReLU on
// 32 samples.
func BenchmarkLinear512ReLUBatch32(b *testing.B) { benchKernel(b, seedKernel(b, 512, 512), 32) }

// BenchmarkConvNetBatch8 is a small convnet (conv 3x3, batch norm, GELU,
// pool, linear).
func BenchmarkConvNetBatch8(b *testing.B) {
	m := mustModule(b, seq(`{"type":"conv2d","in_channels":8,"out_channels":32,"kernel_size":3,"padding":1}`, `{"type":"batchnorm2d","num_features":32}`, `{"type":"gelu"}`, `{"type":"adaptive_avg_pool2d","output_size":2}`, `{"type":"flatten"}`, linearJSON(128, 10, true)))
	k, err := Load(testKernel(b, m, []int{8, 16, 16}, 1, nil), LoadOptions{InputShape: []int{8, 16, 16}})
	if err != nil {
		b.Fatal(err)
	}
	benchKernel(b, k, 8)
}
