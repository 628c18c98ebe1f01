package gemm

import "math"

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
func (a Activation) Apply(dst, src []float32) {
	dst = dst[:len(src)]
	switch a {
	case ActNone:
		copy(dst, src)
	case ActReLU:
		for i, v := range src {
			if v < 0 {
				v = 0
			}
			dst[i] = v
		}
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
