//go:build openblas && cgo

package gemm

import (
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"runtime"
	"strings"
	"testing"

	"github.com/esper/kasmina-host/kernels/gemm/internal/openblas"
)

func TestOpenBLASThreadsFollowGOMAXPROCSUnlessEnvSet(t *testing.T) {
	tests := []struct {
		name   string
		env    map[string]string
		procs  int
		want   int
		wantOK bool
	}{
		{"nothing set follows GOMAXPROCS", nil, 2, 2, true},
		{"GOMAXPROCS 1 gives one thread", nil, 1, 1, true},
		{"OPENBLAS_NUM_THREADS wins", map[string]string{"OPENBLAS_NUM_THREADS": "4"}, 2, 0, false},
		{"GOTO_NUM_THREADS wins", map[string]string{"GOTO_NUM_THREADS": "1"}, 8, 0, false},
		{"OMP_NUM_THREADS wins", map[string]string{"OMP_NUM_THREADS": "3"}, 8, 0, false},
		{"zero is not a choice", map[string]string{"OPENBLAS_NUM_THREADS": "0"}, 4, 4, true},
		{"garbage is not a choice", map[string]string{"OPENBLAS_NUM_THREADS": "many"}, 4, 4, true},
		{"negative GOMAXPROCS clamps to one", nil, 0, 1, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, ok := openblasThreads(func(k string) string { return tc.env[k] }, tc.procs)
			if got != tc.want || ok != tc.wantOK {
				t.Fatalf("openblasThreads = (%d, %v), want (%d, %v)", got, ok, tc.want, tc.wantOK)
			}
		})
	}
}

// TestOpenBLASSetup logs what OpenBLAS runs with in this process (kernel
// family, build, threads, the OPENBLAS_* environment) so that benchmark logs
// show it, and checks that init sized the pool to GOMAXPROCS.
func TestOpenBLASSetup(t *testing.T) {
	var env []string
	for _, kv := range os.Environ() {
		if strings.HasPrefix(kv, "OPENBLAS_") || strings.HasPrefix(kv, "GOTO_") || strings.HasPrefix(kv, "OMP_") {
			env = append(env, kv)
		}
	}
	t.Logf("openblas: core=%s threads=%d gomaxprocs=%d config=%q env=%v",
		openblas.CoreName(), openblas.Threads(), runtime.GOMAXPROCS(0), openblas.Config(), env)
	if openblas.CoreName() == "" || openblas.Config() == "" {
		t.Fatal("OpenBLAS reports no core name or config")
	}
	if Implementation() != "openblas" && os.Getenv(EnvVar) == "" {
		t.Fatalf("Implementation() = %q, want openblas in the openblas build", Implementation())
	}
	want, ok := openblasThreads(os.Getenv, runtime.GOMAXPROCS(0))
	if !ok {
		t.Skip("OpenBLAS thread count chosen by the environment")
	}
	if got := openblas.Threads(); got != want {
		t.Fatalf("OpenBLAS threads = %d, want GOMAXPROCS = %d", got, want)
	}
}

// BenchmarkOpenBLASThreads times linear 512→512 at batch 32 (bias, ReLU)
// through OpenBLAS with 1 thread and with GOMAXPROCS threads, to show what
// the pool size does on this machine.
func BenchmarkOpenBLASThreads(b *testing.B) {
	prev := openblas.Threads()
	defer openblas.SetThreads(prev)
	def := Implementation()
	defer func() { _ = Use(def) }()
	if err := Use("openblas"); err != nil {
		b.Fatal(err)
	}
	const m, n, k = 32, 512, 512
	r := rand.New(rand.NewPCG(1, 1))
	a, w, c := randSlice(r, m*k), randSlice(r, n*k), make([]float32, m*n)
	ep := Epilogue{Bias: randSlice(r, n), Act: ActReLU}
	for _, threads := range []int{1, runtime.GOMAXPROCS(0)} {
		b.Run(fmt.Sprintf("threads=%d", threads), func(b *testing.B) {
			openblas.SetThreads(threads)
			Linear(m, n, k, a, k, w, k, c, n, ep)
			for b.Loop() {
				Linear(m, n, k, a, k, w, k, c, n, ep)
			}
			b.ReportMetric(2*m*n*k*float64(b.N)/b.Elapsed().Seconds()/1e9, "GFLOP/s")
		})
	}
}

// TestOpenBLASLinearMatchesPortableAndLeavesRowPaddingAlone checks the
// one-call bias + sgemm + ReLU path against the portable engine on strided
// output rows, with negative zeros and NaN among the inputs.
func TestOpenBLASLinearMatchesPortableAndLeavesRowPaddingAlone(t *testing.T) {
	def := Implementation()
	defer func() { _ = Use(def) }()
	const m, n, k, ldc, sentinel = 5, 7, 9, 10, float32(42)
	r := rand.New(rand.NewPCG(3, 4))
	a, w, bias := randSlice(r, m*k), randSlice(r, n*k), randSlice(r, n)
	a[2*k+1] = float32(math.NaN())
	bias[0] = float32(math.Copysign(0, -1))
	for _, act := range []Activation{ActNone, ActReLU, ActTanh} {
		for _, withBias := range []bool{false, true} {
			t.Run(fmt.Sprintf("act=%d/bias=%v", act, withBias), func(t *testing.T) {
				ep := Epilogue{Act: act}
				if withBias {
					ep.Bias = bias
				}
				got, want := make([]float32, m*ldc), make([]float32, m*ldc)
				for i := range got {
					got[i], want[i] = sentinel, sentinel
				}
				for impl, c := range map[string][]float32{"openblas": got, "portable": want} {
					if err := Use(impl); err != nil {
						t.Fatal(err)
					}
					Linear(m, n, k, a, k, w, k, c, ldc, ep)
				}
				for i := range m {
					for j := range ldc {
						g, x := got[i*ldc+j], want[i*ldc+j]
						switch {
						case j >= n && g != sentinel:
							t.Fatalf("row %d padding [%d] = %g, want untouched %g", i, j, g, sentinel)
						case (g != g) != (x != x):
							t.Fatalf("c[%d,%d] = %g, portable %g (NaN must match)", i, j, g, x)
						case g == g && math.Abs(float64(g-x)) > 1e-4*(1+math.Abs(float64(x))):
							t.Fatalf("c[%d,%d] = %g, portable %g", i, j, g, x)
						case g == 0 && x == 0 && math.Signbit(float64(g)) != math.Signbit(float64(x)):
							t.Fatalf("c[%d,%d] = %g, portable %g (the sign of zero must match)", i, j, g, x)
						}
					}
				}
			})
		}
	}
}
