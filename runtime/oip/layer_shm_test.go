package oip_test

import (
	"os"
	"slices"
	"strings"
	"testing"

	"github.com/esper/kasmina-host/runtime/oip"
	"github.com/esper/kasmina-host/runtime/oip/oiptest"
)

// TestLayerOutputsInSharedMemory: a layer's outputs (output, grad_input,
// grad_default) requested in shared memory are written to their regions
// with the values the binary extension answers, and the answer describes
// them without their bytes; one not in shared memory comes in the body. A
// region too small for an output is refused before the seeds run.
func TestLayerOutputsInSharedMemory(t *testing.T) {
	g := golden(t, "golden-1-004")
	f := newLayerFixture(t, g, layerSeed{alpha: 0.6})
	const size = 1 << 16
	reg, obj := oiptest.SharedRegion(t, "io", size)
	h := oip.NewHandler(f.backend, f.views, oip.Options{SharedMemory: reg}, nil)
	x := wire{"input", g.InputShape, g.Input}
	d := wire{"default", g.OutShape, ramp(len(g.Expected))}
	gOut := wire{"grad_output", g.OutShape, g.GradOutput}
	want := post(t, h, "L", layerCall{tensors: []wire{x, d, gOut}}).ok(t)

	at := map[string]int{"output": 0, "grad_input": 16384, "grad_default": 32768}
	region := func(name string, bytes int) map[string]any {
		return map[string]any{"shared_memory_region": "io", "shared_memory_offset": at[name], "shared_memory_byte_size": bytes}
	}
	sizes := map[string]int{"output": 4 * len(g.Expected), "grad_input": 4 * len(g.Input), "grad_default": 4 * len(g.Expected)}
	all := []string{"output", "grad_input", "grad_default"}
	for _, inShm := range [][]string{all, {"grad_input"}, {"output", "grad_default"}} {
		params := map[string]map[string]any{}
		for _, name := range inShm {
			params[name] = region(name, sizes[name])
		}
		got := post(t, h, "L", layerCall{tensors: []wire{x, d, gOut}, outputs: all, outputParams: params}).ok(t)
		for _, name := range all {
			o := got.outputs[name]
			if !slices.Equal(o.Shape, want.outputs[name].Shape) {
				t.Fatalf("%v in shared memory: %s has shape %v, want %v", inShm, name, o.Shape, want.outputs[name].Shape)
			}
			values := o.Data
			if slices.Contains(inShm, name) {
				if o.Data != nil {
					t.Fatalf("%v in shared memory: %s came in the body too", inShm, name)
				}
				values = floatsAt(t, obj, at[name], len(want.outputs[name].Data))
			}
			if !slices.Equal(values, want.outputs[name].Data) {
				t.Fatalf("%v in shared memory: %s differs from the binary extension's", inShm, name)
			}
		}
		if err := os.WriteFile(obj, make([]byte, size), 0o600); err != nil { // clear for the next round
			t.Fatal(err)
		}
	}

	// The backward of a forward without default has no grad_default: asked
	// for in a region, it is absent, as it would be in the body.
	fwd := post(t, h, "L", layerCall{tensors: []wire{x}, params: map[string]any{"keep_forward": true}}).ok(t)
	back := post(t, h, "L", layerCall{tensors: []wire{gOut}, params: map[string]any{"forward_id": fwd.params["forward_id"]},
		outputs: []string{"grad_input", "grad_default"}, outputParams: map[string]map[string]any{
			"grad_input": region("grad_input", sizes["grad_input"]), "grad_default": region("grad_default", sizes["grad_default"])}}).ok(t)
	if !slices.Equal(back.order, []string{"grad_input"}) {
		t.Fatalf("the backward of a forward without default answered %v", back.order)
	}

	// Too small for grad_input (the input's shape): refused, nothing run.
	before := f.calls(t, "L.k0")
	small := post(t, h, "L", layerCall{tensors: []wire{x, d, gOut}, outputs: all,
		outputParams: map[string]map[string]any{"grad_input": region("grad_input", sizes["grad_input"]-4)}})
	if small.status != 400 || !strings.Contains(small.err, "outputs[1].parameters.shared_memory_byte_size") {
		t.Fatalf("a region too small: %d %q", small.status, small.err)
	}
	if f.calls(t, "L.k0") != before {
		t.Fatal("the seed ran for a request refused for its output region")
	}
}

func floatsAt(t *testing.T, path string, off, n int) []float32 {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	return readFloats(t, f, int64(off), n)
}
