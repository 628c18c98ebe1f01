package runtime

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/esper/kasmina-host/contracts"
	"github.com/esper/kasmina-host/kernels"
	"github.com/esper/kasmina-host/runtime/admission"
	"github.com/esper/kasmina-host/runtime/failure"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// wideKernel writes a Linear(4→out) kernel without bias: a small file
// whose output has out elements per sample.
func wideKernel(t testing.TB, id string, out int) []byte {
	t.Helper()
	mod := &kernels.Module{Type: "sequential", Layers: []*kernels.Module{{Type: "linear", InFeatures: 4, OutFeatures: out}}}
	md := contracts.NewKernelMetadata(id, "bp-"+id, id)
	md.InputShape, md.OutputShape, md.ParameterCount = []int{4}, []int{out}, 4*out
	md.MemoryFootprintMB = 1
	md.CompilationTarget = "esper-kernel/v1"
	var buf bytes.Buffer
	if err := kernels.WriteKernel(&buf, mod, []kernels.Tensor{kernels.F32Tensor("0.weight", []int{out, 4}, make([]float32, 4*out))}, &md); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// TestOutputsAreBoundedByTheGraph: a request whose output and activations
// for its batch exceed MaxOutputBytes is refused (TooLarge, naming the
// limit) before anything is allocated, and the kernel's max batch says
// what fits. Before the limit, batch 512 of a 256 KiB-per-sample output
// allocated 128 MiB (batch 4096: 1 GiB) and ran.
func TestOutputsAreBoundedByTheGraph(t *testing.T) {
	inv := openInventory(t, "dgxa100", nil)
	ctx := context.Background()
	const out = 1 << 16 // 256 KiB of output per sample

	t.Run("default limit", func(t *testing.T) {
		h, _, _ := newHost(t, inv, Config{})
		if _, err := h.Load(ctx, LoadRequest{Data: wideKernel(t, "wide", out)}); err != nil {
			t.Fatal(err)
		}
		_, err := h.Infer(ctx, "wide", Request{Input: make([]float32, 512*4), Shape: []int{512, 4}})
		if failure.ClassOf(err) != failure.TooLarge || !strings.Contains(fmt.Sprint(err), "64.0 MiB") {
			t.Fatalf("batch 512 (128 MiB of output): err = %v, want TooLarge naming the 64 MiB limit", err)
		}
		if v, _ := h.Kernel("wide"); v.MaxBatch != 256 {
			t.Errorf("max_batch %d, want 256 (64 MiB / 256 KiB)", v.MaxBatch)
		}
	})

	t.Run("configured limit", func(t *testing.T) {
		h, _, _ := newHost(t, inv, Config{MaxOutputBytes: 1 << 20, MaxBatch: 64})
		v, err := h.Load(ctx, LoadRequest{Data: wideKernel(t, "wide", out)})
		if err != nil {
			t.Fatal(err)
		}
		if v.MaxBatch != 4 {
			t.Fatalf("max_batch %d, want 4 (1 MiB / 256 KiB)", v.MaxBatch)
		}
		if _, err := h.Infer(ctx, "wide", Request{Input: make([]float32, 16), Shape: []int{4, 4}}); err != nil {
			t.Fatalf("batch 4 fits: %v", err)
		}
		_, err = h.Infer(ctx, "wide", Request{Input: make([]float32, 20), Shape: []int{5, 4}})
		want := `batch 5 of kernel "wide" needs 1.2 MiB for its output and intermediate activations, over the host's limit of 1.0 MiB per request; its largest batch is 4`
		if failure.ClassOf(err) != failure.TooLarge || fmt.Sprint(err) != want {
			t.Fatalf("batch 5: %v\nwant %s", err, want)
		}
		// A small kernel keeps the host's batch limit.
		if v, err := h.Load(ctx, LoadRequest{Data: linearKernel(t, "small", nil)}); err != nil || v.MaxBatch != 64 {
			t.Fatalf("small kernel: max_batch %d, %v; want 64", v.MaxBatch, err)
		}
		// One sample over the limit: the kernel can never run, so it is
		// refused at load, naming the limit.
		_, err = h.Load(ctx, LoadRequest{Data: wideKernel(t, "huge", 1<<19)})
		if failure.ClassOf(err) != failure.TooLarge || !strings.Contains(fmt.Sprint(err), "over the host's limit of 1.0 MiB") {
			t.Fatalf("kernel over the limit at batch 1: %v", err)
		}
	})
}

// TestInferenceRacesUnload runs inference and load/unload cycles on one
// kernel at once: under -race, unload must never return while a request is
// starting on the kernel (a WaitGroup whose Add raced its Wait did), and
// every request either runs or is refused cleanly.
func TestInferenceRacesUnload(t *testing.T) {
	inv := openInventory(t, "dgxa100", nil)
	h, _, _ := newHost(t, inv, Config{})
	ctx := context.Background()
	data := linearKernel(t, "k", nil)
	if _, err := h.Load(ctx, LoadRequest{Data: data}); err != nil {
		t.Fatal(err)
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var served, refused atomic.Int64
	var unexpected atomic.Value
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			x := []float32{1, 2, 3, -4}
			for {
				select {
				case <-stop:
					return
				default:
				}
				_, err := h.Infer(ctx, "k", Request{Input: x, Shape: []int{1, 4}})
				switch c := failure.ClassOf(err); {
				case err == nil:
					served.Add(1)
				case c == failure.NotFound || c == failure.Unavailable:
					refused.Add(1)
				default:
					unexpected.Store(err)
				}
			}
		}()
	}
	for i := 0; i < 300; i++ {
		if err := h.Unload(ctx, "k"); err != nil {
			t.Fatalf("cycle %d: unload: %v", i, err)
		}
		if _, err := h.Load(ctx, LoadRequest{Data: data}); err != nil {
			t.Fatalf("cycle %d: load: %v", i, err)
		}
	}
	close(stop)
	wg.Wait()
	if err := unexpected.Load(); err != nil {
		t.Fatalf("a request failed neither by running nor by a clean refusal: %v", err)
	}
	t.Logf("%d served, %d refused during 300 load/unload cycles", served.Load(), refused.Load())
}

