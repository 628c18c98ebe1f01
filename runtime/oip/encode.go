package oip

import (
	"encoding/json"
	"fmt"
	"math"
	"strconv"

	"github.com/esper/kasmina-host/runtime/oip/wiretensor"
)

// inferResponse carries what encodeInferResponse writes.
type inferResponse struct {
	ModelName, ModelVersion, ID string
	Exec                        ExecInfo
	Output                      Tensor
	Binary                      bool
	// InSharedMemory: the output's values were written to a shared
	// memory region; the answer describes the tensor without them.
	InSharedMemory bool
}

// encodeInferResponse appends the response to dst. In binary mode it
// returns the length of the JSON header, which precedes the raw
// little-endian FP32 output bytes; in JSON mode headerLen is -1.
//
// JSON mode writes non-finite values as the tokens NaN, Infinity and
// -Infinity, which Python's json and rapidjson read; clients that need
// strict JSON ask for binary output.
func encodeInferResponse(dst []byte, r *inferResponse) (out []byte, headerLen int, err error) {
	n := 1
	for _, d := range r.Output.Shape {
		n *= d
	}
	if len(r.Output.Shape) == 0 || n != len(r.Output.Data) {
		return dst, 0, fmt.Errorf("backend returned output with shape %v and %d values", r.Output.Shape, len(r.Output.Data))
	}
	b := appendResponseHead(dst, r.ModelName, r.ModelVersion, r.ID)
	b = appendExecParams(b, r.Exec)
	b = append(b, `,"outputs":[{"name":"output","datatype":"FP32","shape":[`...)
	for i, d := range r.Output.Shape {
		if i > 0 {
			b = append(b, ',')
		}
		b = strconv.AppendInt(b, int64(d), 10)
	}
	b = append(b, ']')
	if r.InSharedMemory {
		return append(b, "}]}"...), -1, nil
	}
	if r.Binary {
		size := 4 * len(r.Output.Data)
		b = append(b, `,"parameters":{"binary_data_size":`...)
		b = strconv.AppendInt(b, int64(size), 10)
		b = append(b, "}}]}"...)
		headerLen = len(b) - len(dst)
		b = wiretensor.AppendFP32(b, r.Output.Data)
		return b, headerLen, nil
	}
	b = append(b, `,"data":[`...)
	for i, v := range r.Output.Data {
		if i > 0 {
			b = append(b, ',')
		}
		b = appendFloat32JSON(b, v)
	}
	b = append(b, "]}]}"...)
	return b, -1, nil
}

// appendExecParams writes where the request ran, so that a fallback is
// visible in every answer.
func appendExecParams(b []byte, e ExecInfo) []byte {
	return append(appendExecFields(b, e), '}')
}

// appendExecFields opens the response parameters with where the request
// ran; the caller closes them.
func appendExecFields(b []byte, e ExecInfo) []byte {
	b = append(b, `,"parameters":{"placed_on":`...)
	b = appendJSONString(b, e.PlacedOn)
	b = append(b, `,"executed_on":`...)
	b = appendJSONString(b, e.ExecutedOn)
	b = append(b, `,"executor":`...)
	b = appendJSONString(b, e.Executor)
	b = append(b, `,"fallback":`...)
	b = strconv.AppendBool(b, e.Fallback)
	if e.Reason != "" {
		b = append(b, `,"fallback_reason":`...)
		b = appendJSONString(b, e.Reason)
	}
	if e.QueueTime > 0 {
		b = append(b, `,"queue_ns":`...)
		b = strconv.AppendInt(b, e.QueueTime.Nanoseconds(), 10)
	}
	if e.ComputeTime > 0 {
		b = append(b, `,"compute_ns":`...)
		b = strconv.AppendInt(b, e.ComputeTime.Nanoseconds(), 10)
	}
	return b
}

func appendFloat32JSON(b []byte, v float32) []byte {
	switch {
	case v != v:
		return append(b, "NaN"...)
	case math.IsInf(float64(v), 1):
		return append(b, "Infinity"...)
	case math.IsInf(float64(v), -1):
		return append(b, "-Infinity"...)
	}
	return strconv.AppendFloat(b, float64(v), 'g', -1, 32)
}

// appendJSONString appends s as a JSON string. Plain ASCII takes the fast
// path; anything else goes through encoding/json for correct escaping.
func appendJSONString(b []byte, s string) []byte {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c < 0x20 || c == '"' || c == '\\' || c >= 0x80 || c == '<' || c == '>' || c == '&' {
			q, _ := json.Marshal(s) // a string always marshals
			return append(b, q...)
		}
	}
	b = append(b, '"')
	b = append(b, s...)
	return append(b, '"')
}

// layerResponse carries what encodeLayerResponse writes.
type layerResponse struct {
	ModelName, ModelVersion, ID string
	Exec                        ExecInfo
	Result                      *LayerResult
	// Want says which outputs the answer has, Binary which of them are
	// in the binary part, InSharedMemory which were written to a region
	// (the answer describes them without their values), by output role.
	Want, Binary, InSharedMemory [numOutputRoles]bool
}

