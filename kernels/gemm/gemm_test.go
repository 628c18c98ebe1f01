package gemm

import (
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"testing"
)

// forEachImpl runs f once per implementation available in this build and on
// this CPU, restoring the default afterwards. An implementation with a
// packed path for large products runs f a second time ("NAME-packed") with
// that path taking every product, however small.
func forEachImpl(t *testing.T, f func(t *testing.T)) {
	t.Helper()
	def := Implementation()
	defer func() {
		if err := Use(def); err != nil {
			t.Fatal(err)
		}
	}()
	for _, name := range Implementations() {
		if err := Use(name); err != nil {
			t.Fatal(err)
		}
		t.Run(name, f)
		if e, ok := current().(*native); ok && e.pk != nil {
			from := e.pkMin
			e.pkMin = 1
			t.Run(name+"-packed", f)
			e.pkMin = from
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

// refSgemm is the float64 reference of Sgemm; it also returns, per output,
// the sum of absolute products used to scale the tolerance.
func refSgemm(transA, transB bool, m, n, k int, alpha float32, a []float32, lda int, b []float32, ldb int, beta float32, c []float32, ldc int) (want, mag []float64) {
	want = make([]float64, m*n)
	mag = make([]float64, m*n)
	for i := range m {
		for j := range n {
			var s, abs float64
			for p := range k {
				var av, bv float32
				if transA {
					av = a[p*lda+i]
				} else {
					av = a[i*lda+p]
				}
				if transB {
					bv = b[j*ldb+p]
				} else {
					bv = b[p*ldb+j]
				}
				s += float64(av) * float64(bv)
				abs += math.Abs(float64(av) * float64(bv))
			}
			v := float64(alpha) * s
			abs = math.Abs(float64(alpha)) * abs
			if beta != 0 {
				v += float64(beta) * float64(c[i*ldc+j])
				abs += math.Abs(float64(beta) * float64(c[i*ldc+j]))
			}
			want[i*n+j] = v
			mag[i*n+j] = abs
		}
	}
	return want, mag
}

// checkClose compares C with the reference; float32 accumulation over k
// terms errs by about k·eps relative to the sum of magnitudes.
func checkClose(t *testing.T, m, n, k int, c []float32, ldc int, want, mag []float64) {
	t.Helper()
	tol := 4 * float64(k+2) * 6e-8
	bad := 0
	for i := range m {
		for j := range n {
			got := float64(c[i*ldc+j])
			w := want[i*n+j]
			if math.Abs(got-w) > tol*(mag[i*n+j]+1e-30)+1e-6 || math.IsNaN(got) {
				if bad < 5 {
					t.Errorf("C[%d][%d] = %g, want %g (±%g)", i, j, got, w, tol*mag[i*n+j])
				}
				bad++
			}
		}
	}
	if bad > 0 {
		t.Errorf("%d of %d outputs wrong", bad, m*n)
	}
}

type gemmCase struct {
	transA, transB bool
	m, n, k        int
	alpha, beta    float32
	pad            int // extra stride on every operand
}

func (g gemmCase) String() string {
	return fmt.Sprintf("tA=%v,tB=%v,%dx%dx%d,alpha=%g,beta=%g,pad=%d", g.transA, g.transB, g.m, g.n, g.k, g.alpha, g.beta, g.pad)
}

func runGemmCase(t *testing.T, r *rand.Rand, g gemmCase) {
	t.Helper()
	ar, ac := g.m, g.k
	if g.transA {
		ar, ac = g.k, g.m
	}
	br, bc := g.k, g.n
	if g.transB {
		br, bc = g.n, g.k
	}
	lda, ldb, ldc := ac+g.pad, bc+g.pad, g.n+g.pad
	a := randSlice(r, max(ar*lda-g.pad, 0))
	b := randSlice(r, max(br*ldb-g.pad, 0))
	c := randSlice(r, max(g.m*ldc-g.pad, 0))
	if g.beta == 0 {
		for i := range c {
			c[i] = float32(math.NaN()) // must not be read
		}
	}
	want, mag := refSgemm(g.transA, g.transB, g.m, g.n, g.k, g.alpha, a, lda, b, ldb, g.beta, c, ldc)
	// Padding between rows must survive.
	padBefore := append([]float32(nil), c...)
	Sgemm(g.transA, g.transB, g.m, g.n, g.k, g.alpha, a, lda, b, ldb, g.beta, c, ldc)
	checkClose(t, g.m, g.n, g.k, c, ldc, want, mag)
	for i := 0; i+1 < g.m; i++ {
		for j := g.n; j < ldc; j++ {
			if x, y := c[i*ldc+j], padBefore[i*ldc+j]; x != y && !(x != x && y != y) {
				t.Fatalf("padding C[%d][%d] changed from %g to %g", i, j, y, x)
			}
		}
	}
}

func TestSgemmMatchesFloat64ReferenceOnAwkwardShapes(t *testing.T) {
	sizes := []int{1, 7, 17, 63, 65, 255}
	var cases []gemmCase
	for _, m := range sizes {
		for _, n := range sizes {
			for _, k := range []int{1, 7, 17, 65, 255} {
				if m*n*k > 1<<20 || (raceEnabled && m*n*k > 1<<15) {
					continue
				}
				cases = append(cases, gemmCase{transB: true, m: m, n: n, k: k, alpha: 1})
			}
		}
	}
	// The 1023 case in each dimension, once each (not under -race: slow).
	big := []gemmCase{
		{transB: true, m: 1023, n: 17, k: 65, alpha: 1},
		{transB: true, m: 7, n: 1023, k: 63, alpha: 1},
		{transB: true, m: 17, n: 7, k: 1023, alpha: 1},
		{m: 65, n: 63, k: 1023, alpha: 1},
		{transB: true, m: 63, n: 65, k: 2049, alpha: 1, beta: 1}, // two k blocks, tail
	}
	if !raceEnabled {
		cases = append(cases, big...)
	}
	// Every transpose combination with general alpha/beta and padded strides.
	for _, ta := range []bool{false, true} {
		for _, tb := range []bool{false, true} {
			for _, ab := range [][2]float32{{1, 0}, {1, 1}, {-0.5, 0.25}, {2, -1}} {
				cases = append(cases,
					gemmCase{transA: ta, transB: tb, m: 17, n: 63, k: 65, alpha: ab[0], beta: ab[1], pad: 3},
					gemmCase{transA: ta, transB: tb, m: 65, n: 7, k: 255, alpha: ab[0], beta: ab[1]},
					gemmCase{transA: ta, transB: tb, m: 1, n: 1, k: 1, alpha: ab[0], beta: ab[1], pad: 1},
				)
			}
		}
	}
	forEachImpl(t, func(t *testing.T) {
		r := rand.New(rand.NewPCG(1, 2))
		for _, g := range cases {
			t.Run(g.String(), func(t *testing.T) { runGemmCase(t, r, g) })
		}
	})
}

func TestSgemmLargeParallelProductMatchesReference(t *testing.T) {
	forEachImpl(t, func(t *testing.T) {
		r := rand.New(rand.NewPCG(3, 4))
		for _, g := range []gemmCase{
			{transB: true, m: 200, n: 301, k: 130, alpha: 1},
			{m: 130, n: 257, k: 99, alpha: 0.5, beta: 2},
		} {
			t.Run(g.String(), func(t *testing.T) { runGemmCase(t, r, g) })
		}
	})
}

func TestSgemmAlphaZeroOrKZeroScalesCOnly(t *testing.T) {
	forEachImpl(t, func(t *testing.T) {
		nan := float32(math.NaN())
		a := []float32{nan, nan, nan, nan}
		c := []float32{1, 2, 3, 4}
		Sgemm(false, false, 2, 2, 2, 0, a, 2, a, 2, 3, c, 2)
		for i, want := range []float32{3, 6, 9, 12} {
			if c[i] != want {
				t.Fatalf("alpha=0: c[%d] = %g, want %g", i, c[i], want)
			}
		}
		c = []float32{nan, 2, 3, nan}
		Sgemm(false, true, 2, 2, 0, 1, nil, 1, nil, 1, 0, c, 2)
		for i := range c {
			if c[i] != 0 {
				t.Fatalf("k=0, beta=0: c[%d] = %g, want 0", i, c[i])
			}
		}
	})
}

func refActivation(act Activation, x float64) float64 {
	switch act {
	case ActReLU:
		return math.Max(x, 0)
	case ActSigmoid:
		return 1 / (1 + math.Exp(-x))
	case ActTanh:
		return math.Tanh(x)
	case ActGELU:
		return 0.5 * x * (1 + math.Erf(x/math.Sqrt2))
	case ActGELUTanh:
		return 0.5 * x * (1 + math.Tanh(math.Sqrt(2/math.Pi)*(x+0.044715*x*x*x)))
	}
	return x
}

func TestLinearAppliesBiasAndActivation(t *testing.T) {
	shapes := [][3]int{{1, 64, 64}, {1, 1, 1}, {7, 17, 63}, {32, 65, 255}, {33, 130, 2050}, {5, 9, 0}}
	if raceEnabled {
		shapes = [][3]int{{1, 64, 64}, {1, 1, 1}, {7, 17, 63}, {5, 9, 1030}, {5, 9, 0}}
	}
	acts := []Activation{ActNone, ActReLU, ActSigmoid, ActTanh, ActGELU, ActGELUTanh}
	forEachImpl(t, func(t *testing.T) {
		r := rand.New(rand.NewPCG(5, 6))
		for _, s := range shapes {
			for _, act := range acts {
				for _, withBias := range []bool{false, true} {
					m, n, k := s[0], s[1], s[2]
					t.Run(fmt.Sprintf("%dx%dx%d/%v/bias=%v", m, n, k, act, withBias), func(t *testing.T) {
						a := randSlice(r, m*k)
						w := randSlice(r, n*k)
						var bias []float32
						if withBias {
							bias = randSlice(r, n)
						}
						c := make([]float32, m*n)
						for i := range c {
							c[i] = float32(math.NaN())
						}
						ld := max(k, 1)
						want, mag := refSgemm(false, true, m, n, k, 1, a, ld, w, ld, 0, nil, n)
						Linear(m, n, k, a, ld, w, ld, c, n, Epilogue{Bias: bias, Act: act})
						tol := 4 * float64(k+2) * 6e-8
						for i := range m {
							for j := range n {
								pre := want[i*n+j]
								if bias != nil {
									pre += float64(bias[j])
								}
								w := refActivation(act, pre)
								// Activations have slope ≤ ~1.13.
								if d := math.Abs(float64(c[i*n+j]) - w); d > 1.2*tol*(mag[i*n+j]+1)+1e-6 || math.IsNaN(d) {
									t.Fatalf("c[%d][%d] = %g, want %g", i, j, c[i*n+j], w)
								}
							}
						}
					})
				}
			}
		}
	})
}

func TestLinearReLUKeepsNaN(t *testing.T) {
	forEachImpl(t, func(t *testing.T) {
		k := 16
		a := make([]float32, k)
		a[3] = float32(math.NaN())
		w := make([]float32, 4*k)
		c := make([]float32, 4)
		Linear(1, 4, k, a, k, w, k, c, 4, Epilogue{Act: ActReLU})
		for j, v := range c {
			if v == v {
				t.Fatalf("c[%d] = %g, want NaN as PyTorch's relu gives", j, v)
			}
		}
	})
}

func TestValidateNamesTheBadField(t *testing.T) {
	for _, tc := range []struct {
		name  string
		err   error
		field string
	}{
		{"negative m", Validate(false, false, -1, 1, 1, 1, 1, 1, 1, 1, 1), "m = -1"},
		{"short a", Validate(false, false, 2, 2, 2, 3, 2, 4, 2, 4, 2), "len(a) = 3"},
		{"lda too small", Validate(false, false, 2, 2, 3, 6, 2, 6, 2, 4, 2), "lda = 2"},
		{"transposed b stride", Validate(false, true, 2, 4, 3, 6, 3, 12, 2, 8, 4), "ldb = 2"},
		{"short c", Validate(false, false, 2, 2, 2, 4, 2, 4, 2, 3, 2), "len(c) = 3"},
		{"short bias", ValidateLinear(1, 4, 1, 1, 1, 4, 1, 4, 4, Epilogue{Bias: make([]float32, 3)}), "len(bias) = 3"},
		{"unknown activation", ValidateLinear(1, 1, 1, 1, 1, 1, 1, 1, 1, Epilogue{Act: 99}), "activation 99"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if !errors.Is(tc.err, ErrBadArgument) {
				t.Fatalf("err = %v, want ErrBadArgument", tc.err)
			}
			if got := tc.err.Error(); !contains(got, tc.field) {
				t.Fatalf("err = %q, want it to name %q", got, tc.field)
			}
		})
	}
	if err := Validate(true, false, 3, 2, 0, 0, 3, 0, 2, 6, 2); err != nil {
		t.Fatalf("k = 0 with empty a and b: %v", err)
	}
}

func TestSgemmPanicsWithErrBadArgument(t *testing.T) {
	defer func() {
		r := recover()
		err, ok := r.(error)
		if !ok || !errors.Is(err, ErrBadArgument) {
			t.Fatalf("recovered %v, want an ErrBadArgument error", r)
		}
	}()
	Sgemm(false, false, 2, 2, 2, 1, make([]float32, 3), 2, make([]float32, 4), 2, 0, make([]float32, 4), 2)
}

func contains(s, sub string) bool {
	for i := 0; i+len(sub) <= len(s); i++ {
		if s[i:i+len(sub)] == sub {
			return true
		}
	}
	return false
}

func TestUseRejectsUnknownImplementation(t *testing.T) {
	before := Implementation()
	if err := Use("cuda"); !errors.Is(err, ErrBadArgument) {
		t.Fatalf("Use(cuda) = %v, want ErrBadArgument", err)
	}
	if Implementation() != before {
		t.Fatalf("implementation changed to %s", Implementation())
	}
	if err := Use("portable"); err != nil || Implementation() != "portable" {
		t.Fatalf("Use(portable) = %v, Implementation() = %s", err, Implementation())
	}
	if err := Use(before); err != nil {
		t.Fatal(err)
	}
}

func TestSteadyCallsDoNotAllocate(t *testing.T) {
	r := rand.New(rand.NewPCG(7, 8))
	forEachImpl(t, func(t *testing.T) {
		for _, s := range [][3]int{{1, 64, 64}, {32, 512, 512}, {64, 96, 80}} {
			m, n, k := s[0], s[1], s[2]
			a, w, c := randSlice(r, m*k), randSlice(r, n*k), make([]float32, m*n)
			bias := randSlice(r, n)
			ep := Epilogue{Bias: bias, Act: ActReLU}
			Linear(m, n, k, a, k, w, k, c, n, ep)
			Sgemm(true, false, m, n, k, 1, w[:m*k], m, w, n, 0, c, n)
			if got := testing.AllocsPerRun(20, func() { Linear(m, n, k, a, k, w, k, c, n, ep) }); got != 0 {
				t.Errorf("Linear %v: %v allocations per call", s, got)
			}
			if got := testing.AllocsPerRun(20, func() { Sgemm(true, false, m, n, k, 1, w[:m*k], m, w, n, 0, c, n) }); got != 0 {
				t.Errorf("Sgemm (transposes) %v: %v allocations per call", s, got)
			}
		}
	})
}
