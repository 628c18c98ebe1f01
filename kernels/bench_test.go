package kernels

import (
	"context"
	"path/filepath"
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

// BenchmarkGoldenBackward times, side by side on a golden MLP
// (golden-1-016: four linear layers with tanh-form GELUs and batch norm,
// batch 32) and two golden convnets (golden-1-034: two 1×1 convolutions
// with tanh, batch norm and GELU on 8×8, batch 32, dominated by the erf
// GELU; golden-1-010: a dilated 3×1 and a 3×3 convolution with batch norm
// and GELU on 13×11, batch 7, dominated by the convolutions): Run; Forward
// recording a tape;
// Tape.Backward from that tape; and the one-shot Backward (forward into a
// pooled tape, then backward). Compare each with Run in the same run.
func BenchmarkGoldenBackward(b *testing.B) {
	ctx := context.Background()
	for _, id := range []string{"golden-1-016", "golden-1-034", "golden-1-010"} {
		c, err := loadGradCase(filepath.Join("testdata", "golden", id))
		if err != nil {
			b.Fatal(err)
		}
		out := make([]float32, c.batch*c.k.OutputSize())
		gx := make([]float32, len(c.input))
		var tape Tape
		if err := c.k.Forward(ctx, c.input, c.batch, out, &tape); err != nil {
			b.Fatal(err)
		}
		for _, v := range []struct {
			name string
			f    func() error
		}{
			{"Run", func() error { return c.k.Run(ctx, c.input, c.batch, out) }},
			{"Forward+tape", func() error { return c.k.Forward(ctx, c.input, c.batch, out, &tape) }},
			{"Tape.Backward", func() error { return tape.Backward(ctx, c.gradOut, gx) }},
			{"Backward", func() error { return c.k.Backward(ctx, c.input, c.batch, c.gradOut, gx) }},
		} {
			b.Run(id+"/"+v.name, func(b *testing.B) {
				b.ReportAllocs()
				for b.Loop() {
					if err := v.f(); err != nil {
						b.Fatal(err)
					}
				}
			})
		}
	}
}
