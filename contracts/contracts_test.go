package contracts

import (
	"encoding/json"
	"errors"
	"math"
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
)

func TestSeedTransitions(t *testing.T) {
	tests := []struct {
		from, to SeedState
		ok       bool
	}{
		{SeedDormant, SeedGerminated, true},
		{SeedGerminated, SeedTraining, true},
		{SeedTraining, SeedGrafting, true},
		{SeedGrafting, SeedFossilized, true},
		{SeedTraining, SeedCulled, true},
		{SeedDormant, SeedCulled, true},
		{SeedDormant, SeedTraining, false},
		{SeedTraining, SeedDormant, false},
		{SeedFossilized, SeedCulled, false},
		{SeedCulled, SeedDormant, false},
		{SeedDormant, SeedDormant, false},
		{SeedDormant, "bogus", false},
	}
	for _, tc := range tests {
		t.Run(string(tc.from)+"_to_"+string(tc.to), func(t *testing.T) {
			if got := tc.from.CanTransitionTo(tc.to); got != tc.ok {
				t.Fatalf("CanTransitionTo = %v, want %v", got, tc.ok)
			}
			s := NewSeed(1, 2)
			s.State = tc.from
			at := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
			err := s.Transition(tc.to, at)
			if tc.ok {
				if err != nil || s.State != tc.to || !s.UpdatedAt.Equal(at) {
					t.Fatalf("Transition: err %v, state %s, updated %v", err, s.State, s.UpdatedAt)
				}
				return
			}
			if !errors.Is(err, ErrIllegalTransition) || s.State != tc.from {
				t.Fatalf("Transition: err %v, state %s; want ErrIllegalTransition and no change", err, s.State)
			}
			if !strings.Contains(err.Error(), string(tc.from)) || !strings.Contains(err.Error(), string(tc.to)) {
				t.Fatalf("error %q does not name both states", err)
			}
		})
	}
}

func TestBlueprintTransitions(t *testing.T) {
	path := []BlueprintState{BlueprintCompiling, BlueprintValidating, BlueprintCharacterized, BlueprintDeployed, BlueprintArchived}
	b := NewBlueprint("n", "d", "karn", map[string]any{})
	for _, to := range path {
		if err := b.Transition(to, Now()); err != nil {
			t.Fatalf("%s: %v", to, err)
		}
	}
	for _, to := range BlueprintStates {
		if err := b.Transition(to, Now()); !errors.Is(err, ErrIllegalTransition) {
			t.Fatalf("archived → %s: err %v, want ErrIllegalTransition", to, err)
		}
	}
	if BlueprintDeployed.CanTransitionTo(BlueprintFailed) || !BlueprintValidating.CanTransitionTo(BlueprintFailed) {
		t.Fatal("failure allowed from the wrong states")
	}
}

func TestValidationErrorListsEveryFieldWithPaths(t *testing.T) {
	doc := `{"kernel_id":"k","blueprint_id":"b","binary_ref":"s3://x","status":"bogus","extra_field":1,
		"metadata":{"kernel_id":"k","blueprint_id":"b","name":"","input_shape":[1,"x",3],"output_shape":[1],
		"parameter_count":-1,"memory_footprint_mb":1}}`
	_, err := DecodeCompiledKernel([]byte(doc))
	var ve *ValidationError
	if !errors.As(err, &ve) {
		t.Fatalf("err %v is not a *ValidationError", err)
	}
	want := []string{"status", "extra_field", "metadata.name", "metadata.input_shape.1", "metadata.parameter_count"}
	for _, p := range want {
		if !ve.Has(p) || !strings.Contains(err.Error(), p+": ") {
			t.Errorf("error lacks %s:\n%v", p, err)
		}
	}
	if len(ve.Fields) != len(want) {
		t.Errorf("got %d field errors, want %d:\n%v", len(ve.Fields), len(want), err)
	}
}

