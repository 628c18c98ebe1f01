package oip

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"math"
	"strconv"

	"github.com/esper/kasmina-host/runtime/failure"
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

type requestParams struct {
	BinaryDataOutput *bool `json:"binary_data_output"`
}

type requestInput struct {
	Name       string          `json:"name"`
	Shape      []int64         `json:"shape"`
	Datatype   string          `json:"datatype"`
	Parameters inputParams     `json:"parameters"`
	Data       json.RawMessage `json:"data"`
}

type inputParams struct {
	BinaryDataSize     *int64          `json:"binary_data_size"`
	SharedMemoryRegion json.RawMessage `json:"shared_memory_region"`
}

type requestOutput struct {
	Name       string       `json:"name"`
	Parameters outputParams `json:"parameters"`
}

type outputParams struct {
	BinaryData         *bool           `json:"binary_data"`
	Classification     json.RawMessage `json:"classification"`
	SharedMemoryRegion json.RawMessage `json:"shared_memory_region"`
}

// decodedRequest is a checked inference request.
type decodedRequest struct {
	ID           string
	Input        Tensor
	BinaryOutput bool
}

// dtype describes one supported wire datatype.
type dtype struct {
	size int
	// maxFinite is the largest finite magnitude of the datatype; JSON values
	// beyond it are refused rather than silently turned into Inf.
	maxFinite float64
}

var supportedTypes = map[string]dtype{
	"FP32": {4, math.MaxFloat32},
	"FP16": {2, 65504},
	"BF16": {2, math.MaxFloat32},
	"FP64": {8, math.MaxFloat32}, // converted to FP32: its range is the limit
}

// knownTypes are the Open Inference Protocol datatypes the host does not
// serve (501) as opposed to names that are simply wrong (400).
var knownTypes = map[string]bool{
	"BOOL": true, "UINT8": true, "UINT16": true, "UINT32": true, "UINT64": true,
	"INT8": true, "INT16": true, "INT32": true, "INT64": true, "BYTES": true,
}

