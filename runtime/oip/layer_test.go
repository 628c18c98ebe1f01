package oip_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"math"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/esper/kasmina-host/contracts"
	"github.com/esper/kasmina-host/internal/tolerance"
	"github.com/esper/kasmina-host/runtime"
	"github.com/esper/kasmina-host/runtime/oip"
	"github.com/esper/kasmina-host/runtime/oip/oiptest"
)

// The layer model over HTTP, on the real runtime host with golden
// kernels: the blend, its gradients, kept forwards and the errors, in the
// binary tensor extension and in JSON.

// golden reads a golden case of the project (or KERNEL_GOLDEN_DIR's).
func golden(t testing.TB, id string) *oiptest.Golden {
	t.Helper()
	g, err := oiptest.LoadGolden(filepath.Join(oiptest.GoldenDir(filepath.Join("..", "..")), id))
	if err != nil {
		t.Fatal(err)
	}
	return g
}

// layerSeed is one seed of a test layer: its alpha, and whether it is
// culled after its kernel is loaded; a seed without kernel is dormant.
type layerSeed struct {
	alpha  float64
	culled bool
	empty  bool
}

// layerFixture is a real host serving layer "L" whose seeds hold the
// golden kernel g (kernel "L.k<idx>"), with the HTTP handler over it.
type layerFixture struct {
	*hostFixture
	g       *oiptest.Golden
	handler http.Handler
}

func newLayerFixture(t testing.TB, g *oiptest.Golden, seeds ...layerSeed) *layerFixture {
	t.Helper()
	f := &layerFixture{hostFixture: newHostFixture(t), g: g}
	f.handler = oip.NewHandler(f.backend, f.views, oip.Options{}, nil)
	ctx := context.Background()
	if _, err := f.host.Apply(ctx, runtime.DeclareLayer{Layer: "L"}); err != nil {
		t.Fatal(err)
	}
	for idx, s := range seeds {
		if s.empty {
			continue
		}
		name := fmt.Sprintf("L.k%d", idx)
		if _, err := f.host.Load(ctx, runtime.LoadRequest{Data: g.Kernel, Name: name, Layer: "L", SeedIdx: idx}); err != nil {
			t.Fatal(err)
		}
		if _, err := f.host.Apply(ctx, runtime.SetAlpha{Layer: "L", SeedIdx: idx, Alpha: s.alpha}); err != nil {
			t.Fatal(err)
		}
		if s.culled {
			if _, err := f.host.Apply(ctx, runtime.SetSeedState{Layer: "L", SeedIdx: idx, State: contracts.SeedCulled, Why: "test"}); err != nil {
				t.Fatal(err)
			}
		}
	}
	return f
}

// calls is how often kernel name has run.
func (f *layerFixture) calls(t testing.TB, name string) int64 {
	t.Helper()
	v, ok := f.host.Kernel(name)
	if !ok {
		t.Fatalf("kernel %q is not loaded", name)
	}
	return int64(v.Calls)
}

// wire is one named tensor of a request.
type wire struct {
	name  string
	shape []int
	data  []float32
}

// layerCall is one request to a layer model.
type layerCall struct {
	tensors []wire
	params  map[string]any
	outputs []string // requested outputs; none: all
	json    bool     // JSON data and JSON answer instead of the binary extension
	// outputParams replaces a requested output's parameters (for
	// example to put it in shared memory).
	outputParams map[string]map[string]any
}

// layerAnswer is a decoded answer.
type layerAnswer struct {
	status  int
	err     string
	params  map[string]any
	outputs map[string]oip.Tensor
	order   []string
}

