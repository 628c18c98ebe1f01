package main

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"math"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"testing"
	"time"
)

// layerTensor is one named FP32 tensor of a layer request.
type layerTensor struct {
	name  string
	shape []int
	data  []float32
}

// layerBody is a binary tensor extension request with the tensors and
// parameters given, and its Inference-Header-Content-Length.
func layerBody(tensors []layerTensor, params map[string]any) ([]byte, map[string]string) {
	type input struct {
		Name       string         `json:"name"`
		Shape      []int          `json:"shape"`
		Datatype   string         `json:"datatype"`
		Parameters map[string]any `json:"parameters"`
	}
	req := struct {
		Inputs     []input        `json:"inputs"`
		Parameters map[string]any `json:"parameters"`
	}{Parameters: map[string]any{"binary_data_output": true}}
	for k, v := range params {
		req.Parameters[k] = v
	}
	var bin []byte
	for _, t := range tensors {
		req.Inputs = append(req.Inputs, input{Name: t.name, Shape: t.shape, Datatype: "FP32", Parameters: map[string]any{"binary_data_size": 4 * len(t.data)}})
		for _, v := range t.data {
			bin = binary.LittleEndian.AppendUint32(bin, math.Float32bits(v))
		}
	}
	hdr, _ := json.Marshal(req)
	return append(hdr, bin...), map[string]string{"Inference-Header-Content-Length": strconv.Itoa(len(hdr)), "Content-Type": "application/octet-stream"}
}

// layerResult is a decoded layer answer.
type layerResult struct {
	params  map[string]any
	outputs map[string][]float32
}

// decodeLayerAnswer decodes a binary layer answer.
func decodeLayerAnswer(t *testing.T, h http.Header, b []byte) layerResult {
	t.Helper()
	n, err := strconv.Atoi(h.Get("Inference-Header-Content-Length"))
	if err != nil || n > len(b) {
		t.Fatalf("Inference-Header-Content-Length %q for %d bytes", h.Get("Inference-Header-Content-Length"), len(b))
	}
	var resp struct {
		Parameters map[string]any `json:"parameters"`
		Outputs    []struct {
			Name       string `json:"name"`
			Parameters struct {
				BinaryDataSize int `json:"binary_data_size"`
			} `json:"parameters"`
		} `json:"outputs"`
	}
	if err := json.Unmarshal(b[:n], &resp); err != nil {
		t.Fatalf("%v: %s", err, b[:n])
	}
	r := layerResult{params: resp.Parameters, outputs: map[string][]float32{}}
	bin := b[n:]
	for _, o := range resp.Outputs {
		size := o.Parameters.BinaryDataSize
		if size > len(bin) {
			t.Fatalf("output %q: %d bytes with %d left", o.Name, size, len(bin))
		}
		v := make([]float32, size/4)
		for i := range v {
			v[i] = math.Float32frombits(binary.LittleEndian.Uint32(bin[4*i:]))
		}
		r.outputs[o.Name], bin = v, bin[size:]
	}
	return r
}

// unixDaemon is d reached over its Unix socket, without its token.
func unixDaemon(d *daemon, sock string) *daemon {
	u := *d
	u.base, u.token = "http://kasmina", ""
	u.client = &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", sock)
		},
	}}
	return &u
}

