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

// ModelInfer runs one inference. Every kernel has one FP32 input named
// "input" and one output named "output". The input's values come from
// exactly one of raw_input_contents[0] (what Triton's client sends),
// contents (fp32_contents, or fp64_contents for FP64) or a shared memory
// region; the output goes to raw_output_contents[0], or to the region its
// requested output names.
func (s *service) ModelInfer(ctx context.Context, req *pb.ModelInferRequest) (*pb.ModelInferResponse, error) {
	m, err := s.lookup(req.GetModelName(), req.GetModelVersion())
	if err != nil {
		return nil, err
	}
	if m.Layer {
		return s.inferLayer(ctx, req, m)
	}
	if err := refuseLayerParams(req, m); err != nil {
		return nil, err
	}
	askedExec, err := boolRequestParam(req.GetParameters(), ParamExecInfo)
	if err != nil {
		return nil, err
	}
	var tensors oip.SharedTensors
	defer tensors.Release()
	in, held, err := s.decodeInput(&tensors, req, m)
	defer held.release()
	if err != nil {
		return nil, err
	}
	if err := s.requestedOutput(&tensors, req); err != nil {
		return nil, err
	}
	// The output size is known before running when the model declares
	// its shape: a region too small or an answer too large is refused
	// before any work.
	var outBuf []float32
	if m.OutputShape != nil {
		n := int64(in.Shape[0])
		for _, d := range m.OutputShape {
			n *= int64(d)
		}
		if err := s.checkOutput(n, &tensors); err != nil {
			return nil, err
		}
		// An output bound for shared memory is computed in its region
		// where it can be, else into a pooled buffer copied into the
		// region before this returns; one answered in
		// raw_output_contents is the answer's own (the message is
		// marshalled after this returns).
		if tensors.HasOutput(0) {
			if outBuf, err = tensors.OutputBuffer(0, outputElements(in.Shape[0], m.OutputShape)); err != nil {
				return nil, err
			}
		}
	}
	out, exec, err := tensors.Infer(ctx, s.backend, m, oip.KernelRequest{Input: in, Out: outBuf})
	if err != nil {
		return nil, fmt.Errorf("model %q: %w", m.Name, err)
	}
	if err := checkOutputTensor(out); err != nil {
		return nil, fmt.Errorf("model %q: %w", m.Name, err)
	}
	if err := s.checkOutput(int64(len(out.Data)), &tensors); err != nil {
		return nil, err
	}
	resp := &pb.ModelInferResponse{
		ModelName:    m.Name,
		ModelVersion: versionOf(m),
		Id:           req.GetId(),
		Parameters:   kernelExecParams(exec, askedExec),
		Outputs:      []*pb.ModelInferResponse_InferOutputTensor{{Name: oip.OutputName, Datatype: "FP32", Shape: int64s(out.Shape)}},
	}
	if tensors.HasOutput(0) {
		if err := tensors.WriteOutput(0, out.Data); err != nil {
			return nil, err
		}
		return resp, nil
	}
	resp.RawOutputContents = [][]byte{wiretensor.FP32Bytes(out.Data)}
	return resp, nil
}

// checkOutput refuses an output of n FP32 values that cannot be delivered:
// larger than the region named for it, or than an answer may be.
func (s *service) checkOutput(n int64, t *oip.SharedTensors) error {
	if t.HasOutput(0) {
		return t.CheckOutput(0, n)
	}
	// The answer's other fields take a few hundred bytes at most.
	if size := 4 * n; size > int64(s.opts.MaxSendBytes)-4096 {
		return failure.Errorf(failure.TooLarge, "the output is %d bytes, more than this server sends in one answer (%d); ask for a smaller batch or use system shared memory", size, s.opts.MaxSendBytes)
	}
	return nil
}

// checkOutputTensor guards the answer against a backend that returned a
// shape and values that disagree.
func checkOutputTensor(t oip.Tensor) error {
	n := 1
	for _, d := range t.Shape {
		n *= d
	}
	if len(t.Shape) == 0 || n != len(t.Data) {
		return fmt.Errorf("backend returned output with shape %v and %d values", t.Shape, len(t.Data))
	}
	return nil
}

// heldInput is what an input decoded from raw_input_contents holds until
// its request is answered: the pooled buffer it was read into, when it
// could not be used where it lies.
type heldInput struct {
	buf wiretensor.FP32Buffer
}

func (h heldInput) release() { h.buf.Release() }