func TestDecodeReportsMissingAndTypeErrors(t *testing.T) {
	tests := []struct {
		name, doc, path string
	}{
		{"missing required", `{"seed_id":1,"chunk_id":0,"epoch":0,"activation_variance":0,"dead_neuron_ratio":0,"avg_correlation":0}`, "layer_id"},
		{"fraction in int", `{"layer_id":1.5,"seed_id":1,"chunk_id":0,"epoch":0,"activation_variance":0,"dead_neuron_ratio":0,"avg_correlation":0}`, "layer_id"},
		{"bound", `{"layer_id":1,"seed_id":1,"chunk_id":0,"epoch":0,"activation_variance":0,"dead_neuron_ratio":1.01,"avg_correlation":0}`, "dead_neuron_ratio"},
		{"total_seeds at least one", `{"layer_id":1,"seed_id":1,"chunk_id":0,"epoch":0,"activation_variance":0,"dead_neuron_ratio":1,"avg_correlation":0,"total_seeds":0}`, "total_seeds"},
		{"null", `{"layer_id":null,"seed_id":1,"chunk_id":0,"epoch":0,"activation_variance":0,"dead_neuron_ratio":1,"avg_correlation":0}`, "layer_id"},
		{"extra", `{"layer_id":1,"seed_id":1,"chunk_id":0,"epoch":0,"activation_variance":0,"dead_neuron_ratio":1,"avg_correlation":0,"x":{}}`, "x"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := DecodeHealthSignal([]byte(tc.doc))
			var ve *ValidationError
			if !errors.As(err, &ve) || !ve.Has(tc.path) || len(ve.Fields) != 1 {
				t.Fatalf("err = %v; want exactly one error at %s", err, tc.path)
			}
		})
	}
}

func TestDecodeAppliesDefaultsAndCoercions(t *testing.T) {
	h, err := DecodeHealthSignal([]byte(`{"layer_id":"3","seed_id":2.0,"chunk_id":true,"epoch":7,
		"activation_variance":"0.5","dead_neuron_ratio":0,"avg_correlation":-1,"is_ready_for_transition":"yes"}`))
	if err != nil {
		t.Fatal(err)
	}
	if h.LayerID != 3 || h.SeedID != 2 || h.ChunkID != 1 || h.ActivationVariance != 0.5 || !h.IsReadyForTransition {
		t.Fatalf("coercions not applied: %+v", h)
	}
	if h.HealthScore != 1 || h.ActiveSeeds != 1 || h.TotalSeeds != 1 || time.Since(time.Unix(int64(h.Timestamp), 0)) > time.Minute {
		t.Fatalf("defaults not applied: %+v", h)
	}
	if _, err := DecodeBlueprintSubmitted([]byte(`{"blueprint_id":"b","submitted_by":3}`)); err == nil {
		t.Fatal("a number was accepted for a string field")
	}
}

func TestBlueprintStripsStringsAndKeys(t *testing.T) {
	b, err := DecodeBlueprint([]byte(`{"name":"  attn\t","description":" d ","architecture":{" k ":1},
		"created_by":"karn ","performance_metrics":{" loss":"0.12345","acc":1}}`))
	if err != nil {
		t.Fatal(err)
	}
	if b.Name != "attn" || b.Description != "d" || b.CreatedBy != "karn" || b.Architecture["k"] != int64(1) {
		t.Fatalf("not stripped: %+v", b)
	}
	if got, want := b.GetPerformanceSummary(), "Performance: loss: 0.123, acc: 1.000"; got != want {
		t.Fatalf("summary %q, want %q", got, want)
	}
	if _, err := DecodeBlueprint([]byte(`{"name":"   ","description":"d","architecture":{},"created_by":"k"}`)); err == nil {
		t.Fatal("a name of only spaces was accepted")
	}
	k, err := DecodeKernelMetadata([]byte(`{"kernel_id":"k","blueprint_id":"b","name":"  ","input_shape":[],"output_shape":[],"parameter_count":0,"memory_footprint_mb":0}`))
	if err != nil || k.Name != "  " {
		t.Fatalf("KernelMetadata must keep its name as given: %q, %v", k.Name, err)
	}
}

