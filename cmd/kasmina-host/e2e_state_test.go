package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io/fs"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/esper/kasmina-host/kernels/examples"
	"github.com/esper/kasmina-host/runtime"
)

// kernelView is the part of GET /v1/kernels/{id} this test reads.
type kernelView struct {
	Name    string `json:"name"`
	SHA256  string `json:"sha256"`
	Layer   string `json:"layer"`
	LayerID int    `json:"layer_id"`
	SeedIdx int    `json:"seed_idx"`
}

type seedView struct {
	Layer   string `json:"layer"`
	LayerID int    `json:"layer_id"`
	SeedIdx int    `json:"seed_idx"`
	State   string `json:"state"`
	Kernel  string `json:"kernel"`
}

// exampleDoc returns an embedded example's CompiledKernel document and
// writes its artifact into root (the daemon's --kernel-root).
func exampleDoc(t *testing.T, root, name string) json.RawMessage {
	t.Helper()
	doc, err := fs.ReadFile(examples.FS, name+".json")
	if err != nil {
		t.Fatal(err)
	}
	art, err := fs.ReadFile(examples.FS, name+".safetensors")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(root, name+".safetensors"), art, 0o600); err != nil {
		t.Fatal(err)
	}
	return withRef(t, doc, name+".safetensors")
}

