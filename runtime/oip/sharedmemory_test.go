package oip_test

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/esper/kasmina-host/runtime/oip"
	"github.com/esper/kasmina-host/runtime/shm"
)

// shmFixture is the handler fixture with a shared memory registry over a
// directory holding one 8 KiB object, "tensors".
func shmFixture(t *testing.T, opts oip.Options) (*fixture, *shm.Registry, *os.File) {
	t.Helper()
	dir := t.TempDir()
	obj := filepath.Join(dir, "tensors")
	if err := os.WriteFile(obj, make([]byte, 8192), 0o600); err != nil {
		t.Fatal(err)
	}
	reg := shm.New(shm.Options{Dir: dir})
	t.Cleanup(reg.Close)
	file, err := os.OpenFile(obj, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { file.Close() })
	opts.SharedMemory = reg
	return newFixture(t, opts, oip.HostViews{}), reg, file
}

func TestSharedMemoryRoutes(t *testing.T) {
	f, _, _ := shmFixture(t, oip.Options{})
	steps := []struct {
		method, path, body string
		want               int
		is                 string // the whole answer, or with a leading "~" a part of the error
	}{
		{"GET", "/v2", "", 200, `{"name":"kasmina-host","version":"1.2.3","extensions":["binary_tensor_data","model_repository","statistics","system_shared_memory"]}`},
		{"GET", "/v2/systemsharedmemory/status", "", 200, `[]`},
		{"POST", "/v2/systemsharedmemory/region/in/register", `{"key":"/tensors","offset":0,"byte_size":4096}`, 200, `{}`},
		{"POST", "/v2/systemsharedmemory/region/out/register", `{"key":"tensors","offset":4096,"byte_size":4096}`, 200, `{}`},
		{"POST", "/v2/systemsharedmemory/region/in/register", `{"key":"/tensors","offset":0,"byte_size":1}`, 409, "~already registered"},
		{"POST", "/v2/systemsharedmemory/region/x/register", `{"key":"/missing","offset":0,"byte_size":1}`, 404, "~no shared memory object"},
		{"POST", "/v2/systemsharedmemory/region/x/register", `{"key":"/tensors","offset":8000,"byte_size":1000}`, 400, "~only 8192 bytes"},
		{"POST", "/v2/systemsharedmemory/region/x/register", `{"offset":0,"byte_size":1}`, 400, "~key: missing"},
		{"POST", "/v2/systemsharedmemory/region/x/register", `{"key":"/tensors"}`, 400, "~byte_size: missing"},
		{"POST", "/v2/systemsharedmemory/region/x/register", `{"key":"/tensors","offset":-1,"byte_size":1}`, 400, "~offset: negative"},
		{"POST", "/v2/systemsharedmemory/region/x/register", `{"key":"/../etc/passwd","byte_size":1}`, 400, "~no '/' after its leading one"},
		{"GET", "/v2/systemsharedmemory/status", "", 200, `[{"name":"in","key":"/tensors","offset":0,"byte_size":4096},{"name":"out","key":"tensors","offset":4096,"byte_size":4096}]`},
		{"GET", "/v2/systemsharedmemory/region/out/status", "", 200, `[{"name":"out","key":"tensors","offset":4096,"byte_size":4096}]`},
		{"GET", "/v2/systemsharedmemory/region/nope/status", "", 404, `~no shared memory region named "nope"`},
		{"POST", "/v2/systemsharedmemory/region/in/unregister", "", 200, `{}`},
		{"POST", "/v2/systemsharedmemory/region/in/unregister", "", 200, `{}`},
		{"GET", "/v2/systemsharedmemory/status", "", 200, `[{"name":"out","key":"tensors","offset":4096,"byte_size":4096}]`},
		{"POST", "/v2/systemsharedmemory/unregister", "", 200, `{}`},
		{"GET", "/v2/systemsharedmemory/status", "", 200, `[]`},
	}
	for i, s := range steps {
		w := f.call(s.method, s.path, []byte(s.body), nil)
		if w.Code != s.want {
			t.Fatalf("step %d %s %s: %d %s, want %d", i, s.method, s.path, w.Code, w.Body, s.want)
		}
		if msg, ok := strings.CutPrefix(s.is, "~"); ok {
			if got := errorMessage(t, w); !strings.Contains(got, msg) {
				t.Fatalf("step %d: error %q, want %q in it", i, got, msg)
			}
		} else if w.Body.String() != s.is {
			t.Fatalf("step %d %s %s: %s, want %s", i, s.method, s.path, w.Body, s.is)
		}
	}
}

