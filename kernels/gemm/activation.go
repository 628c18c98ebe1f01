package gemm

import (
	"math"
	"runtime"
)

// Apply computes dst[i] = a(src[i]) for every element of src, with
// PyTorch's semantics; dst must be at least as long as src and may be src
// itself.
//
// This is the one implementation of the activations: Linear's epilogue
// and the kernel executor's activation layers both call it. The only other
// place an activation is computed is ReLU fused into the micro-kernels
// (VMAXPS in the assembly, a comparison in the portable kernel and in the
// OpenBLAS route), which give the same results bit for bit: like PyTorch's
// relu they map x < 0 to +0 and keep NaN and -0 unchanged.
//
// Sigmoid, tanh and GELU are evaluated in float64 and rounded once, which
// keeps them within an ulp of PyTorch's float32 results.
//
// A large tensor is shared with the worker pool (as a large product is),
// in chunks of actChunk elements, from a size that depends on the
// activation's cost per element (sharedFrom); the results are the same.
func (a Activation) Apply(dst, src []float32) {
	dst = dst[:len(src)]
	if len(src) >= a.sharedFrom() && runtime.GOMAXPROCS(0) > 1 {
		applyShared(a, dst, src)
		return
	}
	a.apply(dst, src)
}

// actChunk is the elements of one task of a shared activation: 20 to
// 50 µs of work for the transcendental ones.
const actChunk = 2 << 10

// sharedFrom is the element count from which Apply shares the work with
// the pool: where it takes long enough to pay for waking the workers. The
// float64 transcendentals cost 10 to 25 ns per element, and two
// goroutines nearly halve a 64K-element GELU (BenchmarkSharedActivation:
// 1.0 ms against 1.8 ms alone on two cores). ReLU and the identity are
// bound by memory: on the same machine a shared 1M-element ReLU took
// 120 µs against 86 µs alone, and at 4M elements sharing gained nothing.
func (a Activation) sharedFrom() int {
	switch a {
	case ActNone, ActReLU:
		return math.MaxInt
	default:
		return 2 * actChunk
	}
}

// applyShared computes a over dst and src with the calling goroutine and
// the idle workers, actChunk elements a task.
func applyShared(a Activation, dst, src []float32) {
	j := getJob()
	j.act, j.actDst, j.actSrc = a, dst, src
	j.total = int64(ceilDiv(len(src), actChunk))
	j.next.Store(0)
	j.runShared(min(runtime.GOMAXPROCS(0), int(j.total)) - 1)
	j.actDst, j.actSrc = nil, nil // drop references to the caller's slices
	putJob(j)
}

// apply is Apply on the calling goroutine.
func (a Activation) apply(dst, src []float32) {
	switch a {
	case ActNone:
		copy(dst, src)
	case ActReLU:
		relu(dst, src)
	case ActSigmoid:
		for i, v := range src {
			dst[i] = float32(1 / (1 + math.Exp(-float64(v))))
		}
	case ActTanh:
		for i, v := range src {
			dst[i] = float32(math.Tanh(float64(v)))
		}
	case ActGELU:
		for i, v := range src {
			f := float64(v)
			dst[i] = float32(0.5 * f * (1 + math.Erf(f/math.Sqrt2)))
		}
	case ActGELUTanh:
		const c = 0.7978845608028654 // sqrt(2/pi)
		for i, v := range src {
			f := float64(v)
			dst[i] = float32(0.5 * f * (1 + math.Tanh(c*(f+0.044715*f*f*f))))
		}
	}
}

// relu computes dst[i] = src[i] < 0 ? +0 : src[i]: with AVX2 eight at a
// time (reluVec), the rest with reluScalar.
func relu(dst, src []float32) {
	dst = dst[:len(src)]
	n := reluVec(dst, src)
	reluScalar(dst[n:], src[n:])
}

// reluScalar is relu without a branch on the sign: on activations whose
// signs are random (what a ReLU usually sees), a comparison and a jump
// per element mispredict half the time and cost four times the work. An
// element is negative exactly when its sign bit is set and its magnitude
// bits are in (0, +Inf]: -0 and NaNs are kept, as by PyTorch and the
// micro-kernels' VMAXPS.
func reluScalar(dst, src []float32) {
	dst = dst[:len(src)]
	for i, v := range src {
		b := math.Float32bits(v)
		// neg is all ones when v < 0; the condition compiles to a flag,
		// not a jump.
		var neg uint32
		if (b&0x7fffffff)-1 < 0x7f800000 {
			neg = uint32(int32(b) >> 31)
		}
		dst[i] = math.Float32frombits(b &^ neg)
	}
}

// BackwardFromInput reports whether Backward needs the activation's input
// (the GELUs) rather than its output (ReLU, sigmoid, tanh).
func (a Activation) BackwardFromInput() bool { return a == ActGELU || a == ActGELUTanh }

// Backward computes the vector-Jacobian product dx[i] = dy[i]·a'(x[i])
// from saved, which is the activation's output y = a(x) for ReLU, sigmoid
// and tanh and its input x for the GELUs (see BackwardFromInput), the
// tensors PyTorch's backward formulas read:
//
//	relu      dy where y > 0, else 0 (threshold_backward: NaN passes dy)
//	sigmoid   dy·y·(1 − y)
//	tanh      dy·(1 − y²)
//	gelu      dy·(Φ(x) + x·φ(x))
//	gelu_tanh dy·(½(1 + t) + ½x·(1 − t²)·√(2/π)·(1 + 3·0.044715·x²)),
//	          t = tanh(√(2/π)·(x + 0.044715·x³))
//
// evaluated in float64 and rounded once. dx may be dy; all three have the
// length of dy.
func (a Activation) Backward(dx, dy, saved []float32) {
	dx, saved = dx[:len(dy)], saved[:len(dy)]
	switch a {
	case ActNone:
		copy(dx, dy)
	case ActReLU:
		for i, g := range dy {
			if saved[i] <= 0 {
				g = 0
			}
			dx[i] = g
		}
	case ActSigmoid:
		for i, g := range dy {
			y := float64(saved[i])
			dx[i] = float32(float64(g) * y * (1 - y))
		}
	case ActTanh:
		for i, g := range dy {
			y := float64(saved[i])
			dx[i] = float32(float64(g) * (1 - y*y))
		}
	case ActGELU:
		const invSqrt2Pi = 0.3989422804014327 // 1/√(2π)
		for i, g := range dy {
			x := float64(saved[i])
			cdf := 0.5 * (1 + math.Erf(x/math.Sqrt2))
			pdf := invSqrt2Pi * math.Exp(-0.5*x*x)
			dx[i] = float32(float64(g) * (cdf + x*pdf))
		}
	case ActGELUTanh:
		const c, k = 0.7978845608028654, 0.044715 // √(2/π)
		for i, g := range dy {
			x := float64(saved[i])
			t := math.Tanh(c * (x + k*x*x*x))
			d := 0.5*(1+t) + 0.5*x*(1-t*t)*c*(1+3*k*x*x)
			dx[i] = float32(float64(g) * d)
		}
	}
}
