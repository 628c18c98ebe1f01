package oipgrpc_test

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"net"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/esper/kasmina-host/runtime/failure"
	"github.com/esper/kasmina-host/runtime/oip"
	"github.com/esper/kasmina-host/runtime/oip/oiptest"
	"github.com/esper/kasmina-host/runtime/oipgrpc"
	pb "github.com/esper/kasmina-host/runtime/oipgrpc/inferencepb"
	"github.com/esper/kasmina-host/runtime/shm"
)

// wait bounds every wait in these tests; a loaded machine is slow, never
// this slow.
const wait = 20 * time.Second

// fixture is a server on a real loopback listener with a fake backend:
// "double" (×2, input [-1 4], max batch 8), "sum" (row sums, shape left
// to the backend) and "loading" (known, not ready).
type fixture struct {
	backend *oiptest.Backend
	server  *oipgrpc.Server
	addr    string
	conn    *grpc.ClientConn
	client  pb.GRPCInferenceServiceClient
	health  healthpb.HealthClient
	reg     *prometheus.Registry
	served  chan error
}

func newFixture(t *testing.T, opts oipgrpc.Options) *fixture {
	t.Helper()
	b := oiptest.New()
	b.Add(oip.ModelInfo{Name: "double", InputShape: []int{4}, OutputShape: []int{4}, MaxBatch: 8, Placement: "cuda:0", Executor: "cpu-f32"}, oiptest.Scale(2))
	b.Add(oip.ModelInfo{Name: "sum"}, oiptest.RowSum())
	b.Add(oip.ModelInfo{Name: "loading", State: oip.StateLoading, Reason: "fetching"}, oiptest.Scale(1))
	f := &fixture{backend: b, reg: prometheus.NewRegistry(), served: make(chan error, 1)}
	if opts.Metrics == nil {
		m, err := oipgrpc.NewMetrics(f.reg)
		if err != nil {
			t.Fatal(err)
		}
		opts.Metrics = m
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f.addr = ln.Addr().String()
	f.server = oipgrpc.New(b, opts, nil)
	go func() { f.served <- f.server.Serve(ln) }()
	f.conn = f.dial(t)
	f.client = pb.NewGRPCInferenceServiceClient(f.conn)
	f.health = healthpb.NewHealthClient(f.conn)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), wait)
		defer cancel()
		if err := f.server.Shutdown(ctx); err != nil {
			t.Errorf("Shutdown: %v", err)
		}
		if err := <-f.served; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return f
}

