package oipgrpc_test

import (
	"os"
	"path/filepath"
	"slices"
	"testing"

	"google.golang.org/grpc/codes"

	"github.com/esper/kasmina-host/runtime/oip"
	"github.com/esper/kasmina-host/runtime/oip/oiptest"
	"github.com/esper/kasmina-host/runtime/oipgrpc"
	pb "github.com/esper/kasmina-host/runtime/oipgrpc/inferencepb"
	"github.com/esper/kasmina-host/runtime/shm"
)

func shmParams(region string, offset, size int64) map[string]*pb.InferParameter {
	p := map[string]*pb.InferParameter{
		shm.ParamRegion:   {ParameterChoice: &pb.InferParameter_StringParam{StringParam: region}},
		shm.ParamByteSize: {ParameterChoice: &pb.InferParameter_Int64Param{Int64Param: size}},
	}
	if offset != 0 {
		p[shm.ParamOffset] = &pb.InferParameter{ParameterChoice: &pb.InferParameter_Int64Param{Int64Param: offset}}
	}
	return p
}

// shmInfer asks for "double" on [batch, 4] read from region in at inOff
// and written to region out at outOff.
func shmInfer(batch int64, in string, inOff int64, out string, outOff, outSize int64) *pb.ModelInferRequest {
	return &pb.ModelInferRequest{
		ModelName: "double",
		Inputs:    []*pb.ModelInferRequest_InferInputTensor{{Name: "input", Datatype: "FP32", Shape: []int64{batch, 4}, Parameters: shmParams(in, inOff, 16*batch)}},
		Outputs:   []*pb.ModelInferRequest_InferRequestedOutputTensor{{Name: "output", Parameters: shmParams(out, outOff, outSize)}},
	}
}

