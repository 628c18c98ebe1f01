package main

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// runBinaryStdout runs the binary and returns stdout and stderr apart.
func runBinaryStdout(t *testing.T, env []string, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	var out, errOut bytes.Buffer
	code = runBinaryTo(t, env, &out, &errOut, daemonBinary(t), args...)
	return out.String(), errOut.String(), code
}

// placeDecision is the fields of `place --json` outside checks rely on.
type placeDecision struct {
	Device      *string          `json:"device"`
	UUID        *string          `json:"uuid"`
	EstimateMiB *float64         `json:"estimate_mib"`
	Degraded    *bool            `json:"degraded"`
	Reason      *string          `json:"reason"`
	Candidates  []map[string]any `json:"candidates"`
}

func decodePlace(t *testing.T, out string) placeDecision {
	t.Helper()
	dec := json.NewDecoder(strings.NewReader(out))
	var p placeDecision
	if err := dec.Decode(&p); err != nil {
		t.Fatalf("place --json: %v\n%s", err, out)
	}
	if dec.More() {
		t.Fatalf("place --json printed more than one JSON value:\n%s", out)
	}
	if p.Device == nil || p.UUID == nil || p.EstimateMiB == nil || p.Degraded == nil || p.Reason == nil || p.Candidates == nil {
		t.Fatalf("place --json lacks device/uuid/estimate_mib/degraded/reason/candidates:\n%s", out)
	}
	return p
}

