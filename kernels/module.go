package kernels

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math"
	"sort"
	"strings"
)

// Limits on the module graph, applied while parsing.
const (
	// MaxModules bounds the number of modules (including sequentials).
	MaxModules = 4096
	// MaxDepth bounds the nesting of sequentials.
	MaxDepth = 32
)

// Module is one node of the esper.module graph, mirroring a torch.nn module.
// Only the attributes of its Type are meaningful; the parser fills defaults
// as PyTorch's constructors do.
type Module struct {
	Type string

	// sequential
	Layers []*Module

	// linear
	InFeatures, OutFeatures int
	// linear, conv2d
	Bias bool

	// conv2d
	InChannels, OutChannels int
	KernelSize, Stride      [2]int
	Padding, Dilation       [2]int
	Groups                  int

	// batchnorm1d, batchnorm2d
	NumFeatures int
	Affine      bool
	// batchnorm*, layernorm
	Eps float64

	// layernorm
	NormalizedShape   []int
	ElementwiseAffine bool

	// gelu: "none" or "tanh"
	Approximate string

	// dropout
	P float64

	// flatten
	StartDim, EndDim int

	// adaptive_avg_pool2d; 0 means "same as the input" (PyTorch's None)
	OutputSize [2]int
}

// moduleAttrs lists the attributes each type accepts besides "type".
var moduleAttrs = map[string][]string{
	"sequential":          {"layers"},
	"linear":              {"in_features", "out_features", "bias"},
	"conv2d":              {"in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation", "groups", "bias"},
	"batchnorm1d":         {"num_features", "eps", "affine"},
	"batchnorm2d":         {"num_features", "eps", "affine"},
	"layernorm":           {"normalized_shape", "eps", "elementwise_affine"},
	"relu":                nil,
	"tanh":                nil,
	"sigmoid":             nil,
	"identity":            nil,
	"gelu":                {"approximate"},
	"dropout":             {"p"},
	"flatten":             {"start_dim", "end_dim"},
	"adaptive_avg_pool2d": {"output_size"},
}

// ParseModule parses the JSON module graph of an esper.module metadata entry.
// The root must be a sequential. Errors name the module path ("layers.2") and
// the attribute that is wrong.
func ParseModule(data []byte) (*Module, error) {
	count := 0
	m, err := parseModule(data, "root", 0, &count)
	if err != nil {
		return nil, fmt.Errorf("%w: esper.module: %v", ErrMalformed, err)
	}
	if m.Type != "sequential" {
		return nil, fmt.Errorf("%w: esper.module: root is %s, want sequential", ErrMalformed, quote(m.Type))
	}
	return m, nil
}

type attrs struct {
	path string
	raw  map[string]json.RawMessage
}

func (a attrs) has(key string) bool { _, ok := a.raw[key]; return ok }

func (a attrs) int(key string, def int, required bool) (int, error) {
	raw, ok := a.raw[key]
	if !ok {
		if required {
			return 0, fmt.Errorf("%s: missing attribute %s", a.path, key)
		}
		return def, nil
	}
	return parseInt(raw, a.path+"."+key)
}

func parseInt(raw json.RawMessage, where string) (int, error) {
	var n json.Number
	if t := bytes.TrimSpace(raw); len(t) == 0 || t[0] == '"' || json.Unmarshal(t, &n) != nil {
		return 0, fmt.Errorf("%s: want an integer, got %s", where, quoteRaw(raw))
	}
	v, err := n.Int64()
	if err != nil || v > math.MaxInt32 || v < math.MinInt32 {
		return 0, fmt.Errorf("%s: want an integer in int32 range, got %s", where, quoteRaw(raw))
	}
	return int(v), nil
}

func (a attrs) bool(key string, def bool) (bool, error) {
	raw, ok := a.raw[key]
	if !ok {
		return def, nil
	}
	var b bool
	if err := json.Unmarshal(raw, &b); err != nil {
		return false, fmt.Errorf("%s.%s: want a boolean, got %s", a.path, key, quoteRaw(raw))
	}
	return b, nil
}

func (a attrs) float(key string, def float64) (float64, error) {
	raw, ok := a.raw[key]
	if !ok {
		return def, nil
	}
	var f float64
	if err := json.Unmarshal(raw, &f); err != nil {
		return 0, fmt.Errorf("%s.%s: want a number, got %s", a.path, key, quoteRaw(raw))
	}
	return f, nil
}

