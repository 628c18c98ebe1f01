package grpcbench

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/esper/kasmina-host/contracts"
	"github.com/esper/kasmina-host/kernels"
	pb "github.com/esper/kasmina-host/runtime/oipgrpc/inferencepb"
)

// peers are the processes under test, started once per benchmark binary.
type peers struct {
	hostHTTP, hostGRPC string
	echoHTTP, echoGRPC string
}

var (
	setupOnce sync.Once
	setup     peers
	setupErr  error
	procs     []*exec.Cmd
	tmpDir    string
)

func TestMain(m *testing.M) {
	code := m.Run()
	for _, p := range procs {
		_ = p.Process.Signal(os.Interrupt)
		_ = p.Wait()
	}
	if tmpDir != "" {
		os.RemoveAll(tmpDir)
	}
	os.Exit(code)
}

func start(b *testing.B) peers {
	b.Helper()
	setupOnce.Do(func() { setup, setupErr = startPeers() })
	if setupErr != nil {
		b.Fatal(setupErr)
	}
	return setup
}

func startPeers() (peers, error) {
	var p peers
	dir, err := os.MkdirTemp("", "grpcbench-")
	if err != nil {
		return p, err
	}
	tmpDir = dir
	for _, pkg := range []string{"cmd/kasmina-host", "bench/grpc/echo"} {
		out, err := exec.Command("go", "build", "-o", filepath.Join(dir, filepath.Base(pkg)), "github.com/esper/kasmina-host/"+pkg).CombinedOutput()
		if err != nil {
			return p, fmt.Errorf("go build %s: %v\n%s", pkg, err, out)
		}
	}
	kdir := filepath.Join(dir, "kernels")
	if err := os.Mkdir(kdir, 0o755); err != nil {
		return p, err
	}
	seed, err := os.ReadFile(filepath.Join("..", "..", "kernels", "examples", "seed-linear-64.safetensors"))
	if err != nil {
		return p, err
	}
	if err := os.WriteFile(filepath.Join(kdir, "seed-linear-64.safetensors"), seed, 0o644); err != nil {
		return p, err
	}
	if err := writeReLU(filepath.Join(kdir, "relu-1024.safetensors"), 1024); err != nil {
		return p, err
	}
	p.hostHTTP, p.hostGRPC = freeAddr(), freeAddr()
	host := exec.Command(filepath.Join(dir, "kasmina-host"), "serve", "--addr", p.hostHTTP, "--grpc-addr", p.hostGRPC,
		"--kernels", kdir, "--bus-file", os.DevNull, "--log-level", "warn", "--signal-interval", "1s")
	host.Stderr = os.Stderr
	if err := host.Start(); err != nil {
		return p, err
	}
	procs = append(procs, host)
	echo := exec.Command(filepath.Join(dir, "echo"))
	stderr, err := echo.StderrPipe()
	if err != nil {
		return p, err
	}
	if err := echo.Start(); err != nil {
		return p, err
	}
	procs = append(procs, echo)
	line, err := bufio.NewReader(stderr).ReadString('\n')
	if err != nil {
		return p, fmt.Errorf("echo: %v", err)
	}
	if _, err := fmt.Sscanf(strings.TrimSpace(line), "http=%s", &p.echoHTTP); err != nil {
		return p, fmt.Errorf("echo said %q", line)
	}
	p.echoHTTP, p.echoGRPC, _ = strings.Cut(strings.TrimPrefix(strings.TrimSpace(line), "http="), " grpc=")
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		resp, err := http.Get("http://" + p.hostHTTP + "/v2/health/ready")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return p, nil
			}
		}
		if time.Now().After(deadline) {
			return p, fmt.Errorf("kasmina-host not ready at %s: %v", p.hostHTTP, err)
		}
	}
}

