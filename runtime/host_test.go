package runtime

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/esper/kasmina-host/contracts"
	"github.com/esper/kasmina-host/device"
	"github.com/esper/kasmina-host/kernels"
	"github.com/esper/kasmina-host/kernels/source"
	"github.com/esper/kasmina-host/runtime/failure"
	"github.com/esper/kasmina-host/runtime/oona"
	"github.com/esper/kasmina-host/runtime/placement"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// linearKernel writes a Linear(4→3)+ReLU kernel whose output for x is
// relu([x0+x1, x2−x3, −x0] + [0, 0.5, −1]).
func linearKernel(t testing.TB, id string, reqs []string) []byte {
	t.Helper()
	return linearKernelWith(t, id, reqs, "esper-kernel/v1")
}

// linearKernelTarget is linearKernel compiled for target.
func linearKernelTarget(t testing.TB, id, target string) []byte {
	t.Helper()
	return linearKernelWith(t, id, nil, target)
}

func linearKernelWith(t testing.TB, id string, reqs []string, target string) []byte {
	t.Helper()
	mod := &kernels.Module{Type: "sequential", Layers: []*kernels.Module{
		{Type: "linear", InFeatures: 4, OutFeatures: 3, Bias: true},
		{Type: "relu"},
	}}
	w := []float32{1, 1, 0, 0, 0, 0, 1, -1, -1, 0, 0, 0}
	b := []float32{0, 0.5, -1}
	md := contracts.NewKernelMetadata(id, "bp-"+id, id)
	md.InputShape, md.OutputShape, md.ParameterCount = []int{4}, []int{3}, 15
	md.DeviceRequirements = reqs
	md.MemoryFootprintMB = 64
	md.CompilationTarget = target
	var buf bytes.Buffer
	if err := kernels.WriteKernel(&buf, mod, []kernels.Tensor{
		kernels.F32Tensor("0.weight", []int{3, 4}, w), kernels.F32Tensor("0.bias", []int{3}, b),
	}, &md); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func expected(x []float32) []float32 {
	r := func(v float32) float32 { return max(v, 0) }
	return []float32{r(x[0] + x[1]), r(x[2] - x[3] + 0.5), r(-x[0] - 1)}
}

// recordingPublisher is a Bus that records what is published and brings
// no command and no epoch.
type recordingPublisher struct {
	mu   sync.Mutex
	msgs []published
}

func (p *recordingPublisher) ConsumeCommands(ctx context.Context, _ oona.CommandHandler) error {
	<-ctx.Done()
	return nil
}

func (p *recordingPublisher) ConsumeEpochs(ctx context.Context, _ oona.EpochFunc) error {
	<-ctx.Done()
	return nil
}

// published is one message a recordingPublisher took, its payload as the
// payload wrote itself.
type published struct {
	topic           contracts.TopicName
	senderID, trace string
	payload         []byte
}

func (p *recordingPublisher) PublishPayload(topic contracts.TopicName, senderID, traceID string, pl oona.Payload) error {
	if err := pl.Validate(); err != nil {
		return err
	}
	p.mu.Lock()
	p.msgs = append(p.msgs, published{topic, senderID, traceID, pl.AppendJSON(nil)})
	p.mu.Unlock()
	return nil
}

func env(vars map[string]string) func(string) (string, bool) {
	return func(k string) (string, bool) { v, ok := vars[k]; return v, ok }
}

func openInventory(t testing.TB, simulate string, vars map[string]string) *device.Inventory {
	t.Helper()
	inv, err := device.Open(context.Background(), device.Options{Simulate: simulate, LookupEnv: env(vars),
		Clock: device.NewManualClock(time.Unix(1_800_000_000, 0))})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { inv.Close() })
	return inv
}

// newHost returns a host on inv publishing to a recordingPublisher, with
// a fresh registry; deps may add a fetcher, resolver, repository or store.
func newHost(t testing.TB, inv Inventory, cfg Config, deps ...func(*Deps)) (*Host, *recordingPublisher, *prometheus.Registry) {
	t.Helper()
	reg := prometheus.NewRegistry()
	pub := &recordingPublisher{}
	d := Deps{Inventory: inv, Bus: pub, Registerer: reg}
	for _, f := range deps {
		f(&d)
	}
	h, err := New(cfg, d)
	if err != nil {
		t.Fatal(err)
	}
	return h, pub, reg
}

func withFetcher(f Fetcher) func(*Deps)       { return func(d *Deps) { d.Fetcher = f } }
func withResolver(r Resolver) func(*Deps)     { return func(d *Deps) { d.Resolver = r } }
func withStore(s StateStore) func(*Deps)      { return func(d *Deps) { d.Store = s } }
func withRepository(r Repository) func(*Deps) { return func(d *Deps) { d.Repository = &r } }