// body encodes c for the binary extension (or JSON).
func (c layerCall) body() ([]byte, map[string]string) {
	type input struct {
		Name       string         `json:"name"`
		Shape      []int          `json:"shape"`
		Datatype   string         `json:"datatype"`
		Parameters map[string]any `json:"parameters,omitempty"`
		Data       []float32      `json:"data,omitempty"`
	}
	type output struct {
		Name       string         `json:"name"`
		Parameters map[string]any `json:"parameters,omitempty"`
	}
	req := struct {
		Inputs     []input        `json:"inputs"`
		Outputs    []output       `json:"outputs,omitempty"`
		Parameters map[string]any `json:"parameters,omitempty"`
	}{Parameters: map[string]any{}}
	for k, v := range c.params {
		req.Parameters[k] = v
	}
	var bin []byte
	for _, t := range c.tensors {
		in := input{Name: t.name, Shape: t.shape, Datatype: "FP32"}
		if c.json {
			in.Data = t.data
		} else {
			in.Parameters = map[string]any{"binary_data_size": 4 * len(t.data)}
			for _, v := range t.data {
				bin = binary.LittleEndian.AppendUint32(bin, math.Float32bits(v))
			}
		}
		req.Inputs = append(req.Inputs, in)
	}
	for _, o := range c.outputs {
		p := map[string]any{"binary_data": !c.json}
		if op, ok := c.outputParams[o]; ok {
			p = op
		}
		req.Outputs = append(req.Outputs, output{Name: o, Parameters: p})
	}
	if !c.json {
		req.Parameters["binary_data_output"] = true
	}
	hdr, _ := json.Marshal(req)
	if c.json {
		return hdr, nil
	}
	return append(hdr, bin...), map[string]string{"Inference-Header-Content-Length": strconv.Itoa(len(hdr))}
}

// post sends c to model over h and decodes the answer.
func post(t testing.TB, h http.Handler, model string, c layerCall) layerAnswer {
	t.Helper()
	body, hdr := c.body()
	req := httptest.NewRequest("POST", "/v2/models/"+model+"/infer", bytes.NewReader(body))
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	return decodeAnswer(t, rec.Code, rec.Header(), rec.Body.Bytes())
}

// decodeAnswer decodes an inference answer: JSON, or a JSON header and the
// binary outputs after it.
func decodeAnswer(t testing.TB, status int, h http.Header, b []byte) layerAnswer {
	t.Helper()
	a := layerAnswer{status: status, outputs: map[string]oip.Tensor{}}
	if status != 200 {
		var e struct{ Error string }
		if err := json.Unmarshal(b, &e); err != nil {
			t.Fatalf("status %d with a body that is not an error document: %q", status, b)
		}
		a.err = e.Error
		return a
	}
	jsonPart, bin := b, []byte(nil)
	if s := h.Get("Inference-Header-Content-Length"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n > len(b) {
			t.Fatalf("Inference-Header-Content-Length %q for %d bytes", s, len(b))
		}
		jsonPart, bin = b[:n], b[n:]
	}
	var resp struct {
		Parameters map[string]any `json:"parameters"`
		Outputs    []struct {
			Name       string    `json:"name"`
			Shape      []int     `json:"shape"`
			Datatype   string    `json:"datatype"`
			Data       []float32 `json:"data"`
			Parameters struct {
				BinaryDataSize *int `json:"binary_data_size"`
			} `json:"parameters"`
		} `json:"outputs"`
	}
	if err := json.Unmarshal(jsonPart, &resp); err != nil {
		t.Fatalf("answer: %v in %q", err, jsonPart)
	}
	a.params = resp.Parameters
	for _, o := range resp.Outputs {
		data := o.Data
		if o.Parameters.BinaryDataSize != nil {
			n := *o.Parameters.BinaryDataSize
			if n > len(bin) || n%4 != 0 {
				t.Fatalf("output %q: binary_data_size %d with %d bytes left", o.Name, n, len(bin))
			}
			data = make([]float32, n/4)
			for i := range data {
				data[i] = math.Float32frombits(binary.LittleEndian.Uint32(bin[4*i:]))
			}
			bin = bin[n:]
		}
		if o.Datatype != "FP32" {
			t.Fatalf("output %q: datatype %q", o.Name, o.Datatype)
		}
		a.outputs[o.Name] = oip.Tensor{Shape: o.Shape, Data: data}
		a.order = append(a.order, o.Name)
	}
	if len(bin) != 0 {
		t.Fatalf("%d bytes after the outputs", len(bin))
	}
	return a
}

// ok fails the test unless the answer is 200.
func (a layerAnswer) ok(t testing.TB) layerAnswer {
	t.Helper()
	if a.status != 200 {
		t.Fatalf("status %d: %s", a.status, a.err)
	}
	return a
}

// ramp is n deterministic values in [−1, 1): a layer's default.
func ramp(n int) []float32 {
	out := make([]float32, n)
	for i := range out {
		out[i] = float32((i*37)%101)/50.5 - 1
	}
	return out
}