// outputElements is batch × the product of perSample when that is a count
// wiretensor pools, else 0 (the backend then allocates, after its own
// limits have judged the batch).
func outputElements(batch int, perSample []int) int {
	n := max(batch, 0)
	for _, d := range perSample {
		if d < 0 || (d > 0 && n > wiretensor.MaxPooledFP32/d) {
			return 0
		}
		n *= d
	}
	return n
}

// decodeInput checks the request's input against the model and returns it
// as FP32, with what it holds (see heldInput).
func (s *service) decodeInput(t *oip.SharedTensors, req *pb.ModelInferRequest, m oip.ModelInfo) (oip.Tensor, heldInput, error) {
	inputs := req.GetInputs()
	if len(inputs) != 1 {
		return oip.Tensor{}, heldInput{}, failure.Errorf(failure.BadInput, "inputs: expected exactly one input named %q, got %d", oip.InputName, len(inputs))
	}
	in := inputs[0]
	if in.GetName() != oip.InputName {
		return oip.Tensor{}, heldInput{}, failure.Errorf(failure.BadInput, "inputs[0].name: unknown input %q; model %q takes one input named %q", in.GetName(), m.Name, oip.InputName)
	}
	raw := req.GetRawInputContents()
	if len(raw) > 1 {
		return oip.Tensor{}, heldInput{}, failure.Errorf(failure.BadInput, "raw_input_contents: %d entries for one input", len(raw))
	}
	return s.decodeTensor(t, true, 0, in, raw, func(shape []int64) error {
		return wiretensor.CheckShape("inputs[0].shape", shape, m.Name, m.InputShape, m.MaxBatch)
	})
}

// inputNames are what errors call inputs[i] and its fields.
type inputNames struct{ field, datatype, shape, parameters string }

// commonInputNames are inputNamesOf the inputs every request has (a
// layer's are at most three), made once rather than on every request.
var commonInputNames = [...]inputNames{makeInputNames(0), makeInputNames(1), makeInputNames(2)}

func inputNamesOf(i int) inputNames {
	if i < len(commonInputNames) {
		return commonInputNames[i]
	}
	return makeInputNames(i)
}

func makeInputNames(i int) inputNames {
	f := "inputs[" + strconv.Itoa(i) + "]"
	return inputNames{f, f + ".datatype", f + ".shape", f + ".parameters"}
}

// decodeTensor checks input tensor in (inputs[i]) and returns its values
// as FP32: from raw (its raw_input_contents entry: none, or one), its
// contents, or the shared memory region it names (held in t, and used in
// place when inPlace allows: see oip.SharedTensors), with what it holds
// until the request is answered (see heldInput). check checks its shape
// before any value is read.
func (s *service) decodeTensor(t *oip.SharedTensors, inPlace bool, i int, in *pb.ModelInferRequest_InferInputTensor, raw [][]byte, check func([]int64) error) (oip.Tensor, heldInput, error) {
	names := inputNamesOf(i)
	field := names.field
	dt, err := wiretensor.ParseDatatype(names.datatype, in.GetDatatype())
	if err != nil {
		return oip.Tensor{}, heldInput{}, err
	}
	n, err := wiretensor.Count(names.shape, in.GetShape(), s.opts.MaxElements)
	if err != nil {
		return oip.Tensor{}, heldInput{}, err
	}
	if err := check(in.GetShape()); err != nil {
		return oip.Tensor{}, heldInput{}, err
	}
	ref, inShm, err := parseRef(names.parameters, in.GetParameters())
	if err != nil {
		return oip.Tensor{}, heldInput{}, err
	}
	contents := in.GetContents()
	sources := 0
	for _, given := range []bool{len(raw) > 0, contents != nil, inShm} {
		if given {
			sources++
		}
	}
	switch {
	case sources > 1:
		return oip.Tensor{}, heldInput{}, failure.Errorf(failure.BadInput, "%s: give its values once: in raw_input_contents, in contents or in a shared memory region", field)
	case sources == 0:
		return oip.Tensor{}, heldInput{}, failure.Errorf(failure.BadInput, "%s: no values (raw_input_contents, contents or shared memory parameters)", field)
	}
	want := wiretensor.ByteSize(n, dt)
	var data []float32
	var held heldInput
	switch {
	case len(raw) == 1:
		rawField := "raw_input_contents[" + strconv.Itoa(i) + "]"
		if int64(len(raw[0])) != want {
			return oip.Tensor{}, heldInput{}, failure.Errorf(failure.BadInput, "%s is %d bytes but shape %v of %s needs %d", rawField, len(raw[0]), in.GetShape(), dt, want)
		}
		// The message's bytes are this request's own: FP32 is used where
		// it lies when the machine and the alignment allow.
		if dt == wiretensor.FP32 {
			data, _ = wiretensor.FP32View(raw[0])
		}
		if data == nil {
			held.buf = wiretensor.GetFP32(int(n))
			data = held.buf.Data
			err = wiretensor.Decode(rawField, data, raw[0], dt)
		}
	case contents != nil:
		data, err = fromContents(field, contents, dt, n)
	default:
		if s.opts.SharedMemory != nil && ref.ByteSize != uint64(want) {
			return oip.Tensor{}, held, failure.Errorf(failure.BadInput, "%s.parameters.%s is %d bytes but the tensor needs %d", field, shm.ParamByteSize, ref.ByteSize, want)
		}
		data, err = t.Input(s.opts.SharedMemory, field, ref, dt, int(n), inPlace)
	}
	if err != nil {
		return oip.Tensor{}, held, err
	}
	shape := make([]int, len(in.GetShape()))
	for i, d := range in.GetShape() {
		shape[i] = int(d)
	}
	return oip.Tensor{Shape: shape, Data: data}, held, nil
}

