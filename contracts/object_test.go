package contracts

import (
	"encoding/json"
	"errors"
	"math"
	"os"
	"reflect"
	"strings"
	"testing"
)

// kernelWith returns the bench CompiledKernel document with its
// validation_results replaced by vr (raw JSON).
func kernelWith(t testing.TB, vr string) []byte {
	t.Helper()
	doc := string(benchInputT(t, "bench_compiled_kernel.json"))
	const old = `"validation_results": {"passed": true, "max_abs_error": 0.00012}`
	if !strings.Contains(doc, old) {
		t.Fatal("bench document changed; update kernelWith")
	}
	return []byte(strings.Replace(doc, old, `"validation_results": `+vr, 1))
}

func benchInputT(t testing.TB, name string) []byte {
	t.Helper()
	data, err := os.ReadFile("testdata/" + name)
	if err != nil {
		t.Fatal(err)
	}
	return data
}

func TestObjectDecodedMembers(t *testing.T) {
	tests := []struct {
		name string
		raw  string
		want map[string]any
	}{
		{"empty", `{}`, map[string]any{}},
		{"empty with space", `{ }`, map[string]any{}},
		{"scalars keep their number kind", `{"i": 5, "f": 5.0, "s": "x", "b": false, "n": null}`,
			map[string]any{"i": int64(5), "f": 5.0, "s": "x", "b": false, "n": nil}},
		{"integer past int64 is a json.Number", `{"big": 123456789012345678901234567890}`,
			map[string]any{"big": json.Number("123456789012345678901234567890")}},
		{"last duplicate wins", `{"a": 1, "b": 2, "a": 2.5}`, map[string]any{"a": 2.5, "b": int64(2)}},
		{"escaped key matches its text", `{"\u0061b\n": [1, {"c": "\u00e9"}]}`,
			map[string]any{"ab\n": []any{int64(1), map[string]any{"c": "é"}}}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c, err := DecodeCompiledKernel(kernelWith(t, tc.raw))
			if err != nil {
				t.Fatalf("decode: %v", err)
			}
			o := c.ValidationResults
			if got := o.Map(); !reflect.DeepEqual(got, tc.want) {
				t.Fatalf("Map = %#v, want %#v", got, tc.want)
			}
			if o.Len() != len(tc.want) {
				t.Fatalf("Len = %d, want %d", o.Len(), len(tc.want))
			}
			for k, w := range tc.want {
				if v, ok := o.Get(k); !ok || !reflect.DeepEqual(v, w) {
					t.Fatalf("Get(%q) = %#v, %v; want %#v", k, v, ok, w)
				}
			}
			if v, ok := o.Get("absent"); ok || v != nil {
				t.Fatalf("Get(absent) = %#v, %v", v, ok)
			}
			if got := string(o.AppendJSON(nil)); got != tc.raw && !(tc.raw == "{}" && got == "{}") {
				t.Fatalf("AppendJSON = %s, want the text as decoded %s", got, tc.raw)
			}
		})
	}
}

func TestObjectDecodeRefusals(t *testing.T) {
	tests := []struct {
		name     string
		raw      string
		syntax   bool   // a *SyntaxError rather than a *ValidationError
		wantPath string // for a *ValidationError
	}{
		{"number beyond float64", `{"x": [1e400]}`, false, "validation_results"},
		{"not an object", `[1, 2]`, false, "validation_results"},
		{"null", `null`, false, "validation_results"},
		{"unterminated", `{"x": [1, }`, true, ""},
		{"lone surrogate", `{"x": "\ud800"}`, true, ""},
		{"bad literal", `{"x": tru}`, true, ""},
		{"too deep", strings.Repeat(`{"a":`, maxDepth+2) + "1" + strings.Repeat("}", maxDepth+2), true, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := DecodeCompiledKernel(kernelWith(t, tc.raw))
			if tc.syntax {
				if !errors.Is(err, ErrInvalidJSON) {
					t.Fatalf("err = %v, want a syntax error", err)
				}
				return
			}
			var ve *ValidationError
			if !errors.As(err, &ve) || len(ve.Fields) != 1 || ve.Fields[0].Path != tc.wantPath {
				t.Fatalf("err = %v, want one field error at %q", err, tc.wantPath)
			}
		})
	}
}

func TestObjectBuiltInGo(t *testing.T) {
	src := map[string]any{"b": 1, "a": "x"}
	o := ObjectFrom(src)
	src["c"] = true
	if o.Len() != 2 {
		t.Fatalf("ObjectFrom shares the caller's map: Len = %d", o.Len())
	}
	if got := string(o.AppendJSON(nil)); got != `{"a":"x","b":1}` {
		t.Fatalf("AppendJSON = %s, want sorted keys", got)
	}
	m := o.Map()
	m["z"] = 1
	if _, ok := o.Get("z"); ok {
		t.Fatal("Map returned the object's own map")
	}

	var zero Object
	if zero.Len() != 0 || string(zero.AppendJSON(nil)) != "{}" {
		t.Fatalf("zero Object: Len %d, JSON %s", zero.Len(), zero.AppendJSON(nil))
	}
	zero.Set("k", "v")
	if v, ok := zero.Get("k"); !ok || v != "v" {
		t.Fatalf("Set on the zero Object: Get = %v, %v", v, ok)
	}
}

