package contracts

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"os"
	"reflect"
	"strings"
	"testing"

	"github.com/esper/kasmina-host/contracts/internal/modelgen"
)

// TestGeneratedModelsAreCurrent regenerates models_gen.go from the spec
// in memory and compares it with the committed file, so a spec change
// without go generate (or a hand edit of the generated file) fails.
func TestGeneratedModelsAreCurrent(t *testing.T) {
	want, err := modelgen.Source(modelgen.Models)
	if err != nil {
		t.Fatalf("generating: %v", err)
	}
	got, err := os.ReadFile(modelgen.File)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("%s differs from what modelgen generates from its spec: run go generate ./contracts/", modelgen.File)
	}
}

// TestKeysInAnyOrderDecodeAlike: the decoder compares the key it expects
// next in place, so documents whose keys come out of the reference's
// order, escaped, or repeated (the last wins) must decode exactly as the
// same document in order does.
func TestKeysInAnyOrderDecodeAlike(t *testing.T) {
	const inOrder = `{"kernel_id": "k", "blueprint_id": "b", "binary_ref": "s3://x", "metadata": {` +
		`"kernel_id": "k", "blueprint_id": "b", "name": "n", "input_shape": [1, 2], "output_shape": [2], ` +
		`"parameter_count": 3, "memory_footprint_mb": 1.5, "created_at": "2026-11-24T10:00:00Z", "checksum": "abc"}, ` +
		`"status": "validated", ` +
		`"created_at": "2026-11-24T10:00:05Z"}`
	tests := map[string]string{
		"reversed": `{"created_at": "2026-11-24T10:00:05Z", "status": "validated", "metadata": {` +
			`"checksum": "abc", "created_at": "2026-11-24T10:00:00Z", "memory_footprint_mb": 1.5, "parameter_count": 3, "output_shape": [2], ` +
			`"input_shape": [1, 2], "name": "n", "blueprint_id": "b", "kernel_id": "k"}, ` +
			`"binary_ref": "s3://x", "blueprint_id": "b", "kernel_id": "k"}`,
		"escaped keys": strings.NewReplacer(`"binary_ref"`, `"binary\u005fref"`, `"name"`, `"\u006eame"`).Replace(inOrder),
		"repeated keys, last wins": strings.NewReplacer(`"binary_ref": "s3://x"`, `"binary_ref": "s3://old", "binary_ref": "s3://x"`,
			`"name": "n"`, `"name": "old", "parameter_count": 9, "name": "n"`).Replace(inOrder),
		"spaces around separators": strings.NewReplacer(`": `, "\" :\n ", `, "`, ` ,"`).Replace(inOrder),
	}
	want, err := DecodeCompiledKernel([]byte(inOrder))
	if err != nil {
		t.Fatal(err)
	}
	for name, doc := range tests {
		t.Run(name, func(t *testing.T) {
			got, err := DecodeCompiledKernel([]byte(doc))
			if err != nil {
				t.Fatalf("%v\n%s", err, doc)
			}
			if !reflect.DeepEqual(got, want) {
				t.Fatalf("decoded\n%s\nwant\n%s", got.AppendJSON(nil), want.AppendJSON(nil))
			}
		})
	}
	// A key that merely starts like the expected one is another key.
	_, err = DecodeCompiledKernel([]byte(strings.Replace(inOrder, `"blueprint_id": "b", "binary_ref"`, `"blueprint_idx": "b", "binary_ref"`, 1)))
	var ve *ValidationError
	if !errors.As(err, &ve) || !ve.Has("blueprint_idx") || !ve.Has("blueprint_id") {
		t.Fatalf("err = %v; want blueprint_idx refused and blueprint_id missing", err)
	}
}

// TestDecodedValuesOwnTheirStrings: strings point into the input while
// a document decodes and are copied out before the decode returns, so a
// caller reusing its buffer must not change a decoded value or an
// error. Every corpus document is decoded from a copy that is then
// overwritten.
func TestDecodedValuesOwnTheirStrings(t *testing.T) {
	models := map[string]func([]byte) (before, after string){
		"Seed":               scribbleCheck(DecodeSeed),
		"Blueprint":          scribbleCheck(DecodeBlueprint),
		"KernelMetadata":     scribbleCheck(DecodeKernelMetadata),
		"CompiledKernel":     scribbleCheck(DecodeCompiledKernel),
		"TrainingSession":    scribbleCheck(DecodeTrainingSession),
		"HealthSignal":       scribbleCheck(DecodeHealthSignal),
		"SystemStatePacket":  scribbleCheck(DecodeSystemStatePacket),
		"AdaptationDecision": scribbleCheck(DecodeAdaptationDecision),
		"OonaMessage":        scribbleCheck(DecodeOonaMessage),
		"BlueprintSubmitted": scribbleCheck(DecodeBlueprintSubmitted),
	}
	f, err := os.Open(corpusPath())
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 64<<20)
	checked := map[string]int{}
	for sc.Scan() {
		var c corpusCase
		if err := json.Unmarshal(sc.Bytes(), &c); err != nil {
			t.Fatal(err)
		}
		check, ok := models[c.Model]
		if !ok {
			continue
		}
		checked[c.Model]++
		if before, after := check(c.Input); before != after {
			t.Errorf("%s [%s]: the decoded value changed with the input buffer:\n%s\n%s", c.ID, c.Model, before, after)
		}
	}
	for m := range models {
		if checked[m] == 0 {
			t.Errorf("no %s document in the corpus", m)
		}
	}
}

// scribbleCheck returns a function that decodes a copy of its input,
// renders the value and the error, overwrites the copy and renders them
// again.
func scribbleCheck[T interface{ AppendJSON([]byte) []byte }](dec func([]byte) (T, error)) func([]byte) (string, string) {
	return func(data []byte) (string, string) {
		in := bytes.Clone(data)
		v, err := dec(in)
		render := func() string {
			s := string(v.AppendJSON(nil))
			if err != nil {
				s += "\n" + err.Error()
			}
			return s
		}
		before := render()
		for i := range in {
			in[i] = '#'
		}
		return before, render()
	}
}