func (f *fixture) dial(t *testing.T, opts ...grpc.DialOption) *grpc.ClientConn {
	t.Helper()
	conn, err := grpc.NewClient(f.addr, append([]grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	t.Cleanup(cancel)
	return ctx
}

func withToken(ctx context.Context, tok string) context.Context {
	return metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+tok)
}

func f32(v ...float32) []byte {
	b := make([]byte, 4*len(v))
	for i, x := range v {
		binary.LittleEndian.PutUint32(b[4*i:], math.Float32bits(x))
	}
	return b
}

func floats(b []byte) []float32 {
	out := make([]float32, len(b)/4)
	for i := range out {
		out[i] = math.Float32frombits(binary.LittleEndian.Uint32(b[4*i:]))
	}
	return out
}

// rawInfer is what Triton's client sends by default: the values in
// raw_input_contents.
func rawInfer(model, datatype string, shape []int64, raw []byte) *pb.ModelInferRequest {
	return &pb.ModelInferRequest{
		ModelName: model, Id: "r1",
		Inputs:           []*pb.ModelInferRequest_InferInputTensor{{Name: "input", Datatype: datatype, Shape: shape}},
		Outputs:          []*pb.ModelInferRequest_InferRequestedOutputTensor{{Name: "output"}},
		RawInputContents: [][]byte{raw},
	}
}

// paramValue is a parameter's value whatever its type, as %v prints it.
func paramValue(p *pb.InferParameter) string {
	switch v := p.GetParameterChoice().(type) {
	case *pb.InferParameter_BoolParam:
		return fmt.Sprint(v.BoolParam)
	case *pb.InferParameter_Int64Param:
		return fmt.Sprint(v.Int64Param)
	case *pb.InferParameter_StringParam:
		return v.StringParam
	case *pb.InferParameter_DoubleParam:
		return fmt.Sprint(v.DoubleParam)
	case *pb.InferParameter_Uint64Param:
		return fmt.Sprint(v.Uint64Param)
	}
	return fmt.Sprintf("%T", p.GetParameterChoice())
}

func wantCode(t *testing.T, err error, c codes.Code, contains string) {
	t.Helper()
	if status.Code(err) != c || !strings.Contains(status.Convert(err).Message(), contains) {
		t.Fatalf("got %v, want %v containing %q", err, c, contains)
	}
}

func TestEveryRPC(t *testing.T) {
	reg := shm.New(shm.Options{Dir: t.TempDir()})
	defer reg.Close()
	f := newFixture(t, oipgrpc.Options{ServerName: "kasmina-test", Version: "9.9", SharedMemory: reg})
	ctx := ctxT(t)
	c := f.client

	live, err := c.ServerLive(ctx, &pb.ServerLiveRequest{})
	if err != nil || !live.Live {
		t.Fatalf("ServerLive: %v %v", live, err)
	}
	ready, err := c.ServerReady(ctx, &pb.ServerReadyRequest{})
	if err != nil || !ready.Ready {
		t.Fatalf("ServerReady: %v %v", ready, err)
	}
	f.backend.SetReady(false, "a kernel has nowhere to run")
	if ready, err = c.ServerReady(ctx, &pb.ServerReadyRequest{}); err != nil || ready.Ready {
		t.Fatalf("ServerReady while not ready: %v %v", ready, err)
	}
	f.backend.SetReady(true, "")

	md, err := c.ServerMetadata(ctx, &pb.ServerMetadataRequest{})
	if err != nil || md.Name != "kasmina-test" || md.Version != "9.9" || strings.Join(md.Extensions, ",") != "model_repository,system_shared_memory" {
		t.Fatalf("ServerMetadata: %v %v", md, err)
	}

	for _, c2 := range []struct {
		name, version string
		ready         bool
		code          codes.Code
	}{
		{"double", "", true, codes.OK},
		{"double", "1", true, codes.OK},
		{"loading", "", false, codes.OK},
		{"double", "2", false, codes.NotFound},
		{"nope", "", false, codes.NotFound},
	} {
		r, err := c.ModelReady(ctx, &pb.ModelReadyRequest{Name: c2.name, Version: c2.version})
		if status.Code(err) != c2.code || (err == nil && r.Ready != c2.ready) {
			t.Errorf("ModelReady(%s, %q) = %v, %v", c2.name, c2.version, r, err)
		}
	}

	mm, err := c.ModelMetadata(ctx, &pb.ModelMetadataRequest{Name: "double"})
	if err != nil {
		t.Fatal(err)
	}
	if mm.Name != "double" || mm.Platform != "kasmina" || len(mm.Versions) != 1 || mm.Versions[0] != "1" ||
		len(mm.Inputs) != 1 || mm.Inputs[0].Name != "input" || mm.Inputs[0].Datatype != "FP32" || !equal(mm.Inputs[0].Shape, -1, 4) ||
		len(mm.Outputs) != 1 || mm.Outputs[0].Name != "output" || !equal(mm.Outputs[0].Shape, -1, 4) ||
		mm.Properties["state"] != "READY" || mm.Properties["placement"] != "cuda:0" || mm.Properties["max_batch"] != "8" {
		t.Fatalf("ModelMetadata(double) = %v", mm)
	}
	if mm, err := c.ModelMetadata(ctx, &pb.ModelMetadataRequest{Name: "sum"}); err != nil || !equal(mm.Inputs[0].Shape, -1, -1) {
		t.Fatalf("ModelMetadata(sum) = %v, %v", mm, err)
	}
	_, err = c.ModelMetadata(ctx, &pb.ModelMetadataRequest{Name: "nope"})
	wantCode(t, err, codes.NotFound, `no model named "nope"`)

	// Inference, values in raw_input_contents, the answer in raw_output_contents.
	f.backend.SetExec("double", oip.ExecInfo{PlacedOn: "cuda:0", ExecutedOn: "cpu", Executor: "cpu-f32", Fallback: true, Reason: "no GPU backend", ComputeTime: 1500})
	resp, err := c.ModelInfer(ctx, rawInfer("double", "FP32", []int64{2, 4}, f32(1, 2, 3, 4, -1, 0.5, 0, 8)))
	if err != nil {
		t.Fatal(err)
	}
	if resp.ModelName != "double" || resp.ModelVersion != "1" || resp.Id != "r1" || len(resp.Outputs) != 1 ||
		resp.Outputs[0].Name != "output" || resp.Outputs[0].Datatype != "FP32" || !equal(resp.Outputs[0].Shape, 2, 4) ||
		len(resp.RawOutputContents) != 1 || !equalF(floats(resp.RawOutputContents[0]), 2, 4, 6, 8, -2, 1, 0, 16) {
		t.Fatalf("ModelInfer = %v", resp)
	}
	p := resp.Parameters
	if p["placed_on"].GetStringParam() != "cuda:0" || p["executed_on"].GetStringParam() != "cpu" || p["executor"].GetStringParam() != "cpu-f32" ||
		!p["fallback"].GetBoolParam() || p["fallback_reason"].GetStringParam() != "no GPU backend" || p["compute_ns"].GetInt64Param() != 1500 {
		t.Fatalf("ModelInfer parameters = %v", p)
	}
	// Where a request ran: a fallback is always reported (above); a
	// request that ran where it was placed only when it asks.
	f.backend.SetExec("double", oip.ExecInfo{PlacedOn: "cpu", ExecutedOn: "cpu", Executor: "cpu-f32", ComputeTime: 700})
	for _, c2 := range []struct {
		name   string
		params map[string]*pb.InferParameter
		want   map[string]string // parameter: its value, as %v of the choice
		code   codes.Code
		errMsg string
	}{
		{name: "not asked"},
		{name: "declined", params: map[string]*pb.InferParameter{"exec_info": {ParameterChoice: &pb.InferParameter_BoolParam{BoolParam: false}}}},
		{name: "asked", params: map[string]*pb.InferParameter{"exec_info": {ParameterChoice: &pb.InferParameter_BoolParam{BoolParam: true}}},
			want: map[string]string{"placed_on": "cpu", "executed_on": "cpu", "executor": "cpu-f32", "fallback": "false", "compute_ns": "700"}},
		{name: "not a bool", params: map[string]*pb.InferParameter{"exec_info": {ParameterChoice: &pb.InferParameter_StringParam{StringParam: "yes"}}},
			code: codes.InvalidArgument, errMsg: "parameters.exec_info must be a bool_param"},
	} {
		req := rawInfer("double", "FP32", []int64{1, 4}, f32(1, 2, 3, 4))
		req.Parameters = c2.params
		resp, err := c.ModelInfer(ctx, req)
		if c2.code != codes.OK {
			wantCode(t, err, c2.code, c2.errMsg)
			continue
		}
		if err != nil {
			t.Fatalf("%s: %v", c2.name, err)
		}
		got := map[string]string{}
		for k, v := range resp.Parameters {
			got[k] = paramValue(v)
		}
		if fmt.Sprint(got) != fmt.Sprint(c2.want) {
			t.Errorf("exec_info %s: answer parameters %v, want %v", c2.name, got, c2.want)
		}
	}
	f.backend.SetExec("double", oip.ExecInfo{})

	// The other carriers: typed contents, converted datatypes, the
	// version named.
	for _, req := range []*pb.ModelInferRequest{
		{ModelName: "double", ModelVersion: "1", Inputs: []*pb.ModelInferRequest_InferInputTensor{{Name: "input", Datatype: "FP32", Shape: []int64{1, 4},
			Contents: &pb.InferTensorContents{Fp32Contents: []float32{1, 2, 3, 4}}}}},
		{ModelName: "double", Inputs: []*pb.ModelInferRequest_InferInputTensor{{Name: "input", Datatype: "FP64", Shape: []int64{1, 4},
			Contents: &pb.InferTensorContents{Fp64Contents: []float64{1, 2, 3, 4}}}}},
		rawInfer("double", "FP16", []int64{1, 4}, []byte{0x00, 0x3c, 0x00, 0x40, 0x00, 0x42, 0x00, 0x44}),
		rawInfer("double", "BF16", []int64{1, 4}, []byte{0x80, 0x3f, 0x00, 0x40, 0x40, 0x40, 0x80, 0x40}),
	} {
		resp, err := c.ModelInfer(ctx, req)
		if err != nil {
			t.Fatalf("%v: %v", req.Inputs[0].Datatype, err)
		}
		if !equalF(floats(resp.RawOutputContents[0]), 2, 4, 6, 8) {
			t.Fatalf("%v: output %v", req.Inputs[0].Datatype, floats(resp.RawOutputContents[0]))
		}
	}
	// No requested outputs: the output comes all the same.
	req := rawInfer("sum", "FP32", []int64{1, 2, 3}, f32(1, 2, 3, 4, 5, 6))
	req.Outputs = nil
	if resp, err := c.ModelInfer(ctx, req); err != nil || !equalF(floats(resp.RawOutputContents[0]), 21) || !equal(resp.Outputs[0].Shape, 1, 1) {
		t.Fatalf("sum: %v %v", resp, err)
	}

	// The model repository.
	idx, err := c.RepositoryIndex(ctx, &pb.RepositoryIndexRequest{})
	if err != nil || len(idx.Models) != 3 || idx.Models[2].Name != "loading" || idx.Models[2].State != "LOADING" || idx.Models[2].Reason != "fetching" || idx.Models[2].Version != "1" {
		t.Fatalf("RepositoryIndex = %v, %v", idx, err)
	}
	if idx, err := c.RepositoryIndex(ctx, &pb.RepositoryIndexRequest{Ready: true}); err != nil || len(idx.Models) != 2 {
		t.Fatalf("RepositoryIndex(ready) = %v, %v", idx, err)
	}
	if _, err := c.RepositoryModelUnload(ctx, &pb.RepositoryModelUnloadRequest{ModelName: "double",
		Parameters: map[string]*pb.ModelRepositoryParameter{"unload_dependents": {ParameterChoice: &pb.ModelRepositoryParameter_BoolParam{BoolParam: true}}}}); err != nil {
		t.Fatal(err)
	}
	if r, err := c.ModelReady(ctx, &pb.ModelReadyRequest{Name: "double"}); err != nil || r.Ready {
		t.Fatalf("after unload: %v %v", r, err)
	}
	if _, err := c.RepositoryModelLoad(ctx, &pb.RepositoryModelLoadRequest{ModelName: "double"}); err != nil {
		t.Fatal(err)
	}
	if r, err := c.ModelReady(ctx, &pb.ModelReadyRequest{Name: "double"}); err != nil || !r.Ready {
		t.Fatalf("after load: %v %v", r, err)
	}
	_, err = c.RepositoryModelLoad(ctx, &pb.RepositoryModelLoadRequest{ModelName: "nope"})
	wantCode(t, err, codes.NotFound, `loading model "nope"`)
	_, err = c.RepositoryModelLoad(ctx, &pb.RepositoryModelLoadRequest{ModelName: "double",
		Parameters: map[string]*pb.ModelRepositoryParameter{"file:1/model.pt": {ParameterChoice: &pb.ModelRepositoryParameter_BytesParam{BytesParam: []byte("x")}}}})
	wantCode(t, err, codes.Unimplemented, `parameters["file:1/model.pt"]`)
	_, err = c.RepositoryModelUnload(ctx, &pb.RepositoryModelUnloadRequest{ModelName: "nope"})
	wantCode(t, err, codes.NotFound, `unloading model "nope"`)

	// A method of Triton's service the host does not serve.
	err = f.conn.Invoke(ctx, "/inference.GRPCInferenceService/ModelConfig", &pb.ModelReadyRequest{Name: "double"}, &pb.ModelReadyResponse{})
	wantCode(t, err, codes.Unimplemented, "ModelConfig is not served")
}

func equal(got []int64, want ...int64) bool {
	if len(got) != len(want) {
		return false
	}
	for i := range got {
		if got[i] != want[i] {
			return false
		}
	}
	return true
}

func equalF(got []float32, want ...float32) bool {
	if len(got) != len(want) {
		return false
	}
	for i := range got {
		if got[i] != want[i] {
			return false
		}
	}
	return true
}

// TestRequestErrors: every refusal names what is wrong and has the code
// of its class.
func TestRequestErrors(t *testing.T) {
	reg := shm.New(shm.Options{Dir: t.TempDir()})
	defer reg.Close()
	f := newFixture(t, oipgrpc.Options{MaxElements: 64, SharedMemory: reg})
	ctx := ctxT(t)
	in := func(mut func(r *pb.ModelInferRequest)) *pb.ModelInferRequest {
		r := rawInfer("double", "FP32", []int64{1, 4}, f32(1, 2, 3, 4))
		mut(r)
		return r
	}
	str := func(s string) *pb.InferParameter {
		return &pb.InferParameter{ParameterChoice: &pb.InferParameter_StringParam{StringParam: s}}
	}
	i64 := func(v int64) *pb.InferParameter {
		return &pb.InferParameter{ParameterChoice: &pb.InferParameter_Int64Param{Int64Param: v}}
	}
	cases := []struct {
		name     string
		req      *pb.ModelInferRequest
		code     codes.Code
		contains string
	}{
		{"unknown model", in(func(r *pb.ModelInferRequest) { r.ModelName = "nope" }), codes.NotFound, `no model named "nope"`},
		{"unknown version", in(func(r *pb.ModelInferRequest) { r.ModelVersion = "3" }), codes.NotFound, `no version "3"`},
		{"no input", in(func(r *pb.ModelInferRequest) { r.Inputs = nil }), codes.InvalidArgument, "expected exactly one input"},
		{"input name", in(func(r *pb.ModelInferRequest) { r.Inputs[0].Name = "x" }), codes.InvalidArgument, `inputs[0].name: unknown input "x"`},
		{"unknown datatype", in(func(r *pb.ModelInferRequest) { r.Inputs[0].Datatype = "FLOAT" }), codes.InvalidArgument, `inputs[0].datatype: unknown datatype "FLOAT"`},
		{"unsupported datatype", in(func(r *pb.ModelInferRequest) { r.Inputs[0].Datatype = "INT8" }), codes.Unimplemented, "INT8 is not supported"},
		{"negative dimension", in(func(r *pb.ModelInferRequest) { r.Inputs[0].Shape = []int64{-1, 4} }), codes.InvalidArgument, "inputs[0].shape[0]: negative dimension"},
		{"too many elements", in(func(r *pb.ModelInferRequest) { r.Inputs[0].Shape = []int64{1 << 40, 4} }), codes.InvalidArgument, "more than the limit of 64 elements"},
		{"wrong shape", in(func(r *pb.ModelInferRequest) { r.Inputs[0].Shape = []int64{4} }), codes.InvalidArgument, "does not match model"},
		{"batch over max_batch", in(func(r *pb.ModelInferRequest) {
			r.Inputs[0].Shape = []int64{9, 4}
			r.RawInputContents[0] = make([]byte, 9*16)
		}), codes.ResourceExhausted, "max_batch of 8"},
		{"raw bytes short", in(func(r *pb.ModelInferRequest) { r.RawInputContents[0] = r.RawInputContents[0][:15] }), codes.InvalidArgument, "raw_input_contents[0] is 15 bytes but shape [1 4] of FP32 needs 16"},
		{"two raw entries", in(func(r *pb.ModelInferRequest) { r.RawInputContents = append(r.RawInputContents, nil) }), codes.InvalidArgument, "2 entries for one input"},
		{"raw and contents", in(func(r *pb.ModelInferRequest) {
			r.Inputs[0].Contents = &pb.InferTensorContents{Fp32Contents: []float32{1}}
		}), codes.InvalidArgument, "give its values once"},
		{"no values", in(func(r *pb.ModelInferRequest) { r.RawInputContents = nil }), codes.InvalidArgument, "no values"},
		{"contents count", in(func(r *pb.ModelInferRequest) {
			r.RawInputContents = nil
			r.Inputs[0].Contents = &pb.InferTensorContents{Fp32Contents: []float32{1, 2}}
		}), codes.InvalidArgument, "fp32_contents holds 2 values but its shape declares 4"},
		{"contents of another type", in(func(r *pb.ModelInferRequest) {
			r.RawInputContents = nil
			r.Inputs[0].Contents = &pb.InferTensorContents{Fp32Contents: []float32{1, 2, 3, 4}, IntContents: []int32{1}}
		}), codes.InvalidArgument, "a field other than the one of datatype FP32"},
		{"FP16 contents", in(func(r *pb.ModelInferRequest) {
			r.RawInputContents = nil
			r.Inputs[0].Datatype = "FP16"
			r.Inputs[0].Contents = &pb.InferTensorContents{Fp32Contents: []float32{1, 2, 3, 4}}
		}), codes.InvalidArgument, "FP16 has no contents field"},
		{"FP64 out of range", in(func(r *pb.ModelInferRequest) {
			r.RawInputContents = nil
			r.Inputs[0].Datatype = "FP64"
			r.Inputs[0].Contents = &pb.InferTensorContents{Fp64Contents: []float64{1, 2, 1e300, 4}}
		}), codes.InvalidArgument, "element 2: 1e+300 is out of range"},
		{"output name", in(func(r *pb.ModelInferRequest) { r.Outputs[0].Name = "logits" }), codes.InvalidArgument, `outputs[0].name: unknown output "logits"`},
		{"classification", in(func(r *pb.ModelInferRequest) {
			r.Outputs[0].Parameters = map[string]*pb.InferParameter{"classification": i64(3)}
		}), codes.Unimplemented, "classification extension"},
		{"region without size", in(func(r *pb.ModelInferRequest) {
			r.RawInputContents = nil
			r.Inputs[0].Parameters = map[string]*pb.InferParameter{"shared_memory_region": str("r")}
		}), codes.InvalidArgument, "shared_memory_byte_size is missing"},
		{"region of the wrong type", in(func(r *pb.ModelInferRequest) {
			r.RawInputContents = nil
			r.Inputs[0].Parameters = map[string]*pb.InferParameter{"shared_memory_region": i64(1), "shared_memory_byte_size": i64(16)}
		}), codes.InvalidArgument, "shared_memory_region must be a string_param"},
		{"size of the wrong type", in(func(r *pb.ModelInferRequest) {
			r.RawInputContents = nil
			r.Inputs[0].Parameters = map[string]*pb.InferParameter{"shared_memory_region": str("r"), "shared_memory_byte_size": str("16")}
		}), codes.InvalidArgument, "shared_memory_byte_size must be an int64_param"},
		{"raw and region", in(func(r *pb.ModelInferRequest) {
			r.Inputs[0].Parameters = map[string]*pb.InferParameter{"shared_memory_region": str("r"), "shared_memory_byte_size": i64(16)}
		}), codes.InvalidArgument, "give its values once"},
		{"unregistered region", in(func(r *pb.ModelInferRequest) {
			r.RawInputContents = nil
			r.Inputs[0].Parameters = map[string]*pb.InferParameter{"shared_memory_region": str("r"), "shared_memory_byte_size": i64(16)}
		}), codes.NotFound, `inputs[0]: no shared memory region named "r"`},
		{"region size mismatch", in(func(r *pb.ModelInferRequest) {
			r.RawInputContents = nil
			r.Inputs[0].Parameters = map[string]*pb.InferParameter{"shared_memory_region": str("r"), "shared_memory_byte_size": i64(12)}
		}), codes.InvalidArgument, "shared_memory_byte_size is 12 bytes but the tensor needs 16"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := f.client.ModelInfer(ctx, c.req)
			wantCode(t, err, c.code, c.contains)
		})
	}
	if _, calls := f.backend.LastInput(); calls != 0 {
		t.Fatalf("refused requests reached the backend %d times", calls)
	}
}