// blendRef is Σ aᵢ·k(x) + (1 − A)·def (def nil: none) from the float64
// reference k(x), and the seeds' float64 grad_input scaled by A.
func blendRef(k []float64, alphas []float64, def []float32) []float64 {
	var A float64
	for _, a := range alphas {
		A += a
	}
	out := make([]float64, len(k))
	for i, v := range k {
		out[i] = A * v
		if def != nil {
			out[i] += (1 - A) * float64(def[i])
		}
	}
	return out
}

// TestLayerModelBlend: a layer's answer over HTTP is the blend of its
// active seeds' kernels and the default, with the alphas divided by their
// sum when it exceeds 1, against PyTorch's float64 outputs of the golden
// kernels; grad_input is Σ αᵢ·J_kᵢᵀ·g against PyTorch's float64 autograd,
// grad_default (1 − A)·g; the response parameters list the seeds and
// alphas applied; dormant and culled seeds run nothing.
func TestLayerModelBlend(t *testing.T) {
	cases := []struct {
		name    string
		golden  string
		seeds   []layerSeed
		noDef   bool
		json    bool
		applied []float64 // the alphas applied, by contributing seed
		scale   float64
		idle    []int // seeds whose kernel must not run
	}{
		{name: "alpha 1", golden: "golden-1-003", seeds: []layerSeed{{alpha: 1}}, applied: []float64{1}, scale: 1},
		{name: "alpha 0.5", golden: "golden-1-003", seeds: []layerSeed{{alpha: 0.5}}, applied: []float64{0.5}, scale: 1},
		{name: "alpha 0", golden: "golden-1-003", seeds: []layerSeed{{alpha: 0}}, applied: []float64{0}, scale: 1},
		{name: "alpha 0.5 without default", golden: "golden-1-003", seeds: []layerSeed{{alpha: 0.5}}, noDef: true, applied: []float64{0.5}, scale: 1},
		{name: "alpha 0.5 in JSON", golden: "golden-1-003", seeds: []layerSeed{{alpha: 0.5}}, json: true, applied: []float64{0.5}, scale: 1},
		{name: "two seeds over 1 scaled", golden: "golden-1-003", seeds: []layerSeed{{alpha: 0.7}, {alpha: 0.6}},
			applied: []float64{0.7 / 1.3, 0.6 / 1.3}, scale: 1 / 1.3},
		{name: "two seeds under 1", golden: "golden-1-004", seeds: []layerSeed{{alpha: 0.25}, {alpha: 0.5}},
			applied: []float64{0.25, 0.5}, scale: 1},
		{name: "dormant and culled seeds", golden: "golden-1-002", seeds: []layerSeed{{empty: true}, {alpha: 0.75}, {alpha: 1, culled: true}},
			applied: []float64{0.75}, scale: 1, idle: []int{2}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			g := golden(t, tc.golden)
			f := newLayerFixture(t, g, tc.seeds...)
			def := ramp(len(g.Expected))
			tensors := []wire{{"input", g.InputShape, g.Input}, {"grad_output", g.OutShape, g.GradOutput}}
			if !tc.noDef {
				tensors = append(tensors, wire{"default", g.OutShape, def})
			} else {
				def = nil
			}
			a := post(t, f.handler, "L", layerCall{tensors: tensors, json: tc.json}).ok(t)

			var A float64
			var wantSeeds []oip.LayerSeed
			k := 0
			for idx, s := range tc.seeds {
				if s.empty || s.culled {
					continue
				}
				wantSeeds = append(wantSeeds, oip.LayerSeed{SeedIdx: idx, Alpha: tc.applied[k], Kernel: fmt.Sprintf("L.k%d", idx)})
				A += tc.applied[k]
				k++
			}
			out := a.outputs["output"]
			if !slices.Equal(out.Shape, g.OutShape) {
				t.Fatalf("output shape %v, want %v", out.Shape, g.OutShape)
			}
			if e := tolerance.RelErr(out.Data, blendRef(g.Expected, tc.applied, def)); !(e <= g.Tolerance) {
				t.Errorf("output relative error %.3g > %.3g", e, g.Tolerance)
			}
			gi := a.outputs["grad_input"]
			if !slices.Equal(gi.Shape, g.InputShape) {
				t.Fatalf("grad_input shape %v, want %v", gi.Shape, g.InputShape)
			}
			if e := tolerance.RelErr(gi.Data, blendRef(g.GradInput, tc.applied, nil)); !(e <= g.GradTolerance) {
				t.Errorf("grad_input relative error %.3g > %.3g", e, g.GradTolerance)
			}
			gd, hasGD := a.outputs["grad_default"]
			if hasGD == tc.noDef {
				t.Fatalf("grad_default present %v with default %v", hasGD, !tc.noDef)
			}
			if hasGD {
				for i, v := range gd.Data {
					if want := float32(1-A) * g.GradOutput[i]; math.Abs(float64(v-want)) > 1e-6 {
						t.Fatalf("grad_default[%d] = %v, want (1 − %v)·%v", i, v, A, g.GradOutput[i])
					}
				}
			}

			p := a.params
			if p["default_applied"] != !tc.noDef {
				t.Errorf("default_applied %v, want %v", p["default_applied"], !tc.noDef)
			}
			if at, _ := p["alpha_total"].(float64); math.Abs(at-A) > 1e-9 {
				t.Errorf("alpha_total %v, want %v", p["alpha_total"], A)
			}
			if sc, _ := p["alpha_scale"].(float64); math.Abs(sc-tc.scale) > 1e-9 {
				t.Errorf("alpha_scale %v, want %v", p["alpha_scale"], tc.scale)
			}
			s, isString := p["seeds"].(string)
			if !isString {
				t.Fatalf("seeds parameter %#v is not a JSON string", p["seeds"])
			}
			var got []oip.LayerSeed
			if err := json.Unmarshal([]byte(s), &got); err != nil {
				t.Fatalf("seeds %q: %v", s, err)
			}
			if len(got) != len(wantSeeds) {
				t.Fatalf("seeds %+v, want %+v", got, wantSeeds)
			}
			for i := range got {
				if got[i].SeedIdx != wantSeeds[i].SeedIdx || got[i].Kernel != wantSeeds[i].Kernel || math.Abs(got[i].Alpha-wantSeeds[i].Alpha) > 1e-9 {
					t.Fatalf("seeds %+v, want %+v", got, wantSeeds)
				}
			}
			if _, kept := p["forward_id"]; kept {
				t.Errorf("forward_id %v without keep_forward", p["forward_id"])
			}
			for _, idx := range tc.idle {
				// Culling a seed unloads its kernel (its slot gets a new
				// dormant seed): nothing of it may run, or be listed.
				if v, loaded := f.host.Kernel(fmt.Sprintf("L.k%d", idx)); loaded && v.Calls != 0 {
					t.Errorf("the culled seed %d's kernel ran %d times", idx, v.Calls)
				}
			}
			for _, ws := range wantSeeds {
				if n := f.calls(t, ws.Kernel); n != 1 {
					t.Errorf("seed %d's kernel ran %d times for one request", ws.SeedIdx, n)
				}
			}
		})
	}
}

