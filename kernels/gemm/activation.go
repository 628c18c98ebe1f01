package gemm

import "math"

// activate applies act to x in place. ActNone and ActReLU are handled here
// too so that every engine can use it.
func activate(act Activation, x []float32) {
	switch act {
	case ActReLU:
		for i, v := range x {
			if !(v > 0) && v == v { // keep NaN as PyTorch does
				x[i] = 0
			}
		}
	case ActSigmoid:
		for i, v := range x {
			x[i] = float32(1 / (1 + math.Exp(-float64(v))))
		}
	case ActTanh:
		for i, v := range x {
			x[i] = float32(math.Tanh(float64(v)))
		}
	case ActGELU:
		for i, v := range x {
			f := float64(v)
			x[i] = float32(0.5 * f * (1 + math.Erf(f/math.Sqrt2)))
		}
	case ActGELUTanh:
		const c = 0.7978845608028654 // sqrt(2/pi)
		for i, v := range x {
			f := float64(v)
			x[i] = float32(0.5 * f * (1 + math.Tanh(c*(f+0.044715*f*f*f))))
		}
	}
}
