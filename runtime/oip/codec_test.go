package oip

import (
	"encoding/binary"
	"encoding/json"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/esper/kasmina-host/runtime/failure"
	"github.com/esper/kasmina-host/runtime/oip/wiretensor"
)

var fuzzModel = ModelInfo{Name: "m", InputShape: []int{4}}

var fuzzLimits = limits{maxElements: 1 << 16, maxJSONDepth: DefaultMaxJSONDepth}

// checkDecoded holds for every request the decoder accepts, and every
// refusal is classified.
func checkDecoded(t *testing.T, d decodedRequest, err error) {
	if err != nil {
		if c := failure.ClassOf(err); c != failure.BadInput && c != failure.Unsupported {
			t.Fatalf("unclassified error: %v", err)
		}
		return
	}
	in := d.input()
	n := 1
	for _, s := range in.Tensor.Shape {
		n *= s
	}
	switch {
	case in.Shm != nil:
		// The values are read from the region later, for exactly the
		// bytes the shape needs.
		if in.Tensor.Data != nil || in.Shm.ByteSize != uint64(n*in.Type.Size()) {
			t.Fatalf("accepted shape %v of %v in %d bytes of shared memory (and %d values)", in.Tensor.Shape, in.Type, in.Shm.ByteSize, len(in.Tensor.Data))
		}
	case n != len(in.Tensor.Data):
		t.Fatalf("accepted shape %v with %d values", in.Tensor.Shape, len(in.Tensor.Data))
	}
	if len(in.Tensor.Shape) != 2 || in.Tensor.Shape[1] != 4 {
		t.Fatalf("accepted shape %v for a model of input [-1 4]", in.Tensor.Shape)
	}
}