// TestBackendErrorsMapToCodes: each failure class from the backend is
// answered with the code of the one table, with the message unchanged.
func TestBackendErrorsMapToCodes(t *testing.T) {
	f := newFixture(t, oipgrpc.Options{RetryAfter: 3 * time.Second})
	ctx := ctxT(t)
	want := map[failure.Class]codes.Code{
		failure.Internal:    codes.Internal,
		failure.NotFound:    codes.NotFound,
		failure.BadInput:    codes.InvalidArgument,
		failure.Malformed:   codes.InvalidArgument,
		failure.Refused:     codes.FailedPrecondition,
		failure.Conflict:    codes.FailedPrecondition,
		failure.TooLarge:    codes.ResourceExhausted,
		failure.Unsupported: codes.Unimplemented,
		failure.Unavailable: codes.Unavailable,
		failure.QueueFull:   codes.Unavailable,
		failure.Timeout:     codes.DeadlineExceeded,
		failure.Canceled:    codes.Canceled,
	}
	for c := failure.Internal; c <= failure.Canceled; c++ {
		code, ok := want[c]
		if !ok {
			t.Fatalf("class %v has no expected code here", c)
		}
		f.backend.SetInferError("double", failure.Errorf(c, "the %s thing", c))
		var trailer metadata.MD
		_, err := f.client.ModelInfer(ctx, rawInfer("double", "FP32", []int64{1, 4}, f32(1, 2, 3, 4)), grpc.Trailer(&trailer))
		wantCode(t, err, code, `model "double": the `+c.String()+" thing")
		if got := trailer.Get("grpc-retry-pushback-ms"); (code == codes.Unavailable) != (len(got) == 1 && got[0] == "3000") {
			t.Errorf("class %v: grpc-retry-pushback-ms %v", c, got)
		}
	}
	// An unclassified error and the context's own.
	for err, code := range map[error]codes.Code{
		errors.New("boom"):       codes.Internal,
		context.DeadlineExceeded: codes.DeadlineExceeded,
	} {
		f.backend.SetInferError("double", err)
		_, got := f.client.ModelInfer(ctx, rawInfer("double", "FP32", []int64{1, 4}, f32(1, 2, 3, 4)))
		wantCode(t, got, code, err.Error())
	}
	// A panicking model is INTERNAL and counted; the server goes on.
	f.backend.SetInferError("double", nil)
	f.backend.Add(oip.ModelInfo{Name: "panics"}, func(oip.Tensor) (oip.Tensor, error) { panic("kernel bug") })
	_, err := f.client.ModelInfer(ctx, rawInfer("panics", "FP32", []int64{1, 4}, f32(1, 2, 3, 4)))
	wantCode(t, err, codes.Internal, "internal error while serving /inference.GRPCInferenceService/ModelInfer")
	if n := counterValue(t, f.reg, "kasmina_grpc_panics_total", nil); n != 1 {
		t.Fatalf("kasmina_grpc_panics_total = %v", n)
	}
	if _, err := f.client.ModelInfer(ctx, rawInfer("double", "FP32", []int64{1, 4}, f32(1, 2, 3, 4))); err != nil {
		t.Fatalf("after a panic: %v", err)
	}
	// A backend that returns a shape its values do not fill.
	f.backend.Add(oip.ModelInfo{Name: "liar"}, func(oip.Tensor) (oip.Tensor, error) {
		return oip.Tensor{Shape: []int{2, 2}, Data: []float32{1}}, nil
	})
	_, err = f.client.ModelInfer(ctx, rawInfer("liar", "FP32", []int64{1, 4}, f32(1, 2, 3, 4)))
	wantCode(t, err, codes.Internal, "backend returned output with shape [2 2] and 1 values")
}

