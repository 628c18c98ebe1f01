package main

// End-to-end tests: TestMain builds the real kasmina-host binary once (on
// first use) and each test starts it as a child process on a free loopback
// port, with its own state directory and bus file, talks to it over HTTP
// and stops it with SIGTERM, checking the exit code and that shutdown
// drained. Set KASMINA_E2E_RACE=1 to build the daemon itself with -race:
// the race detector then watches the daemon's own goroutines, and a race
// makes it exit with code 66, which stop() reports. It is off by default:
// the test package's -race covers the harness, and a race-built daemon
// makes the load tests several times slower.

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

var (
	e2eDir      string // temporary directory holding the binary
	e2eBinOnce  sync.Once
	e2eBin      string
	e2eBinError error
)

func TestMain(m *testing.M) {
	// serve listens for gRPC on 127.0.0.1:8471 by default: tests that run
	// it in this process take a free port instead (cleanEnv does the same
	// for the binary), so that they neither collide nor need the port.
	os.Setenv("KASMINA_GRPC_ADDR", "127.0.0.1:0")
	dir, err := os.MkdirTemp("", "kasmina-e2e-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e:", err)
		os.Exit(1)
	}
	e2eDir = dir
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// daemonBinary builds cmd/kasmina-host once per test binary run and returns
// its path. Tests that need no daemon never pay for the build.
func daemonBinary(t testing.TB) string {
	t.Helper()
	if testing.Short() {
		t.Skip("-short: the end-to-end tests build and run the daemon")
	}
	e2eBinOnce.Do(func() {
		bin := filepath.Join(e2eDir, "kasmina-host")
		args := []string{"build", "-o", bin, "-ldflags", "-X main.version=e2e-test"}
		if os.Getenv("KASMINA_E2E_RACE") == "1" {
			args = append(args, "-race")
		}
		cmd := exec.Command("go", append(args, ".")...)
		if out, err := cmd.CombinedOutput(); err != nil {
			e2eBinError = fmt.Errorf("go build: %v\n%s", err, out)
			return
		}
		e2eBin = bin
	})
	if e2eBinError != nil {
		t.Fatal(e2eBinError)
	}
	return e2eBin
}

// syncBuffer is a bytes.Buffer safe for the child's output copier and the
// test reading it at once.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// daemon is one running kasmina-host serve.
type daemon struct {
	t        *testing.T
	cmd      *exec.Cmd
	addr     string // host:port to dial
	grpcAddr string // host:port of the gRPC listener
	base     string // http://addr
	stateDir string
	busFile  string
	token    string
	stdout   *syncBuffer
	stderr   *syncBuffer
	done     chan struct{} // closed when the process has exited
	waitErr  error
	client   *http.Client
}

// daemonConfig says how to start a daemon.
type daemonConfig struct {
	args     []string // extra serve flags
	env      []string // extra environment (KEY=VALUE)
	stateDir string   // default: a fresh temporary directory
	listen   string   // listen host (default 127.0.0.1)
	token    string   // sent as the bearer token by the helpers
}

// freePort returns a TCP port that was free a moment ago.
func freePort(t testing.TB) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// startDaemon starts `kasmina-host serve` and waits until
// /v2/health/ready answers 200. The process is killed at the end of the
// test if it is still running.
func startDaemon(t *testing.T, cfg daemonConfig) *daemon {
	t.Helper()
	bin := daemonBinary(t)
	if cfg.stateDir == "" {
		cfg.stateDir = t.TempDir()
	}
	listen := cfg.listen
	if listen == "" {
		listen = "127.0.0.1"
	}
	for attempt := 0; ; attempt++ {
		port, grpcPort := freePort(t), freePort(t)
		d := &daemon{
			t: t, addr: net.JoinHostPort("127.0.0.1", strconv.Itoa(port)), stateDir: cfg.stateDir,
			grpcAddr: net.JoinHostPort("127.0.0.1", strconv.Itoa(grpcPort)),
			busFile:  filepath.Join(t.TempDir(), "bus.jsonl"), token: cfg.token,
			stdout: &syncBuffer{}, stderr: &syncBuffer{}, done: make(chan struct{}),
			client: &http.Client{Timeout: 30 * time.Second},
		}
		d.base = "http://" + d.addr
		args := append([]string{"serve", "--addr", net.JoinHostPort(listen, strconv.Itoa(port)),
			"--grpc-addr", net.JoinHostPort(listen, strconv.Itoa(grpcPort)),
			"--state-dir", cfg.stateDir, "--bus-file", d.busFile, "--host-id", "e2e", "--exit-timeout", "10s"}, cfg.args...)
		d.cmd = exec.Command(bin, args...)
		d.cmd.Env = append(cleanEnv(), cfg.env...)
		d.cmd.Stdout, d.cmd.Stderr = d.stdout, d.stderr
		if err := d.cmd.Start(); err != nil {
			t.Fatal(err)
		}
		go func() { d.waitErr = d.cmd.Wait(); close(d.done) }()
		t.Cleanup(func() {
			select {
			case <-d.done:
			default:
				_ = d.cmd.Process.Kill()
				<-d.done
			}
		})
		err := d.waitReady(30 * time.Second)
		if err == nil {
			return d
		}
		if attempt < 3 && strings.Contains(d.stderr.String(), "address already in use") {
			continue // the free port was taken in between: try another
		}
		t.Fatalf("daemon did not become ready: %v\nargs: %q\nstderr:\n%s", err, args, d.stderr.String())
	}
}

