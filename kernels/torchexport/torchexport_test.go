package torchexport_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/johannesboyne/gofakes3"
	"github.com/johannesboyne/gofakes3/backend/s3mem"
	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"

	"github.com/esper/kasmina-host/contracts"
	"github.com/esper/kasmina-host/internal/tolerance"
	"github.com/esper/kasmina-host/internal/torchpython"
	"github.com/esper/kasmina-host/kernels"
	"github.com/esper/kasmina-host/kernels/source"
)

// runPython runs the exporter's Python with args in dir.
func runPython(t *testing.T, py, dir string, args ...string) []byte {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, py, args...)
	cmd.Dir = dir
	here, _ := os.Getwd()
	cmd.Env = append(os.Environ(), "PYTHONDONTWRITEBYTECODE=1", "PYTHONPATH="+here+string(os.PathListSeparator)+dir)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("%s %s: %v\nstdout:\n%s\nstderr:\n%s", py, strings.Join(args, " "), err, stdout.String(), stderr.String())
	}
	return stdout.Bytes()
}

type caseFile struct {
	KernelID           string  `json:"kernel_id"`
	InputShape         []int   `json:"input_shape"`
	OutputShape        []int   `json:"output_shape"`
	Tolerance          float64 `json:"tolerance"`
	TorchFloat32RelErr float64 `json:"torch_float32_rel_error"`
}

func tensorOf(t *testing.T, f *kernels.File, name string) kernels.Tensor {
	t.Helper()
	tt, ok := f.Tensor(name)
	if !ok {
		t.Fatalf("io.safetensors has no %q", name)
	}
	return tt
}

// TestExportedKernelsMatchPyTorch exports the exporter's built-in models
// (every operation, nested sequentials, F16 and BF16 weights) from PyTorch,
// loads each through the host's loader with the CompiledKernel sidecar's
// metadata (so the checksum and the declared shapes and parameter count are
// checked), runs it, and compares with PyTorch's float64 reference and its
// own float32 output.
func TestExportedKernelsMatchPyTorch(t *testing.T) {
	t.Parallel()
	py := torchpython.Interpreter(t)
	dir := t.TempDir()
	here, _ := os.Getwd()
	out := runPython(t, py, here, filepath.Join(here, "esper_export.py"), "selftest", "--out", dir)
	var listed struct{ Cases []string }
	if err := json.Unmarshal(out, &listed); err != nil || len(listed.Cases) == 0 {
		t.Fatalf("selftest output %q: %v", out, err)
	}
	sort.Strings(listed.Cases)
	passed := 0
	for _, name := range listed.Cases {
		if ok := t.Run(name, func(t *testing.T) { checkCase(t, filepath.Join(dir, name)) }); ok {
			passed++
		}
	}
	fmt.Printf("torchexport end-to-end: %d passed, %d failed (of %d)\n", passed, len(listed.Cases)-passed, len(listed.Cases))
}

