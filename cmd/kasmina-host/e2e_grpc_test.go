package main

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	pb "github.com/esper/kasmina-host/runtime/oipgrpc/inferencepb"
)

// grpcClient dials the daemon's gRPC listener.
func (d *daemon) grpcClient(t *testing.T) (pb.GRPCInferenceServiceClient, healthpb.HealthClient) {
	t.Helper()
	conn, err := grpc.NewClient(d.grpcAddr, grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(64<<20)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return pb.NewGRPCInferenceServiceClient(conn), healthpb.NewHealthClient(conn)
}

// grpcCtx is a bounded context carrying the daemon's token, if any.
func (d *daemon) grpcCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	if d.token != "" {
		ctx = metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+d.token)
	}
	return ctx
}

func le32(v []float32) []byte {
	b := make([]byte, 4*len(v))
	for i, x := range v {
		binary.LittleEndian.PutUint32(b[4*i:], math.Float32bits(x))
	}
	return b
}

func fromLE32(b []byte) []float32 {
	out := make([]float32, len(b)/4)
	for i := range out {
		out[i] = math.Float32frombits(binary.LittleEndian.Uint32(b[4*i:]))
	}
	return out
}

func int64s(s []int) []int64 {
	out := make([]int64, len(s))
	for i, v := range s {
		out[i] = int64(v)
	}
	return out
}

func grpcInfer(model string, shape []int, data []float32) *pb.ModelInferRequest {
	return &pb.ModelInferRequest{
		ModelName:        model,
		Inputs:           []*pb.ModelInferRequest_InferInputTensor{{Name: "input", Datatype: "FP32", Shape: int64s(shape)}},
		Outputs:          []*pb.ModelInferRequest_InferRequestedOutputTensor{{Name: "output"}},
		RawInputContents: [][]byte{le32(data)},
	}
}

func shmParam(region string, offset, size int) map[string]*pb.InferParameter {
	return map[string]*pb.InferParameter{
		"shared_memory_region":    {ParameterChoice: &pb.InferParameter_StringParam{StringParam: region}},
		"shared_memory_offset":    {ParameterChoice: &pb.InferParameter_Int64Param{Int64Param: int64(offset)}},
		"shared_memory_byte_size": {ParameterChoice: &pb.InferParameter_Int64Param{Int64Param: int64(size)}},
	}
}

// shmObject creates a POSIX shared memory object of size bytes in
// /dev/shm, as shm_open would, and removes it at the end of the test.
func shmObject(t *testing.T, size int) (key string, file *os.File) {
	t.Helper()
	if st, err := os.Stat("/dev/shm"); err != nil || !st.IsDir() {
		t.Skip("SKIPPED: no /dev/shm on this machine")
	}
	name := fmt.Sprintf("kasmina-e2e-%d-%s", os.Getpid(), strings.NewReplacer("/", "-").Replace(t.Name()))
	path := filepath.Join("/dev/shm", name)
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close(); os.Remove(path) })
	if err := f.Truncate(int64(size)); err != nil {
		t.Fatal(err)
	}
	return "/" + name, f
}

