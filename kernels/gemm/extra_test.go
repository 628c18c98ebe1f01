package gemm

import (
	"bytes"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestEnvSelectsTheImplementation runs this test binary again with
// KASMINA_GEMM set and checks what the child reports: a valid name is used,
// an unknown one keeps the default and is reported by EnvError, naming the
// variable, the value and the accepted names.
func TestEnvSelectsTheImplementation(t *testing.T) {
	if os.Getenv("GEMM_CHILD") == "1" {
		fmt.Printf("impl=%s\nerr=%v\n", Implementation(), EnvError())
		return
	}
	def := Implementations()[0]
	cases := []struct {
		value string
		want  []string
	}{
		{"portable", []string{"impl=portable\n", "err=<nil>\n"}},
		{"", []string{"impl=" + def + "\n", "err=<nil>\n"}},
		{"fortran", []string{"impl=" + def + "\n", `err=KASMINA_GEMM="fortran" names no GEMM implementation`, "(accepted: " + strings.Join(Implementations(), ", ") + ")"}},
		{"Portable", []string{"impl=" + def + "\n", `err=KASMINA_GEMM="Portable"`}},
	}
	for _, c := range cases {
		t.Run(c.value, func(t *testing.T) {
			cmd := exec.Command(os.Args[0], "-test.run=^TestEnvSelectsTheImplementation$")
			cmd.Env = append(os.Environ(), "GEMM_CHILD=1", EnvVar+"="+c.value)
			out, err := cmd.CombinedOutput()
			if err != nil {
				t.Fatalf("child: %v\n%s", err, out)
			}
			for _, w := range c.want {
				if !strings.Contains(string(out), w) {
					t.Errorf("child with %s=%q reported:\n%s\nwant it to contain %q", EnvVar, c.value, out, w)
				}
			}
		})
	}
}

// TestGeneratedAssemblyIsUpToDate rebuilds the avo generator and checks that
// it reproduces the committed gemm_amd64.s and stub_amd64.go byte for byte.
func TestGeneratedAssemblyIsUpToDate(t *testing.T) {
	if testing.Short() || raceEnabled {
		t.Skip("builds the generator (slow under -short and -race)")
	}
	goBin, err := exec.LookPath("go")
	if err != nil {
		t.Skipf("SKIP: no go command on PATH to build the generator: %v", err)
	}
	dir := t.TempDir()
	gen := filepath.Join(dir, "asmgen")
	if out, err := exec.Command(goBin, "build", "-o", gen, "./internal/asmgen").CombinedOutput(); err != nil {
		t.Fatalf("building generator: %v\n%s", err, out)
	}
	cmd := exec.Command(gen, "-pkg", "gemm", "-out", "gemm_amd64.s", "-stubs", "stub_amd64.go")
	cmd.Dir = dir
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("running generator: %v\n%s", err, out)
	}
	for _, f := range []string{"gemm_amd64.s", "stub_amd64.go"} {
		want, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		got, err := os.ReadFile(filepath.Join(dir, f))
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, want) {
			t.Errorf("%s differs from the generator's output: run go generate ./kernels/gemm/", f)
		}
	}
}

// FuzzSgemm checks every implementation against the float64 reference on
// fuzzed shapes, strides, transposes and alpha/beta.
func FuzzSgemm(f *testing.F) {
	f.Add(uint8(1), uint8(1), uint8(1), uint8(0), uint8(0), false, false, float32(1), float32(0), uint64(1))
	f.Add(uint8(7), uint8(17), uint8(9), uint8(3), uint8(1), true, false, float32(-0.5), float32(2), uint64(2))
	f.Add(uint8(33), uint8(5), uint8(70), uint8(0), uint8(5), false, true, float32(1), float32(1), uint64(3))
	f.Add(uint8(4), uint8(64), uint8(64), uint8(1), uint8(0), true, true, float32(2), float32(0), uint64(4))
	f.Fuzz(func(t *testing.T, m8, n8, k8, padA, padC uint8, tA, tB bool, alpha, beta float32, seed uint64) {
		m, n, k := int(m8%80), int(n8%80), int(k8)
		if math.IsNaN(float64(alpha)) || math.IsInf(float64(alpha), 0) || math.Abs(float64(alpha)) > 1e3 ||
			math.IsNaN(float64(beta)) || math.IsInf(float64(beta), 0) || math.Abs(float64(beta)) > 1e3 {
			t.Skip()
		}
		r := rand.New(rand.NewPCG(seed, 5))
		ar, ac := m, k
		if tA {
			ar, ac = k, m
		}
		br, bc := k, n
		if tB {
			br, bc = n, k
		}
		lda, ldb, ldc := max(ac, 1)+int(padA%8), max(bc, 1), max(n, 1)+int(padC%8)
		a, b := randSlice(r, ar*lda), randSlice(r, br*ldb)
		c0 := randSlice(r, m*ldc)
		want, mag := refSgemm(tA, tB, m, n, k, alpha, a, lda, b, ldb, beta, c0, ldc)
		def := Implementation()
		defer func() { _ = Use(def) }()
		for _, impl := range Implementations() {
			if err := Use(impl); err != nil {
				t.Fatal(err)
			}
			c := append([]float32(nil), c0...)
			Sgemm(tA, tB, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc)
			checkClose(t, m, n, k, c, ldc, want, mag)
			if e, ok := current().(*native); ok && e.pk != nil {
				// The packed path too, which these sizes would not take.
				from := e.pkMin
				e.pkMin = 1
				c := append([]float32(nil), c0...)
				Sgemm(tA, tB, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc)
				e.pkMin = from
				checkClose(t, m, n, k, c, ldc, want, mag)
			}
		}
	})
}
