package runtime

import (
	"context"
	"testing"

	"github.com/esper/kasmina-host/contracts"
	"github.com/esper/kasmina-host/runtime/failure"
)

// Every control operation goes through Apply and says what it did: the
// event (Esper's event_type names), the seed, its layer id, the kernel it
// holds, the states or the alpha (clamped, and said so), and whether it
// found the work done already (a redelivered command).
func TestApplyOutcomes(t *testing.T) {
	inv := openInventory(t, "dgxa100", nil)
	data := linearKernel(t, "k", nil)
	h, _, _ := newHost(t, inv, Config{GraftingRamp: -1}, withFetcher(fetcherFunc(func(context.Context, string, string) ([]byte, error) { return data, nil })))
	ctx := context.Background()
	for _, c := range []struct {
		op    Op
		event string
		want  Outcome
	}{
		{DeclareLayer{Layer: "enc"}, "layer_declared", Outcome{Event: LayerDeclared, Layer: "enc", LayerID: 0}},
		{DeclareLayer{Layer: "enc"}, "layer_declared", Outcome{Event: LayerDeclared, Layer: "enc", LayerID: 0, Unchanged: true}},
		{LoadKernel{Layer: "enc", SeedIdx: 1, Artifact: "/r/k.safetensors"}, "kernel_load_success",
			Outcome{Event: KernelLoaded, Layer: "enc", SeedIdx: 1, Kernel: "k"}},
		{LoadKernel{Layer: "enc", SeedIdx: 1, Artifact: "/r/k.safetensors"}, "kernel_load_success",
			Outcome{Event: KernelLoaded, Layer: "enc", SeedIdx: 1, Kernel: "k", Unchanged: true}},
		{SetSeedState{Layer: "enc", SeedIdx: 1, State: contracts.SeedTraining, Why: "test"}, "seed_state_changed",
			Outcome{Event: SeedStateChanged, Layer: "enc", SeedIdx: 1, Kernel: "k", From: contracts.SeedGerminated, To: contracts.SeedTraining}},
		{SetAlpha{Layer: "enc", SeedIdx: 1, Alpha: 1.5}, "seed_alpha_changed",
			Outcome{Event: SeedAlphaChanged, Layer: "enc", SeedIdx: 1, Kernel: "k", Alpha: 1, Clamped: true}},
		{SetAlpha{Layer: "enc", SeedIdx: 1, Alpha: 0.25}, "seed_alpha_changed",
			Outcome{Event: SeedAlphaChanged, Layer: "enc", SeedIdx: 1, Kernel: "k", Alpha: 0.25}},
		{UnloadKernel{Layer: "enc", SeedIdx: 1}, "kernel_unload_success", Outcome{Event: KernelUnloaded, Layer: "enc", SeedIdx: 1}},
		{UnloadKernel{Layer: "enc", SeedIdx: 1}, "kernel_unload_success", Outcome{Event: KernelUnloaded, Layer: "enc", SeedIdx: 1, Unchanged: true}},
	} {
		o, err := h.Apply(ctx, c.op)
		if err != nil {
			t.Fatalf("%T %+v: %v", c.op, c.op, err)
		}
		if o != c.want || o.Event.String() != c.event {
			t.Errorf("%T %+v:\n got %+v (%s)\nwant %+v (%s)", c.op, c.op, o, o.Event, c.want, c.event)
		}
	}
	if _, err := h.Apply(ctx, SetSeedState{Layer: "enc", SeedIdx: 1, State: contracts.SeedTraining}); failure.ClassOf(err) != failure.Refused {
		t.Errorf("a culled seed's transition: %v, want Refused", err)
	}
	if _, err := h.Apply(ctx, SetAlpha{Layer: "nope", SeedIdx: 0, Alpha: 0.5}); failure.ClassOf(err) != failure.NotFound {
		t.Errorf("an unknown seed: %v, want NotFound", err)
	}
}
