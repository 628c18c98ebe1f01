package gemm

import (
	"fmt"
	"math"
	"math/rand/v2"
	"runtime"
	"testing"
	"time"
)

// benchShapes are the shapes bench/gemm/run.sh compares with PyTorch.
var benchShapes = []struct {
	name    string
	linear  bool // Linear with bias (batch m, in k, out n); else Sgemm NN
	m, n, k int
}{
	{"linear64x64_b1", true, 1, 64, 64},
	{"linear512x512_b32", true, 32, 512, 512},
	{"linear1024x1024_b256", true, 256, 1024, 1024},
	{"matmul2048", false, 2048, 2048, 2048},
}

// BenchmarkShapes reports GFLOP/s (2·m·n·k per call) per implementation.
func BenchmarkShapes(b *testing.B) {
	def := Implementation()
	defer func() { _ = Use(def) }()
	for _, impl := range Implementations() {
		if err := Use(impl); err != nil {
			b.Fatal(err)
		}
		for _, s := range benchShapes {
			b.Run(fmt.Sprintf("impl=%s/%s", impl, s.name), func(b *testing.B) {
				if impl == "portable" && s.m*s.n*s.k > 1<<26 {
					b.Skip("portable path too slow for this shape")
				}
				r := rand.New(rand.NewPCG(1, 1))
				a, w, c := randSlice(r, s.m*s.k), randSlice(r, s.n*s.k), make([]float32, s.m*s.n)
				ep := Epilogue{Bias: randSlice(r, s.n), Act: ActReLU}
				call := func() { Linear(s.m, s.n, s.k, a, s.k, w, s.k, c, s.n, ep) }
				if !s.linear {
					call = func() { Sgemm(false, false, s.m, s.n, s.k, 1, a, s.k, w, s.n, 0, c, s.n) }
				}
				call()
				b.ReportAllocs()
				b.ResetTimer()
				for b.Loop() {
					call()
				}
				sec := b.Elapsed().Seconds() / float64(b.N)
				b.ReportMetric(2*float64(s.m)*float64(s.n)*float64(s.k)/sec/1e9, "GFLOP/s")
				b.ReportMetric(sec*1e6, "us/call")
			})
		}
	}
}

// BenchmarkFMAPeak reports the float32 FMA peak of one core and of all
// cores (GOMAXPROCS), measured with the assembly FMA loop.
func BenchmarkFMAPeak(b *testing.B) {
	for _, threads := range []int{1, runtime.GOMAXPROCS(0)} {
		b.Run(fmt.Sprintf("threads=%d", threads), func(b *testing.B) {
			var best FMAPeak
			for b.Loop() {
				if p := MeasureFMAPeak(threads, 200*time.Millisecond); p.GFLOPS > best.GFLOPS {
					best = p
				}
			}
			if best.ISA == "" {
				b.Skip("no vector FMA on this CPU")
			}
			b.ReportMetric(best.GFLOPS, "GFLOP/s")
		})
	}
}

// BenchmarkPackedVsDot runs general (NN) products through the packed path
// and through the dot-product path side by side, on the shapes that chose
// packedMinN: convolution-shaped products (few output channels × many
// pixels), cubes around the threshold and the 2048³ matmul. Only on CPUs
// whose engine has a packed path.
func BenchmarkPackedVsDot(b *testing.B) {
	e, ok := current().(*native)
	if !ok || e.pk == nil {
		b.Skip("the current engine has no packed path")
	}
	for _, s := range [][3]int{
		{64, 3136, 576}, {16, 12544, 144}, {128, 3136, 1152}, {256, 784, 2304}, // convolutions
		{128, 196, 1152}, {256, 49, 2304}, // few pixels: below the threshold
		{256, 256, 256}, {512, 512, 512}, {2048, 2048, 2048},
	} {
		m, n, k := s[0], s[1], s[2]
		for _, mode := range []string{"dot", "packed"} {
			b.Run(fmt.Sprintf("%dx%dx%d/%s", m, n, k, mode), func(b *testing.B) {
				from := e.pkMin
				defer func() { e.pkMin = from }()
				e.pkMin = 1
				if mode == "dot" {
					e.pkMin = math.MaxInt
				}
				r := rand.New(rand.NewPCG(1, 2))
				a, bm, c := randSlice(r, m*k), randSlice(r, k*n), make([]float32, m*n)
				for b.Loop() {
					Sgemm(false, false, m, n, k, 1, a, k, bm, n, 0, c, n)
				}
				b.ReportMetric(2*float64(m)*float64(n)*float64(k)*float64(b.N)/b.Elapsed().Seconds()/1e9, "GFLOP/s")
			})
		}
	}
}
