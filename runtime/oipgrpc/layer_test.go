package oipgrpc_test

import (
	"context"
	"fmt"
	"net"
	"path/filepath"
	"slices"
	"testing"

	"google.golang.org/grpc/codes"

	"github.com/esper/kasmina-host/device"
	"github.com/esper/kasmina-host/internal/tolerance"
	"github.com/esper/kasmina-host/runtime"
	"github.com/esper/kasmina-host/runtime/oip"
	"github.com/esper/kasmina-host/runtime/oip/oiptest"
	"github.com/esper/kasmina-host/runtime/oipgrpc"
	pb "github.com/esper/kasmina-host/runtime/oipgrpc/inferencepb"
)

// layerServer is a gRPC server over a real host whose layer "L" has the
// golden kernel g in seed 0 at alpha 0.5 and seed 1 at alpha 0.25, and
// which serves g directly as "direct".
func layerServer(t *testing.T, g *oiptest.Golden) pb.GRPCInferenceServiceClient {
	t.Helper()
	return layerServerWith(t, g, oipgrpc.Options{})
}

// layerServerWith is layerServer with opts.
func layerServerWith(t *testing.T, g *oiptest.Golden, opts oipgrpc.Options) pb.GRPCInferenceServiceClient {
	t.Helper()
	inv, err := device.Open(context.Background(), device.Options{Simulate: "dgxa100"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { inv.Close() })
	h, err := runtime.New(runtime.Config{MaxBatch: 64}, runtime.Deps{Inventory: inv})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if _, err := h.Apply(ctx, runtime.DeclareLayer{Layer: "L"}); err != nil {
		t.Fatal(err)
	}
	for idx, alpha := range []float64{0.5, 0.25} {
		name := fmt.Sprintf("L.k%d", idx)
		if _, err := h.Load(ctx, runtime.LoadRequest{Data: g.Kernel, Name: name, Layer: "L", SeedIdx: idx}); err != nil {
			t.Fatal(err)
		}
		if _, err := h.Apply(ctx, runtime.SetAlpha{Layer: "L", SeedIdx: idx, Alpha: alpha}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := h.Load(ctx, runtime.LoadRequest{Data: g.Kernel, Name: "direct"}); err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := oipgrpc.New(oip.HostBackend(h), opts, nil)
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), wait)
		defer cancel()
		if err := srv.Shutdown(ctx); err != nil {
			t.Errorf("Shutdown: %v", err)
		}
		<-served
	})
	f := &fixture{addr: ln.Addr().String()}
	return pb.NewGRPCInferenceServiceClient(f.dial(t))
}

func int64Shape(s []int) []int64 {
	out := make([]int64, len(s))
	for i, d := range s {
		out[i] = int64(d)
	}
	return out
}