// TestSharedMemoryThroughGRPC registers regions over gRPC, runs
// inferences whose tensors never cross the socket, and checks the bytes in
// the object.
func TestSharedMemoryThroughGRPC(t *testing.T) {
	dir := t.TempDir()
	obj := filepath.Join(dir, "tensors")
	if err := os.WriteFile(obj, make([]byte, 8192), 0o600); err != nil {
		t.Fatal(err)
	}
	reg := shm.New(shm.Options{Dir: dir})
	defer reg.Close()
	f := newFixture(t, oipgrpc.Options{SharedMemory: reg})
	ctx := ctxT(t)
	c := f.client

	// Input at [0, 4096), output at [4096, 8192) of the same object, the
	// output region starting off a page boundary.
	for _, r := range []*pb.SystemSharedMemoryRegisterRequest{
		{Name: "in", Key: "/tensors", Offset: 0, ByteSize: 4096},
		{Name: "out", Key: "/tensors", Offset: 4100, ByteSize: 4092},
	} {
		if _, err := c.SystemSharedMemoryRegister(ctx, r); err != nil {
			t.Fatal(err)
		}
	}
	_, err := c.SystemSharedMemoryRegister(ctx, &pb.SystemSharedMemoryRegisterRequest{Name: "in", Key: "/tensors", ByteSize: 1})
	wantCode(t, err, codes.FailedPrecondition, "already registered")
	_, err = c.SystemSharedMemoryRegister(ctx, &pb.SystemSharedMemoryRegisterRequest{Name: "x", Key: "/missing", ByteSize: 1})
	wantCode(t, err, codes.NotFound, "no shared memory object")
	_, err = c.SystemSharedMemoryRegister(ctx, &pb.SystemSharedMemoryRegisterRequest{Name: "x", Key: "/tensors", Offset: 8000, ByteSize: 1000})
	wantCode(t, err, codes.InvalidArgument, "only 8192 bytes")

	st, err := c.SystemSharedMemoryStatus(ctx, &pb.SystemSharedMemoryStatusRequest{})
	if err != nil || len(st.Regions) != 2 || st.Regions["out"].Key != "/tensors" || st.Regions["out"].Offset != 4100 || st.Regions["out"].ByteSize != 4092 || st.Regions["out"].Name != "out" {
		t.Fatalf("SystemSharedMemoryStatus = %v, %v", st, err)
	}
	if st, err := c.SystemSharedMemoryStatus(ctx, &pb.SystemSharedMemoryStatusRequest{Name: "in"}); err != nil || len(st.Regions) != 1 {
		t.Fatalf("SystemSharedMemoryStatus(in) = %v, %v", st, err)
	}
	_, err = c.SystemSharedMemoryStatus(ctx, &pb.SystemSharedMemoryStatusRequest{Name: "nope"})
	wantCode(t, err, codes.NotFound, `"nope"`)

	file, err := os.OpenFile(obj, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer file.Close()
	if _, err := file.WriteAt(f32(1, 2, 3, 4, -1, 0.5, 0, 8), 64); err != nil {
		t.Fatal(err)
	}
	resp, err := c.ModelInfer(ctx, shmInfer(2, "in", 64, "out", 8, 32))
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.RawOutputContents) != 0 || len(resp.Outputs) != 1 || !equal(resp.Outputs[0].Shape, 2, 4) {
		t.Fatalf("answer with the output in shared memory: %v", resp)
	}
	got := make([]byte, 32)
	if _, err := file.ReadAt(got, 4100+8); err != nil {
		t.Fatal(err)
	}
	if !equalF(floats(got), 2, 4, 6, 8, -2, 1, 0, 16) {
		t.Fatalf("output in the region: %v", floats(got))
	}
	// Shared memory input, output in the answer; and the reverse.
	req := shmInfer(1, "in", 64, "out", 0, 16)
	req.Outputs = nil
	if resp, err := c.ModelInfer(ctx, req); err != nil || !equalF(floats(resp.RawOutputContents[0]), 2, 4, 6, 8) {
		t.Fatalf("input from shared memory: %v, %v", resp, err)
	}
	req = rawInfer("double", "FP32", []int64{1, 4}, f32(5, 6, 7, 8))
	req.Outputs[0].Parameters = shmParams("out", 100, 16)
	if _, err := c.ModelInfer(ctx, req); err != nil {
		t.Fatal(err)
	}
	if _, err := file.ReadAt(got[:16], 4200); err != nil || !equalF(floats(got[:16]), 10, 12, 14, 16) {
		t.Fatalf("output to shared memory: %v, %v", floats(got[:16]), err)
	}

	// Refusals, all before the model runs.
	_, callsBefore := f.backend.LastInput()
	for _, c2 := range []struct {
		name     string
		req      *pb.ModelInferRequest
		code     codes.Code
		contains string
	}{
		{"input past the region", shmInfer(1, "in", 4090, "out", 0, 16), codes.InvalidArgument, "inputs[0].parameters: shared_memory_offset 4090 + shared_memory_byte_size 16 run past the end of region \"in\" (4096 bytes)"},
		{"output region too small", shmInfer(2, "in", 0, "out", 0, 31), codes.InvalidArgument, "shared_memory_byte_size is 31 bytes but the output needs 32"},
		{"output past the region", shmInfer(1, "in", 0, "out", 4090, 16), codes.InvalidArgument, "outputs[0].parameters: shared_memory_offset 4090 + shared_memory_byte_size 16 run past the end of region \"out\""},
		{"unknown output region", shmInfer(1, "in", 0, "nope", 0, 16), codes.NotFound, `outputs[0]: no shared memory region named "nope"`},
	} {
		_, err := c.ModelInfer(ctx, c2.req)
		wantCode(t, err, c2.code, c2.contains)
	}
	if _, calls := f.backend.LastInput(); calls != callsBefore {
		t.Fatalf("refused shared memory requests reached the model %d times", calls-callsBefore)
	}

	// Unregister one, then all.
	if _, err := c.SystemSharedMemoryUnregister(ctx, &pb.SystemSharedMemoryUnregisterRequest{Name: "in"}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.SystemSharedMemoryUnregister(ctx, &pb.SystemSharedMemoryUnregisterRequest{Name: "in"}); err != nil {
		t.Fatalf("unregistering an unknown name: %v", err)
	}
	_, err = c.ModelInfer(ctx, shmInfer(1, "in", 0, "out", 0, 16))
	wantCode(t, err, codes.NotFound, `inputs[0]: no shared memory region named "in"`)
	if _, err := c.SystemSharedMemoryUnregister(ctx, &pb.SystemSharedMemoryUnregisterRequest{}); err != nil {
		t.Fatal(err)
	}
	if st, err := c.SystemSharedMemoryStatus(ctx, &pb.SystemSharedMemoryStatusRequest{}); err != nil || len(st.Regions) != 0 {
		t.Fatalf("after unregistering all: %v, %v", st, err)
	}
}

// TestSharedMemoryChangedMidRequest: the model itself unregisters or
// truncates the regions while it runs, as a client racing the request
// could.
func TestSharedMemoryChangedMidRequest(t *testing.T) {
	dir := t.TempDir()
	obj := filepath.Join(dir, "tensors")
	if err := os.WriteFile(obj, make([]byte, 8192), 0o600); err != nil {
		t.Fatal(err)
	}
	reg := shm.New(shm.Options{Dir: dir})
	defer reg.Close()
	f := newFixture(t, oipgrpc.Options{SharedMemory: reg})
	ctx := ctxT(t)
	register := func() {
		for _, r := range []*pb.SystemSharedMemoryRegisterRequest{
			{Name: "in", Key: "/tensors", Offset: 0, ByteSize: 4096},
			{Name: "out", Key: "/tensors", Offset: 4096, ByteSize: 4096},
		} {
			if _, err := f.client.SystemSharedMemoryRegister(ctx, r); err != nil {
				t.Fatal(err)
			}
		}
	}
	register()
	var during func()
	f.backend.Add(oip.ModelInfo{Name: "double", InputShape: []int{4}, OutputShape: []int{4}}, func(in oip.Tensor) (oip.Tensor, error) {
		during()
		out := make([]float32, len(in.Data))
		for i, v := range in.Data {
			out[i] = 2 * v
		}
		return oip.Tensor{Shape: in.Shape, Data: out}, nil
	})

	// Unregistered during the request: the request holds both regions
	// and finishes; later requests find no region.
	during = func() { reg.UnregisterAll() }
	if _, err := f.client.ModelInfer(ctx, shmInfer(1, "in", 0, "out", 0, 16)); err != nil {
		t.Fatalf("regions unregistered during the request: %v", err)
	}
	_, err := f.client.ModelInfer(ctx, shmInfer(1, "in", 0, "out", 0, 16))
	wantCode(t, err, codes.NotFound, "no shared memory region")

	// Truncated during the request: the output cannot be written, and the
	// answer says so; the server goes on.
	register()
	during = func() {
		if err := os.Truncate(obj, 100); err != nil {
			t.Error(err)
		}
	}
	_, err = f.client.ModelInfer(ctx, shmInfer(1, "in", 0, "out", 0, 16))
	wantCode(t, err, codes.InvalidArgument, `outputs[0]: region "out": its shared memory object "/tensors" was truncated to 100 bytes under the host`)
	// Truncated before: the input cannot be read.
	during = func() {}
	_, err = f.client.ModelInfer(ctx, shmInfer(1, "in", 200, "out", 0, 16))
	wantCode(t, err, codes.InvalidArgument, `region "in": its shared memory object "/tensors" was truncated to 100 bytes`)
	if _, err := f.client.ServerLive(ctx, &pb.ServerLiveRequest{}); err != nil {
		t.Fatal(err)
	}
}

func TestSharedMemoryDisabled(t *testing.T) {
	f := newFixture(t, oipgrpc.Options{})
	ctx := ctxT(t)
	md, err := f.client.ServerMetadata(ctx, &pb.ServerMetadataRequest{})
	if err != nil || len(md.Extensions) != 1 || md.Extensions[0] != "model_repository" {
		t.Fatalf("ServerMetadata without shared memory: %v %v", md, err)
	}
	_, err = f.client.SystemSharedMemoryRegister(ctx, &pb.SystemSharedMemoryRegisterRequest{Name: "r", Key: "/k", ByteSize: 1})
	wantCode(t, err, codes.Unimplemented, "not enabled")
	_, err = f.client.SystemSharedMemoryStatus(ctx, &pb.SystemSharedMemoryStatusRequest{})
	wantCode(t, err, codes.Unimplemented, "not enabled")
	_, err = f.client.ModelInfer(ctx, shmInfer(1, "in", 0, "out", 0, 16))
	wantCode(t, err, codes.Unimplemented, "inputs[0].parameters.shared_memory_region: system shared memory is not enabled")
}

// TestLayerOutputsInSharedMemoryThroughGRPC: a layer's outputs requested
// in shared memory are written to their regions with the values
// raw_output_contents carries otherwise; raw_output_contents keeps one
// entry per output (empty for those in a region), as Triton's clients
// index it, and none at all when every output is in a region.
func TestLayerOutputsInSharedMemoryThroughGRPC(t *testing.T) {
	g, err := oiptest.LoadGolden(filepath.Join(oiptest.GoldenDir(filepath.Join("..", "..")), "golden-1-003"))
	if err != nil {
		t.Fatal(err)
	}
	reg, obj := oiptest.SharedRegion(t, "io", 1<<16)
	c := layerServerWith(t, g, oipgrpc.Options{SharedMemory: reg})
	ctx := ctxT(t)
	in := func(name string, shape []int) *pb.ModelInferRequest_InferInputTensor {
		return &pb.ModelInferRequest_InferInputTensor{Name: name, Datatype: "FP32", Shape: int64Shape(shape)}
	}
	request := func(inShm ...string) *pb.ModelInferRequest {
		req := &pb.ModelInferRequest{
			ModelName:        "L",
			Inputs:           []*pb.ModelInferRequest_InferInputTensor{in("input", g.InputShape), in("grad_output", g.OutShape)},
			RawInputContents: [][]byte{f32(g.Input...), f32(g.GradOutput...)},
		}
		for i, name := range []string{"output", "grad_input"} {
			o := &pb.ModelInferRequest_InferRequestedOutputTensor{Name: name}
			if slices.Contains(inShm, name) {
				o.Parameters = shmParams("io", int64(i*32768), 32768)
			}
			req.Outputs = append(req.Outputs, o)
		}
		return req
	}
	want, err := c.ModelInfer(ctx, request())
	if err != nil {
		t.Fatal(err)
	}
	for _, inShm := range [][]string{{"output"}, {"grad_input"}, {"output", "grad_input"}} {
		resp, err := c.ModelInfer(ctx, request(inShm...))
		if err != nil {
			t.Fatalf("%v in shared memory: %v", inShm, err)
		}
		raw := resp.GetRawOutputContents()
		if len(inShm) == 2 && raw != nil {
			t.Fatalf("every output in shared memory, and %d raw_output_contents", len(raw))
		}
		if len(inShm) == 1 && len(raw) != 2 {
			t.Fatalf("%v in shared memory: %d raw_output_contents, want one per output", inShm, len(raw))
		}
		b, err := os.ReadFile(obj)
		if err != nil {
			t.Fatal(err)
		}
		for i, o := range resp.GetOutputs() {
			wantBytes := want.GetRawOutputContents()[i]
			got := []byte(nil)
			if slices.Contains(inShm, o.GetName()) {
				if len(raw) > 0 && len(raw[i]) != 0 {
					t.Fatalf("%s in shared memory came in raw_output_contents too", o.GetName())
				}
				got = b[i*32768 : i*32768+len(wantBytes)]
			} else {
				got = raw[i]
			}
			if string(got) != string(wantBytes) || !slices.Equal(o.GetShape(), want.GetOutputs()[i].GetShape()) {
				t.Fatalf("%v in shared memory: %s differs from raw_output_contents'", inShm, o.GetName())
			}
		}
	}
	// A region too small for grad_input (the input's shape) is refused
	// (before the seeds run: oip.SharedTensors.CheckOutputSizes, whose
	// timing the HTTP test checks with the seed's call count).
	small := request("grad_input")
	small.Outputs[1].Parameters = shmParams("io", 32768, int64(4*len(g.Input)-4))
	_, err = c.ModelInfer(ctx, small)
	wantCode(t, err, codes.InvalidArgument, "outputs[1].parameters.shared_memory_byte_size")
}