// TestGRPCServesGoldenKernels drives the real daemon over gRPC on every
// golden case, as Triton's client would (raw_input_contents in,
// raw_output_contents out) and through system shared memory (every third
// case; every seventh over HTTP's shared memory routes, on the same
// registry), matching PyTorch's float64 output within each case's
// tolerance.
func TestGRPCServesGoldenKernels(t *testing.T) {
	cases := loadGoldenCases(t)
	d := startDaemon(t, daemonConfig{token: "grpc-e2e", args: []string{"--kernels", goldenDir(), "--auth-token", "grpc-e2e"}})
	c, health := d.grpcClient(t)
	ctx := d.grpcCtx(t)

	if r, err := health.Check(ctx, &healthpb.HealthCheckRequest{}); err != nil || r.Status != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("health: %v %v", r, err)
	}
	md, err := c.ServerMetadata(ctx, &pb.ServerMetadataRequest{})
	if err != nil || md.Name != "kasmina-host" || md.Version != "e2e-test" || !strings.Contains(strings.Join(md.Extensions, ","), "system_shared_memory") {
		t.Fatalf("ServerMetadata: %v %v", md, err)
	}
	idx, err := c.RepositoryIndex(ctx, &pb.RepositoryIndexRequest{Ready: true})
	if err != nil || len(idx.Models) != len(cases) {
		t.Fatalf("RepositoryIndex: %d models, %v; want %d", len(idx.GetModels()), err, len(cases))
	}

	// One object holds every case's tensors: the input at 0, the output
	// after it.
	size := 0
	for _, gc := range cases {
		size = max(size, 4*(len(gc.Input)+len(gc.Expected)))
	}
	key, file := shmObject(t, size)
	if _, err := c.SystemSharedMemoryRegister(ctx, &pb.SystemSharedMemoryRegisterRequest{Name: "golden", Key: key, ByteSize: uint64(size)}); err != nil {
		t.Fatal(err)
	}

	passed := 0
	for i, gc := range cases {
		mm, err := c.ModelMetadata(ctx, &pb.ModelMetadataRequest{Name: gc.KernelID})
		if err != nil || len(mm.Inputs) != 1 || fmt.Sprint(mm.Inputs[0].Shape[1:]) != fmt.Sprint(int64s(gc.InShape[1:])) {
			t.Errorf("%s: metadata %v, %v; input shape %v", gc.KernelID, mm, err, gc.InShape)
			continue
		}
		var out []float32
		var shape []int64
		mode := "raw"
		switch {
		case i%7 == 3:
			mode = "HTTP shared memory"
			out, shape = d.httpSharedMemoryInfer(t, file, "golden", gc)
		case i%3 == 0:
			mode = "shared memory"
			if _, err := file.WriteAt(le32(gc.Input), 0); err != nil {
				t.Fatal(err)
			}
			outBytes := 4 * len(gc.Expected)
			req := &pb.ModelInferRequest{
				ModelName: gc.KernelID,
				Inputs:    []*pb.ModelInferRequest_InferInputTensor{{Name: "input", Datatype: "FP32", Shape: int64s(gc.InShape), Parameters: shmParam("golden", 0, 4*len(gc.Input))}},
				Outputs:   []*pb.ModelInferRequest_InferRequestedOutputTensor{{Name: "output", Parameters: shmParam("golden", 4*len(gc.Input), outBytes)}},
			}
			resp, err := c.ModelInfer(ctx, req)
			if err != nil {
				t.Errorf("%s (%s): %v", gc.KernelID, mode, err)
				continue
			}
			if len(resp.RawOutputContents) != 0 {
				t.Errorf("%s (%s): the output came in the answer too", gc.KernelID, mode)
			}
			b := make([]byte, outBytes)
			if _, err := file.ReadAt(b, int64(4*len(gc.Input))); err != nil {
				t.Fatal(err)
			}
			out, shape = fromLE32(b), resp.Outputs[0].Shape
		default:
			// Where a request ran is in the answer when it asks
			// (exec_info); a request that ran where it was placed
			// (here the CPU) and did not ask gets no parameters.
			req := grpcInfer(gc.KernelID, gc.InShape, gc.Input)
			asked := i%2 == 0
			if asked {
				req.Parameters = map[string]*pb.InferParameter{"exec_info": {ParameterChoice: &pb.InferParameter_BoolParam{BoolParam: true}}}
			}
			resp, err := c.ModelInfer(ctx, req)
			if err != nil {
				t.Errorf("%s (%s): %v", gc.KernelID, mode, err)
				continue
			}
			p := resp.Parameters
			if len(resp.RawOutputContents) != 1 || asked != (p["executed_on"].GetStringParam() == "cpu" && p["placed_on"].GetStringParam() == "cpu") ||
				(!asked && len(p) != 0) || p["fallback"].GetBoolParam() {
				t.Errorf("%s (%s, exec_info %v): %d raw_output_contents, parameters %v", gc.KernelID, mode, asked, len(resp.RawOutputContents), p)
				continue
			}
			out, shape = fromLE32(resp.RawOutputContents[0]), resp.Outputs[0].Shape
		}
		if fmt.Sprint(shape) != fmt.Sprint(int64s(gc.OutShape)) {
			t.Errorf("%s (%s): output shape %v, want %v", gc.KernelID, mode, shape, gc.OutShape)
			continue
		}
		rel, err := relL2(out, gc.Expected)
		if err != nil || rel > gc.Tolerance {
			t.Errorf("%s (%s): relative L2 error %.3g (tolerance %.3g) %v", gc.KernelID, mode, rel, gc.Tolerance, err)
			continue
		}
		passed++
	}
	t.Logf("gRPC e2e: %d of %d golden cases within tolerance", passed, len(cases))
	if passed != len(cases) {
		t.Errorf("gRPC e2e: %d of %d golden cases passed", passed, len(cases))
	}

	// The requests are counted per method and code (grpc-go reports an
	// RPC's end after its status is sent: the count may lag a moment).
	want := 0
	for i := range cases {
		if i%7 != 3 {
			want++
		}
	}
	var v float64
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		v, _ = metricValue(parseMetrics(t, d.scrape()), "kasmina_grpc_requests_total",
			map[string]string{"method": "/inference.GRPCInferenceService/ModelInfer", "code": "OK"})
		if int(v) == want || time.Now().After(deadline) {
			break
		}
	}
	if int(v) != want {
		t.Errorf("kasmina_grpc_requests_total{ModelInfer,OK} = %v, want %d", v, want)
	}
	d.stop()
}

