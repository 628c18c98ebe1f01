package oip_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil/promlint"

	"github.com/esper/kasmina-host/runtime/failure"
	"github.com/esper/kasmina-host/runtime/oip"
	"github.com/esper/kasmina-host/runtime/oip/oiptest"
)

// fixture is a handler over a fake backend with four models: "double"
// (per-sample shape [4], output 2x), "sum" ([2,3] → [1]), "loading" and
// "broken" (UNAVAILABLE with a reason).
type fixture struct {
	backend *oiptest.Backend
	handler http.Handler
	metrics *oip.Metrics
	reg     *prometheus.Registry
}

func newFixture(t testing.TB, opts oip.Options, views oip.HostViews) *fixture {
	t.Helper()
	b := oiptest.New()
	b.Add(oip.ModelInfo{Name: "double", InputShape: []int{4}, OutputShape: []int{4}, Placement: "cpu", Executor: "cpu-f32"}, oiptest.Scale(2))
	b.Add(oip.ModelInfo{Name: "sum", Version: "3", InputShape: []int{2, 3}, OutputShape: []int{1}, Placement: "cuda:0", Executor: "cpu-f32",
		Degraded: true, DegradedReason: "no GPU executor; running on CPU", MaxBatch: 8}, oiptest.RowSum())
	b.Add(oip.ModelInfo{Name: "loading", State: oip.StateLoading, InputShape: []int{4}}, oiptest.Scale(1))
	b.Add(oip.ModelInfo{Name: "broken", State: oip.StateUnavailable, Reason: "sha256 mismatch in kernel.safetensors"}, oiptest.Scale(1))
	reg := prometheus.NewRegistry()
	m, err := oip.NewMetrics(reg)
	if err != nil {
		t.Fatal(err)
	}
	if opts.Metrics == nil {
		opts.Metrics = m
	}
	opts.Version = "1.2.3"
	return &fixture{backend: b, handler: oip.NewHandler(b, views, opts, nil), metrics: m, reg: reg}
}

// call sends one request to the handler; Host defaults to a loopback name.
func (f *fixture) call(method, path string, body []byte, header map[string]string) *httptest.ResponseRecorder {
	r := httptest.NewRequest(method, path, bytes.NewReader(body))
	r.Host = "127.0.0.1:8090"
	for k, v := range header {
		if k == "Host" {
			r.Host = v
			continue
		}
		r.Header.Set(k, v)
	}
	w := httptest.NewRecorder()
	f.handler.ServeHTTP(w, r)
	return w
}

// errorMessage returns the "error" field of an error answer, failing the
// test when the body is not {"error": "..."} with a message.
func errorMessage(t *testing.T, w *httptest.ResponseRecorder) string {
	t.Helper()
	var e map[string]any
	if err := json.Unmarshal(w.Body.Bytes(), &e); err != nil {
		t.Fatalf("error answer is not JSON: %q", w.Body.String())
	}
	msg, ok := e["error"].(string)
	if !ok || msg == "" || len(e) != 1 {
		t.Fatalf(`error answer is not {"error": "..."}: %q`, w.Body.String())
	}
	return msg
}

func TestRoutesAnswerWithTheirStatus(t *testing.T) {
	tests := []struct {
		name, method, path, body string
		want                     int
		contains                 string
	}{
		{"live", "GET", "/v2/health/live", "", 200, `"live":true`},
		{"ready", "GET", "/v2/health/ready", "", 200, `"ready":true`},
		{"server metadata", "GET", "/v2", "", 200, `"extensions":["binary_tensor_data","model_repository","statistics"]`},
		{"model metadata", "GET", "/v2/models/double", "", 200, `"inputs":[{"name":"input","datatype":"FP32","shape":[-1,4]}]`},
		{"model metadata output", "GET", "/v2/models/sum", "", 200, `"outputs":[{"name":"output","datatype":"FP32","shape":[-1,1]}]`},
		{"model metadata shows degradation", "GET", "/v2/models/sum", "", 200, `"degraded":true,"degraded_reason":"no GPU executor; running on CPU"`},
		{"model metadata by version", "GET", "/v2/models/sum/versions/3", "", 200, `"versions":["3"]`},
		{"model metadata default version", "GET", "/v2/models/double/versions/1", "", 200, `"name":"double"`},
		{"model metadata wrong version", "GET", "/v2/models/sum/versions/2", "", 404, `no version "2"`},
		{"model metadata unknown", "GET", "/v2/models/nope", "", 404, `no model named "nope"`},
		{"model metadata escaped name", "GET", "/v2/models/no%2Fpe", "", 404, `no model named "no/pe"`},
		{"model ready", "GET", "/v2/models/double/ready", "", 200, `"ready":true`},
		{"model ready by version", "GET", "/v2/models/sum/versions/3/ready", "", 200, `"ready":true`},
		{"model loading is not ready", "GET", "/v2/models/loading/ready", "", 503, "LOADING"},
		{"model broken is not ready", "GET", "/v2/models/broken/ready", "", 503, "sha256 mismatch"},
		{"model ready unknown", "GET", "/v2/models/nope/ready", "", 404, "nope"},
		{"stats", "GET", "/v2/models/double/stats", "", 200, `"inference_count":7`},
		{"stats missing", "GET", "/v2/models/sum/stats", "", 404, "no statistics"},
		{"index", "POST", "/v2/repository/index", "", 200, `{"name":"broken","version":"1","state":"UNAVAILABLE","reason":"sha256 mismatch in kernel.safetensors"}`},
		{"index malformed body", "POST", "/v2/repository/index", "{", 400, "malformed JSON"},
		{"load", "POST", "/v2/repository/models/broken/load", "{}", 200, `"state":"READY"`},
		{"load unknown", "POST", "/v2/repository/models/nope/load", "", 404, `no model "nope" in the repository`},
		{"load with config", "POST", "/v2/repository/models/double/load", `{"parameters":{"config":"{}"}}`, 501, "parameters.config"},
		{"unload as Triton's client sends it", "POST", "/v2/repository/models/double/unload", `{"parameters":{"unload_dependents":false}}`, 200, `"state":"UNAVAILABLE"`},
		{"unknown path", "GET", "/v3/whatever", "", 404, "no route for GET /v3/whatever"},
		{"wrong method", "DELETE", "/v2/health/live", "", 405, "method DELETE is not allowed"},
		{"infer by GET", "GET", "/v2/models/double/infer", "", 405, "not allowed"},
		{"host view absent", "GET", "/v1/devices", "", 501, "not available on this host"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t, oip.Options{}, oip.HostViews{})
			f.backend.SetStats("double", map[string]int{"inference_count": 7})
			w := f.call(tc.method, tc.path, []byte(tc.body), nil)
			if w.Code != tc.want {
				t.Fatalf("status %d, want %d; body %s", w.Code, tc.want, w.Body)
			}
			if w.Code >= 400 {
				if msg := errorMessage(t, w); !strings.Contains(msg, tc.contains) {
					t.Fatalf("error %q does not mention %q", msg, tc.contains)
				}
				return
			}
			if ct := w.Header().Get("Content-Type"); ct != "application/json" {
				t.Errorf("Content-Type %q", ct)
			}
			if !strings.Contains(w.Body.String(), tc.contains) {
				t.Fatalf("body %s does not contain %s", w.Body, tc.contains)
			}
		})
	}
}

