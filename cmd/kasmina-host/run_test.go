package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/esper/kasmina-host/kernels"
)

// writeRunFixture writes a linear 4→3 + ReLU kernel and a batch-2 input.
func writeRunFixture(t *testing.T) (kernelPath, inputPath string) {
	t.Helper()
	dir := t.TempDir()
	mod, err := kernels.ParseModule([]byte(`{"type":"sequential","layers":[{"type":"linear","in_features":4,"out_features":3,"bias":true},{"type":"relu"}]}`))
	if err != nil {
		t.Fatal(err)
	}
	w := []float32{1, 0, 0, 0, 0, 1, 0, 0, 0, 0, -1, 0}
	var kb bytes.Buffer
	tensors := []kernels.Tensor{kernels.F32Tensor("0.weight", []int{3, 4}, w), kernels.F32Tensor("0.bias", []int{3}, []float32{0, 0, 0.5})}
	md := &kernels.KernelMetadata{KernelID: "fixture", Name: "fixture", InputShape: []int{4}, OutputShape: []int{3}, ParameterCount: 15, CompilationTarget: "safetensors"}
	if err := kernels.WriteKernel(&kb, mod, tensors, md); err != nil {
		t.Fatal(err)
	}
	kernelPath = filepath.Join(dir, "k.safetensors")
	inputPath = filepath.Join(dir, "in.safetensors")
	var ib bytes.Buffer
	if err := kernels.WriteSafetensors(&ib, []kernels.Tensor{kernels.F32Tensor("input", []int{2, 4}, []float32{1, 2, 3, 4, -1, -2, -3, -4})}, nil); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(kernelPath, kb.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(inputPath, ib.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}
	return kernelPath, inputPath
}

func TestRunJSONPrintsOneObjectAndWritesOutput(t *testing.T) {
	kp, ip := writeRunFixture(t)
	outPath := filepath.Join(t.TempDir(), "out.safetensors")
	var stdout, stderr bytes.Buffer
	code := runRun(context.Background(), []string{"--kernel", kp, "--input", ip, "--repeat", "5", "--json", "--output", outPath}, &stdout, &stderr)
	if code != exitOK {
		t.Fatalf("exit %d, stderr %s", code, stderr.String())
	}
	dec := json.NewDecoder(&stdout)
	var rep map[string]any
	if err := dec.Decode(&rep); err != nil {
		t.Fatalf("stdout is not JSON: %v", err)
	}
	if dec.More() {
		t.Errorf("stdout holds more than one JSON value")
	}
	for _, key := range []string{"calls", "p50_us", "p99_us", "gflops"} {
		if _, ok := rep[key]; !ok {
			t.Errorf("report lacks %q: %v", key, rep)
		}
	}
	if rep["calls"].(float64) != 5 || rep["macs_per_call"].(float64) != 2*12 || rep["kernel_id"] != "fixture" {
		t.Errorf("report %v", rep)
	}
	data, err := os.ReadFile(outPath)
	if err != nil {
		t.Fatal(err)
	}
	f, err := kernels.ParseSafetensors(data)
	if err != nil {
		t.Fatal(err)
	}
	out, _ := f.Tensor("output")
	got, _ := out.Float32s()
	want := []float32{1, 2, 0, 0, 0, 3.5}
	if len(got) != len(want) || out.Shape[0] != 2 || out.Shape[1] != 3 {
		t.Fatalf("output %v shape %v", got, out.Shape)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("output %v, want %v", got, want)
		}
	}
}

func TestRunWritesNoOutputWithoutTheFlag(t *testing.T) {
	kp, ip := writeRunFixture(t)
	var stdout, stderr bytes.Buffer
	if code := runRun(context.Background(), []string{"--kernel", kp, "--input", ip}, &stdout, &stderr); code != exitOK {
		t.Fatalf("exit %d: %s", code, stderr.String())
	}
	entries, _ := os.ReadDir(filepath.Dir(kp))
	if len(entries) != 2 {
		t.Errorf("run created files: %v", entries)
	}
}

func TestRunFailsClearly(t *testing.T) {
	kp, ip := writeRunFixture(t)
	cases := []struct {
		name string
		args []string
		code int
		want string
	}{
		{"missing kernel flag", []string{"--input", ip}, exitUsage, "--kernel and --input are required"},
		{"kernel is not a kernel", []string{"--kernel", ip, "--input", ip}, exitFatal, "format"},
		{"input of the wrong shape", []string{"--kernel", kp, "--input", kp}, exitFatal, `no tensor named \"input\"`},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			if code := runRun(context.Background(), c.args, &stdout, &stderr); code != c.code {
				t.Fatalf("exit %d, want %d", code, c.code)
			}
			if !strings.Contains(stderr.String(), c.want) {
				t.Errorf("stderr %q does not mention %q", stderr.String(), c.want)
			}
		})
	}
}

// TestUnknownGEMMImplementationRefusesToStart checks that serve and run
// stop with exit code 2 on a KASMINA_GEMM value naming no implementation,
// and say which values are accepted (the variable was once ignored).
func TestUnknownGEMMImplementationRefusesToStart(t *testing.T) {
	kp, ip := writeRunFixture(t)
	bin := daemonBinary(t)
	for _, args := range [][]string{
		{"serve", "--addr", "127.0.0.1:" + strconv.Itoa(freePort(t)), "--bus-file", os.DevNull, "--no-examples"},
		{"run", "--kernel", kp, "--input", ip},
	} {
		t.Run(args[0], func(t *testing.T) {
			out, code := runBinary(t, []string{"KASMINA_GEMM=fortran"}, bin, args...)
			if code != exitUsage || !strings.Contains(out, `KASMINA_GEMM="fortran"`) || !strings.Contains(out, "accepted: ") || !strings.Contains(out, "portable") {
				t.Errorf("exit %d, want 2 naming KASMINA_GEMM and the accepted values:\n%s", code, out)
			}
			out, code = runBinary(t, []string{"KASMINA_GEMM=portable"}, bin, "run", "--kernel", kp, "--input", ip)
			if code != exitOK {
				t.Errorf("KASMINA_GEMM=portable: exit %d:\n%s", code, out)
			}
		})
	}
}
