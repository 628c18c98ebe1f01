package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// TestTritonClientAgainstDaemon drives the real daemon with Triton's own
// Python HTTP client (tritonclient.http, unchanged), through
// runtime/oip/testdata/triton_client_check.py: liveness, readiness, server
// and model metadata, and inference in binary and JSON modes on golden
// cases, compared with PyTorch's output within each case's tolerance. It
// runs when TRITONCLIENT_SRC points at a checkout of
// triton-inference-server/client and /usr/bin/python3 has
// python3-geventhttpclient, python3-rapidjson and python3-numpy; otherwise
// it skips and says so.
func TestTritonClientAgainstDaemon(t *testing.T) {
	src := os.Getenv("TRITONCLIENT_SRC")
	if src == "" {
		t.Skip("SKIPPED: TRITONCLIENT_SRC is not set; Triton's Python HTTP client was not run against the daemon")
	}
	python := "/usr/bin/python3"
	if out, err := exec.Command(python, "-c", "import geventhttpclient, rapidjson, numpy").CombinedOutput(); err != nil {
		t.Skipf("SKIPPED: %s lacks python3-geventhttpclient, python3-rapidjson or python3-numpy: %s", python, out)
	}
	script, err := filepath.Abs(filepath.Join("..", "..", "runtime", "oip", "testdata", "triton_client_check.py"))
	if err != nil {
		t.Fatal(err)
	}
	tokenFile := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(tokenFile, []byte("triton-e2e"), 0o600); err != nil {
		t.Fatal(err)
	}
	d := startDaemon(t, daemonConfig{token: "triton-e2e", args: []string{"--kernels", goldenDir(), "--auth-token-file", tokenFile}})

	run := func(args ...string) (string, error) {
		cmd := exec.Command(python, append([]string{script, "--url", d.addr, "--token", "triton-e2e"}, args...)...)
		cmd.Env = append(os.Environ(), "TRITONCLIENT_SRC="+src)
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	cases := loadGoldenCases(t)
	for i, c := range cases {
		if i%10 != 0 && i != len(cases)-1 {
			continue // a spread of cases: each run starts a Python process
		}
		out, err := run("--model", c.KernelID, "--case", c.Dir)
		if err != nil || !strings.Contains(out, "PASSED") {
			t.Errorf("tritonclient on %s: %v\n%s", c.KernelID, err, out)
			continue
		}
		t.Logf("tritonclient on %s:\n%s", c.KernelID, out)
	}
	// A wrong expectation must fail the script, or it proves nothing.
	c := cases[0]
	wrong := "[" + strings.TrimSuffix(strings.Repeat("0,", c.OutShape[len(c.OutShape)-1]), ",") + "]"
	out, err := run("--model", c.KernelID, "--input", "["+floatsJSON(c.Input[:c.InShape[len(c.InShape)-1]])+"]", "--expected", "["+wrong+"]")
	if err == nil {
		t.Errorf("the script passed a wrong expectation:\n%s", out)
	}
	d.stop()
}

func floatsJSON(v []float32) string {
	parts := make([]string, len(v))
	for i, x := range v {
		parts[i] = strconv.FormatFloat(float64(x), 'g', -1, 32)
	}
	return strings.Join(parts, ",")
}

// TestTritonGRPCClientAgainstDaemon drives the real daemon with Triton's
// own Python gRPC client (tritonclient.grpc, unchanged, its protobuf
// modules generated from Triton's protos found under TRITONCLIENT_SRC),
// through runtime/oipgrpc/testdata/triton_grpc_check.py: liveness,
// readiness, server and model metadata, the grpc.health.v1 service, and
// inference on every golden case compared with PyTorch's output within the
// case's tolerance; then system shared memory with both of Triton's
// clients (gRPC and HTTP) on a spread of cases. It runs when
// TRITONCLIENT_SRC points at a checkout of triton-inference-server/client
// and /usr/bin/python3 has the client's dependencies; otherwise it skips
// and says so.
func TestTritonGRPCClientAgainstDaemon(t *testing.T) {
	src := os.Getenv("TRITONCLIENT_SRC")
	if src == "" {
		t.Skip("SKIPPED: TRITONCLIENT_SRC is not set; Triton's Python gRPC client was not run against the daemon")
	}
	python := "/usr/bin/python3"
	if out, err := exec.Command(python, "-c", "import grpc, grpc_tools, google.protobuf, numpy, rapidjson, geventhttpclient").CombinedOutput(); err != nil {
		t.Skipf("SKIPPED: %s lacks python3-grpcio, python3-grpc-tools, python3-protobuf, python3-numpy, python3-rapidjson or python3-geventhttpclient: %s", python, out)
	}
	if st, err := os.Stat("/dev/shm"); err != nil || !st.IsDir() {
		t.Skip("SKIPPED: no /dev/shm, where the client creates its shared memory")
	}
	script, err := filepath.Abs(filepath.Join("..", "..", "runtime", "oipgrpc", "testdata", "triton_grpc_check.py"))
	if err != nil {
		t.Fatal(err)
	}
	golden, err := filepath.Abs(goldenDir())
	if err != nil {
		t.Fatal(err)
	}
	d := startDaemon(t, daemonConfig{token: "triton-grpc", args: []string{"--kernels", golden, "--auth-token", "triton-grpc"}})
	run := func(args ...string) (string, error) {
		cmd := exec.Command(python, append([]string{script, "--url", d.grpcAddr, "--http-url", d.addr, "--token", "triton-grpc"}, args...)...)
		cmd.Env = append(os.Environ(), "TRITONCLIENT_SRC="+src)
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	out, err := run("--golden", golden, "--shm")
	cases := loadGoldenCases(t)
	if err != nil || !strings.Contains(out, "PASSED") || !strings.Contains(out, strconv.Itoa(len(cases))+" model(s)") ||
		!strings.Contains(out, "grpc ") || !strings.Contains(out, "http ") {
		t.Fatalf("tritonclient.grpc on the golden cases: %v\n%s", err, out)
	}
	t.Logf("tritonclient.grpc on %d golden cases:\n%s", len(cases), tail(out, 3000))
	// A wrong expectation must fail the script, or it proves nothing.
	c := cases[0]
	wrong := "[" + strings.TrimSuffix(strings.Repeat("0,", c.OutShape[len(c.OutShape)-1]), ",") + "]"
	out, err = run("--model", c.KernelID, "--input", "["+floatsJSON(c.Input[:c.InShape[len(c.InShape)-1]])+"]", "--expected", "["+wrong+"]")
	if err == nil {
		t.Errorf("the script passed a wrong expectation:\n%s", out)
	}
	d.stop()
}
