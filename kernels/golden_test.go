package kernels

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"testing"
)

// goldenCase is case.json of one golden case.
type goldenCase struct {
	KernelID    string  `json:"kernel_id"`
	InputShape  []int   `json:"input_shape"`
	OutputShape []int   `json:"output_shape"`
	Tolerance   float64 `json:"tolerance"`
}

// goldenDir is the folder of golden cases: KERNEL_GOLDEN_DIR, or the copy of
// the reference cases in testdata.
func goldenDir() string {
	if d := os.Getenv("KERNEL_GOLDEN_DIR"); d != "" {
		return d
	}
	return filepath.Join("testdata", "golden")
}

func goldenCases(t testing.TB) []string {
	t.Helper()
	dir := goldenDir()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatalf("golden cases: %v", err)
	}
	var ids []string
	for _, e := range entries {
		if _, err := os.Stat(filepath.Join(dir, e.Name(), "case.json")); e.IsDir() && err == nil {
			ids = append(ids, e.Name())
		}
	}
	sort.Strings(ids)
	if len(ids) == 0 {
		t.Fatalf("golden cases: none in %s", dir)
	}
	return ids
}

// runGoldenCase loads one case, runs it and returns the relative L2 error
// and the tolerance.
func runGoldenCase(dir string) (rel, tol float64, err error) {
	var c goldenCase
	raw, err := os.ReadFile(filepath.Join(dir, "case.json"))
	if err != nil {
		return 0, 0, err
	}
	if err := json.Unmarshal(raw, &c); err != nil {
		return 0, 0, fmt.Errorf("case.json: %w", err)
	}
	k, err := LoadFile(filepath.Join(dir, "kernel.safetensors"), LoadOptions{})
	if err != nil {
		return 0, c.Tolerance, err
	}
	ioRaw, err := os.ReadFile(filepath.Join(dir, "io.safetensors"))
	if err != nil {
		return 0, c.Tolerance, err
	}
	io, err := ParseSafetensors(ioRaw)
	if err != nil {
		return 0, c.Tolerance, fmt.Errorf("io.safetensors: %w", err)
	}
	inT, ok1 := io.Tensor("input")
	expT, ok2 := io.Tensor("expected")
	if !ok1 || !ok2 {
		return 0, c.Tolerance, fmt.Errorf("io.safetensors lacks input or expected")
	}
	in, err := inT.Float32s()
	if err != nil {
		return 0, c.Tolerance, err
	}
	expected, err := expT.Float64s()
	if err != nil {
		return 0, c.Tolerance, err
	}
	if !slices.Equal(inT.Shape, c.InputShape) || !slices.Equal(expT.Shape, c.OutputShape) {
		return 0, c.Tolerance, fmt.Errorf("io shapes %v/%v disagree with case.json %v/%v", inT.Shape, expT.Shape, c.InputShape, c.OutputShape)
	}
	batch := c.InputShape[0]
	if got := append([]int{batch}, k.OutputShape()...); !slices.Equal(got, c.OutputShape) {
		return 0, c.Tolerance, fmt.Errorf("output shape %v, want %v", got, c.OutputShape)
	}
	out := make([]float32, batch*k.OutputSize())
	if err := k.Run(context.Background(), in, batch, out); err != nil {
		return 0, c.Tolerance, err
	}
	var num, den float64
	for i, v := range out {
		if math.IsNaN(float64(v)) {
			return math.NaN(), c.Tolerance, fmt.Errorf("output element %d is NaN", i)
		}
		d := float64(v) - expected[i]
		num += d * d
		den += expected[i] * expected[i]
	}
	rel = math.Sqrt(num)
	if den > 0 {
		rel /= math.Sqrt(den)
	}
	return rel, c.Tolerance, nil
}

// TestKernelGolden runs every golden case (PyTorch reference outputs) and
// prints the summary line CI reads.
func TestKernelGolden(t *testing.T) {
	dir := goldenDir()
	ids := goldenCases(t)
	passed, failed := 0, 0
	for _, id := range ids {
		rel, tol, err := runGoldenCase(filepath.Join(dir, id))
		switch {
		case err != nil:
			failed++
			t.Errorf("golden %s: %v", id, err)
		case !(rel <= tol):
			failed++
			t.Errorf("golden %s: relative error %.3g exceeds tolerance %.3g", id, rel, tol)
		default:
			passed++
			t.Logf("golden %s: relative error %.3g (tolerance %.3g)", id, rel, tol)
		}
	}
	fmt.Printf("kernel golden: %d passed, %d failed (of %d)\n", passed, failed, len(ids))
}
