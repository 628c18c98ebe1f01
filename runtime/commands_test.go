package runtime

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/esper/kasmina-host/contracts"
	"github.com/esper/kasmina-host/runtime/failure"
	"github.com/esper/kasmina-host/runtime/oona"
)

func command(p oona.CommandPayload) oona.Command {
	return oona.Command{Message: contracts.NewOonaMessage("tamiyo", "t", contracts.TopicControlKasminaCommands, nil), Payload: p}
}

// A load_kernel whose artifact_id is a reference (a path with
// directories, a file://, http:// or s3:// URL) loads under the
// artifact's kernel_id, or, when that is no valid name, under the
// reference's last path element; a redelivery is acknowledged.
func TestLoadKernelCommandWithAReference(t *testing.T) {
	inv := openInventory(t, "dgxa100", nil)
	kernelsByRef := map[string][]byte{
		"models/team/k1.safetensors":                         linearKernel(t, "k1", nil),
		"file:///srv/kernels/sub/k2.safetensors":             linearKernel(t, "k2", nil),
		"http://urza.svc/files/a/b/k3.safetensors?sig=abc":   linearKernel(t, "team/k3", nil), // kernel_id no valid name
		"s3://esper-artifacts/kernels/k4/kernel.safetensors": linearKernel(t, "k4?v=2", nil),  // kernel_id no valid name
	}
	fetches := map[string]int{}
	var mu sync.Mutex
	h, _, _ := newHost(t, inv, Config{}, withFetcher(fetcherFunc(func(_ context.Context, ref, _ string) ([]byte, error) {
		mu.Lock()
		defer mu.Unlock()
		fetches[ref]++
		if b, ok := kernelsByRef[ref]; ok {
			return b, nil
		}
		return nil, fmt.Errorf("unexpected ref %q", ref)
	})))
	if _, err := declareLayer(h, "layer1"); err != nil {
		t.Fatal(err)
	}
	want := map[string]string{
		"models/team/k1.safetensors":                         "k1",
		"file:///srv/kernels/sub/k2.safetensors":             "k2",
		"http://urza.svc/files/a/b/k3.safetensors?sig=abc":   "k3",
		"s3://esper-artifacts/kernels/k4/kernel.safetensors": "kernel",
	}
	seed := 0
	for ref, name := range want {
		p := &oona.LoadKernel{LayerName: "layer1", SeedIdx: seed, ArtifactID: ref}
		seed++
		for delivery := range 2 {
			if err := (commandHandler{h}).HandleCommand(context.Background(), command(p)); err != nil {
				t.Fatalf("load_kernel %s (delivery %d): %v", ref, delivery+1, err)
			}
		}
		v, ok := h.Kernel(name)
		if !ok {
			t.Errorf("load_kernel %s: no kernel %q (kernels: %v)", ref, name, h.Kernels())
			continue
		}
		if v.Layer != "layer1" || v.SeedIdx != p.SeedIdx || v.Source != redactRef(ref) {
			t.Errorf("load_kernel %s: kernel %s on %s/%d from %s", ref, name, v.Layer, v.SeedIdx, v.Source)
		}
		if fetches[ref] != 1 {
			t.Errorf("load_kernel %s fetched %d times for two deliveries, want 1", ref, fetches[ref])
		}
	}
}

func TestNameFromRef(t *testing.T) {
	for ref, want := range map[string]string{
		"k.safetensors":                     "k",
		"a/b/c.safetensors":                 "c",
		"/abs/path/k":                       "k",
		"file:///r/sub/k.safetensors":       "k",
		"http://h/p/k.safetensors?x=1#frag": "k",
		"s3://bucket/dir/":                  "dir",
		"http://h/":                         "",
		"a/..":                              "",
		"s3://":                             "",
		"k\x01\x7f.safetensors":             "k__",
		strings.Repeat("n", 300) + ".bin":   strings.Repeat("n", 255),
		"http://h/%2F..%2Fetc.safetensors":  "%2F..%2Fetc",
		"/p/naïve" + string([]byte{0xff}):   "naïve_",
	} {
		got := nameFromRef(ref)
		if got != want {
			t.Errorf("nameFromRef(%q) = %q, want %q", ref, got, want)
		}
		if got != "" && validName(got) != nil {
			t.Errorf("nameFromRef(%q) = %q is not a valid name: %v", ref, got, validName(got))
		}
	}
}

