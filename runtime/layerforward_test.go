package runtime

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/esper/kasmina-host/contracts"
	"github.com/esper/kasmina-host/internal/tolerance"
	"github.com/esper/kasmina-host/kernels"
	"github.com/esper/kasmina-host/runtime/failure"
)

// tanhRef is Linear(4→3)+Tanh in float64: the reference of tanhKernel.
type tanhRef struct{ w, b []float64 } // w is 3×4, row-major

// refs are three different tanh kernels' weights.
var refs = map[string]tanhRef{
	"ka": {w: []float64{0.5, -0.25, 0.125, 1, -0.5, 0.75, 0.25, -1, 0.3, 0.2, -0.1, 0.6}, b: []float64{0.1, -0.2, 0.05}},
	"kb": {w: []float64{-0.4, 0.9, 0.1, -0.2, 0.35, -0.65, 0.8, 0.15, -0.7, 0.45, 0.55, -0.3}, b: []float64{-0.15, 0.3, 0.2}},
	"kc": {w: []float64{0.2, 0.2, 0.2, 0.2, -0.3, -0.3, 0.6, 0.6, 0.9, -0.9, 0.1, -0.1}, b: []float64{0, 0, 0.5}},
}

// tanhKernel writes r as a kernel named id.
func tanhKernel(t testing.TB, id string, r tanhRef) []byte {
	t.Helper()
	mod := &kernels.Module{Type: "sequential", Layers: []*kernels.Module{
		{Type: "linear", InFeatures: 4, OutFeatures: 3, Bias: true}, {Type: "tanh"},
	}}
	w, b := make([]float32, 12), make([]float32, 3)
	for i := range w {
		w[i] = float32(r.w[i])
	}
	for i := range b {
		b[i] = float32(r.b[i])
	}
	md := contracts.NewKernelMetadata(id, "bp-"+id, id)
	md.InputShape, md.OutputShape, md.ParameterCount = []int{4}, []int{3}, 15
	md.CompilationTarget = "esper-kernel/v1"
	var buf bytes.Buffer
	if err := kernels.WriteKernel(&buf, mod, []kernels.Tensor{
		kernels.F32Tensor("0.weight", []int{3, 4}, w), kernels.F32Tensor("0.bias", []int{3}, b),
	}, &md); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// forward returns tanh(Wx+b) for batch samples of x.
func (r tanhRef) forward(x []float32) []float64 {
	batch := len(x) / 4
	y := make([]float64, batch*3)
	for s := range batch {
		for o := range 3 {
			v := r.b[o]
			for i := range 4 {
				v += r.w[o*4+i] * float64(x[s*4+i])
			}
			y[s*3+o] = math.Tanh(v)
		}
	}
	return y
}

// vjp returns Wᵀ((1 − y²)⊙g), the gradient of ⟨g, tanh(Wx+b)⟩ for x.
func (r tanhRef) vjp(x, g []float32) []float64 {
	y := r.forward(x)
	gi := make([]float64, len(x))
	for s := range len(x) / 4 {
		for o := range 3 {
			d := (1 - y[s*3+o]*y[s*3+o]) * float64(g[s*3+o])
			for i := range 4 {
				gi[s*4+i] += r.w[o*4+i] * d
			}
		}
	}
	return gi
}

// seedSpec is one seed of a test layer: the kernel it holds (a key of
// refs), its alpha, and the state it is moved to after the load.
type seedSpec struct {
	kernel string
	alpha  float64
	state  contracts.SeedState
}

// statePath is how a germinated seed reaches each state.
var statePath = map[contracts.SeedState][]contracts.SeedState{
	contracts.SeedGerminated: nil,
	contracts.SeedTraining:   {contracts.SeedTraining},
	contracts.SeedGrafting:   {contracts.SeedTraining, contracts.SeedGrafting},
	contracts.SeedFossilized: {contracts.SeedTraining, contracts.SeedGrafting, contracts.SeedFossilized},
	contracts.SeedCulled:     {contracts.SeedCulled},
}

// buildLayer declares layer and loads its seeds (kernel names are
// "<layer>.<kernel>.<seed>", so that one weight set may serve two seeds).
func buildLayer(t testing.TB, h *Host, layer string, seeds map[int]seedSpec) {
	t.Helper()
	if _, err := declareLayer(h, layer); err != nil {
		t.Fatal(err)
	}
	for idx, s := range seeds {
		name := fmt.Sprintf("%s.%s.%d", layer, s.kernel, idx)
		if _, err := h.Load(context.Background(), LoadRequest{Data: tanhKernel(t, name, refs[s.kernel]), Name: name, Layer: layer, SeedIdx: idx}); err != nil {
			t.Fatal(err)
		}
		if err := setAlpha(h, layer, idx, s.alpha); err != nil {
			t.Fatal(err)
		}
		for _, st := range statePath[s.state] {
			if err := setSeedState(h, layer, idx, st, "test"); err != nil {
				t.Fatal(err)
			}
		}
	}
}

func newLayerHost(t testing.TB, cfg Config) *Host {
	t.Helper()
	if cfg.GraftingRamp == 0 {
		cfg.GraftingRamp = -1 // alphas stay as set
	}
	h, _, _ := newHost(t, openInventory(t, "", nil), cfg)
	return h
}

// layerInputs are a batch of 2 samples for the tanh kernels: x, a default
// and a grad_output.
func layerInputs() (x, def, g []float32) {
	x = []float32{0.3, -1.2, 0.8, 0.05, -0.6, 0.4, 1.5, -0.9}
	def = []float32{0.7, -0.3, 0.2, -1.1, 0.45, 0.9}
	g = []float32{1, -0.5, 0.25, 0.3, 0.8, -1.2}
	return
}

// closeTo fails when got and want differ by more than tol (absolute, the
// values are of order 1).
func closeTo(t *testing.T, what string, got []float32, want []float64, tol float64) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("%s: %d values, want %d", what, len(got), len(want))
	}
	for i := range got {
		if d := math.Abs(float64(got[i]) - want[i]); !(d <= tol) {
			t.Fatalf("%s[%d] = %v, want %v (off by %g)", what, i, got[i], want[i], d)
		}
	}
}

