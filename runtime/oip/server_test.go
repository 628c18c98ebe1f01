package oip_test

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/esper/kasmina-host/runtime/oip"
)

// TestOverRealConnections drives the handler through net/http on a
// loopback socket: bodies of unknown length (chunked), no Content-Type,
// and a chunked body over the cap.
func TestOverRealConnections(t *testing.T) {
	f := newFixture(t, oip.Options{Access: oip.Access{Loopback: true}, MaxBodyBytes: 2048}, oip.HostViews{})
	srv := httptest.NewServer(f.handler)
	defer srv.Close()

	post := func(body io.Reader, hdr map[string]string) (*http.Response, []byte) {
		t.Helper()
		req, err := http.NewRequest("POST", srv.URL+"/v2/models/double/infer", body)
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Del("Content-Type")
		for k, v := range hdr {
			req.Header.Set(k, v)
		}
		resp, err := srv.Client().Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		if err != nil {
			t.Fatal(err)
		}
		return resp, b
	}

	// io.MultiReader hides the length, so the client sends it chunked.
	body, hl := binaryInfer("FP32", []int{1, 4}, f32bytes(1, 2, 3, 4), "")
	resp, got := post(io.MultiReader(bytes.NewReader(body)), map[string]string{"Inference-Header-Content-Length": strconv.Itoa(hl)})
	if resp.StatusCode != 200 {
		t.Fatalf("chunked binary request: %d %s", resp.StatusCode, got)
	}
	n, _ := strconv.Atoi(resp.Header.Get("Inference-Header-Content-Length"))
	if !bytes.Equal(got[n:], f32bytes(2, 4, 6, 8)) {
		t.Fatalf("binary output % x", got[n:])
	}

	big := jsonInfer("FP32", []int{1, 4}, "[1,2,3,4"+strings.Repeat(" ", 4096)+"]")
	resp, got = post(io.MultiReader(bytes.NewReader(big)), nil)
	if resp.StatusCode != 413 || !strings.Contains(string(got), "too large") {
		t.Fatalf("chunked oversized body: %d %s", resp.StatusCode, got)
	}
	resp, got = post(bytes.NewReader(big), nil)
	if resp.StatusCode != 413 {
		t.Fatalf("oversized body with Content-Length: %d %s", resp.StatusCode, got)
	}
	// The server still serves.
	resp, got = post(bytes.NewReader(jsonInfer("FP32", []int{1, 4}, "[1,2,3,4]")), nil)
	if resp.StatusCode != 200 {
		t.Fatalf("after oversized bodies: %d %s", resp.StatusCode, got)
	}
}

// TestTritonClientCheck runs testdata/triton_client_check.py, which drives
// this handler with Triton's own Python HTTP client, when TRITONCLIENT_SRC
// points at that client's source tree and /usr/bin/python3 has its
// dependencies; otherwise it skips and says why.
func TestTritonClientCheck(t *testing.T) {
	src := os.Getenv("TRITONCLIENT_SRC")
	if src == "" {
		t.Skip("SKIPPED: TRITONCLIENT_SRC is not set; Triton's Python HTTP client was not run")
	}
	python := "/usr/bin/python3"
	if out, err := exec.Command(python, "-c", "import geventhttpclient, rapidjson, numpy").CombinedOutput(); err != nil {
		t.Skipf("SKIPPED: %s lacks python3-geventhttpclient, python3-rapidjson or python3-numpy: %s", python, out)
	}
	f := newFixture(t, oip.Options{Access: oip.Access{Loopback: true, Token: "s3cret"}}, oip.HostViews{})
	srv := httptest.NewServer(f.handler)
	defer srv.Close()
	addr := strings.TrimPrefix(srv.URL, "http://")
	script, err := filepath.Abs("testdata/triton_client_check.py")
	if err != nil {
		t.Fatal(err)
	}
	run := func(args ...string) string {
		t.Helper()
		cmd := exec.Command(python, append([]string{script, "--url", addr, "--token", "s3cret"}, args...)...)
		cmd.Env = append(os.Environ(), "TRITONCLIENT_SRC="+src)
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("triton_client_check.py %v: %v\n%s", args, err, out)
		}
		return string(out)
	}
	out := run("--model", "double", "--input", "[[1, 2, 3, 4], [-1, 0.5, 0, 8]]", "--expected", "[[2, 4, 6, 8], [-2, 1, 0, 16]]")
	if !strings.Contains(out, "PASSED") {
		t.Fatalf("no PASSED line:\n%s", out)
	}
	out = run("--model", "sum", "--input", "[[[1, 2, 3], [4, 5, 6]]]", "--expected", "[[21]]")
	if !strings.Contains(out, "PASSED") {
		t.Fatalf("no PASSED line:\n%s", out)
	}
	t.Log(out)

	// A case directory in the golden layout: io.safetensors and case.json.
	dir := t.TempDir()
	writeCase(t, dir, []float32{1, 2, 3, 4}, []float64{2, 4, 6, 8})
	if out := run("--model", "double", "--case", dir); !strings.Contains(out, "relative L2 error") || !strings.Contains(out, "PASSED") {
		t.Fatalf("--case did not compare by relative error:\n%s", out)
	}

	// A wrong expectation must fail the script, or it proves nothing.
	cmd := exec.Command(python, script, "--url", addr, "--token", "s3cret", "--model", "double", "--input", "[[1, 2, 3, 4]]", "--expected", "[[1, 2, 3, 4]]")
	cmd.Env = append(os.Environ(), "TRITONCLIENT_SRC="+src)
	if out, err := cmd.CombinedOutput(); err == nil {
		t.Fatalf("the script passed a wrong expectation:\n%s", out)
	}
}