// What the mux answers itself (a path no route has, a method a route
// does not take, a path to clean) comes out in the front end's form: a
// JSON error with Allow on a 405, the redirect as the mux wrote it; and a
// matched route's answer is not touched by the capture.
func TestUnmatchedRequests(t *testing.T) {
	f := newFixture(t, oip.Options{}, oip.HostViews{})
	w := f.call("DELETE", "/v2/models/double", nil, nil)
	if w.Code != 405 || !strings.Contains(w.Header().Get("Allow"), "GET") || w.Header().Get("Content-Type") != "application/json" {
		t.Fatalf("DELETE on a GET route: %d, Allow %q, Content-Type %q, body %s", w.Code, w.Header().Get("Allow"), w.Header().Get("Content-Type"), w.Body)
	}
	if msg := errorMessage(t, w); msg != "method DELETE is not allowed on /v2/models/double" {
		t.Fatalf("405 error %q", msg)
	}
	w = f.call("GET", "/v2/health/../health/live", nil, nil)
	if w.Code/100 != 3 || w.Header().Get("Location") != "/v2/health/live" {
		t.Fatalf("unclean path: %d, Location %q, want the mux's redirect to /v2/health/live", w.Code, w.Header().Get("Location"))
	}
	w = f.call("GET", "/v2/health/live", nil, nil)
	if w.Code != 200 || w.Header().Get("Allow") != "" || w.Header().Get("Location") != "" {
		t.Fatalf("live: %d, headers %v", w.Code, w.Header())
	}
}

func TestRepositoryIndexReadyFilterAndStateChanges(t *testing.T) {
	f := newFixture(t, oip.Options{}, oip.HostViews{})
	index := func(body string) []map[string]string {
		w := f.call("POST", "/v2/repository/index", []byte(body), nil)
		if w.Code != 200 {
			t.Fatalf("index: %d %s", w.Code, w.Body)
		}
		var out []map[string]string
		if err := json.Unmarshal(w.Body.Bytes(), &out); err != nil {
			t.Fatal(err)
		}
		return out
	}
	if got := index(""); len(got) != 4 {
		t.Fatalf("index lists %d models, want 4: %v", len(got), got)
	}
	if got := index(`{"ready":true}`); len(got) != 2 || got[0]["name"] != "double" || got[1]["name"] != "sum" {
		t.Fatalf("ready index = %v, want double and sum", got)
	}
	if w := f.call("POST", "/v2/repository/models/double/unload", nil, nil); w.Code != 200 {
		t.Fatalf("unload: %d %s", w.Code, w.Body)
	}
	if w := f.call("GET", "/v2/models/double/ready", nil, nil); w.Code != 503 {
		t.Fatalf("unloaded model ready: %d, want 503", w.Code)
	}
	if w := f.call("POST", "/v2/models/double/infer", jsonInfer("FP32", []int{1, 4}, "[1,2,3,4]"), nil); w.Code != 503 || w.Header().Get("Retry-After") == "" {
		t.Fatalf("infer on unloaded model: %d (Retry-After %q), want 503 with Retry-After", w.Code, w.Header().Get("Retry-After"))
	}
	if w := f.call("POST", "/v2/repository/models/double/load", nil, nil); w.Code != 200 {
		t.Fatalf("load: %d %s", w.Code, w.Body)
	}
	if w := f.call("GET", "/v2/models/double/ready", nil, nil); w.Code != 200 {
		t.Fatalf("reloaded model ready: %d", w.Code)
	}
}

func TestServerNotReadyAnswers503WithReason(t *testing.T) {
	f := newFixture(t, oip.Options{RetryAfter: 2500 * 1e6}, oip.HostViews{})
	f.backend.SetReady(false, "kernel \"sum\" has no executor")
	w := f.call("GET", "/v2/health/ready", nil, nil)
	if w.Code != 503 || w.Header().Get("Retry-After") != "3" {
		t.Fatalf("status %d Retry-After %q, want 503 and 3", w.Code, w.Header().Get("Retry-After"))
	}
	if msg := errorMessage(t, w); !strings.Contains(msg, `kernel "sum" has no executor`) {
		t.Fatalf("reason missing: %q", msg)
	}
	if w := f.call("GET", "/v2/health/live", nil, nil); w.Code != 200 {
		t.Fatalf("liveness depends on readiness: %d", w.Code)
	}
}

// jsonInfer builds a JSON inference request for the input tensor.
func jsonInfer(datatype string, shape []int, data string) []byte {
	s, _ := json.Marshal(shape)
	return fmt.Appendf(nil, `{"id":"req-1","inputs":[{"name":"input","shape":%s,"datatype":%q,"data":%s}]}`, s, datatype, data)
}

// binaryInfer builds a request as Triton's client does: JSON header,
// then the raw bytes, with the header length to send in
// Inference-Header-Content-Length.
func binaryInfer(datatype string, shape []int, raw []byte, outputs string) (body []byte, headerLen int) {
	s, _ := json.Marshal(shape)
	params := `,"parameters":{"binary_data_output":true}`
	if outputs != "" {
		params = `,"outputs":` + outputs
	}
	hdr := fmt.Sprintf(`{"inputs":[{"name":"input","shape":%s,"datatype":%q,"parameters":{"binary_data_size":%d}}]%s}`, s, datatype, len(raw), params)
	return append([]byte(hdr), raw...), len(hdr)
}