func TestAuth(t *testing.T) {
	f := newFixture(t, oipgrpc.Options{Access: oip.Access{Token: "s3cret", Loopback: true}})
	ctx := ctxT(t)
	infer := func(ctx context.Context) error {
		_, err := f.client.ModelInfer(ctx, rawInfer("double", "FP32", []int64{1, 4}, f32(1, 2, 3, 4)))
		return err
	}
	wantCode(t, infer(ctx), codes.Unauthenticated, "needs authorization: Bearer")
	wantCode(t, infer(withToken(ctx, "wrong")), codes.Unauthenticated, "not valid")
	wantCode(t, infer(metadata.AppendToOutgoingContext(ctx, "authorization", "Basic s3cret")), codes.Unauthenticated, "needs authorization")
	if err := infer(withToken(ctx, "s3cret")); err != nil {
		t.Fatalf("with the token: %v", err)
	}
	// State changes need it too; reads, probes and health do not.
	_, err := f.client.RepositoryModelUnload(ctx, &pb.RepositoryModelUnloadRequest{ModelName: "double"})
	wantCode(t, err, codes.Unauthenticated, "needs authorization")
	_, err = f.client.SystemSharedMemoryRegister(ctx, &pb.SystemSharedMemoryRegisterRequest{Name: "r", Key: "/k", ByteSize: 1})
	wantCode(t, err, codes.Unauthenticated, "needs authorization")
	if _, err := f.client.ModelMetadata(ctx, &pb.ModelMetadataRequest{Name: "double"}); err != nil {
		t.Fatalf("a read without the token: %v", err)
	}
	if _, err := f.client.ServerLive(ctx, &pb.ServerLiveRequest{}); err != nil {
		t.Fatal(err)
	}
	if _, err := f.health.Check(ctx, &healthpb.HealthCheckRequest{}); err != nil {
		t.Fatal(err)
	}

	// A token oip.CheckToken refuses (the daemon will not start with one)
	// matches nothing, even when offered verbatim, as over HTTP.
	unusable := newFixture(t, oipgrpc.Options{Access: oip.Access{Token: "two words"}})
	_, err = unusable.client.ModelInfer(withToken(ctx, "two words"), rawInfer("double", "FP32", []int64{1, 4}, f32(1, 2, 3, 4)))
	wantCode(t, err, codes.Unauthenticated, "not valid")

	// TokenForReads guards the reads; the probes stay open.
	g := newFixture(t, oipgrpc.Options{Access: oip.Access{Token: "s3cret", TokenForReads: true}})
	for name, call := range map[string]func(context.Context) error{
		"ServerMetadata": func(ctx context.Context) error {
			_, err := g.client.ServerMetadata(ctx, &pb.ServerMetadataRequest{})
			return err
		},
		"ModelReady": func(ctx context.Context) error {
			_, err := g.client.ModelReady(ctx, &pb.ModelReadyRequest{Name: "double"})
			return err
		},
		"RepositoryIndex": func(ctx context.Context) error {
			_, err := g.client.RepositoryIndex(ctx, &pb.RepositoryIndexRequest{})
			return err
		},
	} {
		wantCode(t, call(ctx), codes.Unauthenticated, "needs authorization")
		if err := call(withToken(ctx, "s3cret")); err != nil {
			t.Errorf("%s with the token: %v", name, err)
		}
	}
	if _, err := g.client.ServerReady(ctx, &pb.ServerReadyRequest{}); err != nil {
		t.Fatalf("ServerReady is a probe: %v", err)
	}
}

