//go:build openblas && cgo

// Package openblas calls OpenBLAS's cblas_sgemm through cgo. It lives apart
// from package gemm because a cgo package cannot hold Go assembly.
package openblas

/*
#cgo LDFLAGS: -lopenblas
#include <cblas.h>
*/
import "C"

// ptr returns a C pointer to s[0], or nil for an empty slice.
func ptr(s []float32) *C.float {
	if len(s) == 0 {
		return nil
	}
	return (*C.float)(&s[0])
}

func trans(t bool) C.enum_CBLAS_TRANSPOSE {
	if t {
		return C.CblasTrans
	}
	return C.CblasNoTrans
}

// Sgemm is cblas_sgemm in row-major order; arguments as gemm.Sgemm, already
// validated by the caller.
func Sgemm(transA, transB bool, m, n, k int, alpha float32, a []float32, lda int, b []float32, ldb int, beta float32, c []float32, ldc int) {
	C.cblas_sgemm(C.CblasRowMajor, trans(transA), trans(transB), C.blasint(m), C.blasint(n), C.blasint(k),
		C.float(alpha), ptr(a), C.blasint(lda), ptr(b), C.blasint(ldb), C.float(beta), ptr(c), C.blasint(ldc))
}

// SetThreads sets how many threads OpenBLAS uses for later calls (its
// openblas_set_num_threads). n < 1 is treated as 1. It is meant for start-up:
// OpenBLAS resizes its thread pool, so it should not race with running calls.
func SetThreads(n int) {
	if n < 1 {
		n = 1
	}
	C.openblas_set_num_threads(C.int(n))
}

// Threads reports how many threads OpenBLAS uses (openblas_get_num_threads).
func Threads() int { return int(C.openblas_get_num_threads()) }

// CoreName reports the kernel family OpenBLAS picked for this CPU, for
// example "Haswell", "Zen" or "SkylakeX" (openblas_get_corename). It follows
// OPENBLAS_CORETYPE when that is set.
func CoreName() string { return C.GoString(C.openblas_get_corename()) }

// Config reports OpenBLAS's build description (openblas_get_config), for
// example "OpenBLAS 0.3.21 NO_LAPACKE DYNAMIC_ARCH NO_AFFINITY Zen MAX_THREADS=64".
func Config() string { return C.GoString(C.openblas_get_config()) }