// httpSharedMemoryInfer runs one case over HTTP with its tensors in the
// region the gRPC side registered.
func (d *daemon) httpSharedMemoryInfer(t *testing.T, file *os.File, region string, gc goldenCase) ([]float32, []int64) {
	t.Helper()
	if _, err := file.WriteAt(le32(gc.Input), 0); err != nil {
		t.Fatal(err)
	}
	outBytes := 4 * len(gc.Expected)
	body := fmt.Sprintf(`{"inputs":[{"name":"input","shape":%s,"datatype":"FP32","parameters":{"shared_memory_region":%q,"shared_memory_byte_size":%d}}],`+
		`"outputs":[{"name":"output","parameters":{"shared_memory_region":%q,"shared_memory_offset":%d,"shared_memory_byte_size":%d}}]}`,
		strings.ReplaceAll(fmt.Sprint(gc.InShape), " ", ","), region, 4*len(gc.Input), region, 4*len(gc.Input), outBytes)
	var resp struct {
		Outputs []struct {
			Shape []int64         `json:"shape"`
			Data  json.RawMessage `json:"data"`
		} `json:"outputs"`
	}
	d.json("POST", "/v2/models/"+gc.KernelID+"/infer", []byte(body), 200, &resp)
	if len(resp.Outputs) != 1 || resp.Outputs[0].Data != nil {
		t.Fatalf("HTTP answer with the output in shared memory: %+v", resp)
	}
	b := make([]byte, outBytes)
	if _, err := file.ReadAt(b, int64(4*len(gc.Input))); err != nil {
		t.Fatal(err)
	}
	return fromLE32(b), resp.Outputs[0].Shape
}