// TestLayerModelKeptForward: keep_forward returns a forward_id whose
// backward (grad_output alone) gives the bytes of the one-call forward and
// backward; it is used up unless retain_forward, after which it is 404
// naming it; asking for outputs gives those only.
func TestLayerModelKeptForward(t *testing.T) {
	g := golden(t, "golden-1-004")
	f := newLayerFixture(t, g, layerSeed{alpha: 0.6}, layerSeed{alpha: 0.3})
	def := ramp(len(g.Expected))
	x := wire{"input", g.InputShape, g.Input}
	d := wire{"default", g.OutShape, def}
	gOut := wire{"grad_output", g.OutShape, g.GradOutput}

	one := post(t, f.handler, "L", layerCall{tensors: []wire{x, d, gOut}}).ok(t)
	fwd := post(t, f.handler, "L", layerCall{tensors: []wire{x, d}, params: map[string]any{"keep_forward": true}}).ok(t)
	id, _ := fwd.params["forward_id"].(string)
	if id == "" {
		t.Fatalf("no forward_id in %v", fwd.params)
	}
	if _, has := fwd.outputs["grad_input"]; has || !slices.Equal(fwd.outputs["output"].Data, one.outputs["output"].Data) {
		t.Fatalf("the kept forward's answer differs from the one call's output (or has a gradient)")
	}

	// retain_forward keeps it for another backward.
	for i := range 2 {
		back := post(t, f.handler, "L", layerCall{tensors: []wire{gOut}, params: map[string]any{"forward_id": id, "retain_forward": true}}).ok(t)
		if _, has := back.outputs["output"]; has {
			t.Fatal("a backward answered an output")
		}
		if !slices.Equal(back.outputs["grad_input"].Data, one.outputs["grad_input"].Data) ||
			!slices.Equal(back.outputs["grad_default"].Data, one.outputs["grad_default"].Data) {
			t.Fatalf("retained backward %d differs from the one call's gradients", i)
		}
		if back.params["forward_id"] != id {
			t.Fatalf("backward answered forward_id %v, want %q", back.params["forward_id"], id)
		}
	}
	// Without it the backward uses the forward up: asking for grad_input
	// only answers grad_input.
	back := post(t, f.handler, "L", layerCall{tensors: []wire{gOut}, params: map[string]any{"forward_id": id}, outputs: []string{"grad_input"}}).ok(t)
	if !slices.Equal(back.order, []string{"grad_input"}) || !slices.Equal(back.outputs["grad_input"].Data, one.outputs["grad_input"].Data) {
		t.Fatalf("outputs %v", back.order)
	}
	gone := post(t, f.handler, "L", layerCall{tensors: []wire{gOut}, params: map[string]any{"forward_id": id}})
	if gone.status != 404 || !strings.Contains(gone.err, id) {
		t.Fatalf("a used-up forward_id: %d %q", gone.status, gone.err)
	}
}

