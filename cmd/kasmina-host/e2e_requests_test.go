package main

import (
	"bytes"
	"context"
	"encoding/json"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/esper/kasmina-host/contracts"
)

// checkJSONError wants status and a JSON {"error": "..."} body whose
// message contains every word in want.
func checkJSONError(t *testing.T, what string, code int, h map[string][]string, body []byte, status int, want ...string) {
	t.Helper()
	if code != status {
		t.Errorf("%s: status %d, want %d: %s", what, code, status, body)
		return
	}
	if ct := strings.Join(h["Content-Type"], ","); !strings.HasPrefix(ct, "application/json") {
		t.Errorf("%s: Content-Type %q, want application/json", what, ct)
	}
	var e struct {
		Error string `json:"error"`
	}
	if err := json.Unmarshal(body, &e); err != nil || e.Error == "" {
		t.Errorf("%s: body is not {\"error\": \"...\"}: %v %s", what, err, body)
		return
	}
	for _, w := range want {
		if !strings.Contains(e.Error, w) {
			t.Errorf("%s: error %q does not mention %q", what, e.Error, w)
		}
	}
}

// TestDaemonRefusesBadRequests sends the real daemon malformed, oversized
// and inconsistent requests: each gets a 4xx (501 for a real but
// unsupported datatype) with a JSON error naming what is wrong, nothing
// panics, and the daemon keeps serving. NaN and Inf inside binary input
// are served and counted.
func TestDaemonRefusesBadRequests(t *testing.T) {
	d := startDaemon(t, daemonConfig{args: []string{"--max-body-bytes", "1048576", "--signal-interval", "100ms"}})

	ones := func(n int) []float32 {
		v := make([]float32, n)
		for i := range v {
			v[i] = 1
		}
		return v
	}
	binReq := func(shape []int, size int, payload []byte) ([]byte, string) {
		hdr, _ := json.Marshal(map[string]any{"inputs": []any{map[string]any{"name": "input", "datatype": "FP32", "shape": shape,
			"parameters": map[string]any{"binary_data_size": size}}}})
		return append(hdr, payload...), strconv.Itoa(len(hdr))
	}
	f32 := func(n int) []byte { return make([]byte, 4*n) }
	deep := strings.Repeat("[", 100) + "1" + strings.Repeat("]", 100)
	big := bytes.Repeat([]byte(" "), 2<<20)

	okBin, okLen := binReq([]int{1, 64}, 256, f32(64))
	shortBin, shortLen := binReq([]int{1, 64}, 256, f32(60))
	longBin, longLen := binReq([]int{1, 64}, 256, f32(65))
	sizeBin, sizeLen := binReq([]int{1, 64}, 252, f32(63))
	hugeBin, hugeLen := binReq([]int{1 << 30, 64}, 1<<36, f32(64))

	cases := []struct {
		name   string
		model  string
		body   []byte
		hdr    map[string]string
		status int
		want   []string
	}{
		{"malformed JSON", "seed-linear-64", []byte(`{"inputs": [`), nil, 400, nil},
		{"not JSON", "seed-linear-64", []byte(`hello`), nil, 400, nil},
		{"wrong per-sample shape", "seed-linear-64", inferJSON([]int{1, 63}, ones(63)), nil, 400, []string{"63"}},
		{"data count disagrees with shape", "seed-linear-64", []byte(`{"inputs":[{"name":"input","datatype":"FP32","shape":[1,64],"data":[1,2,3]}]}`), nil, 400, nil},
		{"not a datatype", "seed-linear-64", []byte(`{"inputs":[{"name":"input","datatype":"FLOAT32","shape":[1,1],"data":[1]}]}`), nil, 400, []string{"FLOAT32"}},
		{"unsupported datatype", "seed-linear-64", []byte(`{"inputs":[{"name":"input","datatype":"INT32","shape":[1,64],"data":[` + strings.Repeat("1,", 63) + `1]}]}`), nil, 501, []string{"INT32"}},
		{"wrong input name", "seed-linear-64", bytes.Replace(inferJSON([]int{1, 64}, ones(64)), []byte(`"name":"input"`), []byte(`"name":"x"`), 1), nil, 400, []string{"input"}},
		{"unknown model", "no-such-kernel", inferJSON([]int{1, 64}, ones(64)), nil, 404, []string{"no-such-kernel"}},
		{"huge declared shape", "seed-linear-64", []byte(`{"inputs":[{"name":"input","datatype":"FP32","shape":[1099511627776,64],"data":[1]}]}`), nil, 400, nil},
		{"shape product overflows", "seed-linear-64", []byte(`{"inputs":[{"name":"input","datatype":"FP32","shape":[4294967296,4294967296,4294967296],"data":[1]}]}`), nil, 400, nil},
		{"huge declared binary shape", "seed-linear-64", hugeBin, map[string]string{"Inference-Header-Content-Length": hugeLen}, 400, nil},
		{"JSON nested too deep", "seed-linear-64", []byte(`{"inputs":[{"name":"input","datatype":"FP32","shape":[1,64],"data":` + deep + `}]}`), nil, 400, nil},
		{"oversized body", "seed-linear-64", append(inferJSON([]int{1, 64}, ones(64)), big...), nil, 413, nil},
		{"header length beyond the body", "seed-linear-64", okBin, map[string]string{"Inference-Header-Content-Length": strconv.Itoa(len(okBin) + 1)}, 400, []string{"Inference-Header-Content-Length"}},
		{"header length not a number", "seed-linear-64", okBin, map[string]string{"Inference-Header-Content-Length": "abc"}, 400, []string{"Inference-Header-Content-Length"}},
		{"binary bytes missing", "seed-linear-64", shortBin, map[string]string{"Inference-Header-Content-Length": shortLen}, 400, nil},
		{"binary bytes left over", "seed-linear-64", longBin, map[string]string{"Inference-Header-Content-Length": longLen}, 400, nil},
		{"binary_data_size disagrees with the shape", "seed-linear-64", sizeBin, map[string]string{"Inference-Header-Content-Length": sizeLen}, 400, []string{"binary_data_size"}},
		{"binary_data_size without the header", "seed-linear-64", okBin, nil, 400, nil},
	}
	for _, c := range cases {
		code, h, body := d.do("POST", "/v2/models/"+c.model+"/infer", c.body, c.hdr)
		checkJSONError(t, c.name, code, h, body, c.status, c.want...)
		// The daemon keeps serving after each.
		if code, _, body := d.do("GET", "/v2/health/live", nil, nil); code != 200 {
			t.Fatalf("after %q: /v2/health/live answered %d: %s", c.name, code, body)
		}
	}

	// A good request still works, in both modes.
	code, _, body := d.do("POST", "/v2/models/seed-linear-64/infer", okBin, map[string]string{"Inference-Header-Content-Length": okLen})
	if code != 200 {
		t.Fatalf("a good binary request after the bad ones: %d %s", code, body)
	}
	if code, _, body = d.do("POST", "/v2/models/seed-linear-64/infer", inferJSON([]int{2, 64}, ones(128)), nil); code != 200 {
		t.Fatalf("a good JSON request after the bad ones: %d %s", code, body)
	}

	// Loopback listener: a foreign Host or Origin (DNS rebinding) is refused.
	for _, hdr := range []map[string]string{{"Host": "evil.example"}, {"Host": "evil.example:" + portOf(d.addr)}, {"Origin": "http://evil.example"}} {
		code, h, body := d.do("POST", "/v2/models/seed-linear-64/infer", inferJSON([]int{1, 64}, ones(64)), hdr)
		checkJSONError(t, "infer with "+strings.Join(sortedKeys(hdr), ",")+" "+hdr["Host"]+hdr["Origin"], code, h, body, 403)
		code, h, body = d.do("GET", "/v2", nil, hdr)
		checkJSONError(t, "GET /v2 with "+hdr["Host"]+hdr["Origin"], code, h, body, 403)
	}
	if code, _, body := d.do("GET", "/v2", nil, map[string]string{"Host": "localhost:" + portOf(d.addr)}); code != 200 {
		t.Errorf("Host localhost refused: %d %s", code, body)
	}

	// NaN and Inf inside binary input: served, counted.
	in := []float32{float32(math.NaN()), 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15,
		float32(math.Inf(1)), 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, float32(math.Inf(-1))}
	req, n := inferBinary([]int{2, 16}, in)
	code, h, body := d.do("POST", "/v2/models/mlp-gelu/infer", req, map[string]string{"Inference-Header-Content-Length": strconv.Itoa(n)})
	if code != 200 {
		t.Fatalf("NaN/Inf input: status %d, want 200: %s", code, body)
	}
	res, err := decodeInfer(h, body)
	if err != nil {
		t.Fatal(err)
	}
	nonFinite := 0
	for _, v := range res.Data {
		if math.IsNaN(float64(v)) || math.IsInf(float64(v), 0) {
			nonFinite++
		}
	}
	if nonFinite == 0 {
		t.Fatalf("NaN input gave a finite output %v: the test proves nothing", res.Data)
	}
	// The next health signal and the metric count them.
	var sig contracts.HealthSignal
	deadline := time.Now().Add(20 * time.Second) // a bound against hangs, not a latency target
	for sig.HealthScore == 0 && time.Now().Before(deadline) {
		for _, m := range readBus(t, d.busFile) {
			if strings.HasSuffix(m.trace, "/mlp-gelu") {
				if sig, err = contracts.DecodeHealthSignal(m.payload); err != nil {
					t.Fatalf("HealthSignal after NaN input: %v\n%s", err, m.payload)
				}
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	// health_score = 1 − 0.3·(non-finite fraction) − ...: NaN must lower it.
	frac := float64(nonFinite) / float64(len(res.Data))
	if sig.HealthScore == 0 || sig.HealthScore > 1-0.3*frac+1e-9 {
		t.Errorf("HealthSignal after %d/%d non-finite outputs has health_score %v, want ≤ %v", nonFinite, len(res.Data), sig.HealthScore, 1-0.3*frac)
	}
	mfs := parseMetrics(t, d.scrape())
	if v, ok := metricValue(mfs, "kasmina_nonfinite_outputs_total", map[string]string{"kernel": "mlp-gelu"}); !ok || int(v) != nonFinite {
		t.Errorf("kasmina_nonfinite_outputs_total{kernel=mlp-gelu} = %v (present %v), want %d", v, ok, nonFinite)
	}
	if v, ok := metricValue(mfs, "kasmina_http_panics_total", nil); !ok || v != 0 {
		t.Errorf("kasmina_http_panics_total = %v (present %v), want 0", v, ok)
	}
	if v, ok := metricValue(mfs, "kasmina_http_requests_total", map[string]string{"route": "POST /v2/models/{name}/infer", "code": "400"}); !ok || v < 10 {
		t.Errorf("kasmina_http_requests_total{code=400} = %v, want the refusals counted", v)
	}
	d.stop()
}

func portOf(addr string) string { return addr[strings.LastIndexByte(addr, ':')+1:] }

// TestDaemonAuthBeyondLoopback: listening on 0.0.0.0 needs a token; with
// one, inference and state changes need it while probes and scrapes stay
// open.
func TestDaemonAuthBeyondLoopback(t *testing.T) {
	bin := daemonBinary(t)

	// No token: refuses to start, naming the flag, exit 2.
	out, code := runBinary(t, nil, bin, "serve", "--addr", "0.0.0.0:"+strconv.Itoa(freePort(t)), "--no-examples", "--bus-file", os.DevNull)
	if code != exitUsage || !strings.Contains(out, "--auth-token-file") || !strings.Contains(out, "--insecure-no-auth") {
		t.Fatalf("0.0.0.0 without a token: exit %d, want 2 naming --auth-token-file and --insecure-no-auth:\n%s", code, out)
	}

	tokenFile := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(tokenFile, []byte("s3cret-e2e\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	d := startDaemon(t, daemonConfig{listen: "0.0.0.0", token: "s3cret-e2e", args: []string{"--auth-token-file", tokenFile}})
	noAuth := map[string]string{"Authorization": ""}
	wrong := map[string]string{"Authorization": "Bearer nope"}
	good := inferJSON([]int{1, 64}, make([]float32, 64))

	for _, p := range []string{"/v2/health/live", "/v2/health/ready", "/metrics"} {
		if code, _, body := d.do("GET", p, nil, noAuth); code != 200 {
			t.Errorf("GET %s without a token: %d, want 200 (open for probes and scrapes): %s", p, code, body)
		}
	}
	for _, hdr := range []map[string]string{noAuth, wrong} {
		code, h, body := d.do("POST", "/v2/models/seed-linear-64/infer", good, hdr)
		checkJSONError(t, "infer with Authorization "+hdr["Authorization"], code, h, body, 401)
		if h.Get("WWW-Authenticate") == "" {
			t.Errorf("401 without WWW-Authenticate")
		}
		code, h, body = d.do("POST", "/v2/repository/models/seed-linear-64/unload", nil, hdr)
		checkJSONError(t, "unload without the token", code, h, body, 401)
		code, h, body = d.do("DELETE", "/v1/kernels/seed-linear-64", nil, hdr)
		checkJSONError(t, "DELETE /v1/kernels without the token", code, h, body, 401)
	}
	if code, _, body := d.do("POST", "/v2/models/seed-linear-64/infer", good, nil); code != 200 {
		t.Errorf("infer with the token: %d %s", code, body)
	}
	d.stop()
}

// runBinary runs the binary with a 20 s limit and returns its combined
// output and exit code.
func runBinary(t *testing.T, env []string, bin string, args ...string) (string, int) {
	t.Helper()
	var out bytes.Buffer
	code := runBinaryTo(t, env, &out, &out, bin, args...)
	return out.String(), code
}

// runBinaryTo runs the binary with a 20 s limit, its output going to
// stdout and stderr, and returns its exit code.
func runBinaryTo(t *testing.T, env []string, stdout, stderr *bytes.Buffer, bin string, args ...string) int {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Env = append(cleanEnv(), env...)
	cmd.Stdout, cmd.Stderr = stdout, stderr
	err := cmd.Run()
	if ctx.Err() != nil {
		t.Fatalf("%v did not exit within 20 s:\n%s%s", args, stdout, stderr)
	}
	if err != nil {
		if _, ok := err.(*exec.ExitError); !ok {
			t.Fatalf("%v: %v", args, err)
		}
	}
	return cmd.ProcessState.ExitCode()
}

// TestDaemonBadSettingsExit2 checks that bad flags and environment values
// stop serve with exit code 2 and a message naming the setting.
func TestDaemonBadSettingsExit2(t *testing.T) {
	bin := daemonBinary(t)
	addr := "127.0.0.1:" + strconv.Itoa(freePort(t))
	badLayers := filepath.Join(t.TempDir(), "layers.json")
	if err := os.WriteFile(badLayers, []byte(`{"layers": [{"layer_name": "l", "num_seeds": 65}]}`), 0o600); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name string
		env  []string
		args []string
		want string
	}{
		{"cpu fallback", nil, []string{"--cpu-fallback=maybe"}, "--cpu-fallback"},
		{"queue depth from the environment", []string{"KASMINA_QUEUE_DEPTH=x"}, nil, "KASMINA_QUEUE_DEPTH"},
		{"missing kernels directory", nil, []string{"--kernels", "/nonexistent"}, "--kernels"},
		{"log format", nil, []string{"--log-format", "xml"}, "--log-format"},
		{"signal interval", nil, []string{"--signal-interval", "1ms"}, "--signal-interval"},
		{"token file", nil, []string{"--auth-token-file", "/nonexistent/token"}, "--auth-token-file"},
		{"placement policy from the environment", []string{"KASMINA_PLACEMENT_POLICY=random"}, nil, "--placement-policy"},
		{"boolean from the environment", []string{"KASMINA_NO_EXAMPLES=perhaps"}, nil, "KASMINA_NO_EXAMPLES"},
		{"missing layers file", nil, []string{"--layers", "/nonexistent/layers.json"}, "--layers"},
		{"a layers file the host refuses", []string{"KASMINA_LAYERS=" + badLayers}, nil, "layers[0]: num_seeds 65: want 1 to 64"},
		{"accept-all-layers from the environment", []string{"KASMINA_ACCEPT_ALL_LAYERS=perhaps"}, nil, "KASMINA_ACCEPT_ALL_LAYERS"},
		{"unknown flag", nil, []string{"--bogus"}, "bogus"},
		{"stray argument", nil, []string{"extra"}, "extra"},
		{"gRPC address", nil, []string{"--grpc-addr", "nonsense"}, "--grpc-addr"},
		{"gRPC address from the environment", []string{"KASMINA_GRPC_ADDR=:x:"}, nil, "--grpc-addr"},
		{"gRPC beyond loopback without a token", nil, []string{"--grpc-addr", "0.0.0.0:0"}, "--grpc-addr: listening beyond loopback needs a bearer token"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			args := append([]string{"serve", "--addr", addr, "--bus-file", os.DevNull}, c.args...)
			out, code := runBinary(t, c.env, bin, args...)
			if code != exitUsage || !strings.Contains(out, c.want) {
				t.Errorf("exit %d, want 2 with a message naming %s:\n%s", code, c.want, out)
			}
		})
	}
	if out, code := runBinary(t, nil, bin, "no-such-command"); code != exitUsage || !strings.Contains(out, "no-such-command") {
		t.Errorf("unknown command: exit %d:\n%s", code, out)
	}
}
