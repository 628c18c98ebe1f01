package gemm

import (
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"testing"
)

// specialInputs are the values where activations implemented differently
// used to disagree: signed zeros, NaN, infinities, tiny and saturating
// arguments.
var specialInputs = []float32{0, float32(math.Copysign(0, -1)), float32(math.NaN()), float32(math.Inf(1)), float32(math.Inf(-1)), -1, 1, -1e-30, 1e-30, -20, 20}

// torchBits holds PyTorch 1.13's float32 results on specialInputs, as bit
// patterns, printed by
//
//	x = torch.tensor([0.0, -0.0, nan, inf, -inf, -1.0, 1.0, -1e-30, 1e-30, -20.0, 20.0])
//	[struct.unpack('<I', struct.pack('<f', v))[0] for v in f(x).tolist()]
//
// for f in relu, sigmoid, tanh, gelu, gelu(approximate='tanh').
var torchBits = map[Activation][]uint32{
	ActReLU:     {0x00000000, 0x80000000, 0x7fc00000, 0x7f800000, 0x00000000, 0x00000000, 0x3f800000, 0x00000000, 0x0da24260, 0x00000000, 0x41a00000},
	ActSigmoid:  {0x3f000000, 0x3f000000, 0xffc00000, 0x3f800000, 0x00000000, 0x3e89b2b1, 0x3f3b26a8, 0x3f000000, 0x3f000000, 0x310da433, 0x3f800000},
	ActTanh:     {0x00000000, 0x80000000, 0xffffffff, 0x3f800000, 0xbf800000, 0xbf42f7d6, 0x3f42f7d6, 0x8da24260, 0x0da24260, 0xbf800000, 0x3f800000},
	ActGELU:     {0x00000000, 0x00000000, 0x7fc00000, 0x7f800000, 0xffc00000, 0xbe227688, 0x3f57625e, 0x8d224260, 0x0d224260, 0x00000000, 0x41a00000},
	ActGELUTanh: {0x00000000, 0x80000000, 0x7fc00000, 0x7f800000, 0xffc00000, 0xbe229e90, 0x3f57585c, 0x8d224260, 0x0d224260, 0x80000000, 0x41a00000},
}

// sameAsTorch compares a result with PyTorch's: any NaN matches any NaN,
// zeros must carry the same sign (except for the erf GELU, whose
// vectorized PyTorch kernel returns +0 where the formula gives -0, a
// difference no comparison can see), and finite values may differ by a few
// ulps for the transcendental functions, where PyTorch's own float32
// kernels are off the exactly rounded value (gelu(-1): PyTorch 0xbe227688,
// exact 0xbe227686); ReLU must be exact.
func sameAsTorch(act Activation, got float32, want uint32) bool {
	w := math.Float32frombits(want)
	switch {
	case w != w:
		return got != got
	case w == 0:
		return got == 0 && (act == ActGELU || math.Signbit(float64(got)) == math.Signbit(float64(w)))
	case act == ActReLU:
		return math.Float32bits(got) == want
	}
	d := int64(math.Float32bits(got)) - int64(want)
	return d >= -4 && d <= 4
}

func TestApplyMatchesPyTorchOnSpecialValues(t *testing.T) {
	for act, want := range torchBits {
		t.Run(act.String(), func(t *testing.T) {
			got := make([]float32, len(specialInputs))
			act.Apply(got, specialInputs)
			for i, x := range specialInputs {
				if !sameAsTorch(act, got[i], want[i]) {
					t.Errorf("%v(%g) = %g (%#08x), PyTorch gives %g (%#08x)", act, x, got[i], math.Float32bits(got[i]), math.Float32frombits(want[i]), want[i])
				}
			}
			inPlace := append([]float32(nil), specialInputs...)
			act.Apply(inPlace, inPlace)
			for i := range got {
				if math.Float32bits(inPlace[i]) != math.Float32bits(got[i]) {
					t.Errorf("in place: element %d = %#08x, out of place %#08x", i, math.Float32bits(inPlace[i]), math.Float32bits(got[i]))
				}
			}
		})
	}
}