func freeAddr() string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// writeReLU writes an esper-kernel/v1 file computing ReLU on width
// features: no weights, so that the shared memory comparison measures
// moving a megabyte rather than computing on it.
func writeReLU(path string, width int) error {
	mod, err := kernels.ParseModule([]byte(`{"type":"sequential","layers":[{"type":"relu"}]}`))
	if err != nil {
		return err
	}
	md := contracts.NewKernelMetadata("relu-"+strconv.Itoa(width), "bp-relu", "ReLU, for the transport benchmarks")
	md.InputShape, md.OutputShape = []int{width}, []int{width}
	md.DeviceRequirements = []string{"cpu"}
	md.MemoryFootprintMB = 1
	md.CompilationTarget = "esper-kernel/v1"
	var buf bytes.Buffer
	if err := kernels.WriteKernel(&buf, mod, nil, &md); err != nil {
		return err
	}
	return os.WriteFile(path, buf.Bytes(), 0o644)
}

func values(n int) []float32 {
	r := rand.New(rand.NewPCG(1, 2))
	v := make([]float32, n)
	for i := range v {
		v[i] = r.Float32()*2 - 1
	}
	return v
}

func le(v []float32) []byte {
	b := make([]byte, 4*len(v))
	for i, x := range v {
		binary.LittleEndian.PutUint32(b[4*i:], math.Float32bits(x))
	}
	return b
}

// timed runs one request per iteration and reports the median and 99th
// percentile beside the mean.
func timed(b *testing.B, bytesPerOp int64, do func() error) {
	b.Helper()
	// Warm the connection, the server's pools and this process's code
	// paths: the first sub-benchmark of a process would otherwise pay
	// for all of them.
	for range 20 {
		if err := do(); err != nil {
			b.Fatal(err)
		}
	}
	// Every sub-benchmark starts from a collected heap: the megabyte
	// rows leave garbage that would otherwise land on whichever row runs
	// next.
	runtime.GC()
	b.SetBytes(bytesPerOp)
	b.ReportAllocs()
	var lat []time.Duration
	for b.Loop() {
		t0 := time.Now()
		if err := do(); err != nil {
			b.Fatal(err)
		}
		lat = append(lat, time.Since(t0))
	}
	slices.Sort(lat)
	b.ReportMetric(float64(lat[len(lat)/2].Nanoseconds())/1e3, "p50-µs")
	b.ReportMetric(float64(lat[len(lat)*99/100].Nanoseconds())/1e3, "p99-µs")
}

// httpClient keeps one connection alive, as one training process would.
func httpClient() *http.Client {
	return &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 1, MaxConnsPerHost: 1, DisableCompression: true}}
}

func post(c *http.Client, url string, body []byte, headerLen int, into []byte) ([]byte, error) {
	req, err := http.NewRequest("POST", url, bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	if headerLen >= 0 {
		req.Header.Set("Inference-Header-Content-Length", strconv.Itoa(headerLen))
	}
	resp, err := c.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	buf := bytes.NewBuffer(into[:0])
	if _, err := io.Copy(buf, resp.Body); err != nil {
		return nil, err
	}
	if resp.StatusCode != 200 {
		return nil, fmt.Errorf("%s: %d %s", url, resp.StatusCode, buf.Bytes())
	}
	return buf.Bytes(), nil
}

func jsonBody(model string, batch, width int, v []float32) []byte {
	var sb strings.Builder
	fmt.Fprintf(&sb, `{"inputs":[{"name":"input","shape":[%d,%d],"datatype":"FP32","data":[`, batch, width)
	for i, x := range v {
		if i > 0 {
			sb.WriteByte(',')
		}
		sb.WriteString(strconv.FormatFloat(float64(x), 'g', -1, 32))
	}
	sb.WriteString("]}]}")
	return []byte(sb.String())
}

func binaryBody(batch, width int, v []float32) ([]byte, int) {
	raw := le(v)
	hdr := fmt.Sprintf(`{"inputs":[{"name":"input","shape":[%d,%d],"datatype":"FP32","parameters":{"binary_data_size":%d}}],"parameters":{"binary_data_output":true}}`, batch, width, len(raw))
	return append([]byte(hdr), raw...), len(hdr)
}

func grpcConn(b *testing.B, addr string) pb.GRPCInferenceServiceClient {
	b.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(64<<20), grpc.MaxCallSendMsgSize(64<<20)))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { conn.Close() })
	return pb.NewGRPCInferenceServiceClient(conn)
}

