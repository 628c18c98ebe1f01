package runtime

import (
	"context"
	"encoding/json"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/esper/kasmina-host/contracts"
	"github.com/esper/kasmina-host/runtime/failure"
)

// Every control operation goes through Apply and says what it did: the
// event (Esper's event_type names), the seed, its layer id, the kernel it
// holds and what it was loaded from, the states or the alpha (clamped,
// and said so), and whether it found the work done already (a
// redelivered command). Failures are outcomes too.
func TestApplyOutcomes(t *testing.T) {
	inv := openInventory(t, "dgxa100", nil)
	data := linearKernel(t, "k", nil)
	h, _, _ := newHost(t, inv, Config{GraftingRamp: -1}, withFetcher(fetcherFunc(func(context.Context, string, string) ([]byte, error) { return data, nil })))
	ctx := context.Background()
	id := LayerIDOf("enc")
	for _, c := range []struct {
		op    Op
		event string
		want  Outcome
	}{
		{DeclareLayer{Layer: "enc"}, "layer_declared", Outcome{Event: LayerDeclared, Command: "declare_layer", Layer: "enc", LayerID: id, Created: true}},
		{DeclareLayer{Layer: "enc"}, "layer_declared", Outcome{Event: LayerDeclared, Command: "declare_layer", Layer: "enc", LayerID: id, Unchanged: true}},
		{LoadKernel{Layer: "enc", SeedIdx: 1, Artifact: "/r/k.safetensors"}, "kernel_load_success",
			Outcome{Event: KernelLoaded, Command: "load_kernel", Layer: "enc", LayerID: id, SeedIdx: 1, Kernel: "k", Artifact: "/r/k.safetensors"}},
		{LoadKernel{Layer: "enc", SeedIdx: 1, Artifact: "/r/k.safetensors"}, "kernel_load_success",
			Outcome{Event: KernelLoaded, Command: "load_kernel", Layer: "enc", LayerID: id, SeedIdx: 1, Kernel: "k", Artifact: "/r/k.safetensors", Unchanged: true}},
		{SetSeedState{Layer: "enc", SeedIdx: 1, State: contracts.SeedTraining, Why: "test"}, "seed_state_changed",
			Outcome{Event: SeedStateChanged, Command: "set_seed_state", Layer: "enc", LayerID: id, SeedIdx: 1, Kernel: "k", Artifact: "/r/k.safetensors", From: contracts.SeedGerminated, To: contracts.SeedTraining}},
		{SetAlpha{Layer: "enc", SeedIdx: 1, Alpha: 1.5}, "seed_alpha_changed",
			Outcome{Event: SeedAlphaChanged, Command: "set_alpha", Layer: "enc", LayerID: id, SeedIdx: 1, Kernel: "k", Artifact: "/r/k.safetensors", Alpha: 1, Clamped: true}},
		{SetAlpha{Layer: "enc", SeedIdx: 1, Alpha: 0.25}, "seed_alpha_changed",
			Outcome{Event: SeedAlphaChanged, Command: "set_alpha", Layer: "enc", LayerID: id, SeedIdx: 1, Kernel: "k", Artifact: "/r/k.safetensors", Alpha: 0.25}},
		{UnloadKernel{Layer: "enc", SeedIdx: 1}, "kernel_unload_success", Outcome{Event: KernelUnloaded, Command: "unload_kernel", Layer: "enc", LayerID: id, SeedIdx: 1, Artifact: "/r/k.safetensors"}},
		{UnloadKernel{Layer: "enc", SeedIdx: 1}, "kernel_unload_success", Outcome{Event: KernelUnloaded, Command: "unload_kernel", Layer: "enc", LayerID: id, SeedIdx: 1, Unchanged: true}},
		{SetAlpha{Layer: "enc", SeedIdx: 2, Alpha: -0.5}, "seed_alpha_changed",
			Outcome{Event: SeedAlphaChanged, Command: "set_alpha", Layer: "enc", LayerID: id, SeedIdx: 2, Alpha: 0, Clamped: true}},
		{SetSeedState{Layer: "enc", SeedIdx: 3, State: contracts.SeedCulled, Why: "test"}, "seed_state_changed",
			Outcome{Event: SeedStateChanged, Command: "set_seed_state", Layer: "enc", LayerID: id, SeedIdx: 3, From: contracts.SeedDormant, To: contracts.SeedCulled}},
		{RetireLayer{Layer: "enc"}, "layer_retired", Outcome{Event: LayerRetired, Command: "retire_layer", Layer: "enc", LayerID: id}},
	} {
		o, err := h.Apply(ctx, c.op)
		if err != nil {
			t.Fatalf("%T %+v: %v", c.op, c.op, err)
		}
		o.Origin, o.At = Origin{}, time.Time{}
		if o != c.want || o.Event.String() != c.event {
			t.Errorf("%T %+v:\n got %+v (%s)\nwant %+v (%s)", c.op, c.op, o, o.Event, c.want, c.event)
		}
	}
	if _, err := h.Apply(ctx, DeclareLayer{Layer: "enc"}); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		op    Op
		event Event
		class failure.Class
	}{
		{SetSeedState{Layer: "enc", SeedIdx: 1, State: contracts.SeedFossilized}, CommandFailed, failure.Refused},
		{SetAlpha{Layer: "nope", SeedIdx: 0, Alpha: 0.5}, CommandFailed, failure.NotFound},
		{LoadKernel{Layer: "enc", SeedIdx: 9, Artifact: "/r/k.safetensors"}, KernelLoadFailed, failure.BadInput},
		{RetireLayer{Layer: "nope"}, LayerRetired, failure.NotFound},
	} {
		o, err := h.Apply(ctx, c.op)
		if failure.ClassOf(err) != c.class || o.Event != c.event && c.event != LayerRetired || o.ErrorClass != c.class || o.FailureReason != err.Error() {
			t.Errorf("%T %+v: %+v, %v; want %s of class %s", c.op, c.op, o, err, c.event, c.class)
		}
	}
}

