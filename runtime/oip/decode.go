package oip

import (
	"bytes"
	"encoding/json"
	"math"
	"strconv"

	"github.com/esper/kasmina-host/runtime/failure"
	"github.com/esper/kasmina-host/runtime/oip/wiretensor"
	"github.com/esper/kasmina-host/runtime/shm"
)

// Names of the single input and output tensor every kernel has.
const (
	InputName  = "input"
	OutputName = "output"
)

// limits are the caps a request is checked against before anything is
// allocated for its tensor.
type limits struct {
	maxElements  int64
	maxJSONDepth int
}

// inferRequest is the JSON part of an inference request.
type inferRequest struct {
	ID         string          `json:"id"`
	Parameters requestParams   `json:"parameters"`
	Inputs     []requestInput  `json:"inputs"`
	Outputs    []requestOutput `json:"outputs"`
}

// requestParams are the request parameters the host reads: the binary
// output switch, and a layer's kept-forward parameters.
type requestParams struct {
	BinaryDataOutput *bool   `json:"binary_data_output"`
	KeepForward      *bool   `json:"keep_forward"`
	ForwardID        *string `json:"forward_id"`
	RetainForward    *bool   `json:"retain_forward"`
}

type requestInput struct {
	Name       string          `json:"name"`
	Shape      []int64         `json:"shape"`
	Datatype   string          `json:"datatype"`
	Parameters inputParams     `json:"parameters"`
	Data       json.RawMessage `json:"data"`
}

type inputParams struct {
	BinaryDataSize *int64 `json:"binary_data_size"`
	shmParams
}

// shmParams are the system shared memory extension's tensor parameters.
type shmParams struct {
	SharedMemoryRegion   *string `json:"shared_memory_region"`
	SharedMemoryOffset   *int64  `json:"shared_memory_offset"`
	SharedMemoryByteSize *int64  `json:"shared_memory_byte_size"`
}

func (p *shmParams) ref(field string) (shm.Ref, bool, error) {
	return shm.ParseRef(field, p.SharedMemoryRegion, p.SharedMemoryOffset, p.SharedMemoryByteSize)
}

type requestOutput struct {
	Name       string       `json:"name"`
	Parameters outputParams `json:"parameters"`
}

type outputParams struct {
	BinaryData     *bool           `json:"binary_data"`
	Classification json.RawMessage `json:"classification"`
	shmParams
}

// Input roles: a kernel takes roleInput only, a layer all three.
const (
	roleInput = iota
	roleDefault
	roleGradOutput
	numInputRoles
)

// inputNames are the input tensors' names, by role.
var inputNames = [numInputRoles]string{InputName, DefaultName, GradOutputName}

// Output roles: a kernel answers roleOutput only, a layer all three.
const (
	roleOutput = iota
	roleGradInput
	roleGradDefault
	numOutputRoles
)

// outputNames are the output tensors' names, by role.
var outputNames = [numOutputRoles]string{OutputName, GradInputName, GradDefaultName}

// wireInput is one checked input tensor. When Shm is set its values are
// in shared memory and Tensor.Data is nil: the handler reads them (Type,
// Tensor.Shape's element count). Tensor.Data may be a view of the body or
// a pooled buffer (buf, which the handler releases once the model has
// run, error or not: decodedRequest.release).
type wireInput struct {
	buf    wiretensor.FP32Buffer
	Given  bool
	Field  string // "inputs[i]"
	Tensor Tensor
	Shm    *shm.Ref
	Type   wiretensor.Datatype
}

// decodedRequest is a checked inference request: its inputs by role (a
// kernel's request has roleInput only), the outputs asked for and, for a
// layer, its kept-forward parameters.
type decodedRequest struct {
	ID     string
	Inputs [numInputRoles]wireInput
	// BinaryOutput is each output's binary_data choice, by role.
	BinaryOutput [numOutputRoles]bool
	// Requested lists the outputs the request names; none named means
	// every output the answer has.
	Requested    [numOutputRoles]bool
	AnyRequested bool
	// OutputShm is, by role, the region an output goes to (nil: the
	// answer carries it); OutputField names that requested output.
	OutputShm   [numOutputRoles]*shm.Ref
	OutputField [numOutputRoles]string
	// A layer's parameters.
	KeepForward, RetainForward bool
	ForwardID                  string
}

// input is the request's "input" tensor.
func (d *decodedRequest) input() *wireInput { return &d.Inputs[roleInput] }

