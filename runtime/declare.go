package runtime

import (
	"bytes"
	"encoding/json"
	"fmt"

	"github.com/esper/kasmina-host/runtime/failure"
)

// DecodeLayerSpec reads a layer declaration, the body of PUT
// /v1/layers/{layer_name}: {"num_seeds", "layer_id", "input_shape",
// "output_shape"}, num_seeds required. It names the member that is
// missing, unknown or wrong; the values' ranges are Apply's to check.
func DecodeLayerSpec(doc []byte) (LayerSpec, error) {
	var body layerBody
	if err := decodeStrict(doc, &body); err != nil {
		return LayerSpec{}, failure.Errorf(failure.BadInput, "layer declaration: %v", err)
	}
	if body.Name != nil {
		return LayerSpec{}, failure.Errorf(failure.BadInput, "layer declaration: layer_name belongs in the path, not the body")
	}
	return body.spec("")
}

// layerBody is a declaration as written: num_seeds is required.
type layerBody struct {
	Name        *string `json:"layer_name,omitempty"`
	NumSeeds    *int    `json:"num_seeds"`
	LayerID     *int    `json:"layer_id"`
	InputShape  []int   `json:"input_shape"`
	OutputShape []int   `json:"output_shape"`
}

func (b *layerBody) spec(where string) (LayerSpec, error) {
	if b.NumSeeds == nil {
		return LayerSpec{}, failure.Errorf(failure.BadInput, "%snum_seeds is required (1 to %d)", where, MaxSeeds)
	}
	s := LayerSpec{NumSeeds: *b.NumSeeds, LayerID: b.LayerID, InputShape: b.InputShape, OutputShape: b.OutputShape}
	if s.NumSeeds < 1 {
		return LayerSpec{}, failure.Errorf(failure.BadInput, "%snum_seeds %d: want 1 to %d", where, s.NumSeeds, MaxSeeds)
	}
	if err := s.check(); err != nil {
		return LayerSpec{}, failure.Errorf(failure.BadInput, "%s%w", where, err)
	}
	return s, nil
}

// DecodeLayersFile reads the --layers file, {"layers": [{"layer_name":
// ..., <a PUT /v1/layers body>}, ...]}, into the declarations it makes
// (By ByFile), naming the entry and member that is wrong; a name given
// twice is refused.
func DecodeLayersFile(doc []byte) ([]DeclareLayer, error) {
	var file struct {
		Layers *[]layerBody `json:"layers"`
	}
	if err := decodeStrict(doc, &file); err != nil {
		return nil, failure.Errorf(failure.BadInput, "layers file: %v", err)
	}
	if file.Layers == nil {
		return nil, failure.Errorf(failure.BadInput, `layers file: "layers" is required (a list of {"layer_name", "num_seeds", ...})`)
	}
	seen := map[string]int{}
	out := make([]DeclareLayer, 0, len(*file.Layers))
	for i, b := range *file.Layers {
		where := fmt.Sprintf("layers[%d]: ", i)
		if b.Name == nil {
			return nil, failure.Errorf(failure.BadInput, "layers file: %slayer_name is required", where)
		}
		if err := validLayerName(*b.Name); err != nil {
			return nil, failure.Errorf(failure.BadInput, "layers file: %s%w", where, err)
		}
		if j, dup := seen[*b.Name]; dup {
			return nil, failure.Errorf(failure.BadInput, "layers file: %slayer %q is declared twice (also layers[%d])", where, *b.Name, j)
		}
		seen[*b.Name] = i
		spec, err := b.spec("layers file: " + where)
		if err != nil {
			return nil, err
		}
		out = append(out, DeclareLayer{Layer: *b.Name, Spec: spec, By: ByFile})
	}
	return out, nil
}

// decodeStrict decodes one JSON document into v, refusing unknown
// members and trailing data.
func decodeStrict(doc []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(doc))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return err
	}
	if dec.More() {
		return fmt.Errorf("data after the JSON document")
	}
	return nil
}
