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

// decodedRequest is a checked inference request. When InputShm is set the
// input's values are in shared memory and Input.Data is nil: the handler
// reads them (InputType, Input.Shape's element count). Input.Data may be a
// view of the body or a pooled buffer (inputBuf, which the handler
// releases once the model has run, error or not).
type decodedRequest struct {
	inputBuf     wiretensor.FP32Buffer
	ID           string
	Input        Tensor
	BinaryOutput bool
	InputShm     *shm.Ref
	InputType    wiretensor.Datatype
	OutputShm    *shm.Ref
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
	dt, err := wiretensor.ParseDatatype("inputs[0].datatype", in.Datatype)
	if err != nil {
		return out, err
	}
	n, err := wiretensor.Count("inputs[0].shape", in.Shape, lim.maxElements)
	if err != nil {
		return out, err
	}
	if err := wiretensor.CheckShape("inputs[0].shape", in.Shape, model.Name, model.InputShape, model.MaxBatch); err != nil {
		return out, err
	}
	out.InputType = dt
	ref, inShm, err := in.Parameters.ref("inputs[0].parameters")
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
			return out, badInput("inputs[0]: give its values once: in data, in the binary part or in a shared memory region")
		case len(binPart) > 0:
			return out, badInput("the body has %d bytes after the JSON header but its input is in shared memory", len(binPart))
		case ref.ByteSize != uint64(want):
			return out, badInput("inputs[0].parameters.%s is %d bytes but shape %v of %s needs %d", shm.ParamByteSize, ref.ByteSize, in.Shape, dt, want)
		}
		out.InputShm = &ref
	case in.Parameters.BinaryDataSize != nil:
		size := *in.Parameters.BinaryDataSize
		switch {
		case hasJSONData:
			return out, badInput("inputs[0]: both data and parameters.binary_data_size are given")
		case headerLen < 0:
			return out, badInput("inputs[0].parameters.binary_data_size is set but the request has no Inference-Header-Content-Length header")
		case size != want:
			return out, badInput("inputs[0].parameters.binary_data_size is %d bytes but shape %v of %s needs %d", size, in.Shape, dt, want)
		case size > int64(len(binPart)):
			return out, badInput("inputs[0].parameters.binary_data_size %d runs past the end of the body (%d bytes of binary data after the JSON header)", size, len(binPart))
		case size < int64(len(binPart)):
			return out, badInput("the body has %d bytes after the JSON header but the binary inputs account for %d", len(binPart), size)
		}
		// FP32 is used where it lies in the body when the machine and
		// the alignment allow; else it is decoded into a pooled buffer.
		if dt == wiretensor.FP32 {
			data, _ = wiretensor.FP32View(binPart)
		}
		if data == nil {
			out.inputBuf = wiretensor.GetFP32(int(n))
			data = out.inputBuf.Data
			if err := wiretensor.Decode("inputs[0]", data, binPart, dt); err != nil {
				return out, err
			}
		}
	default:
		if len(binPart) > 0 {
			return out, badInput("the body has %d bytes after the JSON header but no input sets parameters.binary_data_size", len(binPart))
		}
		if !hasJSONData {
			return out, badInput("inputs[0]: no data, no parameters.binary_data_size and no shared memory region")
		}
		if data, err = decodeJSONData(in.Data, n, max(1, len(in.Shape)), dt); err != nil {
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
		oref, outShm, err := o.Parameters.ref("outputs[" + strconv.Itoa(i) + "].parameters")
		if err != nil {
			return out, err
		}
		if outShm {
			if out.OutputShm != nil {
				return out, badInput("outputs[%d]: the output is requested twice in shared memory", i)
			}
			out.OutputShm = &oref
		}
		if o.Parameters.BinaryData != nil {
			out.BinaryOutput = *o.Parameters.BinaryData
		}
	}
	return out, nil
}

func withBatch(s []int) []int {
	return append([]int{-1}, s...)
}

// decodeJSONData parses a JSON array of numbers, flat or nested up to
// maxNest levels, into exactly n FP32 values. The bytes have already been
// validated as JSON by encoding/json. Nothing is allocated for the values
// before the element count is known to fit the data.
func decodeJSONData(raw []byte, n int64, maxNest int, dt wiretensor.Datatype) ([]float32, error) {
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
			if err != nil || math.Abs(v) > dt.MaxFinite() {
				return nil, badInput("inputs[0].data[%d]: %s is out of range for %s", len(out), raw[i:j], dt)
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
