package oip_test

import (
	"encoding/json"
	"net/http"
	"strings"
	"testing"

	"github.com/esper/kasmina-host/runtime"
	"github.com/esper/kasmina-host/runtime/oip"
)

// The layer and seed-control routes over a real Host: a declaration
// answers the layer view with its seeds (201 new, 200 again, 409 for a
// change the host refuses, 400 naming the member); the seed routes answer
// the Outcome, or the error's status with {"error"}.
func TestLayerRoutes(t *testing.T) {
	f := newHostFixture(t, "k", "k2")
	fx := &fixture{handler: oip.NewHandler(f.backend, f.views, oip.Options{}, nil)}
	call := func(method, path, body string, hdr map[string]string) (int, map[string]any, string) {
		t.Helper()
		var b []byte
		if body != "" {
			b = []byte(body)
		}
		w := fx.call(method, path, b, hdr)
		var v map[string]any
		_ = json.Unmarshal(w.Body.Bytes(), &v)
		return w.Code, v, w.Body.String()
	}
	code, v, raw := call("PUT", "/v1/layers/layer1", `{"num_seeds": 4}`, nil)
	seeds, _ := v["seeds"].([]any)
	if code != http.StatusCreated || v["layer_name"] != "layer1" || v["layer_id"] != float64(runtime.LayerIDOf("layer1")) || v["num_seeds"] != 4.0 ||
		v["declared_by"] != "http" || len(seeds) != 4 {
		t.Fatalf("a new layer: %d %s", code, raw)
	}
	for i, s := range seeds {
		s := s.(map[string]any)
		if k, present := s["kernel"]; s["seed_idx"] != float64(i) || s["state"] != "dormant" || s["alpha"] != 0.0 || !present || k != nil {
			t.Errorf("seed %d of a new layer: %v", i, s)
		}
	}
	if code, _, raw := call("PUT", "/v1/layers/layer1", `{"num_seeds": 4}`, nil); code != http.StatusOK {
		t.Errorf("the same declaration again: %d %s", code, raw)
	}
	for _, c := range []struct {
		body string
		code int
		want string
	}{
		{`{"num_seeds": 4, "layer_id": 5}`, http.StatusConflict, `layer \"layer1\" has layer_id`},
		{`{"num_seed": 4}`, http.StatusBadRequest, `unknown field \"num_seed\"`},
		{`{}`, http.StatusBadRequest, "num_seeds is required"},
		{`{"num_seeds": 0}`, http.StatusBadRequest, "num_seeds 0: want 1 to 64"},
		{`{"num_seeds": 2, "input_shape": [4, -1]}`, http.StatusBadRequest, "input_shape [4 -1]"},
		{`{"num_seeds": "four"}`, http.StatusBadRequest, "num_seeds"},
	} {
		if code, _, raw := call("PUT", "/v1/layers/layer1", c.body, nil); code != c.code || !strings.Contains(raw, c.want) {
			t.Errorf("PUT %s: %d %s, want %d naming %s", c.body, code, raw, c.code, c.want)
		}
	}
	if code, v, raw := call("GET", "/v1/layers", "", nil); code != http.StatusOK || len(v["layers"].([]any)) != 1 {
		t.Fatalf("GET /v1/layers: %d %s", code, raw)
	}

	// Seed control.
	code, v, raw = call("POST", "/v1/layers/layer1/seeds/0/kernel", `{"artifact_id": "s3://b/k"}`, map[string]string{"X-Trace-Id": "trace-7"})
	if code != http.StatusOK || v["event_type"] != "kernel_load_success" || v["kernel"] != "k" || v["artifact_id"] != "s3://b/k" ||
		v["trace_id"] != "trace-7" || v["command_event_id"] == "" || v["seed_idx"] != 0.0 {
		t.Fatalf("load: %d %s", code, raw)
	}
	if code, v, raw := call("POST", "/v1/layers/layer1/seeds/1/kernel", `{"artifact_id": "s3://b/k"}`, nil); code != http.StatusOK || v["kernel"] != "k@layer1.1" {
		t.Fatalf("the same artifact into another seed: %d %s", code, raw)
	}
	if code, v, raw := call("PUT", "/v1/layers/layer1/seeds/0/alpha", `{"alpha": 1.5}`, nil); code != http.StatusOK || v["alpha"] != 1.0 || v["clamped"] != true {
		t.Errorf("alpha: %d %s", code, raw)
	}
	if code, v, raw := call("PUT", "/v1/layers/layer1/seeds/0/state", `{"state": "training"}`, nil); code != http.StatusOK || v["from_state"] != "germinated" || v["to_state"] != "training" {
		t.Errorf("state: %d %s", code, raw)
	}
	if code, v, raw := call("POST", "/v1/layers/layer1/seeds/0/kernel", `{"artifact_id": "s3://b/k2"}`, nil); code != http.StatusOK || v["kernel"] != "k2" {
		t.Errorf("a swap: %d %s", code, raw)
	}
	for _, c := range []struct {
		method, path, body string
		code               int
		want               string
	}{
		{"PUT", "/v1/layers/layer1/seeds/0/state", `{"state": "fossilized"}`, http.StatusUnprocessableEntity, `illegal state transition`},
		{"PUT", "/v1/layers/layer1/seeds/0/state", `{"state": "sleeping"}`, http.StatusBadRequest, `state \"sleeping\" is not a seed state`},
		{"POST", "/v1/layers/layer1/seeds/9/kernel", `{"artifact_id": "s3://b/k"}`, http.StatusBadRequest, `seed_idx 9 is out of range: layer \"layer1\" has 4 seeds (0 to 3)`},
		{"POST", "/v1/layers/layer1/seeds/x/kernel", `{"artifact_id": "s3://b/k"}`, http.StatusBadRequest, `seed_idx \"x\" in the path`},
		{"POST", "/v1/layers/layer1/seeds/2/kernel", `{"artifact_id": "s3://b/missing"}`, http.StatusNotFound, `missing`},
		{"POST", "/v1/layers/layer1/seeds/2/kernel", `{}`, http.StatusBadRequest, `artifact_id is required`},
		{"PUT", "/v1/layers/layer1/seeds/0/alpha", `{"state": "training"}`, http.StatusBadRequest, `state is not taken here (the route takes alpha)`},
		{"PUT", "/v1/layers/layer1/seeds/0/alpha", `{"alpha": "half"}`, http.StatusBadRequest, `alpha \"half\" is not a number`},
		{"PUT", "/v1/layers/nolayer/seeds/0/alpha", `{"alpha": 0.5}`, http.StatusNotFound, `no layer \"nolayer\" on this host`},
		{"DELETE", "/v1/layers/layer1/seeds/0/kernel", `{"alpha": 0.5}`, http.StatusBadRequest, `alpha is not taken here (the route takes no body)`},
		{"PUT", "/v1/layers/layer1/seeds/0/alpha", `{"alpha": 0.5}`, http.StatusOK, `"event_type":"seed_alpha_changed"`},
	} {
		code, v, raw := call(c.method, c.path, c.body, nil)
		if code != c.code || !strings.Contains(raw, c.want) {
			t.Errorf("%s %s %s: %d %s, want %d with %s", c.method, c.path, c.body, code, raw, c.code, c.want)
		}
		if code >= 400 && (len(v) != 1 || v["error"] == nil) {
			t.Errorf("%s %s: an error answer %s, want only {\"error\"}", c.method, c.path, raw)
		}
	}
	if code, v, raw := call("DELETE", "/v1/layers/layer1/seeds/0/kernel", "", nil); code != http.StatusOK || v["event_type"] != "kernel_unload_success" {
		t.Errorf("unload: %d %s", code, raw)
	}
	code, v, raw = call("GET", "/v1/layers/layer1", "", nil)
	seed0 := v["seeds"].([]any)[0].(map[string]any)
	if code != http.StatusOK || seed0["state"] != "dormant" || seed0["kernel"] != nil || len(seed0["history"].([]any)) != 1 {
		t.Fatalf("the layer after the unload: %d %s", code, raw)
	}
	if code, v, raw := call("DELETE", "/v1/layers/layer1", "", nil); code != http.StatusOK || v["state"] != "retired" || v["layer_name"] != "layer1" {
		t.Errorf("retire: %d %s", code, raw)
	}
	if _, ok := f.host.Kernel("k@layer1.1"); ok {
		t.Error("a retired layer's kernel still loaded")
	}
	if code, _, raw := call("GET", "/v1/layers/layer1", "", nil); code != http.StatusNotFound {
		t.Errorf("GET a retired layer: %d %s", code, raw)
	}
	if code, _, raw := call("DELETE", "/v1/layers/layer1", "", nil); code != http.StatusNotFound {
		t.Errorf("DELETE an unknown layer: %d %s", code, raw)
	}
}
