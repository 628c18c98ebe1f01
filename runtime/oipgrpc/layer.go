package oipgrpc

import (
	"context"
	"fmt"
	"strconv"

	"github.com/esper/kasmina-host/runtime/failure"
	"github.com/esper/kasmina-host/runtime/oip"
	"github.com/esper/kasmina-host/runtime/oip/wiretensor"
	pb "github.com/esper/kasmina-host/runtime/oipgrpc/inferencepb"
	"github.com/esper/kasmina-host/runtime/shm"
)

// A layer model (oip.ModelInfo.Layer) over gRPC: the inputs input,
// default and grad_output, the request parameters keep_forward,
// forward_id and retain_forward, the outputs output, grad_input and
// grad_default in raw_output_contents, and the blend in the response
// parameters, with the names and meanings of the HTTP front end
// (runtime/oip/API.md).

// layerParams are the request parameters a layer reads.
var layerParams = [...]string{oip.ParamKeepForward, oip.ParamForwardID, oip.ParamRetainForward}

// refuseLayerParams refuses a layer's parameters on a kernel's request.
func refuseLayerParams(req *pb.ModelInferRequest, m oip.ModelInfo) error {
	params := req.GetParameters()
	if len(params) == 0 {
		return nil
	}
	for _, p := range layerParams {
		if _, ok := params[p]; ok {
			return failure.Errorf(failure.BadInput, "parameters.%s: model %q is a kernel served directly; kept forwards and gradients are served on layers (load the kernel into a seed of a layer)", p, m.Name)
		}
	}
	return nil
}

// inferLayer runs ModelInfer on layer m.
func (s *service) inferLayer(ctx context.Context, req *pb.ModelInferRequest, m oip.ModelInfo) (*pb.ModelInferResponse, error) {
	lb, ok := s.backend.(oip.LayerBackend)
	if !ok {
		return nil, failure.Errorf(failure.Unsupported, "model %q is a layer, and this host does not serve layers", m.Name)
	}
	lr, err := layerRequestParams(req.GetParameters())
	if err != nil {
		return nil, err
	}
	var shared oip.SharedTensors
	defer shared.Release()
	held, err := s.decodeLayerInputs(&shared, req, m, &lr)
	defer func() {
		for _, h := range held {
			h.release()
		}
	}()
	if err != nil {
		return nil, err
	}
	want, err := s.layerOutputs(&shared, req, m, &lr)
	if err != nil {
		return nil, err
	}
	batch := -1
	for _, t := range []oip.Tensor{lr.Input, lr.GradOutput} {
		if len(t.Shape) > 0 {
			batch = t.Shape[0]
			break
		}
	}
	// Regions too small for the outputs the layer's shapes size are
	// refused before the seeds run, as over HTTP.
	if err := shared.CheckOutputSizes(m, batch); err != nil {
		return nil, err
	}
	res, exec, err := lb.InferLayer(ctx, m, lr)
	if err != nil {
		return nil, fmt.Errorf("model %q: %w", m.Name, err)
	}
	params := execParams(exec)
	seeds, err := oip.SeedsParam(res.Blend.Seeds)
	if err != nil {
		return nil, err
	}
	if res.Blend.ForwardID != "" {
		params[oip.ParamForwardID] = stringParam(res.Blend.ForwardID)
	}
	params[oip.ParamDefaultApplied] = &pb.InferParameter{ParameterChoice: &pb.InferParameter_BoolParam{BoolParam: res.Blend.DefaultApplied}}
	params[oip.ParamSeeds] = stringParam(seeds)
	params[oip.ParamAlphaTotal] = doubleParam(res.Blend.AlphaTotal)
	params[oip.ParamAlphaScale] = doubleParam(res.Blend.AlphaScale)
	resp := &pb.ModelInferResponse{ModelName: m.Name, ModelVersion: versionOf(m), Id: req.GetId(), Parameters: params}
	var size int64
	raw := false
	for i, t := range [...]struct {
		name string
		t    oip.Tensor
	}{{oip.OutputName, res.Output}, {oip.GradInputName, res.GradInput}, {oip.GradDefaultName, res.GradDefault}} {
		if t.t.Data == nil || !want[i] {
			continue
		}
		if err := checkOutputTensor(t.t); err != nil {
			return nil, fmt.Errorf("model %q: %s: %w", m.Name, t.name, err)
		}
		resp.Outputs = append(resp.Outputs, &pb.ModelInferResponse_InferOutputTensor{Name: t.name, Datatype: "FP32", Shape: int64s(t.t.Shape)})
		if shared.HasOutput(i) {
			if err := shared.WriteOutput(i, t.t.Data); err != nil {
				return nil, err
			}
			// An empty entry keeps raw_output_contents[k] the values of
			// outputs[k], as Triton's clients read them.
			resp.RawOutputContents = append(resp.RawOutputContents, []byte{})
			continue
		}
		size += 4 * int64(len(t.t.Data))
		raw = true
		resp.RawOutputContents = append(resp.RawOutputContents, wiretensor.FP32Bytes(t.t.Data))
	}
	if !raw {
		resp.RawOutputContents = nil // every output is in shared memory
	}
	if size > int64(s.opts.MaxSendBytes)-4096 {
		return nil, failure.Errorf(failure.TooLarge, "the outputs are %d bytes, more than this server sends in one answer (%d); ask for a smaller batch", size, s.opts.MaxSendBytes)
	}
	return resp, nil
}

func stringParam(v string) *pb.InferParameter {
	return &pb.InferParameter{ParameterChoice: &pb.InferParameter_StringParam{StringParam: v}}
}