// TestDaemonLayerOverUnixSocket runs the compiled binary with a token and
// --listen-unix, loads one example kernel directly and into two seeds of
// layer "L" (POST /v1/kernels with layer_name), sets their alphas with
// PUT /v1/layers/L/seeds/{i}/alpha (0.3 and 0.2): over the Unix socket,
// with no token, the
// layer's output is 0.5·kernel(x) + 0.5·default against the kernel served
// directly, a kept forward's backward by forward_id gives the bytes the
// one-call forward and backward gives over TCP, and the used-up id is 404;
// over TCP the same request without the token is 401.
func TestDaemonLayerOverUnixSocket(t *testing.T) {
	root := t.TempDir()
	sock := filepath.Join(t.TempDir(), "kasmina.sock")
	tokenFile := filepath.Join(t.TempDir(), "token")
	const token = "layer-e2e-token"
	if err := os.WriteFile(tokenFile, []byte(token), 0o600); err != nil {
		t.Fatal(err)
	}
	mlp := exampleDoc(t, root, "mlp-gelu") // [16] → [4]
	cfg := daemonConfig{token: token,
		args: []string{"--no-examples", "--kernel-root", root, "--listen-unix", sock, "--auth-token-file", tokenFile}}
	d := startDaemon(t, cfg)
	d.json("POST", "/v1/kernels", loadBody(mlp, "direct", "", 0), 201, nil)
	d.json("POST", "/v1/kernels", loadBody(mlp, "L.a", "L", 0), 201, nil)
	d.json("POST", "/v1/kernels", loadBody(mlp, "L.b", "L", 1), 201, nil)
	u := unixDaemon(d, sock)
	u.json("PUT", "/v1/layers/L/seeds/0/alpha", []byte(`{"alpha": 0.3}`), 200, nil)
	u.json("PUT", "/v1/layers/L/seeds/1/alpha", []byte(`{"alpha": 0.2}`), 200, nil)

	const batch = 3
	x := make([]float32, batch*16)
	for i := range x {
		x[i] = float32(i%11)/5 - 1
	}
	def := make([]float32, batch*4)
	gOut := make([]float32, batch*4)
	for i := range def {
		def[i] = float32(i) / 4
		gOut[i] = float32(i%3) - 1
	}
	in := layerTensor{"input", []int{batch, 16}, x}
	dt := layerTensor{"default", []int{batch, 4}, def}
	gt := layerTensor{"grad_output", []int{batch, 4}, gOut}

	body, hdr := layerBody([]layerTensor{in}, nil)
	code, h, b := d.do("POST", "/v2/models/direct/infer", body, hdr)
	if code != 200 {
		t.Fatalf("direct: %d %s", code, b)
	}
	direct := decodeLayerAnswer(t, h, b).outputs["output"]

	body, hdr = layerBody([]layerTensor{in, dt, gt}, nil)
	code, h, b = d.do("POST", "/v2/models/L/infer", body, hdr)
	if code != 200 {
		t.Fatalf("TCP: %d %s", code, b)
	}
	overTCP := decodeLayerAnswer(t, h, b)
	hdr["Authorization"] = ""
	if code, _, b := d.do("POST", "/v2/models/L/infer", body, hdr); code != 401 {
		t.Fatalf("TCP without the token: %d %s", code, b)
	}

	body, hdr = layerBody([]layerTensor{in, dt}, map[string]any{"keep_forward": true})
	code, h, b = u.do("POST", "/v2/models/L/infer", body, hdr)
	if code != 200 {
		t.Fatalf("Unix socket, no token: %d %s", code, b)
	}
	fwd := decodeLayerAnswer(t, h, b)
	for i, v := range fwd.outputs["output"] {
		if want := 0.5*direct[i] + 0.5*def[i]; math.Abs(float64(v-want)) > 1e-5 {
			t.Fatalf("output[%d] = %v, want 0.5·%v + 0.5·%v", i, v, direct[i], def[i])
		}
	}
	if !slices.Equal(fwd.outputs["output"], overTCP.outputs["output"]) {
		t.Fatal("the same forward answers differently over the Unix socket and TCP")
	}
	if fwd.params["alpha_total"] != 0.5 || fwd.params["default_applied"] != true {
		t.Fatalf("parameters %v", fwd.params)
	}
	id, _ := fwd.params["forward_id"].(string)
	body, hdr = layerBody([]layerTensor{gt}, map[string]any{"forward_id": id})
	code, h, b = u.do("POST", "/v2/models/L/infer", body, hdr)
	if code != 200 {
		t.Fatalf("backward of %q: %d %s", id, code, b)
	}
	back := decodeLayerAnswer(t, h, b)
	if !slices.Equal(back.outputs["grad_input"], overTCP.outputs["grad_input"]) || !slices.Equal(back.outputs["grad_default"], overTCP.outputs["grad_default"]) {
		t.Fatal("the kept forward's backward differs from the one-call gradients")
	}
	if code, _, b := u.do("POST", "/v2/models/L/infer", body, hdr); code != 404 || !bytes.Contains(b, []byte(id)) {
		t.Fatalf("a used-up forward_id: %d %s", code, b)
	}
}