// The seed operations publish their outcome, success or failure, as an
// event on telemetry.seed.health: sender kasmina-host.<id>, the command's
// trace_id, the payload members Esper's KasminaLayer events have plus the
// command's ids; health signals stay HealthSignals.
func TestApplyPublishesOutcomeEvents(t *testing.T) {
	inv := openInventory(t, "dgxa100", nil)
	data := linearKernel(t, "k", nil)
	h, pub, _ := newHost(t, inv, Config{HostID: "node-a", GraftingRamp: -1}, withFetcher(fetcherFunc(func(_ context.Context, ref, _ string) ([]byte, error) {
		if ref == "/r/k.safetensors" {
			return data, nil
		}
		return []byte("not a kernel"), nil
	})))
	ctx := WithOrigin(context.Background(), Origin{EventID: "ev-1", CommandID: "cmd-1", TraceID: "trace-1"})
	if _, err := declareLayer(h, "layer1"); err != nil {
		t.Fatal(err)
	}
	if len(pub.msgs) != 0 {
		t.Fatalf("a declaration published %d events", len(pub.msgs))
	}
	if _, err := h.Apply(ctx, LoadKernel{Layer: "layer1", SeedIdx: 0, Artifact: "/r/k.safetensors"}); err != nil {
		t.Fatal(err)
	}
	if _, err := h.Apply(ctx, LoadKernel{Layer: "layer1", SeedIdx: 1, Artifact: "/r/bad.safetensors"}); failure.ClassOf(err) != failure.Malformed {
		t.Fatalf("a bad artifact: %v", err)
	}
	if _, err := h.Apply(context.Background(), SetAlpha{Layer: "layer1", SeedIdx: 0, Alpha: 2}); err != nil {
		t.Fatal(err)
	}
	if len(pub.msgs) != 3 {
		t.Fatalf("%d events published, want 3", len(pub.msgs))
	}
	var events []map[string]any
	for _, m := range pub.msgs {
		if m.topic != contracts.TopicTelemetrySeedHealth || m.senderID != "kasmina-host.node-a" {
			t.Errorf("envelope %+v", m)
		}
		var p map[string]any
		if err := json.Unmarshal(m.payload, &p); err != nil {
			t.Fatal(err)
		}
		if _, err := contracts.DecodeHealthSignal(m.payload); err == nil {
			t.Errorf("an outcome event reads as a HealthSignal: %s", m.payload)
		}
		events = append(events, p)
	}
	ok, bad, alpha := events[0], events[1], events[2]
	if pub.msgs[0].trace != "trace-1" || ok["event_type"] != "kernel_load_success" || ok["layer_name"] != "layer1" || ok["seed_idx"] != 0.0 ||
		ok["artifact_id"] != "/r/k.safetensors" || ok["command_event_id"] != "ev-1" || ok["command_id"] != "cmd-1" ||
		ok["layer_id"] != float64(LayerIDOf("layer1")) || ok["kernel"] != "k" || ok["timestamp"].(float64) < 1.7e9 {
		t.Errorf("success event %v (trace %s)", ok, pub.msgs[0].trace)
	}
	if bad["event_type"] != "kernel_load_failure" || bad["error_class"] != "malformed" || bad["seed_idx"] != 1.0 ||
		bad["artifact_id"] != "/r/bad.safetensors" || bad["failure_reason"] == "" || bad["command_event_id"] != "ev-1" {
		t.Errorf("failure event %v", bad)
	}
	if alpha["event_type"] != "seed_alpha_changed" || alpha["alpha"] != 1.0 || alpha["clamped"] != true ||
		alpha["command_event_id"] == "" || alpha["command_event_id"] != pub.msgs[2].trace {
		t.Errorf("alpha event %v (trace %s): a fresh event id, the trace too", alpha, pub.msgs[2].trace)
	}
}