// release gives back the inputs' pooled buffers. Nothing may read an
// input's Tensor.Data after.
func (d *decodedRequest) release() {
	for i := range d.Inputs {
		d.Inputs[i].buf.Release()
		d.Inputs[i].buf = wiretensor.FP32Buffer{}
	}
}

// decodeInferRequest checks and decodes an inference request body. headerLen
// is the value of Inference-Header-Content-Length, or -1 when the request
// has no binary part. model supplies the expected per-sample shape; a
// layer (model.Layer) takes the inputs default and grad_output and the
// kept-forward parameters besides input.
func decodeInferRequest(body []byte, headerLen int64, model ModelInfo, lim limits) (decodedRequest, error) {
	var out decodedRequest
	jsonPart, binPart := body, []byte(nil)
	if headerLen >= 0 {
		if headerLen == 0 || headerLen > int64(len(body)) {
			return out, badInput("Inference-Header-Content-Length %d does not fit a body of %d bytes", headerLen, len(body))
		}
		jsonPart, binPart = body[:headerLen], body[headerLen:]
	}
	req, ok := scanInferRequest(jsonPart, lim.maxJSONDepth)
	if !ok {
		// The slow path: what the fast one does not take, and the error
		// of every document it refuses.
		if err := checkJSONDepth(jsonPart, lim.maxJSONDepth); err != nil {
			return out, err
		}
		if err := json.Unmarshal(jsonPart, &req); err != nil {
			return out, badInput("malformed inference request JSON: %v", err)
		}
	}
	out.ID = req.ID
	if err := out.layerParams(&req.Parameters, model); err != nil {
		return out, err
	}
	if err := checkInputNames(req.Inputs, model, out.ForwardID != ""); err != nil {
		return out, err
	}

	// The binary part holds the inputs that set binary_data_size, in the
	// order of inputs.
	var binUsed int64
	anyBinary, anyShm := false, false
	for i := range req.Inputs {
		in := &req.Inputs[i]
		role := roleOf(in.Name)
		f := &inputFields[i] // checkInputNames let at most numInputRoles through
		field := f.base
		w := &out.Inputs[role]
		w.Given, w.Field = true, field
		dt, err := wiretensor.ParseDatatype(f.datatype, in.Datatype)
		if err != nil {
			return out, err
		}
		n, err := wiretensor.Count(f.shape, in.Shape, lim.maxElements)
		if err != nil {
			return out, err
		}
		if err := checkInputShape(f, in.Name, in.Shape, model, req.Inputs); err != nil {
			return out, err
		}
		w.Type = dt
		ref, inShm, err := in.Parameters.ref(f.params)
		if err != nil {
			return out, err
		}
		var data []float32
		hasJSONData := len(in.Data) > 0 && string(in.Data) != "null"
		want := wiretensor.ByteSize(n, dt)
		switch {
		case inShm:
			switch {
			case hasJSONData || in.Parameters.BinaryDataSize != nil:
				return out, badInput("%s: give its values once: in data, in the binary part or in a shared memory region", field)
			case ref.ByteSize != uint64(want):
				return out, badInput("%s.parameters.%s is %d bytes but shape %v of %s needs %d", field, shm.ParamByteSize, ref.ByteSize, in.Shape, dt, want)
			}
			anyShm = true
			inShmRef := ref // a copy: ref itself stays off the heap
			w.Shm = &inShmRef
		case in.Parameters.BinaryDataSize != nil:
			size := *in.Parameters.BinaryDataSize
			switch {
			case hasJSONData:
				return out, badInput("%s: both data and parameters.binary_data_size are given", field)
			case headerLen < 0:
				return out, badInput("%s.parameters.binary_data_size is set but the request has no Inference-Header-Content-Length header", field)
			case size != want:
				return out, badInput("%s.parameters.binary_data_size is %d bytes but shape %v of %s needs %d", field, size, in.Shape, dt, want)
			case size > int64(len(binPart))-binUsed:
				return out, badInput("%s.parameters.binary_data_size %d runs past the end of the body (%d bytes of binary data after the JSON header, %d taken by the inputs before it)", field, size, len(binPart), binUsed)
			}
			anyBinary = true
			part := binPart[binUsed : binUsed+size]
			// FP32 is used where it lies in the body when the machine and
			// the alignment allow; else it is decoded into a pooled buffer.
			if dt == wiretensor.FP32 {
				data, _ = wiretensor.FP32View(part)
			}
			if data == nil {
				w.buf = wiretensor.GetFP32(int(n))
				data = w.buf.Data
				if err := wiretensor.Decode(field, data, part, dt); err != nil {
					return out, err
				}
			}
			binUsed += size
		default:
			if !hasJSONData {
				return out, badInput("%s: no data, no parameters.binary_data_size and no shared memory region", field)
			}
			if data, err = decodeJSONData(f.data, in.Data, n, max(1, len(in.Shape)), dt); err != nil {
				return out, err
			}
		}
		shape := make([]int, len(in.Shape))
		for i, d := range in.Shape {
			shape[i] = int(d)
		}
		w.Tensor = Tensor{Shape: shape, Data: data}
	}
	switch {
	case binUsed < int64(len(binPart)) && anyBinary:
		return out, badInput("the body has %d bytes after the JSON header but the binary inputs account for %d", len(binPart), binUsed)
	case len(binPart) > 0 && !anyBinary && anyShm && len(req.Inputs) == 1:
		return out, badInput("the body has %d bytes after the JSON header but its input is in shared memory", len(binPart))
	case len(binPart) > 0 && !anyBinary:
		return out, badInput("the body has %d bytes after the JSON header but no input sets parameters.binary_data_size", len(binPart))
	}
	return out, out.outputs(req.Parameters.BinaryDataOutput, req.Outputs, model)
}