func TestObjectSetOnDecoded(t *testing.T) {
	c, err := DecodeCompiledKernel(kernelWith(t, `{"z": 1, "a": 2, "z": 3}`))
	if err != nil {
		t.Fatal(err)
	}
	before := c
	c.ValidationResults.Set("m", "new")
	if got := string(c.ValidationResults.AppendJSON(nil)); got != `{"a":2,"m":"new","z":3}` {
		t.Fatalf("after Set: %s", got)
	}
	if got := string(before.ValidationResults.AppendJSON(nil)); got != `{"z": 1, "a": 2, "z": 3}` {
		t.Fatalf("Set changed a copy made before it: %s", got)
	}
	again, err := DecodeCompiledKernel(c.AppendJSON(nil))
	if err != nil {
		t.Fatalf("re-decode: %v", err)
	}
	if v, _ := again.ValidationResults.Get("m"); v != "new" {
		t.Fatalf("re-decoded m = %#v", v)
	}
}

func TestObjectValidateGoBuiltValues(t *testing.T) {
	md := NewKernelMetadata("k", "b", "n")
	md.OptimizationFlags = ObjectFrom(map[string]any{"ok": 1, "bad": math.NaN()})
	c := NewCompiledKernel("b", "ref", md)
	c.ValidationResults.Set("inf", math.Inf(1))
	var ve *ValidationError
	if err := c.Validate(); !errors.As(err, &ve) || !ve.Has("metadata.optimization_flags.bad") || !ve.Has("validation_results.inf") || len(ve.Fields) != 2 {
		t.Fatalf("Validate = %v, want errors at metadata.optimization_flags.bad and validation_results.inf", err)
	}
	if _, err := json.Marshal(c.ValidationResults); err == nil {
		t.Fatal("MarshalJSON wrote an infinity")
	}
}

func TestObjectEncodingJSON(t *testing.T) {
	var holder struct {
		O Object `json:"o"`
	}
	if err := json.Unmarshal([]byte(`{"o": {"k": [1, 2.5], "k": "last"}}`), &holder); err != nil {
		t.Fatal(err)
	}
	if v, _ := holder.O.Get("k"); v != "last" {
		t.Fatalf("Get(k) = %#v", v)
	}
	out, err := json.Marshal(holder)
	if err != nil || string(out) != `{"o":{"k":[1,2.5],"k":"last"}}` {
		t.Fatalf("Marshal = %s, %v", out, err)
	}
	prev := holder.O
	if err := json.Unmarshal([]byte(`{"o": null}`), &holder); err != nil || !reflect.DeepEqual(holder.O, prev) {
		t.Fatalf("null: err %v, object %#v (want unchanged)", err, holder.O)
	}
	for _, bad := range []string{`[1]`, `{"a": 1e999}`, `{"a": }`, `{} {}`, `nul`} {
		var o Object
		if err := o.UnmarshalJSON([]byte(bad)); err == nil {
			t.Errorf("UnmarshalJSON(%s) accepted", bad)
		} else if o.Len() != 0 {
			t.Errorf("UnmarshalJSON(%s) changed the object on error", bad)
		}
	}
}

// FuzzObject checks Object.UnmarshalJSON against the eager decoder: what
// it accepts, anyValue accepts as the same map, Get and Len agree with
// Map, and the text round-trips unchanged.
func FuzzObject(f *testing.F) {
	for _, s := range []string{`{}`, `{"a": 1, "a": 2}`, `{"x": [1.5, {"y": null}], "\u00e9": "\ud83d\ude00"}`,
		`{"n": 1e400}`, `{"big": 99999999999999999999}`, `[]`, `null`, `{"a":`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		var o Object
		err := o.UnmarshalJSON(data)
		d := newDecoder("Object", data)
		var want map[string]any
		eagerOK := false
		if d.peek() == '{' {
			v, ok := d.anyValue("", 0)
			if ok && d.finish() == nil {
				want, eagerOK = v.(map[string]any), true
			}
		}
		if d2 := newDecoder("", data); err == nil && d2.peek() == 'n' {
			return // null: no-op
		}
		if (err == nil) != eagerOK {
			t.Fatalf("lazy err %v, eager ok %v for %q", err, eagerOK, data)
		}
		if err != nil {
			return
		}
		if got := o.Map(); !reflect.DeepEqual(got, want) {
			t.Fatalf("Map = %#v, eager %#v", got, want)
		}
		if o.Len() != len(want) {
			t.Fatalf("Len = %d, want %d", o.Len(), len(want))
		}
		for k, w := range want {
			if v, ok := o.Get(k); !ok || !reflect.DeepEqual(v, w) {
				t.Fatalf("Get(%q) = %#v, want %#v", k, v, w)
			}
		}
		out := o.AppendJSON(nil)
		var again Object
		if err := again.UnmarshalJSON(out); err != nil || !reflect.DeepEqual(again, o) {
			t.Fatalf("round trip: %v, %#v vs %#v", err, again, o)
		}
	})
}
