package oiptest

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strconv"

	"github.com/esper/kasmina-host/kernels"
)

// Golden is one golden kernel case (kernels/testdata/golden's layout):
// the kernel file, an input, PyTorch's float64 output for it and, from
// grad.safetensors, a grad_output with PyTorch's float64 grad_input.
type Golden struct {
	ID     string
	Kernel []byte
	// Input is [batch, *input_shape] (InputShape has the batch).
	Input                    []float32
	InputShape, OutShape     []int
	Expected                 []float64
	GradOutput               []float32
	GradInput                []float64
	Tolerance, GradTolerance float64
}

// GoldenDir is the project's golden cases from a package two levels
// below the repository root, or KERNEL_GOLDEN_DIR's.
func GoldenDir(fromRoot string) string {
	if d := os.Getenv("KERNEL_GOLDEN_DIR"); d != "" {
		return d
	}
	return filepath.Join(fromRoot, "kernels", "testdata", "golden")
}

// LoadGolden reads the case in dir. GradTolerance is the larger of the
// case's tolerance and ten times PyTorch's own float32 gradient error.
func LoadGolden(dir string) (*Golden, error) {
	g := &Golden{ID: filepath.Base(dir)}
	var c struct {
		InputShape  []int   `json:"input_shape"`
		OutputShape []int   `json:"output_shape"`
		Tolerance   float64 `json:"tolerance"`
	}
	raw, err := os.ReadFile(filepath.Join(dir, "case.json"))
	if err != nil {
		return nil, err
	}
	if err := json.Unmarshal(raw, &c); err != nil {
		return nil, fmt.Errorf("%s: case.json: %w", g.ID, err)
	}
	g.InputShape, g.OutShape, g.Tolerance = c.InputShape, c.OutputShape, c.Tolerance
	if g.Kernel, err = os.ReadFile(filepath.Join(dir, "kernel.safetensors")); err != nil {
		return nil, err
	}
	io, err := readSafetensors(filepath.Join(dir, "io.safetensors"))
	if err != nil {
		return nil, err
	}
	grad, err := readSafetensors(filepath.Join(dir, "grad.safetensors"))
	if err != nil {
		return nil, err
	}
	for _, t := range []struct {
		f    *kernels.File
		name string
		f32  *[]float32
		f64  *[]float64
	}{{io, "input", &g.Input, nil}, {io, "expected", nil, &g.Expected}, {grad, "grad_output", &g.GradOutput, nil}, {grad, "grad_input", nil, &g.GradInput}} {
		v, ok := t.f.Tensor(t.name)
		if !ok {
			return nil, fmt.Errorf("%s: no tensor %q", g.ID, t.name)
		}
		if t.f32 != nil {
			*t.f32, err = v.Float32s()
		} else {
			*t.f64, err = v.Float64s()
		}
		if err != nil {
			return nil, fmt.Errorf("%s: %s: %w", g.ID, t.name, err)
		}
	}
	torchErr, err := strconv.ParseFloat(grad.Metadata["torch_float32_rel_error"], 64)
	if err != nil {
		return nil, fmt.Errorf("%s: torch_float32_rel_error: %w", g.ID, err)
	}
	g.GradTolerance = max(g.Tolerance, 10*torchErr)
	return g, nil
}

func readSafetensors(path string) (*kernels.File, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	f, err := kernels.ParseSafetensors(raw)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return f, nil
}