// Commands for different seeds run while a slow artifact is being fetched
// for another; the slow load gets the command deadline; the commands for
// its seed wait for it and then run in order. The commands come through
// the bus that Host.Run consumes.
func TestSlowArtifactHoldsUpOnlyItsSeed(t *testing.T) {
	inv := openInventory(t, "dgxa100", nil)
	release := make(chan struct{})
	started := make(chan time.Duration, 1)
	fetch := fetcherFunc(func(ctx context.Context, ref, _ string) ([]byte, error) {
		if ref == "http://slow.svc/slow.safetensors" {
			dl, ok := ctx.Deadline()
			if !ok {
				dl = time.Now().Add(-time.Hour) // reported as no deadline
			}
			started <- time.Until(dl)
			select {
			case <-release:
			case <-ctx.Done():
				return nil, fmt.Errorf("fetching %s: %w", ref, ctx.Err())
			}
			return linearKernel(t, "slow", nil), nil
		}
		return linearKernel(t, strings.TrimSuffix(strings.TrimPrefix(ref, "/r/"), ".safetensors"), nil), nil
	})
	const timeout = time.Minute
	bus := oona.NewEmbeddedBus(nil, nil, oona.Config{HostID: "h", Consumer: oona.ConsumerOptions{CommandTimeout: timeout}}, nil)
	defer bus.Close(context.Background())
	h, _, _ := newHost(t, inv, Config{GraftingRamp: -1}, withFetcher(fetch), func(d *Deps) { d.Bus = bus })
	for _, l := range []string{"a", "b"} {
		if _, err := declareLayer(h, l); err != nil {
			t.Fatal(err)
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- h.Run(ctx) }()
	defer func() { cancel(); <-done }()
	publish := func(p oona.CommandPayload) {
		m, err := oona.CommandMessage("tamiyo", "t", p)
		if err != nil {
			t.Fatal(err)
		}
		if err := bus.Publish(m); err != nil {
			t.Fatal(err)
		}
	}
	// The consumer subscribes asynchronously: probe with commands for a
	// layer the host does not serve until one is seen.
	deadline := time.Now().Add(20 * time.Second)
	for {
		publish(&oona.SetAlpha{LayerName: "nolayer", SeedIdx: 0, Alpha: 0})
		if bus.ConsumerStats().Skipped > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the command consumer did not start within 20 s")
		}
		time.Sleep(10 * time.Millisecond)
	}

	publish(&oona.LoadKernel{LayerName: "a", SeedIdx: 0, ArtifactID: "http://slow.svc/slow.safetensors"})
	var left time.Duration
	select {
	case left = <-started:
	case <-time.After(20 * time.Second):
		t.Fatal("the slow load did not start within 20 s")
	}
	if left <= 0 || left > timeout {
		t.Errorf("the slow fetch has %v left before its deadline, want a deadline within %v", left, timeout)
	}
	publish(&oona.SetAlpha{LayerName: "a", SeedIdx: 0, Alpha: 0.5}) // waits for the slow load
	publish(&oona.LoadKernel{LayerName: "b", SeedIdx: 0, ArtifactID: "/r/fast.safetensors"})
	publish(&oona.SetAlpha{LayerName: "b", SeedIdx: 0, Alpha: 0.25})
	waitFor(t, "seed b's commands while seed a's artifact is still being fetched", func() bool {
		for _, s := range h.Seeds() {
			if s.Layer == "b" && s.Kernel == "fast" && s.Alpha == 0.25 {
				return true
			}
		}
		return false
	})
	if _, ok := h.Kernel("slow"); ok {
		t.Fatal("the slow kernel loaded before its artifact was released")
	}
	close(release)
	waitFor(t, "seed a's commands after the slow load, in order", func() bool {
		for _, s := range h.Seeds() {
			if s.Layer == "a" && s.Kernel == "slow" && s.Alpha == 0.5 {
				return true
			}
		}
		return false
	})
	if st := bus.ConsumerStats(); st.DeadLettered != 0 || st.Retried != 0 {
		t.Errorf("consumer stats %+v: nothing should have failed", st)
	}
}