// Every case of the SPEC's blend, forward and backward in one call,
// against float64 references of the kernels: output, grad_input,
// grad_default and the blend the response reports.
func TestLayerBlend(t *testing.T) {
	x, def, g := layerInputs()
	for _, c := range []struct {
		name        string
		seeds       map[int]seedSpec
		noDefault   bool
		wantAlphas  map[int]float64 // applied, by seed
		wantTotal   float64
		wantScale   float64
		notRunSeeds []int // seeds holding a kernel that must not run
	}{
		{name: "one seed at alpha 1", seeds: map[int]seedSpec{0: {"ka", 1, contracts.SeedGerminated}},
			wantAlphas: map[int]float64{0: 1}, wantTotal: 1, wantScale: 1},
		{name: "one seed at alpha 0.5", seeds: map[int]seedSpec{1: {"ka", 0.5, contracts.SeedTraining}},
			wantAlphas: map[int]float64{1: 0.5}, wantTotal: 0.5, wantScale: 1},
		{name: "one seed at alpha 0", seeds: map[int]seedSpec{0: {"ka", 0, contracts.SeedGerminated}},
			wantAlphas: map[int]float64{0: 0}, wantTotal: 0, wantScale: 1},
		{name: "two seeds summing over 1", seeds: map[int]seedSpec{0: {"ka", 0.9, contracts.SeedGerminated}, 2: {"kb", 0.6, contracts.SeedGrafting}},
			wantAlphas: map[int]float64{0: 0.6, 2: 0.4}, wantTotal: 1, wantScale: 1 / 1.5},
		{name: "three seeds under 1", seeds: map[int]seedSpec{0: {"ka", 0.2, contracts.SeedGerminated}, 1: {"kb", 0.3, contracts.SeedTraining}, 3: {"kc", 0.1, contracts.SeedGrafting}},
			wantAlphas: map[int]float64{0: 0.2, 1: 0.3, 3: 0.1}, wantTotal: 0.6, wantScale: 1},
		{name: "fossilized at alpha 1", seeds: map[int]seedSpec{0: {"kb", 0.3, contracts.SeedFossilized}},
			wantAlphas: map[int]float64{0: 1}, wantTotal: 1, wantScale: 1},
		{name: "culled seed costs nothing", seeds: map[int]seedSpec{0: {"ka", 0.8, contracts.SeedCulled}, 1: {"kb", 0.5, contracts.SeedGerminated}},
			wantAlphas: map[int]float64{1: 0.5}, wantTotal: 0.5, wantScale: 1, notRunSeeds: []int{0}},
		{name: "no active seed", seeds: map[int]seedSpec{2: {"kc", 1, contracts.SeedCulled}},
			wantAlphas: map[int]float64{}, wantTotal: 0, wantScale: 1, notRunSeeds: []int{2}},
		{name: "without default", seeds: map[int]seedSpec{0: {"ka", 0.5, contracts.SeedGerminated}, 1: {"kc", 0.25, contracts.SeedGerminated}},
			noDefault: true, wantAlphas: map[int]float64{0: 0.5, 1: 0.25}, wantTotal: 0.75, wantScale: 1},
	} {
		t.Run(c.name, func(t *testing.T) {
			h := newLayerHost(t, Config{})
			buildLayer(t, h, "L", c.seeds)
			req := Request{Input: x, Shape: []int{2, 4}, GradOutput: g, GradShape: []int{2, 3}}
			if !c.noDefault {
				req.Default, req.DefaultShape = def, []int{2, 3}
			}
			res, err := h.Infer(context.Background(), "L", req)
			if err != nil {
				t.Fatal(err)
			}
			// The float64 reference of the SPEC's formulas.
			wantOut, wantGrad := make([]float64, 6), make([]float64, 8)
			var total float64
			for idx, a := range c.wantAlphas {
				r := refs[c.seeds[idx].kernel]
				for i, v := range r.forward(x) {
					wantOut[i] += a * v
				}
				for i, v := range r.vjp(x, g) {
					wantGrad[i] += a * v
				}
				total += a
			}
			if !c.noDefault {
				for i := range wantOut {
					wantOut[i] += (1 - total) * float64(def[i])
				}
			}
			closeTo(t, "output", res.Output, wantOut, 1e-6)
			closeTo(t, "grad_input", res.GradInput, wantGrad, 1e-6)
			if !slices.Equal(res.Shape, []int{2, 3}) || !slices.Equal(res.GradInputShape, []int{2, 4}) {
				t.Errorf("shapes %v, %v", res.Shape, res.GradInputShape)
			}
			if c.noDefault {
				if res.GradDefault != nil || res.Blend.DefaultApplied || res.Exec.Blended {
					t.Errorf("without default: grad_default %v, default_applied %v", res.GradDefault, res.Blend.DefaultApplied)
				}
			} else {
				wantGD := make([]float64, 6)
				for i := range g {
					wantGD[i] = (1 - total) * float64(g[i])
				}
				closeTo(t, "grad_default", res.GradDefault, wantGD, 1e-7)
				if !res.Blend.DefaultApplied {
					t.Error("default_applied false with a default")
				}
			}
			if len(c.wantAlphas) == 0 && !c.noDefault && !slices.Equal(res.Output, def) {
				t.Errorf("no active seed: output %v, want the default %v exactly", res.Output, def)
			}
			b := res.Blend
			got := map[int]float64{}
			for _, s := range b.Seeds {
				got[s.SeedIdx] = s.Alpha
				if want := fmt.Sprintf("L.%s.%d", c.seeds[s.SeedIdx].kernel, s.SeedIdx); s.Kernel != want {
					t.Errorf("seed %d kernel %q, want %q", s.SeedIdx, s.Kernel, want)
				}
			}
			if len(got) != len(c.wantAlphas) {
				t.Errorf("seeds %+v, want alphas %v", b.Seeds, c.wantAlphas)
			}
			for idx, a := range c.wantAlphas {
				if math.Abs(got[idx]-a) > 1e-12 {
					t.Errorf("seed %d alpha %v, want %v", idx, got[idx], a)
				}
			}
			if math.Abs(b.AlphaTotal-c.wantTotal) > 1e-12 || math.Abs(b.AlphaScale-c.wantScale) > 1e-12 {
				t.Errorf("alpha_total %v alpha_scale %v, want %v %v", b.AlphaTotal, b.AlphaScale, c.wantTotal, c.wantScale)
			}
			for _, idx := range c.notRunSeeds {
				l, loaded := h.kernels[fmt.Sprintf("L.%s.%d", c.seeds[idx].kernel, idx)]
				if !loaded {
					continue // culling unloaded it: nothing left to run
				}
				if n := l.calls.Load(); n != 0 {
					t.Errorf("seed %d's kernel ran %d times; a seed that does not contribute costs nothing", idx, n)
				}
			}
			for idx := range c.wantAlphas {
				l := h.kernels[fmt.Sprintf("L.%s.%d", c.seeds[idx].kernel, idx)]
				if n := l.calls.Load(); n != 1 {
					t.Errorf("seed %d's kernel ran %d times, want 1", idx, n)
				}
			}
		})
	}
}