// TestLayerModelInfer: ModelInfer on a layer takes input, default and
// grad_output (raw_input_contents in the order of inputs) and the
// kept-forward parameters, answers output, grad_input and grad_default
// with the blend in the response parameters, as over HTTP; the metadata
// lists the layer's tensors; errors keep their class.
func TestLayerModelInfer(t *testing.T) {
	g, err := oiptest.LoadGolden(filepath.Join(oiptest.GoldenDir(filepath.Join("..", "..")), "golden-1-003"))
	if err != nil {
		t.Fatal(err)
	}
	c := layerServer(t, g)
	ctx := ctxT(t)
	def := make([]float32, len(g.Expected))
	for i := range def {
		def[i] = float32(i%7) - 3
	}
	const A = 0.75
	in := func(name string, shape []int) *pb.ModelInferRequest_InferInputTensor {
		return &pb.ModelInferRequest_InferInputTensor{Name: name, Datatype: "FP32", Shape: int64Shape(shape)}
	}

	// Forward and backward in one call.
	resp, err := c.ModelInfer(ctx, &pb.ModelInferRequest{
		ModelName:        "L",
		Inputs:           []*pb.ModelInferRequest_InferInputTensor{in("input", g.InputShape), in("default", g.OutShape), in("grad_output", g.OutShape)},
		RawInputContents: [][]byte{f32(g.Input...), f32(def...), f32(g.GradOutput...)},
	})
	if err != nil {
		t.Fatal(err)
	}
	names := []string{}
	for _, o := range resp.GetOutputs() {
		names = append(names, o.GetName())
	}
	if !slices.Equal(names, []string{"output", "grad_input", "grad_default"}) || len(resp.GetRawOutputContents()) != 3 {
		t.Fatalf("outputs %v with %d raw contents", names, len(resp.GetRawOutputContents()))
	}
	wantOut := make([]float64, len(g.Expected))
	for i, v := range g.Expected {
		wantOut[i] = A*v + (1-A)*float64(def[i])
	}
	if e := tolerance.RelErr(floats(resp.GetRawOutputContents()[0]), wantOut); !(e <= g.Tolerance) {
		t.Errorf("output relative error %.3g", e)
	}
	wantGrad := make([]float64, len(g.GradInput))
	for i, v := range g.GradInput {
		wantGrad[i] = A * v
	}
	if e := tolerance.RelErr(floats(resp.GetRawOutputContents()[1]), wantGrad); !(e <= g.GradTolerance) {
		t.Errorf("grad_input relative error %.3g", e)
	}
	p := resp.GetParameters()
	if p["alpha_total"].GetDoubleParam() != A || p["alpha_scale"].GetDoubleParam() != 1 || !p["default_applied"].GetBoolParam() ||
		p["seeds"].GetStringParam() != `[{"seed_idx":0,"alpha":0.5,"kernel":"L.k0"},{"seed_idx":1,"alpha":0.25,"kernel":"L.k1"}]` {
		t.Fatalf("parameters %v", p)
	}

	// A kept forward (contents instead of raw), then its backward.
	fwdIn := in("input", g.InputShape)
	fwdIn.Contents = &pb.InferTensorContents{Fp32Contents: g.Input}
	fwd, err := c.ModelInfer(ctx, &pb.ModelInferRequest{
		ModelName: "L", Inputs: []*pb.ModelInferRequest_InferInputTensor{fwdIn},
		Parameters: map[string]*pb.InferParameter{"keep_forward": {ParameterChoice: &pb.InferParameter_BoolParam{BoolParam: true}}},
	})
	if err != nil {
		t.Fatal(err)
	}
	id := fwd.GetParameters()["forward_id"].GetStringParam()
	if id == "" || fwd.GetParameters()["default_applied"].GetBoolParam() {
		t.Fatalf("kept forward parameters %v", fwd.GetParameters())
	}
	back := &pb.ModelInferRequest{
		ModelName: "L", Inputs: []*pb.ModelInferRequest_InferInputTensor{in("grad_output", g.OutShape)},
		RawInputContents: [][]byte{f32(g.GradOutput...)},
		Parameters:       map[string]*pb.InferParameter{"forward_id": {ParameterChoice: &pb.InferParameter_StringParam{StringParam: id}}},
	}
	bresp, err := c.ModelInfer(ctx, back)
	if err != nil {
		t.Fatal(err)
	}
	if len(bresp.GetOutputs()) != 1 || bresp.GetOutputs()[0].GetName() != "grad_input" ||
		!slices.Equal(bresp.GetRawOutputContents()[0], resp.GetRawOutputContents()[1]) {
		t.Fatalf("the kept forward's backward answered %v", bresp.GetOutputs())
	}
	_, err = c.ModelInfer(ctx, back)
	wantCode(t, err, codes.NotFound, id)

	// A default of the wrong shape names it and its dimension.
	bad := slices.Clone(g.OutShape)
	bad[1]++
	_, err = c.ModelInfer(ctx, &pb.ModelInferRequest{
		ModelName:        "L",
		Inputs:           []*pb.ModelInferRequest_InferInputTensor{in("input", g.InputShape), in("default", bad)},
		RawInputContents: [][]byte{f32(g.Input...), make([]byte, 4*bad[0]*bad[1])},
	})
	wantCode(t, err, codes.InvalidArgument, `inputs[1] ("default").shape[1]`)

	// A kernel served directly refuses the layer's parameters and inputs.
	_, err = c.ModelInfer(ctx, &pb.ModelInferRequest{
		ModelName: "direct", Inputs: []*pb.ModelInferRequest_InferInputTensor{in("input", g.InputShape)},
		RawInputContents: [][]byte{f32(g.Input...)},
		Parameters:       map[string]*pb.InferParameter{"keep_forward": {ParameterChoice: &pb.InferParameter_BoolParam{BoolParam: true}}},
	})
	wantCode(t, err, codes.InvalidArgument, "parameters.keep_forward")
	_, err = c.ModelInfer(ctx, &pb.ModelInferRequest{
		ModelName: "direct", Inputs: []*pb.ModelInferRequest_InferInputTensor{in("input", g.InputShape), in("default", g.OutShape)},
		RawInputContents: [][]byte{f32(g.Input...), f32(def...)},
	})
	wantCode(t, err, codes.InvalidArgument, "inputs")

	md, err := c.ModelMetadata(ctx, &pb.ModelMetadataRequest{Name: "L"})
	if err != nil {
		t.Fatal(err)
	}
	var mdIn, mdOut []string
	for _, t := range md.GetInputs() {
		mdIn = append(mdIn, t.GetName())
	}
	for _, t := range md.GetOutputs() {
		mdOut = append(mdOut, t.GetName())
	}
	if !slices.Equal(mdIn, []string{"input", "default", "grad_output"}) || !slices.Equal(mdOut, []string{"output", "grad_input", "grad_default"}) ||
		md.GetProperties()["optional_inputs"] != "default,grad_output" {
		t.Fatalf("metadata %v", md)
	}
}
