package contracts

import (
	"bufio"
	"bytes"
	"encoding/json"
	"os"
	"reflect"
	"testing"
)

// seedFromCorpus adds every corpus input of model (and extra documents)
// to the fuzzer's seed corpus.
func seedFromCorpus(f *testing.F, model string, extra ...string) {
	f.Helper()
	file, err := os.Open("testdata/contracts.jsonl")
	if err != nil {
		f.Fatal(err)
	}
	defer file.Close()
	sc := bufio.NewScanner(file)
	sc.Buffer(make([]byte, 1<<20), 64<<20)
	for sc.Scan() {
		var c corpusCase
		if err := json.Unmarshal(sc.Bytes(), &c); err != nil {
			f.Fatal(err)
		}
		if c.Model == model {
			f.Add([]byte(c.Input))
		}
	}
	for _, name := range extra {
		data, err := os.ReadFile("testdata/" + name)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(data)
	}
	f.Add([]byte(`{`))
	f.Add([]byte(`{"a":"\ud800"}`))
	f.Add([]byte(`[1,2]`))
}

// roundTrip is the fuzz property: decoding never panics, nothing decoded
// points into the input (the caller may reuse its buffer), and whatever
// decodes encodes to JSON that decodes again to the same value (and to
// the same bytes).
func roundTrip[T any](t *testing.T, data []byte, dec func([]byte) (T, error), enc func(T) []byte) {
	in := bytes.Clone(data)
	v, err := dec(in)
	if err != nil {
		return
	}
	out := enc(v)
	for i := range in {
		in[i] = '#'
	}
	if scribbled := enc(v); !bytes.Equal(out, scribbled) {
		t.Fatalf("the decoded value changed with the input buffer:\n%s\n%s", out, scribbled)
	}
	if !json.Valid(out) {
		t.Fatalf("encoding is not JSON: %s", out)
	}
	again, err := dec(out)
	if err != nil {
		t.Fatalf("re-decoding our own encoding failed: %v\ninput:  %s\nencoded: %s", err, data, out)
	}
	if !reflect.DeepEqual(v, again) {
		t.Fatalf("round trip changed the value\ninput:   %s\nencoded: %s\nfirst:  %#v\nsecond: %#v", data, out, v, again)
	}
	if out2 := enc(again); !bytes.Equal(out, out2) {
		t.Fatalf("encoding is not stable:\n%s\n%s", out, out2)
	}
}

func FuzzHealthSignal(f *testing.F) {
	seedFromCorpus(f, "HealthSignal", "bench_health_signal.json")
	f.Fuzz(func(t *testing.T, data []byte) {
		roundTrip(t, data, DecodeHealthSignal, HealthSignal.AppendJSONNew)
	})
}

func FuzzCompiledKernel(f *testing.F) {
	seedFromCorpus(f, "CompiledKernel", "bench_compiled_kernel.json", "bench_compiled_kernel_small.json")
	f.Fuzz(func(t *testing.T, data []byte) {
		roundTrip(t, data, DecodeCompiledKernel, CompiledKernel.AppendJSONNew)
	})
}

func FuzzKernelMetadata(f *testing.F) {
	seedFromCorpus(f, "KernelMetadata")
	f.Fuzz(func(t *testing.T, data []byte) {
		roundTrip(t, data, DecodeKernelMetadata, KernelMetadata.AppendJSONNew)
	})
}

func FuzzSeed(f *testing.F) {
	seedFromCorpus(f, "Seed")
	f.Fuzz(func(t *testing.T, data []byte) {
		roundTrip(t, data, DecodeSeed, Seed.AppendJSONNew)
	})
}

func FuzzBlueprint(f *testing.F) {
	seedFromCorpus(f, "Blueprint")
	f.Fuzz(func(t *testing.T, data []byte) {
		roundTrip(t, data, DecodeBlueprint, Blueprint.AppendJSONNew)
	})
}

func FuzzTrainingSession(f *testing.F) {
	seedFromCorpus(f, "TrainingSession")
	f.Fuzz(func(t *testing.T, data []byte) {
		roundTrip(t, data, DecodeTrainingSession, TrainingSession.AppendJSONNew)
	})
}

func FuzzSystemStatePacket(f *testing.F) {
	seedFromCorpus(f, "SystemStatePacket")
	f.Fuzz(func(t *testing.T, data []byte) {
		roundTrip(t, data, DecodeSystemStatePacket, SystemStatePacket.AppendJSONNew)
	})
}

func FuzzAdaptationDecision(f *testing.F) {
	seedFromCorpus(f, "AdaptationDecision")
	f.Fuzz(func(t *testing.T, data []byte) {
		roundTrip(t, data, DecodeAdaptationDecision, AdaptationDecision.AppendJSONNew)
	})
}

func FuzzOonaMessage(f *testing.F) {
	seedFromCorpus(f, "OonaMessage")
	f.Fuzz(func(t *testing.T, data []byte) {
		roundTrip(t, data, DecodeOonaMessage, OonaMessage.AppendJSONNew)
	})
}

func FuzzBlueprintSubmitted(f *testing.F) {
	seedFromCorpus(f, "BlueprintSubmitted")
	f.Fuzz(func(t *testing.T, data []byte) {
		roundTrip(t, data, DecodeBlueprintSubmitted, BlueprintSubmitted.AppendJSONNew)
	})
}

func FuzzSeedID(f *testing.F) {
	seedFromCorpus(f, "validate_seed_id")
	f.Fuzz(func(t *testing.T, data []byte) {
		roundTrip(t, data, ParseSeedID, SeedID.AppendJSONNew)
	})
}