// A layer's traffic is its seeds' health: each contributing seed's window
// sees its kernel's output, and its signal names the layer and the seed.
func TestLayerTrafficIsItsSeedsHealth(t *testing.T) {
	h := newLayerHost(t, Config{})
	buildLayer(t, h, "L", map[int]seedSpec{1: {"ka", 0.5, contracts.SeedTraining}, 3: {"kb", 0.5, contracts.SeedTraining}})
	id, _ := h.book.layerID("L")
	x, def, _ := layerInputs()
	for range 3 {
		if _, err := h.Infer(context.Background(), "L", Request{Input: x, Shape: []int{2, 4}, Default: def}); err != nil {
			t.Fatal(err)
		}
	}
	sigs := h.emitSignals()
	if len(sigs) != 2 {
		t.Fatalf("%d signals, want one per seed: %+v", len(sigs), sigs)
	}
	for i, s := range sigs {
		if s.LayerID != id || s.SeedID != []int{1, 3}[i] || s.ActivationVariance == 0 {
			t.Errorf("signal %+v", s)
		}
	}
}

// A forward kept and its backward later give exactly what one call gives,
// however many backwards retain_forward allows; the last one uses it up.
func TestKeptForwardMatchesOneCall(t *testing.T) {
	h := newLayerHost(t, Config{})
	buildLayer(t, h, "L", map[int]seedSpec{0: {"ka", 0.7, contracts.SeedGerminated}, 2: {"kb", 0.6, contracts.SeedTraining}})
	ctx := context.Background()
	x, def, g := layerInputs()
	one, err := h.Infer(ctx, "L", Request{Input: x, Shape: []int{2, 4}, Default: def, GradOutput: g})
	if err != nil {
		t.Fatal(err)
	}
	fwd, err := h.Infer(ctx, "L", Request{Input: x, Shape: []int{2, 4}, Default: def, KeepForward: true})
	if err != nil {
		t.Fatal(err)
	}
	id := fwd.Blend.ForwardID
	if len(id) != 32 || fwd.GradInput != nil || !slices.Equal(fwd.Output, one.Output) {
		t.Fatalf("kept forward: id %q, output %v, want %v", id, fwd.Output, one.Output)
	}
	for i, retain := range []bool{true, true, false} {
		back, err := h.Infer(ctx, "L", Request{GradOutput: g, GradShape: []int{2, 3}, ForwardID: id, RetainForward: retain})
		if err != nil {
			t.Fatalf("backward %d: %v", i, err)
		}
		if back.Output != nil || !slices.Equal(back.GradInput, one.GradInput) || !slices.Equal(back.GradDefault, one.GradDefault) ||
			!slices.Equal(back.GradInputShape, []int{2, 4}) || back.Blend.ForwardID != id || back.Blend.AlphaTotal != one.Blend.AlphaTotal {
			t.Fatalf("backward %d: %+v\nwant grads %v %v", i, back, one.GradInput, one.GradDefault)
		}
	}
	_, err = h.Infer(ctx, "L", Request{GradOutput: g, ForwardID: id})
	if failure.ClassOf(err) != failure.NotFound || !strings.Contains(err.Error(), id) || !strings.Contains(err.Error(), "used it already") {
		t.Fatalf("backward of a used-up forward: %v", err)
	}
	// One call that also keeps its forward: a later backward agrees.
	both, err := h.Infer(ctx, "L", Request{Input: x, Shape: []int{2, 4}, Default: def, GradOutput: g, KeepForward: true})
	if err != nil {
		t.Fatal(err)
	}
	later, err := h.Infer(ctx, "L", Request{GradOutput: g, ForwardID: both.Blend.ForwardID})
	if err != nil || !slices.Equal(later.GradInput, both.GradInput) || !slices.Equal(both.GradInput, one.GradInput) {
		t.Fatalf("one call kept: %v %v %v", err, later.GradInput, both.GradInput)
	}
}