// fromContents reads the typed contents field of the input's datatype.
// FP16 and BF16 have none: they travel in raw_input_contents.
func fromContents(field string, c *pb.InferTensorContents, dt wiretensor.Datatype, n int64) ([]float32, error) {
	others := len(c.GetBoolContents()) + len(c.GetIntContents()) + len(c.GetInt64Contents()) + len(c.GetUintContents()) +
		len(c.GetUint64Contents()) + len(c.GetBytesContents())
	var data []float32
	switch dt {
	case wiretensor.FP32:
		others += len(c.GetFp64Contents())
		if int64(len(c.GetFp32Contents())) != n {
			return nil, failure.Errorf(failure.BadInput, "%s.contents.fp32_contents holds %d values but its shape declares %d", field, len(c.GetFp32Contents()), n)
		}
		data = c.GetFp32Contents()
	case wiretensor.FP64:
		others += len(c.GetFp32Contents())
		if int64(len(c.GetFp64Contents())) != n {
			return nil, failure.Errorf(failure.BadInput, "%s.contents.fp64_contents holds %d values but its shape declares %d", field, len(c.GetFp64Contents()), n)
		}
		data = make([]float32, n)
		if err := wiretensor.NarrowFP64(field+".contents.fp64_contents", data, c.GetFp64Contents()); err != nil {
			return nil, err
		}
	default:
		return nil, failure.Errorf(failure.BadInput, "%s.contents: %s has no contents field; send it in raw_input_contents", field, dt)
	}
	if others > 0 {
		return nil, failure.Errorf(failure.BadInput, "%s.contents: values in a field other than the one of datatype %s", field, dt)
	}
	return data, nil
}

// requestedOutput checks the requested outputs (none, or "output") and
// holds in t the region the output goes to, if one is named.
func (s *service) requestedOutput(t *oip.SharedTensors, req *pb.ModelInferRequest) error {
	for i, o := range req.GetOutputs() {
		if o.GetName() != oip.OutputName {
			return failure.Errorf(failure.BadInput, "outputs[%d].name: unknown output %q; the model has one output named %q", i, o.GetName(), oip.OutputName)
		}
		if err := s.holdOutput(t, 0, i, o); err != nil {
			return err
		}
	}
	return nil
}

// holdOutput holds in t, as output slot, the region requested output o
// (outputs[i]) names, if it names one.
func (s *service) holdOutput(t *oip.SharedTensors, slot, i int, o *pb.ModelInferRequest_InferRequestedOutputTensor) error {
	if _, ok := o.GetParameters()["classification"]; ok {
		return failure.Errorf(failure.Unsupported, "outputs[%d].parameters.classification: the classification extension is not supported", i)
	}
	field := "outputs[" + strconv.Itoa(i) + "]"
	r, ok, err := parseRef(field+".parameters", o.GetParameters())
	if err != nil || !ok {
		return err
	}
	return t.HoldOutput(s.opts.SharedMemory, slot, field, r)
}

