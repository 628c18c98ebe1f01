package oona

import (
	"bytes"
	"encoding/json"
	"errors"
	"math"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/esper/kasmina-host/contracts"
)

func TestEncodeFieldsWritesOneFieldPerMessageFieldInOrder(t *testing.T) {
	msg := contracts.NewOonaMessage("kasmina-host.node1", "trace-1", contracts.TopicTelemetrySeedHealth, map[string]any{"layer_id": 3, "b": []any{1.5, "x"}})
	fields, err := EncodeFields(msg)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for i := 0; i < len(fields); i += 2 {
		names = append(names, fields[i])
	}
	if got := strings.Join(names, ","); got != "event_id,sender_id,timestamp,trace_id,topic,payload" {
		t.Fatalf("field order %s", got)
	}
	// The timestamp is the contract's JSON string without its quotes.
	var env map[string]json.RawMessage
	if err := json.Unmarshal(msg.AppendJSON(nil), &env); err != nil {
		t.Fatal(err)
	}
	if want := strings.Trim(string(env["timestamp"]), `"`); fields[5] != want {
		t.Fatalf("timestamp field %q, contract JSON %q", fields[5], want)
	}
	if fields[9] != "telemetry.seed.health" || fields[11] != `{"b":[1.5,"x"],"layer_id":3}` {
		t.Fatalf("fields = %q", fields)
	}
}

func TestWireTimestampMatchesContractJSON(t *testing.T) {
	for _, ts := range []time.Time{
		time.Date(2026, 11, 24, 10, 0, 0, 0, time.UTC),
		time.Date(2026, 11, 24, 10, 0, 0, 123456000, time.UTC),
		time.Date(2026, 1, 2, 3, 4, 5, 600000000, time.FixedZone("", 2*3600)),
		time.Date(2026, 1, 2, 3, 4, 5, 0, time.FixedZone("", -(5*3600+30*60))),
		time.Date(2026, 1, 2, 3, 4, 5, 7000, contracts.Naive),
		time.Date(1, 1, 1, 0, 0, 0, 1000, time.UTC),
		time.Date(9999, 12, 31, 23, 59, 59, 999999000, time.UTC),
		time.Date(2026, 3, 9, 7, 8, 9, 500, time.UTC), // under a microsecond
		time.Date(2026, 10, 19, 20, 30, 40, 100000, time.UTC),
		time.Unix(1795000000, 123456789).UTC(),
	} {
		msg := contracts.OonaMessage{EventID: "e-x", SenderID: "s", TraceID: "t", Topic: contracts.TopicSystemEventsEpoch, Timestamp: ts, Payload: map[string]any{}}
		var env map[string]json.RawMessage
		if err := json.Unmarshal(msg.AppendJSON(nil), &env); err != nil {
			t.Fatal(err)
		}
		want := strings.Trim(string(env["timestamp"]), `"`)
		if got := string(appendWireTimestamp(nil, ts)); got != want {
			t.Errorf("timestamp %v: wire %q, contract %q", ts, got, want)
		}
	}
}

func TestPayloadEncodingMatchesEncodingJSON(t *testing.T) {
	values := []map[string]any{
		{},
		{"f": 0.1, "g": 1e-7, "h": 1e21, "i": 123456789.125, "j": math.Copysign(0, -1), "k": float32(0.3), "l": 5e-324, "m": 1e20},
		{"s": "tab\t nl\n quote\" bs\\ ctl\x01 uni é ☃ \u2028 <&>", "bad": "\xff"},
		{"n": nil, "b": true, "i": int64(-9007199254740993), "u": uint64(math.MaxUint64), "num": json.Number("12.50")},
		{"nested": map[string]any{"z": []any{map[string]any{"a": 1}}, "a": []string{"x"}, "fl": []float64{1, 2.5}, "in": []int{1, 2}}},
		{"struct": struct {
			A int `json:"a"`
		}{7}},
	}
	for _, v := range values {
		got, err := encodePayload(v)
		if err != nil {
			t.Fatalf("%v: %v", v, err)
		}
		var want bytes.Buffer
		enc := json.NewEncoder(&want)
		enc.SetEscapeHTML(false)
		if err := enc.Encode(v); err != nil {
			t.Fatal(err)
		}
		if got != strings.TrimSuffix(want.String(), "\n") {
			t.Errorf("payload %v:\n got  %s\n want %s", v, got, want.String())
		}
	}
}