// Between a kept forward and its backward the seed's kernel is swapped
// and its alpha changed: the backward is still the forward's.
func TestSwapBetweenForwardAndBackward(t *testing.T) {
	h := newLayerHost(t, Config{})
	buildLayer(t, h, "L", map[int]seedSpec{1: {"ka", 0.5, contracts.SeedGerminated}})
	ctx := context.Background()
	x, def, g := layerInputs()
	before, err := h.Infer(ctx, "L", Request{Input: x, Shape: []int{2, 4}, Default: def, GradOutput: g})
	if err != nil {
		t.Fatal(err)
	}
	fwd, err := h.Infer(ctx, "L", Request{Input: x, Shape: []int{2, 4}, Default: def, KeepForward: true})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := h.Load(ctx, LoadRequest{Data: tanhKernel(t, "L.ka.1", refs["kb"]), Name: "L.ka.1", Layer: "L", SeedIdx: 1, Replace: true}); err != nil {
		t.Fatal(err)
	}
	if err := setAlpha(h, "L", 1, 0.9); err != nil {
		t.Fatal(err)
	}
	after, err := h.Infer(ctx, "L", Request{Input: x, Shape: []int{2, 4}, Default: def, GradOutput: g})
	if err != nil {
		t.Fatal(err)
	}
	if slices.Equal(after.GradInput, before.GradInput) {
		t.Fatal("the swap changed nothing: the test proves nothing")
	}
	back, err := h.Infer(ctx, "L", Request{GradOutput: g, ForwardID: fwd.Blend.ForwardID})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(back.GradInput, before.GradInput) || !slices.Equal(back.GradDefault, before.GradDefault) || back.Blend.Seeds[0].Alpha != 0.5 {
		t.Fatalf("backward after the swap: %v %v (alpha %v), want the forward's %v %v",
			back.GradInput, back.GradDefault, back.Blend.Seeds[0].Alpha, before.GradInput, before.GradDefault)
	}
	// Unloading the seed's kernel does not take the kept forward with it.
	fwd2, err := h.Infer(ctx, "L", Request{Input: x, Shape: []int{2, 4}, KeepForward: true})
	if err != nil {
		t.Fatal(err)
	}
	if err := h.Unload(ctx, "L.ka.1"); err != nil {
		t.Fatal(err)
	}
	back2, err := h.Infer(ctx, "L", Request{GradOutput: g, ForwardID: fwd2.Blend.ForwardID})
	if err != nil || !slices.Equal(back2.GradInput, after.GradInput) || back2.GradDefault != nil {
		t.Fatalf("backward after unload: %v %v, want %v and no grad_default", err, back2.GradInput, after.GradInput)
	}
}