func TestTimestampsRoundTrip(t *testing.T) {
	tests := []struct{ in, out string }{
		{`"2026-11-24T10:00:00Z"`, `"2026-11-24T10:00:00Z"`},
		{`"2026-11-24T10:00:00+00:00"`, `"2026-11-24T10:00:00Z"`},
		{`"2026-11-24T10:00:00.5+02:00"`, `"2026-11-24T10:00:00.500000+02:00"`},
		{`"2026-11-24t10:00:00.1234567-05:30"`, `"2026-11-24T10:00:00.123456-05:30"`},
		{`"2026-11-24 10:00Z"`, `"2026-11-24T10:00:00Z"`},
		{`"2026-11-24T10:00:00"`, `"2026-11-24T10:00:00"`},
		{`"2026-11-24"`, `"2026-11-24T00:00:00"`},
		{`1700000000`, `"2023-11-14T22:13:20Z"`},
		{`"1.5"`, `"1970-01-01T00:00:01.500000Z"`},
	}
	for _, tc := range tests {
		t.Run(tc.in, func(t *testing.T) {
			m, err := DecodeOonaMessage([]byte(`{"sender_id":"s","trace_id":"t","topic":"system.events.epoch","payload":{},"timestamp":` + tc.in + `}`))
			if err != nil {
				t.Fatal(err)
			}
			enc := string(m.AppendJSON(nil))
			if !strings.Contains(enc, `"timestamp":`+tc.out) {
				t.Fatalf("encoded %s, want timestamp %s", enc, tc.out)
			}
			again, err := DecodeOonaMessage([]byte(enc))
			if err != nil || !again.Timestamp.Equal(m.Timestamp) || IsNaive(again.Timestamp) != IsNaive(m.Timestamp) {
				t.Fatalf("round trip drifted: %v → %v (%v)", m.Timestamp, again.Timestamp, err)
			}
		})
	}
	for _, bad := range []string{`"2026-02-30T00:00:00Z"`, `"2026-13-01T00:00:00Z"`, `"yesterday"`, `true`, `"2026-01-01T24:00:00Z"`, `"2026-01-01T10:00:00+02"`} {
		if _, err := DecodeOonaMessage([]byte(`{"sender_id":"s","trace_id":"t","topic":"system.events.epoch","payload":{},"timestamp":` + bad + `}`)); err == nil {
			t.Errorf("timestamp %s accepted", bad)
		}
	}
}

func TestMalformedJSONIsASyntaxErrorNotAPanic(t *testing.T) {
	for _, doc := range []string{``, `{`, `{"layer_id":`, `{"layer_id":1,}`, `{"a":"\ud800"}`, `{"a":1} x`, "{\"a\":\"\x01\"}", `[`, `{"a":01}`} {
		_, err := DecodeHealthSignal([]byte(doc))
		var se *SyntaxError
		if !errors.As(err, &se) || !errors.Is(err, ErrInvalidJSON) {
			t.Errorf("%q: err %v, want *SyntaxError", doc, err)
		}
	}
}

func TestStdlibJSONUsesTheContracts(t *testing.T) {
	var env struct {
		Signal HealthSignal `json:"signal"`
	}
	err := json.Unmarshal([]byte(`{"signal":{"layer_id":-1}}`), &env)
	var ve *ValidationError
	if !errors.As(err, &ve) || !ve.Has("layer_id") {
		t.Fatalf("json.Unmarshal did not validate: %v", err)
	}
	h := NewHealthSignal()
	h.LayerID = 4
	out, err := json.Marshal(h)
	if err != nil || !strings.HasPrefix(string(out), `{"layer_id":4,"seed_id":0,`) || !strings.Contains(string(out), `"health_score":1.0`) {
		t.Fatalf("json.Marshal = %s, %v", out, err)
	}
}