// decodeInferRequest checks and decodes an inference request body. headerLen
// is the value of Inference-Header-Content-Length, or -1 when the request
// has no binary part. model supplies the expected per-sample shape.
func decodeInferRequest(body []byte, headerLen int64, model ModelInfo, lim limits) (decodedRequest, error) {
	var out decodedRequest
	jsonPart, binPart := body, []byte(nil)
	if headerLen >= 0 {
		if headerLen == 0 || headerLen > int64(len(body)) {
			return out, badInput("Inference-Header-Content-Length %d does not fit a body of %d bytes", headerLen, len(body))
		}
		jsonPart, binPart = body[:headerLen], body[headerLen:]
	}
	if err := checkJSONDepth(jsonPart, lim.maxJSONDepth); err != nil {
		return out, err
	}
	var req inferRequest
	if err := json.Unmarshal(jsonPart, &req); err != nil {
		return out, badInput("malformed inference request JSON: %v", err)
	}
	out.ID = req.ID

	if len(req.Inputs) != 1 {
		return out, badInput("inputs: expected exactly one input named %q, got %d", InputName, len(req.Inputs))
	}
	in := &req.Inputs[0]
	if in.Name != InputName {
		return out, badInput("inputs[0].name: unknown input %q; model %q takes one input named %q", in.Name, model.Name, InputName)
	}
	dt, ok := supportedTypes[in.Datatype]
	if !ok {
		if knownTypes[in.Datatype] {
			return out, unsupported("inputs[0].datatype: %s is not supported; send FP32 (FP16, BF16 and FP64 are converted)", in.Datatype)
		}
		return out, badInput("inputs[0].datatype: unknown datatype %q", in.Datatype)
	}
	if len(in.Parameters.SharedMemoryRegion) > 0 {
		return out, unsupported("inputs[0].parameters.shared_memory_region: the shared-memory extension is not supported")
	}
	n, err := elementCount(in.Shape, lim.maxElements)
	if err != nil {
		return out, err
	}
	if err := checkModelShape(in.Shape, model); err != nil {
		return out, err
	}

	var data []float32
	hasJSONData := len(in.Data) > 0 && string(in.Data) != "null"
	if in.Parameters.BinaryDataSize != nil {
		size := *in.Parameters.BinaryDataSize
		switch {
		case hasJSONData:
			return out, badInput("inputs[0]: both data and parameters.binary_data_size are given")
		case headerLen < 0:
			return out, badInput("inputs[0].parameters.binary_data_size is set but the request has no Inference-Header-Content-Length header")
		case size != n*int64(dt.size):
			return out, badInput("inputs[0].parameters.binary_data_size is %d bytes but shape %v of %s needs %d", size, in.Shape, in.Datatype, n*int64(dt.size))
		case size > int64(len(binPart)):
			return out, badInput("inputs[0].parameters.binary_data_size %d runs past the end of the body (%d bytes of binary data after the JSON header)", size, len(binPart))
		case size < int64(len(binPart)):
			return out, badInput("the body has %d bytes after the JSON header but the binary inputs account for %d", len(binPart), size)
		}
		if data, err = decodeBinary(binPart, in.Datatype); err != nil {
			return out, err
		}
	} else {
		if len(binPart) > 0 {
			return out, badInput("the body has %d bytes after the JSON header but no input sets parameters.binary_data_size", len(binPart))
		}
		if !hasJSONData {
			return out, badInput("inputs[0]: no data and no parameters.binary_data_size")
		}
		if data, err = decodeJSONData(in.Data, n, max(1, len(in.Shape)), in.Datatype, dt); err != nil {
			return out, err
		}
	}
	shape := make([]int, len(in.Shape))
	for i, d := range in.Shape {
		shape[i] = int(d)
	}
	out.Input = Tensor{Shape: shape, Data: data}

	binaryAll := req.Parameters.BinaryDataOutput != nil && *req.Parameters.BinaryDataOutput
	out.BinaryOutput = binaryAll
	for i, o := range req.Outputs {
		if o.Name != OutputName {
			return out, badInput("outputs[%d].name: unknown output %q; model %q has one output named %q", i, o.Name, model.Name, OutputName)
		}
		if len(o.Parameters.Classification) > 0 {
			return out, unsupported("outputs[%d].parameters.classification: the classification extension is not supported", i)
		}
		if len(o.Parameters.SharedMemoryRegion) > 0 {
			return out, unsupported("outputs[%d].parameters.shared_memory_region: the shared-memory extension is not supported", i)
		}
		if o.Parameters.BinaryData != nil {
			out.BinaryOutput = *o.Parameters.BinaryData
		}
	}
	return out, nil
}

// elementCount returns the product of shape, refusing negative dimensions,
// too many dimensions and products above maxElements without overflowing.
func elementCount(shape []int64, maxElements int64) (int64, error) {
	if len(shape) == 0 {
		return 0, badInput("inputs[0].shape: missing (a tensor needs at least one dimension)")
	}
	if len(shape) > maxRank {
		return 0, badInput("inputs[0].shape: %d dimensions, more than the limit of %d", len(shape), maxRank)
	}
	n := int64(1)
	for i, d := range shape {
		if d < 0 {
			return 0, badInput("inputs[0].shape[%d]: negative dimension %d", i, d)
		}
		if d != 0 && n > maxElements/d {
			return 0, badInput("inputs[0].shape %v: more than the limit of %d elements", shape, maxElements)
		}
		n *= d
	}
	if n > maxElements {
		return 0, badInput("inputs[0].shape %v: %d elements, more than the limit of %d", shape, n, maxElements)
	}
	return n, nil
}

// checkModelShape compares a request shape with the model's per-sample
// input shape and batch limit.
func checkModelShape(shape []int64, m ModelInfo) error {
	if m.InputShape == nil {
		return nil
	}
	match := len(shape) == len(m.InputShape)+1
	for i := 0; match && i < len(m.InputShape); i++ {
		match = shape[i+1] == int64(m.InputShape[i])
	}
	if !match {
		return badInput("inputs[0].shape %v does not match model %q input %v (the first dimension is the batch)", shape, m.Name, withBatch(m.InputShape))
	}
	if m.MaxBatch > 0 && shape[0] > int64(m.MaxBatch) {
		return failure.Errorf(failure.TooLarge, "inputs[0].shape: batch %d is larger than model %q's max_batch of %d (the host's limits on the batch and on one request's output and activations)", shape[0], m.Name, m.MaxBatch)
	}
	return nil
}

func withBatch(s []int) []int {
	return append([]int{-1}, s...)
}