// pair reads an attribute given as an integer or a list of two integers.
// allowNull lets list elements be null (returned as 0).
func (a attrs) pair(key string, def [2]int, required, allowNull bool) ([2]int, error) {
	raw, ok := a.raw[key]
	if !ok {
		if required {
			return def, fmt.Errorf("%s: missing attribute %s", a.path, key)
		}
		return def, nil
	}
	where := a.path + "." + key
	if v, err := parseInt(raw, where); err == nil {
		return [2]int{v, v}, nil
	}
	var list []json.RawMessage
	if err := json.Unmarshal(raw, &list); err != nil || len(list) != 2 {
		return def, fmt.Errorf("%s: want an integer or a list of two integers, got %s", where, quoteRaw(raw))
	}
	var out [2]int
	for i, r := range list {
		if allowNull && string(bytes.TrimSpace(r)) == "null" {
			continue
		}
		v, err := parseInt(r, fmt.Sprintf("%s[%d]", where, i))
		if err != nil {
			return def, err
		}
		out[i] = v
	}
	return out, nil
}

func parseModule(data []byte, path string, depth int, count *int) (*Module, error) {
	if depth > MaxDepth {
		return nil, fmt.Errorf("%s: sequentials nested deeper than %d", path, MaxDepth)
	}
	*count++
	if *count > MaxModules {
		return nil, fmt.Errorf("more than %d modules", MaxModules)
	}
	var raw map[string]json.RawMessage
	if err := json.Unmarshal(data, &raw); err != nil {
		return nil, fmt.Errorf("%s: want a JSON object: %s", path, jsonError(err))
	}
	if raw == nil {
		return nil, fmt.Errorf("%s: want a JSON object, got null", path)
	}
	typRaw, ok := raw["type"]
	if !ok {
		return nil, fmt.Errorf("%s: missing attribute type", path)
	}
	var typ string
	if err := json.Unmarshal(typRaw, &typ); err != nil {
		return nil, fmt.Errorf("%s.type: want a string, got %s", path, quoteRaw(typRaw))
	}
	allowed, known := moduleAttrs[typ]
	if !known {
		return nil, fmt.Errorf("%s: unknown module type %s", path, quote(typ))
	}
	var unknown []string
	for k := range raw {
		if k == "type" {
			continue
		}
		found := false
		for _, a := range allowed {
			if a == k {
				found = true
				break
			}
		}
		if !found {
			unknown = append(unknown, k)
		}
	}
	if len(unknown) > 0 {
		sort.Strings(unknown)
		return nil, fmt.Errorf("%s (%s): unknown attribute %s", path, typ, strings.Join(unknown, ", "))
	}
	a := attrs{path: path + "(" + typ + ")", raw: raw}
	m := &Module{Type: typ}
	var err error
	switch typ {
	case "sequential":
		lr, ok := raw["layers"]
		if !ok {
			return nil, fmt.Errorf("%s: missing attribute layers", a.path)
		}
		var layers []json.RawMessage
		if err := json.Unmarshal(lr, &layers); err != nil {
			return nil, fmt.Errorf("%s.layers: want a list of modules", a.path)
		}
		for i, l := range layers {
			child, err := parseModule(l, fmt.Sprintf("%s.layers[%d]", path, i), depth+1, count)
			if err != nil {
				return nil, err
			}
			m.Layers = append(m.Layers, child)
		}
	case "linear":
		if m.InFeatures, err = a.int("in_features", 0, true); err != nil {
			return nil, err
		}
		if m.OutFeatures, err = a.int("out_features", 0, true); err != nil {
			return nil, err
		}
		if m.Bias, err = a.bool("bias", true); err != nil {
			return nil, err
		}
		if m.InFeatures < 1 || m.OutFeatures < 1 {
			return nil, fmt.Errorf("%s: in_features %d and out_features %d must be positive", a.path, m.InFeatures, m.OutFeatures)
		}
	case "conv2d":
		if m.InChannels, err = a.int("in_channels", 0, true); err != nil {
			return nil, err
		}
		if m.OutChannels, err = a.int("out_channels", 0, true); err != nil {
			return nil, err
		}
		if m.KernelSize, err = a.pair("kernel_size", [2]int{}, true, false); err != nil {
			return nil, err
		}
		if m.Stride, err = a.pair("stride", [2]int{1, 1}, false, false); err != nil {
			return nil, err
		}
		if m.Padding, err = a.pair("padding", [2]int{0, 0}, false, false); err != nil {
			return nil, err
		}
		if m.Dilation, err = a.pair("dilation", [2]int{1, 1}, false, false); err != nil {
			return nil, err
		}
		if m.Groups, err = a.int("groups", 1, false); err != nil {
			return nil, err
		}
		if m.Bias, err = a.bool("bias", true); err != nil {
			return nil, err
		}
		switch {
		case m.InChannels < 1 || m.OutChannels < 1:
			return nil, fmt.Errorf("%s: in_channels %d and out_channels %d must be positive", a.path, m.InChannels, m.OutChannels)
		case m.KernelSize[0] < 1 || m.KernelSize[1] < 1:
			return nil, fmt.Errorf("%s: kernel_size %v must be positive", a.path, m.KernelSize)
		case m.Stride[0] < 1 || m.Stride[1] < 1:
			return nil, fmt.Errorf("%s: stride %v must be positive", a.path, m.Stride)
		case m.Padding[0] < 0 || m.Padding[1] < 0:
			return nil, fmt.Errorf("%s: padding %v must not be negative", a.path, m.Padding)
		case m.Dilation[0] < 1 || m.Dilation[1] < 1:
			return nil, fmt.Errorf("%s: dilation %v must be positive", a.path, m.Dilation)
		case m.Groups < 1 || m.InChannels%m.Groups != 0 || m.OutChannels%m.Groups != 0:
			return nil, fmt.Errorf("%s: groups %d must be positive and divide in_channels %d and out_channels %d", a.path, m.Groups, m.InChannels, m.OutChannels)
		}
	case "batchnorm1d", "batchnorm2d":
		if m.NumFeatures, err = a.int("num_features", 0, true); err != nil {
			return nil, err
		}
		if m.Eps, err = a.float("eps", 1e-5); err != nil {
			return nil, err
		}
		if m.Affine, err = a.bool("affine", true); err != nil {
			return nil, err
		}
		if m.NumFeatures < 1 {
			return nil, fmt.Errorf("%s: num_features %d must be positive", a.path, m.NumFeatures)
		}
		if !(m.Eps >= 0) {
			return nil, fmt.Errorf("%s: eps %v must not be negative", a.path, m.Eps)
		}
	case "layernorm":
		ns, ok := raw["normalized_shape"]
		if !ok {
			return nil, fmt.Errorf("%s: missing attribute normalized_shape", a.path)
		}
		if v, err := parseInt(ns, a.path+".normalized_shape"); err == nil {
			m.NormalizedShape = []int{v}
		} else {
			var list []json.RawMessage
			if err := json.Unmarshal(ns, &list); err != nil || len(list) == 0 || len(list) > MaxRank {
				return nil, fmt.Errorf("%s.normalized_shape: want an integer or a non-empty list of integers, got %s", a.path, quoteRaw(ns))
			}
			for i, r := range list {
				v, err := parseInt(r, fmt.Sprintf("%s.normalized_shape[%d]", a.path, i))
				if err != nil {
					return nil, err
				}
				m.NormalizedShape = append(m.NormalizedShape, v)
			}
		}
		for i, d := range m.NormalizedShape {
			if d < 1 {
				return nil, fmt.Errorf("%s.normalized_shape[%d]: %d must be positive", a.path, i, d)
			}
		}
		if m.Eps, err = a.float("eps", 1e-5); err != nil {
			return nil, err
		}
		if m.ElementwiseAffine, err = a.bool("elementwise_affine", true); err != nil {
			return nil, err
		}
		if !(m.Eps >= 0) {
			return nil, fmt.Errorf("%s: eps %v must not be negative", a.path, m.Eps)
		}
	case "gelu":
		m.Approximate = "none"
		if r, ok := raw["approximate"]; ok {
			if err := json.Unmarshal(r, &m.Approximate); err != nil || (m.Approximate != "none" && m.Approximate != "tanh") {
				return nil, fmt.Errorf("%s.approximate: want \"none\" or \"tanh\", got %s", a.path, quoteRaw(r))
			}
		}
	case "dropout":
		if m.P, err = a.float("p", 0.5); err != nil {
			return nil, err
		}
		if !(m.P >= 0 && m.P <= 1) {
			return nil, fmt.Errorf("%s: p %v must be in [0, 1]", a.path, m.P)
		}
	case "flatten":
		if m.StartDim, err = a.int("start_dim", 1, false); err != nil {
			return nil, err
		}
		if m.EndDim, err = a.int("end_dim", -1, false); err != nil {
			return nil, err
		}
	case "adaptive_avg_pool2d":
		if m.OutputSize, err = a.pair("output_size", [2]int{}, true, true); err != nil {
			return nil, err
		}
		if m.OutputSize[0] < 0 || m.OutputSize[1] < 0 {
			return nil, fmt.Errorf("%s: output_size %v must not be negative", a.path, m.OutputSize)
		}
		if a.has("output_size") && string(bytes.TrimSpace(raw["output_size"])) != "null" {
			// An explicit 0 is not PyTorch's None; refuse it.
			var list []json.RawMessage
			if json.Unmarshal(raw["output_size"], &list) == nil {
				for i, r := range list {
					if string(bytes.TrimSpace(r)) != "null" && m.OutputSize[i] == 0 {
						return nil, fmt.Errorf("%s: output_size[%d] must be positive", a.path, i)
					}
				}
			} else if m.OutputSize[0] == 0 {
				return nil, fmt.Errorf("%s: output_size must be positive", a.path)
			}
		}
	}
	return m, nil
}