func TestSharedMemoryRoutesAreGuarded(t *testing.T) {
	f, _, _ := shmFixture(t, oip.Options{Access: oip.Access{Token: "s3cret", Loopback: true}})
	register := []byte(`{"key":"/tensors","offset":0,"byte_size":64}`)
	for _, path := range []string{"/v2/systemsharedmemory/region/r/register", "/v2/systemsharedmemory/region/r/unregister", "/v2/systemsharedmemory/unregister"} {
		if w := f.call("POST", path, register, nil); w.Code != 401 {
			t.Errorf("%s without the token: %d", path, w.Code)
		}
		if w := f.call("POST", path, register, map[string]string{"Authorization": "Bearer s3cret", "Sec-Fetch-Site": "cross-site"}); w.Code != 403 {
			t.Errorf("%s cross-site: %d", path, w.Code)
		}
	}
	if w := f.call("POST", "/v2/systemsharedmemory/region/r/register", register, map[string]string{"Authorization": "Bearer s3cret"}); w.Code != 200 {
		t.Fatalf("register with the token: %d %s", w.Code, w.Body)
	}
	if w := f.call("GET", "/v2/systemsharedmemory/status", nil, map[string]string{"Host": "evil.example"}); w.Code != 403 {
		t.Fatalf("status from a foreign Host: %d", w.Code)
	}
	// Off: every route answers 501 and GET /v2 does not list it.
	g := newFixture(t, oip.Options{}, oip.HostViews{})
	if w := g.call("POST", "/v2/systemsharedmemory/region/r/register", register, nil); w.Code != 501 || !strings.Contains(errorMessage(t, w), "not enabled") {
		t.Fatalf("register with shared memory off: %d %s", w.Code, w.Body)
	}
	if w := g.call("GET", "/v2", nil, nil); strings.Contains(w.Body.String(), "system_shared_memory") {
		t.Fatalf("GET /v2 with shared memory off: %s", w.Body)
	}
}

func shmInferBody(batch int, inOff, outOff, outSize int64, outputsInShm bool) []byte {
	req := map[string]any{
		"inputs": []any{map[string]any{"name": "input", "shape": []int{batch, 4}, "datatype": "FP32",
			"parameters": map[string]any{"shared_memory_region": "in", "shared_memory_offset": inOff, "shared_memory_byte_size": 16 * batch}}},
	}
	if outputsInShm {
		req["outputs"] = []any{map[string]any{"name": "output",
			"parameters": map[string]any{"shared_memory_region": "out", "shared_memory_offset": outOff, "shared_memory_byte_size": outSize}}}
	}
	b, _ := json.Marshal(req)
	return b
}

