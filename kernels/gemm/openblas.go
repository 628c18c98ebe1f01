//go:build openblas && cgo

package gemm

import (
	"os"
	"runtime"
	"strconv"

	"github.com/esper/kasmina-host/kernels/gemm/internal/openblas"
)

// openblasEngine routes products to OpenBLAS's cblas_sgemm (row-major).
type openblasEngine struct{}

func (openblasEngine) name() string { return "openblas" }

// OpenBLAS's threads are C's: a fault there ends the process.
func (openblasEngine) faultsReachCaller() bool { return false }

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
	// Bias, product and ReLU in one cgo call (the bias rows start C and
	// OpenBLAS adds the product with beta = 1); other activations run here.
	relu := ep.Act == ActReLU
	openblas.Linear(m, n, k, a, lda, w, ldw, c, ldc, ep.Bias, relu)
	if ep.Act != ActNone && !relu {
		for i := range m {
			row := c[i*ldc : i*ldc+n]
			ep.Act.Apply(row, row)
		}
	}
}

// openblasThreadEnv lists the variables OpenBLAS reads, in its order, to
// size its thread pool when the library loads.
var openblasThreadEnv = []string{"OPENBLAS_NUM_THREADS", "GOTO_NUM_THREADS", "OMP_NUM_THREADS"}

// openblasThreads returns the thread count this process gives OpenBLAS:
// GOMAXPROCS, unless one of openblasThreadEnv holds a positive count, in
// which case the operator chose and ok is false (OpenBLAS already applied
// it). getenv is os.Getenv outside tests.
func openblasThreads(getenv func(string) string, gomaxprocs int) (n int, ok bool) {
	for _, v := range openblasThreadEnv {
		if c, err := strconv.Atoi(getenv(v)); err == nil && c > 0 {
			return 0, false
		}
	}
	return max(gomaxprocs, 1), true
}

// registerOpenBLAS makes OpenBLAS the default in builds tagged openblas.
//
// OpenBLAS sizes its pool by the CPUs in the affinity mask, which is not what
// the Go runtime schedules on when GOMAXPROCS is set or a cgroup CPU quota
// lowers it: on a 16-CPU node with a 2-CPU quota, 16 OpenBLAS threads would
// spin against 2 CPUs' worth of time. So the pool follows GOMAXPROCS once,
// here, unless the operator set OpenBLAS's own thread variables.
func registerOpenBLAS() {
	if n, ok := openblasThreads(os.Getenv, runtime.GOMAXPROCS(0)); ok {
		openblas.SetThreads(n)
	}
	engines = append([]engine{openblasEngine{}}, engines...)
}