// TestGRPCErrorsAuthAndLimits: the real daemon's refusals over gRPC carry
// the code of their class, the token guards what it guards on HTTP, and
// the HTTP body cap bounds a gRPC message.
func TestGRPCErrorsAuthAndLimits(t *testing.T) {
	cases := loadGoldenCases(t)
	gc := cases[0]
	d := startDaemon(t, daemonConfig{token: "grpc-e2e", args: []string{"--kernels", goldenDir(), "--auth-token", "grpc-e2e", "--max-body-bytes", "65536"}})
	c, health := d.grpcClient(t)
	ctx := d.grpcCtx(t)
	anon, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	check := func(name string, err error, code codes.Code, contains string) {
		t.Helper()
		if status.Code(err) != code || !strings.Contains(status.Convert(err).Message(), contains) {
			t.Errorf("%s: %v, want %v containing %q", name, err, code, contains)
		}
	}
	_, err := c.ModelInfer(anon, grpcInfer(gc.KernelID, gc.InShape, gc.Input))
	check("no token", err, codes.Unauthenticated, "Bearer")
	_, err = c.RepositoryModelUnload(anon, &pb.RepositoryModelUnloadRequest{ModelName: gc.KernelID})
	check("unload without the token", err, codes.Unauthenticated, "Bearer")
	if _, err := c.ServerReady(anon, &pb.ServerReadyRequest{}); err != nil {
		t.Errorf("ServerReady is open: %v", err)
	}
	if r, err := health.Check(anon, &healthpb.HealthCheckRequest{}); err != nil || r.Status != healthpb.HealthCheckResponse_SERVING {
		t.Errorf("health is open: %v %v", r, err)
	}
	if _, err := c.ModelMetadata(anon, &pb.ModelMetadataRequest{Name: gc.KernelID}); err != nil {
		t.Errorf("metadata is a read: %v", err)
	}

	_, err = c.ModelInfer(ctx, grpcInfer("no-such-kernel", gc.InShape, gc.Input))
	check("unknown model", err, codes.NotFound, `"no-such-kernel"`)
	wrong := append([]int{gc.InShape[0]}, gc.InShape[1:]...)
	wrong[len(wrong)-1]++
	_, err = c.ModelInfer(ctx, grpcInfer(gc.KernelID, wrong, make([]float32, len(gc.Input)/gc.InShape[len(gc.InShape)-1]*wrong[len(wrong)-1])))
	check("wrong shape", err, codes.InvalidArgument, "does not match model")
	req := grpcInfer(gc.KernelID, gc.InShape, gc.Input)
	req.Inputs[0].Datatype = "INT32"
	check("unsupported datatype", func() error { _, err := c.ModelInfer(ctx, req); return err }(), codes.Unimplemented, "INT32 is not supported")
	mm, err := c.ModelMetadata(ctx, &pb.ModelMetadataRequest{Name: gc.KernelID})
	if err != nil {
		t.Fatal(err)
	}
	maxBatch, err := strconv.Atoi(mm.Properties["max_batch"])
	if err != nil || maxBatch < 1 {
		t.Fatalf("max_batch property %q", mm.Properties["max_batch"])
	}
	big := append([]int{maxBatch + 1}, gc.InShape[1:]...)
	// The values would be megabytes; the shape is refused before they
	// are looked for, so a region name stands in for them.
	req = grpcInfer(gc.KernelID, big, nil)
	req.RawInputContents = nil
	req.Inputs[0].Parameters = shmParam("none", 0, 4)
	check("batch over max_batch", func() error { _, err := c.ModelInfer(ctx, req); return err }(), codes.ResourceExhausted, "max_batch")
	_, err = c.ModelInfer(ctx, grpcInfer(gc.KernelID, []int{1, 20000}, make([]float32, 20000)))
	check("message over --max-body-bytes", err, codes.ResourceExhausted, "larger than max")

	// Shared memory misuse on the real host.
	_, err = c.SystemSharedMemoryRegister(ctx, &pb.SystemSharedMemoryRegisterRequest{Name: "x", Key: "/kasmina-e2e-does-not-exist", ByteSize: 4})
	check("register a missing object", err, codes.NotFound, "no shared memory object")
	_, err = c.SystemSharedMemoryRegister(ctx, &pb.SystemSharedMemoryRegisterRequest{Name: "x", Key: "/../etc/passwd", ByteSize: 4})
	check("register outside /dev/shm", err, codes.InvalidArgument, "no '/'")

	// grpc-go reports an RPC's end after its status is sent: the counts
	// may lag the answers by a moment.
	want := map[string]float64{"Unauthenticated": 1, "NotFound": 1, "InvalidArgument": 1, "Unimplemented": 1, "ResourceExhausted": 2}
	var got map[string]float64
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		mfs := parseMetrics(t, d.scrape())
		got = map[string]float64{}
		for code := range want {
			got[code], _ = metricValue(mfs, "kasmina_grpc_requests_total", map[string]string{"method": "/inference.GRPCInferenceService/ModelInfer", "code": code})
		}
		if fmt.Sprint(got) == fmt.Sprint(want) || time.Now().After(deadline) {
			break
		}
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("kasmina_grpc_requests_total{ModelInfer} by code = %v, want %v", got, want)
	}
	d.stop()
}

