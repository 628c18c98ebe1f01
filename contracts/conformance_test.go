package contracts

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
)

// corpusCase is one line of the conformance corpus (see testdata and
// the corpus README: agreement rules, $generated placeholders, natural).
type corpusCase struct {
	ID        string          `json:"id"`
	Model     string          `json:"model"`
	Input     json.RawMessage `json:"input"`
	Valid     bool            `json:"valid"`
	ErrorLocs []string        `json:"error_locs"`
	Error     string          `json:"error"`
	Output    json.RawMessage `json:"output"`
	Calls     []corpusCall    `json:"calls"`
	Natural   *bool           `json:"natural"`
	Tag       string          `json:"tag"`
}

type corpusCall struct {
	Method string            `json:"method"`
	Args   []json.RawMessage `json:"args"`
	Result json.RawMessage   `json:"result"`
}

// decoded is a model accepted by the Go side: its encoding and a way to
// call its methods by their Python names.
type decoded struct {
	json []byte
	call func(method string, args []json.RawMessage) (any, error)
}

func noCalls(model string) func(string, []json.RawMessage) (any, error) {
	return func(method string, _ []json.RawMessage) (any, error) {
		return nil, fmt.Errorf("%s has no method %q", model, method)
	}
}

func decodeCase(model string, input []byte) (decoded, error) {
	switch model {
	case "Seed":
		v, err := DecodeSeed(input)
		return decoded{v.AppendJSON(nil), func(m string, _ []json.RawMessage) (any, error) {
			switch m {
			case "state_display":
				return v.StateDisplay(), nil
			case "is_active":
				return v.IsActive(), nil
			}
			return noCalls(model)(m, nil)
		}}, err
	case "Blueprint":
		v, err := DecodeBlueprint(input)
		return decoded{v.AppendJSON(nil), func(m string, _ []json.RawMessage) (any, error) {
			switch m {
			case "state_display":
				return v.StateDisplay(), nil
			case "is_ready_for_deployment":
				return v.IsReadyForDeployment(), nil
			case "get_performance_summary":
				return v.GetPerformanceSummary(), nil
			}
			return noCalls(model)(m, nil)
		}}, err
	case "KernelMetadata":
		v, err := DecodeKernelMetadata(input)
		return decoded{v.AppendJSON(nil), func(m string, args []json.RawMessage) (any, error) {
			switch m {
			case "is_compatible_with_shape":
				var shape []int
				if len(args) != 1 || json.Unmarshal(args[0], &shape) != nil {
					return nil, fmt.Errorf("bad args %s", args)
				}
				return v.IsCompatibleWithShape(shape), nil
			case "get_memory_estimate":
				var batch int
				if len(args) != 1 || json.Unmarshal(args[0], &batch) != nil {
					return nil, fmt.Errorf("bad args %s", args)
				}
				return v.GetMemoryEstimate(batch), nil
			}
			return noCalls(model)(m, nil)
		}}, err
	case "CompiledKernel":
		v, err := DecodeCompiledKernel(input)
		return decoded{v.AppendJSON(nil), func(m string, _ []json.RawMessage) (any, error) {
			if m == "is_ready_for_deployment" {
				return v.IsReadyForDeployment(), nil
			}
			return noCalls(model)(m, nil)
		}}, err
	case "TrainingSession":
		v, err := DecodeTrainingSession(input)
		return decoded{v.AppendJSON(nil), func(m string, _ []json.RawMessage) (any, error) {
			switch m {
			case "get_active_seed_count":
				return v.GetActiveSeedCount(), nil
			case "get_session_summary":
				return v.GetSessionSummary(), nil
			}
			return noCalls(model)(m, nil)
		}}, err
	case "HealthSignal":
		v, err := DecodeHealthSignal(input)
		return decoded{v.AppendJSON(nil), func(m string, _ []json.RawMessage) (any, error) {
			switch m {
			case "health_status":
				return v.HealthStatus(), nil
			case "is_healthy":
				return v.IsHealthy(), nil
			}
			return noCalls(model)(m, nil)
		}}, err
	case "SystemStatePacket":
		v, err := DecodeSystemStatePacket(input)
		return decoded{v.AppendJSON(nil), func(m string, _ []json.RawMessage) (any, error) {
			switch m {
			case "system_health":
				return v.SystemHealth(), nil
			case "is_overloaded":
				return v.IsOverloaded(), nil
			}
			return noCalls(model)(m, nil)
		}}, err
	case "AdaptationDecision":
		v, err := DecodeAdaptationDecision(input)
		return decoded{v.AppendJSON(nil), func(m string, _ []json.RawMessage) (any, error) {
			switch m {
			case "decision_priority":
				return v.DecisionPriority(), nil
			case "should_execute_immediately":
				return v.ShouldExecuteImmediately(), nil
			}
			return noCalls(model)(m, nil)
		}}, err
	case "OonaMessage":
		v, err := DecodeOonaMessage(input)
		return decoded{v.AppendJSON(nil), noCalls(model)}, err
	case "BlueprintSubmitted":
		v, err := DecodeBlueprintSubmitted(input)
		return decoded{v.AppendJSON(nil), noCalls(model)}, err
	case "validate_seed_id":
		v, err := ParseSeedID(input)
		return decoded{v.AppendJSON(nil), noCalls(model)}, err
	}
	return decoded{}, fmt.Errorf("unknown model %q", model)
}

