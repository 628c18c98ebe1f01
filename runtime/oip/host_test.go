package oip_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"

	"github.com/esper/kasmina-host/contracts"
	"github.com/esper/kasmina-host/device"
	"github.com/esper/kasmina-host/kernels"
	"github.com/esper/kasmina-host/kernels/source"
	"github.com/esper/kasmina-host/runtime"
	"github.com/esper/kasmina-host/runtime/failure"
	"github.com/esper/kasmina-host/runtime/oip"
)

// linearKernel writes a Linear(4→3)+ReLU kernel requiring a GPU, whose
// output for x is relu([x0+x1, x2−x3, −x0] + [0, 0.5, −1]).
func linearKernel(t testing.TB, id string) []byte {
	t.Helper()
	mod := &kernels.Module{Type: "sequential", Layers: []*kernels.Module{
		{Type: "linear", InFeatures: 4, OutFeatures: 3, Bias: true},
		{Type: "relu"},
	}}
	md := contracts.NewKernelMetadata(id, "bp-"+id, id)
	md.InputShape, md.OutputShape, md.ParameterCount = []int{4}, []int{3}, 15
	md.DeviceRequirements = []string{"cuda"}
	md.MemoryFootprintMB = 64
	md.CompilationTarget = "esper-kernel/v1"
	var buf bytes.Buffer
	if err := kernels.WriteKernel(&buf, mod, []kernels.Tensor{
		kernels.F32Tensor("0.weight", []int{3, 4}, []float32{1, 1, 0, 0, 0, 0, 1, -1, -1, 0, 0, 0}),
		kernels.F32Tensor("0.bias", []int{3}, []float32{0, 0.5, -1}),
	}, &md); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// mapFetcher serves artifacts from memory, as a source does.
type mapFetcher map[string][]byte

func (f mapFetcher) Fetch(_ context.Context, ref, _ string) (source.Blob, error) {
	b, ok := f[ref]
	if !ok {
		return source.Blob{}, fmt.Errorf("%w: %s", source.ErrNotFound, ref)
	}
	sum := sha256.Sum256(b)
	return source.Blob{Data: b, SHA256: hex.EncodeToString(sum[:]), Size: int64(len(b))}, nil
}

// hostFixture is a real runtime.Host on a simulated DGX A100 whose
// fetcher serves s3://b/<id>, with the oip adapters over it.
type hostFixture struct {
	host    *runtime.Host
	inv     *device.Inventory
	backend oip.Backend
	views   oip.HostViews
}

func newHostFixture(t testing.TB, ids ...string) *hostFixture {
	t.Helper()
	return newHostFixtureWith(t, runtime.Config{MaxBatch: 16}, ids...)
}

// newHostFixtureWith is newHostFixture with cfg.
func newHostFixtureWith(t testing.TB, cfg runtime.Config, ids ...string) *hostFixture {
	t.Helper()
	inv, err := device.Open(context.Background(), device.Options{Simulate: "dgxa100"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { inv.Close() })
	f := mapFetcher{}
	for _, id := range ids {
		f["s3://b/"+id] = linearKernel(t, id)
	}
	h, err := runtime.New(cfg, runtime.Deps{Inventory: inv, Fetcher: f})
	if err != nil {
		t.Fatal(err)
	}
	return &hostFixture{host: h, inv: inv, backend: oip.HostBackend(h), views: oip.HostViewsFor(h, inv)}
}

// compiled returns the CompiledKernel document of linearKernel(id), at
// s3://b/<id>.
func compiled(t testing.TB, id string) []byte {
	t.Helper()
	md := contracts.NewKernelMetadata(id, "bp-"+id, id)
	md.InputShape, md.OutputShape, md.ParameterCount = []int{4}, []int{3}, 15
	md.DeviceRequirements = []string{"cuda"}
	md.MemoryFootprintMB = 64
	md.CompilationTarget = "esper-kernel/v1"
	ck := contracts.NewCompiledKernel(md.BlueprintID, "s3://b/"+id, md)
	ck.KernelID = id
	return ck.AppendJSON(nil)
}

// The host's kernels are models: a loaded one READY with its shapes,
// placement, executor, degradation and largest batch; one that failed to
// load UNAVAILABLE with the reason; an unknown name no model.
func TestHostBackendModels(t *testing.T) {
	f := newHostFixture(t)
	ctx := context.Background()
	if _, err := f.host.Load(ctx, runtime.LoadRequest{Data: linearKernel(t, "k")}); err != nil {
		t.Fatal(err)
	}
	if _, err := f.host.Load(ctx, runtime.LoadRequest{Name: "bad", Data: []byte("not a kernel")}); err == nil {
		t.Fatal("garbage loaded")
	}
	m, ok := f.backend.Model("k")
	want := oip.ModelInfo{Name: "k", Version: "1", State: oip.StateReady, InputShape: []int{4}, OutputShape: []int{3},
		Placement: "cuda:7", Executor: "cpu-f32", Degraded: true,
		DegradedReason: "placed on cuda:7, executed on cpu because no GPU backend is built in", MaxBatch: 16}
	if h, _ := m.Handle.(*runtime.Model); !ok || h == nil || h.Name() != "k" {
		t.Fatalf("model k has no handle: %+v", m)
	}
	m.Handle = nil
	if fmt.Sprintf("%+v", m) != fmt.Sprintf("%+v", want) {
		t.Fatalf("model k:\n got %+v\nwant %+v", m, want)
	}
	bad, ok := f.backend.Model("bad")
	if !ok || bad.State != oip.StateUnavailable || !strings.Contains(bad.Reason, "malformed kernel file") || bad.InputShape != nil {
		t.Fatalf("model bad: %+v", bad)
	}
	if _, ok := f.backend.Model("nope"); ok {
		t.Fatal("an unknown name is a model")
	}
	models := f.backend.Models()
	if len(models) != 2 || models[0].Name != "bad" || models[1].Name != "k" || models[1].State != oip.StateReady {
		t.Fatalf("models %+v", models)
	}
	if ok, why := f.backend.Ready(); ok || why != "loading the kernel repository" {
		t.Errorf("ready %v %q before the host ran its start-up", ok, why)
	}
}

// Inference through the adapter returns the runtime's output and says
// where it ran; the runtime's errors come back with their class.
func TestHostBackendInfer(t *testing.T) {
	f := newHostFixture(t)
	ctx := context.Background()
	if _, err := f.host.Load(ctx, runtime.LoadRequest{Data: linearKernel(t, "k")}); err != nil {
		t.Fatal(err)
	}
	m, ok := f.backend.Model("k")
	if !ok {
		t.Fatal("no model k")
	}
	buf := make([]float32, 8)
	out, exec, err := f.backend.Infer(ctx, m, oip.KernelRequest{Input: oip.Tensor{Shape: []int{2, 4}, Data: []float32{1, 2, 3, -4, 0, 0, 0, 0}}, Out: buf})
	if err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(out.Shape, out.Data) != "[2 3] [3 7.5 0 0 0.5 0]" {
		t.Errorf("output %v %v", out.Shape, out.Data)
	}
	if &out.Data[0] != &buf[0] {
		t.Error("the output was not computed into the buffer given for it")
	}
	// A buffer too small is not used.
	small := make([]float32, 5)
	if out, _, err := f.backend.Infer(ctx, m, oip.KernelRequest{Input: oip.Tensor{Shape: []int{2, 4}, Data: make([]float32, 8)}, Out: small}); err != nil || &out.Data[0] == &small[0] || len(out.Data) != 6 {
		t.Errorf("with a buffer of 5 for 6 values: %d values, err %v", len(out.Data), err)
	}
	if exec.PlacedOn != "cuda:7" || exec.ExecutedOn != "cpu" || exec.Executor != "cpu-f32" || !exec.Fallback ||
		!strings.Contains(exec.Reason, "no GPU backend") {
		t.Errorf("exec %+v", exec)
	}
	if _, _, err := f.backend.Infer(ctx, oip.ModelInfo{Name: "nope"}, oip.KernelRequest{Input: oip.Tensor{Shape: []int{1, 4}, Data: make([]float32, 4)}}); failure.ClassOf(err) != failure.NotFound {
		t.Errorf("unknown model: %v", err)
	}
	st, ok := f.backend.(oip.StatsBackend).ModelStats("k")
	if b, _ := json.Marshal(st); !ok || !bytes.Contains(b, []byte(`"calls":2`)) || !bytes.Contains(b, []byte(`"breaker":"closed"`)) {
		t.Errorf("stats %s", b)
	}
	// A handle outlives its kernel: the kernel unloaded, its inference is
	// refused, not run on freed state.
	if err := f.host.Unload(ctx, "k"); err != nil {
		t.Fatal(err)
	}
	if _, _, err := f.backend.Infer(ctx, m, oip.KernelRequest{Input: oip.Tensor{Shape: []int{1, 4}, Data: make([]float32, 4)}}); failure.ClassOf(err) != failure.Unavailable {
		t.Errorf("a handle to an unloaded kernel: %v (%s), want Unavailable", err, failure.ClassOf(err))
	}
}

// POST /v1/kernels' body (a CompiledKernel document, bare or wrapped with
// loading options) and POST /v1/placement/plan's (compiled_kernel,
// metadata or a bare document) are read here, naming what is wrong.
func TestHostViewsLoadAndPlan(t *testing.T) {
	f := newHostFixture(t, "k", "k2")
	ctx := context.Background()
	doc := compiled(t, "k")
	v, created, err := f.views.LoadKernel(ctx, doc)
	if err != nil || !created || v.(runtime.KernelView).Name != "k" {
		t.Fatalf("bare document: %v created %v", err, created)
	}
	if _, created, err := f.views.LoadKernel(ctx, doc); err != nil || created {
		t.Fatalf("the same document again: %v created %v, want unchanged", err, created)
	}
	wrapped := fmt.Sprintf(`{"compiled_kernel":%s,"name":"n","layer_name":"enc","seed_idx":2,"cpu_fallback":"deny"}`, compiled(t, "k2"))
	v, created, err = f.views.LoadKernel(ctx, []byte(wrapped))
	kv, _ := v.(runtime.KernelView)
	if err != nil || !created || kv.Name != "n" || kv.Layer != "enc" || kv.SeedIdx != 2 || kv.Fallback != "deny" {
		t.Fatalf("wrapped document: %+v %v", kv, err)
	}
	for _, c := range []struct {
		name, body, msg string
	}{
		{"not an object", `[1]`, "load request: "},
		{"a bad policy", fmt.Sprintf(`{"compiled_kernel":%s,"cpu_fallback":"sometimes"}`, compiled(t, "k2")), `cpu_fallback: cpu fallback "sometimes": want allow, deny or degraded`},
		{"no document", `{"name":"x"}`, ""},
	} {
		_, _, err := f.views.LoadKernel(ctx, []byte(c.body))
		if failure.ClassOf(err) != failure.BadInput || !strings.Contains(fmt.Sprint(err), c.msg) {
			t.Errorf("%s: %v (%s), want BadInput with %q", c.name, err, failure.ClassOf(err), c.msg)
		}
	}

	var md contracts.KernelMetadata
	var ck contracts.CompiledKernel
	if err := json.Unmarshal(compiled(t, "p"), &ck); err != nil {
		t.Fatal(err)
	}
	md = ck.Metadata
	mdJSON := md.AppendJSON(nil)
	for name, body := range map[string]string{
		"compiled_kernel": fmt.Sprintf(`{"compiled_kernel":%s,"batch":8}`, compiled(t, "p")),
		"metadata":        fmt.Sprintf(`{"metadata":%s,"batch":8}`, mdJSON),
		"bare document":   string(compiled(t, "p")),
	} {
		v, err := f.views.PlanPlacement(ctx, []byte(body))
		pv, _ := v.(runtime.PlacementView)
		if err != nil || !strings.HasPrefix(pv.Device, "cuda:") {
			t.Errorf("plan from %s: %+v %v", name, pv.Device, err)
		}
	}
	if _, err := f.views.PlanPlacement(ctx, []byte(`{}`)); failure.ClassOf(err) != failure.BadInput || !strings.Contains(err.Error(), "give compiled_kernel, metadata, or a CompiledKernel document") {
		t.Errorf("an empty plan request: %v", err)
	}
	if _, err := f.views.Kernel(ctx, "nope"); failure.ClassOf(err) != failure.NotFound || err.Error() != `kernel "nope" is not loaded` {
		t.Errorf("an unknown kernel's view: %v", err)
	}
}

// The adapter behind the real handler: the routes answer from the host.
func TestHostAdapterOverHTTP(t *testing.T) {
	f := newHostFixture(t, "k")
	if _, err := f.host.Load(context.Background(), runtime.LoadRequest{Data: linearKernel(t, "k")}); err != nil {
		t.Fatal(err)
	}
	fx := &fixture{handler: oip.NewHandler(f.backend, f.views, oip.Options{}, nil)}
	w := fx.call("POST", "/v2/models/k/infer", []byte(`{"inputs":[{"name":"input","shape":[1,4],"datatype":"FP32","data":[1,2,3,-4]}]}`), nil)
	if w.Code != http.StatusOK || !strings.Contains(w.Body.String(), `"data":[3,7.5,0]`) {
		t.Fatalf("infer: %d %s", w.Code, w.Body)
	}
	w = fx.call("POST", "/v2/models/k/infer", []byte(`{"inputs":[{"name":"input","shape":[1,5],"datatype":"FP32","data":[1,2,3,4,5]}]}`), nil)
	if w.Code != http.StatusBadRequest || !strings.Contains(w.Body.String(), `inputs[0].shape [1 5] does not match model \"k\" input [-1 4]`) {
		t.Fatalf("a wrong shape: %d %s", w.Code, w.Body)
	}
	w = fx.call("POST", "/v2/models/k/infer", []byte(`{"inputs":[{"name":"input","shape":[17,4],"datatype":"FP32","data":[`+strings.Repeat("0,", 67)+`0]}]}`), nil)
	if w.Code != http.StatusRequestEntityTooLarge || !strings.Contains(w.Body.String(), "max_batch of 16") {
		t.Fatalf("a batch over max_batch: %d %s", w.Code, w.Body)
	}
	for path, want := range map[string]string{
		"/v1/devices":   `"source":"simulated`,
		"/v1/kernels":   `"failed":{}`,
		"/v1/kernels/k": `"executed_on":"cpu"`,
		"/v1/seeds":     `"layer":"k"`,
		"/v1/layers":    `"layer_name":"k"`,
	} {
		if w := fx.call("GET", path, nil, nil); w.Code != http.StatusOK || !strings.Contains(w.Body.String(), want) {
			t.Errorf("GET %s: %d %s, want %s", path, w.Code, w.Body, want)
		}
	}
}