// writeCase writes io.safetensors ("input" F32 [1,n], "expected" F64 [1,n])
// and case.json into dir, as the golden kernel cases lay them out.
func writeCase(t *testing.T, dir string, in []float32, expected []float64) {
	t.Helper()
	var data []byte
	data = append(data, f32bytes(in...)...)
	for _, v := range expected {
		data = binary.LittleEndian.AppendUint64(data, math.Float64bits(v))
	}
	hdr, _ := json.Marshal(map[string]any{
		"input":    map[string]any{"dtype": "F32", "shape": []int{1, len(in)}, "data_offsets": []int{0, 4 * len(in)}},
		"expected": map[string]any{"dtype": "F64", "shape": []int{1, len(expected)}, "data_offsets": []int{4 * len(in), len(data)}},
	})
	file := binary.LittleEndian.AppendUint64(nil, uint64(len(hdr)))
	file = append(append(file, hdr...), data...)
	if err := os.WriteFile(filepath.Join(dir, "io.safetensors"), file, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "case.json"), []byte(`{"tolerance": 1e-6}`), 0o644); err != nil {
		t.Fatal(err)
	}
}

// TestConcurrentRequestsDoNotShareBuffers sends many different requests at
// once; each answer must be its own input doubled, which fails if pooled
// buffers leak between requests.
func TestConcurrentRequestsDoNotShareBuffers(t *testing.T) {
	f := newFixture(t, oip.Options{}, oip.HostViews{})
	srv := httptest.NewServer(f.handler)
	defer srv.Close()
	const workers, each = 8, 25
	errs := make(chan error, workers)
	for g := range workers {
		go func() {
			for i := range each {
				v := float32(g*1000 + i)
				body, hl := binaryInfer("FP32", []int{1, 4}, f32bytes(v, v+1, v+2, v+3), "")
				hdr := strconv.Itoa(hl)
				if i%2 == 1 {
					body, hdr = jsonInfer("FP32", []int{1, 4}, fmt.Sprintf("[%g,%g,%g,%g]", v, v+1, v+2, v+3)), ""
				}
				req, _ := http.NewRequest("POST", srv.URL+"/v2/models/double/infer", bytes.NewReader(body))
				if hdr != "" {
					req.Header.Set("Inference-Header-Content-Length", hdr)
				}
				resp, err := srv.Client().Do(req)
				if err != nil {
					errs <- err
					return
				}
				got, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				want := f32bytes(2*v, 2*v+2, 2*v+4, 2*v+6)
				if hdr == "" {
					want = fmt.Appendf(nil, `"data":[%g,%g,%g,%g]`, 2*v, 2*v+2, 2*v+4, 2*v+6)
				}
				if resp.StatusCode != 200 || !bytes.Contains(got, want) {
					errs <- fmt.Errorf("worker %d request %d: %d %q", g, i, resp.StatusCode, got)
					return
				}
			}
			errs <- nil
		}()
	}
	for range workers {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
}