type verdict int

const (
	agree verdict = iota
	disagree
	stricter
)

// judge applies the corpus README's agreement rules to one case.
func judge(c corpusCase, now time.Time) (verdict, string, []byte) {
	got, err := decodeCase(c.Model, c.Input)
	if !c.Valid {
		if err == nil {
			return disagree, "accepted a document the reference rejects (" + strings.Join(c.ErrorLocs, ", ") + "): " + string(got.json), nil
		}
		if c.Model == "validate_seed_id" {
			wantType := c.Error == "TypeError"
			if errors.Is(err, ErrSeedIDType) != wantType {
				return disagree, "rejected with " + err.Error() + ", reference raised " + c.Error, nil
			}
			return agree, "", nil
		}
		for _, loc := range c.ErrorLocs {
			seg, _, _ := strings.Cut(loc, ".")
			if errorNames(err, seg) {
				return agree, "", nil
			}
		}
		return disagree, "rejected, but the error names none of " + strings.Join(c.ErrorLocs, ", ") + ": " + err.Error(), nil
	}
	if err != nil {
		if c.Natural != nil && !*c.Natural {
			return stricter, err.Error(), nil
		}
		return disagree, "rejected a natural document the reference accepts: " + err.Error(), nil
	}
	var want, have any
	if err := unmarshalNumbers(c.Output, &want); err != nil {
		return disagree, "corpus output unreadable: " + err.Error(), nil
	}
	if err := unmarshalNumbers(got.json, &have); err != nil {
		return disagree, "our encoding is not JSON: " + err.Error() + ": " + string(got.json), nil
	}
	if msg := jsonEqual(want, have, "", now); msg != "" {
		return disagree, "output differs at " + msg + "\n      ours: " + string(got.json), nil
	}
	for _, call := range c.Calls {
		res, err := got.call(call.Method, call.Args)
		if err != nil {
			return disagree, "call " + call.Method + ": " + err.Error(), nil
		}
		var wantRes any
		if err := unmarshalNumbers(call.Result, &wantRes); err != nil {
			return disagree, "corpus call result unreadable", nil
		}
		if !resultEqual(wantRes, res) {
			return disagree, fmt.Sprintf("%s(%s) = %#v, reference %s", call.Method, joinRaw(call.Args), res, call.Result), nil
		}
	}
	return agree, "", got.json
}