// TestAuthority: on a loopback listener the :authority must name a
// loopback host or an allowed one, as HTTP checks Host; the probes are
// exempt.
func TestAuthority(t *testing.T) {
	f := newFixture(t, oipgrpc.Options{Access: oip.Access{Loopback: true, AllowedHosts: []string{"Kasmina.Local."}}})
	ctx := ctxT(t)
	for authority, code := range map[string]codes.Code{
		"localhost:8471":     codes.OK,
		"[::1]:8471":         codes.OK,
		"127.1.2.3":          codes.OK,
		"kasmina.local:8471": codes.OK,
		"evil.example:8471":  codes.PermissionDenied,
		"127.0.0.1.nip.io":   codes.PermissionDenied,
	} {
		c := pb.NewGRPCInferenceServiceClient(f.dial(t, grpc.WithAuthority(authority)))
		_, err := c.ModelMetadata(ctx, &pb.ModelMetadataRequest{Name: "double"})
		if status.Code(err) != code {
			t.Errorf("authority %s: %v, want %v", authority, err, code)
		}
		if _, err := c.ServerLive(ctx, &pb.ServerLiveRequest{}); err != nil {
			t.Errorf("ServerLive with authority %s: %v", authority, err)
		}
	}
	// Off loopback with no allow-list, any authority passes (the token
	// is the guard there).
	g := newFixture(t, oipgrpc.Options{})
	c := pb.NewGRPCInferenceServiceClient(g.dial(t, grpc.WithAuthority("node-7.cluster:8471")))
	if _, err := c.ModelMetadata(ctx, &pb.ModelMetadataRequest{Name: "double"}); err != nil {
		t.Fatal(err)
	}
}