func f32bytes(v ...float32) []byte {
	b := make([]byte, 4*len(v))
	for i, x := range v {
		binary.LittleEndian.PutUint32(b[4*i:], math.Float32bits(x))
	}
	return b
}

type inferAnswer struct {
	ModelName    string         `json:"model_name"`
	ModelVersion string         `json:"model_version"`
	ID           string         `json:"id"`
	Parameters   map[string]any `json:"parameters"`
	Outputs      []struct {
		Name       string         `json:"name"`
		Datatype   string         `json:"datatype"`
		Shape      []int          `json:"shape"`
		Parameters map[string]any `json:"parameters"`
		Data       []float64      `json:"data"`
	} `json:"outputs"`
}

func TestInferJSONRoundTrip(t *testing.T) {
	tests := []struct {
		name, model, datatype, data string
		shape                       []int
		wantShape                   []int
		want                        []float64
	}{
		{"flat FP32", "double", "FP32", "[1, 2.5, -3, 1e-3]", []int{1, 4}, []int{1, 4}, []float64{2, 5, -6, 0.002}},
		{"nested FP32", "double", "FP32", "[[1,2,3,4],[5,6,7,8]]", []int{2, 4}, []int{2, 4}, []float64{2, 4, 6, 8, 10, 12, 14, 16}},
		{"FP16 converted", "double", "FP16", "[0.5, 1, 65504, -2]", []int{1, 4}, []int{1, 4}, []float64{1, 2, 131008, -4}},
		{"FP64 converted", "double", "FP64", "[0.1, 0.2, 0.3, 0.4]", []int{1, 4}, []int{1, 4}, []float64{float64(float32(0.1) * 2), float64(float32(0.2) * 2), float64(float32(0.3) * 2), float64(float32(0.4) * 2)}},
		{"BF16 converted", "double", "BF16", "[1,2,3,4]", []int{1, 4}, []int{1, 4}, []float64{2, 4, 6, 8}},
		{"rank-3 nested", "sum", "FP32", "[[[1,2,3],[4,5,6]]]", []int{1, 2, 3}, []int{1, 1}, []float64{21}},
		{"empty batch", "double", "FP32", "[]", []int{0, 4}, []int{0, 4}, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t, oip.Options{}, oip.HostViews{})
			w := f.call("POST", "/v2/models/"+tc.model+"/infer", jsonInfer(tc.datatype, tc.shape, tc.data), nil)
			if w.Code != 200 {
				t.Fatalf("status %d: %s", w.Code, w.Body)
			}
			if ct := w.Header().Get("Content-Type"); ct != "application/json" {
				t.Errorf("Content-Type %q", ct)
			}
			if w.Header().Get("Inference-Header-Content-Length") != "" {
				t.Errorf("JSON answer carries Inference-Header-Content-Length")
			}
			var a inferAnswer
			if err := json.Unmarshal(w.Body.Bytes(), &a); err != nil {
				t.Fatalf("answer is not JSON: %v: %s", err, w.Body)
			}
			if a.ID != "req-1" || a.ModelName != tc.model || len(a.Outputs) != 1 {
				t.Fatalf("answer header wrong: %+v", a)
			}
			o := a.Outputs[0]
			if o.Name != "output" || o.Datatype != "FP32" || fmt.Sprint(o.Shape) != fmt.Sprint(tc.wantShape) {
				t.Fatalf("output %s %s %v, want output FP32 %v", o.Name, o.Datatype, o.Shape, tc.wantShape)
			}
			if len(o.Data) != len(tc.want) {
				t.Fatalf("data %v, want %v", o.Data, tc.want)
			}
			for i := range o.Data {
				if float32(o.Data[i]) != float32(tc.want[i]) {
					t.Fatalf("data[%d] = %v, want %v", i, o.Data[i], tc.want[i])
				}
			}
		})
	}
}

func TestInferResponseNamesWhereItRan(t *testing.T) {
	f := newFixture(t, oip.Options{}, oip.HostViews{})
	f.backend.SetExec("sum", oip.ExecInfo{PlacedOn: "cuda:0", ExecutedOn: "cpu", Executor: "cpu-f32", Fallback: true, Reason: "device cuda:0 unhealthy (Xid 79)"})
	w := f.call("POST", "/v2/models/sum/versions/3/infer", jsonInfer("FP32", []int{1, 2, 3}, "[1,2,3,4,5,6]"), nil)
	if w.Code != 200 {
		t.Fatalf("status %d: %s", w.Code, w.Body)
	}
	var a inferAnswer
	if err := json.Unmarshal(w.Body.Bytes(), &a); err != nil {
		t.Fatal(err)
	}
	want := map[string]any{"placed_on": "cuda:0", "executed_on": "cpu", "executor": "cpu-f32", "fallback": true, "fallback_reason": "device cuda:0 unhealthy (Xid 79)"}
	for k, v := range want {
		if a.Parameters[k] != v {
			t.Errorf("parameters.%s = %v, want %v", k, a.Parameters[k], v)
		}
	}
	if a.ModelVersion != "3" {
		t.Errorf("model_version %q, want 3", a.ModelVersion)
	}
}

// splitBinary checks a binary answer's framing and returns its JSON header
// and the bytes after it.
func splitBinary(t *testing.T, w *httptest.ResponseRecorder) (inferAnswer, []byte) {
	t.Helper()
	if ct := w.Header().Get("Content-Type"); ct != "application/octet-stream" {
		t.Fatalf("Content-Type %q, want application/octet-stream", ct)
	}
	n, err := strconv.Atoi(w.Header().Get("Inference-Header-Content-Length"))
	body := w.Body.Bytes()
	if err != nil || n <= 0 || n > len(body) {
		t.Fatalf("Inference-Header-Content-Length %q for a body of %d bytes", w.Header().Get("Inference-Header-Content-Length"), len(body))
	}
	if cl := w.Header().Get("Content-Length"); cl != strconv.Itoa(len(body)) {
		t.Fatalf("Content-Length %q, body %d bytes", cl, len(body))
	}
	var a inferAnswer
	if err := json.Unmarshal(body[:n], &a); err != nil {
		t.Fatalf("JSON header: %v: %q", err, body[:n])
	}
	return a, body[n:]
}