// decodeBinary converts little-endian tensor bytes to FP32. Its length has
// been checked against the shape.
func decodeBinary(b []byte, datatype string) ([]float32, error) {
	switch datatype {
	case "FP32":
		out := make([]float32, len(b)/4)
		for i := range out {
			out[i] = math.Float32frombits(binary.LittleEndian.Uint32(b[4*i:]))
		}
		return out, nil
	case "FP16":
		out := make([]float32, len(b)/2)
		for i := range out {
			out[i] = halfToFloat32(binary.LittleEndian.Uint16(b[2*i:]))
		}
		return out, nil
	case "BF16":
		out := make([]float32, len(b)/2)
		for i := range out {
			out[i] = math.Float32frombits(uint32(binary.LittleEndian.Uint16(b[2*i:])) << 16)
		}
		return out, nil
	case "FP64":
		out := make([]float32, len(b)/8)
		for i := range out {
			v := math.Float64frombits(binary.LittleEndian.Uint64(b[8*i:]))
			if math.Abs(v) > math.MaxFloat32 && !math.IsInf(v, 0) {
				return nil, badInput("inputs[0] binary data element %d: %g is out of range for FP32", i, v)
			}
			out[i] = float32(v)
		}
		return out, nil
	}
	return nil, unsupported("datatype %s", datatype)
}

// halfToFloat32 widens an IEEE 754 binary16 value exactly.
func halfToFloat32(h uint16) float32 {
	sign := uint32(h>>15) << 31
	exp := uint32(h>>10) & 0x1f
	mant := uint32(h) & 0x3ff
	switch {
	case exp == 0x1f: // Inf or NaN, payload kept
		return math.Float32frombits(sign | 0xff<<23 | mant<<13)
	case exp != 0: // normal
		return math.Float32frombits(sign | (exp+112)<<23 | mant<<13)
	case mant == 0: // signed zero
		return math.Float32frombits(sign)
	default: // subnormal: mant × 2^-24
		v := float32(mant) * (1.0 / (1 << 24))
		if sign != 0 {
			v = -v
		}
		return v
	}
}

// decodeJSONData parses a JSON array of numbers, flat or nested up to
// maxNest levels, into exactly n FP32 values. The bytes have already been
// validated as JSON by encoding/json. Nothing is allocated for the values
// before the element count is known to fit the data.
func decodeJSONData(raw []byte, n int64, maxNest int, datatype string, dt dtype) ([]float32, error) {
	if t := bytes.TrimLeft(raw, " \t\r\n"); len(t) == 0 || t[0] != '[' {
		return nil, badInput("inputs[0].data: must be an array of numbers")
	}
	// Every element takes at least two bytes ("0,"), so a declared count
	// the data cannot hold is refused before allocating for it.
	if n > int64(len(raw))/2+1 {
		return nil, badInput("inputs[0].data: shape declares %d elements but data holds at most %d", n, int64(len(raw))/2+1)
	}
	out := make([]float32, 0, n)
	depth := 0
	bits := 32
	if datatype == "FP64" {
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
				return nil, badInput("inputs[0].data: nested %d deep, deeper than the %d dimensions of its shape", depth, maxNest)
			}
			i++
		case c == ']':
			depth--
			i++
		case c == '-' || (c >= '0' && c <= '9'):
			if depth == 0 {
				return nil, badInput("inputs[0].data: must be an array of numbers")
			}
			j := i + 1
			for j < len(raw) && isNumberByte(raw[j]) {
				j++
			}
			if int64(len(out)) == n {
				return nil, badInput("inputs[0].data: more than the %d elements its shape declares", n)
			}
			v, err := strconv.ParseFloat(string(raw[i:j]), bits)
			if err != nil || math.Abs(v) > dt.maxFinite {
				return nil, badInput("inputs[0].data[%d]: %s is out of range for %s", len(out), raw[i:j], datatype)
			}
			out = append(out, float32(v))
			i = j
		default:
			if depth == 0 {
				return nil, badInput("inputs[0].data: must be an array of numbers")
			}
			return nil, badInput("inputs[0].data[%d]: not a number (non-finite values need the binary data extension)", len(out))
		}
	}
	if int64(len(out)) != n {
		return nil, badInput("inputs[0].data: %d elements but its shape declares %d", len(out), n)
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