// TestPlaceCommand runs `kasmina-host place` as a user would.
func TestPlaceCommand(t *testing.T) {
	doc := filepath.Join("..", "..", "kernels", "examples", "mlp-gelu.json")

	out, errOut, code := runBinaryStdout(t, nil, "place", "--kernel", doc, "--simulate", "dgxa100", "--json")
	if code != exitOK {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	p := decodePlace(t, out)
	if !strings.HasPrefix(*p.Device, "cuda:") || !strings.HasPrefix(*p.UUID, "GPU-") || *p.Degraded || *p.EstimateMiB <= 0 {
		t.Errorf("on a simulated DGX A100 a cuda kernel goes to a GPU, not degraded: %s", out)
	}
	if len(p.Candidates) != 9 {
		t.Errorf("%d candidates, want the 8 GPUs and the CPU", len(p.Candidates))
	}

	out, errOut, code = runBinaryStdout(t, []string{"CUDA_VISIBLE_DEVICES="}, "place", "--kernel", doc, "--simulate", "dgxa100", "--json")
	if code != exitOK {
		t.Fatalf("CUDA_VISIBLE_DEVICES empty: exit %d: %s", code, errOut)
	}
	p = decodePlace(t, out)
	if *p.Device != "cpu" || !*p.Degraded || !strings.Contains(*p.Reason, "fell back") {
		t.Errorf("with no visible GPU a cuda kernel falls back to the CPU, degraded: %s", out)
	}

	// A kernel too big for every device: exit 1, device "".
	var m map[string]any
	raw, err := os.ReadFile(doc)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(raw, &m); err != nil {
		t.Fatal(err)
	}
	md := m["metadata"].(map[string]any)
	md["memory_footprint_mb"] = 1e9
	md["device_requirements"] = []string{"cuda", "cpu"}
	big, _ := json.Marshal(m)
	bigPath := filepath.Join(t.TempDir(), "big.json")
	if err := os.WriteFile(bigPath, big, 0o600); err != nil {
		t.Fatal(err)
	}
	out, errOut, code = runBinaryStdout(t, nil, "place", "--kernel", bigPath, "--simulate", "dgxa100", "--json")
	if code != exitFatal {
		t.Fatalf("a kernel too big for everything: exit %d, want 1: %s%s", code, errOut, out)
	}
	p = decodePlace(t, out)
	if *p.Device != "" || !strings.Contains(*p.Reason, "no device can take the kernel") {
		t.Errorf("too big: device %q reason %q", *p.Device, *p.Reason)
	}
	for _, c := range p.Candidates {
		if c["fits"] != false {
			t.Errorf("too big, yet candidate %v fits", c)
		}
	}
}

// TestPlaceCommandNamesMIGInstancesByCUDAOrdinal: on a MIG node the
// instances are CUDA devices 0.. and a kernel requiring cuda:1 goes to the
// device `devices` and `place` both call cuda:1 when it fits.
func TestPlaceCommandNamesMIGInstancesByCUDAOrdinal(t *testing.T) {
	raw, err := os.ReadFile(filepath.Join("..", "..", "kernels", "examples", "mlp-gelu.json"))
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(raw, &m); err != nil {
		t.Fatal(err)
	}
	m["metadata"].(map[string]any)["device_requirements"] = []string{"cuda:1"}
	doc, _ := json.Marshal(m)
	path := filepath.Join(t.TempDir(), "cuda1.json")
	if err := os.WriteFile(path, doc, 0o600); err != nil {
		t.Fatal(err)
	}
	out, errOut, code := runBinaryStdout(t, nil, "place", "--kernel", path, "--simulate", "dgxa100-mig", "--json")
	if code != exitOK {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	p := decodePlace(t, out)
	if *p.Device != "cuda:1" || *p.Degraded || !strings.HasPrefix(*p.UUID, "MIG-") {
		t.Fatalf("a kernel requiring cuda:1 on dgxa100-mig: device %q uuid %q degraded %v, want the MIG instance cuda:1\n%s", *p.Device, *p.UUID, *p.Degraded, *p.Reason)
	}
	devOut, errOut, code := runBinaryStdout(t, nil, "devices", "--simulate", "dgxa100-mig", "--json")
	if code != exitOK {
		t.Fatalf("devices: exit %d: %s", code, errOut)
	}
	var devs []struct {
		UUID        string `json:"uuid"`
		CUDAOrdinal int    `json:"cuda_ordinal"`
	}
	if err := json.Unmarshal([]byte(devOut), &devs); err != nil {
		t.Fatal(err)
	}
	listed := false
	for _, d := range devs {
		if d.CUDAOrdinal == 1 {
			listed = true
			if d.UUID != *p.UUID {
				t.Errorf("devices lists %s as CUDA ordinal 1, place chose %s for cuda:1", d.UUID, *p.UUID)
			}
		}
	}
	if !listed {
		t.Errorf("devices --simulate dgxa100-mig lists no device with CUDA ordinal 1:\n%s", devOut)
	}
}

// TestDevicesCommand runs `kasmina-host devices --json` as a user would.
func TestDevicesCommand(t *testing.T) {
	cases := []struct {
		env  []string
		want string
	}{
		{nil, "0,1,2,3,4,5,6,7"},
		{[]string{"CUDA_VISIBLE_DEVICES=0,3"}, "0,3"},
	}
	for _, c := range cases {
		out, errOut, code := runBinaryStdout(t, c.env, "devices", "--simulate", "dgxa100", "--json")
		if code != exitOK {
			t.Fatalf("%v: exit %d: %s", c.env, code, errOut)
		}
		var devs []struct {
			Kind  string `json:"kind"`
			Index int    `json:"index"`
		}
		if err := json.Unmarshal([]byte(out), &devs); err != nil {
			t.Fatalf("%v: %v\n%s", c.env, err, out)
		}
		var gpus []string
		for _, d := range devs[:len(devs)-1] {
			if d.Kind != "gpu" {
				t.Errorf("%v: %q before the CPU", c.env, d.Kind)
			}
			gpus = append(gpus, strconv.Itoa(d.Index))
		}
		if got := strings.Join(gpus, ","); got != c.want {
			t.Errorf("%v: GPUs %s, want %s", c.env, got, c.want)
		}
		if devs[len(devs)-1].Kind != "cpu" {
			t.Errorf("%v: last device is %q, want the CPU", c.env, devs[len(devs)-1].Kind)
		}
	}
}

// TestHealthcheckCommand probes a running daemon the way the image's
// HEALTHCHECK does.
func TestHealthcheckCommand(t *testing.T) {
	d := startDaemon(t, daemonConfig{args: []string{"--no-examples"}})
	port := portOf(d.addr)
	cases := []struct {
		name string
		env  []string
		args []string
		want int
	}{
		{"live on the daemon's address", nil, []string{"--addr", d.addr}, exitOK},
		{"ready", nil, []string{"--addr", d.addr, "--ready"}, exitOK},
		{"wildcard address probes loopback", nil, []string{"--addr", "0.0.0.0:" + port}, exitOK},
		{"address from KASMINA_ADDR", []string{"KASMINA_ADDR=0.0.0.0:" + port}, nil, exitOK},
		{"nothing listening", nil, []string{"--addr", "127.0.0.1:" + strconv.Itoa(freePort(t))}, exitFatal},
		{"bad address", nil, []string{"--addr", "nonsense"}, exitUsage},
	}
	for _, c := range cases {
		out, code := runBinary(t, c.env, daemonBinary(t), append([]string{"healthcheck"}, c.args...)...)
		if code != c.want {
			t.Errorf("%s: exit %d, want %d:\n%s", c.name, code, c.want, out)
		}
		if c.want == exitOK && !bytes.Contains([]byte(out), []byte("/v2/health/")) {
			t.Errorf("%s: output does not say what was probed: %s", c.name, out)
		}
	}
	d.stop()
}