func TestInferBinaryRoundTripIsByteExact(t *testing.T) {
	in := []float32{1, -2, 3.25, 1e-7, 0, -0.5, 100, 7}
	body, hl := binaryInfer("FP32", []int{2, 4}, f32bytes(in...), "")
	f := newFixture(t, oip.Options{}, oip.HostViews{})
	// Triton's client sends no Content-Type.
	w := f.call("POST", "/v2/models/double/infer", body, map[string]string{"Inference-Header-Content-Length": strconv.Itoa(hl)})
	if w.Code != 200 {
		t.Fatalf("status %d: %s", w.Code, w.Body)
	}
	a, raw := splitBinary(t, w)
	o := a.Outputs[0]
	if o.Name != "output" || o.Datatype != "FP32" || fmt.Sprint(o.Shape) != "[2 4]" || o.Data != nil {
		t.Fatalf("output header %+v", o)
	}
	if size, _ := o.Parameters["binary_data_size"].(float64); int(size) != 32 {
		t.Fatalf("binary_data_size %v, want 32", o.Parameters["binary_data_size"])
	}
	want := make([]float32, len(in))
	for i, v := range in {
		want[i] = 2 * v
	}
	if !bytes.Equal(raw, f32bytes(want...)) {
		t.Fatalf("binary output % x\nwant            % x", raw, f32bytes(want...))
	}
	got, _ := f.backend.LastInput()
	if !bytes.Equal(f32bytes(got.Data...), f32bytes(in...)) {
		t.Fatalf("backend got %v, want %v", got.Data, in)
	}
}

func TestInferOutputFormatFollowsTheRequest(t *testing.T) {
	raw := f32bytes(1, 2, 3, 4)
	tests := []struct {
		name       string
		body       []byte
		headerLen  int
		wantBinary bool
	}{
		{"binary_data_output for all", nil, 0, true},
		{"per-output binary_data true", nil, 0, true},
		{"per-output binary_data false wins", nil, 0, false},
		{"JSON input with binary output", []byte(`{"inputs":[{"name":"input","shape":[1,4],"datatype":"FP32","data":[1,2,3,4]}],"outputs":[{"name":"output","parameters":{"binary_data":true}}]}`), -1, true},
		{"JSON input, no outputs: JSON", jsonInfer("FP32", []int{1, 4}, "[1,2,3,4]"), -1, false},
	}
	tests[0].body, tests[0].headerLen = binaryInfer("FP32", []int{1, 4}, raw, "")
	tests[1].body, tests[1].headerLen = binaryInfer("FP32", []int{1, 4}, raw, `[{"name":"output","parameters":{"binary_data":true}}]`)
	tests[2].body, tests[2].headerLen = binaryInfer("FP32", []int{1, 4}, raw, `[{"name":"output","parameters":{"binary_data":false}}]`)
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t, oip.Options{}, oip.HostViews{})
			hdr := map[string]string{}
			if tc.headerLen >= 0 {
				hdr["Inference-Header-Content-Length"] = strconv.Itoa(tc.headerLen)
			}
			w := f.call("POST", "/v2/models/double/infer", tc.body, hdr)
			if w.Code != 200 {
				t.Fatalf("status %d: %s", w.Code, w.Body)
			}
			if tc.wantBinary {
				_, out := splitBinary(t, w)
				if !bytes.Equal(out, f32bytes(2, 4, 6, 8)) {
					t.Fatalf("binary output % x", out)
				}
				return
			}
			var a inferAnswer
			if err := json.Unmarshal(w.Body.Bytes(), &a); err != nil {
				t.Fatalf("want a JSON answer: %v: %q", err, w.Body.Bytes())
			}
			if fmt.Sprint(a.Outputs[0].Data) != "[2 4 6 8]" {
				t.Fatalf("data %v", a.Outputs[0].Data)
			}
		})
	}
}

func TestInferBinaryConvertsFP16BF16AndFP64(t *testing.T) {
	le16 := func(v ...uint16) []byte {
		b := make([]byte, 2*len(v))
		for i, x := range v {
			binary.LittleEndian.PutUint16(b[2*i:], x)
		}
		return b
	}
	le64 := func(v ...float64) []byte {
		b := make([]byte, 8*len(v))
		for i, x := range v {
			binary.LittleEndian.PutUint64(b[8*i:], math.Float64bits(x))
		}
		return b
	}
	inf := float32(math.Inf(1))
	tests := []struct {
		name, datatype string
		raw            []byte
		want           []float32 // the input the backend sees
	}{
		// 1.0, -2.0, the smallest subnormal 2^-24, +Inf
		{"FP16", "FP16", le16(0x3c00, 0xc000, 0x0001, 0x7c00), []float32{1, -2, 1.0 / (1 << 24), inf}},
		{"FP16 max and negative zero", "FP16", le16(0x7bff, 0x8000, 0x3555, 0x0400), []float32{65504, float32(math.Copysign(0, -1)), 0.33325195, 1.0 / (1 << 14)}},
		{"BF16", "BF16", le16(0x3f80, 0xc040, 0x7f80, 0x0000), []float32{1, -3, inf, 0}},
		{"FP64", "FP64", le64(0.1, -1e30, math.Inf(-1), 2), []float32{float32(0.1), -1e30, float32(math.Inf(-1)), 2}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t, oip.Options{}, oip.HostViews{})
			body, hl := binaryInfer(tc.datatype, []int{1, 4}, tc.raw, "")
			w := f.call("POST", "/v2/models/double/infer", body, map[string]string{"Inference-Header-Content-Length": strconv.Itoa(hl)})
			if w.Code != 200 {
				t.Fatalf("status %d: %s", w.Code, w.Body)
			}
			got, _ := f.backend.LastInput()
			if !bytes.Equal(f32bytes(got.Data...), f32bytes(tc.want...)) {
				t.Fatalf("converted %v, want %v", got.Data, tc.want)
			}
		})
	}
}