func TestPayloadRefusesNonFiniteNumbersNamingTheKey(t *testing.T) {
	_, err := encodePayload(map[string]any{"stats": map[string]any{"variance": math.NaN()}})
	if err == nil || !strings.Contains(err.Error(), "payload.stats.variance") {
		t.Fatalf("err = %v, want one naming payload.stats.variance", err)
	}
	msg := contracts.NewOonaMessage("s-1", "t-1", contracts.TopicTelemetrySeedHealth, map[string]any{"x": math.Inf(1)})
	if _, err := EncodeFields(msg); !errors.Is(err, ErrInvalidMessage) {
		t.Fatalf("EncodeFields = %v, want ErrInvalidMessage", err)
	}
}

// Entries as the Python OonaClient.publish writes them: model_dump(mode=
// "json"), dicts through json.dumps (", " and ": " separators), the rest
// through str().
var pythonEntries = []map[string]string{
	{
		"event_id": "2b5f7a4e-8d7c-4f3e-9a51-0c1d2e3f4a5b", "sender_id": "Tamiyo-Controller-1",
		"timestamp": "2026-03-01T12:30:45.123456Z", "trace_id": "trace-12345", "topic": "control.kasmina.commands",
		"payload": `{"command": "load_kernel", "layer_name": "layer1", "seed_idx": 0, "artifact_id": "kernel-abc123"}`,
	},
	{ // str(datetime) form, with a space and +00:00
		"event_id": "9c0e1f2a-3b4c-4d5e-8f60-718293a4b5c6", "sender_id": "tolaria-run7",
		"timestamp": "2026-03-01 12:30:45.000001+00:00", "trace_id": "adaptation-3", "topic": "system.events.epoch",
		"payload": `{"event_type": "adaptation_applied", "epoch": 12, "confidence": 0.5}`,
	},
}

func TestDecodeFieldsReadsPythonEntries(t *testing.T) {
	for _, f := range pythonEntries {
		msg, err := DecodeFields(f)
		if err != nil {
			t.Fatalf("%v: %v", f["event_id"], err)
		}
		if msg.EventID != f["event_id"] || msg.SenderID != f["sender_id"] || string(msg.Topic) != f["topic"] {
			t.Fatalf("decoded %+v from %v", msg, f)
		}
		if msg.Timestamp.Year() != 2026 || msg.Timestamp.Minute() != 30 {
			t.Fatalf("timestamp %v from %q", msg.Timestamp, f["timestamp"])
		}
	}
	ev, err := decodeEpoch(pythonEntries[1])
	if err != nil || ev.Epoch != 12 || ev.EventType != "adaptation_applied" {
		t.Fatalf("epoch event = %+v, %v", ev, err)
	}
	p, err := ParseCommand([]byte(pythonEntries[0]["payload"]))
	if err != nil || !reflect.DeepEqual(p, &LoadKernel{LayerName: "layer1", SeedIdx: 0, ArtifactID: "kernel-abc123"}) {
		t.Fatalf("command = %#v, %v", p, err)
	}
}

func TestDecodeFieldsRoundTripsEncodeFields(t *testing.T) {
	msg := healthMessage(t, 42)
	fields, err := EncodeFields(msg)
	if err != nil {
		t.Fatal(err)
	}
	m := map[string]string{}
	for i := 0; i < len(fields); i += 2 {
		m[fields[i]] = fields[i+1]
	}
	got, err := DecodeFields(m)
	if err != nil {
		t.Fatal(err)
	}
	again, _ := EncodeFields(got)
	if !reflect.DeepEqual(fields, again) {
		t.Fatalf("round trip changed the entry:\n%q\n%q", fields, again)
	}
}