func TestValidateGoBuiltValues(t *testing.T) {
	h := NewHealthSignal()
	if err := h.Validate(); err != nil {
		t.Fatalf("defaults invalid: %v", err)
	}
	h.TotalSeeds = 0
	h.AvgCorrelation = 2
	var ve *ValidationError
	if err := h.Validate(); !errors.As(err, &ve) || len(ve.Fields) != 2 {
		t.Fatalf("Validate = %v, want 2 field errors", err)
	}
	m := NewOonaMessage("kasmina-1", "trace", TopicTelemetrySeedHealth, map[string]any{"f": 1.5, "bad": func() {}})
	if err := m.Validate(); err == nil || !strings.Contains(err.Error(), "payload.bad") {
		t.Fatalf("unencodable payload not reported: %v", err)
	}
	if u, err := uuid.Parse(m.EventID); err != nil || u.Version() != 4 {
		t.Fatalf("event_id %q is not a UUID v4", m.EventID)
	}
	if m.Timestamp.Location() != time.UTC {
		t.Fatalf("timestamp not UTC: %v", m.Timestamp)
	}
	m.Topic = "nope"
	if err := m.Validate(); err == nil || !strings.Contains(err.Error(), "topic") {
		t.Fatalf("bad topic not reported: %v", err)
	}
}

func TestKernelMetadataMethods(t *testing.T) {
	k := NewKernelMetadata("k", "b", "n")
	k.InputShape = []int{32, 128, 512}
	k.MemoryFootprintMB = 64
	if !k.IsCompatibleWithShape([]int{8, 128, 512}) || k.IsCompatibleWithShape([]int{8, 128}) || k.IsCompatibleWithShape([]int{32, 64, 512}) {
		t.Fatal("shape compatibility must need equal rank and ignore only the batch dimension")
	}
	if got := k.GetMemoryEstimate(16); got != 32 {
		t.Fatalf("GetMemoryEstimate(16) = %v, want 32", got)
	}
	c := NewCompiledKernel("b", "s3://x", k)
	if c.IsReadyForDeployment() || c.LastUsedAt != nil {
		t.Fatal("a fresh kernel is compiled and unused")
	}
	c.UpdateUsageStats()
	if c.LastUsedAt == nil || time.Since(*c.LastUsedAt) > time.Minute {
		t.Fatal("UpdateUsageStats did not stamp LastUsedAt")
	}
}

func TestParseSeedID(t *testing.T) {
	tests := []struct {
		in   string
		want error
	}{
		{`[3, 4]`, nil},
		{`[1099511627776, 0]`, nil},
		{`[1]`, ErrSeedIDShape},
		{`[1, 2, 3]`, ErrSeedIDShape},
		{`{}`, ErrSeedIDShape},
		{`[1.5, 2]`, ErrSeedIDType},
		{`["1", 2]`, ErrSeedIDType},
		{`[-1, 2]`, ErrSeedIDNegative},
	}
	for _, tc := range tests {
		_, err := ParseSeedID([]byte(tc.in))
		if (tc.want == nil) != (err == nil) || (tc.want != nil && !errors.Is(err, tc.want)) {
			t.Errorf("ParseSeedID(%s) = %v, want %v", tc.in, err, tc.want)
		}
	}
}

func TestFloatEncodingMatchesReference(t *testing.T) {
	tests := map[float64]string{5: "5.0", 0.1: "0.1", 1e-7: "1e-7", 1e16: "1e+16", 1.2345678901234568e+20: "1.2345678901234568e+20", 0.0001: "0.0001", -0.5: "-0.5"}
	for f, want := range tests {
		if got := string(appendFloat(nil, f)); got != want {
			t.Errorf("appendFloat(%v) = %s, want %s", f, got, want)
		}
	}
}

