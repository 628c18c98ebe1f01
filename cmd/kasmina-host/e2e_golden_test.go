package main

import (
	"encoding/json"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/esper/kasmina-host/contracts"
	"github.com/esper/kasmina-host/kernels"
)

// goldenDir is the folder of golden kernel cases: KERNEL_GOLDEN_DIR (the
// variable the kernels package's golden test reads), else the project's
// copy in kernels/testdata/golden.
func goldenDir() string {
	if d := os.Getenv("KERNEL_GOLDEN_DIR"); d != "" {
		return d
	}
	return filepath.Join("..", "..", "kernels", "testdata", "golden")
}

// goldenCase is one case: the kernel's name, the input and the PyTorch
// float64 reference.
type goldenCase struct {
	Dir       string
	KernelID  string    `json:"kernel_id"`
	InShape   []int     `json:"input_shape"`
	OutShape  []int     `json:"output_shape"`
	Tolerance float64   `json:"tolerance"`
	Input     []float32 `json:"-"`
	Expected  []float64 `json:"-"`
}

func loadGoldenCases(t testing.TB) []goldenCase {
	t.Helper()
	dir := goldenDir()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatalf("golden cases: %v", err)
	}
	var out []goldenCase
	for _, e := range entries {
		if !e.IsDir() {
			continue
		}
		cdir := filepath.Join(dir, e.Name())
		raw, err := os.ReadFile(filepath.Join(cdir, "case.json"))
		if err != nil {
			continue
		}
		c := goldenCase{Dir: cdir}
		if err := json.Unmarshal(raw, &c); err != nil {
			t.Fatalf("%s/case.json: %v", cdir, err)
		}
		ioRaw, err := os.ReadFile(filepath.Join(cdir, "io.safetensors"))
		if err != nil {
			t.Fatal(err)
		}
		f, err := kernels.ParseSafetensors(ioRaw)
		if err != nil {
			t.Fatalf("%s/io.safetensors: %v", cdir, err)
		}
		in, ok1 := f.Tensor("input")
		exp, ok2 := f.Tensor("expected")
		if !ok1 || !ok2 {
			t.Fatalf("%s/io.safetensors lacks input or expected", cdir)
		}
		if c.Input, err = in.Float32s(); err != nil {
			t.Fatal(err)
		}
		if c.Expected, err = exp.Float64s(); err != nil {
			t.Fatal(err)
		}
		out = append(out, c)
	}
	if len(out) == 0 {
		t.Fatalf("no golden cases in %s", dir)
	}
	return out
}

// relL2 is ‖out − expected‖₂ / ‖expected‖₂; NaN anywhere fails.
func relL2(out []float32, expected []float64) (float64, error) {
	if len(out) != len(expected) {
		return math.NaN(), fmt.Errorf("%d output values, want %d", len(out), len(expected))
	}
	var num, den float64
	for i, v := range out {
		if math.IsNaN(float64(v)) {
			return math.NaN(), fmt.Errorf("output element %d is NaN", i)
		}
		d := float64(v) - expected[i]
		num += d * d
		den += expected[i] * expected[i]
	}
	if den == 0 {
		return math.Sqrt(num), nil
	}
	return math.Sqrt(num) / math.Sqrt(den), nil
}

type indexEntry struct {
	Name   string `json:"name"`
	State  string `json:"state"`
	Reason string `json:"reason"`
}

func (d *daemon) index() map[string]indexEntry {
	d.t.Helper()
	var idx []indexEntry
	d.json("POST", "/v2/repository/index", nil, 200, &idx)
	out := make(map[string]indexEntry, len(idx))
	for _, e := range idx {
		out[e.Name] = e
	}
	return out
}