// Kept forwards are bounded by count and by bytes (the oldest go first),
// and expire; each refusal names the forward_id and why it is gone.
func TestKeptForwardsAreBounded(t *testing.T) {
	x, _, g := layerInputs()
	ctx := context.Background()
	keep := func(t *testing.T, h *Host) string {
		t.Helper()
		res, err := h.Infer(ctx, "L", Request{Input: x, Shape: []int{2, 4}, KeepForward: true})
		if err != nil {
			t.Fatal(err)
		}
		return res.Blend.ForwardID
	}
	backward := func(h *Host, id string) error {
		_, err := h.Infer(ctx, "L", Request{GradOutput: g, ForwardID: id, RetainForward: true})
		return err
	}
	gone := func(t *testing.T, err error, id, why string) {
		t.Helper()
		if failure.ClassOf(err) != failure.NotFound || !strings.Contains(err.Error(), `"`+id+`"`) || !strings.Contains(err.Error(), why) {
			t.Fatalf("got %v, want 404 naming %s: %s", err, id, why)
		}
	}
	seeds := map[int]seedSpec{0: {"ka", 1, contracts.SeedGerminated}}
	// One tape of this kernel at batch 2: its tanh output, 2×3 floats.
	tape := int64(2 * 3 * 4)

	t.Run("count", func(t *testing.T) {
		h := newLayerHost(t, Config{KeptForwards: 2})
		buildLayer(t, h, "L", seeds)
		a, b, c := keep(t, h), keep(t, h), keep(t, h)
		gone(t, backward(h, a), a, "evicted")
		for _, id := range []string{b, c} {
			if err := backward(h, id); err != nil {
				t.Fatal(err)
			}
		}
		if st := h.forwards.stats(); st.count != 2 || st.evicted != 1 || st.bytes != 2*(tape+keptOverhead) {
			t.Fatalf("stats %+v", st)
		}
	})
	t.Run("bytes", func(t *testing.T) {
		h := newLayerHost(t, Config{KeptForwardBytes: 3 * (tape + keptOverhead)})
		buildLayer(t, h, "L", seeds)
		ids := []string{keep(t, h), keep(t, h), keep(t, h), keep(t, h), keep(t, h)}
		for _, id := range ids[:2] {
			gone(t, backward(h, id), id, "evicted")
		}
		for _, id := range ids[2:] {
			if err := backward(h, id); err != nil {
				t.Fatal(err)
			}
		}
	})
	t.Run("one forward over the bound", func(t *testing.T) {
		h := newLayerHost(t, Config{KeptForwardBytes: tape})
		buildLayer(t, h, "L", seeds)
		_, err := h.Infer(ctx, "L", Request{Input: x, Shape: []int{2, 4}, KeepForward: true})
		if failure.ClassOf(err) != failure.TooLarge || !strings.Contains(err.Error(), "--kept-forward-bytes") {
			t.Fatalf("got %v", err)
		}
	})
	t.Run("expiry", func(t *testing.T) {
		var mu sync.Mutex
		now := time.Unix(1_800_000_000, 0)
		clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
		advance := func(d time.Duration) { mu.Lock(); now = now.Add(d); mu.Unlock() }
		h := newLayerHost(t, Config{KeptForwardTTL: 10 * time.Second, Now: clock})
		buildLayer(t, h, "L", seeds)
		a := keep(t, h)
		advance(5 * time.Second)
		b := keep(t, h)
		if err := backward(h, a); err != nil {
			t.Fatal(err)
		}
		advance(6 * time.Second) // a is 11 s old, b 6 s
		gone(t, backward(h, a), a, "expired")
		if err := backward(h, b); err != nil {
			t.Fatal(err)
		}
		advance(5 * time.Second)
		h.forwards.sweep(h.cfg.Now()) // what Run does every signal interval
		if st := h.forwards.stats(); st.count != 0 || st.bytes != 0 || st.expired != 2 {
			t.Fatalf("after the sweep: %+v", st)
		}
		gone(t, backward(h, b), b, "expired")
	})
	t.Run("unknown and other layer", func(t *testing.T) {
		h := newLayerHost(t, Config{})
		buildLayer(t, h, "L", seeds)
		buildLayer(t, h, "M", seeds)
		gone(t, backward(h, "0123"), "0123", "unknown")
		res, err := h.Infer(ctx, "M", Request{Input: x, Shape: []int{2, 4}, KeepForward: true})
		if err != nil {
			t.Fatal(err)
		}
		err = backward(h, res.Blend.ForwardID)
		if failure.ClassOf(err) != failure.BadInput || !strings.Contains(err.Error(), `layer "M", not of "L"`) {
			t.Fatalf("forward of another layer: %v", err)
		}
	})
}