func joinRaw(args []json.RawMessage) string {
	s := make([]string, len(args))
	for i, a := range args {
		s[i] = string(a)
	}
	return strings.Join(s, ", ")
}

// errorNames reports whether err names the top-level field seg.
func errorNames(err error, seg string) bool {
	var ve *ValidationError
	if errors.As(err, &ve) {
		for _, f := range ve.Fields {
			first, _, _ := strings.Cut(f.Path, ".")
			if first == seg {
				return true
			}
		}
	}
	return false
}

func unmarshalNumbers(data []byte, v *any) error {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	return dec.Decode(v)
}

// jsonEqual compares the reference's output with ours under the corpus
// rules; it returns "" or the path and nature of the first difference.
func jsonEqual(want, have any, path string, now time.Time) string {
	if w, ok := want.(map[string]any); ok {
		if gen, ok := w["$generated"].(string); ok && len(w) == 1 {
			return checkGenerated(gen, have, path, now)
		}
		h, ok := have.(map[string]any)
		if !ok {
			return fmt.Sprintf("%s: want an object, have %v", path, have)
		}
		if len(w) != len(h) {
			return fmt.Sprintf("%s: want %d keys, have %d", path, len(w), len(h))
		}
		for k, wv := range w {
			hv, ok := h[k]
			if !ok {
				return fmt.Sprintf("%s: key %q missing", path, k)
			}
			if msg := jsonEqual(wv, hv, join(path, k), now); msg != "" {
				return msg
			}
		}
		return ""
	}
	switch w := want.(type) {
	case []any:
		h, ok := have.([]any)
		if !ok || len(h) != len(w) {
			return fmt.Sprintf("%s: want %v, have %v", path, w, have)
		}
		for i := range w {
			if msg := jsonEqual(w[i], h[i], join(path, strconv.Itoa(i)), now); msg != "" {
				return msg
			}
		}
		return ""
	case json.Number:
		h, ok := have.(json.Number)
		if !ok || !numberEqual(w, h) {
			return fmt.Sprintf("%s: want %v, have %v", path, w, have)
		}
		return ""
	case string:
		h, ok := have.(string)
		if !ok {
			return fmt.Sprintf("%s: want %q, have %v", path, w, have)
		}
		if w == h {
			return ""
		}
		if looksLikeTimestamp(w) && looksLikeTimestamp(h) {
			tw, r1 := parseTimestamp([]byte(w))
			th, r2 := parseTimestamp([]byte(h))
			if r1 == "" && r2 == "" && tw.Equal(th) && IsNaive(tw) == IsNaive(th) {
				return ""
			}
		}
		return fmt.Sprintf("%s: want %q, have %q", path, w, h)
	default:
		if want != have {
			return fmt.Sprintf("%s: want %v, have %v", path, want, have)
		}
		return ""
	}
}

func looksLikeTimestamp(s string) bool { return len(s) >= 10 && s[4] == '-' && s[7] == '-' }

func numberEqual(a, b json.Number) bool {
	if ai, err := a.Int64(); err == nil {
		if bi, err := b.Int64(); err == nil {
			return ai == bi
		}
	}
	af, err1 := a.Float64()
	bf, err2 := b.Float64()
	return err1 == nil && err2 == nil && af == bf
}

func checkGenerated(kind string, have any, path string, now time.Time) string {
	switch kind {
	case "uuid4":
		s, _ := have.(string)
		u, err := uuid.Parse(s)
		if err != nil || u.Version() != 4 || u.Variant() != uuid.RFC4122 {
			return fmt.Sprintf("%s: want a UUID v4, have %v", path, have)
		}
	case "datetime":
		s, _ := have.(string)
		t, reason := parseTimestamp([]byte(s))
		if !looksLikeTimestamp(s) || reason != "" || IsNaive(t) || t.Sub(now).Abs() > time.Minute {
			return fmt.Sprintf("%s: want a timestamp near now, have %v", path, have)
		}
	case "unix_time":
		n, _ := have.(json.Number)
		f, err := n.Float64()
		if err != nil || math.Abs(f-float64(now.UnixMicro())/1e6) > 60 {
			return fmt.Sprintf("%s: want unix time near now, have %v", path, have)
		}
	default:
		return fmt.Sprintf("%s: unknown $generated %q", path, kind)
	}
	return ""
}