func TestLimits(t *testing.T) {
	f := newFixture(t, oipgrpc.Options{MaxRecvBytes: 1024, MaxSendBytes: 8 << 10})
	ctx := ctxT(t)
	// A message over the receive limit never reaches the service.
	_, err := f.client.ModelInfer(ctx, rawInfer("sum", "FP32", []int64{1, 300}, make([]byte, 1200)))
	wantCode(t, err, codes.ResourceExhausted, "larger than max")
	// An answer over the send limit is refused before the model runs,
	// when the model declares its output shape...
	f.backend.Add(oip.ModelInfo{Name: "wide", InputShape: []int{1}, OutputShape: []int{4096}}, func(in oip.Tensor) (oip.Tensor, error) {
		t.Error("the model ran")
		return oip.Tensor{}, nil
	})
	_, err = f.client.ModelInfer(ctx, rawInfer("wide", "FP32", []int64{1, 1}, f32(1)))
	wantCode(t, err, codes.ResourceExhausted, "the output is 16384 bytes, more than this server sends in one answer (8192)")
	// ... and after it, when it does not.
	f.backend.Add(oip.ModelInfo{Name: "widens"}, func(in oip.Tensor) (oip.Tensor, error) {
		return oip.Tensor{Shape: []int{1, 4096}, Data: make([]float32, 4096)}, nil
	})
	_, err = f.client.ModelInfer(ctx, rawInfer("widens", "FP32", []int64{1, 1}, f32(1)))
	wantCode(t, err, codes.ResourceExhausted, "the output is 16384 bytes")
	eventually(t, "ResourceExhausted ModelInfer counted 3 times (the one refused before decoding included)", func() bool {
		return counterValue(t, f.reg, "kasmina_grpc_requests_total", map[string]string{"method": "/inference.GRPCInferenceService/ModelInfer", "code": "ResourceExhausted"}) == 3
	})
}

