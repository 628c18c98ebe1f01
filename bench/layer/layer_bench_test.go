// Package layerbench measures the layer model (#15) through the real
// binary: a forward's per-request time over the Unix socket against
// loopback TCP on the same requests, in interleaved rounds, and a
// forward + backward over the socket (run.sh puts it beside PyTorch's
// in-process autograd on the same module, torch_layer.py).
package layerbench

import (
	"bytes"
	"context"
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
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/esper/kasmina-host/contracts"
	"github.com/esper/kasmina-host/kernels"
)

// Alpha is the one seed's alpha in every layer here (torch_layer.py uses
// the same).
const Alpha = 0.5

// cases are the golden cases served, each as layer "<case>" with the
// case's kernel in seed 0 (BENCH_LAYER_CASES overrides, comma-separated).
func cases() []string {
	if s := os.Getenv("BENCH_LAYER_CASES"); s != "" {
		return strings.Split(s, ",")
	}
	return []string{"golden-1-001", "golden-1-000"}
}

// goldenDir is the project's golden cases.
func goldenDir() string {
	if d := os.Getenv("KERNEL_GOLDEN_DIR"); d != "" {
		return d
	}
	return filepath.Join("..", "..", "kernels", "testdata", "golden")
}

// host is the daemon under test.
type host struct {
	dir, sock, addr string
	cmd             *exec.Cmd
	tcp, unix       *http.Client
}

var (
	once    sync.Once
	theHost *host
	hostErr error
)

func TestMain(m *testing.M) {
	code := m.Run()
	if theHost != nil {
		theHost.stop()
		os.RemoveAll(theHost.dir)
	}
	os.Exit(code)
}

func start(b *testing.B) *host {
	b.Helper()
	once.Do(func() { theHost, hostErr = startHost() })
	if hostErr != nil {
		b.Fatal(hostErr)
	}
	return theHost
}

func (h *host) run() error {
	port, err := freePort()
	if err != nil {
		return err
	}
	h.addr = "127.0.0.1:" + strconv.Itoa(port)
	h.cmd = exec.Command(filepath.Join(h.dir, "kasmina-host"), "serve", "--addr", h.addr, "--grpc-addr", "",
		"--listen-unix", h.sock, "--no-examples", "--kernel-root", filepath.Join(h.dir, "kernels"),
		"--bus-file", os.DevNull, "--log-level", "warn")
	h.cmd.Stderr = os.Stderr
	if err := h.cmd.Start(); err != nil {
		return err
	}
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		resp, err := h.tcp.Get("http://" + h.addr + "/v2/health/ready")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return nil
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("the host was not ready within 20 s: %v", err)
		}
	}
}

func (h *host) stop() {
	_ = h.cmd.Process.Signal(syscall.SIGTERM)
	_ = h.cmd.Wait()
}

func freePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

// startHost builds the binary, starts it, loads every case's kernel into
// seed 0 of its layer (POST /v1/kernels) and sets the seed's alpha (PUT
// /v1/layers/{layer}/seeds/0/alpha).
func startHost() (*host, error) {
	dir, err := os.MkdirTemp("", "layerbench-")
	if err != nil {
		return nil, err
	}
	h := &host{dir: dir, sock: filepath.Join(dir, "kasmina.sock"), tcp: &http.Client{Timeout: 30 * time.Second}}
	h.unix = &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", h.sock)
		},
	}}
	out, err := exec.Command("go", "build", "-o", filepath.Join(dir, "kasmina-host"), "github.com/esper/kasmina-host/cmd/kasmina-host").CombinedOutput()
	if err != nil {
		return nil, fmt.Errorf("go build: %v\n%s", err, out)
	}
	for _, c := range cases() {
		data, err := os.ReadFile(filepath.Join(goldenDir(), c, "kernel.safetensors"))
		if err != nil {
			return nil, err
		}
		if err := os.MkdirAll(filepath.Join(dir, "kernels", c), 0o700); err != nil {
			return nil, err
		}
		if err := os.WriteFile(filepath.Join(dir, "kernels", c, "kernel.safetensors"), data, 0o600); err != nil {
			return nil, err
		}
	}
	if err := h.run(); err != nil {
		return nil, err
	}
	for _, c := range cases() {
		data, _ := os.ReadFile(filepath.Join(dir, "kernels", c, "kernel.safetensors"))
		md, err := kernels.ReadMetadata(data)
		if err != nil || md == nil {
			return nil, fmt.Errorf("%s: metadata: %v", c, err)
		}
		ck := contracts.NewCompiledKernel(md.BlueprintID, c+"/kernel.safetensors", *md)
		body, _ := json.Marshal(map[string]any{"compiled_kernel": json.RawMessage(ck.AppendJSON(nil)), "name": c + ".k0", "layer_name": c, "seed_idx": 0})
		resp, err := h.tcp.Post("http://"+h.addr+"/v1/kernels", "application/json", bytes.NewReader(body))
		if err != nil {
			return nil, err
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 201 {
			return nil, fmt.Errorf("load %s: %d %s", c, resp.StatusCode, b)
		}
		req, _ := http.NewRequest("PUT", "http://"+h.addr+"/v1/layers/"+c+"/seeds/0/alpha", strings.NewReader(fmt.Sprintf(`{"alpha": %g}`, Alpha)))
		if resp, err = h.tcp.Do(req); err != nil {
			return nil, err
		}
		b, _ = io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 {
			return nil, fmt.Errorf("alpha of %s: %d %s", c, resp.StatusCode, b)
		}
	}
	return h, nil
}