func TestInferPassesNaNAndInfThrough(t *testing.T) {
	nan := float32(math.NaN())
	inf := float32(math.Inf(1))
	in := []float32{nan, inf, -inf, 1}
	f := newFixture(t, oip.Options{}, oip.HostViews{})
	body, hl := binaryInfer("FP32", []int{1, 4}, f32bytes(in...), "")
	w := f.call("POST", "/v2/models/double/infer", body, map[string]string{"Inference-Header-Content-Length": strconv.Itoa(hl)})
	if w.Code != 200 {
		t.Fatalf("status %d: %s", w.Code, w.Body)
	}
	_, raw := splitBinary(t, w)
	if len(raw) != 16 {
		t.Fatalf("%d output bytes", len(raw))
	}
	out := make([]float32, 4)
	for i := range out {
		out[i] = math.Float32frombits(binary.LittleEndian.Uint32(raw[4*i:]))
	}
	if out[0] == out[0] || !math.IsInf(float64(out[1]), 1) || !math.IsInf(float64(out[2]), -1) || out[3] != 2 {
		t.Fatalf("output %v, want [NaN +Inf -Inf 2]", out)
	}

	// The same through a JSON answer uses the NaN/Infinity tokens.
	body, hl = binaryInfer("FP32", []int{1, 4}, f32bytes(in...), `[{"name":"output","parameters":{"binary_data":false}}]`)
	w = f.call("POST", "/v2/models/double/infer", body, map[string]string{"Inference-Header-Content-Length": strconv.Itoa(hl)})
	if w.Code != 200 || !strings.Contains(w.Body.String(), `"data":[NaN,Infinity,-Infinity,2]`) {
		t.Fatalf("JSON answer %d: %s", w.Code, w.Body)
	}
}

