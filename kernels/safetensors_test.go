package kernels

import (
	"bytes"
	"encoding/binary"
	"errors"
	"math"
	"strings"
	"testing"
)

// rawSafetensors assembles a file from a literal header and body.
func rawSafetensors(header string, body []byte) []byte {
	b := make([]byte, 8, 8+len(header)+len(body))
	binary.LittleEndian.PutUint64(b, uint64(len(header)))
	b = append(b, header...)
	return append(b, body...)
}

func TestWriteThenParseRoundTrips(t *testing.T) {
	tensors := []Tensor{
		F32Tensor("a.weight", []int{2, 3}, []float32{1, 2, 3, 4, 5, -6}),
		{Name: "half", DType: F16, Shape: []int{3}, Data: []byte{0x00, 0x3c, 0x00, 0xc0, 0x01, 0x00}}, // 1, -2, smallest subnormal
		{Name: "brain", DType: BF16, Shape: []int{1}, Data: []byte{0x80, 0x3f}},                       // 1.0
		{Name: "double", DType: F64, Shape: []int{}, Data: binary.LittleEndian.AppendUint64(nil, math.Float64bits(0.1))},
		{Name: "steps", DType: I64, Shape: []int{}, Data: make([]byte, 8)},
	}
	var buf bytes.Buffer
	if err := WriteSafetensors(&buf, tensors, map[string]string{"format": "x"}); err != nil {
		t.Fatal(err)
	}
	if n := binary.LittleEndian.Uint64(buf.Bytes()); n%8 != 0 {
		t.Errorf("header length %d is not padded to 8 bytes", n)
	}
	f, err := ParseSafetensors(buf.Bytes())
	if err != nil {
		t.Fatal(err)
	}
	if f.Metadata["format"] != "x" || len(f.Tensors) != len(tensors) {
		t.Fatalf("metadata %v, %d tensors", f.Metadata, len(f.Tensors))
	}
	want := map[string][]float32{
		"a.weight": {1, 2, 3, 4, 5, -6},
		"half":     {1, -2, float32(math.Ldexp(1, -24))},
		"brain":    {1},
		"double":   {0.1},
	}
	for name, w := range want {
		tt, ok := f.Tensor(name)
		if !ok {
			t.Fatalf("tensor %s missing", name)
		}
		got, err := tt.Float32s()
		if err != nil {
			t.Fatal(err)
		}
		for i := range w {
			if got[i] != w[i] {
				t.Errorf("%s[%d] = %v, want %v", name, i, got[i], w[i])
			}
		}
	}
	steps, _ := f.Tensor("steps")
	if _, err := steps.Float32s(); err == nil {
		t.Errorf("I64 tensor converted to float32")
	}
}

func TestParseSafetensorsRejectsMalformedFiles(t *testing.T) {
	f32x2 := make([]byte, 8)
	cases := []struct {
		name string
		data []byte
		want string // substring of the error
	}{
		{"shorter than 8 bytes", []byte{1, 2, 3}, "shorter than the 8-byte header length"},
		{"header length beyond file", append(binary.LittleEndian.AppendUint64(nil, 100), '{', '}'), "runs past the end"},
		{"huge header length", binary.LittleEndian.AppendUint64(nil, math.MaxUint64), "exceeds the limit"},
		{"header not JSON", rawSafetensors("[1, 2]  ", nil), "expected"},
		{"header not UTF-8", rawSafetensors("{\"\xff\":1}", nil), "not valid UTF-8"},
		{"unknown dtype", rawSafetensors(`{"x":{"dtype":"F8_E4M3","shape":[2],"data_offsets":[0,2]}}`, []byte{0, 0}), `unsupported dtype "F8_E4M3"`},
		{"negative dimension", rawSafetensors(`{"x":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}}`, f32x2), "negative dimension"},
		{"element count overflows", rawSafetensors(`{"x":{"dtype":"F32","shape":[4294967296,4294967296,4],"data_offsets":[0,8]}}`, f32x2), "overflows"},
		{"size disagrees with shape", rawSafetensors(`{"x":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}}`, f32x2), "needs 12"},
		{"offset outside buffer", rawSafetensors(`{"x":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}`, f32x2), `tensor "x": field data_offsets: end 16 is outside`},
		{"begin after end", rawSafetensors(`{"x":{"dtype":"F32","shape":[0],"data_offsets":[8,0]}}`, f32x2), "begin 8 is after end 0"},
		{"overlapping tensors", rawSafetensors(`{"x":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"y":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}`, f32x2), "overlap"},
		{"gap between tensors", rawSafetensors(`{"x":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}`, f32x2), "leaves a gap"},
		{"trailing bytes", rawSafetensors(`{"x":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}`, f32x2), "ends at offset 4 but the buffer holds 8"},
		{"duplicate tensor", rawSafetensors(`{"x":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"x":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}`, f32x2), `duplicate key "x"`},
		{"non-string metadata", rawSafetensors(`{"__metadata__":{"format":1}}`, nil), `key "format": value is a number`},
		{"metadata not an object", rawSafetensors(`{"__metadata__":"x"}`, nil), "__metadata__"},
		{"unknown tensor field", rawSafetensors(`{"x":{"dtype":"F32","shape":[1],"data_offsets":[0,4],"extra":1}}`, f32x2[:4]), `unknown field "extra"`},
		{"missing data_offsets", rawSafetensors(`{"x":{"dtype":"F32","shape":[1]}}`, f32x2[:4]), "missing field data_offsets"},
		{"content after object", rawSafetensors(`{} {}`, nil), "after the JSON object"},
		{"three offsets", rawSafetensors(`{"x":{"dtype":"F32","shape":[1],"data_offsets":[0,4,4]}}`, f32x2[:4]), "got 3 values"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := ParseSafetensors(c.data)
			if err == nil {
				t.Fatalf("parsed a malformed file")
			}
			if !errors.Is(err, ErrMalformed) {
				t.Errorf("error %v does not wrap ErrMalformed", err)
			}
			if !strings.Contains(err.Error(), c.want) {
				t.Errorf("error %q does not mention %q", err, c.want)
			}
		})
	}
}

func TestParseSafetensorsAcceptsPaddedHeaderAndEmptyFile(t *testing.T) {
	if _, err := ParseSafetensors(rawSafetensors("{}      ", nil)); err != nil {
		t.Fatalf("padded empty header: %v", err)
	}
}

func TestHalfToFloat32WidensEveryValueExactly(t *testing.T) {
	// Compare with a float64 computation of the binary16 definition.
	for h := 0; h < 1<<16; h++ {
		sign := 1.0
		if h&0x8000 != 0 {
			sign = -1
		}
		exp, mant := (h>>10)&0x1f, float64(h&0x3ff)
		var want float64
		switch exp {
		case 0x1f:
			if mant != 0 {
				if got := halfToFloat32(uint16(h)); got == got {
					t.Fatalf("%#04x: want NaN, got %v", h, got)
				}
				continue
			}
			want = math.Inf(int(sign))
		case 0:
			want = sign * mant * math.Ldexp(1, -24)
		default:
			want = sign * (1 + mant/1024) * math.Ldexp(1, exp-15)
		}
		if got := halfToFloat32(uint16(h)); float64(got) != want {
			t.Fatalf("%#04x: got %v, want %v", h, got, want)
		}
	}
}