// TestFloatFastPathMatchesStrconv: appendFloat's short-decimal fast path
// writes exactly what the general strconv path writes, for random bit
// patterns, for decimals with up to nine places (the fast path takes up to
// six), near the range bounds, and for sums that are not short decimals.
func TestFloatFastPathMatchesStrconv(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	check := func(f float64) {
		t.Helper()
		if got, want := string(appendFloat(nil, f)), string(appendFloatGeneral(nil, f)); got != want {
			t.Fatalf("appendFloat(%v) = %s, general path %s (bits %#x)", f, got, want, math.Float64bits(f))
		}
	}
	for _, f := range []float64{1e-5, -1e-5, 1.5e-5, 0.0001, 0.1 + 0.2, 1 << 31, 1<<31 - 1, 1<<31 - 0.5, 2147483647.999999,
		1795608780.597932, 0.875, 0.03125, 0.00015, 12345.678901, 9.999999, 99999.99999, 1e15, 3, -7} {
		check(f)
		check(math.Nextafter(f, 0))
		check(math.Nextafter(f, math.Inf(1)))
	}
	for i := 0; i < 1_000_000; i++ {
		switch i % 4 {
		case 0: // any bit pattern within the fast path's range, 2^-17..2^31
			f := math.Ldexp(1+rng.Float64(), rng.IntN(48)-17)
			if rng.IntN(2) == 0 {
				f = -f
			}
			check(f)
		case 1: // a decimal with 0-9 places, up to 2^31 in magnitude
			k := rng.IntN(10)
			n := rng.Int64N(1 << 31 * int64(math.Pow10(min(k, 6))))
			f := float64(n) / math.Pow10(k)
			if rng.IntN(2) == 0 {
				f = -f
			}
			check(f)
		case 2: // a uniform value in [0, 1) and scaled ones
			check(rng.Float64() * math.Pow10(rng.IntN(12)-5))
		case 3: // Unix timestamps with microseconds, as HealthSignal has
			check(float64(1_700_000_000_000_000+rng.Int64N(1e15)) / 1e6)
		}
	}
}

func TestTimestampEncodingMatchesTimePackage(t *testing.T) {
	zones := []*time.Location{time.UTC, Naive, time.FixedZone("", 5*3600+30*60), time.FixedZone("", -8*3600)}
	for _, sec := range []int64{-62135596800, -1, 0, 951782400, 1700000000, 4102444800, 253402300799} {
		for _, z := range zones {
			tm := time.Unix(sec, 123456000).In(z)
			if tm.Year() < 1 || tm.Year() > 9999 {
				continue // outside Python's datetime; Validate refuses it
			}
			got := string(appendTimestampRaw(nil, tm))
			want := tm.Format("2006-01-02T15:04:05.000000")
			if !strings.HasPrefix(got, want) {
				t.Errorf("appendTimestampRaw(%v) = %s, want prefix %s", tm, got, want)
			}
		}
	}
}

func TestParseTimestampMatchesTimeDate(t *testing.T) {
	for _, s := range []string{"0001-01-01T00:00:00Z", "1969-12-31T23:59:59.5-05:30", "2000-02-29T12:00:00+14:00",
		"2026-11-24T10:00:00", "9999-12-31T23:59:59.999999+00:01", "1600-03-01", "2100-02-28T01:02:03Z"} {
		got, reason := parseTimestamp([]byte(s))
		if reason != "" {
			t.Fatalf("%s: %s", s, reason)
		}
		want, err := time.Parse("2006-01-02T15:04:05.999999999Z07:00", s)
		if err != nil {
			want, _ = time.Parse("2006-01-02T15:04:05.999999999", s)
			if len(s) == 10 {
				want, _ = time.Parse("2006-01-02", s)
			}
		}
		if !got.Equal(want) {
			t.Errorf("%s: got %v, want %v", s, got, want)
		}
	}
}