func TestBadInferRequestsGet4xxWithAMessage(t *testing.T) {
	bin := func(datatype string, shape []int, raw []byte) ([]byte, string) {
		b, n := binaryInfer(datatype, shape, raw, "")
		return b, strconv.Itoa(n)
	}
	okBody, okLen := bin("FP32", []int{1, 4}, f32bytes(1, 2, 3, 4))
	shortBody := okBody[:len(okBody)-3]
	longBody := append(bytes.Clone(okBody), 0, 0, 0, 0)
	sizeMismatch := []byte(strings.Replace(string(okBody), `"binary_data_size":16`, `"binary_data_size":12`, 1))
	deep := []byte(`{"inputs":[{"name":"input","shape":[1,4],"datatype":"FP32","data":` + strings.Repeat("[", 40) + strings.Repeat("]", 40) + `}]}`)
	tests := []struct {
		name     string
		path     string
		body     []byte
		header   map[string]string
		want     int
		contains string
	}{
		{"malformed JSON", "", []byte(`{"inputs":[`), nil, 400, "malformed"},
		{"not an object", "", []byte(`[1,2]`), nil, 400, "malformed"},
		{"empty body", "", nil, nil, 400, "malformed"},
		{"wrong rank", "", jsonInfer("FP32", []int{4}, "[1,2,3,4]"), nil, 400, "does not match model"},
		{"wrong sample shape", "", jsonInfer("FP32", []int{1, 5}, "[1,2,3,4,5]"), nil, 400, "does not match model"},
		{"too few elements", "", jsonInfer("FP32", []int{1, 4}, "[1,2,3]"), nil, 400, "3 elements but its shape declares 4"},
		{"too many elements", "", jsonInfer("FP32", []int{1, 4}, "[1,2,3,4,5]"), nil, 400, "more than the 4 elements"},
		{"unsupported datatype", "", jsonInfer("INT32", []int{1, 4}, "[1,2,3,4]"), nil, 501, "INT32 is not supported"},
		{"unknown datatype", "", jsonInfer("FLOAT", []int{1, 4}, "[1,2,3,4]"), nil, 400, `unknown datatype "FLOAT"`},
		{"unknown model", "/v2/models/nope/infer", jsonInfer("FP32", []int{1, 4}, "[1,2,3,4]"), nil, 404, `no model named "nope"`},
		{"huge declared shape", "", jsonInfer("FP32", []int{1 << 40, 4}, "[1,2,3,4]"), nil, 400, "limit of"},
		{"overflowing shape", "", jsonInfer("FP32", []int{1 << 62, 1 << 62, 4}, "[1]"), nil, 400, "limit of"},
		{"shape the data cannot hold", "/v2/models/sum/infer", jsonInfer("FP32", []int{8, 2, 3}, "[1]"), nil, 400, "declares 48 elements"},
		{"batch above the model's limit", "/v2/models/sum/infer", jsonInfer("FP32", []int{9, 2, 3}, "["+strings.Repeat("1,", 53)+"1]"), nil, 413, `batch 9 is larger than model "sum"'s max_batch of 8`},
		{"negative dimension", "", jsonInfer("FP32", []int{-1, 4}, "[1,2,3,4]"), nil, 400, "negative dimension"},
		{"too many dimensions", "", jsonInfer("FP32", []int{1, 1, 1, 1, 1, 1, 1, 1, 4}, "[1,2,3,4]"), nil, 400, "9 dimensions"},
		{"fractional dimension", "", []byte(`{"inputs":[{"name":"input","shape":[1.5,4],"datatype":"FP32","data":[1,2,3,4]}]}`), nil, 400, "malformed"},
		{"string element", "", jsonInfer("FP32", []int{1, 4}, `[1,"2",3,4]`), nil, 400, "data[1]: not a number"},
		{"null element", "", jsonInfer("FP32", []int{1, 4}, `[1,2,null,4]`), nil, 400, "data[2]: not a number"},
		{"scalar data", "", jsonInfer("FP32", []int{1, 4}, `5`), nil, 400, "must be an array"},
		{"data nested deeper than shape", "", jsonInfer("FP32", []int{1, 4}, `[[[1,2,3,4]]]`), nil, 400, "deeper than the 2 dimensions"},
		{"FP32 out of range", "", jsonInfer("FP32", []int{1, 4}, `[1,2,3,1e39]`), nil, 400, "data[3]: 1e39 is out of range for FP32"},
		{"FP16 out of range", "", jsonInfer("FP16", []int{1, 4}, `[1,2,3,70000]`), nil, 400, "out of range for FP16"},
		{"no data", "", []byte(`{"inputs":[{"name":"input","shape":[1,4],"datatype":"FP32"}]}`), nil, 400, "no data"},
		{"wrong input name", "", []byte(`{"inputs":[{"name":"x","shape":[1,4],"datatype":"FP32","data":[1,2,3,4]}]}`), nil, 400, `unknown input "x"`},
		{"two inputs", "", []byte(`{"inputs":[{"name":"input","shape":[1],"datatype":"FP32","data":[1]},{"name":"input","shape":[1],"datatype":"FP32","data":[1]}]}`), nil, 400, "exactly one input"},
		{"unknown output", "", []byte(`{"inputs":[{"name":"input","shape":[1,4],"datatype":"FP32","data":[1,2,3,4]}],"outputs":[{"name":"logits"}]}`), nil, 400, `unknown output "logits"`},
		{"classification", "", []byte(`{"inputs":[{"name":"input","shape":[1,4],"datatype":"FP32","data":[1,2,3,4]}],"outputs":[{"name":"output","parameters":{"classification":2}}]}`), nil, 501, "classification"},
		{"shared memory off", "", []byte(`{"inputs":[{"name":"input","shape":[1,4],"datatype":"FP32","parameters":{"shared_memory_region":"r","shared_memory_byte_size":16}}]}`), nil, 501, "system shared memory is not enabled"},
		{"shared memory size missing", "", []byte(`{"inputs":[{"name":"input","shape":[1,4],"datatype":"FP32","parameters":{"shared_memory_region":"r"}}]}`), nil, 400, "shared_memory_byte_size is missing"},
		{"shared memory and data", "", []byte(`{"inputs":[{"name":"input","shape":[1,4],"datatype":"FP32","data":[1,2,3,4],"parameters":{"shared_memory_region":"r","shared_memory_byte_size":16}}]}`), nil, 400, "give its values once"},
		{"shared memory size wrong", "", []byte(`{"inputs":[{"name":"input","shape":[1,4],"datatype":"FP32","parameters":{"shared_memory_region":"r","shared_memory_byte_size":12}}]}`), nil, 400, "shared_memory_byte_size is 12 bytes but shape [1 4] of FP32 needs 16"},
		{"shared memory region not a string", "", []byte(`{"inputs":[{"name":"input","shape":[1,4],"datatype":"FP32","parameters":{"shared_memory_region":7,"shared_memory_byte_size":16}}]}`), nil, 400, "shared_memory_region"},
		{"shared memory output off", "", []byte(`{"inputs":[{"name":"input","shape":[1,4],"datatype":"FP32","data":[1,2,3,4]}],"outputs":[{"name":"output","parameters":{"shared_memory_region":"o","shared_memory_byte_size":16}}]}`), nil, 501, "outputs[0].parameters.shared_memory_region: system shared memory is not enabled"},
		{"too deep", "", deep, nil, 400, "nested deeper than 32"},
		{"binary body shorter than declared", "", shortBody, map[string]string{"Inference-Header-Content-Length": okLen}, 400, "runs past the end of the body"},
		{"binary body longer than declared", "", longBody, map[string]string{"Inference-Header-Content-Length": okLen}, 400, "bytes after the JSON header but the binary inputs account for 16"},
		{"binary size disagrees with shape", "", sizeMismatch, map[string]string{"Inference-Header-Content-Length": okLen}, 400, "binary_data_size is 12 bytes but shape [1 4] of FP32 needs 16"},
		{"header length beyond body", "", okBody, map[string]string{"Inference-Header-Content-Length": strconv.Itoa(len(okBody) + 1)}, 400, "does not fit a body"},
		{"header length zero", "", okBody, map[string]string{"Inference-Header-Content-Length": "0"}, 400, "does not fit a body"},
		{"header length not a number", "", okBody, map[string]string{"Inference-Header-Content-Length": "abc"}, 400, "not a byte count"},
		{"header length cuts the JSON", "", okBody, map[string]string{"Inference-Header-Content-Length": "20"}, 400, "malformed"},
		{"binary size without header", "", okBody[:mustAtoi(okLen)], nil, 400, "no Inference-Header-Content-Length"},
		{"binary bytes but JSON data", "", append(jsonInfer("FP32", []int{1, 4}, "[1,2,3,4]"), 1, 2, 3, 4), map[string]string{"Inference-Header-Content-Length": strconv.Itoa(len(jsonInfer("FP32", []int{1, 4}, "[1,2,3,4]")))}, 400, "no input sets parameters.binary_data_size"},
		{"compressed body", "", okBody, map[string]string{"Content-Encoding": "gzip"}, 501, "Content-Encoding"},
		{"oversized body", "", []byte(`{"inputs":[{"name":"input","shape":[1,4],"datatype":"FP32","data":[1,2,3,4]}],"pad":"` + strings.Repeat("x", 5000) + `"}`), nil, 413, "request body too large"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t, oip.Options{MaxBodyBytes: 4096}, oip.HostViews{})
			path := tc.path
			if path == "" {
				path = "/v2/models/double/infer"
			}
			w := f.call("POST", path, tc.body, tc.header)
			if w.Code != tc.want {
				t.Fatalf("status %d, want %d: %s", w.Code, tc.want, w.Body)
			}
			if msg := errorMessage(t, w); !strings.Contains(msg, tc.contains) {
				t.Fatalf("error %q does not mention %q", msg, tc.contains)
			}
			if _, calls := f.backend.LastInput(); calls != 0 {
				t.Fatalf("a bad request reached the backend")
			}
			// The handler keeps serving after a bad request.
			if w := f.call("POST", "/v2/models/double/infer", jsonInfer("FP32", []int{1, 4}, "[1,2,3,4]"), nil); w.Code != 200 {
				t.Fatalf("good request after a bad one: %d %s", w.Code, w.Body)
			}
		})
	}
}

func mustAtoi(s string) int {
	n, err := strconv.Atoi(s)
	if err != nil {
		panic(err)
	}
	return n
}

