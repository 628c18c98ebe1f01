package kernels

import (
	"encoding/json"
	"fmt"
	"io"
)

// MarshalJSON encodes the module in the esper.module form, with every
// attribute of its type spelled out.
func (m *Module) MarshalJSON() ([]byte, error) {
	out := map[string]any{"type": m.Type}
	switch m.Type {
	case "sequential":
		layers := m.Layers
		if layers == nil {
			layers = []*Module{}
		}
		out["layers"] = layers
	case "linear":
		out["in_features"], out["out_features"], out["bias"] = m.InFeatures, m.OutFeatures, m.Bias
	case "conv2d":
		out["in_channels"], out["out_channels"] = m.InChannels, m.OutChannels
		out["kernel_size"], out["stride"] = m.KernelSize, m.Stride
		out["padding"], out["dilation"] = m.Padding, m.Dilation
		out["groups"], out["bias"] = m.Groups, m.Bias
	case "batchnorm1d", "batchnorm2d":
		out["num_features"], out["eps"], out["affine"] = m.NumFeatures, m.Eps, m.Affine
	case "layernorm":
		out["normalized_shape"], out["eps"], out["elementwise_affine"] = m.NormalizedShape, m.Eps, m.ElementwiseAffine
	case "gelu":
		out["approximate"] = m.Approximate
	case "dropout":
		out["p"] = m.P
	case "flatten":
		out["start_dim"], out["end_dim"] = m.StartDim, m.EndDim
	case "adaptive_avg_pool2d":
		size := []any{m.OutputSize[0], m.OutputSize[1]}
		for i, v := range m.OutputSize {
			if v == 0 {
				size[i] = nil
			}
		}
		out["output_size"] = size
	case "relu", "tanh", "sigmoid", "identity":
	default:
		return nil, fmt.Errorf("module type %q cannot be encoded", m.Type)
	}
	return json.Marshal(out)
}

// WriteKernel writes an esper-kernel/v1 file: the tensors (PyTorch
// state_dict names), the module graph and, when md is not nil, the embedded
// KernelMetadata (whose checksum should be nil: a file cannot hold its own
// hash). It does not check that the tensors fit the module; Load does.
func WriteKernel(w io.Writer, module *Module, tensors []Tensor, md *KernelMetadata) error {
	mod, err := json.Marshal(module)
	if err != nil {
		return fmt.Errorf("encode module: %w", err)
	}
	meta := map[string]string{MetaFormat: FormatV1, MetaModule: string(mod)}
	if md != nil {
		b, err := json.Marshal(md)
		if err != nil {
			return fmt.Errorf("encode kernel metadata: %w", err)
		}
		meta[MetaKernelMetadata] = string(b)
	}
	return WriteSafetensors(w, tensors, meta)
}