func doubleParam(v float64) *pb.InferParameter {
	return &pb.InferParameter{ParameterChoice: &pb.InferParameter_DoubleParam{DoubleParam: v}}
}

// layerRequestParams reads keep_forward and retain_forward (bool_param)
// and forward_id (string_param).
func layerRequestParams(params map[string]*pb.InferParameter) (oip.LayerRequest, error) {
	var lr oip.LayerRequest
	for _, f := range [...]struct {
		name string
		dst  *bool
	}{{oip.ParamKeepForward, &lr.KeepForward}, {oip.ParamRetainForward, &lr.RetainForward}} {
		v, err := boolRequestParam(params, f.name)
		if err != nil {
			return lr, err
		}
		*f.dst = v
	}
	if p, ok := params[oip.ParamForwardID]; ok {
		v, isString := p.GetParameterChoice().(*pb.InferParameter_StringParam)
		switch {
		case !isString:
			return lr, failure.Errorf(failure.BadInput, "parameters.%s must be a string_param", oip.ParamForwardID)
		case v.StringParam == "":
			return lr, failure.Errorf(failure.BadInput, "parameters.%s: empty (it names a kept forward, as its forward's answer gave it)", oip.ParamForwardID)
		}
		lr.ForwardID = v.StringParam
	}
	return lr, nil
}

// decodeLayerInputs decodes a layer's inputs into lr, returning the
// pooled buffers they hold until the request is answered (the regions
// they name are held in shared, and copied: a layer's tensors are not
// used in place). raw_input_contents, when given, holds the values of
// every input that names no region, in the order of inputs.
func (s *service) decodeLayerInputs(shared *oip.SharedTensors, req *pb.ModelInferRequest, m oip.ModelInfo, lr *oip.LayerRequest) ([]heldInput, error) {
	inputs := req.GetInputs()
	raw := req.GetRawInputContents()
	dst := map[string]*oip.Tensor{oip.InputName: &lr.Input, oip.DefaultName: &lr.Default, oip.GradOutputName: &lr.GradOutput}
	seen := map[string]bool{}
	batch := int64(-1)
	inRaw := 0
	for i, in := range inputs {
		name := in.GetName()
		if _, ok := dst[name]; !ok {
			return nil, failure.Errorf(failure.BadInput, "inputs[%d].name: unknown input %q; layer %q takes %q, and optionally %q and %q", i, name, m.Name, oip.InputName, oip.DefaultName, oip.GradOutputName)
		}
		if seen[name] {
			return nil, failure.Errorf(failure.BadInput, "inputs[%d].name: input %q is given twice", i, name)
		}
		seen[name] = true
		if name == oip.InputName && len(in.GetShape()) > 0 {
			batch = in.GetShape()[0]
		}
		if _, named := in.GetParameters()[shm.ParamRegion]; !named {
			inRaw++
		}
	}
	if !seen[oip.InputName] && lr.ForwardID == "" {
		return nil, failure.Errorf(failure.BadInput, "inputs: layer %q needs an input named %q (a forward), or parameters.%s and %q alone (the backward of a kept forward)", m.Name, oip.InputName, oip.ParamForwardID, oip.GradOutputName)
	}
	if len(raw) > 0 && len(raw) != inRaw {
		return nil, failure.Errorf(failure.BadInput, "raw_input_contents: %d entries for the %d inputs not in shared memory", len(raw), inRaw)
	}
	var held []heldInput
	next := 0
	for i, in := range inputs {
		var r [][]byte
		if _, named := in.GetParameters()[shm.ParamRegion]; !named && len(raw) > 0 {
			r = raw[next : next+1]
			next++
		}
		field, name := "inputs["+strconv.Itoa(i)+"]", in.GetName()
		t, h, err := s.decodeTensor(shared, false, i, in, r, func(shape []int64) error {
			return oip.CheckLayerInput(field, name, shape, m, batch)
		})
		held = append(held, h)
		if err != nil {
			return held, err
		}
		*dst[name] = t
	}
	return held, nil
}

// layerOutputs says which outputs the answer has: those requested (each
// one the request can produce), else all; those requested in shared
// memory have their regions held in t, by output role.
func (s *service) layerOutputs(t *oip.SharedTensors, req *pb.ModelInferRequest, m oip.ModelInfo, lr *oip.LayerRequest) ([3]bool, error) {
	outs := req.GetOutputs()
	if len(outs) == 0 {
		return [3]bool{true, true, true}, nil
	}
	var want [3]bool
	names := [3]string{oip.OutputName, oip.GradInputName, oip.GradDefaultName}
	for i, o := range outs {
		r := -1
		for j, n := range names {
			if n == o.GetName() {
				r = j
			}
		}
		if r < 0 {
			return want, failure.Errorf(failure.BadInput, "outputs[%d].name: unknown output %q; layer %q answers %q, %q and %q", i, o.GetName(), m.Name, oip.OutputName, oip.GradInputName, oip.GradDefaultName)
		}
		if err := s.holdOutput(t, r, i, o); err != nil {
			return want, err
		}
		want[r] = true
	}
	grad := lr.GradOutput.Data != nil
	switch {
	case want[0] && lr.Input.Data == nil:
		return want, failure.Errorf(failure.BadInput, "outputs: %q is answered to a request with %q (this one runs the backward of a kept forward)", oip.OutputName, oip.InputName)
	case (want[1] || want[2]) && !grad:
		return want, failure.Errorf(failure.BadInput, "outputs: %q and %q are answered to a request with %q", oip.GradInputName, oip.GradDefaultName, oip.GradOutputName)
	}
	return want, nil
}