// layerRequest is the decoded request as a layer takes it, and which
// outputs its answer has: those named in outputs (each one the request
// can produce), else all it produces.
func (d *decodedRequest) layerRequest() (LayerRequest, [numOutputRoles]bool, error) {
	lr := LayerRequest{
		Input: d.Inputs[roleInput].Tensor, Default: d.Inputs[roleDefault].Tensor, GradOutput: d.Inputs[roleGradOutput].Tensor,
		KeepForward: d.KeepForward, ForwardID: d.ForwardID, RetainForward: d.RetainForward,
	}
	want := [numOutputRoles]bool{true, true, true}
	if !d.AnyRequested {
		return lr, want, nil
	}
	want = d.Requested
	grad := d.Inputs[roleGradOutput].Given
	switch {
	case want[roleOutput] && !d.Inputs[roleInput].Given:
		return lr, want, badInput("outputs: %q is answered to a request with %q (this one runs the backward of a kept forward)", OutputName, InputName)
	case want[roleGradInput] && !grad:
		return lr, want, badInput("outputs: %q is answered to a request with %q", GradInputName, GradOutputName)
	case want[roleGradDefault] && !grad:
		return lr, want, badInput("outputs: %q is answered to a request with %q (and a %q in its forward)", GradDefaultName, GradOutputName, DefaultName)
	}
	return lr, want, nil
}

// layerParams reads a layer's request parameters; a kernel refuses them.
func (d *decodedRequest) layerParams(p *requestParams, model ModelInfo) error {
	if !model.Layer {
		for _, set := range []struct {
			name string
			set  bool
		}{{ParamKeepForward, p.KeepForward != nil}, {ParamForwardID, p.ForwardID != nil}, {ParamRetainForward, p.RetainForward != nil}} {
			if set.set {
				return badInput("parameters.%s: model %q is a kernel served directly; kept forwards and gradients are served on layers (load the kernel into a seed of a layer)", set.name, model.Name)
			}
		}
		return nil
	}
	d.KeepForward = p.KeepForward != nil && *p.KeepForward
	d.RetainForward = p.RetainForward != nil && *p.RetainForward
	if p.ForwardID != nil {
		if *p.ForwardID == "" {
			return badInput("parameters.%s: empty (it names a kept forward, as its forward's answer gave it)", ParamForwardID)
		}
		d.ForwardID = *p.ForwardID
	}
	return nil
}

// inputField names inputs[i] and its fields in errors, without building
// the strings per request.
type inputField struct{ base, datatype, shape, params, data string }

func newInputField(i int) inputField {
	b := "inputs[" + strconv.Itoa(i) + "]"
	return inputField{b, b + ".datatype", b + ".shape", b + ".parameters", b + ".data"}
}

// inputFields are the names of every input a request may have.
var inputFields = [numInputRoles]inputField{newInputField(0), newInputField(1), newInputField(2)}

// roleOf is the role of a checked input name.
func roleOf(name string) int {
	for r, n := range inputNames {
		if n == name {
			return r
		}
	}
	return -1
}