// TestCallerGoneIsNotAKernelFailure: requests whose caller went away or
// whose deadline passed before the kernel ran never count as the kernel's
// failures: they neither open its breaker (five disconnects used to open
// it and make the node unready) nor count in its failures.
func TestCallerGoneIsNotAKernelFailure(t *testing.T) {
	inv := openInventory(t, "dgxa100", nil)
	h, _, _ := newHost(t, inv, Config{BreakerThreshold: 2, Concurrency: 1, QueueDepth: 1})
	h.started.Store(true) // as Run does after its start-up
	if _, err := h.Load(context.Background(), LoadRequest{Data: linearKernel(t, "k", nil)}); err != nil {
		t.Fatal(err)
	}
	req := Request{Input: make([]float32, 4), Shape: []int{1, 4}}
	canceled, cancel := context.WithCancel(context.Background())
	cancel()
	expired, cancel2 := context.WithDeadline(context.Background(), time.Unix(0, 0))
	defer cancel2()
	for range 5 {
		if _, err := h.Infer(canceled, "k", req); failure.ClassOf(err) != failure.Canceled {
			t.Fatalf("canceled caller: %v (class %v), want Canceled", err, failure.ClassOf(err))
		}
		if _, err := h.Infer(expired, "k", req); failure.ClassOf(err) != failure.Timeout {
			t.Fatalf("expired caller: %v (class %v), want Timeout", err, failure.ClassOf(err))
		}
	}
	v, _ := h.Kernel("k")
	if v.Breaker != admission.Closed || v.Failures != 0 {
		t.Fatalf("after 10 requests whose callers went away: breaker %s, failures %d; want closed and 0", v.Breaker, v.Failures)
	}
	if ok, why := h.Ready(); !ok {
		t.Fatalf("node not ready: %s", why)
	}
	if n := testutil.ToFloat64(h.metrics.failures.WithLabelValues("k", reasonRuntime)); n != 0 {
		t.Errorf("runtime failures = %v, want 0", n)
	}
	if n := testutil.ToFloat64(h.metrics.failures.WithLabelValues("k", reasonCanceled)); n != 5 {
		t.Errorf("canceled = %v, want 5", n)
	}
	if _, err := h.Infer(context.Background(), "k", req); err != nil {
		t.Fatalf("a live caller after them: %v", err)
	}
}