// Requests a layer refuses, each with the field that is wrong; a kernel
// served directly takes no gradient.
func TestLayerRequestRefusals(t *testing.T) {
	h := newLayerHost(t, Config{MaxBatch: 8})
	buildLayer(t, h, "L", map[int]seedSpec{0: {"ka", 1, contracts.SeedGerminated}})
	if _, err := h.Load(context.Background(), LoadRequest{Data: tanhKernel(t, "direct", refs["ka"]), Name: "direct"}); err != nil {
		t.Fatal(err)
	}
	buildLayer(t, h, "Empty", map[int]seedSpec{1: {"ka", 1, contracts.SeedCulled}}) // culling unloads the kernel
	if _, loaded := h.Kernel("Empty.ka.1"); loaded {
		t.Fatal("culling a seed left its kernel loaded")
	}
	x, def, g := layerInputs()
	for _, c := range []struct {
		name, model string
		req         Request
		class       failure.Class
		msg         string
	}{
		{"no input", "L", Request{GradOutput: g}, failure.BadInput, "needs input"},
		{"input shape", "L", Request{Input: x, Shape: []int{4, 2}}, failure.BadInput, "input has shape [4 2]; layer \"L\" takes [batch, 4]"},
		{"input length", "L", Request{Input: x[:4], Shape: []int{2, 4}}, failure.BadInput, "input holds 4 values"},
		{"batch over the limit", "L", Request{Input: make([]float32, 36), Shape: []int{9, 4}}, failure.TooLarge, "largest batch of 8"},
		{"default shape", "L", Request{Input: x, Shape: []int{2, 4}, Default: def, DefaultShape: []int{3, 2}}, failure.BadInput, "default has shape [3 2]"},
		{"grad_output length", "L", Request{Input: x, Shape: []int{2, 4}, GradOutput: g[:3]}, failure.BadInput, "grad_output holds 3 values"},
		{"forward_id with input", "L", Request{Input: x, Shape: []int{2, 4}, GradOutput: g, ForwardID: "f"}, failure.BadInput, "grad_output alone"},
		{"forward_id without grad_output", "L", Request{ForwardID: "f"}, failure.BadInput, "needs grad_output"},
		{"retain without forward_id", "L", Request{Input: x, Shape: []int{2, 4}, RetainForward: true}, failure.BadInput, "retain_forward goes with forward_id"},
		{"no shape known", "Empty", Request{Input: x, Shape: []int{2, 4}}, failure.BadInput, "send default"},
		{"kernel with grad_output", "direct", Request{Input: x, Shape: []int{2, 4}, GradOutput: g}, failure.BadInput, "grad_output: model \"direct\" is a kernel served directly"},
		{"kernel keeping", "direct", Request{Input: x, Shape: []int{2, 4}, KeepForward: true}, failure.BadInput, "keep_forward: model \"direct\""},
		{"unknown model", "nope", Request{Input: x, Shape: []int{2, 4}}, failure.NotFound, "no kernel or layer \"nope\""},
	} {
		_, err := h.Infer(context.Background(), c.model, c.req)
		if failure.ClassOf(err) != c.class || err == nil || !strings.Contains(err.Error(), c.msg) {
			t.Errorf("%s: got %v (%v), want %v containing %q", c.name, err, failure.ClassOf(err), c.class, c.msg)
		}
	}
	// A layer's model says what its seeds take; a direct kernel stays one.
	m, ok := h.Model("L")
	if !ok || !m.IsLayer() || !slices.Equal(m.InputShape(), []int{4}) || !slices.Equal(m.OutputShape(), []int{3}) || m.MaxBatch() != 8 {
		t.Fatalf("layer model %v %+v", ok, m)
	}
	if m, ok := h.Model("direct"); !ok || m.IsLayer() {
		t.Fatal("a directly served kernel became a layer")
	}
	if m, ok := h.Model("Empty"); !ok || !m.IsLayer() || m.InputShape() != nil {
		t.Fatal("a layer whose seeds hold no kernel is a model of unknown shapes")
	}
}

