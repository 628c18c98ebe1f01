// Package tolerance measures how far a float32 result lies from a float64
// reference, the one way the project's golden, gradient and layer tests
// compare the host's numbers with PyTorch's.
package tolerance

import "math"

// RelErr is ‖got − want‖₂ / ‖want‖₂, the absolute norm ‖got − want‖₂ when
// want is all zeros. It is +Inf when the lengths differ and NaN when got
// holds a NaN, so that a comparison `RelErr(...) <= tol` fails on both.
func RelErr(got []float32, want []float64) float64 {
	if len(got) != len(want) {
		return math.Inf(1)
	}
	var num, den float64
	for i, v := range got {
		d := float64(v) - want[i]
		num += d * d
		den += want[i] * want[i]
	}
	if den == 0 {
		return math.Sqrt(num)
	}
	return math.Sqrt(num / den)
}
