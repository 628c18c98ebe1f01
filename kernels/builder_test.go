package kernels

import (
	"bytes"
	"encoding/json"
	"math/rand"
	"strings"
	"testing"
)

// testKernel builds an esper-kernel/v1 file for mod with random weights
// (positive running variances). When md is not nil, its empty shapes and
// zero parameter count are filled in from the module before embedding.
func testKernel(t testing.TB, mod *Module, inShape []int, seed int64, md *KernelMetadata) []byte {
	t.Helper()
	_, specs, outShape, err := inferGraph(mod, inShape)
	if err != nil {
		t.Fatalf("inferGraph: %v", err)
	}
	rng := rand.New(rand.NewSource(seed))
	var tensors []Tensor
	params := 0
	for _, s := range specs {
		n, _ := shapeSize(s.shape)
		v := make([]float32, n)
		for i := range v {
			v[i] = float32(rng.NormFloat64() * 0.3)
			if strings.HasSuffix(s.name, "running_var") {
				v[i] = 0.5 + rng.Float32()
			}
		}
		if s.learnable {
			params += n
		}
		tensors = append(tensors, F32Tensor(s.name, s.shape, v))
	}
	if md != nil {
		if md.InputShape == nil {
			md.InputShape = inShape
		}
		if md.OutputShape == nil {
			md.OutputShape = outShape
		}
		if md.ParameterCount == 0 {
			md.ParameterCount = params
		}
		if md.CompilationTarget == "" {
			md.CompilationTarget = "safetensors"
		}
		if md.Name == "" {
			md.Name = "test kernel" // the contract requires a name
		}
	}
	var buf bytes.Buffer
	if err := WriteKernel(&buf, mod, tensors, md); err != nil {
		t.Fatalf("WriteKernel: %v", err)
	}
	return buf.Bytes()
}

// mustModule parses a module graph written as JSON.
func mustModule(t testing.TB, js string) *Module {
	t.Helper()
	m, err := ParseModule([]byte(js))
	if err != nil {
		t.Fatalf("ParseModule(%s): %v", js, err)
	}
	return m
}

func seq(layers ...string) string {
	return `{"type":"sequential","layers":[` + strings.Join(layers, ",") + `]}`
}

func linearJSON(in, out int, bias bool) string {
	b, _ := json.Marshal(map[string]any{"type": "linear", "in_features": in, "out_features": out, "bias": bias})
	return string(b)
}

func randomInput(n int, seed int64) []float32 {
	rng := rand.New(rand.NewSource(seed))
	v := make([]float32, n)
	for i := range v {
		v[i] = float32(rng.NormFloat64())
	}
	return v
}