// A change the store cannot save is refused with an Unavailable error
// naming the store's error, and undone: the host is as it was.
func TestChangesThatCannotBeSavedAreUndone(t *testing.T) {
	inv := openInventory(t, "dgxa100", nil)
	store := &memStore{}
	h, _, _ := newHost(t, inv, Config{GraftingRamp: -1}, withStore(store))
	ctx := context.Background()
	if _, err := h.Load(ctx, LoadRequest{Name: "kept", Data: linearKernel(t, "kept", []string{"cuda"}), Layer: "enc", SeedIdx: 1}); err != nil {
		t.Fatal(err)
	}
	if err := setAlpha(h, "enc", 1, 0.3); err != nil {
		t.Fatal(err)
	}
	before := snapshot(h)
	reservedBefore := h.Kernels()[0].Placement.Candidates
	store.setFailure(fmt.Errorf("state directory /s: writing state.json: no space left on device"))
	checkRefused := func(what string, err error) {
		t.Helper()
		if !failure.Is(err, failure.Unavailable) || !strings.Contains(err.Error(), "no space left on device") {
			t.Errorf("%s: %v (class %s), want Unavailable naming the state error", what, err, failure.ClassOf(err))
		}
		if got := snapshot(h); got != before {
			t.Errorf("%s was not undone:\n got %s\nwant %s", what, got, before)
		}
	}
	_, err := h.Load(ctx, LoadRequest{Name: "new", Data: linearKernel(t, "new", []string{"cuda"}), Layer: "dec", SeedIdx: 0})
	checkRefused("a load", err)
	_, err = h.Load(ctx, LoadRequest{Name: "direct", Data: linearKernel(t, "direct", nil)})
	checkRefused("a direct load", err)
	checkRefused("an unload", h.Unload(ctx, "kept"))
	checkRefused("a seed state change", setSeedState(h, "enc", 1, contracts.SeedTraining, "test"))
	checkRefused("an alpha change", setAlpha(h, "enc", 1, 0.9))
	_, err = declareLayer(h, "newlayer")
	checkRefused("a new layer", err)
	// The kernel whose unload was refused still serves.
	if _, err := h.Infer(ctx, "kept", Request{Input: make([]float32, 4), Shape: []int{1, 4}}); err != nil {
		t.Errorf("kept after a refused unload: %v", err)
	}
	// Nothing refused left a reservation, a layer id or a name behind.
	store.setFailure(nil)
	if id, err := declareLayer(h, "newlayer"); err != nil || id != LayerIDOf("newlayer") {
		t.Errorf("the layer declared after the refusals got id %d (%v), want %d", id, err, LayerIDOf("newlayer"))
	}
	v, err := h.Load(ctx, LoadRequest{Name: "new", Data: linearKernel(t, "new", []string{"cuda"}), Layer: "dec", SeedIdx: 0})
	if err != nil {
		t.Fatalf("the refused load, once the state saves: %v", err)
	}
	for i, c := range v.Placement.Candidates {
		if c.ReservedMiB != reservedBefore[i].ReservedMiB && c.Device != v.Placement.Device {
			t.Errorf("%s: %v MiB reserved, %v before the refused loads", c.Device, c.ReservedMiB, reservedBefore[i].ReservedMiB)
		}
	}
}

// snapshot renders what a change may touch: kernels, seeds and layers.
func snapshot(h *Host) string {
	var b strings.Builder
	for _, k := range h.Kernels() {
		fmt.Fprintf(&b, "kernel %s on %s/%d at %s; ", k.Name, k.Layer, k.SeedIdx, k.Placement.Device)
	}
	for _, s := range h.Seeds() {
		fmt.Fprintf(&b, "seed %s/%d id %d %s kernel %q alpha %v transitions %d; ", s.Layer, s.SeedIdx, s.LayerID, s.State, s.Kernel, s.Alpha, len(s.Transitions))
	}
	for _, l := range h.Layers() {
		fmt.Fprintf(&b, "layer %s=%d; ", l.Name, l.LayerID)
	}
	return b.String()
}

// FuzzNameFromRef: whatever the reference, the derived name is empty or a
// valid kernel name.
func FuzzNameFromRef(f *testing.F) {
	for _, s := range []string{"a/b/c.safetensors", "http://h/p/k?x#y", "s3://b/", "file:///", "\xff/\x00", "://", "a://b"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, ref string) {
		if n := nameFromRef(ref); n != "" {
			if err := validName(n); err != nil {
				t.Fatalf("nameFromRef(%q) = %q: %v", ref, n, err)
			}
		}
	})
}