// declareLayer, setSeedState and setAlpha are the Apply of the ops.
func declareLayer(h *Host, name string) (int, error) {
	o, err := h.Apply(context.Background(), DeclareLayer{Layer: name})
	if err != nil {
		return -1, err
	}
	return o.LayerID, nil
}

func setSeedState(h *Host, layer string, idx int, to contracts.SeedState, why string) error {
	_, err := h.Apply(context.Background(), SetSeedState{Layer: layer, SeedIdx: idx, State: to, Why: why})
	return err
}

func setAlpha(h *Host, layer string, idx int, alpha float64) error {
	_, err := h.Apply(context.Background(), SetAlpha{Layer: layer, SeedIdx: idx, Alpha: alpha})
	return err
}

// failedLoads maps the kernels whose last load failed to the reason.
func failedLoads(h *Host) map[string]string {
	out := map[string]string{}
	for _, st := range h.Models() {
		if st.Status == ModelFailed {
			out[st.Name] = st.Reason
		}
	}
	return out
}

// handle runs a bus command through the host's command consumer adapter.
// layerSlot is slot idx of layer name.
func layerSlot(t testing.TB, h *Host, name string, idx int) SlotView {
	t.Helper()
	v, ok := h.Layer(name)
	if !ok || idx >= len(v.Seeds) {
		t.Fatalf("no slot %s/%d in %+v", name, idx, v)
	}
	return v.Seeds[idx]
}

// serves says whether the host acts on bus commands for the layer.
func serves(h *Host, layer string) bool {
	_, ok := commandHandler{h}.ServesLayer(oona.Target{LayerName: layer, LayerID: -1})
	return ok
}

func handle(ctx context.Context, h *Host, p oona.CommandPayload) error {
	return commandHandler{h}.HandleCommand(ctx, oona.Command{Message: contracts.NewOonaMessage("tamiyo", "t", contracts.TopicControlKasminaCommands, nil), Payload: p})
}

func TestLoadPlacesOnGPUAndExecutesOnCPU(t *testing.T) {
	inv := openInventory(t, "dgxa100", nil)
	h, _, reg := newHost(t, inv, Config{})
	v, err := h.Load(context.Background(), LoadRequest{Data: linearKernel(t, "k1", []string{"cuda"})})
	if err != nil {
		t.Fatal(err)
	}
	// Best fit: the GPU with the least free memory that still fits (cuda:7).
	if v.Placement.Device != "cuda:7" || v.Placement.UUID == "" || v.ExecutedOn != "cpu" {
		t.Fatalf("placement %+v executed on %s", v.Placement, v.ExecutedOn)
	}
	if !v.Degraded || !strings.Contains(v.DegradedReason, noGPUBackend) {
		t.Errorf("GPU-placed kernel should say it executes on the CPU: %q", v.DegradedReason)
	}
	if len(v.Placement.Candidates) != 9 {
		t.Errorf("%d candidates, want 8 GPUs and the CPU", len(v.Placement.Candidates))
	}
	x := []float32{1, 2, 3, -4}
	res, err := h.Infer(context.Background(), "k1", Request{Input: x, Shape: []int{1, 4}})
	if err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(res.Output) != fmt.Sprint(expected(x)) || fmt.Sprint(res.Shape) != "[1 3]" {
		t.Fatalf("output %v shape %v, want %v", res.Output, res.Shape, expected(x))
	}
	if res.Exec.PlacedOn != "cuda:7" || res.Exec.ExecutedOn != "cpu" || !res.Exec.Fallback {
		t.Errorf("exec info %+v", res.Exec)
	}
	if got := testutil.ToFloat64(h.metrics.requests.WithLabelValues("k1", "cuda:7", cpu.Name(), "success")); got != 1 {
		t.Errorf("requests metric = %v", got)
	}
	if n, err := testutil.GatherAndCount(reg, "kasmina_kernel_reserved_bytes"); err != nil || n != 1 {
		t.Errorf("reserved series = %d %v", n, err)
	}
}