func resultEqual(want, have any) bool {
	switch w := want.(type) {
	case json.Number:
		wf, err := w.Float64()
		if err != nil {
			return false
		}
		var hf float64
		switch h := have.(type) {
		case int:
			return w.String() == strconv.Itoa(h)
		case float64:
			hf = h
		default:
			return false
		}
		if wf == hf {
			return true
		}
		return math.Abs(wf-hf) <= 1e-12*math.Max(math.Abs(wf), math.Abs(hf))
	default:
		return want == have
	}
}

func corpusPath() string {
	if p := os.Getenv("CONTRACTS_CORPUS"); p != "" {
		return p
	}
	return "testdata/contracts.jsonl"
}

// TestConformance runs every case of the conformance corpus
// (CONTRACTS_CORPUS overrides the path) and prints the summary line; with
// CONTRACTS_CORPUS_OUT=FILE it also writes our encoding of every accepted
// case for the Python side to check.
func TestConformance(t *testing.T) {
	f, err := os.Open(corpusPath())
	if err != nil {
		t.Fatalf("open corpus: %v", err)
	}
	defer f.Close()
	var out *bufio.Writer
	if p := os.Getenv("CONTRACTS_CORPUS_OUT"); p != "" {
		of, err := os.Create(p)
		if err != nil {
			t.Fatalf("CONTRACTS_CORPUS_OUT: %v", err)
		}
		defer func() {
			if err := out.Flush(); err != nil {
				t.Errorf("CONTRACTS_CORPUS_OUT: %v", err)
			}
			if err := of.Close(); err != nil {
				t.Errorf("CONTRACTS_CORPUS_OUT: %v", err)
			}
		}()
		out = bufio.NewWriter(of)
	}
	now := time.Now()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 64<<20)
	var counts [3]int
	var problems []string
	var strictCases []string
	line := 0
	for sc.Scan() {
		line++
		if len(bytes.TrimSpace(sc.Bytes())) == 0 {
			continue
		}
		var c corpusCase
		if err := json.Unmarshal(sc.Bytes(), &c); err != nil {
			t.Fatalf("corpus line %d: %v", line, err)
		}
		v, msg, enc := judge(c, now)
		counts[v]++
		switch v {
		case disagree:
			problems = append(problems, fmt.Sprintf("%s [%s] %s: %s\n      input: %s", c.ID, c.Model, c.Tag, msg, truncate(c.Input, 300)))
		case stricter:
			strictCases = append(strictCases, fmt.Sprintf("%s [%s] %s: %s", c.ID, c.Model, c.Tag, msg))
		}
		if out != nil && (v == agree && c.Valid) {
			rec, _ := json.Marshal(map[string]any{"id": c.ID, "model": c.Model, "json": json.RawMessage(enc)})
			out.Write(rec)
			out.WriteByte('\n')
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatalf("read corpus: %v", err)
	}
	total := counts[0] + counts[1] + counts[2]
	fmt.Printf("contracts conformance: %d agree, %d disagree, %d stricter (of %d)\n", counts[agree], counts[disagree], counts[stricter], total)
	for _, s := range strictCases {
		t.Logf("stricter: %s", s)
	}
	if len(problems) > 0 {
		n := min(len(problems), 20)
		t.Errorf("%d disagreements with the reference; first %d:\n  %s", len(problems), n, strings.Join(problems[:n], "\n  "))
	}
}

func truncate(b []byte, n int) string {
	if len(b) <= n {
		return string(b)
	}
	return string(b[:n]) + "…"
}
