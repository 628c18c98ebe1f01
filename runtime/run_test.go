package runtime

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/esper/kasmina-host/contracts"
	"github.com/esper/kasmina-host/runtime/oona"
)

// runHost runs h.Run until the test ends and returns a stop function that
// ends it and waits for it.
func runHost(t *testing.T, h *Host) (stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- h.Run(ctx) }()
	stopped := false
	stop = func() {
		if stopped {
			return
		}
		stopped = true
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Run: %v", err)
			}
		case <-time.After(20 * time.Second):
			t.Fatal("Run did not return within 20 s of its context ending")
		}
	}
	t.Cleanup(stop)
	return stop
}

// A restore saves nothing (a state written then would record a restore
// half done, and a crash would lose the rest); Run saves once its start-up
// is over, with everything restored and loaded, and once more at
// shutdown.
func TestRestoreSavesNothingUntilRunStarts(t *testing.T) {
	inv := openInventory(t, "dgxa100", nil)
	store := &memStore{}
	h, _, _ := newHost(t, inv, Config{}, withStore(store))
	ctx := context.Background()
	for i, name := range []string{"a", "b"} {
		if _, err := h.Load(ctx, LoadRequest{Name: name, Data: linearKernel(t, name, nil), Layer: "enc", SeedIdx: i}); err != nil {
			t.Fatal(err)
		}
	}
	st := h.State()

	store2 := &memStore{m: store.m}
	h2, _, _ := newHost(t, inv, Config{SignalInterval: time.Hour}, withStore(store2))
	if n, err := h2.Restore(ctx, st); err != nil || n != 2 {
		t.Fatalf("restored %d: %v", n, err)
	}
	if n, _ := store2.saved(); n != 0 {
		t.Fatalf("the restore saved the state %d times, want 0", n)
	}
	if ok, _ := h2.Ready(); ok {
		t.Fatal("ready before Run")
	}
	stop := runHost(t, h2)
	waitFor(t, "the host to turn ready", func() bool { ok, _ := h2.Ready(); return ok })
	n, saved := store2.saved()
	if n != 1 || len(saved.Kernels) != 2 || len(saved.Seeds) != DefaultNumSeeds {
		t.Fatalf("after the start-up: %d saves, the last with %d kernels and %d seeds; want 1 with 2 and %d (the layer's slots)", n, len(saved.Kernels), len(saved.Seeds), DefaultNumSeeds)
	}
	stop()
	if n, _ := store2.saved(); n != 2 {
		t.Errorf("%d saves after shutdown, want 2 (start-up and shutdown)", n)
	}
}

// While the store fails, the host is not ready and says why; Run writes
// the state again until the store takes it, and the host turns ready.
func TestRunRetriesAFailingStore(t *testing.T) {
	inv := openInventory(t, "dgxa100", nil)
	store := &memStore{}
	store.setFailure(errors.New("state directory /s: writing state.json: read-only file system"))
	h, _, _ := newHost(t, inv, Config{SignalInterval: 10 * time.Millisecond}, withStore(store))
	runHost(t, h)
	waitFor(t, "the start-up save", func() bool { n, _ := store.saved(); return n > 0 })
	if ok, why := h.Ready(); ok || why != "state directory failing: state directory /s: writing state.json: read-only file system" {
		t.Fatalf("ready %v (%q) while the store fails", ok, why)
	}
	n, _ := store.saved()
	waitFor(t, "a retry", func() bool { m, _ := store.saved(); return m > n })
	store.setFailure(nil)
	waitFor(t, "the host to turn ready once the store writes", func() bool { ok, _ := h.Ready(); return ok })
}