// checkCase loads a golden-layout case's kernel through the host, runs it
// and compares with PyTorch; it returns the relative L2 error against
// PyTorch's float64 output.
func checkCase(t *testing.T, dir string) float64 {
	var c caseFile
	raw, err := os.ReadFile(filepath.Join(dir, "case.json"))
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(raw, &c); err != nil {
		t.Fatal(err)
	}
	ckRaw, err := os.ReadFile(filepath.Join(dir, "compiled_kernel.json"))
	if err != nil {
		t.Fatal(err)
	}
	ck, err := contracts.DecodeCompiledKernel(ckRaw)
	if err != nil {
		t.Fatalf("compiled_kernel.json does not decode as a CompiledKernel: %v", err)
	}
	file, err := os.ReadFile(filepath.Join(dir, "kernel.safetensors"))
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(file)
	if ck.Metadata.Checksum == nil || *ck.Metadata.Checksum != hex.EncodeToString(sum[:]) {
		t.Fatalf("sidecar checksum %v, file sha256 %x", ck.Metadata.Checksum, sum)
	}
	k, err := kernels.Load(file, kernels.LoadOptions{Metadata: &ck.Metadata})
	if err != nil {
		t.Fatalf("host refused the exported kernel: %v", err)
	}
	if _, err := kernels.Load(file, kernels.LoadOptions{}); err != nil {
		t.Fatalf("host refused the exported kernel with its embedded metadata only: %v", err)
	}
	emb := k.EmbeddedMetadata()
	if emb == nil || emb.KernelID != c.KernelID || emb.CompilationTarget != "safetensors" || emb.ParameterCount != k.ParameterCount() {
		t.Fatalf("embedded metadata %+v (host counts %d parameters)", emb, k.ParameterCount())
	}
	if mc := k.MemoryCheck(); mc.Declared && math.Abs(mc.DifferenceMiB) > 0.05*mc.EstimatedMiB+0.001 {
		t.Errorf("declared footprint %.4f MiB, host estimates %.4f MiB", mc.DeclaredMiB, mc.EstimatedMiB)
	}

	ioRaw, err := os.ReadFile(filepath.Join(dir, "io.safetensors"))
	if err != nil {
		t.Fatal(err)
	}
	io, err := kernels.ParseSafetensors(ioRaw)
	if err != nil {
		t.Fatalf("io.safetensors: %v", err)
	}
	in, err := tensorOf(t, io, "input").Float32s()
	if err != nil {
		t.Fatal(err)
	}
	expected, err := tensorOf(t, io, "expected").Float64s()
	if err != nil {
		t.Fatal(err)
	}
	torch32, err := tensorOf(t, io, "torch_f32").Float64s()
	if err != nil {
		t.Fatal(err)
	}
	batch := c.InputShape[0]
	if got := append([]int{batch}, k.OutputShape()...); fmt.Sprint(got) != fmt.Sprint(c.OutputShape) {
		t.Fatalf("host output shape %v, PyTorch %v", got, c.OutputShape)
	}
	out := make([]float32, batch*k.OutputSize())
	if err := k.Run(context.Background(), in, batch, out); err != nil {
		t.Fatal(err)
	}
	for i, v := range out {
		if math.IsNaN(float64(v)) || math.IsInf(float64(v), 0) {
			t.Fatalf("output %d is %v", i, v)
		}
	}
	relRef, relTorch := tolerance.RelErr(out, expected), tolerance.RelErr(out, torch32)
	t.Logf("%s: relative L2 error %.3g against PyTorch float64, %.3g against PyTorch float32 (PyTorch float32's own: %.3g)",
		c.KernelID, relRef, relTorch, c.TorchFloat32RelErr)
	if !(relRef <= c.Tolerance) {
		t.Errorf("relative error against PyTorch float64 %.3g exceeds %.3g", relRef, c.Tolerance)
	}
	if !(relTorch <= c.Tolerance) {
		t.Errorf("relative error against PyTorch float32 %.3g exceeds %.3g", relTorch, c.Tolerance)
	}
	return relRef
}

// convertForms are the forms test_esper_convert.py writes every model in:
// torch.save zip and legacy, Tezzeret's compiled dict, and the TorchScript
// twins.
var convertForms = []string{"zip", "legacy", "tezzeret", "script", "trace"}

// TestConvertedKernelsMatchPyTorch is the converter's proof: every model of
// the exporter's set (every operation, nested and named sequentials, F16 and
// BF16 weights) and the two modules Tezzeret's ir_to_module builds, saved in
// every form Esper hands over and converted by esper_convert.py, loads
// through the host and matches the original model's PyTorch output within
// the golden tolerance.
func TestConvertedKernelsMatchPyTorch(t *testing.T) {
	t.Parallel()
	py := torchpython.Interpreter(t)
	dir := t.TempDir()
	here, _ := os.Getwd()
	out := runPython(t, py, here, filepath.Join(here, "test_esper_convert.py"), "cases", "--out", dir)
	var listed struct {
		Cases, Skipped []string
		Torch          string
	}
	if err := json.Unmarshal(out, &listed); err != nil || len(listed.Cases) == 0 {
		t.Fatalf("case writer output %q: %v", out, err)
	}
	for _, s := range listed.Skipped {
		fmt.Printf("torchexport converted: SKIPPED %s\n", s)
		t.Logf("SKIPPED, NOT RUN: %s", s)
	}
	for _, form := range convertForms {
		written, skipped := 0, 0
		for _, c := range listed.Cases {
			if strings.HasPrefix(c, form+"-") {
				written++
			}
		}
		for _, s := range listed.Skipped {
			if strings.HasPrefix(s, form+"-") {
				skipped++
			}
		}
		if written == 0 && skipped == 0 {
			t.Errorf("no case converts a %s file", form)
		}
	}
	passed, worst, worstCase := 0, 0.0, ""
	for _, name := range listed.Cases {
		var rel float64
		if ok := t.Run(name, func(t *testing.T) { rel = checkCase(t, filepath.Join(dir, name)) }); ok {
			passed++
			if rel > worst {
				worst, worstCase = rel, name
			}
		}
	}
	fmt.Printf("torchexport converted (PyTorch %s): %d passed, %d failed (of %d); largest relative L2 error against PyTorch float64 %.3g (%s)\n",
		listed.Torch, passed, len(listed.Cases)-passed, len(listed.Cases), worst, worstCase)
}