// Two seeds whose kernels disagree on shapes cannot be blended: the
// request says which.
func TestLayerSeedsOfDifferentShapes(t *testing.T) {
	h := newLayerHost(t, Config{})
	buildLayer(t, h, "L", map[int]seedSpec{0: {"ka", 0.5, contracts.SeedGerminated}})
	if _, err := h.Load(context.Background(), LoadRequest{Data: linearKernel(t, "lin", nil), Name: "lin", Layer: "L", SeedIdx: 1}); err != nil {
		t.Fatal(err)
	}
	if _, err := h.Load(context.Background(), LoadRequest{Data: wideKernel(t, "wide", 5), Name: "wide", Layer: "L", SeedIdx: 2}); err != nil {
		t.Fatal(err)
	}
	x, _, _ := layerInputs()
	_, err := h.Infer(context.Background(), "L", Request{Input: x, Shape: []int{2, 4}})
	if failure.ClassOf(err) != failure.Conflict || !strings.Contains(err.Error(), `seed 2's kernel "wide"`) {
		t.Fatalf("got %v", err)
	}
}

// goldenDir is the project's golden cases, or KERNEL_GOLDEN_DIR's.
func goldenDir() string {
	if d := os.Getenv("KERNEL_GOLDEN_DIR"); d != "" {
		return d
	}
	return filepath.Join("..", "kernels", "testdata", "golden")
}

// Every golden kernel with a PyTorch gradient reference, as the one seed
// of a layer at alpha 1 and 0.5: the output against PyTorch's float64
// output and grad_input against its float64 autograd, scaled by alpha,
// within the case's tolerance (the gradient's: the larger of it and ten
// times PyTorch's own float32 error); the kept forward's backward gives
// the same bytes as the one call.
func TestLayerGoldenGradients(t *testing.T) {
	dirs, _ := filepath.Glob(filepath.Join(goldenDir(), "*", "grad.safetensors"))
	if len(dirs) == 0 {
		t.Fatalf("no golden case with grad.safetensors under %s", goldenDir())
	}
	h := newLayerHost(t, Config{MaxOutputBytes: -1})
	ctx := context.Background()
	read := func(t *testing.T, path string) *kernels.File {
		raw, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		f, err := kernels.ParseSafetensors(raw)
		if err != nil {
			t.Fatal(err)
		}
		return f
	}
	tensor := func(t *testing.T, f *kernels.File, name string) kernels.Tensor {
		v, ok := f.Tensor(name)
		if !ok {
			t.Fatalf("no tensor %q", name)
		}
		return v
	}
	for _, gradPath := range dirs {
		dir := filepath.Dir(gradPath)
		id := filepath.Base(dir)
		t.Run(id, func(t *testing.T) {
			var c struct {
				InputShape []int   `json:"input_shape"`
				Tolerance  float64 `json:"tolerance"`
			}
			raw, err := os.ReadFile(filepath.Join(dir, "case.json"))
			if err != nil {
				t.Fatal(err)
			}
			if err := json.Unmarshal(raw, &c); err != nil {
				t.Fatal(err)
			}
			io, gf := read(t, filepath.Join(dir, "io.safetensors")), read(t, gradPath)
			x, err := tensor(t, io, "input").Float32s()
			if err != nil {
				t.Fatal(err)
			}
			wantOut, err := tensor(t, io, "expected").Float64s()
			if err != nil {
				t.Fatal(err)
			}
			gOut, err := tensor(t, gf, "grad_output").Float32s()
			if err != nil {
				t.Fatal(err)
			}
			wantGrad, err := tensor(t, gf, "grad_input").Float64s()
			if err != nil {
				t.Fatal(err)
			}
			var torchErr float64
			fmt.Sscan(gf.Metadata["torch_float32_rel_error"], &torchErr)
			gradTol := max(c.Tolerance, 10*torchErr)
			data, err := os.ReadFile(filepath.Join(dir, "kernel.safetensors"))
			if err != nil {
				t.Fatal(err)
			}
			if _, err := declareLayer(h, id); err != nil {
				t.Fatal(err)
			}
			if _, err := h.Load(ctx, LoadRequest{Data: data, Name: id + ".k", Layer: id, SeedIdx: 0}); err != nil {
				t.Fatal(err)
			}
			for _, alpha := range []float64{1, 0.5} {
				if err := setAlpha(h, id, 0, alpha); err != nil {
					t.Fatal(err)
				}
				req := Request{Input: x, Shape: c.InputShape, GradOutput: gOut, KeepForward: true}
				res, err := h.Infer(ctx, id, req)
				if err != nil {
					t.Fatal(err)
				}
				wo, wg := make([]float64, len(wantOut)), make([]float64, len(wantGrad))
				for i, v := range wantOut {
					wo[i] = alpha * v
				}
				for i, v := range wantGrad {
					wg[i] = alpha * v
				}
				if e := tolerance.RelErr(res.Output, wo); !(e <= c.Tolerance) {
					t.Errorf("alpha %v: output relative error %.3g > %.3g", alpha, e, c.Tolerance)
				}
				if e := tolerance.RelErr(res.GradInput, wg); !(e <= gradTol) {
					t.Errorf("alpha %v: grad_input relative error %.3g > %.3g", alpha, e, gradTol)
				}
				back, err := h.Infer(ctx, id, Request{GradOutput: gOut, ForwardID: res.Blend.ForwardID})
				if err != nil {
					t.Fatal(err)
				}
				if !slices.Equal(back.GradInput, res.GradInput) {
					t.Errorf("alpha %v: the kept forward's backward differs from the one call's", alpha)
				}
			}
		})
	}
}

