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
	"syscall"
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
	// SIGTERM, not SIGINT: a shell running this in the background starts
	// its children with SIGINT ignored, and the echo server would never
	// end. Whatever is still running after ten seconds is killed.
	for _, p := range procs {
		_ = p.Process.Signal(syscall.SIGTERM)
		t := time.AfterFunc(10*time.Second, func() { _ = p.Process.Kill() })
		_ = p.Wait()
		t.Stop()
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
// side is one side of a comparison: a name and one request.
type side struct {
	name string
	do   func() error
}

// interleaved runs the sides of one comparison in turns of block
// requests each, starting with a different side every turn, so that all
// sides see the same stretches of machine load and none is always first
// (on a loaded machine, whichever ran first or in a quieter second would
// otherwise win). Block 1 alternates request by request. Sides that move
// megabytes take longer turns, with this process's heap collected between
// turns, so that one side's garbage and cache misses land on its own
// turn's first requests rather than on every request of the other. It
// reports each side's median and 99th percentile per-request time and its
// mean (NAME-p50-µs, NAME-p99-µs, NAME-mean-µs); b.N is the requests of
// each side, and ns/op the time of one request of every side.
func interleaved(b *testing.B, bytesPerOp int64, block int, sides ...side) {
	b.Helper()
	// Warm the connections, the servers' pools and this process's code
	// paths: the first requests of a process would otherwise pay for
	// all of them.
	for range 20 {
		for _, s := range sides {
			if err := s.do(); err != nil {
				b.Fatalf("%s: %v", s.name, err)
			}
		}
	}
	runtime.GC()
	b.SetBytes(bytesPerOp)
	b.ReportAllocs()
	lat := make([][]time.Duration, len(sides))
	b.ResetTimer()
	for turn, done := 0, 0; done < b.N; turn, done = turn+1, done+block {
		n := min(block, b.N-done)
		for k := range sides {
			i := (turn + k) % len(sides)
			if block > 1 {
				b.StopTimer()
				runtime.GC()
				b.StartTimer()
			}
			for range n {
				t0 := time.Now()
				if err := sides[i].do(); err != nil {
					b.Fatalf("%s: %v", sides[i].name, err)
				}
				lat[i] = append(lat[i], time.Since(t0))
			}
		}
	}
	b.StopTimer()
	for i, s := range sides {
		l := lat[i]
		var sum time.Duration
		for _, d := range l {
			sum += d
		}
		slices.Sort(l)
		b.ReportMetric(float64(l[len(l)/2].Nanoseconds())/1e3, s.name+"-p50-µs")
		b.ReportMetric(float64(l[len(l)*99/100].Nanoseconds())/1e3, s.name+"-p99-µs")
		b.ReportMetric(float64(sum.Nanoseconds())/float64(len(l))/1e3, s.name+"-mean-µs")
	}
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

// BenchmarkTransports is every comparison; the sides of one comparison
// run interleaved, request by request (run.sh repeats whole rounds).
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
		b.Run("HTTP/"+c.name, func(b *testing.B) {
			var sides []side
			for _, peer := range []struct{ name, url string }{
				{"host", "http://" + p.hostHTTP + "/v2/models/seed-linear-64/infer"},
				{"echo", "http://" + p.echoHTTP + "/v2/models/seed-linear-64/infer"},
			} {
				client := httpClient()
				buf := make([]byte, 0, 64<<10)
				sides = append(sides, side{peer.name, func() error {
					_, err := post(client, peer.url, c.body, c.hl, buf)
					return err
				}})
			}
			interleaved(b, int64(len(c.body)), 1, sides...)
		})
	}

	grpcReq := rawRequest("seed-linear-64", 1, 64, seed)
	b.Run("gRPC/raw-1x64", func(b *testing.B) {
		var sides []side
		for _, peer := range []struct{ name, addr string }{{"host", p.hostGRPC}, {"echo", p.echoGRPC}} {
			c := grpcConn(b, peer.addr)
			sides = append(sides, side{peer.name, func() error {
				resp, err := c.ModelInfer(ctx, grpcReq)
				if err == nil && len(resp.GetRawOutputContents()) != 1 {
					err = fmt.Errorf("answer without raw_output_contents")
				}
				return err
			}})
		}
		interleaved(b, 256, 1, sides...)
	})

	benchSharedMemory(b, p)
}