// TestLayerModelErrors: every malformed layer request is answered with its
// class's status and a message naming the input, dimension or parameter
// that is wrong; a kernel served directly refuses the layer's parameters.
func TestLayerModelErrors(t *testing.T) {
	g := golden(t, "golden-1-002") // [2, 5, 64] → [2, 5, 32]
	f := newLayerFixture(t, g, layerSeed{alpha: 1})
	if _, err := f.host.Load(context.Background(), runtime.LoadRequest{Data: g.Kernel, Name: "direct"}); err != nil {
		t.Fatal(err)
	}
	x := wire{"input", g.InputShape, g.Input}
	gOut := wire{"grad_output", g.OutShape, g.GradOutput}
	cases := []struct {
		name   string
		model  string
		call   layerCall
		status int
		want   []string
	}{
		{"unknown forward_id", "L", layerCall{tensors: []wire{gOut}, params: map[string]any{"forward_id": "f-nope"}}, 404, []string{`"f-nope"`}},
		{"default's dimension", "L", layerCall{tensors: []wire{x, {"default", []int{2, 5, 31}, make([]float32, 310)}}}, 400, []string{`"default"`, "shape[2] is 31", "32"}},
		{"grad_output's batch", "L", layerCall{tensors: []wire{x, {"grad_output", []int{3, 5, 32}, make([]float32, 480)}}}, 400, []string{`"grad_output"`, "shape[0] is 3", "batch"}},
		{"input's dimension", "L", layerCall{tensors: []wire{{"input", []int{2, 4, 64}, make([]float32, 512)}}}, 400, []string{`"input"`, "shape[1] is 4", "5"}},
		{"input's rank", "L", layerCall{tensors: []wire{{"input", []int{10, 64}, make([]float32, 640)}}}, 400, []string{`"input"`, "2 dimensions"}},
		{"unknown input", "L", layerCall{tensors: []wire{x, {"bias", []int{1}, []float32{1}}}}, 400, []string{`"bias"`}},
		{"input twice", "L", layerCall{tensors: []wire{x, x}}, 400, []string{"twice"}},
		{"no input", "L", layerCall{tensors: []wire{gOut}}, 400, []string{"forward_id"}},
		{"forward_id with input", "L", layerCall{tensors: []wire{x, gOut}, params: map[string]any{"forward_id": "f-1"}}, 400, []string{"forward_id"}},
		{"grad_input without grad_output", "L", layerCall{tensors: []wire{x}, outputs: []string{"grad_input"}}, 400, []string{"grad_input", "grad_output"}},
		{"unknown output", "L", layerCall{tensors: []wire{x}, outputs: []string{"logits"}}, 400, []string{`"logits"`}},
		{"keep_forward not a bool", "L", layerCall{tensors: []wire{x}, params: map[string]any{"keep_forward": "yes"}}, 400, []string{"keep_forward"}},
		{"kernel with keep_forward", "direct", layerCall{tensors: []wire{x}, params: map[string]any{"keep_forward": true}}, 400, []string{"parameters.keep_forward", "layer"}},
		{"kernel with grad_output", "direct", layerCall{tensors: []wire{x, gOut}}, 400, []string{"inputs"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			a := post(t, f.handler, tc.model, tc.call)
			if a.status != tc.status {
				t.Fatalf("status %d (%s), want %d", a.status, a.err, tc.status)
			}
			for _, w := range tc.want {
				if !strings.Contains(a.err, w) {
					t.Errorf("error %q does not contain %q", a.err, w)
				}
			}
		})
	}
	// The kernel served directly keeps its answer: output only, no blend.
	a := post(t, f.handler, "direct", layerCall{tensors: []wire{x}}).ok(t)
	if _, has := a.params["alpha_total"]; has || !slices.Equal(a.order, []string{"output"}) {
		t.Fatalf("a kernel served directly answered %v with %v", a.order, a.params)
	}
	if e := tolerance.RelErr(a.outputs["output"].Data, g.Expected); !(e <= g.Tolerance) {
		t.Fatalf("direct kernel: relative error %.3g", e)
	}
}

