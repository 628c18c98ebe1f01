package kernels

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"testing"
	"time"

	"github.com/esper/kasmina-host/internal/tolerance"
	"github.com/esper/kasmina-host/internal/torchpython"
)

// gradCase is one golden case with its PyTorch gradient reference
// (grad.safetensors, written by testdata/golden/make_grads.py).
type gradCase struct {
	id       string
	k        *Kernel
	batch    int
	input    []float32
	gradOut  []float32
	want     []float64 // float64 autograd reference of grad_input
	tol      float64   // max(case tolerance, 10 × PyTorch's float32 error)
	torchErr float64
}

// loadGradCase reads a case folder with its grad.safetensors.
func loadGradCase(dir string) (*gradCase, error) {
	raw, err := os.ReadFile(filepath.Join(dir, "grad.safetensors"))
	if err != nil {
		return nil, err
	}
	gf, err := ParseSafetensors(raw)
	if err != nil {
		return nil, fmt.Errorf("grad.safetensors: %w", err)
	}
	var c goldenCase
	if raw, err := os.ReadFile(filepath.Join(dir, "case.json")); err != nil {
		return nil, err
	} else if err := json.Unmarshal(raw, &c); err != nil {
		return nil, fmt.Errorf("case.json: %w", err)
	}
	k, err := LoadFile(filepath.Join(dir, "kernel.safetensors"), LoadOptions{})
	if err != nil {
		return nil, err
	}
	ioRaw, err := os.ReadFile(filepath.Join(dir, "io.safetensors"))
	if err != nil {
		return nil, err
	}
	iof, err := ParseSafetensors(ioRaw)
	if err != nil {
		return nil, fmt.Errorf("io.safetensors: %w", err)
	}
	in, ok1 := iof.Tensor("input")
	gout, ok2 := gf.Tensor("grad_output")
	gin, ok3 := gf.Tensor("grad_input")
	if !ok1 || !ok2 || !ok3 {
		return nil, fmt.Errorf("need io.safetensors input and grad.safetensors grad_output, grad_input")
	}
	if !slices.Equal(gout.Shape, c.OutputShape) || !slices.Equal(gin.Shape, c.InputShape) {
		return nil, fmt.Errorf("grad shapes %v/%v disagree with case.json %v/%v", gout.Shape, gin.Shape, c.OutputShape, c.InputShape)
	}
	torchErr, err := strconv.ParseFloat(gf.Metadata["torch_float32_rel_error"], 64)
	if err != nil {
		return nil, fmt.Errorf("grad.safetensors: torch_float32_rel_error: %w", err)
	}
	gc := &gradCase{id: filepath.Base(dir), k: k, batch: c.InputShape[0], torchErr: torchErr, tol: max(c.Tolerance, 10*torchErr)}
	if gc.input, err = in.Float32s(); err != nil {
		return nil, err
	}
	if gc.gradOut, err = gout.Float32s(); err != nil {
		return nil, err
	}
	if gc.want, err = gin.Float64s(); err != nil {
		return nil, err
	}
	return gc, nil
}

// opFamilies lists the op types of a module graph, GELU split by form.
func opFamilies(m *Module) []string {
	seen := map[string]bool{}
	var walk func(*Module)
	walk = func(m *Module) {
		if m.Type == "sequential" {
			for _, l := range m.Layers {
				walk(l)
			}
			return
		}
		t := m.Type
		if t == "gelu" && m.Approximate == "tanh" {
			t = "gelu_tanh"
		}
		seen[t] = true
	}
	walk(m)
	out := make([]string, 0, len(seen))
	for t := range seen {
		out = append(out, t)
	}
	sort.Strings(out)
	return out
}