// benchSharedMemory: 256×1024 FP32 in and out of ReLU(1024) through the
// binary HTTP extension, raw gRPC and system shared memory. Every client
// does what a training process does per step, on every side alike: put
// this step's input where its transport takes it (the body's tensor
// bytes, raw_input_contents, the region) and copy the output it got (the
// answer's bytes, raw_output_contents, the region) into its own array.
// httpSharedMemorySides are the two HTTP sides of a shared memory
// comparison on batch×width FP32 against url: "binary-http" sends x in the
// body, "shm-http" puts it at the start of mem (region "in") and finds the
// output right after it (region "out"). Each copies the output into out.
func httpSharedMemorySides(url string, batch, width int, x []float32, mem, out []byte) (binary, shared side) {
	nbytes := 4 * batch * width
	xb := le(x)
	body, hl := binaryBody(batch, width, x)
	shmJSON := []byte(fmt.Sprintf(`{"inputs":[{"name":"input","shape":[%d,%d],"datatype":"FP32","parameters":{"shared_memory_region":"in","shared_memory_byte_size":%d}}],`+
		`"outputs":[{"name":"output","parameters":{"shared_memory_region":"out","shared_memory_byte_size":%d}}]}`, batch, width, nbytes, nbytes))
	binClient, shmClient := httpClient(), httpClient()
	binBuf, shmBuf := make([]byte, 0, 2*nbytes), make([]byte, 0, 4096)
	binary = side{"binary-http", func() error {
		copy(body[hl:], xb)
		resp, err := post(binClient, url, body, hl, binBuf)
		if err == nil && len(resp) < nbytes {
			err = fmt.Errorf("answer of %d bytes", len(resp))
		}
		if err == nil {
			copy(out, resp[len(resp)-nbytes:])
		}
		return err
	}}
	shared = side{"shm-http", func() error {
		copy(mem, xb)
		_, err := post(shmClient, url, shmJSON, -1, shmBuf)
		copy(out, mem[nbytes:])
		return err
	}}
	return binary, shared
}

func benchSharedMemory(b *testing.B, p peers) {
	const batch, width = 256, 1024
	const nbytes = batch * width * 4
	x := values(batch * width)
	xb := le(x)
	out := make([]byte, nbytes)
	ctx := context.Background()

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
	url := "http://" + p.hostHTTP + "/v2/models/relu-1024/infer"
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
	b.Run("shm/256x1024", func(b *testing.B) {
		binHTTP, shmHTTP := httpSharedMemorySides(url, batch, width, x, mem, out)
		rawConn, shmConn := grpcConn(b, p.hostGRPC), grpcConn(b, p.hostGRPC)
		rawReq := rawRequest("relu-1024", batch, width, x)
		interleaved(b, 2*nbytes, 25,
			binHTTP,
			side{"raw-grpc", func() error {
				copy(rawReq.RawInputContents[0], xb)
				resp, err := rawConn.ModelInfer(ctx, rawReq)
				if err == nil && len(resp.GetRawOutputContents()) != 1 {
					err = fmt.Errorf("answer without raw_output_contents")
				}
				if err == nil {
					copy(out, resp.GetRawOutputContents()[0])
				}
				return err
			}},
			shmHTTP,
			side{"shm-grpc", func() error {
				copy(mem, xb)
				_, err := shmConn.ModelInfer(ctx, shmReq)
				copy(out, mem[nbytes:])
				return err
			}})
		// The output is ReLU of the input: the last answer (of each side
		// in turn over the run) checks that the bytes really went through.
		for i := 0; i < len(x); i += 4099 {
			got := math.Float32frombits(binary.LittleEndian.Uint32(out[4*i:]))
			if want := max(x[i], 0); got != want {
				b.Fatalf("output element %d in shared memory is %v, want %v", i, got, want)
			}
		}
	})
}