func TestHealth(t *testing.T) {
	f := newFixture(t, oipgrpc.Options{HealthPoll: 5 * time.Millisecond})
	ctx := ctxT(t)
	for _, svc := range []string{"", "inference.GRPCInferenceService"} {
		r, err := f.health.Check(ctx, &healthpb.HealthCheckRequest{Service: svc})
		if err != nil || r.Status != healthpb.HealthCheckResponse_SERVING {
			t.Fatalf("Check(%q) = %v, %v", svc, r, err)
		}
	}
	_, err := f.health.Check(ctx, &healthpb.HealthCheckRequest{Service: "nope"})
	wantCode(t, err, codes.NotFound, `"nope"`)
	list, err := f.health.List(ctx, &healthpb.HealthListRequest{})
	if err != nil || len(list.Statuses) != 2 || list.Statuses[""].Status != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("List = %v, %v", list, err)
	}

	watch, err := f.health.Watch(ctx, &healthpb.HealthCheckRequest{})
	if err != nil {
		t.Fatal(err)
	}
	next := func() healthpb.HealthCheckResponse_ServingStatus {
		t.Helper()
		r, err := watch.Recv()
		if err != nil {
			t.Fatal(err)
		}
		return r.Status
	}
	if st := next(); st != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("first Watch status %v", st)
	}
	f.backend.SetReady(false, "draining a device")
	if st := next(); st != healthpb.HealthCheckResponse_NOT_SERVING {
		t.Fatalf("Watch after SetReady(false): %v", st)
	}
	if r, err := f.health.Check(ctx, &healthpb.HealthCheckRequest{}); err != nil || r.Status != healthpb.HealthCheckResponse_NOT_SERVING {
		t.Fatalf("Check while not ready: %v, %v", r, err)
	}
	f.backend.SetReady(true, "")
	if st := next(); st != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("Watch after SetReady(true): %v", st)
	}

	// A shutdown answers NOT_SERVING and ends the Watch rather than
	// waiting for its client.
	done := make(chan error, 1)
	go func() {
		sctx, cancel := context.WithTimeout(context.Background(), wait)
		defer cancel()
		done <- f.server.Shutdown(sctx)
	}()
	if st := next(); st != healthpb.HealthCheckResponse_NOT_SERVING {
		t.Fatalf("Watch during shutdown: %v", st)
	}
	if _, err := watch.Recv(); status.Code(err) != codes.Unavailable {
		t.Fatalf("Watch end: %v", err)
	}
	if err := <-done; err != nil {
		t.Fatalf("Shutdown with a Watch open: %v", err)
	}
}

// TestGracefulStop: Shutdown lets an inference in flight finish; past the
// deadline it ends what is left.
func TestGracefulStop(t *testing.T) {
	f := newFixture(t, oipgrpc.Options{})
	ctx := ctxT(t)
	started, release := make(chan struct{}), make(chan struct{})
	var once sync.Once
	f.backend.Add(oip.ModelInfo{Name: "slow"}, func(in oip.Tensor) (oip.Tensor, error) {
		once.Do(func() { close(started) })
		<-release
		return in, nil
	})
	result := make(chan error, 1)
	go func() {
		_, err := f.client.ModelInfer(ctx, rawInfer("slow", "FP32", []int64{1, 1}, f32(1)))
		result <- err
	}()
	<-started
	stopped := make(chan error, 1)
	go func() {
		sctx, cancel := context.WithTimeout(context.Background(), wait)
		defer cancel()
		stopped <- f.server.Shutdown(sctx)
	}()
	select {
	case err := <-stopped:
		t.Fatalf("Shutdown returned with an inference in flight: %v", err)
	case <-time.After(50 * time.Millisecond):
	}
	close(release)
	if err := <-result; err != nil {
		t.Fatalf("the inference in flight: %v", err)
	}
	if err := <-stopped; err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	if _, err := f.client.ServerLive(ctx, &pb.ServerLiveRequest{}); status.Code(err) != codes.Unavailable {
		t.Fatalf("after Shutdown: %v", err)
	}

	// Past its deadline Shutdown stops waiting.
	g := newFixture(t, oipgrpc.Options{})
	hang := make(chan struct{})
	defer close(hang)
	g.backend.Add(oip.ModelInfo{Name: "hangs"}, func(in oip.Tensor) (oip.Tensor, error) { <-hang; return in, nil })
	go func() {
		_, err := g.client.ModelInfer(ctx, rawInfer("hangs", "FP32", []int64{1, 1}, f32(1)))
		result <- err
	}()
	waitFor(t, func() bool { _, calls := g.backend.LastInput(); return calls == 1 })
	sctx, cancel := context.WithTimeout(context.Background(), 10*time.Millisecond)
	defer cancel()
	if err := g.server.Shutdown(sctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Shutdown past its deadline: %v", err)
	}
	if err := <-result; status.Code(err) != codes.Unavailable {
		t.Fatalf("the inference cut off: %v", err)
	}
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(wait)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met in time")
		}
		time.Sleep(time.Millisecond)
	}
}