// checkInputNames refuses inputs a model does not take, one given twice,
// and a layer request without input (unless it names a kept forward).
func checkInputNames(inputs []requestInput, model ModelInfo, kept bool) error {
	if !model.Layer {
		if len(inputs) != 1 {
			return badInput("inputs: expected exactly one input named %q, got %d", InputName, len(inputs))
		}
		if inputs[0].Name != InputName {
			return badInput("inputs[0].name: unknown input %q; model %q takes one input named %q", inputs[0].Name, model.Name, InputName)
		}
		return nil
	}
	var seen [numInputRoles]bool
	for i, in := range inputs {
		r := roleOf(in.Name)
		switch {
		case r < 0:
			return badInput("inputs[%d].name: unknown input %q; layer %q takes %q, and optionally %q and %q", i, in.Name, model.Name, InputName, DefaultName, GradOutputName)
		case seen[r]:
			return badInput("inputs[%d].name: input %q is given twice", i, in.Name)
		}
		seen[r] = true
	}
	if !seen[roleInput] && !kept {
		return badInput("inputs: layer %q needs an input named %q (a forward), or parameters.%s and %q alone (the backward of a kept forward)", model.Name, InputName, ParamForwardID, GradOutputName)
	}
	return nil
}

// checkInputShape checks one input's shape (batch first) against the
// model: a kernel's input, or a layer's tensor by name.
func checkInputShape(f *inputField, name string, shape []int64, model ModelInfo, all []requestInput) error {
	if !model.Layer {
		return wiretensor.CheckShape(f.shape, shape, model.Name, model.InputShape, model.MaxBatch)
	}
	batch := int64(-1)
	for _, in := range all {
		if in.Name == InputName && len(in.Shape) > 0 {
			batch = in.Shape[0]
		}
	}
	return CheckLayerInput(f.base, name, shape, model, batch)
}

// CheckLayerInput checks the shape (batch first) of layer model's input
// tensor name, at field in the request: input against the layer's input
// shape and largest batch, default and grad_output against its output
// shape and inputBatch, the batch of the request's input (-1 when the
// request has none: the backward of a kept forward, which the runtime
// checks against that forward's output). Both front ends use it.
func CheckLayerInput(field, name string, shape []int64, model ModelInfo, inputBatch int64) error {
	if name == InputName {
		if err := checkLayerShape(field, name, shape, model.Name, model.InputShape, -1); err != nil {
			return err
		}
		return wiretensor.CheckShape(field+".shape", shape, model.Name, nil, model.MaxBatch)
	}
	if inputBatch < 0 {
		return nil
	}
	return checkLayerShape(field, name, shape, model.Name, model.OutputShape, inputBatch)
}

// checkLayerShape checks the shape (batch first) of a layer's tensor
// name, at field in the request, against the per-sample shape want (nil:
// any) and, when batch ≥ 0, the batch of the request's input. The error
// names the tensor and the dimension that is wrong.
func checkLayerShape(field, name string, shape []int64, layer string, want []int, batch int64) error {
	full := func() string { return "[batch" + dims(want) + "]" } // for the errors
	if want != nil && len(shape) != len(want)+1 {
		return badInput("%s (%q).shape %v has %d dimensions; layer %q takes %s", field, name, shape, len(shape), layer, full())
	}
	if batch >= 0 && len(shape) > 0 && shape[0] != batch {
		return badInput("%s (%q).shape[0] is %d but the batch of %q is %d", field, name, shape[0], InputName, batch)
	}
	for i, d := range want {
		if shape[i+1] != int64(d) {
			return badInput("%s (%q).shape[%d] is %d where layer %q takes %d (%s)", field, name, i+1, shape[i+1], layer, d, full())
		}
	}
	return nil
}

// dims lists a per-sample shape as ", d1, d2" to follow "[batch".
func dims(s []int) string {
	var b []byte
	for _, d := range s {
		b = append(b, ", "...)
		b = strconv.AppendInt(b, int64(d), 10)
	}
	return string(b)
}