// request is one prepared layer request.
type request struct {
	body []byte
	hdr  string
	// outBytes is the size of the answer's binary outputs (its tail).
	outBytes int
}

// layerRequest builds a binary request for case c: input (the case's),
// default (a ramp) and, with grad, grad_output (the case's).
func layerRequest(b *testing.B, c string, grad bool) request {
	b.Helper()
	read := func(file string) *kernels.File {
		raw, err := os.ReadFile(filepath.Join(goldenDir(), c, file))
		if err != nil {
			b.Fatal(err)
		}
		f, err := kernels.ParseSafetensors(raw)
		if err != nil {
			b.Fatal(err)
		}
		return f
	}
	iof, gf := read("io.safetensors"), read("grad.safetensors")
	x, _ := iof.Tensor("input")
	g, _ := gf.Tensor("grad_output")
	xs, err := x.Float32s()
	if err != nil {
		b.Fatal(err)
	}
	gs, err := g.Float32s()
	if err != nil {
		b.Fatal(err)
	}
	def := make([]float32, len(gs))
	for i := range def {
		def[i] = float32(i%13)/13 - 0.5
	}
	type input struct {
		Name       string         `json:"name"`
		Shape      []int          `json:"shape"`
		Datatype   string         `json:"datatype"`
		Parameters map[string]any `json:"parameters"`
	}
	tensors := []struct {
		name  string
		shape []int
		data  []float32
	}{{"input", x.Shape, xs}, {"default", g.Shape, def}}
	if grad {
		tensors = append(tensors, struct {
			name  string
			shape []int
			data  []float32
		}{"grad_output", g.Shape, gs})
	}
	req := struct {
		Inputs     []input        `json:"inputs"`
		Parameters map[string]any `json:"parameters"`
	}{Parameters: map[string]any{"binary_data_output": true}}
	var bin []byte
	for _, t := range tensors {
		req.Inputs = append(req.Inputs, input{t.name, t.shape, "FP32", map[string]any{"binary_data_size": 4 * len(t.data)}})
		for _, v := range t.data {
			bin = binary.LittleEndian.AppendUint32(bin, math.Float32bits(v))
		}
	}
	hdr, _ := json.Marshal(req)
	out := 4 * len(gs)
	if grad {
		out += 4 * (len(xs) + len(gs))
	}
	return request{body: append(hdr, bin...), hdr: strconv.Itoa(len(hdr)), outBytes: out}
}

// do sends r to layer c over client and returns the answer's bytes.
func do(client *http.Client, base, c string, r request, buf *bytes.Buffer) error {
	req, err := http.NewRequest("POST", base+"/v2/models/"+c+"/infer", bytes.NewReader(r.body))
	if err != nil {
		return err
	}
	req.Header.Set("Inference-Header-Content-Length", r.hdr)
	req.Header.Set("Content-Type", "application/octet-stream")
	resp, err := client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	buf.Reset()
	if _, err := buf.ReadFrom(resp.Body); err != nil {
		return err
	}
	if resp.StatusCode != 200 {
		return fmt.Errorf("status %d: %s", resp.StatusCode, buf.Bytes())
	}
	return nil
}

// BenchmarkLayerForwardTransport: one forward (input and default) of
// each case's layer, over the Unix socket and over loopback TCP in
// alternating order within every iteration; reports each transport's
// mean time per request and tcp/unix. Both answers are checked equal.
func BenchmarkLayerForwardTransport(b *testing.B) {
	h := start(b)
	for _, c := range cases() {
		b.Run(c, func(b *testing.B) {
			r := layerRequest(b, c, false)
			var ub, tb bytes.Buffer
			for range 20 { // warm: connections, pools
				if err := do(h.unix, "http://kasmina", c, r, &ub); err != nil {
					b.Fatal(err)
				}
				if err := do(h.tcp, "http://"+h.addr, c, r, &tb); err != nil {
					b.Fatal(err)
				}
			}
			tail := func(b []byte) []byte { return b[max(0, len(b)-r.outBytes):] }
			if !slices.Equal(tail(ub.Bytes()), tail(tb.Bytes())) {
				b.Fatal("the Unix socket and TCP answer the same request differently")
			}
			var unixNs, tcpNs time.Duration
			i := 0
			for b.Loop() {
				for k := range 2 {
					onUnix := (i+k)%2 == 0
					t0 := time.Now()
					var err error
					if onUnix {
						err = do(h.unix, "http://kasmina", c, r, &ub)
						unixNs += time.Since(t0)
					} else {
						err = do(h.tcp, "http://"+h.addr, c, r, &tb)
						tcpNs += time.Since(t0)
					}
					if err != nil {
						b.Fatal(err)
					}
				}
				i++
			}
			n := float64(b.N)
			b.ReportMetric(float64(unixNs.Nanoseconds())/n, "unix-ns/req")
			b.ReportMetric(float64(tcpNs.Nanoseconds())/n, "tcp-ns/req")
			b.ReportMetric(float64(tcpNs)/float64(unixNs), "tcp/unix")
		})
	}
}

// BenchmarkLayerForwardBackward: one request with input, default and
// grad_output (forward and backward in one call) over the Unix socket.
func BenchmarkLayerForwardBackward(b *testing.B) {
	h := start(b)
	for _, c := range cases() {
		b.Run(c, func(b *testing.B) {
			r := layerRequest(b, c, true)
			var buf bytes.Buffer
			for range 20 {
				if err := do(h.unix, "http://kasmina", c, r, &buf); err != nil {
					b.Fatal(err)
				}
			}
			for b.Loop() {
				if err := do(h.unix, "http://kasmina", c, r, &buf); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