func rawRequest(model string, batch, width int, v []float32) *pb.ModelInferRequest {
	return &pb.ModelInferRequest{
		ModelName:        model,
		Inputs:           []*pb.ModelInferRequest_InferInputTensor{{Name: "input", Datatype: "FP32", Shape: []int64{int64(batch), int64(width)}}},
		Outputs:          []*pb.ModelInferRequest_InferRequestedOutputTensor{{Name: "output"}},
		RawInputContents: [][]byte{le(v)},
	}
}

// BenchmarkTransports is every comparison; host and peer of one
// comparison run next to each other (run.sh repeats whole rounds).
func BenchmarkTransports(b *testing.B) {
	p := start(b)
	seed := values(64)
	ctx := context.Background()

	jsonReq := jsonBody("seed-linear-64", 1, 64, seed)
	binReq, binHL := binaryBody(1, 64, seed)
	for _, c := range []struct {
		name string
		body []byte
		hl   int
	}{{"json-1x64", jsonReq, -1}, {"binary-1x64", binReq, binHL}} {
		for _, peer := range []struct{ name, url string }{
			{"host", "http://" + p.hostHTTP + "/v2/models/seed-linear-64/infer"},
			{"echo", "http://" + p.echoHTTP + "/v2/models/seed-linear-64/infer"},
		} {
			b.Run("HTTP/"+c.name+"/"+peer.name, func(b *testing.B) {
				client := httpClient()
				buf := make([]byte, 0, 64<<10)
				timed(b, int64(len(c.body)), func() error {
					_, err := post(client, peer.url, c.body, c.hl, buf)
					return err
				})
			})
		}
	}

	grpcReq := rawRequest("seed-linear-64", 1, 64, seed)
	for _, peer := range []struct{ name, addr string }{{"host", p.hostGRPC}, {"echo", p.echoGRPC}} {
		b.Run("gRPC/raw-1x64/"+peer.name, func(b *testing.B) {
			c := grpcConn(b, peer.addr)
			timed(b, 256, func() error {
				resp, err := c.ModelInfer(ctx, grpcReq)
				if err == nil && len(resp.GetRawOutputContents()) != 1 {
					err = fmt.Errorf("answer without raw_output_contents")
				}
				return err
			})
		})
	}

	benchSharedMemory(b, p)
}

