package oip

import (
	"encoding/json"
	"reflect"
	"strconv"
	"strings"
	"testing"

	"github.com/esper/kasmina-host/runtime/oip/wiretensor"
)

// scanSeeds are documents for the fast path: those it takes and those it
// must leave to encoding/json.
var scanSeeds = []string{
	`{"inputs":[{"name":"input","shape":[1,4],"datatype":"FP32","data":[1,2,3,4]}]}`,
	`{"id":"x","inputs":[{"name":"input","shape":[2,4],"datatype":"FP64","data":[[1,2,3,4],[5,6,7,8]]}],"outputs":[{"name":"output","parameters":{"binary_data":true}}]}`,
	`{"inputs":[{"name":"input","shape":[1,4],"datatype":"FP32","parameters":{"binary_data_size":16}}],"parameters":{"binary_data_output":true}}`,
	`{"inputs":[{"name":"input","shape":[1,4],"datatype":"FP32","parameters":{"shared_memory_region":"r","shared_memory_byte_size":16,"shared_memory_offset":8}}],"outputs":[{"name":"output","parameters":{"shared_memory_region":"o","shared_memory_byte_size":16}}]}`,
	`{"parameters":{"keep_forward":true,"forward_id":"f","retain_forward":false},"inputs":[],"outputs":[]}`,
	` { "inputs" : [ { "name" : "input" , "shape" : [ 0 , 4 ] , "datatype" : "FP32" , "data" : [ ] } ] } `,
	`{"inputs":[{"name":"input","shape":[1,4],"datatype":"FP32","data":[-0,0.5e-3,1E+2,-12.75]}]}`,
	// For encoding/json: case-folded, repeated and unknown keys, null,
	// escapes, non-ASCII, numbers an int64 field refuses, malformed JSON.
	`{"Inputs":[{"name":"input","shape":[1,4],"datatype":"FP32","data":[1,2,3,4]}]}`,
	`{"inputs":[{"name":"input","name":"x","shape":[1,4],"datatype":"FP32","data":[1,2,3,4]}]}`,
	`{"inputs":[{"name":"input","shape":[1,4],"datatype":"FP32","data":[1,2,3,4]}],"x":"\"[[[["}`,
	`{"id":null,"inputs":[{"name":"input","shape":[1,4],"datatype":"FP32","data":[1,2,3,4]}]}`,
	`{"id":"\u00e9","inputs":[{"name":"in\put","shape":[1,4],"datatype":"FP32","data":[1,2,3,4]}]}`,
	`{"id":"é","inputs":[]}`,
	`{"inputs":[{"name":"input","shape":[1.0,4],"datatype":"FP32","data":[1,2,3,4]}]}`,
	`{"inputs":[{"name":"input","shape":[1,99999999999999999999],"datatype":"FP32","data":[1]}]}`,
	`{"inputs":[{"name":"input","shape":[1,4],"datatype":"FP32","data":[1,,2]}]}`,
	`{"inputs":[{"name":"input","shape":[1,4],"datatype":"FP32","data":[01,.5,1.,+1]}]}`,
	`{"inputs":[{"name":"input","shape":[1,4],"datatype":"FP32","data":[1e39,"a",null,{}]}]}`,
	`{"inputs":[]}x`,
	`{"outputs":[{"name":"output","parameters":{"classification":3}}]}`,
	`[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]`,
}

// TestScanInferRequestTakesPlainRequests: the documents clients send take
// the fast path (else it saves nothing), and what it fills is what
// json.Unmarshal fills.
func TestScanInferRequestTakesPlainRequests(t *testing.T) {
	for i, doc := range scanSeeds[:7] {
		req, ok := scanInferRequest([]byte(doc), DefaultMaxJSONDepth)
		if !ok {
			t.Errorf("seed %d: the fast path refused %s", i, doc)
			continue
		}
		var want inferRequest
		if err := json.Unmarshal([]byte(doc), &want); err != nil {
			t.Fatalf("seed %d: %v", i, err)
		}
		if !reflect.DeepEqual(req, want) {
			t.Errorf("seed %d: fast path %+v, encoding/json %+v", i, req, want)
		}
	}
}

// TestScanInferRequestLeavesTheRestToEncodingJSON: every document whose
// meaning or error is encoding/json's business, and one nested past the
// depth limit, is refused by the fast path, so that the slow path answers
// exactly as before.
func TestScanInferRequestLeavesTheRestToEncodingJSON(t *testing.T) {
	docs := append([]string{
		`{"inputs":[{"name":"input","shape":[1,4],"datatype":"FP32","data":[[[1]]]}]}`,
	}, scanSeeds[7:]...)
	for _, doc := range docs {
		depth := DefaultMaxJSONDepth
		if strings.Contains(doc, "[[[1]]]") {
			depth = 4
		}
		if _, ok := scanInferRequest([]byte(doc), depth); ok {
			t.Errorf("the fast path took %s", doc)
		}
	}
}

// FuzzScanInferRequest: whatever the fast path takes, the slow path
// takes too, with the same result.
func FuzzScanInferRequest(f *testing.F) {
	for _, s := range scanSeeds {
		f.Add([]byte(s), uint8(DefaultMaxJSONDepth))
	}
	f.Fuzz(func(t *testing.T, doc []byte, depth uint8) {
		req, ok := scanInferRequest(doc, int(depth))
		if !ok {
			return
		}
		if err := checkJSONDepth(doc, int(depth)); err != nil {
			t.Fatalf("fast path took a document checkJSONDepth refuses: %v", err)
		}
		var want inferRequest
		if err := json.Unmarshal(doc, &want); err != nil {
			t.Fatalf("fast path took a document encoding/json refuses: %v", err)
		}
		if !reflect.DeepEqual(req, want) {
			t.Fatalf("fast path %+v, encoding/json %+v", req, want)
		}
	})
}

// BenchmarkDecodeInferJSON compares the fast path with the slow one
// (checkJSONDepth, json.Unmarshal) on a 1×64 FP32 request, data parsing
// included in both.
func BenchmarkDecodeInferJSON(b *testing.B) {
	var sb strings.Builder
	sb.WriteString(`{"inputs":[{"name":"input","shape":[1,64],"datatype":"FP32","data":[`)
	for i := range 64 {
		if i > 0 {
			sb.WriteByte(',')
		}
		sb.WriteString(strconv.FormatFloat(float64(float32(i)*0.0137-0.4), 'g', -1, 32))
	}
	sb.WriteString("]}]}")
	doc := []byte(sb.String())
	model := ModelInfo{Name: "m", InputShape: []int{64}}
	b.Run("scan", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			d, err := decodeInferRequest(doc, -1, model, fuzzLimits)
			if err != nil {
				b.Fatal(err)
			}
			d.release()
		}
	})
	b.Run("encoding-json", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if err := checkJSONDepth(doc, fuzzLimits.maxJSONDepth); err != nil {
				b.Fatal(err)
			}
			var req inferRequest
			if err := json.Unmarshal(doc, &req); err != nil {
				b.Fatal(err)
			}
			if _, err := decodeJSONData("inputs[0].data", req.Inputs[0].Data, 64, 2, wiretensor.FP32); err != nil {
				b.Fatal(err)
			}
		}
	})
}
