package dense

import (
	"github.com/esper/kasmina-host/kernels/gemm"
	"gonum.org/v1/gonum/blas"
	"gonum.org/v1/gonum/blas/gonum"
)

// BLAS is gonum's BLAS (the interface gorgonia.org/tensor takes through
// tensor.Use) with Sgemm routed to kernels/gemm and everything else served
// by gonum's native Go implementation:
//
//	tensor.Use(dense.BLAS{})
type BLAS struct {
	gonum.Implementation
}

// Sgemm implements blas.Float32Level3 with gemm.Sgemm (whatever
// gemm.Implementation reports). Conjugate transposes are plain transposes
// for real matrices.
func (BLAS) Sgemm(tA, tB blas.Transpose, m, n, k int, alpha float32, a []float32, lda int, b []float32, ldb int, beta float32, c []float32, ldc int) {
	gemm.Sgemm(tA != blas.NoTrans, tB != blas.NoTrans, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc)
}

var _ blas.Float32 = BLAS{}
var _ blas.Float64 = BLAS{}