// outputs reads the requested outputs: which (none named: all), binary
// or JSON, and a kernel's shared memory region.
func (d *decodedRequest) outputs(binaryAll *bool, outs []requestOutput, model ModelInfo) error {
	all := binaryAll != nil && *binaryAll
	for r := range d.BinaryOutput {
		d.BinaryOutput[r] = all
	}
	for i, o := range outs {
		r := -1
		for j, n := range outputNames {
			if n == o.Name && (j == roleOutput || model.Layer) {
				r = j
			}
		}
		if r < 0 {
			if model.Layer {
				return badInput("outputs[%d].name: unknown output %q; layer %q answers %q, %q and %q", i, o.Name, model.Name, OutputName, GradInputName, GradDefaultName)
			}
			return badInput("outputs[%d].name: unknown output %q; model %q has one output named %q", i, o.Name, model.Name, OutputName)
		}
		if len(o.Parameters.Classification) > 0 {
			return unsupported("outputs[%d].parameters.classification: the classification extension is not supported", i)
		}
		oref, outShm, err := o.Parameters.ref("outputs[" + strconv.Itoa(i) + "].parameters")
		if err != nil {
			return err
		}
		if outShm {
			if d.OutputShm[r] != nil {
				return badInput("outputs[%d]: output %q is requested twice in shared memory", i, o.Name)
			}
			d.OutputShm[r], d.OutputField[r] = &oref, "outputs["+strconv.Itoa(i)+"]"
		}
		if o.Parameters.BinaryData != nil {
			d.BinaryOutput[r] = *o.Parameters.BinaryData
		}
		d.Requested[r], d.AnyRequested = true, true
	}
	return nil
}

func withBatch(s []int) []int {
	return append([]int{-1}, s...)
}

// decodeJSONData parses a JSON array of numbers, flat or nested up to
// maxNest levels, into exactly n FP32 values. The bytes have already been
// validated as JSON (by scanInferRequest or encoding/json). Nothing is allocated for the values
// before the element count is known to fit the data.
func decodeJSONData(field string, raw []byte, n int64, maxNest int, dt wiretensor.Datatype) ([]float32, error) {
	if t := bytes.TrimLeft(raw, " \t\r\n"); len(t) == 0 || t[0] != '[' {
		return nil, badInput("%s: must be an array of numbers", field)
	}
	// Every element takes at least two bytes ("0,"), so a declared count
	// the data cannot hold is refused before allocating for it.
	if n > int64(len(raw))/2+1 {
		return nil, badInput("%s: shape declares %d elements but data holds at most %d", field, n, int64(len(raw))/2+1)
	}
	out := make([]float32, 0, n)
	depth := 0
	bits := 32
	if dt == wiretensor.FP64 {
		bits = 64
	}
	for i := 0; i < len(raw); {
		c := raw[i]
		switch {
		case c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == ',':
			i++
		case c == '[':
			depth++
			if depth > maxNest {
				return nil, badInput("%s: nested %d deep, deeper than the %d dimensions of its shape", field, depth, maxNest)
			}
			i++
		case c == ']':
			depth--
			i++
		case c == '-' || (c >= '0' && c <= '9'):
			if depth == 0 {
				return nil, badInput("%s: must be an array of numbers", field)
			}
			j := i + 1
			for j < len(raw) && isNumberByte(raw[j]) {
				j++
			}
			if int64(len(out)) == n {
				return nil, badInput("%s: more than the %d elements its shape declares", field, n)
			}
			v, err := strconv.ParseFloat(string(raw[i:j]), bits)
			if err != nil || math.Abs(v) > dt.MaxFinite() {
				return nil, badInput("%s[%d]: %s is out of range for %s", field, len(out), raw[i:j], dt)
			}
			out = append(out, float32(v))
			i = j
		default:
			if depth == 0 {
				return nil, badInput("%s: must be an array of numbers", field)
			}
			return nil, badInput("%s[%d]: not a number (non-finite values need the binary data extension)", field, len(out))
		}
	}
	if int64(len(out)) != n {
		return nil, badInput("%s: %d elements but its shape declares %d", field, len(out), n)
	}
	return out, nil
}

func isNumberByte(c byte) bool {
	return (c >= '0' && c <= '9') || c == '.' || c == 'e' || c == 'E' || c == '-' || c == '+'
}

// checkJSONDepth refuses documents nested deeper than maxDepth before they
// reach a decoder, in one pass that skips strings.
func checkJSONDepth(b []byte, maxDepth int) error {
	depth, inString, escaped := 0, false, false
	for i, c := range b {
		if inString {
			switch {
			case escaped:
				escaped = false
			case c == '\\':
				escaped = true
			case c == '"':
				inString = false
			}
			continue
		}
		switch c {
		case '"':
			inString = true
		case '[', '{':
			depth++
			if depth > maxDepth {
				return badInput("request JSON is nested deeper than %d levels (at byte %d)", maxDepth, i)
			}
		case ']', '}':
			depth--
		}
	}
	return nil
}

func badInput(format string, args ...any) error {
	return failure.Errorf(failure.BadInput, format, args...)
}

func unsupported(format string, args ...any) error {
	return failure.Errorf(failure.Unsupported, format, args...)
}
