package main

import (
	"encoding/json"
	"math"
	"path/filepath"
	"strconv"
	"testing"

	"github.com/esper/kasmina-host/internal/tolerance"
	"github.com/esper/kasmina-host/runtime/oip/oiptest"
)

// TestDaemonDeclaredLayerOverUnixSocket: a layer declared with PUT
// /v1/layers, two seeds loaded with the seed-control route from a path
// under --kernels (the same golden kernel file in both), their alphas set
// with PUT .../alpha (0.7 and 0.6, summing over 1): over the Unix socket
// the layer answers PyTorch's float64 output of the kernel (the alphas
// scaled to sum 1, so the default gets 0) and its float64 grad_input,
// with alpha_scale 1/1.3.
func TestDaemonDeclaredLayerOverUnixSocket(t *testing.T) {
	g, err := oiptest.LoadGolden(filepath.Join(goldenDir(), "golden-1-003"))
	if err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(t.TempDir(), "kasmina.sock")
	d := startDaemon(t, daemonConfig{args: []string{"--kernels", goldenDir(), "--listen-unix", sock}})
	u := unixDaemon(d, sock)
	decl, _ := json.Marshal(map[string]any{"num_seeds": 2, "input_shape": g.InputShape[1:], "output_shape": g.OutShape[1:]})
	u.json("PUT", "/v1/layers/L", decl, 201, nil)
	for idx, alpha := range []float64{0.7, 0.6} {
		seed := "/v1/layers/L/seeds/" + strconv.Itoa(idx)
		u.json("POST", seed+"/kernel", []byte(`{"artifact_id":"golden-1-003/kernel.safetensors"}`), 200, nil)
		a, _ := json.Marshal(map[string]float64{"alpha": alpha})
		u.json("PUT", seed+"/alpha", a, 200, nil)
	}
	def := make([]float32, len(g.Expected))
	for i := range def {
		def[i] = 100 // weighted 0: alphas summing over 1 leave nothing for the default
	}
	body, hdr := layerBody([]layerTensor{{"input", g.InputShape, g.Input}, {"default", g.OutShape, def}, {"grad_output", g.OutShape, g.GradOutput}}, nil)
	code, h, b := u.do("POST", "/v2/models/L/infer", body, hdr)
	if code != 200 {
		t.Fatalf("%d %s", code, b)
	}
	r := decodeLayerAnswer(t, h, b)
	if e := tolerance.RelErr(r.outputs["output"], g.Expected); !(e <= g.Tolerance) {
		t.Errorf("output relative error %.3g > %.3g", e, g.Tolerance)
	}
	if e := tolerance.RelErr(r.outputs["grad_input"], g.GradInput); !(e <= g.GradTolerance) {
		t.Errorf("grad_input relative error %.3g > %.3g", e, g.GradTolerance)
	}
	if s, _ := r.params["alpha_scale"].(float64); math.Abs(s-1/1.3) > 1e-9 || r.params["alpha_total"] != 1.0 {
		t.Errorf("parameters %v", r.params)
	}
	for _, v := range r.outputs["grad_default"] {
		if v != 0 {
			t.Fatalf("grad_default %v, want zeros (A = 1)", r.outputs["grad_default"])
		}
	}
}
