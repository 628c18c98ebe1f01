package tolerance

import (
	"math"
	"testing"
)

func TestRelErr(t *testing.T) {
	nan := float32(math.NaN())
	for _, c := range []struct {
		name string
		got  []float32
		want []float64
		rel  float64
	}{
		{"equal", []float32{1, 2, 3}, []float64{1, 2, 3}, 0},
		{"relative", []float32{3, 0}, []float64{3, 4}, 0.8}, // ‖(0,-4)‖ / ‖(3,4)‖
		{"zero reference: absolute", []float32{3, 4}, []float64{0, 0}, 5},
		{"lengths differ", []float32{1}, []float64{1, 2}, math.Inf(1)},
		{"NaN", []float32{nan}, []float64{1}, math.NaN()},
	} {
		t.Run(c.name, func(t *testing.T) {
			got := RelErr(c.got, c.want)
			if math.IsNaN(c.rel) {
				if !math.IsNaN(got) {
					t.Fatalf("RelErr = %v, want NaN", got)
				}
				return
			}
			if math.Abs(got-c.rel) > 1e-12 && got != c.rel {
				t.Fatalf("RelErr = %v, want %v", got, c.rel)
			}
		})
	}
}