// Run consumes the bus: commands (through the command adapter) and
// epochs, which the next health signals carry.
func TestRunConsumesCommandsAndEpochs(t *testing.T) {
	inv := openInventory(t, "dgxa100", nil)
	bus := oona.NewEmbeddedBus(nil, nil, oona.Config{HostID: "h"}, nil)
	defer bus.Close(context.Background())
	h, _, _ := newHost(t, inv, Config{SignalInterval: time.Hour}, func(d *Deps) { d.Bus = bus })
	if _, err := h.Load(context.Background(), LoadRequest{Data: linearKernel(t, "k", nil), Layer: "enc"}); err != nil {
		t.Fatal(err)
	}
	runHost(t, h)
	publish := func(topic contracts.TopicName, payload map[string]any) {
		t.Helper()
		if err := bus.Publish(contracts.NewOonaMessage("tolaria", "t", topic, payload)); err != nil {
			t.Fatal(err)
		}
	}
	// The consumers subscribe asynchronously: publish until seen.
	waitFor(t, "the epoch consumer", func() bool {
		publish(contracts.TopicSystemEventsEpoch, map[string]any{"epoch": 7})
		time.Sleep(5 * time.Millisecond)
		return h.epoch.Load() == 7
	})
	waitFor(t, "the command consumer", func() bool {
		m, err := oona.CommandMessage("tamiyo", "t", &oona.SetAlpha{LayerName: "enc", SeedIdx: 0, Alpha: 0.25})
		if err != nil {
			t.Fatal(err)
		}
		if err := bus.Publish(m); err != nil {
			t.Fatal(err)
		}
		time.Sleep(5 * time.Millisecond)
		s := h.Seeds()
		return len(s) == DefaultNumSeeds && s[0].Alpha == 0.25
	})
	if _, err := h.Infer(context.Background(), "k", Request{Input: make([]float32, 4), Shape: []int{1, 4}}); err != nil {
		t.Fatal(err)
	}
	if sigs := h.emitSignals(); len(sigs) != 1 || sigs[0].Epoch != 7 {
		t.Fatalf("signals %+v, want one at epoch 7", sigs)
	}
}

// The epoch is saved with the state when the bus announces it and comes
// back with a Restore: a restarted host's first signals carry the epoch
// training is at, not 0, before the bus says anything (the bus's latest
// epoch entry, read first, then takes over: TestRedisEpochConsumerReadsTheLatestFirst).
// The --layers declarations (Config.Layers) apply at every start, over
// what the state brought back.
func TestEpochAndDeclarationsSurviveARestart(t *testing.T) {
	inv := openInventory(t, "dgxa100", nil)
	store := &memStore{}
	bus := oona.NewEmbeddedBus(nil, nil, oona.Config{HostID: "h"}, nil)
	defer bus.Close(context.Background())
	id9 := 9
	fileLayers := []DeclareLayer{{Layer: "features_0", Spec: LayerSpec{NumSeeds: 2, LayerID: &id9}, By: ByFile}}
	h, _, _ := newHost(t, inv, Config{SignalInterval: time.Hour, Layers: fileLayers}, withStore(store), func(d *Deps) { d.Bus = bus })
	stop := runHost(t, h)
	waitFor(t, "the epoch consumer", func() bool {
		if err := bus.Publish(contracts.NewOonaMessage("tolaria", "t", contracts.TopicSystemEventsEpoch, map[string]any{"epoch": 7})); err != nil {
			t.Fatal(err)
		}
		time.Sleep(5 * time.Millisecond)
		return h.epoch.Load() == 7
	})
	if _, err := h.Apply(context.Background(), DeclareLayer{Layer: "layer1", Spec: LayerSpec{NumSeeds: 3}}); err != nil {
		t.Fatal(err)
	}
	if _, err := h.Load(context.Background(), LoadRequest{Data: linearKernel(t, "k", nil), Layer: "layer1", SeedIdx: 1}); err != nil {
		t.Fatal(err)
	}
	stop()
	_, st := store.saved()
	if st.Epoch != 7 {
		t.Fatalf("saved epoch %d, want 7", st.Epoch)
	}

	// The restart: a new host from the saved state, no bus.
	h2, _, _ := newHost(t, inv, Config{SignalInterval: time.Hour, Layers: fileLayers}, withStore(&memStore{m: store.m}))
	if _, err := h2.Restore(context.Background(), st); err != nil {
		t.Fatal(err)
	}
	stop2 := runHost(t, h2)
	defer stop2()
	if _, err := h2.Infer(context.Background(), "k", Request{Input: make([]float32, 4), Shape: []int{1, 4}}); err != nil {
		t.Fatal(err)
	}
	if sigs := h2.emitSignals(); len(sigs) != 1 || sigs[0].Epoch != 7 || sigs[0].LayerID != LayerIDOf("layer1") {
		t.Fatalf("signals after the restart %+v, want one at epoch 7 from layer1", sigs)
	}
	got := map[string]string{}
	for _, l := range h2.Layers() {
		got[l.Name] = fmt.Sprintf("%d/%d/%s", l.LayerID, l.NumSeeds, l.DeclaredBy)
	}
	want := map[string]string{"features_0": "9/2/file", "layer1": fmt.Sprintf("%d/3/http", LayerIDOf("layer1"))}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("layers after the restart %v, want %v", got, want)
	}
}