// TestKernelGradGolden checks Backward on every golden case against
// PyTorch's float64 autograd on the same weights, input and grad_output:
// the relative error must be within the larger of the case's tolerance and
// ten times PyTorch's own float32 error. The one-shot Backward and
// Forward + Tape.Backward must agree bit for bit. It prints the summary
// line and, per op family, the worst error of the cases that contain it.
func TestKernelGradGolden(t *testing.T) {
	dir := goldenDir()
	ids := goldenCases(t)
	passed, failed, missing := 0, 0, 0
	type worst struct {
		rel, ratio float64
		id         string
	}
	families := map[string]worst{}
	for _, id := range ids {
		if _, err := os.Stat(filepath.Join(dir, id, "grad.safetensors")); errors.Is(err, fs.ErrNotExist) {
			missing++
			t.Logf("grad golden %s: no grad.safetensors", id)
			continue
		}
		c, err := loadGradCase(filepath.Join(dir, id))
		if err != nil {
			failed++
			t.Errorf("grad golden %s: %v", id, err)
			continue
		}
		got := make([]float32, len(c.want))
		if err := c.k.Backward(context.Background(), c.input, c.batch, c.gradOut, got); err != nil {
			failed++
			t.Errorf("grad golden %s: Backward: %v", id, err)
			continue
		}
		var tape Tape
		out := make([]float32, c.batch*c.k.OutputSize())
		viaTape := make([]float32, len(got))
		if err := c.k.Forward(context.Background(), c.input, c.batch, out, &tape); err != nil {
			t.Fatalf("grad golden %s: Forward: %v", id, err)
		}
		if err := tape.Backward(context.Background(), c.gradOut, viaTape); err != nil {
			t.Fatalf("grad golden %s: Tape.Backward: %v", id, err)
		}
		for i := range got {
			if math.Float32bits(got[i]) != math.Float32bits(viaTape[i]) {
				t.Errorf("grad golden %s: element %d: Backward %g, Forward+Tape.Backward %g", id, i, got[i], viaTape[i])
				break
			}
		}
		rel := tolerance.RelErr(got, c.want)
		if !(rel <= c.tol) {
			failed++
			t.Errorf("grad golden %s: relative error %.3g exceeds %.3g (PyTorch float32: %.3g)", id, rel, c.tol, c.torchErr)
		} else {
			passed++
			t.Logf("grad golden %s: relative error %.3g (bound %.3g, PyTorch float32 %.3g)", id, rel, c.tol, c.torchErr)
		}
		for _, f := range opFamilies(c.k.Module()) {
			if w := families[f]; rel >= w.rel {
				families[f] = worst{rel, rel / c.tol, id}
			}
		}
	}
	if missing == len(ids) {
		t.Fatalf("no case in %s has grad.safetensors (run testdata/golden/make_grads.py)", dir)
	}
	names := make([]string, 0, len(families))
	for f := range families {
		names = append(names, f)
	}
	sort.Strings(names)
	for _, f := range names {
		w := families[f]
		fmt.Printf("kernel grad golden: %-20s worst relative error %.3g (%s, %.2g of its bound)\n", f, w.rel, w.id, w.ratio)
	}
	fmt.Printf("kernel grad golden: %d passed, %d failed (of %d)", passed, failed, len(ids)-missing)
	if missing > 0 {
		fmt.Printf(", %d without grad.safetensors", missing)
	}
	fmt.Println()
}

// TestGradReferencesAreReproducible reruns make_grads.py on copies of the
// committed cases and checks that it writes the committed grad.safetensors
// byte for byte, so the references are what the script says they are.
func TestGradReferencesAreReproducible(t *testing.T) {
	src := filepath.Join("testdata", "golden")
	if d := os.Getenv("KERNEL_GOLDEN_DIR"); d != "" && d != src {
		t.Skipf("SKIPPED: KERNEL_GOLDEN_DIR=%s; this test checks the committed cases only", d)
	}
	py := torchpython.Interpreter(t)
	dst := t.TempDir()
	ids := goldenCases(t)
	for _, id := range ids {
		if err := os.Mkdir(filepath.Join(dst, id), 0o755); err != nil {
			t.Fatal(err)
		}
		for _, f := range []string{"case.json", "kernel.safetensors", "io.safetensors"} {
			b, err := os.ReadFile(filepath.Join(src, id, f))
			if err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(dst, id, f), b, 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	if out, err := exec.CommandContext(ctx, py, filepath.Join(src, "make_grads.py"), dst).CombinedOutput(); err != nil {
		t.Fatalf("make_grads.py: %v\n%s", err, out)
	}
	for _, id := range ids {
		want, err := os.ReadFile(filepath.Join(src, id, "grad.safetensors"))
		if err != nil {
			t.Fatal(err)
		}
		got, err := os.ReadFile(filepath.Join(dst, id, "grad.safetensors"))
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, want) {
			t.Errorf("%s: make_grads.py writes a different grad.safetensors than the committed one", id)
		}
	}
}