func TestNoGPUFallsBackDegraded(t *testing.T) {
	inv := openInventory(t, "dgxa100", map[string]string{"CUDA_VISIBLE_DEVICES": ""})
	h, _, reg := newHost(t, inv, Config{})
	v, err := h.Load(context.Background(), LoadRequest{Data: linearKernel(t, "k", []string{"cuda"})})
	if err != nil {
		t.Fatal(err)
	}
	if v.Placement.Device != "cpu" || !v.Placement.Degraded || !strings.Contains(v.Placement.FallbackReason, "no GPU is visible") {
		t.Fatalf("placement %+v", v.Placement)
	}
	if n := testutil.ToFloat64(h.metrics.fallbacks.WithLabelValues("k", "no_gpu")); n != 1 {
		t.Errorf("fallback counter = %v", n)
	}
	_ = reg
	deny := placement.FallbackDeny
	_, err = h.Load(context.Background(), LoadRequest{Name: "k2", Data: linearKernel(t, "k2", []string{"cuda"}), Fallback: &deny})
	if !failure.Is(err, failure.Refused) || !strings.Contains(err.Error(), "denied") {
		t.Fatalf("deny policy: %v", err)
	}
	if _, ok := failedLoads(h)["k2"]; !ok {
		t.Error("refused kernel not listed as failed")
	}
}

// TestInferErrors: each refusal carries its class and says what is wrong
// once, naming the kernel or the input (no "bad input: bad input: ...").
func TestInferErrors(t *testing.T) {
	inv := openInventory(t, "dgxa100", nil)
	h, _, _ := newHost(t, inv, Config{MaxBatch: 8})
	if _, err := h.Load(context.Background(), LoadRequest{Data: linearKernel(t, "k", nil)}); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name  string
		model string
		req   Request
		class failure.Class
		msg   string
	}{
		{"unknown kernel", "nope", Request{Input: make([]float32, 4), Shape: []int{1, 4}}, failure.NotFound, `no kernel or layer "nope" is served here`},
		{"wrong feature size", "k", Request{Input: make([]float32, 5), Shape: []int{1, 5}}, failure.BadInput, `input dimension 1 is 5; kernel "k" takes [batch, 4]`},
		{"wrong rank", "k", Request{Input: make([]float32, 4), Shape: []int{4}}, failure.BadInput, `input has shape [4]; kernel "k" takes [batch, 4]`},
		{"data shorter than shape", "k", Request{Input: make([]float32, 4), Shape: []int{2, 4}}, failure.BadInput, `input holds 4 values; shape [2 4] needs 8`},
		{"batch over the cap", "k", Request{Input: make([]float32, 36), Shape: []int{9, 4}}, failure.TooLarge, `batch 9 is over the host's batch limit of 8`},
		{"zero batch", "k", Request{Input: nil, Shape: []int{0, 4}}, failure.BadInput, `batch 0: kernel "k" needs at least one sample`},
		{"default of the wrong size", "k", Request{Input: make([]float32, 4), Shape: []int{1, 4}, Default: make([]float32, 2)}, failure.BadInput, `default output holds 2 values; kernel "k" at batch 1 gives 3`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := h.Infer(context.Background(), tt.model, tt.req)
			if got := failure.ClassOf(err); err == nil || got != tt.class {
				t.Fatalf("err = %v (class %v), want class %v", err, got, tt.class)
			}
			if err.Error() != tt.msg {
				t.Fatalf("message %q, want %q", err, tt.msg)
			}
		})
	}
	if n := testutil.ToFloat64(h.metrics.failures.WithLabelValues("k", reasonBadInput)); n != 5 {
		t.Errorf("bad_input failures = %v, want 5", n)
	}
	if n := testutil.ToFloat64(h.metrics.failures.WithLabelValues("k", reasonTooLarge)); n != 1 {
		t.Errorf("too_large failures = %v, want 1", n)
	}
}

