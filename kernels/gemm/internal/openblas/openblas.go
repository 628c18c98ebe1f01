//go:build openblas && cgo

// Package openblas calls OpenBLAS's cblas_sgemm through cgo. It lives apart
// from package gemm because a cgo package cannot hold Go assembly.
package openblas

/*
#cgo CFLAGS: -O3
#cgo LDFLAGS: -lopenblas
#include <string.h>
#include <cblas.h>

// kh_linear computes c = a · wᵀ (+ bias broadcast over rows) and, when relu
// is set, PyTorch's relu (x < 0 becomes +0; NaN and -0 are kept, as
// gemm.Activation.Apply does), in one call across the cgo boundary. The
// ReLU loop is branch-free so that the compiler vectorizes it.
static void kh_linear(int m, int n, int k, const float *a, int lda, const float *w, int ldw,
		float *c, int ldc, const float *bias, int relu) {
	float beta = 0.0f;
	if (bias) {
		for (int i = 0; i < m; i++) memcpy(c + (size_t)i * ldc, bias, (size_t)n * sizeof(float));
		beta = 1.0f;
	}
	cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, m, n, k, 1.0f, a, lda, w, ldw, beta, c, ldc);
	if (relu) {
		for (int i = 0; i < m; i++) {
			float *r = c + (size_t)i * ldc;
			for (int j = 0; j < n; j++) {
				float v = r[j];
				r[j] = v < 0.0f ? 0.0f : v;
			}
		}
	}
}
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

// Linear computes c[m, n] = a[m, k] · w[n, k]ᵀ, adding bias (length n, or
// empty for none) to every row and then, when relu is set, ReLU (NaN and -0
// kept, as PyTorch does), all in one cgo call. Arguments already validated by the
// caller; k > 0.
func Linear(m, n, k int, a []float32, lda int, w []float32, ldw int, c []float32, ldc int, bias []float32, relu bool) {
	r := C.int(0)
	if relu {
		r = 1
	}
	C.kh_linear(C.int(m), C.int(n), C.int(k), ptr(a), C.int(lda), ptr(w), C.int(ldw), ptr(c), C.int(ldc), ptr(bias), r)
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