func TestDecodeFieldsRefusesMalformedEntriesNamingTheField(t *testing.T) {
	good := pythonEntries[0]
	with := func(k, v string) map[string]string {
		m := map[string]string{}
		for a, b := range good {
			m[a] = b
		}
		if v == "<delete>" {
			delete(m, k)
		} else {
			m[k] = v
		}
		return m
	}
	cases := []struct {
		name   string
		fields map[string]string
		want   string
	}{
		{"payload missing", with("payload", "<delete>"), "payload"},
		{"payload not JSON", with("payload", "{oops"), "payload"},
		{"payload a list", with("payload", "[1, 2]"), "payload"},
		{"unknown topic", with("topic", "control.other"), "topic"},
		{"bad timestamp", with("timestamp", "yesterday"), "timestamp"},
		{"invalid UTF-8", with("sender_id", "a\xffb"), "sender_id"},
	}
	for _, c := range cases {
		_, err := DecodeFields(c.fields)
		if !errors.Is(err, ErrMalformed) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: err = %v, want ErrMalformed naming %s", c.name, err, c.want)
		}
	}
}

func TestParseCommandNamesTheWrongField(t *testing.T) {
	cases := []struct{ payload, want string }{
		{`{"layer_name": "l", "seed_idx": 0}`, "payload.command missing"},
		{`{"command": "dance", "layer_name": "l", "seed_idx": 0}`, `payload.command "dance" unknown`},
		{`{"command": "load_kernel", "seed_idx": 0, "artifact_id": "a"}`, "payload.layer_name"},
		{`{"command": "load_kernel", "layer_name": "l", "seed_idx": -1, "artifact_id": "a"}`, "payload.seed_idx -1"},
		{`{"command": "load_kernel", "layer_name": "l", "seed_idx": 1.5, "artifact_id": "a"}`, "payload.seed_idx 1.5"},
		{`{"command": "load_kernel", "layer_name": "l", "seed_idx": 0}`, "payload.artifact_id"},
		{`{"command": "set_seed_state", "layer_name": "l", "seed_idx": 0, "state": "sleeping"}`, `payload.state "sleeping"`},
		{`{"command": "set_alpha", "layer_name": "l", "seed_idx": 0, "alpha": 1.5}`, "payload.alpha 1.5"},
		{`{"command": "set_alpha", "layer_name": "l", "seed_idx": 0}`, "payload.alpha missing"},
	}
	for _, c := range cases {
		_, err := ParseCommand([]byte(c.payload))
		if !errors.Is(err, ErrBadCommand) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: err = %v, want ErrBadCommand containing %q", c.payload, err, c.want)
		}
	}
	p, err := ParseCommand([]byte(`{"command": "set_seed_state", "layer_name": "l", "seed_idx": 2.0, "state": "culled", "reason": "extra members are ignored"}`))
	if err != nil || !reflect.DeepEqual(p, &SetSeedState{LayerName: "l", SeedIdx: 2, State: contracts.SeedCulled}) {
		t.Fatalf("set_seed_state = %#v, %v", p, err)
	}
}

func FuzzDecodeFields(f *testing.F) {
	for _, e := range pythonEntries {
		f.Add(e["event_id"], e["sender_id"], e["timestamp"], e["trace_id"], e["topic"], e["payload"])
	}
	f.Add("42", "true", "2026-01-01", `"quoted"`, "telemetry.seed.health", `{"a": [1, {"b": null}]}`)
	f.Add("", "", "", "", "", "")
	f.Add("e", "s", "1700000000.5", "t", "system.events.epoch", `{"epoch": 1e400}`)
	f.Fuzz(func(t *testing.T, eventID, senderID, ts, traceID, topic, payload string) {
		fields := map[string]string{FieldEventID: eventID, FieldSenderID: senderID, FieldTimestamp: ts, FieldTraceID: traceID, FieldTopic: topic, FieldPayload: payload}
		msg, err := DecodeFields(fields)
		if err != nil {
			if !errors.Is(err, ErrMalformed) {
				t.Fatalf("error %v does not wrap ErrMalformed", err)
			}
			return
		}
		enc, err := EncodeFields(msg)
		if err != nil {
			return // e.g. a lenient read of sender_id "42", which we never write
		}
		m := map[string]string{}
		for i := 0; i < len(enc); i += 2 {
			m[enc[i]] = enc[i+1]
		}
		again, err := DecodeFields(m)
		if err != nil {
			t.Fatalf("re-decoding our own encoding failed: %v\n%q", err, enc)
		}
		enc2, err := EncodeFields(again)
		if err != nil || !reflect.DeepEqual(enc, enc2) {
			t.Fatalf("encoding not stable:\n%q\n%q (%v)", enc, enc2, err)
		}
		_, _ = ParseCommand([]byte(m[FieldPayload]))
	})
}