// A GPU lost while requests run: its kernels move and no request fails.
func TestGPULostWhileServing(t *testing.T) {
	inv := openInventory(t, "dgxa100", nil)
	h, _, reg := newHost(t, inv, Config{})
	ctx := context.Background()
	for i := 0; i < 3; i++ {
		if _, err := h.Load(ctx, LoadRequest{Data: linearKernel(t, fmt.Sprint("k", i), []string{"cuda"})}); err != nil {
			t.Fatal(err)
		}
	}
	lostUUID := inv.Snapshot().Devices[7].UUID
	var failed, served atomic.Int64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for g := 0; g < 4; g++ {
		wg.Add(1)
		go func(g int) {
			defer wg.Done()
			x := []float32{1, 2, 3, 4}
			for {
				select {
				case <-stop:
					return
				default:
				}
				if _, err := h.Infer(ctx, fmt.Sprint("k", g%3), Request{Input: x, Shape: []int{1, 4}}); err != nil {
					failed.Add(1)
				} else {
					served.Add(1)
				}
			}
		}(g)
	}
	time.Sleep(20 * time.Millisecond)
	if err := inv.Simulator().Lose(lostUUID); err != nil {
		t.Fatal(err)
	}
	if err := inv.Refresh(ctx); err != nil {
		t.Fatal(err)
	}
	moves := h.replan()
	time.Sleep(20 * time.Millisecond)
	close(stop)
	wg.Wait()
	t.Logf("GPU lost under load: %d requests served, %d failed, %d kernels moved", served.Load(), failed.Load(), len(moves))
	if failed.Load() != 0 {
		t.Fatalf("%d requests failed", failed.Load())
	}
	if len(moves) != 3 {
		t.Fatalf("%d moves, want 3: %+v", len(moves), moves)
	}
	for _, v := range h.Kernels() {
		if v.Placement.Device == "cuda:7" || len(v.Moves) != 1 || !strings.Contains(v.Moves[0].Reason, "unhealthy") {
			t.Errorf("%s still on %s, moves %+v", v.Name, v.Placement.Device, v.Moves)
		}
	}
	if n, _ := testutil.GatherAndCount(reg, "kasmina_replacements_total"); n == 0 {
		t.Error("no replacement metric")
	}
	for _, mv := range moves {
		if n := testutil.ToFloat64(h.metrics.replacements.WithLabelValues(mv.From, mv.To, "unhealthy")); n < 1 {
			t.Errorf("replacements{from=%s,to=%s,reason=unhealthy} = %v", mv.From, mv.To, n)
		}
	}
	if h.ledger.ReservedMiB("cuda:7") != 0 {
		t.Errorf("reservations left on the lost GPU: %v", h.ledger.ReservedMiB("cuda:7"))
	}
}

func TestMemoryPressureMovesKernels(t *testing.T) {
	inv := openInventory(t, "dgxa100", nil)
	h, _, _ := newHost(t, inv, Config{})
	if _, err := h.Load(context.Background(), LoadRequest{Data: linearKernel(t, "k", []string{"cuda"})}); err != nil {
		t.Fatal(err)
	}
	d := inv.Snapshot().Devices[7]
	// The training job takes all but 1 MiB of the GPU the kernel is on.
	if err := inv.Simulator().SetMemoryUsed(d.UUID, d.MemoryUsedBytes+d.MemoryFreeBytes-(1<<20)); err != nil {
		t.Fatal(err)
	}
	if err := inv.Refresh(context.Background()); err != nil {
		t.Fatal(err)
	}
	moves := h.replan()
	if len(moves) != 1 || moves[0].From != "cuda:7" || !strings.Contains(moves[0].Reason, "memory pressure") {
		t.Fatalf("moves %+v", moves)
	}
	if n := testutil.ToFloat64(h.metrics.replacements.WithLabelValues("cuda:7", moves[0].To, "memory_pressure")); n != 1 {
		t.Errorf("replacements{reason=memory_pressure} = %v, want 1", n)
	}
}

func TestHealthSignalsPublished(t *testing.T) {
	inv := openInventory(t, "dgxa100", nil)
	h, pub, _ := newHost(t, inv, Config{HostID: "node-a"})
	h.epoch.Store(12) // as the bus's system.events.epoch consumer does
	if _, err := h.Load(context.Background(), LoadRequest{Data: linearKernel(t, "k", nil)}); err != nil {
		t.Fatal(err)
	}
	if sigs := h.emitSignals(); len(sigs) != 0 {
		t.Fatalf("signals without any call: %v", sigs)
	}
	for i := 0; i < 10; i++ {
		x := []float32{float32(i), 1, float32(i) * 2, 0}
		if _, err := h.Infer(context.Background(), "k", Request{Input: x, Shape: []int{1, 4}}); err != nil {
			t.Fatal(err)
		}
	}
	sigs := h.emitSignals()
	if len(sigs) != 1 {
		t.Fatalf("%d signals", len(sigs))
	}
	s := sigs[0]
	if err := s.Validate(); err != nil {
		t.Fatal(err)
	}
	// The third unit (relu(−x0 − 1)) never fires for x0 ≥ 0.
	if s.DeadNeuronRatio < 0.33 || s.DeadNeuronRatio > 0.34 || s.Epoch != 12 || s.ChunkID != 0 || s.LayerID != LayerIDOf("k") {
		t.Errorf("signal %+v", s)
	}
	if len(pub.msgs) != 1 {
		t.Fatalf("%d messages published", len(pub.msgs))
	}
	m := pub.msgs[0]
	if m.topic != contracts.TopicTelemetrySeedHealth || m.senderID != "kasmina-host.node-a" || m.trace != "k/0/k" {
		t.Errorf("envelope %+v", m)
	}
	back, err := contracts.DecodeHealthSignal(m.payload)
	if err != nil {
		t.Fatalf("payload is not exactly a HealthSignal: %v\n%s", err, m.payload)
	}
	if back != s {
		t.Errorf("payload %+v != signal %+v", back, s)
	}
	if len(h.Signals()) != 1 {
		t.Error("latest signal not kept")
	}
	// The next window has its own chunk id.
	h.Infer(context.Background(), "k", Request{Input: make([]float32, 4), Shape: []int{1, 4}})
	if sigs := h.emitSignals(); len(sigs) != 1 || sigs[0].ChunkID != 1 {
		t.Errorf("second window: %+v", sigs)
	}
}