func TestBackendErrorsMapToStatusCodes(t *testing.T) {
	tests := []struct {
		name  string
		err   error
		want  int
		retry bool
	}{
		{"queue full", fmt.Errorf("kernel double: %w", failure.Errorf(failure.QueueFull, "queue full: 4 running, 256 waiting")), 503, true},
		{"no executor", failure.Errorf(failure.Unavailable, "no executor for cuda:0"), 503, true},
		{"not ready", failure.Errorf(failure.Unavailable, "not ready"), 503, true},
		{"bad input from the runtime", failure.Errorf(failure.BadInput, "NaN budget"), 400, false},
		{"unsupported", failure.Errorf(failure.Unsupported, "op gelu"), 501, false},
		{"not found", failure.Errorf(failure.NotFound, "model double not found"), 404, false},
		{"executor fault", errors.New("sgemm: segfault"), 500, false},
		{"deadline", context.DeadlineExceeded, 504, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t, oip.Options{}, oip.HostViews{})
			f.backend.SetInferError("double", tc.err)
			w := f.call("POST", "/v2/models/double/infer", jsonInfer("FP32", []int{1, 4}, "[1,2,3,4]"), nil)
			if w.Code != tc.want {
				t.Fatalf("status %d, want %d", w.Code, tc.want)
			}
			if got := w.Header().Get("Retry-After") != ""; got != tc.retry {
				t.Fatalf("Retry-After present = %v, want %v", got, tc.retry)
			}
			if msg := errorMessage(t, w); !strings.Contains(msg, tc.err.Error()) {
				t.Fatalf("error %q hides %q", msg, tc.err)
			}
		})
	}
}

func TestPanicInBackendIsA500AndCounted(t *testing.T) {
	f := newFixture(t, oip.Options{}, oip.HostViews{})
	f.backend.Add(oip.ModelInfo{Name: "panics", InputShape: []int{1}}, func(oip.Tensor) (oip.Tensor, error) { panic("boom") })
	w := f.call("POST", "/v2/models/panics/infer", jsonInfer("FP32", []int{1, 1}, "[1]"), nil)
	if w.Code != 500 {
		t.Fatalf("status %d", w.Code)
	}
	errorMessage(t, w)
	if got := metricValue(t, f.reg, "kasmina_http_panics_total", nil); got != 1 {
		t.Fatalf("panics counted %v, want 1", got)
	}
}

func TestBackendOutputThatDisagreesWithItsShapeIsA500(t *testing.T) {
	f := newFixture(t, oip.Options{}, oip.HostViews{})
	f.backend.Add(oip.ModelInfo{Name: "liar", InputShape: []int{1}}, func(oip.Tensor) (oip.Tensor, error) {
		return oip.Tensor{Shape: []int{1, 3}, Data: []float32{1}}, nil
	})
	w := f.call("POST", "/v2/models/liar/infer", jsonInfer("FP32", []int{1, 1}, "[1]"), nil)
	if w.Code != 500 || !strings.Contains(errorMessage(t, w), "shape [1 3] and 1 values") {
		t.Fatalf("status %d: %s", w.Code, w.Body)
	}
}

func TestMetricsCountRequestsPerRoute(t *testing.T) {
	f := newFixture(t, oip.Options{}, oip.HostViews{})
	f.call("POST", "/v2/models/double/infer", jsonInfer("FP32", []int{1, 4}, "[1,2,3,4]"), nil)
	f.call("POST", "/v2/models/double/infer", jsonInfer("FP32", []int{1, 4}, "[1,2]"), nil)
	f.call("POST", "/v2/models/nope/infer", jsonInfer("FP32", []int{1, 4}, "[1,2,3,4]"), nil)
	f.call("GET", "/not/a/route", nil, nil)
	const route = "POST /v2/models/{name}/infer"
	for code, want := range map[string]float64{"200": 1, "400": 1, "404": 1} {
		if got := metricValue(t, f.reg, "kasmina_http_requests_total", map[string]string{"route": route, "code": code}); got != want {
			t.Errorf("requests{route=%q,code=%s} = %v, want %v", route, code, got, want)
		}
	}
	if got := metricValue(t, f.reg, "kasmina_http_requests_total", map[string]string{"route": "unmatched", "code": "404"}); got != 1 {
		t.Errorf("unmatched 404 = %v, want 1", got)
	}
	families, err := f.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range families {
		if mf.GetName() == "kasmina_http_request_duration_seconds" && len(mf.GetMetric()) != 1 {
			t.Errorf("%d latency series, want 1 (one route)", len(mf.GetMetric()))
		}
	}
	problems, err := promlint.NewWithMetricFamilies(families).Lint()
	if err != nil || len(problems) > 0 {
		t.Errorf("metric lint: %v %v", err, problems)
	}
}

// TestMetricsRouteNeedsNoTokenButTheHostCheck: scrapers need no token,
// even with TokenForReads, but on a loopback listener /metrics checks Host
// and Origin like every other non-probe route, so a DNS-rebinding page
// cannot read it (it skipped the check).
func TestMetricsRouteNeedsNoTokenButTheHostCheck(t *testing.T) {
	mh := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { _, _ = io.WriteString(w, "kasmina_up 1\n") })
	f := newFixture(t, oip.Options{Access: oip.Access{Token: "s3cret", TokenForReads: true, Loopback: true}, MetricsHandler: mh}, oip.HostViews{})
	if w := f.call("GET", "/metrics", nil, nil); w.Code != 200 || w.Body.String() != "kasmina_up 1\n" {
		t.Fatalf("/metrics on a loopback Host without a token: %d %q", w.Code, w.Body)
	}
	for _, hdr := range []map[string]string{
		{"Host": "rebind.attacker.example:8090"},
		{"Host": "10.0.0.7:8090"},
		{"Origin": "http://rebind.attacker.example"},
	} {
		w := f.call("GET", "/metrics", nil, hdr)
		if w.Code != 403 || strings.Contains(w.Body.String(), "kasmina_up") {
			t.Fatalf("/metrics with %v: %d %q, want 403", hdr, w.Code, w.Body)
		}
	}
	// Probes stay fully open: kubelet sends the pod IP as Host.
	if w := f.call("GET", "/v2/health/live", nil, map[string]string{"Host": "10.0.0.7:8090"}); w.Code != 200 {
		t.Fatalf("live probe: %d", w.Code)
	}
}