// TestConverterTurnsRefusedTorchFilesIntoKernels closes the loop the host's
// refusal opens: the PyTorch files the kernels package refuses (its
// committed fixtures: torch.save zip and legacy, TorchScript) name
// kernels.Converter, which is this folder's esper_convert.py; its CLI turns
// each into a kernel that loads and reproduces the module's float64 output.
func TestConverterTurnsRefusedTorchFilesIntoKernels(t *testing.T) {
	t.Parallel()
	py := torchpython.Interpreter(t)
	here, _ := os.Getwd()
	converter := filepath.Join(here, "esper_convert.py")
	if !strings.HasSuffix(filepath.ToSlash(converter), kernels.Converter) {
		t.Fatalf("the host names %s as the converter; it is at %s", kernels.Converter, converter)
	}
	fixtures := filepath.Join(here, "..", "testdata", "torch")
	work := t.TempDir()
	const reference = `import json, sys, torch
m = torch.load(sys.argv[1], map_location="cpu").double().eval()
x = torch.linspace(-2, 2, 12).reshape(4, 3)
with torch.no_grad():
    y = m(x.double())
print(json.dumps({"input": x.flatten().tolist(), "output": y.flatten().tolist()}))
`
	var ref struct{ Input, Output []float64 }
	raw := runPython(t, py, work, "-c", reference, filepath.Join(fixtures, "sequential_zip.pt"))
	if err := json.Unmarshal(raw, &ref); err != nil || len(ref.Input) != 12 {
		t.Fatalf("reference %q: %v", raw, err)
	}
	in := make([]float32, len(ref.Input))
	for i, v := range ref.Input {
		in[i] = float32(v)
	}
	for _, name := range []string{"sequential_zip.pt", "sequential_legacy.pt", "sequential_script.pt"} {
		t.Run(name, func(t *testing.T) {
			src := filepath.Join(fixtures, name)
			_, err := kernels.LoadFile(src, kernels.LoadOptions{})
			var ferr *kernels.ForeignFileError
			if !errors.As(err, &ferr) || !strings.Contains(err.Error(), kernels.Converter) {
				t.Fatalf("the host loaded %s with error %v, want a refusal naming %s", name, err, kernels.Converter)
			}
			dst := filepath.Join(work, name+".safetensors")
			// No --input-shape: the module starts with a Linear.
			runPython(t, py, work, converter, "--input", src, "--output", dst, "--kernel-id", "fixture-"+name)
			k, err := kernels.LoadFile(dst, kernels.LoadOptions{})
			if err != nil {
				t.Fatalf("host refused the converted kernel: %v", err)
			}
			if fmt.Sprint(k.InputShape(), k.OutputShape()) != "[3] [2]" {
				t.Fatalf("converted kernel maps %v to %v, want [3] to [2]", k.InputShape(), k.OutputShape())
			}
			out := make([]float32, 4*k.OutputSize())
			if err := k.Run(context.Background(), in, 4, out); err != nil {
				t.Fatal(err)
			}
			rel := tolerance.RelErr(out, ref.Output)
			t.Logf("%s: relative L2 error %.3g against PyTorch float64", name, rel)
			if !(rel <= 1e-5) {
				t.Errorf("relative error %.3g against PyTorch float64 exceeds 1e-5 (got %v, want %v)", rel, out, ref.Output)
			}
		})
	}
}

// TestPythonUnitChecks runs the exporter's and the converter's own unit
// tests: refusal of unsupported modules by name and position (torch.save
// and TorchScript), of TorchScript forwards that are not a chain and of
// files that hold no module; byte-identical re-export of the reference
// kernels; every form converting into the file the exporter writes for the
// original model; Tezzeret's dict (state_dict, ir_metadata); the CLIs.
func TestPythonUnitChecks(t *testing.T) {
	t.Parallel()
	py := torchpython.Interpreter(t)
	here, _ := os.Getwd()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, py, "-m", "unittest", "-v", "test_esper_export", "test_esper_convert")
	cmd.Dir = here
	cmd.Env = append(os.Environ(), "PYTHONDONTWRITEBYTECODE=1")
	out, err := cmd.CombinedOutput()
	t.Logf("%s", out)
	if err != nil {
		t.Fatalf("python unit checks failed: %v", err)
	}
}