// TestOpenBreakerIsTheKernelsNotTheNodes: one kernel's open breaker shows
// in its view, its reason and kasmina_kernel_breaker_open, and leaves the
// node ready (it used to make the whole node unready).
func TestOpenBreakerIsTheKernelsNotTheNodes(t *testing.T) {
	inv := openInventory(t, "dgxa100", nil)
	h, _, reg := newHost(t, inv, Config{BreakerThreshold: 2})
	h.started.Store(true) // as Run does after its start-up
	ctx := context.Background()
	for _, id := range []string{"bad", "good"} {
		if _, err := h.Load(ctx, LoadRequest{Data: linearKernel(t, id, nil)}); err != nil {
			t.Fatal(err)
		}
	}
	h.mu.RLock()
	br := h.kernels["bad"].breaker
	h.mu.RUnlock()
	for range 2 {
		if err := br.Allow(); err != nil {
			t.Fatal(err)
		}
		br.Done(admission.Failed)
	}
	if ok, why := h.Ready(); !ok {
		t.Fatalf("one kernel's open breaker made the node unready: %s", why)
	}
	v, _ := h.Kernel("bad")
	if v.Breaker != admission.Open || !strings.Contains(v.BreakerReason, "2 consecutive failures") {
		t.Fatalf("view: breaker %s %q", v.Breaker, v.BreakerReason)
	}
	if _, err := h.Infer(ctx, "bad", Request{Input: make([]float32, 4), Shape: []int{1, 4}}); failure.ClassOf(err) != failure.Unavailable {
		t.Fatalf("infer on the open kernel: %v", err)
	}
	if _, err := h.Infer(ctx, "good", Request{Input: make([]float32, 4), Shape: []int{1, 4}}); err != nil {
		t.Fatalf("the other kernel: %v", err)
	}
	want := `
# HELP kasmina_kernel_breaker_open 1 while the kernel's circuit breaker is open or half-open (its model readiness answers 503), else 0; the node's readiness does not depend on it.
# TYPE kasmina_kernel_breaker_open gauge
kasmina_kernel_breaker_open{kernel="bad"} 1
kasmina_kernel_breaker_open{kernel="good"} 0
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "kasmina_kernel_breaker_open"); err != nil {
		t.Fatal(err)
	}
}

// TestUnloadDeletesEveryKernelSeries: after load/unload cycles of kernels
// that fell back to the CPU, no series of theirs is left in the registry
// (the fallback counter kept one per unloaded kernel).
func TestUnloadDeletesEveryKernelSeries(t *testing.T) {
	inv := openInventory(t, "dgxa100", map[string]string{"CUDA_VISIBLE_DEVICES": ""})
	h, _, reg := newHost(t, inv, Config{})
	ctx := context.Background()
	for i := range 20 {
		name := fmt.Sprintf("k%d", i)
		if _, err := h.Load(ctx, LoadRequest{Data: linearKernel(t, name, []string{"cuda"})}); err != nil {
			t.Fatal(err)
		}
		if _, err := h.Infer(ctx, name, Request{Input: make([]float32, 4), Shape: []int{1, 4}}); err != nil {
			t.Fatal(err)
		}
		if err := h.Unload(ctx, name); err != nil {
			t.Fatal(err)
		}
	}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			for _, lp := range m.GetLabel() {
				if lp.GetName() == "kernel" {
					t.Errorf("%s{kernel=%q} is left after the kernel was unloaded", mf.GetName(), lp.GetValue())
				}
			}
		}
	}
}

// TestFailedLoadsAreBounded: the host remembers the newest failed loads
// only, with bounded reasons, and never a name that could not be loaded
// (3000 failures used to add 3000 entries to every index answer).
func TestFailedLoadsAreBounded(t *testing.T) {
	inv := openInventory(t, "dgxa100", nil)
	h, _, _ := newHost(t, inv, Config{})
	long := errors.New(strings.Repeat("é", 4000))
	for i := range 3000 {
		h.recordFailure(fmt.Sprintf("k%04d", i), long)
	}
	h.recordFailure(strings.Repeat("n", 10000), long)
	failed := failedLoads(h)
	if len(failed) != maxFailedLoads {
		t.Fatalf("%d failed loads remembered, want %d", len(failed), maxFailedLoads)
	}
	if _, ok := failed["k2999"]; !ok {
		t.Error("the newest failure was evicted")
	}
	if _, ok := failed["k0000"]; ok {
		t.Error("the oldest failure was kept")
	}
	for name, why := range failed {
		if len(name) > 255 || len(why) > maxFailureReason+len("…") {
			t.Fatalf("unbounded entry: name %d bytes, reason %d bytes", len(name), len(why))
		}
	}
	if n := len(h.Models()); n != maxFailedLoads {
		t.Errorf("repository index has %d entries, want %d", n, maxFailedLoads)
	}
	// A failure recorded again moves to the newest end; one cleared by
	// unload frees its slot.
	h.recordFailure("k2744", long)
	h.recordFailure("fresh", long)
	if _, ok := failedLoads(h)["k2744"]; !ok {
		t.Error("a re-recorded failure was evicted as if it were old")
	}
	if err := h.Unload(context.Background(), "fresh"); err != nil {
		t.Fatal(err)
	}
	if n := len(failedLoads(h)); n != maxFailedLoads-1 {
		t.Errorf("after unloading a failed name: %d remembered, want %d", n, maxFailedLoads-1)
	}
}

// TestLoadingTheSameKernelTwice: as Triton, a load of a name that is
// loaded with the same content and target changes nothing and returns
// the loaded kernel; other content under that name is a Conflict, an
// explicit name for another seed too. The same artifact into another
// seed, named by the host, is a kernel of its own (name@layer.seed_idx)
// sharing the parsed kernel.
func TestLoadingTheSameKernelTwice(t *testing.T) {
	inv := openInventory(t, "dgxa100", nil)
	h, _, _ := newHost(t, inv, Config{})
	ctx := context.Background()
	data := linearKernel(t, "k", nil)
	first, err := h.Load(ctx, LoadRequest{Data: data})
	if err != nil {
		t.Fatal(err)
	}
	again, err := h.Load(ctx, LoadRequest{Data: data})
	if err != nil || !again.Unchanged || again.LoadedAt != first.LoadedAt || again.SHA256 != first.SHA256 {
		t.Fatalf("same kernel again: %v, unchanged %v; want the loaded kernel's view", err, again.Unchanged)
	}
	other := wideKernel(t, "k", 3)
	_, err = h.Load(ctx, LoadRequest{Data: other})
	if failure.ClassOf(err) != failure.Conflict || !strings.Contains(fmt.Sprint(err), `kernel "k" is already loaded and differs: its artifact has sha256`) {
		t.Fatalf("other content under the same name: %v (class %v), want Conflict naming the difference", err, failure.ClassOf(err))
	}
	_, err = h.Load(ctx, LoadRequest{Name: "k", Data: data, Layer: "layer1", SeedIdx: 2})
	if failure.ClassOf(err) != failure.Conflict || !strings.Contains(fmt.Sprint(err), `layer "layer1" seed 2`) {
		t.Fatalf("the same name for another seed: %v", err)
	}
	parsed := h.Stats().Cache.Loads
	v, err := h.Load(ctx, LoadRequest{Data: data, Layer: "layer1", SeedIdx: 2})
	if err != nil || v.Name != "k@layer1.2" || v.Layer != "layer1" || v.SeedIdx != 2 {
		t.Fatalf("the same content for another seed: %+v, %v; want a kernel k@layer1.2", v.Name, err)
	}
	if n := h.Stats().Cache.Loads; n != parsed {
		t.Errorf("the second seed's kernel was parsed again (%d parses, want %d)", n, parsed)
	}
	if v, err := h.Load(ctx, LoadRequest{Data: other, Replace: true}); err != nil || v.Unchanged {
		t.Fatalf("replace: %v, unchanged %v", err, v.Unchanged)
	}
}

// TestLoadIsNotCommittedAfterItsDeadline: a load whose context ends while
// it runs (an HTTP load past its deadline) leaves nothing loaded or
// reserved, so the 504 it answers is the whole truth. Here the deadline
// passes while the artifact is being kept for restarts (a slow disk),
// after the steps that already watched the context.
func TestLoadIsNotCommittedAfterItsDeadline(t *testing.T) {
	inv := openInventory(t, "dgxa100", nil)
	data := linearKernel(t, "k", nil)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	h, _, _ := newHost(t, inv, Config{}, withStore(&cancellingStore{cancel: cancel}))
	_, err := h.Load(ctx, LoadRequest{Data: data})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("load past its deadline: %v, want context.Canceled", err)
	}
	if _, ok := h.Kernel("k"); ok {
		t.Fatal("a load past its deadline was committed")
	}
	if _, err := h.Load(context.Background(), LoadRequest{Data: data}); err != nil {
		t.Fatalf("loading again: %v (the reservation was kept)", err)
	}
}

// cancellingStore ends a load's context while it keeps the artifact, the
// first time only.
type cancellingStore struct {
	memStore
	cancel context.CancelFunc
	once   sync.Once
}

func (s *cancellingStore) Put(sha string, data []byte) error {
	s.once.Do(s.cancel)
	return s.memStore.Put(sha, data)
}

// TestReferencesAreShownRedacted: a presigned URL's signature and a URL's
// password appear in no view and no error message.
func TestReferencesAreShownRedacted(t *testing.T) {
	inv := openInventory(t, "dgxa100", nil)
	data := linearKernel(t, "k", nil)
	const ref = "https://artifacts.example/k.safetensors?X-Amz-Credential=AKIASECRET&X-Amz-Signature=hunter2"
	h, _, _ := newHost(t, inv, Config{}, withFetcher(fetcherFunc(func(_ context.Context, r, _ string) ([]byte, error) {
		if strings.Contains(r, "missing") {
			return nil, errors.New("HTTP 404")
		}
		return data, nil
	})))
	v, err := h.Load(context.Background(), LoadRequest{Ref: ref})
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(v.Source, "hunter2") || strings.Contains(v.Source, "AKIASECRET") || !strings.Contains(v.Source, "X-Amz-Signature=REDACTED") {
		t.Fatalf("view source %q", v.Source)
	}
	_, err = h.Load(context.Background(), LoadRequest{Name: "m", Ref: "https://u:hunter2@artifacts.example/missing?X-Amz-Signature=hunter2"})
	if err == nil || strings.Contains(err.Error(), "hunter2") {
		t.Fatalf("fetch failure message: %v", err)
	}
	if why := failedLoads(h)["m"]; why == "" || strings.Contains(why, "hunter2") {
		t.Fatalf("failed-load reason %q", why)
	}
	// A reference used as the kernel's name (as a bus artifact_id can be).
	_, err = h.Load(context.Background(), LoadRequest{Name: ref, Data: data})
	if err == nil || strings.Contains(err.Error(), "hunter2") || !strings.Contains(err.Error(), "REDACTED") {
		t.Fatalf("invalid name message: %v", err)
	}
}

// TestUnloadUnknownSaysItOnce: the message names the kernel once, without
// a class phrase.
func TestUnloadUnknownSaysItOnce(t *testing.T) {
	inv := openInventory(t, "dgxa100", nil)
	h, _, _ := newHost(t, inv, Config{})
	err := h.Unload(context.Background(), "nope")
	if failure.ClassOf(err) != failure.NotFound || fmt.Sprint(err) != `no kernel "nope" is loaded` {
		t.Fatalf("unload unknown: %v", err)
	}
}