// TestDaemonServesGoldenKernels is the end-to-end proof: the real binary
// serves every golden kernel from --kernels, unloads and reloads each
// through the repository API, runs each case's input through /infer (JSON
// for even cases, Triton's binary extension for odd ones) and matches
// PyTorch's float64 output within the case's tolerance; /metrics counts
// the requests per kernel and device, and the embedded bus carries a valid
// HealthSignal for every kernel that ran.
func TestDaemonServesGoldenKernels(t *testing.T) {
	cases := loadGoldenCases(t)
	d := startDaemon(t, daemonConfig{args: []string{"--kernels", goldenDir(), "--signal-interval", "200ms"}})

	// Every case's io.safetensors is skipped with one log line.
	if n := strings.Count(d.stderr.String(), "/io.safetensors"); n != len(cases) {
		t.Errorf("%d log lines name an io.safetensors file, want one per case (%d)", n, len(cases))
	}

	// The index lists exactly the golden kernels, all READY.
	idx := d.index()
	if len(idx) != len(cases) {
		t.Errorf("index lists %d models, want %d (io.safetensors must not be listed): %v", len(idx), len(cases), idx)
	}
	for _, c := range cases {
		if e, ok := idx[c.KernelID]; !ok || e.State != "READY" {
			t.Errorf("index: %s is %+v, want READY", c.KernelID, e)
		}
	}

	// Unload and reload each through the repository extension.
	for _, c := range cases {
		var st struct{ Name, State string }
		d.json("POST", "/v2/repository/models/"+c.KernelID+"/unload", nil, 200, &st)
		if st.State != "UNAVAILABLE" {
			t.Errorf("unload %s: state %q", c.KernelID, st.State)
		}
		if code, _, _ := d.do("GET", "/v2/models/"+c.KernelID+"/ready", nil, nil); code != 503 {
			t.Errorf("%s unloaded: /ready answered %d, want 503", c.KernelID, code)
		}
		d.json("POST", "/v2/repository/models/"+c.KernelID+"/load", []byte(`{}`), 200, &st)
		if st.State != "READY" {
			t.Errorf("load %s: state %q", c.KernelID, st.State)
		}
	}
	for name, e := range d.index() {
		if e.State != "READY" {
			t.Errorf("after reload: %s is %s (%s)", name, e.State, e.Reason)
		}
	}

	// Inference.
	passed, failed := 0, 0
	for i, c := range cases {
		mode, req, hdr := "json", inferJSON(c.InShape, c.Input), map[string]string(nil)
		if i%2 == 1 {
			var n int
			mode = "binary"
			req, n = inferBinary(c.InShape, c.Input)
			hdr = map[string]string{"Inference-Header-Content-Length": strconv.Itoa(n)}
		}
		code, h, body := d.do("POST", "/v2/models/"+c.KernelID+"/infer", req, hdr)
		if code != 200 {
			failed++
			t.Errorf("%s (%s): status %d: %s", c.KernelID, mode, code, body)
			continue
		}
		if binary := h.Get("Inference-Header-Content-Length") != ""; binary != (mode == "binary") {
			t.Errorf("%s (%s): answer binary=%v (Content-Type %q)", c.KernelID, mode, binary, h.Get("Content-Type"))
		}
		res, err := decodeInfer(h, body)
		if err != nil {
			failed++
			t.Errorf("%s (%s): %v", c.KernelID, mode, err)
			continue
		}
		if fmt.Sprint(res.Shape) != fmt.Sprint(c.OutShape) {
			failed++
			t.Errorf("%s (%s): output shape %v, want %v", c.KernelID, mode, res.Shape, c.OutShape)
			continue
		}
		rel, err := relL2(res.Data, c.Expected)
		if err != nil || rel > c.Tolerance {
			failed++
			t.Errorf("%s (%s): relative L2 error %.3g (tolerance %.3g) %v", c.KernelID, mode, rel, c.Tolerance, err)
			continue
		}
		if res.Parameters["executed_on"] != "cpu" {
			t.Errorf("%s: parameters do not say where it ran: %v", c.KernelID, res.Parameters)
		}
		passed++
	}
	fmt.Printf("daemon e2e: %d passed, %d failed (of %d)\n", passed, failed, len(cases))
	t.Logf("daemon e2e: %d passed, %d failed (of %d)", passed, failed, len(cases))

	// Health signals on the embedded bus, one kernel at least each.
	want := map[string]bool{}
	for _, c := range cases {
		want[c.KernelID] = true
	}
	got := waitSignals(t, d.busFile, want, 20*time.Second) // a bound against hangs, not a latency target
	for k := range want {
		if got[k] == 0 {
			t.Errorf("no HealthSignal on the bus for %s", k)
		}
	}

	// Metrics.
	text := d.scrape()
	mfs := parseMetrics(t, text)
	for _, c := range cases {
		labels := map[string]string{"kernel": c.KernelID, "device": "cpu", "executor": "cpu-f32", "outcome": "success"}
		if v, ok := metricValue(mfs, "kasmina_inference_requests_total", labels); !ok || v != 1 {
			t.Errorf("kasmina_inference_requests_total%v = %v (present %v), want 1 (counters restart at reload)", labels, v, ok)
		}
		if v, ok := metricValue(mfs, "kasmina_inference_duration_seconds",
			map[string]string{"kernel": c.KernelID, "device": "cpu", "executor": "cpu-f32"}); !ok || v != 1 {
			t.Errorf("kasmina_inference_duration_seconds count for %s = %v (present %v), want 1", c.KernelID, v, ok)
		}
	}
	checkCommonMetrics(t, mfs)
	lintMetrics(t, text)

	d.stop()

	// After a clean stop every published message is in the file.
	msgs := readBus(t, d.busFile)
	if !strings.Contains(d.stderr.String(), "bus_delivered="+strconv.Itoa(len(msgs))+" ") {
		t.Errorf("the bus file has %d lines; the stop log says otherwise:\n%s", len(msgs), tail(d.stderr.String(), 600))
	}
}

// waitSignals polls the bus file until every kernel in want has a
// HealthSignal that passes the contract's decoder, or limit passes. It
// returns the count per kernel.
func waitSignals(t *testing.T, path string, want map[string]bool, limit time.Duration) map[string]int {
	t.Helper()
	deadline := time.Now().Add(limit)
	for {
		got := map[string]int{}
		for _, m := range readBus(t, path) {
			if m.topic != string(contracts.TopicTelemetrySeedHealth) {
				continue
			}
			if _, err := contracts.DecodeOonaMessage(m.raw); err != nil {
				t.Fatalf("bus line is not a valid OonaMessage: %v\n%s", err, m.raw)
			}
			sig, err := contracts.DecodeHealthSignal(m.payload)
			if err != nil {
				t.Fatalf("payload is not a valid HealthSignal: %v\n%s", err, m.payload)
			}
			if m.sender != "kasmina-host.e2e" {
				t.Errorf("sender_id %q, want kasmina-host.e2e", m.sender)
			}
			parts := strings.Split(m.trace, "/")
			if len(parts) != 3 {
				t.Fatalf("trace_id %q is not layer/seed/kernel", m.trace)
			}
			if sig.SeedID != atoiOr(parts[1], -1) {
				t.Errorf("trace_id %q but seed_id %d", m.trace, sig.SeedID)
			}
			got[parts[2]]++
		}
		missing := 0
		for k := range want {
			if got[k] == 0 {
				missing++
			}
		}
		if missing == 0 || time.Now().After(deadline) {
			return got
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func atoiOr(s string, def int) int {
	n, err := strconv.Atoi(s)
	if err != nil {
		return def
	}
	return n
}

// sortedKeys is for stable error messages.
func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}