// parseRef reads the shared memory parameters of a tensor; a parameter of
// the wrong type is refused, naming it.
func parseRef(field string, params map[string]*pb.InferParameter) (shm.Ref, bool, error) {
	if len(params) == 0 {
		return shm.Ref{}, false, nil
	}
	var region *string
	var offset, size *int64
	if p, ok := params[shm.ParamRegion]; ok {
		v, isString := p.GetParameterChoice().(*pb.InferParameter_StringParam)
		if !isString {
			return shm.Ref{}, false, failure.Errorf(failure.BadInput, "%s.%s must be a string_param", field, shm.ParamRegion)
		}
		region = &v.StringParam
	}
	for _, f := range [...]struct {
		name string
		dst  **int64
	}{{shm.ParamOffset, &offset}, {shm.ParamByteSize, &size}} {
		p, ok := params[f.name]
		if !ok {
			continue
		}
		v, err := int64Param(field+"."+f.name, p)
		if err != nil {
			return shm.Ref{}, false, err
		}
		*f.dst = &v
	}
	return shm.ParseRef(field, region, offset, size)
}

// int64Param accepts an int64_param, or a uint64_param that fits.
func int64Param(field string, p *pb.InferParameter) (int64, error) {
	switch v := p.GetParameterChoice().(type) {
	case *pb.InferParameter_Int64Param:
		return v.Int64Param, nil
	case *pb.InferParameter_Uint64Param:
		if v.Uint64Param <= 1<<63-1 {
			return int64(v.Uint64Param), nil
		}
		return 0, failure.Errorf(failure.BadInput, "%s: %d is too large", field, v.Uint64Param)
	}
	return 0, failure.Errorf(failure.BadInput, "%s must be an int64_param", field)
}

// ParamExecInfo is the request parameter (bool_param) that asks a
// kernel's ModelInfer answer for every execParams field even when the
// request did not fall back.
const ParamExecInfo = "exec_info"

// kernelExecParams are a kernel's answer parameters: execParams when the
// request fell back (never silent) or asked for them (exec_info), else
// none. A map in the answer costs both ends of a small request more than
// the rest of its decoding (each entry is a key, a message and its oneof
// to allocate and walk by reflection): bench/grpc measured about 5 % of a
// 1×64 round trip for the seven entries, so the common case, a request
// that ran where it was placed, carries none. The HTTP answer, encoded by
// hand, always carries them.
func kernelExecParams(e oip.ExecInfo, asked bool) map[string]*pb.InferParameter {
	if !asked && !e.Fallback {
		return nil
	}
	return execParams(e)
}

// boolRequestParam reads an optional bool_param among a request's
// parameters; one of another type is refused, naming it.
func boolRequestParam(params map[string]*pb.InferParameter, name string) (bool, error) {
	p, ok := params[name]
	if !ok {
		return false, nil
	}
	v, isBool := p.GetParameterChoice().(*pb.InferParameter_BoolParam)
	if !isBool {
		return false, failure.Errorf(failure.BadInput, "parameters.%s must be a bool_param", name)
	}
	return v.BoolParam, nil
}

// execParams says where the request ran, so that a fallback is never
// silent, with the names the HTTP answer uses.
func execParams(e oip.ExecInfo) map[string]*pb.InferParameter {
	p := map[string]*pb.InferParameter{
		"placed_on":   {ParameterChoice: &pb.InferParameter_StringParam{StringParam: e.PlacedOn}},
		"executed_on": {ParameterChoice: &pb.InferParameter_StringParam{StringParam: e.ExecutedOn}},
		"executor":    {ParameterChoice: &pb.InferParameter_StringParam{StringParam: e.Executor}},
		"fallback":    {ParameterChoice: &pb.InferParameter_BoolParam{BoolParam: e.Fallback}},
	}
	if e.Reason != "" {
		p["fallback_reason"] = &pb.InferParameter{ParameterChoice: &pb.InferParameter_StringParam{StringParam: e.Reason}}
	}
	if e.QueueTime > 0 {
		p["queue_ns"] = &pb.InferParameter{ParameterChoice: &pb.InferParameter_Int64Param{Int64Param: e.QueueTime.Nanoseconds()}}
	}
	if e.ComputeTime > 0 {
		p["compute_ns"] = &pb.InferParameter{ParameterChoice: &pb.InferParameter_Int64Param{Int64Param: e.ComputeTime.Nanoseconds()}}
	}
	return p
}

func int64s(s []int) []int64 {
	out := make([]int64, len(s))
	for i, d := range s {
		out[i] = int64(d)
	}
	return out
}

func itoa(v int64) string { return strconv.FormatInt(v, 10) }

func boolString(b bool) string { return strconv.FormatBool(b) }