// withRef returns doc with binary_ref set to ref (the examples' own
// "file://NAME.safetensors" names a host, which kernels/source refuses).
func withRef(t *testing.T, doc json.RawMessage, ref string) json.RawMessage {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal(doc, &m); err != nil {
		t.Fatal(err)
	}
	m["binary_ref"] = ref
	out, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func loadBody(doc json.RawMessage, name, layer string, seed int) []byte {
	b, _ := json.Marshal(map[string]any{"compiled_kernel": doc, "name": name, "layer_name": layer, "seed_idx": seed})
	return b
}

// TestDaemonStateSurvivesSIGKILL loads kernels through POST /v1/kernels
// (CompiledKernel documents whose binary_ref is a file under
// --kernel-root), attaches one to a seed, kills the daemon with SIGKILL in
// the middle of a stream of loads and restarts it on the same --state-dir
// with the kernel root emptied: every load that was acknowledged comes
// back READY under the same name and seed (from the state directory's own
// copy of the artifact), the state file is whole JSON, and the attached
// kernel computes the same output as before.
func TestDaemonStateSurvivesSIGKILL(t *testing.T) {
	root := t.TempDir()
	stateDir := t.TempDir()
	mlp := exampleDoc(t, root, "mlp-gelu")
	lin := exampleDoc(t, root, "seed-linear-64")
	seq := exampleDoc(t, root, "seq-layernorm")
	args := []string{"--no-examples", "--kernel-root", root}
	d := startDaemon(t, daemonConfig{stateDir: stateDir, args: args})

	// A reference that can never be fetched is the client's error: 400 when
	// it cannot be parsed or has no source, 422 when policy refuses it.
	for ref, status := range map[string]int{"file://otherhost/mlp-gelu.safetensors": 400, "../outside.safetensors": 422, "ftp://x/y": 400} {
		code, h, body := d.do("POST", "/v1/kernels", withRef(t, mlp, ref), nil)
		checkJSONError(t, "binary_ref "+ref, code, h, body, status)
	}

	var kv kernelView
	d.json("POST", "/v1/kernels", loadBody(mlp, "attached", "encoder.3", 2), 201, &kv)
	if kv.Layer != "encoder.3" || kv.SeedIdx != 2 {
		t.Fatalf("attached kernel view: %+v", kv)
	}
	d.json("POST", "/v1/kernels", lin, 201, &kv) // a bare CompiledKernel document
	if kv.Name != "seed-linear-64" {
		t.Fatalf("a bare document loads under its kernel_id, got %q", kv.Name)
	}
	input := inferJSON([]int{2, 16}, []float32{0.5, -1, 2, 0, 1, 1, -3, 0.25, 4, -0.5, 0, 0, 1, 2, 3, 4,
		1, 2, 3, 4, 5, 6, 7, 8, -1, -2, -3, -4, -5, -6, -7, -8})
	code, h, body := d.do("POST", "/v2/models/attached/infer", input, nil)
	if code != 200 {
		t.Fatalf("infer attached: %d %s", code, body)
	}
	before, err := decodeInfer(h, body)
	if err != nil {
		t.Fatal(err)
	}
	var layersBefore struct{ Layers []runtime.LayerView }
	d.json("GET", "/v1/layers", nil, 200, &layersBefore)

	// A stream of loads, killed in the middle.
	var (
		mu               sync.Mutex
		acked, attempted []string
	)
	stop := make(chan struct{})
	streamDone := make(chan struct{})
	go func() {
		defer close(streamDone)
		client := &http.Client{Timeout: 5 * time.Second}
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			name := fmt.Sprintf("stream-%03d", i)
			mu.Lock()
			attempted = append(attempted, name)
			mu.Unlock()
			resp, err := client.Post(d.base+"/v1/kernels", "application/json", bytes.NewReader(loadBody(seq, name, "", 0)))
			if err != nil {
				return // the daemon is gone
			}
			resp.Body.Close()
			if resp.StatusCode == http.StatusCreated {
				mu.Lock()
				acked = append(acked, name)
				mu.Unlock()
			}
		}
	}()
	deadline := time.Now().Add(20 * time.Second)
	for {
		mu.Lock()
		n := len(acked)
		mu.Unlock()
		if n >= 12 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("only %d loads acknowledged in 20 s:\n%s", n, tail(d.stderr.String(), 2000))
		}
		time.Sleep(2 * time.Millisecond)
	}
	d.kill()
	close(stop)
	<-streamDone
	mu.Lock()
	ackedAtKill := append([]string(nil), acked...)
	attemptedAtKill := append([]string(nil), attempted...)
	mu.Unlock()

	// The state file is whole: it parses, and names every acknowledged load.
	raw, err := os.ReadFile(filepath.Join(stateDir, "state.json"))
	if err != nil {
		t.Fatalf("no state file after SIGKILL: %v", err)
	}
	var st runtime.State
	if err := json.Unmarshal(raw, &st); err != nil {
		t.Fatalf("state.json is torn after SIGKILL: %v\n%s", err, tail(string(raw), 500))
	}
	inState := map[string]bool{}
	for _, k := range st.Kernels {
		inState[k.Name] = true
	}
	for _, name := range append([]string{"attached", "seed-linear-64"}, ackedAtKill...) {
		if !inState[name] {
			t.Errorf("%s was acknowledged (201) before SIGKILL but is not in state.json:\n%s", name, tail(string(raw), 300))
		}
	}

	// The artifacts must come from the state directory now.
	for _, n := range []string{"mlp-gelu", "seed-linear-64", "seq-layernorm"} {
		if err := os.Remove(filepath.Join(root, n+".safetensors")); err != nil {
			t.Fatal(err)
		}
	}
	d2 := startDaemon(t, daemonConfig{stateDir: stateDir, args: args})
	var list struct {
		Kernels []kernelView      `json:"kernels"`
		Failed  map[string]string `json:"failed"`
	}
	d2.json("GET", "/v1/kernels", nil, 200, &list)
	if len(list.Failed) > 0 {
		t.Errorf("kernels failed to come back: %v", list.Failed)
	}
	back := map[string]kernelView{}
	for _, k := range list.Kernels {
		back[k.Name] = k
	}
	allowed := map[string]bool{"attached": true, "seed-linear-64": true}
	for _, n := range attemptedAtKill {
		allowed[n] = true
	}
	for _, name := range append([]string{"attached", "seed-linear-64"}, ackedAtKill...) {
		if _, ok := back[name]; !ok {
			t.Errorf("%s did not come back after the restart", name)
		}
	}
	for name := range back {
		if !allowed[name] {
			t.Errorf("%s came back but was never loaded", name)
		}
	}
	idx := d2.index()
	for name := range back {
		if idx[name].State != "READY" {
			t.Errorf("%s after restart: %+v, want READY", name, idx[name])
		}
	}
	if a := back["attached"]; a.Layer != "encoder.3" || a.SeedIdx != 2 {
		t.Errorf("attached came back on %s/%d, want encoder.3/2", a.Layer, a.SeedIdx)
	}
	var seeds []seedView
	d2.json("GET", "/v1/seeds", nil, 200, &seeds)
	found := false
	for _, s := range seeds {
		if s.Layer == "encoder.3" && s.SeedIdx == 2 {
			found = true
			if s.Kernel != "attached" || s.State != "germinated" {
				t.Errorf("seed encoder.3/2 after restart: %+v, want kernel attached, germinated", s)
			}
		}
	}
	if !found {
		t.Errorf("seed encoder.3/2 is gone after the restart: %+v", seeds)
	}
	var layersAfter struct{ Layers []runtime.LayerView }
	d2.json("GET", "/v1/layers", nil, 200, &layersAfter)
	ids := func(ls []runtime.LayerView) string {
		var out []string
		for _, l := range ls {
			if l.Name == "encoder.3" || l.Name == "attached" || l.Name == "seed-linear-64" {
				out = append(out, fmt.Sprintf("%s=%d", l.Name, l.LayerID))
			}
		}
		sort.Strings(out)
		return strings.Join(out, " ")
	}
	if ids(layersBefore.Layers) != ids(layersAfter.Layers) || ids(layersBefore.Layers) == "" {
		t.Errorf("layer ids changed across the restart: %s → %s", ids(layersBefore.Layers), ids(layersAfter.Layers))
	}
	code, h, body = d2.do("POST", "/v2/models/attached/infer", input, nil)
	if code != 200 {
		t.Fatalf("infer attached after restart: %d %s", code, body)
	}
	after, err := decodeInfer(h, body)
	if err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(after.Data) != fmt.Sprint(before.Data) {
		t.Errorf("attached computes %v after the restart, %v before", after.Data, before.Data)
	}
	t.Logf("SIGKILL after %d acknowledged loads (%d attempted); %d kernels came back", len(ackedAtKill), len(attemptedAtKill), len(back))
	d2.stop()
}