// Forwards, kept forwards' backwards and one-call requests race kernel
// swaps and alpha changes (run with -race): every request succeeds, and
// every backward is the one of the weights and alpha its forward used
// (read back from the forward's output).
func TestLayerConcurrentForwardsBackwardsAndSwaps(t *testing.T) {
	h := newLayerHost(t, Config{})
	buildLayer(t, h, "L", map[int]seedSpec{0: {"ka", 0.2, contracts.SeedGerminated}, 1: {"kc", 0.5, contracts.SeedTraining}})
	ctx := context.Background()
	x, _, g := layerInputs()
	// The seed 0 versions: weights ka or kb, alpha 0.2 or 0.4; seed 1
	// stays. Each version's float64 output and gradient.
	type version struct {
		out, grad []float64
	}
	var versions []version
	for _, k := range []string{"ka", "kb"} {
		for _, a := range []float64{0.2, 0.4} {
			v := version{out: make([]float64, 6), grad: make([]float64, 8)}
			for i, y := range refs[k].forward(x) {
				v.out[i] = a * y
			}
			for i, y := range refs[k].vjp(x, g) {
				v.grad[i] = a * y
			}
			for i, y := range refs["kc"].forward(x) {
				v.out[i] += 0.5 * y
			}
			for i, y := range refs["kc"].vjp(x, g) {
				v.grad[i] += 0.5 * y
			}
			versions = append(versions, v)
		}
	}
	which := func(out []float32) int {
		for i, v := range versions {
			if tolerance.RelErr(out, v.out) < 1e-5 {
				return i
			}
		}
		return -1
	}
	// 40 swaps (kernel, then alpha) while four clients call; each client
	// goes on until the swaps are over.
	swapsDone := make(chan struct{})
	go func() {
		defer close(swapsDone)
		for i := range 40 {
			k := []string{"ka", "kb"}[i%2]
			if _, err := h.Load(ctx, LoadRequest{Data: tanhKernel(t, "L.ka.0", refs[k]), Name: "L.ka.0", Layer: "L", SeedIdx: 0, Replace: true}); err != nil {
				t.Error(err)
				return
			}
			if err := setAlpha(h, "L", 0, []float64{0.2, 0.4}[(i/2)%2]); err != nil {
				t.Error(err)
				return
			}
		}
	}()
	var wg sync.WaitGroup
	var seenMu sync.Mutex
	seen := map[int]int{}
	errs := make(chan error, 64)
	for w := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ; i++ {
				select {
				case <-swapsDone:
					if i >= 10 {
						return
					}
				default:
				}
				keep := (w+i)%2 == 0
				req := Request{Input: x, Shape: []int{2, 4}, KeepForward: keep}
				if !keep {
					req.GradOutput = g
				}
				res, err := h.Infer(ctx, "L", req)
				if err != nil {
					errs <- err
					return
				}
				v := which(res.Output)
				if v < 0 {
					errs <- fmt.Errorf("output %v is no version's", res.Output)
					return
				}
				seenMu.Lock()
				seen[v]++
				seenMu.Unlock()
				grad := res.GradInput
				if keep {
					back, err := h.Infer(ctx, "L", Request{GradOutput: g, ForwardID: res.Blend.ForwardID})
					if err != nil {
						errs <- err
						return
					}
					grad = back.GradInput
				}
				if e := tolerance.RelErr(grad, versions[v].grad); e > 1e-5 {
					errs <- fmt.Errorf("version %d's backward is off by %g: not its forward's", v, e)
					return
				}
			}
		}()
	}
	wg.Wait()
	<-swapsDone
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if len(seen) < 2 {
		t.Errorf("the requests saw versions %v: no swap happened between them, nothing was tested", seen)
	}
	t.Logf("requests per version (kernel, alpha): %v", seen)
}