func FuzzDecodeInferJSON(f *testing.F) {
	for _, s := range []string{
		`{"inputs":[{"name":"input","shape":[1,4],"datatype":"FP32","data":[1,2,3,4]}]}`,
		`{"id":"x","inputs":[{"name":"input","shape":[2,4],"datatype":"FP64","data":[[1,2,3,4],[5,6,7,8]]}],"outputs":[{"name":"output","parameters":{"binary_data":true}}]}`,
		`{"inputs":[{"name":"input","shape":[1,4],"datatype":"FP16","data":[0.5,-1e-3,65504,0]}],"parameters":{"binary_data_output":true}}`,
		`{"inputs":[{"name":"input","shape":[0,4],"datatype":"FP32","data":[]}]}`,
		`{"inputs":[{"name":"input","shape":[1,4],"datatype":"INT8","data":[1,2,3,4]}]}`,
		`{"inputs":[{"name":"input","shape":[1,4],"datatype":"FP32","data":[[[1]]]}]}`,
		`{"inputs":[{"name":"input","shape":[4611686018427387904,4],"datatype":"FP32","data":[1]}]}`,
		`{"inputs":[{"name":"input","shape":[1,4],"datatype":"FP32","data":[1e39,"a",null,{}]}]}`,
		`[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]`,
		`{"inputs":[{"name":"input","shape":[1,4],"datatype":"FP32","data":[1,2,3,4]}],"x":"\"[[[["}`,
		`{"inputs":[{"name":"input","shape":[1,4],"datatype":"FP32","parameters":{"shared_memory_region":"r","shared_memory_byte_size":16,"shared_memory_offset":8}}],"outputs":[{"name":"output","parameters":{"shared_memory_region":"o","shared_memory_byte_size":16}}]}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		d, err := decodeInferRequest(body, -1, fuzzModel, fuzzLimits)
		checkDecoded(t, d, err)
	})
}

func FuzzDecodeInferBinary(f *testing.F) {
	hdr := func(dt string, size int) []byte {
		return fmt.Appendf(nil, `{"inputs":[{"name":"input","shape":[1,4],"datatype":%q,"parameters":{"binary_data_size":%d}}],"parameters":{"binary_data_output":true}}`, dt, size)
	}
	f.Add(hdr("FP32", 16), make([]byte, 16), int64(0))
	f.Add(hdr("FP16", 8), []byte{0, 0x3c, 0, 0xc0, 1, 0, 0, 0x7c}, int64(0))
	f.Add(hdr("BF16", 8), make([]byte, 8), int64(0))
	f.Add(hdr("FP64", 32), make([]byte, 32), int64(0))
	f.Add(hdr("FP32", 16), make([]byte, 15), int64(0))
	f.Add(hdr("FP32", 12), make([]byte, 12), int64(0))
	f.Add(hdr("FP32", 16), make([]byte, 16), int64(-7))
	f.Add(hdr("FP32", -16), make([]byte, 16), int64(3))
	f.Fuzz(func(t *testing.T, header, bin []byte, skew int64) {
		body := append(append([]byte{}, header...), bin...)
		// skew moves the declared header length off the true one, as a
		// client with a wrong Inference-Header-Content-Length would.
		hl := int64(len(header)) + skew%64
		if hl < 0 {
			hl = -1
		}
		d, err := decodeInferRequest(body, hl, fuzzModel, fuzzLimits)
		checkDecoded(t, d, err)
	})
}

func TestJSONOutputRoundTripsEveryFloat32Exactly(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	data := make([]float32, 2000)
	for i := range data {
		for {
			data[i] = math.Float32frombits(rng.Uint32())
			if !math.IsNaN(float64(data[i])) && !math.IsInf(float64(data[i]), 0) {
				break
			}
		}
	}
	data[0], data[1], data[2] = 0, math.SmallestNonzeroFloat32, math.MaxFloat32
	b, hl, err := encodeInferResponse(nil, &inferResponse{ModelName: "m\"<x>", ModelVersion: "1", ID: "é", Output: Tensor{Shape: []int{1, len(data)}, Data: data}})
	if err != nil || hl != -1 {
		t.Fatalf("encode: %v %d", err, hl)
	}
	var a struct {
		ModelName string `json:"model_name"`
		ID        string `json:"id"`
		Outputs   []struct {
			Data []string `json:"data"`
		} `json:"outputs"`
	}
	// Decode numbers as text so that the FP32 parse is the one checked.
	var raw struct {
		Outputs []struct {
			Data []json.Number `json:"data"`
		} `json:"outputs"`
	}
	if err := json.Unmarshal(b, &raw); err != nil {
		t.Fatalf("answer is not JSON: %v", err)
	}
	_ = json.Unmarshal(b, &a)
	if a.ModelName != "m\"<x>" || a.ID != "é" {
		t.Fatalf("strings not escaped right: %q %q", a.ModelName, a.ID)
	}
	for i, n := range raw.Outputs[0].Data {
		v, err := strconv.ParseFloat(string(n), 32)
		if err != nil || float32(v) != data[i] {
			t.Fatalf("data[%d] = %s, want %v", i, n, data[i])
		}
	}
}

func TestBinaryOutputLayout(t *testing.T) {
	out := Tensor{Shape: []int{1, 2}, Data: []float32{1.5, float32(math.Inf(-1))}}
	b, hl, err := encodeInferResponse(nil, &inferResponse{ModelName: "m", ModelVersion: "1", Output: out, Binary: true})
	if err != nil {
		t.Fatal(err)
	}
	want := `{"model_name":"m","model_version":"1","parameters":{"placed_on":"","executed_on":"","executor":"","fallback":false},"outputs":[{"name":"output","datatype":"FP32","shape":[1,2],"parameters":{"binary_data_size":8}}]}`
	if string(b[:hl]) != want {
		t.Fatalf("header\n%s\nwant\n%s", b[:hl], want)
	}
	tail := b[hl:]
	if len(tail) != 8 || binary.LittleEndian.Uint32(tail) != math.Float32bits(1.5) || binary.LittleEndian.Uint32(tail[4:]) != 0xff800000 {
		t.Fatalf("tail % x", tail)
	}
}

func TestDepthCheckIgnoresBracketsInStrings(t *testing.T) {
	doc := `{"a":"` + strings.Repeat("[", 100) + `\"` + `","b":[[1]]}`
	if err := checkJSONDepth([]byte(doc), 3); err != nil {
		t.Fatalf("brackets in a string counted: %v", err)
	}
	if err := checkJSONDepth([]byte(`{"b":[[[1]]]}`), 3); err == nil {
		t.Fatal("depth 4 accepted with a limit of 3")
	}
}

// benchCase builds one request and the answer's tensor for the codec
// benchmark.
func benchCase(b *testing.B, batch, width int, bin bool) (body []byte, headerLen int64, model ModelInfo) {
	b.Helper()
	rng := rand.New(rand.NewPCG(3, 4))
	data := make([]float32, batch*width)
	for i := range data {
		data[i] = rng.Float32()*2 - 1
	}
	model = ModelInfo{Name: "bench", InputShape: []int{width}}
	if bin {
		raw := wiretensor.AppendFP32(nil, data)
		hdr := fmt.Sprintf(`{"inputs":[{"name":"input","shape":[%d,%d],"datatype":"FP32","parameters":{"binary_data_size":%d}}],"parameters":{"binary_data_output":true}}`, batch, width, len(raw))
		return append([]byte(hdr), raw...), int64(len(hdr)), model
	}
	var sb strings.Builder
	fmt.Fprintf(&sb, `{"inputs":[{"name":"input","shape":[%d,%d],"datatype":"FP32","data":[`, batch, width)
	for i, v := range data {
		if i > 0 {
			sb.WriteByte(',')
		}
		sb.WriteString(strconv.FormatFloat(float64(v), 'g', -1, 32))
	}
	sb.WriteString("]}]}")
	return []byte(sb.String()), -1, model
}

// BenchmarkInferCodec measures the HTTP layer's own work per request:
// decoding the request and encoding an answer of the same size, without
// the backend and without the network.
func BenchmarkInferCodec(b *testing.B) {
	for _, mode := range []string{"json", "binary"} {
		for _, sz := range [][2]int{{1, 64}, {32, 512}} {
			b.Run(fmt.Sprintf("%s/%dx%d", mode, sz[0], sz[1]), func(b *testing.B) {
				body, hl, model := benchCase(b, sz[0], sz[1], mode == "binary")
				lim := limits{maxElements: DefaultMaxElements, maxJSONDepth: DefaultMaxJSONDepth}
				var out []byte
				b.SetBytes(int64(len(body)))
				b.ReportAllocs()
				for b.Loop() {
					d, err := decodeInferRequest(body, hl, model, lim)
					if err != nil {
						b.Fatal(err)
					}
					out, _, err = encodeInferResponse(out[:0], &inferResponse{ModelName: "bench", ModelVersion: "1", Output: d.input().Tensor, Binary: d.BinaryOutput[roleOutput]})
					if err != nil {
						b.Fatal(err)
					}
				}
			})
		}
	}
}

var fuzzLayer = ModelInfo{Name: "L", Layer: true, InputShape: []int{4}, OutputShape: []int{3}, MaxBatch: 8}

// FuzzDecodeLayerRequest: a layer's request (input, default, grad_output,
// the kept-forward parameters, the binary part shared in order) is
// accepted only with every given tensor whole and shaped as the layer
// takes it, and refused with a classified error otherwise.
func FuzzDecodeLayerRequest(f *testing.F) {
	hdr := `{"inputs":[{"name":"input","shape":[2,4],"datatype":"FP32","parameters":{"binary_data_size":32}},` +
		`{"name":"default","shape":[2,3],"datatype":"FP32","parameters":{"binary_data_size":24}},` +
		`{"name":"grad_output","shape":[2,3],"datatype":"FP16","parameters":{"binary_data_size":12}}],"parameters":{"keep_forward":true}}`
	f.Add([]byte(hdr), make([]byte, 68))
	f.Add([]byte(`{"inputs":[{"name":"grad_output","shape":[1,3],"datatype":"FP32","data":[1,2,3]}],"parameters":{"forward_id":"f-1","retain_forward":true},"outputs":[{"name":"grad_input"}]}`), []byte(nil))
	f.Add([]byte(`{"inputs":[{"name":"input","shape":[1,4],"datatype":"FP32","data":[1,2,3,4]},{"name":"default","shape":[2,3],"datatype":"FP32","data":[1,2,3,4,5,6]}]}`), []byte(nil))
	f.Add([]byte(`{"inputs":[{"name":"input","shape":[1,4],"datatype":"FP32","data":[1,2,3,4]},{"name":"input","shape":[1,4],"datatype":"FP32","data":[1,2,3,4]}]}`), []byte(nil))
	f.Fuzz(func(t *testing.T, header, bin []byte) {
		hl := int64(-1)
		body := header
		if len(bin) > 0 {
			hl = int64(len(header))
			body = append(slices.Clone(header), bin...)
		}
		d, err := decodeInferRequest(body, hl, fuzzLayer, fuzzLimits)
		if err != nil {
			if c := failure.ClassOf(err); c != failure.BadInput && c != failure.Unsupported {
				t.Fatalf("unclassified error: %v", err)
			}
			return
		}
		if !d.input().Given && d.ForwardID == "" {
			t.Fatal("accepted a request with neither input nor forward_id")
		}
		for r, w := range d.Inputs {
			if !w.Given {
				continue
			}
			n := 1
			for _, s := range w.Tensor.Shape {
				n *= s
			}
			if w.Shm == nil && n != len(w.Tensor.Data) {
				t.Fatalf("%s: accepted shape %v with %d values", inputNames[r], w.Tensor.Shape, len(w.Tensor.Data))
			}
			if !d.input().Given {
				continue // the backward of a kept forward: the runtime checks it against that forward
			}
			want := fuzzLayer.OutputShape
			if r == roleInput {
				want = fuzzLayer.InputShape
			}
			if !slices.Equal(w.Tensor.Shape[1:], want) {
				t.Fatalf("%s: accepted shape %v for a per-sample shape %v", inputNames[r], w.Tensor.Shape, want)
			}
			if in := d.input(); w.Tensor.Shape[0] != in.Tensor.Shape[0] {
				t.Fatalf("%s: accepted batch %d with an input of batch %d", inputNames[r], w.Tensor.Shape[0], in.Tensor.Shape[0])
			}
		}
	})
}