func TestSeedCommands(t *testing.T) {
	inv := openInventory(t, "dgxa100", nil)
	data := linearKernel(t, "kernel-abc", []string{"cuda"})
	fetch := fetcherFunc(func(_ context.Context, ref, _ string) ([]byte, error) {
		if ref != "s3://esper-artifacts/kernels/kernel-abc/kernel.safetensors" {
			return nil, fmt.Errorf("unexpected ref %q", ref)
		}
		return data, nil
	})
	urza := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/api/v1/kernels/kernel-abc" {
			http.NotFound(w, r)
			return
		}
		fmt.Fprint(w, `{"id":"kernel-abc","blueprint_id":"bp-1","status":"validated","compilation_pipeline":"fast",
			"kernel_binary_ref":"s3://esper-artifacts/kernels/kernel-abc/kernel.safetensors","validation_report":{},
			"created_at":"2026-11-24T10:00:00","updated_at":"2026-11-24T10:00:00"}`)
	}))
	defer urza.Close()
	h, _, _ := newHost(t, inv, Config{GraftingRamp: -1}, withFetcher(fetch), withResolver(&Urza{BaseURL: urza.URL}))
	ctx := context.Background()
	cmd := func(p oona.CommandPayload) error { return handle(ctx, h, p) }
	if serves(h, "layer1") {
		t.Fatal("a layer nobody declared is served")
	}
	if _, err := declareLayer(h, "layer1"); err != nil {
		t.Fatal(err)
	}
	if err := cmd(&oona.LoadKernel{LayerName: "layer1", SeedIdx: 2, ArtifactID: "kernel-abc"}); err != nil {
		t.Fatal(err)
	}
	if err := cmd(&oona.LoadKernel{LayerName: "layer1", SeedIdx: 2, ArtifactID: "kernel-abc"}); err != nil {
		t.Fatalf("redelivered load_kernel: %v", err)
	}
	if !serves(h, "layer1") || serves(h, "layer9") {
		t.Error("ServesLayer wrong")
	}
	seeds := h.Seeds()
	if len(seeds) != DefaultNumSeeds || seeds[2].State != contracts.SeedGerminated || seeds[2].Kernel != "kernel-abc" ||
		seeds[2].LayerID != LayerIDOf("layer1") || seeds[2].ArtifactID != "kernel-abc" {
		t.Fatalf("seeds %+v", seeds)
	}
	first := seeds[2].Seed.SeedID
	for _, st := range []contracts.SeedState{contracts.SeedTraining, contracts.SeedGrafting} {
		if err := cmd(&oona.SetSeedState{LayerName: "layer1", SeedIdx: 2, State: st}); err != nil {
			t.Fatal(err)
		}
	}
	// Illegal: grafting → dormant is a permanent failure.
	err := cmd(&oona.SetSeedState{LayerName: "layer1", SeedIdx: 2, State: contracts.SeedDormant})
	if !failure.ClassOf(err).Permanent() || !errors.Is(err, contracts.ErrIllegalTransition) {
		t.Fatalf("illegal transition: %v", err)
	}
	if err := cmd(&oona.SetAlpha{LayerName: "layer1", SeedIdx: 2, Alpha: 0.25}); err != nil {
		t.Fatal(err)
	}
	x := []float32{1, 2, 3, -4}
	def := []float32{4, 4, 4}
	res, err := h.Infer(ctx, "kernel-abc", Request{Input: x, Shape: []int{1, 4}, Default: def})
	if err != nil {
		t.Fatal(err)
	}
	k := expected(x)
	for i := range k {
		if want := 0.75*def[i] + 0.25*k[i]; res.Output[i] != want {
			t.Fatalf("blend[%d] = %v, want %v", i, res.Output[i], want)
		}
	}
	if err := cmd(&oona.UnloadKernel{LayerName: "layer1", SeedIdx: 2}); err != nil {
		t.Fatal(err)
	}
	if _, ok := h.Kernel("kernel-abc"); ok {
		t.Fatal("kernel still loaded")
	}
	// The seed is culled and kept in its slot's history; a fresh dormant
	// seed takes the slot, and the next kernel.
	slot := layerSlot(t, h, "layer1", 2)
	if slot.State != contracts.SeedDormant || slot.Kernel != nil || slot.SeedID == first ||
		len(slot.History) != 1 || slot.History[0].SeedID != first || slot.History[0].State != contracts.SeedCulled {
		t.Fatalf("slot after unload %+v", slot)
	}
	if err := cmd(&oona.LoadKernel{LayerName: "layer1", SeedIdx: 2, ArtifactID: "kernel-abc"}); err != nil {
		t.Fatalf("a reload into the slot: %v", err)
	}
	if slot := layerSlot(t, h, "layer1", 2); slot.State != contracts.SeedGerminated || *slot.Kernel != "kernel-abc" {
		t.Fatalf("slot after the reload %+v", slot)
	}
	if err := cmd(&oona.LoadKernel{LayerName: "layer1", SeedIdx: 4, ArtifactID: "kernel-abc"}); failure.ClassOf(err) != failure.BadInput {
		t.Fatalf("seed_idx beyond num_seeds: %v, want BadInput", err)
	}
	if err := cmd(&oona.LoadKernel{LayerName: "layer1", SeedIdx: 3, ArtifactID: "missing"}); !failure.Is(err, failure.NotFound) {
		t.Fatalf("unknown artifact: %v", err)
	}
}