// TestLayerModelMetadata: GET /v2/models/{layer} lists the layer's inputs
// (default and grad_output optional) and outputs with their shapes.
func TestLayerModelMetadata(t *testing.T) {
	g := golden(t, "golden-1-002")
	f := newLayerFixture(t, g, layerSeed{alpha: 1})
	rec := httptest.NewRecorder()
	f.handler.ServeHTTP(rec, httptest.NewRequest("GET", "/v2/models/L", nil))
	if rec.Code != 200 {
		t.Fatalf("%d %s", rec.Code, rec.Body)
	}
	var md struct {
		Name     string
		Platform string
		Inputs   []struct {
			Name     string
			Shape    []int
			Optional bool
		}
		Outputs []struct {
			Name  string
			Shape []int
		}
	}
	if err := json.Unmarshal(rec.Body.Bytes(), &md); err != nil {
		t.Fatal(err)
	}
	in, out := []int{-1, 5, 64}, []int{-1, 5, 32}
	wantIn := []struct {
		name     string
		shape    []int
		optional bool
	}{{"input", in, false}, {"default", out, true}, {"grad_output", out, true}}
	if md.Name != "L" || md.Platform != "kasmina-layer" || len(md.Inputs) != 3 || len(md.Outputs) != 3 {
		t.Fatalf("metadata %s", rec.Body)
	}
	for i, w := range wantIn {
		if md.Inputs[i].Name != w.name || !slices.Equal(md.Inputs[i].Shape, w.shape) || md.Inputs[i].Optional != w.optional {
			t.Errorf("inputs[%d] = %+v, want %+v", i, md.Inputs[i], w)
		}
	}
	for i, w := range []struct {
		name  string
		shape []int
	}{{"output", out}, {"grad_input", in}, {"grad_default", out}} {
		if md.Outputs[i].Name != w.name || !slices.Equal(md.Outputs[i].Shape, w.shape) {
			t.Errorf("outputs[%d] = %+v, want %+v", i, md.Outputs[i], w)
		}
	}
}