func TestMetrics(t *testing.T) {
	f := newFixture(t, oipgrpc.Options{Access: oip.Access{Token: "s3cret"}})
	ctx := ctxT(t)
	for range 3 {
		if _, err := f.client.ModelInfer(withToken(ctx, "s3cret"), rawInfer("double", "FP32", []int64{1, 4}, f32(1, 2, 3, 4))); err != nil {
			t.Fatal(err)
		}
	}
	_, _ = f.client.ModelInfer(ctx, rawInfer("double", "FP32", []int64{1, 4}, f32(1, 2, 3, 4)))
	_, _ = f.client.ModelMetadata(ctx, &pb.ModelMetadataRequest{Name: "nope"})
	_ = f.conn.Invoke(ctx, "/inference.GRPCInferenceService/ModelConfig", &pb.ModelReadyRequest{}, &pb.ModelReadyResponse{})
	_ = f.conn.Invoke(ctx, "/made.up.Service/"+strings.Repeat("x", 100), &pb.ModelReadyRequest{}, &pb.ModelReadyResponse{})
	const infer = "/inference.GRPCInferenceService/ModelInfer"
	for labels, want := range map[[2]string]float64{
		{infer, "OK"}:              3,
		{infer, "Unauthenticated"}: 1,
		{"/inference.GRPCInferenceService/ModelMetadata", "NotFound"}: 1,
		{"unknown", "Unimplemented"}:                                  2,
	} {
		eventually(t, fmt.Sprintf("kasmina_grpc_requests_total%v = %v", labels, want), func() bool {
			return counterValue(t, f.reg, "kasmina_grpc_requests_total", map[string]string{"method": labels[0], "code": labels[1]}) == want
		})
	}
	eventually(t, "4 latency samples for ModelInfer", func() bool {
		return histogramCount(t, f.reg, "kasmina_grpc_request_duration_seconds", map[string]string{"method": infer}) == 4
	})
	// Registering twice on one registry is an error, not a panic.
	if _, err := oipgrpc.NewMetrics(f.reg); err == nil {
		t.Fatal("NewMetrics registered twice")
	}
	// The metric names pass promlint.
	if problems, err := testutil.GatherAndLint(f.reg); err != nil || len(problems) > 0 {
		t.Fatalf("promlint: %v %v", problems, err)
	}
}

// counterValue sums the counter samples of name whose labels include
// want.
func counterValue(t *testing.T, reg *prometheus.Registry, name string, want map[string]string) float64 {
	t.Helper()
	var sum float64
	for _, m := range gather(t, reg, name) {
		if labelsMatch(m.GetLabel(), want) {
			sum += m.GetCounter().GetValue()
		}
	}
	return sum
}

func histogramCount(t *testing.T, reg *prometheus.Registry, name string, want map[string]string) uint64 {
	t.Helper()
	var n uint64
	for _, m := range gather(t, reg, name) {
		if labelsMatch(m.GetLabel(), want) {
			n += m.GetHistogram().GetSampleCount()
		}
	}
	return n
}

// TestTritonGRPCClientCheck runs testdata/triton_grpc_check.py, which
// drives this server with Triton's own Python gRPC client (and, for system
// shared memory, its HTTP client against oip's handler on the same
// registry), when TRITONCLIENT_SRC points at that client's source tree and
// /usr/bin/python3 has its dependencies; otherwise it skips and says why.
func TestTritonGRPCClientCheck(t *testing.T) {
	src := os.Getenv("TRITONCLIENT_SRC")
	if src == "" {
		t.Skip("SKIPPED: TRITONCLIENT_SRC is not set; Triton's Python gRPC client was not run")
	}
	python := "/usr/bin/python3"
	if out, err := exec.Command(python, "-c", "import grpc, grpc_tools, google.protobuf, numpy, rapidjson, geventhttpclient").CombinedOutput(); err != nil {
		t.Skipf("SKIPPED: %s lacks python3-grpcio, python3-grpc-tools, python3-protobuf, python3-numpy, python3-rapidjson or python3-geventhttpclient: %s", python, out)
	}
	if st, err := os.Stat("/dev/shm"); err != nil || !st.IsDir() {
		t.Skip("SKIPPED: no /dev/shm, where the client creates its shared memory")
	}
	reg := shm.New(shm.Options{})
	defer reg.Close()
	f := newFixture(t, oipgrpc.Options{Access: oip.Access{Token: "s3cret", Loopback: true}, SharedMemory: reg})
	web := httptest.NewServer(oip.NewHandler(f.backend, oip.HostViews{}, oip.Options{Access: oip.Access{Token: "s3cret", Loopback: true}, SharedMemory: reg}, nil))
	defer web.Close()
	script, err := filepath.Abs("testdata/triton_grpc_check.py")
	if err != nil {
		t.Fatal(err)
	}
	run := func(args ...string) (string, error) {
		cmd := exec.Command(python, append([]string{script, "--url", f.addr, "--http-url", strings.TrimPrefix(web.URL, "http://"), "--token", "s3cret"}, args...)...)
		cmd.Env = append(os.Environ(), "TRITONCLIENT_SRC="+src)
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	out, err := run("--model", "double", "--input", "[[1, 2, 3, 4], [-1, 0.5, 0, 8]]", "--expected", "[[2, 4, 6, 8], [-2, 1, 0, 16]]", "--shm")
	if err != nil || !strings.Contains(out, "PASSED") || !strings.Contains(out, "via shared memory") {
		t.Fatalf("triton_grpc_check.py: %v\n%s", err, out)
	}
	t.Log(out)
	// A wrong expectation must fail the script, or it proves nothing.
	if out, err := run("--model", "double", "--input", "[[1, 2, 3, 4]]", "--expected", "[[1, 2, 3, 4]]"); err == nil {
		t.Fatalf("the script passed a wrong expectation:\n%s", out)
	}
}