func TestGraftingRampsAlpha(t *testing.T) {
	now := time.Unix(1_800_000_000, 0)
	inv := openInventory(t, "dgxa100", nil)
	h, _, _ := newHost(t, inv, Config{GraftingRamp: 10 * time.Second, Now: func() time.Time { return now }})
	if _, err := h.Load(context.Background(), LoadRequest{Data: linearKernel(t, "k", nil), Layer: "l", SeedIdx: 0}); err != nil {
		t.Fatal(err)
	}
	for _, st := range []contracts.SeedState{contracts.SeedTraining, contracts.SeedGrafting} {
		if err := setSeedState(h, "l", 0, st, "test"); err != nil {
			t.Fatal(err)
		}
	}
	if a := h.Seeds()[0].Alpha; a != 0 {
		t.Fatalf("alpha at graft start = %v", a)
	}
	now = now.Add(5 * time.Second)
	if a := h.Seeds()[0].Alpha; a != 0.5 {
		t.Fatalf("alpha half-way = %v", a)
	}
	now = now.Add(time.Hour)
	if a := h.Seeds()[0].Alpha; a != 1 {
		t.Fatalf("alpha after ramp = %v", a)
	}
}

func TestUrzaShapes(t *testing.T) {
	md := `{"kernel_id":"k9","blueprint_id":"bp","name":"n","input_shape":[4],"output_shape":[3],"parameter_count":15,"memory_footprint_mb":1}`
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/api/v1/kernels/doc":
			fmt.Fprintf(w, `{"kernel_id":"k9","blueprint_id":"bp","binary_ref":"s3://b/k9","metadata":%s,"status":"validated"}`, md)
		case "/api/v1/kernels/flat":
			fmt.Fprint(w, `{"id":"flat","blueprint_id":"bp","status":"validated","kernel_binary_ref":"s3://b/flat"}`)
		case "/api/v1/kernels/broken":
			fmt.Fprint(w, `{"id":"broken"}`)
		case "/api/v1/kernels/flaky":
			http.Error(w, "busy", http.StatusServiceUnavailable)
		default:
			http.NotFound(w, r)
		}
	}))
	defer srv.Close()
	u := &Urza{BaseURL: srv.URL}
	r, err := u.Resolve(context.Background(), "doc")
	if err != nil || r.Compiled.BinaryRef != "s3://b/k9" || r.Compiled.Metadata.ParameterCount != 15 || r.MetadataFrom != FromDocument || r.Status != "validated" {
		t.Fatalf("document shape: %+v %v", r, err)
	}
	r, err = u.Resolve(context.Background(), "flat")
	if err != nil || r.Compiled.BinaryRef != "s3://b/flat" || r.Compiled.KernelID != "flat" || r.MetadataFrom != FromArtifact || r.Status != "validated" {
		t.Fatalf("flat shape: %+v %v", r, err)
	}
	if _, ok := r.Compiled.ValidationResults.Get("metadata_from"); ok {
		t.Error("the flat record is still marked in the contract's validation_results")
	}
	if _, err := u.Resolve(context.Background(), "broken"); err == nil || !strings.Contains(err.Error(), "kernel_binary_ref") {
		t.Fatalf("broken record: %v", err)
	}
	if _, err := u.Resolve(context.Background(), "gone"); !errors.Is(err, errUrzaNotFound) {
		t.Fatalf("404: %v", err)
	}
	if _, err := u.Resolve(context.Background(), "flaky"); err == nil || errors.Is(err, errUrzaNotFound) {
		t.Fatalf("503: %v", err)
	}
}

