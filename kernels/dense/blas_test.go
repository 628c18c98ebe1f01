package dense

import (
	"math"
	"math/rand/v2"
	"testing"

	"gonum.org/v1/gonum/blas/gonum"
	"gorgonia.org/tensor"
)

func TestBLASServesGorgoniaMatMul(t *testing.T) {
	tensor.Use(BLAS{})
	defer tensor.Use(gonum.Implementation{})
	if tensor.WhichBLAS() != (BLAS{}) {
		t.Fatalf("tensor uses %T", tensor.WhichBLAS())
	}
	r := rand.New(rand.NewPCG(9, 10))
	m, k, n := 17, 33, 9
	av, bv := randSlice(r, m*k), randSlice(r, k*n)
	a := tensor.New(tensor.WithShape(m, k), tensor.WithBacking(av))
	b := tensor.New(tensor.WithShape(k, n), tensor.WithBacking(bv))
	got, err := tensor.MatMul(a, b)
	if err != nil {
		t.Fatal(err)
	}
	c := got.Data().([]float32)
	for i := range m {
		for j := range n {
			var want, mag float64
			for p := range k {
				x := float64(av[i*k+p]) * float64(bv[p*n+j])
				want += x
				mag += math.Abs(x)
			}
			if d := math.Abs(float64(c[i*n+j]) - want); !(d <= 1e-6*(mag+1)) {
				t.Fatalf("C[%d][%d] = %g, want %g", i, j, c[i*n+j], want)
			}
		}
	}
}

func randSlice(r *rand.Rand, n int) []float32 {
	s := make([]float32, n)
	for i := range s {
		s[i] = float32(r.NormFloat64())
	}
	return s
}
