package gemm

import (
	"math/rand/v2"
	"testing"

	"gonum.org/v1/gonum/blas/gonum"
	"gorgonia.org/tensor"
)

func TestTensorBLASServesGorgoniaMatMul(t *testing.T) {
	tensor.Use(TensorBLAS())
	defer tensor.Use(gonum.Implementation{})
	r := rand.New(rand.NewPCG(9, 10))
	m, k, n := 17, 33, 9
	av, bv := randSlice(r, m*k), randSlice(r, k*n)
	a := tensor.New(tensor.WithShape(m, k), tensor.WithBacking(av))
	b := tensor.New(tensor.WithShape(k, n), tensor.WithBacking(bv))
	got, err := tensor.MatMul(a, b)
	if err != nil {
		t.Fatal(err)
	}
	want, mag := refSgemm(false, false, m, n, k, 1, av, k, bv, n, 0, nil, n)
	checkClose(t, m, n, k, got.Data().([]float32), n, want, mag)
	if tensor.WhichBLAS() != (BLAS{}) {
		t.Fatalf("tensor uses %T", tensor.WhichBLAS())
	}
}