// TestCLIExportToS3AndBack is the flow Esper's compiler side follows: export
// a model with the CLI, upload the file where a CompiledKernel's binary_ref
// points (an S3 API served in-process), then fetch it as the host does,
// verify the checksum the CompiledKernel carries, load and run it.
func TestCLIExportToS3AndBack(t *testing.T) {
	t.Parallel()
	py := torchpython.Interpreter(t)
	work := t.TempDir()
	factory := `import torch
from torch import nn

def make():
    torch.manual_seed(7)
    return nn.Sequential(nn.Linear(64, 64), nn.ReLU())
`
	if err := os.WriteFile(filepath.Join(work, "seedmodel.py"), []byte(factory), 0o644); err != nil {
		t.Fatal(err)
	}
	here, _ := os.Getwd()
	const ref = "s3://esper-artifacts/kernels/seed-64/kernel.safetensors"
	kpath, ckpath := filepath.Join(work, "kernel.safetensors"), filepath.Join(work, "compiled.json")
	runPython(t, py, work, filepath.Join(here, "esper_export.py"), "export",
		"--model", "seedmodel:make", "--input-shape", "64", "--out", kpath,
		"--kernel-id", "seed-64", "--blueprint-id", "bp-seed", "--name", "seed linear 64",
		"--compiled-kernel", ckpath, "--binary-ref", ref)
	ckRaw, err := os.ReadFile(ckpath)
	if err != nil {
		t.Fatal(err)
	}
	ck, err := contracts.DecodeCompiledKernel(ckRaw)
	if err != nil {
		t.Fatal(err)
	}
	if ck.BinaryRef != ref || ck.Metadata.Name != "seed linear 64" || ck.Metadata.Checksum == nil {
		t.Fatalf("compiled kernel %+v", ck)
	}

	srv := httptest.NewServer(gofakes3.New(s3mem.New()).Server())
	defer srv.Close()
	u, _ := url.Parse(srv.URL)
	up, err := minio.New(u.Host, &minio.Options{Creds: credentials.NewStaticV4("k", "s", ""), Region: "us-east-1", BucketLookup: minio.BucketLookupPath})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if err := up.MakeBucket(ctx, "esper-artifacts", minio.MakeBucketOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := up.FPutObject(ctx, "esper-artifacts", "kernels/seed-64/kernel.safetensors", kpath, minio.PutObjectOptions{}); err != nil {
		t.Fatal(err)
	}

	s3src, err := source.NewS3(source.S3ConfigFromEnv(func(k string) string {
		return map[string]string{"S3_ENDPOINT_URL": srv.URL, "AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": "s"}[k]
	}))
	if err != nil {
		t.Fatal(err)
	}
	allow, err := source.NewAllowList("s3://esper-artifacts/kernels/")
	if err != nil {
		t.Fatal(err)
	}
	router, err := source.NewRouter(allow, map[string]source.Source{"s3": s3src}, nil)
	if err != nil {
		t.Fatal(err)
	}
	blob, err := source.FetchVerified(ctx, router, ck.BinaryRef, *ck.Metadata.Checksum)
	if err != nil {
		t.Fatal(err)
	}
	k, err := kernels.Load(blob.Data, kernels.LoadOptions{Metadata: &ck.Metadata})
	if err != nil {
		t.Fatal(err)
	}
	if k.ParameterCount() != 64*64+64 || fmt.Sprint(k.InputShape()) != "[64]" || fmt.Sprint(k.OutputShape()) != "[64]" {
		t.Fatalf("loaded kernel: %d parameters, %v -> %v", k.ParameterCount(), k.InputShape(), k.OutputShape())
	}
	in := make([]float32, 64)
	for i := range in {
		in[i] = float32(i%7) - 3
	}
	out := make([]float32, 64)
	if err := k.Run(ctx, in, 1, out); err != nil {
		t.Fatal(err)
	}
	// ReLU output: nothing negative, and not everything zero.
	nonzero := 0
	for _, v := range out {
		if v < 0 {
			t.Fatalf("ReLU output %v is negative", v)
		}
		if v > 0 {
			nonzero++
		}
	}
	if nonzero == 0 {
		t.Fatal("all outputs zero")
	}
}