// TestLinearEpilogueIsApply checks, for every engine and activation, that
// Linear's output is Apply of the pre-activation bit for bit, both when the
// bias reaches the activation unchanged (k = 0, where -0 survives) and
// through the fused micro-kernel epilogues (k = 1, a 1×1 product per
// output, where the sum starts at +0 so that -0 becomes +0 first).
func TestLinearEpilogueIsApply(t *testing.T) {
	n := len(specialInputs)
	ones := make([]float32, n)
	for i := range ones {
		ones[i] = 1
	}
	forEachImpl(t, func(t *testing.T) {
		for act := ActNone; act <= ActGELUTanh; act++ {
			for _, k := range []int{0, 1} {
				t.Run(fmt.Sprintf("%v/k=%d", act, k), func(t *testing.T) {
					var a, w, bias, pre []float32
					if k == 0 {
						bias = specialInputs
						pre = append([]float32(nil), specialInputs...)
					} else {
						// c[0, j] = 1 · x_j + 0: the product carries the value.
						a, w = []float32{1}, specialInputs
						bias = make([]float32, n)
						pre = make([]float32, n)
						for j, x := range specialInputs {
							pre[j] = 1*x + 0
						}
					}
					want := make([]float32, n)
					act.Apply(want, pre)
					c := make([]float32, n)
					Linear(1, n, k, a, max(k, 1), w, max(k, 1), c, n, Epilogue{Bias: bias, Act: act})
					for j := range c {
						g, x := c[j], want[j]
						if math.Float32bits(g) != math.Float32bits(x) && (g == g || x == x) {
							t.Errorf("input %g: Linear gives %g (%#08x), Apply %g (%#08x)", specialInputs[j], g, math.Float32bits(g), x, math.Float32bits(x))
						}
					}
				})
			}
		}
	})
}

// torchGradBits holds PyTorch 1.13's float32 input gradients for
// backwardInputs with grad_output 0.75, as bit patterns, printed by
//
//	x = torch.tensor([0.0, -0.0, nan, inf, -inf, -1.0, 1.0, -1e-30, 1e-30, -20.0, 20.0, 3.0, -3.0], requires_grad=True)
//	f(x).backward(torch.full((13,), 0.75)); [... for v in x.grad.tolist()]
//
// for f in relu, sigmoid, tanh, gelu, gelu(approximate='tanh').
var (
	backwardInputs = append(append([]float32(nil), specialInputs...), 3, -3)
	torchGradBits  = map[Activation][]uint32{
		ActReLU:     {0x00000000, 0x00000000, 0x3f400000, 0x3f400000, 0x00000000, 0x00000000, 0x3f400000, 0x00000000, 0x3f400000, 0x00000000, 0x3f400000, 0x3f400000, 0x00000000},
		ActSigmoid:  {0x3e400000, 0x3e400000, 0xffc00000, 0x00000000, 0x00000000, 0x3e16ff7b, 0x3e16ff7a, 0x3e400000, 0x3e400000, 0x30d4764c, 0x00000000, 0x3d0ac85e, 0x3d0ac85f},
		ActTanh:     {0x3f400000, 0x3f400000, 0xffffffff, 0x00000000, 0x00000000, 0x3ea14527, 0x3ea14527, 0x3f400000, 0x3f400000, 0x00000000, 0x00000000, 0x3bf27764, 0x3bf27764},
		ActGELU:     {0x3ec00000, 0x3ec00000, 0x7fc00000, 0xffc00000, 0xffc00000, 0xbd7ff1ec, 0x3f4fff1e, 0x3ec00000, 0x3ec00000, 0x00000000, 0x3f400000, 0x3f424b26, 0xbc12c9a0},
		ActGELUTanh: {0x3ec00000, 0x3ec00000, 0x7fc00000, 0xffc00000, 0xffc00000, 0xbd7edd9e, 0x3f4fedda, 0x3ec00000, 0x3ec00000, 0x00000000, 0x3f400000, 0x3f423964, 0xbc0e590c},
	}
)

// TestBackwardMatchesPyTorchOnSpecialValues runs each activation forward,
// then Backward from what BackwardFromInput says to keep, and compares with
// PyTorch's autograd: NaN, infinities and zeros as PyTorch has them (ReLU's
// NaN passes the gradient, as threshold_backward does; -0 and +0 are told
// apart except for the erf GELU), finite values within a relative 2e-5, since
// PyTorch's float32 GELU derivatives lose digits to cancellation for x < 0
// (gelu'(-1)·0.75: PyTorch 0xbd7ff1ec, exactly rounded 0xbd7ff1f4, which
// Backward gives; gelu_tanh'(-3)·0.75: PyTorch -0.008688223, float64
// autograd -0.008688124973, Backward -0.008688125).
func TestBackwardMatchesPyTorchOnSpecialValues(t *testing.T) {
	for act, want := range torchGradBits {
		t.Run(act.String(), func(t *testing.T) {
			y := make([]float32, len(backwardInputs))
			act.Apply(y, backwardInputs)
			saved := y
			if act.BackwardFromInput() {
				saved = backwardInputs
			}
			dy := make([]float32, len(y))
			for i := range dy {
				dy[i] = 0.75
			}
			dx := make([]float32, len(y))
			act.Backward(dx, dy, saved)
			for i, x := range backwardInputs {
				w := math.Float32frombits(want[i])
				close := w != 0 && !math.IsInf(float64(w), 0) && math.Abs(float64(dx[i]-w)) <= 2e-5*math.Abs(float64(w))
				if !close && !sameAsTorch(act, dx[i], want[i]) {
					t.Errorf("%v'(%g)·0.75 = %g (%#08x), PyTorch gives %g (%#08x)", act, x, dx[i], math.Float32bits(dx[i]), math.Float32frombits(want[i]), want[i])
				}
			}
			act.Backward(dy, dy, saved) // in place
			for i := range dy {
				if math.Float32bits(dy[i]) != math.Float32bits(dx[i]) {
					t.Errorf("in place: element %d = %#08x, out of place %#08x", i, math.Float32bits(dy[i]), math.Float32bits(dx[i]))
				}
			}
		})
	}
}

