package runtime

import (
	"fmt"
	"testing"

	"github.com/esper/kasmina-host/runtime/failure"
)

// The --layers file: every entry a declaration by the file; a wrong
// entry is refused naming its index and member.
func TestDecodeLayersFile(t *testing.T) {
	ds, err := DecodeLayersFile([]byte(`{"layers": [{"layer_name": "features_0", "num_seeds": 4, "layer_id": 17, "input_shape": [64], "output_shape": [32]},
		{"layer_name": "layer1", "num_seeds": 2}]}`))
	if err != nil {
		t.Fatal(err)
	}
	if len(ds) != 2 || ds[0].Layer != "features_0" || ds[0].By != ByFile || *ds[0].Spec.LayerID != 17 || fmt.Sprint(ds[0].Spec.InputShape, ds[0].Spec.OutputShape) != "[64] [32]" ||
		ds[1].Layer != "layer1" || ds[1].Spec.NumSeeds != 2 || ds[1].Spec.LayerID != nil {
		t.Fatalf("declarations %+v", ds)
	}
	for _, c := range []struct{ doc, want string }{
		{`{}`, `layers file: "layers" is required`},
		{`[]`, "layers file: json: cannot unmarshal array"},
		{`{"layers": [{"num_seeds": 4}]}`, "layers file: layers[0]: layer_name is required"},
		{`{"layers": [{"layer_name": "a", "num_seeds": 4}, {"layer_name": "a", "num_seeds": 2}]}`, `layers file: layers[1]: layer "a" is declared twice (also layers[0])`},
		{`{"layers": [{"layer_name": "a"}]}`, "layers file: layers[0]: num_seeds is required (1 to 64)"},
		{`{"layers": [{"layer_name": "a", "num_seeds": 4, "layer_id": -2}]}`, "layers file: layers[0]: layer_id -2: want 0 to 2147483647"},
		{`{"layers": [{"layer_name": "a", "num_seeds": 4, "shape": [1]}]}`, `layers file: json: unknown field "shape"`},
		{`{"layers": [{"layer_name": "a\u0000", "num_seeds": 4}]}`, `layers file: layers[0]: layer_name "a\x00": no control characters`},
		{`{"layers": []} {}`, "layers file: data after the JSON document"},
	} {
		_, err := DecodeLayersFile([]byte(c.doc))
		if failure.ClassOf(err) != failure.BadInput || len(fmt.Sprint(err)) < len(c.want) || fmt.Sprint(err)[:len(c.want)] != c.want {
			t.Errorf("%s: %v, want %q… (bad input)", c.doc, err, c.want)
		}
	}
}

// FuzzDecodeLayerSpec: any body is a spec Apply can check, or an error of
// class BadInput; never a panic.
func FuzzDecodeLayerSpec(f *testing.F) {
	for _, s := range []string{`{"num_seeds": 4}`, `{"num_seeds": 4, "layer_id": 17, "input_shape": [64], "output_shape": [32]}`,
		`{"num_seeds": 0}`, `{"layer_name": "x", "num_seeds": 1}`, `{"num_seeds": 1e3}`, `null`, `{"input_shape": [1, -1], "num_seeds": 2}`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, doc []byte) {
		s, err := DecodeLayerSpec(doc)
		if err != nil {
			if failure.ClassOf(err) != failure.BadInput {
				t.Fatalf("%q: %v is not bad input", doc, err)
			}
			return
		}
		if s.NumSeeds < 1 || s.NumSeeds > MaxSeeds || s.check() != nil {
			t.Fatalf("%q: accepted %+v", doc, s)
		}
	})
}

// FuzzDecodeLayersFile: any file is declarations with distinct valid
// names, or an error of class BadInput; never a panic.
func FuzzDecodeLayersFile(f *testing.F) {
	for _, s := range []string{`{"layers": [{"layer_name": "a", "num_seeds": 4}]}`, `{"layers": []}`, `{"layers": null}`,
		`{"layers": [{"layer_name": "a", "num_seeds": 4}, {"layer_name": "a", "num_seeds": 4}]}`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, doc []byte) {
		ds, err := DecodeLayersFile(doc)
		if err != nil {
			if failure.ClassOf(err) != failure.BadInput {
				t.Fatalf("%q: %v is not bad input", doc, err)
			}
			return
		}
		seen := map[string]bool{}
		for _, d := range ds {
			if seen[d.Layer] || validLayerName(d.Layer) != nil || d.By != ByFile || d.Spec.check() != nil {
				t.Fatalf("%q: accepted %+v", doc, d)
			}
			seen[d.Layer] = true
		}
	})
}