// tensors returns the result's outputs by role.
func (r *LayerResult) tensors() [numOutputRoles]*Tensor {
	return [numOutputRoles]*Tensor{&r.Output, &r.GradInput, &r.GradDefault}
}

// encodeLayerResponse appends a layer's answer to dst: the outputs it
// has and the request wants, JSON or binary each (the binary ones after
// the JSON header, in the order listed), and the blend in the response
// parameters. headerLen is the JSON header's length when any output is
// binary, else -1.
func encodeLayerResponse(dst []byte, r *layerResponse) (out []byte, headerLen int, err error) {
	b := appendResponseHead(dst, r.ModelName, r.ModelVersion, r.ID)
	b, err = appendBlendParams(appendExecFields(b, r.Exec), &r.Result.Blend)
	if err != nil {
		return dst, 0, err
	}
	b = append(b, `},"outputs":[`...)
	var binary []*Tensor
	first := true
	for role, t := range r.Result.tensors() {
		if t.Data == nil || !r.Want[role] {
			continue
		}
		n := 1
		for _, d := range t.Shape {
			n *= d
		}
		if len(t.Shape) == 0 || n != len(t.Data) {
			return dst, 0, fmt.Errorf("backend returned %s with shape %v and %d values", outputNames[role], t.Shape, len(t.Data))
		}
		if !first {
			b = append(b, ',')
		}
		first = false
		b = append(b, `{"name":`...)
		b = appendJSONString(b, outputNames[role])
		b = append(b, `,"datatype":"FP32","shape":[`...)
		for i, d := range t.Shape {
			if i > 0 {
				b = append(b, ',')
			}
			b = strconv.AppendInt(b, int64(d), 10)
		}
		b = append(b, ']')
		if r.InSharedMemory[role] {
			b = append(b, '}')
			continue
		}
		if r.Binary[role] {
			b = append(b, `,"parameters":{"binary_data_size":`...)
			b = strconv.AppendInt(b, 4*int64(len(t.Data)), 10)
			b = append(b, "}}"...)
			binary = append(binary, t)
			continue
		}
		b = append(b, `,"data":[`...)
		for i, v := range t.Data {
			if i > 0 {
				b = append(b, ',')
			}
			b = appendFloat32JSON(b, v)
		}
		b = append(b, "]}"...)
	}
	b = append(b, "]}"...)
	if len(binary) == 0 {
		return b, -1, nil
	}
	headerLen = len(b) - len(dst)
	for _, t := range binary {
		b = wiretensor.AppendFP32(b, t.Data)
	}
	return b, headerLen, nil
}

// Names of a layer answer's parameters.
const (
	ParamDefaultApplied = "default_applied"
	ParamSeeds          = "seeds"
	ParamAlphaTotal     = "alpha_total"
	ParamAlphaScale     = "alpha_scale"
)

// SeedsParam is the "seeds" response parameter: the contributing seeds as
// a JSON array in a string (KServe's parameters are scalars).
func SeedsParam(seeds []LayerSeed) (string, error) {
	if seeds == nil {
		seeds = []LayerSeed{}
	}
	b, err := json.Marshal(seeds)
	if err != nil {
		return "", fmt.Errorf("encoding the seeds: %w", err)
	}
	return string(b), nil
}

// appendBlendParams writes a layer's blend into the open response
// parameters.
func appendBlendParams(b []byte, bl *LayerBlend) ([]byte, error) {
	seeds, err := SeedsParam(bl.Seeds)
	if err != nil {
		return b, err
	}
	if bl.ForwardID != "" {
		b = append(b, `,"`+ParamForwardID+`":`...)
		b = appendJSONString(b, bl.ForwardID)
	}
	b = append(b, `,"`+ParamDefaultApplied+`":`...)
	b = strconv.AppendBool(b, bl.DefaultApplied)
	b = append(b, `,"`+ParamSeeds+`":`...)
	b = appendJSONString(b, seeds)
	b = append(b, `,"`+ParamAlphaTotal+`":`...)
	b = strconv.AppendFloat(b, bl.AlphaTotal, 'g', -1, 64)
	b = append(b, `,"`+ParamAlphaScale+`":`...)
	b = strconv.AppendFloat(b, bl.AlphaScale, 'g', -1, 64)
	return b, nil
}

// appendResponseHead opens an inference answer: the model's name and
// version and, when the request had one, its id.
func appendResponseHead(dst []byte, model, version, id string) []byte {
	b := append(dst, `{"model_name":`...)
	b = appendJSONString(b, model)
	b = append(b, `,"model_version":`...)
	b = appendJSONString(b, version)
	if id != "" {
		b = append(b, `,"id":`...)
		b = appendJSONString(b, id)
	}
	return b
}