func TestQueueFullRefusesAtOnce(t *testing.T) {
	inv := openInventory(t, "dgxa100", nil)
	h, _, _ := newHost(t, inv, Config{Concurrency: 1, QueueDepth: 1})
	if _, err := h.Load(context.Background(), LoadRequest{Data: linearKernel(t, "k", nil)}); err != nil {
		t.Fatal(err)
	}
	// Hold the only slot and the only queue place.
	if err := h.admit.Acquire(context.Background()); err != nil {
		t.Fatal(err)
	}
	go h.Infer(context.Background(), "k", Request{Input: make([]float32, 4), Shape: []int{1, 4}})
	for h.admit.Queued() != 1 {
		time.Sleep(time.Millisecond)
	}
	_, err := h.Infer(context.Background(), "k", Request{Input: make([]float32, 4), Shape: []int{1, 4}})
	h.admit.Release()
	if !failure.Is(err, failure.QueueFull) || err.Error() != `kernel "k": queue full: 1 running, 1 waiting` {
		t.Fatalf("err = %v, want QueueFull naming the kernel and the limits", err)
	}
}

type fetcherFunc func(ctx context.Context, ref, sha string) ([]byte, error)

// Fetch returns what f returns as a source does: with the digest of the
// bytes, computed as they were read.
func (f fetcherFunc) Fetch(ctx context.Context, ref, sha string) (source.Blob, error) {
	b, err := f(ctx, ref, sha)
	if err != nil {
		return source.Blob{}, err
	}
	sum := sha256.Sum256(b)
	return source.Blob{Data: b, SHA256: hex.EncodeToString(sum[:]), Size: int64(len(b)), Origin: ref}, nil
}