// One artifact loaded into several seeds at once (commands for different
// seeds run concurrently): each seed keeps its own kernel, none takes
// another's by the name both derived before either registered.
func TestConcurrentLoadsOfOneArtifactKeepTheirSeeds(t *testing.T) {
	inv := openInventory(t, "dgxa100", nil)
	data := linearKernel(t, "k", nil)
	// The three fetches of a round meet before any returns: every load
	// names its kernel before any registers.
	var (
		mu      sync.Mutex
		arrived int
		met     = sync.NewCond(&mu)
	)
	fetch := fetcherFunc(func(context.Context, string, string) ([]byte, error) {
		mu.Lock()
		defer mu.Unlock()
		arrived++
		round := (arrived + 2) / 3
		met.Broadcast()
		for arrived < 3*round {
			met.Wait()
		}
		return data, nil
	})
	h, _, _ := newHost(t, inv, Config{GraftingRamp: -1}, withFetcher(fetch))
	ctx := context.Background()
	for round := range 10 {
		layer := fmt.Sprint("l", round)
		if _, err := h.Apply(ctx, DeclareLayer{Layer: layer, Spec: LayerSpec{NumSeeds: 3}}); err != nil {
			t.Fatal(err)
		}
		var wg sync.WaitGroup
		for i := range 3 {
			wg.Go(func() {
				if _, err := h.Apply(ctx, LoadKernel{Layer: layer, SeedIdx: i, Artifact: "/r/k.safetensors"}); err != nil {
					t.Errorf("%s/%d: %v", layer, i, err)
				}
			})
		}
		wg.Wait()
		v, _ := h.Layer(layer)
		names := map[string]bool{}
		for _, s := range v.Seeds {
			if s.Kernel == nil || len(s.History) != 0 || names[*s.Kernel] {
				t.Fatalf("round %d: seed %d holds %v, history %+v; want a kernel of its own", round, s.SeedIdx, s.Kernel, s.History)
			}
			names[*s.Kernel] = true
			if _, ok := h.Kernel(*s.Kernel); !ok {
				t.Fatalf("round %d: seed %d's kernel %s is not served", round, s.SeedIdx, *s.Kernel)
			}
		}
	}
	// One parsed kernel in the cache, one reservation per seed.
	if st := h.cache.Stats(); st.Entries != 1 {
		t.Errorf("%d parsed kernels cached for one artifact, want 1", st.Entries)
	}
	ks := h.Kernels()
	var want, reserved float64
	devs := map[string]bool{}
	for _, k := range ks {
		want += k.Placement.EstimateMiB
		devs[k.Placement.Device] = true
	}
	for d := range devs {
		reserved += h.ledger.ReservedMiB(d)
	}
	if len(ks) != 30 || reserved != want || want == 0 {
		t.Errorf("%d kernels, %v MiB reserved, want 30 and %v", len(ks), reserved, want)
	}
}