// benchSharedMemory: 256×1024 FP32 in and out of ReLU(1024) through the
// binary HTTP extension and through system shared memory. The shared
// memory client does what a training process does per step: copy the
// input into the region, send the small request, copy the output out.
func benchSharedMemory(b *testing.B, p peers) {
	const batch, width = 256, 1024
	const nbytes = batch * width * 4
	x := values(batch * width)
	xb := le(x)
	out := make([]byte, nbytes)
	ctx := context.Background()

	body, hl := binaryBody(batch, width, x)
	b.Run("shm/256x1024/binary-http", func(b *testing.B) {
		client := httpClient()
		buf := make([]byte, 0, 2*nbytes)
		url := "http://" + p.hostHTTP + "/v2/models/relu-1024/infer"
		timed(b, 2*nbytes, func() error {
			resp, err := post(client, url, body, hl, buf)
			if err == nil && len(resp) < nbytes {
				err = fmt.Errorf("answer of %d bytes", len(resp))
			}
			return err
		})
	})
	b.Run("shm/256x1024/raw-grpc", func(b *testing.B) {
		c := grpcConn(b, p.hostGRPC)
		req := rawRequest("relu-1024", batch, width, x)
		timed(b, 2*nbytes, func() error {
			resp, err := c.ModelInfer(ctx, req)
			if err == nil && len(resp.GetRawOutputContents()) != 1 {
				err = fmt.Errorf("answer without raw_output_contents")
			}
			return err
		})
	})

	// One object: the input at 0, the output after it.
	name := fmt.Sprintf("kasmina-bench-%d", os.Getpid())
	path := filepath.Join("/dev/shm", name)
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		b.Skipf("SKIPPED shared memory: %v", err)
	}
	defer os.Remove(path)
	defer f.Close()
	if err := f.Truncate(2 * nbytes); err != nil {
		b.Fatal(err)
	}
	mem, err := unix.Mmap(int(f.Fd()), 0, 2*nbytes, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		b.Fatal(err)
	}
	defer unix.Munmap(mem)
	client := httpClient()
	for _, r := range []string{"in", "out"} {
		_, _ = post(client, "http://"+p.hostHTTP+"/v2/systemsharedmemory/region/"+r+"/unregister", nil, -1, nil)
	}
	reg := func(region string, offset int) {
		body := fmt.Sprintf(`{"key":"/%s","offset":%d,"byte_size":%d}`, name, offset, nbytes)
		if _, err := post(client, "http://"+p.hostHTTP+"/v2/systemsharedmemory/region/"+region+"/register", []byte(body), -1, nil); err != nil {
			b.Fatal(err)
		}
	}
	reg("in", 0)
	reg("out", nbytes)
	defer func() {
		_, _ = post(client, "http://"+p.hostHTTP+"/v2/systemsharedmemory/unregister", nil, -1, nil)
	}()
	shmJSON := []byte(fmt.Sprintf(`{"inputs":[{"name":"input","shape":[%d,%d],"datatype":"FP32","parameters":{"shared_memory_region":"in","shared_memory_byte_size":%d}}],`+
		`"outputs":[{"name":"output","parameters":{"shared_memory_region":"out","shared_memory_byte_size":%d}}]}`, batch, width, nbytes, nbytes))
	b.Run("shm/256x1024/shm-http", func(b *testing.B) {
		c := httpClient()
		buf := make([]byte, 0, 4096)
		url := "http://" + p.hostHTTP + "/v2/models/relu-1024/infer"
		timed(b, 2*nbytes, func() error {
			copy(mem, xb)
			_, err := post(c, url, shmJSON, -1, buf)
			copy(out, mem[nbytes:])
			return err
		})
	})
	shmReq := &pb.ModelInferRequest{
		ModelName: "relu-1024",
		Inputs: []*pb.ModelInferRequest_InferInputTensor{{Name: "input", Datatype: "FP32", Shape: []int64{batch, width},
			Parameters: map[string]*pb.InferParameter{
				"shared_memory_region":    {ParameterChoice: &pb.InferParameter_StringParam{StringParam: "in"}},
				"shared_memory_byte_size": {ParameterChoice: &pb.InferParameter_Int64Param{Int64Param: nbytes}},
			}}},
		Outputs: []*pb.ModelInferRequest_InferRequestedOutputTensor{{Name: "output", Parameters: map[string]*pb.InferParameter{
			"shared_memory_region":    {ParameterChoice: &pb.InferParameter_StringParam{StringParam: "out"}},
			"shared_memory_byte_size": {ParameterChoice: &pb.InferParameter_Int64Param{Int64Param: nbytes}},
		}}},
	}
	b.Run("shm/256x1024/shm-grpc", func(b *testing.B) {
		c := grpcConn(b, p.hostGRPC)
		timed(b, 2*nbytes, func() error {
			copy(mem, xb)
			_, err := c.ModelInfer(ctx, shmReq)
			copy(out, mem[nbytes:])
			return err
		})
	})
	// The output is ReLU of the input: the last request's answer checks
	// that the bytes really went through the region.
	for i := 0; i < len(x); i += 4099 {
		got := math.Float32frombits(binary.LittleEndian.Uint32(out[4*i:]))
		if want := max(x[i], 0); got != want {
			b.Fatalf("output element %d in shared memory is %v, want %v", i, got, want)
		}
	}
}
