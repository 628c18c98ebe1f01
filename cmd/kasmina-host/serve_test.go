package main

// In-process tests of serve's settings and of the HTTP adapter over the
// real runtime: no binary is built, so they run in seconds.

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/esper/kasmina-host/contracts"
	"github.com/esper/kasmina-host/device"
	"github.com/esper/kasmina-host/kernels"
	"github.com/esper/kasmina-host/runtime"
	"github.com/esper/kasmina-host/runtime/oip"
)

// runServeInProcess runs `serve args...` until stop is called or it ends,
// returning its exit code and its log.
type serveRun struct {
	cancel context.CancelFunc
	done   chan int
	log    *syncBuffer
}

func startServeInProcess(t *testing.T, args ...string) *serveRun {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	r := &serveRun{cancel: cancel, done: make(chan int, 1), log: &syncBuffer{}}
	go func() { r.done <- runServe(ctx, args, io.Discard, r.log) }()
	t.Cleanup(func() { r.stop(t) })
	return r
}

// waitLog waits up to 20 s for the log to contain s, or serve to end.
func (r *serveRun) waitLog(t *testing.T, s string) {
	t.Helper()
	for end := time.Now().Add(20 * time.Second); time.Now().Before(end); time.Sleep(10 * time.Millisecond) {
		if strings.Contains(r.log.String(), s) {
			return
		}
		select {
		case code := <-r.done:
			r.done <- code
			t.Fatalf("serve ended with %d before logging %q:\n%s", code, s, r.log)
		default:
		}
	}
	t.Fatalf("serve did not log %q within 20 s:\n%s", s, r.log)
}

func (r *serveRun) stop(t *testing.T) int {
	t.Helper()
	r.cancel()
	select {
	case code := <-r.done:
		r.done <- code
		return code
	case <-time.After(20 * time.Second):
		t.Fatalf("serve did not stop within 20 s:\n%s", r.log)
		return -1
	}
}

// TestServeRefusesBlankTokens: a blank or whitespace token is refused
// with exit 2 wherever it comes from (flag, environment, file), naming
// the setting; it used to pass for a token on a non-loopback address.
func TestServeRefusesBlankTokens(t *testing.T) {
	dir := t.TempDir()
	file := func(content string) string {
		p := filepath.Join(dir, strconv.Itoa(len(content))+"-token")
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	cases := []struct {
		name string
		env  map[string]string
		args []string
		want string
	}{
		{"blank flag", nil, []string{"--auth-token", " "}, "--auth-token"},
		{"tab flag", nil, []string{"--auth-token", "\t"}, "--auth-token"},
		{"token with a space", nil, []string{"--auth-token", "two words"}, "--auth-token"},
		{"blank environment", map[string]string{"KASMINA_AUTH_TOKEN": "  "}, nil, "KASMINA_AUTH_TOKEN"},
		{"blank file", nil, []string{"--auth-token-file", file(" \n\t\n")}, "--auth-token-file"},
		{"file with a space inside", nil, []string{"--auth-token-file", file("two words\n")}, "--auth-token-file"},
		{"auth-read without a token", nil, []string{"--addr", "127.0.0.1:0", "--auth-read"}, "--auth-read"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			for k, v := range c.env {
				t.Setenv(k, v)
			}
			var stderr bytes.Buffer
			args := append([]string{"--addr", "0.0.0.0:0", "--bus-file", os.DevNull, "--no-examples"}, c.args...)
			// Bounded: were the setting accepted, serve would run until
			// the context ends.
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			code := runServe(ctx, args, io.Discard, &stderr)
			if code != exitUsage || !strings.Contains(stderr.String(), c.want) {
				t.Fatalf("exit %d, want 2 naming %s:\n%s", code, c.want, stderr.String())
			}
		})
	}
}