// BenchmarkDispatchOverhead compares Host.Infer (lookup, shape checks,
// breaker, limiter, health window, metrics) with the kernel's own Run on a
// seed-sized kernel; the difference is the dispatch overhead per call.
func BenchmarkDispatchOverhead(b *testing.B) {
	inv := openInventory(b, "dgxa100", nil)
	h, _, _ := newHost(b, inv, Config{})
	data := linearKernel(b, "k", nil)
	if _, err := h.Load(context.Background(), LoadRequest{Data: data}); err != nil {
		b.Fatal(err)
	}
	k, err := kernels.Load(data, kernels.LoadOptions{})
	if err != nil {
		b.Fatal(err)
	}
	x := []float32{1, 2, 3, 4}
	out := make([]float32, 3)
	ctx := context.Background()
	b.Run("kernel.Run", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if err := k.Run(ctx, x, 1, out); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("Host.Infer", func(b *testing.B) {
		b.ReportAllocs()
		shape := []int{1, 4}
		for b.Loop() {
			if _, err := h.Infer(ctx, "k", Request{Input: x, Shape: shape, Out: out}); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// A kernel pinned to one GPU moves to the CPU when that GPU is lost, and
// requests keep succeeding.
func TestGPULostMovesPinnedKernelToCPU(t *testing.T) {
	inv := openInventory(t, "dgxa100", nil)
	h, _, _ := newHost(t, inv, Config{})
	ctx := context.Background()
	v, err := h.Load(ctx, LoadRequest{Data: linearKernel(t, "pinned", []string{"cuda:2"})})
	if err != nil || v.Placement.Device != "cuda:2" {
		t.Fatalf("placement %+v %v", v.Placement, err)
	}
	if err := inv.Simulator().Lose(inv.Snapshot().Devices[2].UUID); err != nil {
		t.Fatal(err)
	}
	if err := inv.Refresh(ctx); err != nil {
		t.Fatal(err)
	}
	moves := h.replan()
	if len(moves) != 1 || moves[0].To != "cpu" {
		t.Fatalf("moves %+v", moves)
	}
	v, _ = h.Kernel("pinned")
	if !v.Placement.Degraded || !v.Degraded {
		t.Errorf("a GPU kernel on the CPU should be degraded: %+v", v.Placement)
	}
	res, err := h.Infer(ctx, "pinned", Request{Input: []float32{1, 2, 3, 4}, Shape: []int{1, 4}})
	if err != nil || res.Exec.PlacedOn != "cpu" || !res.Exec.Fallback {
		t.Fatalf("after the move: %+v %v", res.Exec, err)
	}
}

// A kernel served directly can be unloaded and loaded again: its own seed
// goes with it, its layer id stays.
func TestDirectKernelReloads(t *testing.T) {
	inv := openInventory(t, "dgxa100", nil)
	h, _, _ := newHost(t, inv, Config{})
	ctx := context.Background()
	data := linearKernel(t, "k", nil)
	v1, err := h.Load(ctx, LoadRequest{Data: data})
	if err != nil {
		t.Fatal(err)
	}
	if err := h.Unload(ctx, "k"); err != nil {
		t.Fatal(err)
	}
	v2, err := h.Load(ctx, LoadRequest{Data: data})
	if err != nil {
		t.Fatalf("reload after unload: %v", err)
	}
	if v1.LayerID != v2.LayerID {
		t.Errorf("layer id changed from %d to %d", v1.LayerID, v2.LayerID)
	}
	if _, err := h.Load(ctx, LoadRequest{Data: data, Replace: true}); err != nil {
		t.Fatalf("replace: %v", err)
	}
	if n := len(h.Seeds()); n != 1 {
		t.Errorf("%d seeds after reloads, want 1", n)
	}
	if st := h.Stats().Cache; st.Hits < 2 {
		t.Errorf("reloads of the same bytes should hit the parsed-kernel cache: %+v", st)
	}
}

// FuzzParseUrzaRecord: no answer from Urza panics the resolver, and what it
// accepts is a CompiledKernel the contracts accept: it encodes and decodes
// back with a binary reference, as the load path needs.
func FuzzParseUrzaRecord(f *testing.F) {
	md := `{"kernel_id":"k9","blueprint_id":"bp","name":"n","input_shape":[4],"output_shape":[3],"parameter_count":15,"memory_footprint_mb":1}`
	f.Add([]byte(`{"kernel_id":"k9","blueprint_id":"bp","binary_ref":"s3://b/k9","metadata":` + md + `,"status":"validated"}`))
	f.Add([]byte(`{"id":"flat","blueprint_id":"bp","status":"validated","kernel_binary_ref":"s3://b/flat","checksum":"abc"}`))
	f.Add([]byte(`{"id":"broken"}`))
	f.Add([]byte(`{"binary_ref":"x","metadata":null}`))
	f.Fuzz(func(t *testing.T, body []byte) {
		r, err := parseUrzaRecord("requested", body)
		if err != nil {
			return
		}
		ck := r.Compiled
		if ck.BinaryRef == "" {
			t.Fatalf("accepted %q without a binary reference", body)
		}
		back, err := contracts.DecodeCompiledKernel(ck.AppendJSON(nil))
		if err != nil {
			t.Fatalf("accepted %q as a CompiledKernel the contracts refuse: %v", body, err)
		}
		if back.BinaryRef != ck.BinaryRef || back.KernelID != ck.KernelID {
			t.Fatalf("round trip changed %q: %+v", body, back)
		}
	})
}

// TestHealthSignalsReachTheBusAsTheContractsSignal: through a real bus
// (the embedded one, which writes the entry a Redis reader gets), the
// published entry's payload decodes to exactly the emitted HealthSignal
// and its envelope names this host and the seed.
func TestHealthSignalsReachTheBusAsTheContractsSignal(t *testing.T) {
	inv := openInventory(t, "dgxa100", nil)
	bus := oona.NewEmbeddedBus(nil, nil, oona.Config{HostID: "node-a"}, nil)
	defer bus.Close(context.Background())
	sub := bus.Subscribe(contracts.TopicTelemetrySeedHealth, 0)
	h, err := New(Config{HostID: "node-a"}, Deps{Inventory: inv, Bus: bus, Registerer: prometheus.NewRegistry()})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := h.Load(context.Background(), LoadRequest{Data: linearKernel(t, "k", nil)}); err != nil {
		t.Fatal(err)
	}
	if _, err := h.Infer(context.Background(), "k", Request{Input: []float32{1, 2, 3, 4}, Shape: []int{1, 4}}); err != nil {
		t.Fatal(err)
	}
	sigs := h.emitSignals()
	if len(sigs) != 1 {
		t.Fatalf("%d signals", len(sigs))
	}
	var fields map[string]string
	select {
	case fields = <-sub.C():
	case <-time.After(20 * time.Second):
		t.Fatal("no entry on telemetry.seed.health")
	}
	msg, err := oona.DecodeFields(fields)
	if err != nil {
		t.Fatal(err)
	}
	if msg.SenderID != "kasmina-host.node-a" || msg.TraceID != "k/0/k" || msg.Topic != contracts.TopicTelemetrySeedHealth {
		t.Errorf("envelope %+v", msg)
	}
	back, err := contracts.DecodeHealthSignal([]byte(fields[oona.FieldPayload]))
	if err != nil || back != sigs[0] {
		t.Fatalf("payload %s decodes to %+v (%v), want the emitted %+v", fields[oona.FieldPayload], back, err, sigs[0])
	}
}