// TestGRPCSharedMemoryChurn: clients infer through shared memory while
// another truncates, regrows, unregisters and registers the region under
// them. Every answer is a result or a 4xx-class code (INVALID_ARGUMENT,
// NOT_FOUND), never INTERNAL, and the daemon neither crashes (SIGBUS) nor
// leaks the mapping.
func TestGRPCSharedMemoryChurn(t *testing.T) {
	gc := loadGoldenCases(t)[0]
	d := startDaemon(t, daemonConfig{args: []string{"--kernels", goldenDir()}})
	c, health := d.grpcClient(t)
	ctx := d.grpcCtx(t)
	inBytes, outBytes := 4*len(gc.Input), 4*len(gc.Expected)
	size := inBytes + outBytes
	key, file := shmObject(t, size)
	if _, err := file.WriteAt(le32(gc.Input), 0); err != nil {
		t.Fatal(err)
	}
	register := func() error {
		_, err := c.SystemSharedMemoryRegister(ctx, &pb.SystemSharedMemoryRegisterRequest{Name: "churn", Key: key, ByteSize: uint64(size)})
		return err
	}
	if err := register(); err != nil {
		t.Fatal(err)
	}
	req := &pb.ModelInferRequest{
		ModelName: gc.KernelID,
		Inputs:    []*pb.ModelInferRequest_InferInputTensor{{Name: "input", Datatype: "FP32", Shape: int64s(gc.InShape), Parameters: shmParam("churn", 0, inBytes)}},
		Outputs:   []*pb.ModelInferRequest_InferRequestedOutputTensor{{Name: "output", Parameters: shmParam("churn", inBytes, outBytes)}},
	}
	var ok, refused atomic.Int64
	var wg sync.WaitGroup
	stop := make(chan struct{})
	for range 3 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				_, err := c.ModelInfer(ctx, req)
				switch status.Code(err) {
				case codes.OK:
					ok.Add(1)
				case codes.InvalidArgument, codes.NotFound:
					refused.Add(1)
				default:
					t.Errorf("under churn: %v", err)
					return
				}
			}
		}()
	}
	for i := range 200 {
		switch i % 4 {
		case 0:
			_ = file.Truncate(int64(inBytes / 2))
		case 1:
			_ = file.Truncate(int64(size))
			_, _ = file.WriteAt(le32(gc.Input), 0)
		case 2:
			_, _ = c.SystemSharedMemoryUnregister(ctx, &pb.SystemSharedMemoryUnregisterRequest{Name: "churn"})
		case 3:
			if err := register(); err != nil && status.Code(err) != codes.FailedPrecondition {
				t.Errorf("register under churn: %v", err)
			}
		}
		time.Sleep(time.Millisecond)
	}
	close(stop)
	wg.Wait()
	t.Logf("under churn: %d results, %d refusals", ok.Load(), refused.Load())
	if ok.Load()+refused.Load() == 0 {
		t.Fatal("no request ran")
	}
	// Still serving, and a clean registration works again.
	_ = file.Truncate(int64(size))
	_, _ = file.WriteAt(le32(gc.Input), 0)
	_, _ = c.SystemSharedMemoryUnregister(ctx, &pb.SystemSharedMemoryUnregisterRequest{})
	if err := register(); err != nil {
		t.Fatal(err)
	}
	if _, err := c.ModelInfer(ctx, req); err != nil {
		t.Fatalf("after the churn: %v", err)
	}
	b := make([]byte, outBytes)
	if _, err := file.ReadAt(b, int64(inBytes)); err != nil {
		t.Fatal(err)
	}
	if rel, err := relL2(fromLE32(b), gc.Expected); err != nil || rel > gc.Tolerance {
		t.Fatalf("after the churn: relative L2 error %.3g, %v", rel, err)
	}
	if r, err := health.Check(ctx, &healthpb.HealthCheckRequest{}); err != nil || r.Status != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("health after the churn: %v %v", r, err)
	}
	d.stop()
}

// TestGRPCGracefulStop: SIGTERM drains the gRPC listener with HTTP's: an
// open health Watch sees NOT_SERVING and ends, and the process exits 0
// within the exit timeout.
func TestGRPCGracefulStop(t *testing.T) {
	d := startDaemon(t, daemonConfig{})
	_, health := d.grpcClient(t)
	ctx := d.grpcCtx(t)
	watch, err := health.Watch(ctx, &healthpb.HealthCheckRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if r, err := watch.Recv(); err != nil || r.Status != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("first Watch answer: %v %v", r, err)
	}
	if err := d.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	var last healthpb.HealthCheckResponse_ServingStatus
	for {
		r, err := watch.Recv()
		if err != nil {
			if last != healthpb.HealthCheckResponse_NOT_SERVING || errors.Is(err, context.DeadlineExceeded) {
				t.Fatalf("Watch ended with %v after %v", err, last)
			}
			break
		}
		last = r.Status
	}
	select {
	case <-d.done:
	case <-time.After(30 * time.Second):
		t.Fatal("the daemon did not exit within 30 s of SIGTERM")
	}
	if code := d.cmd.ProcessState.ExitCode(); code != 0 || strings.Contains(d.stderr.String(), "gRPC drain incomplete") {
		t.Fatalf("exit %d:\n%s", code, tail(d.stderr.String(), 2000))
	}
}

// TestGRPCAddrEmptyDisables: --grpc-addr "" serves HTTP only. startDaemon
// passes a --grpc-addr of its own first; the empty one after it wins, and
// that port stays closed.
func TestGRPCAddrEmptyDisables(t *testing.T) {
	d := startDaemon(t, daemonConfig{args: []string{"--grpc-addr", ""}})
	if strings.Contains(d.stderr.String(), "listening for gRPC") {
		t.Fatalf("gRPC listened with --grpc-addr \"\":\n%s", d.stderr.String())
	}
	if conn, err := net.DialTimeout("tcp", d.grpcAddr, 5*time.Second); err == nil {
		conn.Close()
		t.Fatalf("%s accepts connections with --grpc-addr \"\"", d.grpcAddr)
	}
	d.stop()
}
