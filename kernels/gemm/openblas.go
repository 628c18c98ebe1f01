//go:build openblas && cgo

package gemm

import "github.com/esper/kasmina-host/kernels/gemm/internal/openblas"

// openblasEngine routes products to OpenBLAS's cblas_sgemm (row-major).
type openblasEngine struct{}

func (openblasEngine) name() string { return "openblas" }

func (openblasEngine) sgemm(transA, transB bool, m, n, k int, alpha float32, a []float32, lda int, b []float32, ldb int, beta float32, c []float32, ldc int) {
	if alpha == 0 || k == 0 {
		scaleC(m, n, beta, c, ldc) // BLAS would too; this keeps beta = 0 clearing NaNs
		return
	}
	openblas.Sgemm(transA, transB, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc)
}

func (e openblasEngine) linear(m, n, k int, a []float32, lda int, w []float32, ldw int, c []float32, ldc int, ep Epilogue) {
	if k == 0 {
		linearNoK(m, n, c, ldc, ep)
		return
	}
	beta := float32(0)
	if ep.Bias != nil {
		// Start from the bias rows so that OpenBLAS adds the product to them.
		for i := range m {
			copy(c[i*ldc:i*ldc+n], ep.Bias[:n])
		}
		beta = 1
	}
	e.sgemm(false, true, m, n, k, 1, a, lda, w, ldw, beta, c, ldc)
	if ep.Act != ActNone {
		for i := range m {
			activate(ep.Act, c[i*ldc:i*ldc+n])
		}
	}
}

// registerOpenBLAS makes OpenBLAS the default in builds tagged openblas.
func registerOpenBLAS() { engines = append([]engine{openblasEngine{}}, engines...) }