// cleanEnv is the test's environment without the settings that would
// change the daemon under test (KASMINA_*, REDIS_URL, device filters).
func cleanEnv() []string {
	var out []string
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		if strings.HasPrefix(k, "KASMINA_") || k == "REDIS_URL" || k == "URZA_URL" ||
			k == "CUDA_VISIBLE_DEVICES" || k == "NVIDIA_VISIBLE_DEVICES" {
			continue
		}
		out = append(out, kv)
	}
	// A free port rather than the default 8471 (a later
	// KASMINA_GRPC_ADDR in a test's env, or the flag, wins).
	return append(out, "KASMINA_GRPC_ADDR=127.0.0.1:0")
}

func (d *daemon) waitReady(limit time.Duration) error {
	deadline := time.Now().Add(limit)
	for {
		select {
		case <-d.done:
			return fmt.Errorf("the daemon exited: %v", d.waitErr)
		default:
		}
		resp, err := d.client.Get(d.base + "/v2/health/ready")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("not ready after %v (last: %v)", limit, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// stop sends SIGTERM and checks a clean exit: code 0, the HTTP server and
// the bus drained, nothing dropped.
func (d *daemon) stop() {
	d.t.Helper()
	if err := d.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		d.t.Fatalf("SIGTERM: %v", err)
	}
	select {
	case <-d.done:
	case <-time.After(30 * time.Second):
		_ = d.cmd.Process.Kill()
		<-d.done
		d.t.Fatalf("the daemon did not exit within 30 s of SIGTERM\nstderr:\n%s", d.stderr.String())
	}
	logs := d.stderr.String()
	if code := d.cmd.ProcessState.ExitCode(); code != 0 {
		d.t.Fatalf("exit code %d after SIGTERM, want 0\nstderr:\n%s", code, logs)
	}
	for _, bad := range []string{"HTTP drain incomplete", "gRPC drain incomplete", "bus did not flush everything", "loop stopped", "panic"} {
		if strings.Contains(logs, bad) {
			d.t.Errorf("shutdown log has %q:\n%s", bad, tail(logs, 4000))
		}
	}
	stopped := strings.Contains(logs, "msg=stopped") && strings.Contains(logs, "bus_dropped=0") || // text logs
		strings.Contains(logs, `"msg":"stopped"`) && strings.Contains(logs, `"bus_dropped":0`) // JSON logs
	if !stopped {
		d.t.Errorf("shutdown did not log a drained stop (msg=stopped ... bus_dropped=0):\n%s", tail(logs, 4000))
	}
}

// kill sends SIGKILL and waits for the process to go.
func (d *daemon) kill() {
	_ = d.cmd.Process.Kill()
	<-d.done
}

func tail(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return "..." + s[len(s)-n:]
}

// do sends a request and returns the status, headers and body. body may be
// nil; hdr entries are set on the request (a "Host" entry sets the Host).
// The daemon's token, if any, is sent unless hdr has an Authorization
// entry (empty: none).
func (d *daemon) do(method, path string, body []byte, hdr map[string]string) (int, http.Header, []byte) {
	d.t.Helper()
	var r io.Reader
	if body != nil {
		r = bytes.NewReader(body)
	}
	req, err := http.NewRequest(method, d.base+path, r)
	if err != nil {
		d.t.Fatal(err)
	}
	if d.token != "" {
		req.Header.Set("Authorization", "Bearer "+d.token)
	}
	for k, v := range hdr {
		switch {
		case k == "Host":
			req.Host = v
		case k == "Authorization" && v == "":
			req.Header.Del(k)
		default:
			req.Header.Set(k, v)
		}
	}
	resp, err := d.client.Do(req)
	if err != nil {
		d.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		d.t.Fatalf("%s %s: reading the body: %v", method, path, err)
	}
	return resp.StatusCode, resp.Header, b
}

// getJSON GETs (or POSTs, with a body) path, wants 200 and decodes into v.
func (d *daemon) json(method, path string, body []byte, want int, v any) {
	d.t.Helper()
	code, _, b := d.do(method, path, body, nil)
	if code != want {
		d.t.Fatalf("%s %s: status %d, want %d: %s", method, path, code, want, b)
	}
	if v != nil {
		if err := json.Unmarshal(b, v); err != nil {
			d.t.Fatalf("%s %s: %v\n%s", method, path, err, b)
		}
	}
}

// inferJSON builds a JSON-mode inference request.
func inferJSON(shape []int, data []float32) []byte {
	var b bytes.Buffer
	b.WriteString(`{"id":"e2e","inputs":[{"name":"input","datatype":"FP32","shape":`)
	s, _ := json.Marshal(shape)
	b.Write(s)
	b.WriteString(`,"data":[`)
	b.WriteString(floatsJSON(data))
	b.WriteString(`]}]}`)
	return b.Bytes()
}

// inferBinary builds a request under Triton's binary tensor data
// extension, asking for the output in binary too. It returns the body and
// the Inference-Header-Content-Length value.
func inferBinary(shape []int, data []float32) ([]byte, int) {
	hdr, _ := json.Marshal(map[string]any{
		"id": "e2e-bin",
		"inputs": []any{map[string]any{"name": "input", "datatype": "FP32", "shape": shape,
			"parameters": map[string]any{"binary_data_size": 4 * len(data)}}},
		"outputs": []any{map[string]any{"name": "output", "parameters": map[string]any{"binary_data": true}}},
	})
	body := append([]byte(nil), hdr...)
	for _, v := range data {
		body = binary.LittleEndian.AppendUint32(body, math.Float32bits(v))
	}
	return body, len(hdr)
}

// inferResult is an inference answer, decoded from either mode.
type inferResult struct {
	Shape      []int
	Data       []float32
	Parameters map[string]any
}

type inferResponseJSON struct {
	ModelName  string         `json:"model_name"`
	ID         string         `json:"id"`
	Parameters map[string]any `json:"parameters"`
	Outputs    []struct {
		Name       string         `json:"name"`
		Datatype   string         `json:"datatype"`
		Shape      []int          `json:"shape"`
		Data       []float64      `json:"data"`
		Parameters map[string]any `json:"parameters"`
	} `json:"outputs"`
}

// decodeInfer decodes a 200 inference answer in JSON or binary mode.
func decodeInfer(h http.Header, body []byte) (inferResult, error) {
	jsonPart := body
	var raw []byte
	if v := h.Get("Inference-Header-Content-Length"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 0 || n > len(body) {
			return inferResult{}, fmt.Errorf("Inference-Header-Content-Length %q does not fit a %d-byte body", v, len(body))
		}
		jsonPart, raw = body[:n], body[n:]
	}
	var r inferResponseJSON
	if err := json.Unmarshal(jsonPart, &r); err != nil {
		return inferResult{}, fmt.Errorf("answer header: %w: %s", err, jsonPart)
	}
	if len(r.Outputs) != 1 || r.Outputs[0].Name != "output" || r.Outputs[0].Datatype != "FP32" {
		return inferResult{}, fmt.Errorf("want one FP32 output named output: %s", jsonPart)
	}
	o := r.Outputs[0]
	res := inferResult{Shape: o.Shape, Parameters: r.Parameters}
	if raw != nil {
		size, ok := o.Parameters["binary_data_size"].(float64)
		if !ok || int(size) != len(raw) || len(raw)%4 != 0 {
			return inferResult{}, fmt.Errorf("binary_data_size %v, %d bytes follow the header", o.Parameters["binary_data_size"], len(raw))
		}
		for i := 0; i < len(raw); i += 4 {
			res.Data = append(res.Data, math.Float32frombits(binary.LittleEndian.Uint32(raw[i:])))
		}
	} else {
		for _, v := range o.Data {
			res.Data = append(res.Data, float32(v))
		}
	}
	n := 1
	for _, s := range o.Shape {
		n *= s
	}
	if n != len(res.Data) {
		return inferResult{}, fmt.Errorf("shape %v holds %d values, answer has %d", o.Shape, n, len(res.Data))
	}
	return res, nil
}

// busMessage is one JSON line of the embedded bus.
type busMessage struct {
	raw     []byte
	topic   string
	sender  string
	trace   string
	payload json.RawMessage
}

// readBus reads the embedded bus's JSON lines written so far.
func readBus(t testing.TB, path string) []busMessage {
	t.Helper()
	f, err := os.Open(path)
	if os.IsNotExist(err) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []busMessage
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 16<<20)
	for sc.Scan() {
		line := append([]byte(nil), sc.Bytes()...)
		var m struct {
			Topic   string          `json:"topic"`
			Sender  string          `json:"sender_id"`
			Trace   string          `json:"trace_id"`
			Payload json.RawMessage `json:"payload"`
		}
		if err := json.Unmarshal(line, &m); err != nil {
			// The last line may be half written while the daemon runs.
			continue
		}
		out = append(out, busMessage{raw: line, topic: m.Topic, sender: m.Sender, trace: m.Trace, payload: m.Payload})
	}
	return out
}
