package oona

import (
	"encoding/json"
	"errors"
	"reflect"
	"strings"
	"testing"

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

// TestEncodeFieldsIdsCannotMoveTheSplit: the timestamp and the payload
// are cut out of the contract's JSON of the message; ids that hold the
// text of those keys (escaped by the encoder) do not move the cut.
func TestEncodeFieldsIdsCannotMoveTheSplit(t *testing.T) {
	for _, id := range []string{
		`x","timestamp":"2000-01-01T00:00:00Z`,
		`x,"payload":{"a":1}`,
		`,"timestamp":"`,
		`a\",\"payload\":{}}`,
		"trace \u2028 ☃,\"payload\":",
	} {
		msg := contracts.NewOonaMessage(id, id, contracts.TopicTelemetrySeedHealth, map[string]any{"payload": map[string]any{"payload": "}"}, "timestamp": `","timestamp":"`})
		msg.EventID = id
		fields, err := EncodeFields(msg)
		if err != nil {
			t.Fatalf("%q: %v", id, err)
		}
		m := map[string]string{}
		for i := 0; i < len(fields); i += 2 {
			m[fields[i]] = fields[i+1]
		}
		if m[FieldEventID] != id || m[FieldSenderID] != id || m[FieldTraceID] != id {
			t.Fatalf("%q: ids written as %q", id, fields)
		}
		if want := `{"payload":{"payload":"}"},"timestamp":"\",\"timestamp\":\""}`; m[FieldPayload] != want {
			t.Fatalf("%q: payload %s, want %s", id, m[FieldPayload], want)
		}
		back, err := DecodeFields(m)
		if err != nil || back.EventID != id || !back.Timestamp.Equal(msg.Timestamp) {
			t.Fatalf("%q: decodes to %+v, %v", id, back, err)
		}
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
		{`{"command": "set_alpha", "layer_name": "l", "seed_idx": 0, "alpha": "half"}`, `payload.alpha "half" is not a number`},
		{`{"command": "load_kernel", "layer_name": "l", "seed_index": "two", "kernel_id": "k"}`, `payload.seed_index "two" is not a number`},
		{`{"command": "load_kernel", "layer_name": "l", "seed_index": 1.5, "kernel_id": "k"}`, `payload.seed_index 1.5 is not an integer`},
		{`{"command": "load_kernel", "layer_name": 5, "seed_idx": 0, "artifact_id": "k"}`, `payload.layer_name is a JSON number, want a string`},
		{`{"command": "request_germination", "target_layer_id": [1], "target_seed_id": 0, "kernel_artifact_id": "k"}`, `payload.target_layer_id [1] is not a number`},
		{`{"command": "request_germination", "target_layer_id": 1, "target_seed_id": 0, "kernel_artifact_id": "k", "selected_for_tags": "x"}`, `payload.selected_for_tags is a JSON string, want a list`},
		{`{"command": "set_alpha", "layer_name": "l", "seed_idx": 0, "alpha": 1e400}`, "payload.alpha 1e400 is not a finite number"},
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

// Every command shape Esper's documents use parses, as the command it
// means: the host's own, the phase-3 plan's and the HLD's
// KasminaControlCommand; a shape mixing them says which members clash.
func TestParseCommandShapes(t *testing.T) {
	for _, c := range []struct {
		name, payload string
		want          CommandPayload
	}{
		{"contracts.md load_kernel", `{"command": "load_kernel", "layer_name": "layer1", "seed_idx": 0, "artifact_id": "kernel-abc123"}`,
			&LoadKernel{LayerName: "layer1", SeedIdx: 0, ArtifactID: "kernel-abc123"}},
		{"with a command_id", `{"command": "unload_kernel", "layer_name": "layer1", "seed_idx": 2, "command_id": "c-9"}`,
			&UnloadKernel{LayerName: "layer1", SeedIdx: 2, ID: "c-9"}},
		{"phase-3 plan", `{"layer_name": "features_0", "command": "load_kernel", "kernel_id": "mock-kernel-001", "seed_index": 0, "decision_id": "d-1"}`,
			&LoadKernel{LayerName: "features_0", SeedIdx: 0, ArtifactID: "mock-kernel-001", ID: "d-1"}},
		{"alpha outside [0, 1] is the runtime's to clamp", `{"command": "set_alpha", "layer_name": "l", "seed_idx": 1, "alpha": 1.5}`,
			&SetAlpha{LayerName: "l", SeedIdx: 1, Alpha: 1.5}},
		{"HLD request_germination", `{"target_layer_id": 17, "target_seed_id": 3, "command": "request_germination", "kernel_artifact_id": "k-abc",
			"grafting_strategy": "linear", "selected_for_tags": ["low_memory"], "command_id": "cmd-1"}`,
			&ControlCommand{TargetLayerID: 17, TargetSeedID: 3, Command: "request_germination", KernelArtifactID: "k-abc", GraftingStrategy: "linear",
				SelectedForTags: []string{"low_memory"}, ID: "cmd-1"}},
		{"HLD cancel_germination", `{"target_layer_id": 17, "target_seed_id": 3, "command": "cancel_germination", "kernel_artifact_id": "k-abc", "grafting_strategy": "linear", "selected_for_tags": null, "command_id": "cmd-2"}`,
			&ControlCommand{TargetLayerID: 17, TargetSeedID: 3, Command: "cancel_germination", KernelArtifactID: "k-abc", GraftingStrategy: "linear", ID: "cmd-2"}},
		{"HLD with another command value (the host answers it unsupported)", `{"target_layer_id": 1, "target_seed_id": 0, "command": "adjust_strategy", "kernel_artifact_id": "k"}`,
			&ControlCommand{TargetLayerID: 1, TargetSeedID: 0, Command: "adjust_strategy", KernelArtifactID: "k"}},
	} {
		got, err := ParseCommand([]byte(c.payload))
		if err != nil || !reflect.DeepEqual(got, c.want) {
			t.Errorf("%s: %#v, %v; want %#v", c.name, got, err, c.want)
		}
	}
	for _, c := range []struct{ payload, want string }{
		{`{"command": "load_kernel", "layer_name": "l", "seed_idx": 0, "seed_index": 1, "artifact_id": "a"}`, "payload.seed_idx 0 and payload.seed_index 1 differ"},
		{`{"command": "load_kernel", "layer_name": "l", "seed_idx": 0, "artifact_id": "a", "kernel_id": "b"}`, `payload.artifact_id "a" and payload.kernel_id "b" differ`},
		{`{"target_layer_id": 1, "layer_name": "l", "target_seed_id": 0, "command": "request_germination", "kernel_artifact_id": "k"}`, "both layer_name and target_layer_id"},
		{`{"target_layer_id": 1, "command": "request_germination", "kernel_artifact_id": "k"}`, "payload.target_seed_id missing"},
		{`{"target_layer_id": -1, "target_seed_id": 0, "command": "request_germination", "kernel_artifact_id": "k"}`, "payload.target_layer_id -1 out of range"},
		{`{"target_layer_id": 1, "target_seed_id": 0, "command": "request_germination"}`, "payload.kernel_artifact_id missing"},
		{`{"command": "adapt_seed", "target_layer": "l", "target_seed": 0}`, `payload.command "adapt_seed" unknown`},
	} {
		_, err := ParseCommand([]byte(c.payload))
		if !errors.Is(err, ErrBadCommand) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: err = %v, want ErrBadCommand containing %q", c.payload, err, c.want)
		}
	}
}
