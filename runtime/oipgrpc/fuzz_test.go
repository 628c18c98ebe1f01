package oipgrpc

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/proto"

	"github.com/esper/kasmina-host/runtime/oip"
	"github.com/esper/kasmina-host/runtime/oip/oiptest"
	pb "github.com/esper/kasmina-host/runtime/oipgrpc/inferencepb"
	"github.com/esper/kasmina-host/runtime/shm"
)

// FuzzModelInfer feeds ModelInfer arbitrary request messages, shared
// memory parameters included: every refusal has a client-error code, and
// every answer has as many values as its shape says.
func FuzzModelInfer(f *testing.F) {
	dir := f.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "obj"), make([]byte, 4096), 0o600); err != nil {
		f.Fatal(err)
	}
	reg := shm.New(shm.Options{Dir: dir})
	f.Cleanup(reg.Close)
	if err := reg.Register("r", "/obj", 0, 4096); err != nil {
		f.Fatal(err)
	}
	b := oiptest.New()
	b.Add(oip.ModelInfo{Name: "m", InputShape: []int{4}, OutputShape: []int{4}, MaxBatch: 16}, oiptest.Scale(2))
	b.Add(oip.ModelInfo{Name: "any", MaxBatch: 64}, oiptest.RowSum())
	s := &service{backend: b, opts: Options{SharedMemory: reg, MaxElements: 1 << 12}.withDefaults()}

	str := func(v string) *pb.InferParameter {
		return &pb.InferParameter{ParameterChoice: &pb.InferParameter_StringParam{StringParam: v}}
	}
	i64 := func(v int64) *pb.InferParameter {
		return &pb.InferParameter{ParameterChoice: &pb.InferParameter_Int64Param{Int64Param: v}}
	}
	for _, req := range []*pb.ModelInferRequest{
		{ModelName: "m", Inputs: []*pb.ModelInferRequest_InferInputTensor{{Name: "input", Datatype: "FP32", Shape: []int64{1, 4}}}, RawInputContents: [][]byte{make([]byte, 16)}},
		{ModelName: "any", Inputs: []*pb.ModelInferRequest_InferInputTensor{{Name: "input", Datatype: "FP64", Shape: []int64{2, 1}, Contents: &pb.InferTensorContents{Fp64Contents: []float64{1, 2}}}}},
		{ModelName: "m", Inputs: []*pb.ModelInferRequest_InferInputTensor{{Name: "input", Datatype: "FP16", Shape: []int64{2, 4},
			Parameters: map[string]*pb.InferParameter{shm.ParamRegion: str("r"), shm.ParamByteSize: i64(16), shm.ParamOffset: i64(8)}}},
			Outputs: []*pb.ModelInferRequest_InferRequestedOutputTensor{{Name: "output", Parameters: map[string]*pb.InferParameter{shm.ParamRegion: str("r"), shm.ParamByteSize: i64(32), shm.ParamOffset: i64(4000)}}}},
	} {
		bin, err := proto.Marshal(req)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(bin)
	}
	f.Fuzz(func(t *testing.T, bin []byte) {
		var req pb.ModelInferRequest
		if proto.Unmarshal(bin, &req) != nil {
			return
		}
		resp, err := s.ModelInfer(context.Background(), &req)
		if err != nil {
			switch code := codeOf(err); code {
			case codes.InvalidArgument, codes.NotFound, codes.Unimplemented, codes.ResourceExhausted, codes.FailedPrecondition:
			default:
				t.Fatalf("%v: %v", code, err)
			}
			return
		}
		n := int64(1)
		for _, d := range resp.Outputs[0].Shape {
			n *= d
		}
		if len(resp.RawOutputContents) == 1 && int64(len(resp.RawOutputContents[0])) != 4*n {
			t.Fatalf("shape %v with %d bytes", resp.Outputs[0].Shape, len(resp.RawOutputContents[0]))
		}
	})
}
