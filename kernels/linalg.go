package kernels

import "github.com/esper/kasmina-host/kernels/gemm"

// Every matrix product of the executor goes through kernels/gemm, so the
// build's GEMM choice (portable Go, assembly, or OpenBLAS with -tags
// openblas; KASMINA_GEMM at run time) serves linear and convolution alike.

// linearForward computes c[m, n] = act(a[m, k] · w[n, k]ᵀ + bias).
func linearForward(m, n, k int, a, w, bias []float32, act gemm.Activation, c []float32) {
	gemm.Linear(m, n, k, a, k, w, k, c, n, gemm.Epilogue{Bias: bias, Act: act})
}

// matmulNN computes c[m, n] = a[m, k] · b[k, n].
func matmulNN(m, n, k int, a, b, c []float32) {
	gemm.Sgemm(false, false, m, n, k, 1, a, k, b, n, 0, c, n)
}

// GEMMImplementation names the GEMM implementation in use (for reports).
func GEMMImplementation() string { return gemm.Implementation() }