func TestSharedMemoryInference(t *testing.T) {
	f, reg, file := shmFixture(t, oip.Options{})
	if err := reg.Register("in", "/tensors", 0, 4096); err != nil {
		t.Fatal(err)
	}
	if err := reg.Register("out", "/tensors", 4100, 4092); err != nil {
		t.Fatal(err)
	}
	if _, err := file.WriteAt(f32bytes(1, 2, 3, 4, -1, 0.5, 0, 8), 64); err != nil {
		t.Fatal(err)
	}
	w := f.call("POST", "/v2/models/double/infer", shmInferBody(2, 64, 8, 32, true), nil)
	if w.Code != 200 {
		t.Fatalf("%d %s", w.Code, w.Body)
	}
	if got := w.Body.String(); !strings.HasSuffix(got, `"outputs":[{"name":"output","datatype":"FP32","shape":[2,4]}]}`) || w.Header().Get("Content-Type") != "application/json" {
		t.Fatalf("answer with the output in shared memory: %s", got)
	}
	got := make([]byte, 32)
	if _, err := file.ReadAt(got, 4100+8); err != nil {
		t.Fatal(err)
	}
	if string(got) != string(f32bytes(2, 4, 6, 8, -2, 1, 0, 16)) {
		t.Fatalf("output in the region: % x", got)
	}
	// Input from shared memory, output in the answer (binary).
	body := shmInferBody(1, 64, 0, 0, false)
	body = []byte(strings.Replace(string(body), `{"inputs"`, `{"parameters":{"binary_data_output":true},"inputs"`, 1))
	w = f.call("POST", "/v2/models/double/infer", body, nil)
	if w.Code != 200 {
		t.Fatalf("%d %s", w.Code, w.Body)
	}
	if _, out := splitBinary(t, w); string(out) != string(f32bytes(2, 4, 6, 8)) {
		t.Fatalf("binary output of a shared memory input: % x", out)
	}

	// Refusals before the model runs.
	_, before := f.backend.LastInput()
	for _, c := range []struct {
		body     []byte
		want     int
		contains string
	}{
		{shmInferBody(1, 4090, 0, 16, true), 400, `inputs[0].parameters: shared_memory_offset 4090 + shared_memory_byte_size 16 run past the end of region "in" (4096 bytes)`},
		{shmInferBody(2, 0, 0, 31, true), 400, "outputs[0].parameters.shared_memory_byte_size is 31 bytes but the output needs 32"},
		{shmInferBody(1, 0, 4090, 16, true), 400, `outputs[0].parameters: shared_memory_offset 4090`},
	} {
		w := f.call("POST", "/v2/models/double/infer", c.body, nil)
		if w.Code != c.want || !strings.Contains(errorMessage(t, w), c.contains) {
			t.Errorf("%d %s, want %d with %q", w.Code, w.Body, c.want, c.contains)
		}
	}
	nope := strings.Replace(string(shmInferBody(1, 0, 0, 16, true)), `"shared_memory_region":"out"`, `"shared_memory_region":"nope"`, 1)
	if w := f.call("POST", "/v2/models/double/infer", []byte(nope), nil); w.Code != 404 || !strings.Contains(errorMessage(t, w), `outputs[0]: no shared memory region named "nope"`) {
		t.Errorf("unknown output region: %d %s", w.Code, w.Body)
	}
	if _, after := f.backend.LastInput(); after != before {
		t.Fatalf("refused requests reached the model %d times", after-before)
	}
}

// TestSharedMemoryChangedDuringInference: a model that unregisters or
// truncates the regions while it runs, as a racing client could.
func TestSharedMemoryChangedDuringInference(t *testing.T) {
	f, reg, file := shmFixture(t, oip.Options{})
	register := func() {
		if err := reg.Register("in", "/tensors", 0, 4096); err != nil {
			t.Fatal(err)
		}
		if err := reg.Register("out", "/tensors", 4096, 4096); err != nil {
			t.Fatal(err)
		}
	}
	register()
	var during func()
	f.backend.Add(oip.ModelInfo{Name: "double", InputShape: []int{4}, OutputShape: []int{4}}, func(in oip.Tensor) (oip.Tensor, error) {
		during()
		out := make([]float32, len(in.Data))
		for i, v := range in.Data {
			out[i] = 2 * v
		}
		return oip.Tensor{Shape: in.Shape, Data: out}, nil
	})
	during = reg.UnregisterAll
	if w := f.call("POST", "/v2/models/double/infer", shmInferBody(1, 0, 0, 16, true), nil); w.Code != 200 {
		t.Fatalf("regions unregistered during the request: %d %s", w.Code, w.Body)
	}
	if w := f.call("POST", "/v2/models/double/infer", shmInferBody(1, 0, 0, 16, true), nil); w.Code != 404 {
		t.Fatalf("after: %d %s", w.Code, w.Body)
	}
	register()
	during = func() {
		if err := file.Truncate(100); err != nil {
			t.Error(err)
		}
	}
	w := f.call("POST", "/v2/models/double/infer", shmInferBody(1, 0, 0, 16, true), nil)
	if w.Code != 400 || !strings.Contains(errorMessage(t, w), `outputs[0]: region "out": its shared memory object "/tensors" was truncated to 100 bytes under the host`) {
		t.Fatalf("truncated during the request: %d %s", w.Code, w.Body)
	}
	during = func() {}
	w = f.call("POST", "/v2/models/double/infer", shmInferBody(1, 200, 0, 16, true), nil)
	if w.Code != 400 || !strings.Contains(errorMessage(t, w), `inputs[0]: region "in": its shared memory object "/tensors" was truncated`) {
		t.Fatalf("input truncated: %d %s", w.Code, w.Body)
	}
}