// TestLayerModelConcurrent (run it with -race): forwards, kept forwards'
// backwards and one-call requests at once all answer what one request
// alone answers.
func TestLayerModelConcurrent(t *testing.T) {
	g := golden(t, "golden-1-003")
	f := newLayerFixture(t, g, layerSeed{alpha: 0.4}, layerSeed{alpha: 0.4})
	x := wire{"input", g.InputShape, g.Input}
	gOut := wire{"grad_output", g.OutShape, g.GradOutput}
	want := post(t, f.handler, "L", layerCall{tensors: []wire{x, gOut}}).ok(t)
	var wg sync.WaitGroup
	errs := make(chan string, 64)
	for w := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 6 {
				var a layerAnswer
				switch w % 2 {
				case 0:
					a = post(t, f.handler, "L", layerCall{tensors: []wire{x, gOut}})
				default:
					fwd := post(t, f.handler, "L", layerCall{tensors: []wire{x}, params: map[string]any{"keep_forward": true}})
					id, _ := fwd.params["forward_id"].(string)
					if fwd.status != 200 || !slices.Equal(fwd.outputs["output"].Data, want.outputs["output"].Data) {
						errs <- fmt.Sprintf("forward: %d %s", fwd.status, fwd.err)
						return
					}
					a = post(t, f.handler, "L", layerCall{tensors: []wire{gOut}, params: map[string]any{"forward_id": id}})
				}
				if a.status != 200 || !slices.Equal(a.outputs["grad_input"].Data, want.outputs["grad_input"].Data) {
					errs <- fmt.Sprintf("worker %d: %d %s", w, a.status, a.err)
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for e := range errs {
		t.Error(e)
	}
}

// send makes one JSON request to h and returns the status and body.
func send(h http.Handler, method, path, body string) (int, string) {
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(method, path, strings.NewReader(body)))
	return rec.Code, rec.Body.String()
}

// TestLayerModelDeclared: a layer declared with PUT /v1/layers is a model
// at once, with its declared shapes: with no kernel its output is the
// default exactly and its grad_input zeros; a kernel loaded into a seed
// and an alpha set with PUT .../alpha make the blend, and a second seed
// pushing the alphas over 1 scales them.
func TestLayerModelDeclared(t *testing.T) {
	g := golden(t, "golden-1-003") // [7, 8] → [7, 32]
	f := newLayerFixture(t, g)
	if code, body := send(f.handler, "PUT", "/v1/layers/D", `{"num_seeds": 2, "input_shape": [8], "output_shape": [32]}`); code != 201 {
		t.Fatalf("PUT /v1/layers/D: %d %s", code, body)
	}
	rec := httptest.NewRecorder()
	f.handler.ServeHTTP(rec, httptest.NewRequest("GET", "/v2/models/D", nil))
	if !strings.Contains(rec.Body.String(), `"name":"input","datatype":"FP32","shape":[-1,8]`) ||
		!strings.Contains(rec.Body.String(), `"name":"output","datatype":"FP32","shape":[-1,32]`) {
		t.Fatalf("a declared layer's metadata: %s", rec.Body)
	}
	def := ramp(len(g.Expected))
	call := layerCall{tensors: []wire{{"input", g.InputShape, g.Input}, {"default", g.OutShape, def}, {"grad_output", g.OutShape, g.GradOutput}}}
	a := post(t, f.handler, "D", call).ok(t)
	if !slices.Equal(a.outputs["output"].Data, def) || a.params["seeds"] != "[]" || a.params["alpha_total"] != 0.0 {
		t.Fatalf("no kernel: output %v, parameters %v", a.outputs["output"].Data[:4], a.params)
	}
	for _, v := range a.outputs["grad_input"].Data {
		if v != 0 {
			t.Fatal("no kernel: grad_input is not zero")
		}
	}
	for idx, alpha := range []string{"0.8", "0.4"} {
		name := fmt.Sprintf("D.k%d", idx)
		if _, err := f.host.Load(context.Background(), runtime.LoadRequest{Data: g.Kernel, Name: name, Layer: "D", SeedIdx: idx}); err != nil {
			t.Fatal(err)
		}
		if code, body := send(f.handler, "PUT", fmt.Sprintf("/v1/layers/D/seeds/%d/alpha", idx), `{"alpha": `+alpha+`}`); code != 200 {
			t.Fatalf("PUT alpha: %d %s", code, body)
		}
		a = post(t, f.handler, "D", call).ok(t)
		alphas := []float64{0.8}
		if idx == 1 {
			alphas = []float64{0.8 / 1.2, 0.4 / 1.2}
		}
		if e := tolerance.RelErr(a.outputs["output"].Data, blendRef(g.Expected, alphas, def)); !(e <= g.Tolerance) {
			t.Errorf("%d seeds: output relative error %.3g", idx+1, e)
		}
		if e := tolerance.RelErr(a.outputs["grad_input"].Data, blendRef(g.GradInput, alphas, nil)); !(e <= g.GradTolerance) {
			t.Errorf("%d seeds: grad_input relative error %.3g", idx+1, e)
		}
	}
	if s, _ := a.params["alpha_scale"].(float64); math.Abs(s-1/1.2) > 1e-9 {
		t.Errorf("alpha_scale %v, want 1/1.2", a.params["alpha_scale"])
	}
}