// ReLU, vector and scalar, gives the comparison's results bit for bit on
// every class of float32 (both zeros, subnormals, infinities, NaNs of
// either sign and payload) and on random values.
func TestReLUMatchesComparison(t *testing.T) {
	src := []float32{0, float32(math.Copysign(0, -1)), 1, -1, float32(math.Inf(1)), float32(math.Inf(-1)),
		math.SmallestNonzeroFloat32, -math.SmallestNonzeroFloat32, math.MaxFloat32, -math.MaxFloat32,
		math.Float32frombits(0x7fc00000), math.Float32frombits(0xffc00000), math.Float32frombits(0x7f800001),
		math.Float32frombits(0xff800001), math.Float32frombits(0xffffffff), math.Float32frombits(0x807fffff)}
	r := rand.New(rand.NewPCG(3, 4))
	for range 4096 {
		src = append(src, math.Float32frombits(r.Uint32()))
	}
	src = src[:len(src)-3] // a tail that is not a whole vector
	for _, impl := range []struct {
		name string
		fn   func(dst, src []float32)
	}{{"Apply", ActReLU.Apply}, {"scalar", reluScalar}, {"in place", func(dst, src []float32) { copy(dst, src); ActReLU.Apply(dst, dst) }}} {
		dst := make([]float32, len(src))
		impl.fn(dst, src)
		for i, v := range src {
			want := v
			if v < 0 {
				want = 0
			}
			if math.Float32bits(dst[i]) != math.Float32bits(want) {
				t.Errorf("%s: relu(%#08x) = %#08x, want %#08x", impl.name, math.Float32bits(v), math.Float32bits(dst[i]), math.Float32bits(want))
			}
		}
	}
}

// BenchmarkReLU runs ReLU over a megabyte of normally distributed values
// (signs at random, as a ReLU sees them).
func BenchmarkReLU(b *testing.B) {
	r := rand.New(rand.NewPCG(1, 2))
	src := make([]float32, 256*1024)
	for i := range src {
		src[i] = float32(r.NormFloat64())
	}
	dst := make([]float32, len(src))
	b.SetBytes(4 * int64(len(src)))
	for b.Loop() {
		ActReLU.Apply(dst, src)
	}
}

// BenchmarkSharedActivation runs a GELU over 64K elements (a batch of 64
// hidden layers of 1024) with Apply, which shares it with the worker pool,
// and on the calling goroutine alone.
func BenchmarkSharedActivation(b *testing.B) {
	r := rand.New(rand.NewPCG(1, 2))
	src := make([]float32, 64<<10)
	for i := range src {
		src[i] = float32(r.NormFloat64())
	}
	dst := make([]float32, len(src))
	for _, c := range []struct {
		name string
		fn   func(dst, src []float32)
	}{{"Apply", ActGELU.Apply}, {"alone", ActGELU.apply}} {
		b.Run(c.name, func(b *testing.B) {
			for b.Loop() {
				c.fn(dst, src)
			}
		})
	}
}

// A tensor large enough to be shared with the worker pool gets the same
// bits as on one goroutine, into another slice and in place, for every
// activation that is shared; sizes straddle the chunks.
func TestSharedActivationMatchesOneGoroutine(t *testing.T) {
	r := rand.New(rand.NewPCG(5, 6))
	for _, act := range []Activation{ActSigmoid, ActTanh, ActGELU, ActGELUTanh} {
		for _, n := range []int{act.sharedFrom(), act.sharedFrom() + 7, 3*actChunk + 1} {
			src := make([]float32, n)
			for i := range src {
				src[i] = float32(r.NormFloat64() * 4)
			}
			copy(src, specialInputs)
			want := make([]float32, n)
			act.apply(want, src)
			got := make([]float32, n)
			act.Apply(got, src)
			inPlace := slices.Clone(src)
			act.Apply(inPlace, inPlace)
			for i := range want {
				if math.Float32bits(got[i]) != math.Float32bits(want[i]) || math.Float32bits(inPlace[i]) != math.Float32bits(want[i]) {
					t.Fatalf("%v, %d elements: element %d is %#08x (in place %#08x), alone %#08x", act, n, i,
						math.Float32bits(got[i]), math.Float32bits(inPlace[i]), math.Float32bits(want[i]))
				}
			}
		}
	}
}