// TestServeWarnsWithoutAuthBeyondLoopback: --insecure-no-auth on a
// non-loopback address logs a WARN line on every start (it logged
// nothing).
func TestServeWarnsWithoutAuthBeyondLoopback(t *testing.T) {
	r := startServeInProcess(t, "--addr", "0.0.0.0:0", "--insecure-no-auth", "--no-examples", "--bus-file", os.DevNull,
		"--simulate", "dgxa100", "--signal-interval", "1s")
	r.waitLog(t, "msg=ready")
	if code := r.stop(t); code != exitOK {
		t.Fatalf("exit %d", code)
	}
	var warned bool
	for _, line := range strings.Split(r.log.String(), "\n") {
		if strings.Contains(line, "level=WARN") && strings.Contains(line, "SERVING WITHOUT AUTHENTICATION") && strings.Contains(line, "0.0.0.0:0") {
			warned = true
		}
	}
	if !warned {
		t.Fatalf("no WARN line about serving without authentication:\n%s", r.log)
	}
}

// TestServeAuthRead: --auth-read (or KASMINA_AUTH_READ) requires the
// token on read routes while probes and /metrics stay open; without it
// reads are open as before.
func TestServeAuthRead(t *testing.T) {
	tokenFile := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(tokenFile, []byte("s3cret-read\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name     string
		env      map[string]string
		args     []string
		readCode int
	}{
		{"flag", nil, []string{"--auth-read"}, 401},
		{"environment", map[string]string{"KASMINA_AUTH_READ": "true"}, nil, 401},
		{"off", nil, nil, 200},
	} {
		t.Run(c.name, func(t *testing.T) {
			for k, v := range c.env {
				t.Setenv(k, v)
			}
			addr := "127.0.0.1:" + strconv.Itoa(freePort(t))
			args := append([]string{"--addr", addr, "--auth-token-file", tokenFile, "--bus-file", os.DevNull, "--simulate", "dgxa100"}, c.args...)
			r := startServeInProcess(t, args...)
			r.waitLog(t, "msg=ready")
			get := func(path, token string) int {
				req, _ := http.NewRequest("GET", "http://"+addr+path, nil)
				if token != "" {
					req.Header.Set("Authorization", "Bearer "+token)
				}
				resp, err := http.DefaultClient.Do(req)
				if err != nil {
					t.Fatal(err)
				}
				resp.Body.Close()
				return resp.StatusCode
			}
			for _, p := range []string{"/v2/models/seed-linear-64", "/v1/kernels", "/v2"} {
				if code := get(p, ""); code != c.readCode {
					t.Errorf("GET %s without the token: %d, want %d", p, code, c.readCode)
				}
				if code := get(p, "s3cret-read"); code != 200 {
					t.Errorf("GET %s with the token: %d", p, code)
				}
			}
			for _, p := range []string{"/v2/health/live", "/v2/health/ready", "/metrics"} {
				if code := get(p, ""); code != 200 {
					t.Errorf("GET %s without the token: %d, want 200 (open for probes and scrapes)", p, code)
				}
			}
		})
	}
}

// wideKernelFile writes a Linear(4→out) kernel without bias.
func wideKernelFile(t *testing.T, id string, out int) []byte {
	t.Helper()
	mod := &kernels.Module{Type: "sequential", Layers: []*kernels.Module{{Type: "linear", InFeatures: 4, OutFeatures: out}}}
	md := contracts.NewKernelMetadata(id, "bp-"+id, id)
	md.InputShape, md.OutputShape, md.ParameterCount = []int{4}, []int{out}, 4*out
	md.MemoryFootprintMB = 1
	md.CompilationTarget = "esper-kernel/v1"
	var buf bytes.Buffer
	if err := kernels.WriteKernel(&buf, mod, []kernels.Tensor{kernels.F32Tensor("0.weight", []int{out, 4}, make([]float32, 4*out))}, &md); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// TestOutputLimitOverHTTP: over the real adapter and runtime, a model's
// metadata reports the max_batch its output limit allows, and a batch
// above it is refused with 413 naming the limit before anything runs.
func TestOutputLimitOverHTTP(t *testing.T) {
	inv, err := device.Open(context.Background(), device.Options{Simulate: "dgxa100"})
	if err != nil {
		t.Fatal(err)
	}
	defer inv.Close()
	host, err := runtime.New(runtime.Config{MaxOutputBytes: 1 << 20, MaxBatch: 64}, runtime.Deps{Inventory: inv})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := host.Load(context.Background(), runtime.LoadRequest{Data: wideKernelFile(t, "wide", 1<<16)}); err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(oip.NewHandler(oip.HostBackend(host), oip.HostViewsFor(host, inv), oip.Options{}, nil))
	defer srv.Close()

	resp, err := http.Get(srv.URL + "/v2/models/wide")
	if err != nil {
		t.Fatal(err)
	}
	var md struct {
		Parameters struct {
			MaxBatch int `json:"max_batch"`
		} `json:"parameters"`
	}
	err = json.NewDecoder(resp.Body).Decode(&md)
	resp.Body.Close()
	if err != nil || md.Parameters.MaxBatch != 4 {
		t.Fatalf("metadata max_batch %d (%v), want 4: 1 MiB of output at 256 KiB a sample", md.Parameters.MaxBatch, err)
	}
	body := inferJSON([]int{5, 4}, make([]float32, 20))
	resp, err = http.Post(srv.URL+"/v2/models/wide/infer", "application/json", bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	msg, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 413 || !strings.Contains(string(msg), "max_batch of 4") {
		t.Fatalf("batch 5: %d %s, want 413 naming the limit", resp.StatusCode, msg)
	}
}

// TestServeListenUnix: --listen-unix (or KASMINA_LISTEN_UNIX) serves the
// same API on a Unix socket, mode 0660, with no token on it while TCP
// keeps its own; the socket goes at shutdown; a file that is not a socket
// at the path stops the start (exit 1) and is left as it was.
func TestServeListenUnix(t *testing.T) {
	dir, err := os.MkdirTemp("", "khs") // a socket path must fit in 107 bytes
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	tokenFile := filepath.Join(dir, "token")
	if err := os.WriteFile(tokenFile, []byte("s3cret-unix\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(dir, "host.sock")
	addr := "127.0.0.1:" + strconv.Itoa(freePort(t))
	t.Setenv("KASMINA_LISTEN_UNIX", sock)
	r := startServeInProcess(t, "--addr", addr, "--auth-token-file", tokenFile, "--bus-file", os.DevNull, "--simulate", "dgxa100")
	r.waitLog(t, "msg=ready")
	r.waitLog(t, "unix="+sock)
	fi, err := os.Lstat(sock)
	if err != nil || fi.Mode()&os.ModeSocket == 0 || fi.Mode().Perm() != 0o660 {
		t.Fatalf("socket %v %v, want a socket of mode 0660", fi, err)
	}
	uc := &http.Client{Timeout: 20 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", sock)
		}}}
	body := []byte(`{"inputs":[{"name":"input","shape":[1,64],"datatype":"FP32","data":[` + strings.Repeat("0.5,", 63) + `0.5]}]}`)
	post := func(c *http.Client, base string) (int, string) {
		resp, err := c.Post(base+"/v2/models/seed-linear-64/infer", "application/json", bytes.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if code, b := post(uc, "http://kasmina"); code != 200 || !strings.Contains(b, `"name":"output"`) {
		t.Fatalf("over the socket without a token: %d %s", code, b)
	}
	if code, _ := post(http.DefaultClient, "http://"+addr); code != 401 {
		t.Fatalf("over TCP without a token: %d, want 401", code)
	}
	if code := r.stop(t); code != exitOK {
		t.Fatalf("exit %d:\n%s", code, r.log)
	}
	if _, err := os.Lstat(sock); !os.IsNotExist(err) {
		t.Fatalf("the socket is still there after shutdown: %v", err)
	}

	// A regular file at the path: refused, untouched.
	if err := os.WriteFile(sock, []byte("keep me"), 0o600); err != nil {
		t.Fatal(err)
	}
	var stderr syncBuffer
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	code := runServe(ctx, []string{"--addr", "127.0.0.1:" + strconv.Itoa(freePort(t)), "--bus-file", os.DevNull, "--simulate", "dgxa100", "--listen-unix", sock}, io.Discard, &stderr)
	if code != exitFatal || !strings.Contains(stderr.String(), "--listen-unix") || !strings.Contains(stderr.String(), "is not a socket") {
		t.Fatalf("over a regular file: exit %d\n%s", code, stderr.String())
	}
	if b, _ := os.ReadFile(sock); string(b) != "keep me" {
		t.Fatal("the file at --listen-unix was changed")
	}
}