func TestHostViewRoutes(t *testing.T) {
	var loaded []byte
	var planned []byte
	views := oip.HostViews{
		Devices: func(context.Context) (any, error) {
			return []map[string]any{{"uuid": "GPU-0", "free_bytes": 1 << 30}}, nil
		},
		Kernels: func(context.Context) (any, error) { return []string{"k1"}, nil },
		LoadKernel: func(_ context.Context, doc []byte) (any, bool, error) {
			loaded = bytes.Clone(doc) // doc is valid only during the call
			if bytes.Contains(doc, []byte(`"dup"`)) {
				return nil, false, failure.Errorf(failure.Conflict, "kernel dup already loaded with another checksum")
			}
			if bytes.Contains(doc, []byte(`"same"`)) {
				return map[string]string{"kernel_id": "same", "placement": "cpu"}, false, nil
			}
			if !bytes.Contains(doc, []byte("kernel_id")) {
				return nil, false, failure.Errorf(failure.BadInput, "kernel_id: missing")
			}
			return map[string]string{"kernel_id": "k2", "placement": "cpu"}, true, nil
		},
		Kernel: func(_ context.Context, id string) (any, error) {
			if id != "k1" {
				return nil, failure.Errorf(failure.NotFound, "kernel %q is not loaded", id)
			}
			return map[string]string{"kernel_id": "k1"}, nil
		},
		UnloadKernel: func(_ context.Context, id string) error {
			if id != "k1" {
				return failure.Errorf(failure.NotFound, "kernel %q is not loaded", id)
			}
			return nil
		},
		PlanPlacement: func(_ context.Context, req []byte) (any, error) {
			planned = bytes.Clone(req)
			return map[string]string{"device": "cuda:0"}, nil
		},
		Seeds: func(context.Context) (any, error) { return []map[string]any{{"seed_id": "s0", "alpha": 0.5}}, nil },
		HealthSignals: func(context.Context) (any, error) {
			return nil, failure.Errorf(failure.Unavailable, "bus not started")
		},
		Layers: func(context.Context) (any, error) { return []string{}, nil },
	}
	tests := []struct {
		name, method, path, body string
		want                     int
		contains                 string
	}{
		{"devices", "GET", "/v1/devices", "", 200, `"uuid":"GPU-0"`},
		{"kernels", "GET", "/v1/kernels", "", 200, `["k1"]`},
		{"load kernel", "POST", "/v1/kernels", `{"kernel_id":"k2"}`, 201, `"placement":"cpu"`},
		{"load kernel malformed", "POST", "/v1/kernels", `{"kernel_id":`, 400, "malformed JSON"},
		{"load kernel empty", "POST", "/v1/kernels", ``, 400, "CompiledKernel"},
		{"load kernel invalid", "POST", "/v1/kernels", `{"x":1}`, 400, "kernel_id: missing"},
		{"load kernel again", "POST", "/v1/kernels", `{"kernel_id":"same"}`, 200, `"kernel_id":"same"`},
		{"load kernel conflict", "POST", "/v1/kernels", `{"kernel_id":"dup"}`, 409, "already loaded"},
		{"inspect kernel", "GET", "/v1/kernels/k1", "", 200, `"kernel_id":"k1"`},
		{"inspect unknown kernel", "GET", "/v1/kernels/zz", "", 404, `kernel "zz"`},
		{"unload kernel", "DELETE", "/v1/kernels/k1", "", 200, `"state":"unloaded"`},
		{"unload unknown kernel", "DELETE", "/v1/kernels/zz", "", 404, `kernel "zz"`},
		{"plan", "POST", "/v1/placement/plan", `{"kernel_id":"k1"}`, 200, `"device":"cuda:0"`},
		{"seeds", "GET", "/v1/seeds", "", 200, `"alpha":0.5`},
		{"health signals unavailable", "GET", "/v1/health/signals", "", 503, "bus not started"},
		{"layers", "GET", "/v1/layers", "", 200, `[]`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t, oip.Options{}, views)
			w := f.call(tc.method, tc.path, []byte(tc.body), nil)
			if w.Code != tc.want {
				t.Fatalf("status %d, want %d: %s", w.Code, tc.want, w.Body)
			}
			if w.Code >= 400 {
				if msg := errorMessage(t, w); !strings.Contains(msg, tc.contains) {
					t.Fatalf("error %q does not mention %q", msg, tc.contains)
				}
				return
			}
			if ct := w.Header().Get("Content-Type"); ct != "application/json" {
				t.Errorf("Content-Type %q", ct)
			}
			if !strings.Contains(w.Body.String(), tc.contains) {
				t.Fatalf("body %s does not contain %s", w.Body, tc.contains)
			}
		})
	}
	if string(loaded) != `{"kernel_id":"dup"}` || string(planned) != `{"kernel_id":"k1"}` {
		t.Fatalf("views got bodies %q and %q", loaded, planned)
	}
}

// metricValue returns the value of the counter name with exactly labels
// (0 when the series does not exist).
func metricValue(t *testing.T, reg *prometheus.Registry, name string, labels map[string]string) float64 {
	t.Helper()
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range families {
		if mf.GetName() != name {
			continue
		}
	series:
		for _, m := range mf.GetMetric() {
			if len(m.GetLabel()) != len(labels) {
				continue
			}
			for _, l := range m.GetLabel() {
				if labels[l.GetName()] != l.GetValue() {
					continue series
				}
			}
			return m.GetCounter().GetValue()
		}
	}
	return 0
}

// BenchmarkServeInfer is the front end's own CPU per request, in process:
// routing, guards, metrics, decoding and encoding a binary 1×4 inference
// over the fake backend, as the daemon's handler sees it (the socket and
// net/http's connection handling left out).
func BenchmarkServeInfer(b *testing.B) {
	f := newFixture(b, oip.Options{}, oip.HostViews{})
	body, hl := binaryInfer("FP32", []int{1, 4}, make([]byte, 16), "")
	hdr := map[string]string{"Inference-Header-Content-Length": strconv.Itoa(hl)}
	b.ReportAllocs()
	for b.Loop() {
		if w := f.call("POST", "/v2/models/double/infer", body, hdr); w.Code != 200 {
			b.Fatalf("%d %s", w.Code, w.Body)
		}
	}
}
