package oona

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"math"
	"reflect"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"github.com/esper/kasmina-host/contracts"
)

// busUnderTest is one implementation with a way to read back, in order,
// the stream entries it wrote for a topic.
type busUnderTest struct {
	bus      Bus
	readBack func(t *testing.T, topic string) []map[string]string
}

// syncBuffer is a goroutine-safe bytes.Buffer for the embedded bus output.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

var implementations = []struct {
	name string
	open func(t *testing.T) busUnderTest
}{
	{"redis", func(t *testing.T) busUnderTest {
		srv := startRedis(t)
		bus, err := NewRedisBus(context.Background(), srv.testConfig("suite"), nil)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { closeBus(t, bus) })
		rc := redis.NewClient(&redis.Options{Addr: srv.addr()})
		t.Cleanup(func() { _ = rc.Close() })
		return busUnderTest{bus: bus, readBack: func(t *testing.T, topic string) []map[string]string {
			msgs, err := rc.XRange(context.Background(), topic, "-", "+").Result()
			if err != nil {
				t.Fatal(err)
			}
			out := make([]map[string]string, len(msgs))
			for i, m := range msgs {
				out[i] = stringFields(m.Values)
			}
			return out
		}}
	}},
	{"embedded", func(t *testing.T) busUnderTest {
		out := &syncBuffer{}
		bus := NewEmbeddedBus(out, nil, Config{HostID: "suite"}, nil)
		t.Cleanup(func() { closeBus(t, bus) })
		return busUnderTest{bus: bus, readBack: func(t *testing.T, topic string) []map[string]string {
			var res []map[string]string
			sc := bufio.NewScanner(strings.NewReader(out.String()))
			sc.Buffer(nil, 1<<20)
			for sc.Scan() {
				msg, err := contracts.DecodeOonaMessage(sc.Bytes())
				if err != nil {
					t.Fatalf("embedded bus wrote a line that is not an OonaMessage: %v\n%s", err, sc.Text())
				}
				if string(msg.Topic) != topic {
					continue
				}
				// The envelope is the message's contract JSON byte for byte
				// (the payload's keys may come in another order; the
				// caller compares its values).
				line, canon := sc.Bytes(), msg.AppendJSON(nil)
				cut := func(b []byte) []byte { return b[:max(bytes.Index(b, []byte(`"payload":`)), 0)] }
				if !bytes.Equal(cut(line), cut(canon)) || len(cut(line)) == 0 {
					t.Fatalf("embedded bus line\n%s\ndoes not start as the contract's JSON of its message\n%s", line, canon)
				}
				// The fields a reader sees: the strings, and the payload's
				// JSON as the line holds it.
				var env map[string]json.RawMessage
				if err := json.Unmarshal(sc.Bytes(), &env); err != nil {
					t.Fatal(err)
				}
				m := map[string]string{FieldPayload: string(env[FieldPayload])}
				for _, name := range fieldNames[:numFields-1] {
					var v string
					if err := json.Unmarshal(env[name], &v); err != nil {
						t.Fatalf("field %s of %s: %v", name, sc.Bytes(), err)
					}
					m[name] = v
				}
				res = append(res, m)
			}
			return res
		}}
	}},
}

func TestPublisherDeliversInOrderWithWireFields(t *testing.T) {
	for _, impl := range implementations {
		t.Run(impl.name, func(t *testing.T) {
			b := impl.open(t)
			const n = 600 // more than two batches
			want := make([]contracts.OonaMessage, n)
			for i := range want {
				want[i] = healthMessage(t, i)
				if err := b.bus.Publish(want[i]); err != nil {
					t.Fatalf("Publish %d: %v", i, err)
				}
			}
			ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
			defer cancel()
			if err := b.bus.Flush(ctx); err != nil {
				t.Fatal(err)
			}
			got := b.readBack(t, string(contracts.TopicTelemetrySeedHealth))
			if len(got) != n {
				t.Fatalf("read back %d entries, want %d", len(got), n)
			}
			for i, fields := range got {
				wantFields, err := EncodeFields(want[i])
				if err != nil {
					t.Fatal(err)
				}
				for j := 0; j < len(wantFields); j += 2 {
					if fields[wantFields[j]] != wantFields[j+1] {
						t.Fatalf("entry %d field %s = %q, want %q", i, wantFields[j], fields[wantFields[j]], wantFields[j+1])
					}
				}
				msg, err := DecodeFields(fields)
				if err != nil {
					t.Fatalf("entry %d does not decode: %v", i, err)
				}
				if msg.EventID != want[i].EventID || !msg.Timestamp.Equal(want[i].Timestamp) {
					t.Fatalf("entry %d is %s, want %s in publish order", i, msg.EventID, want[i].EventID)
				}
			}
			s := b.bus.Stats()
			if s.Published != n || s.Delivered != n || s.Dropped != 0 || s.Buffered != 0 {
				t.Fatalf("stats = %+v, want %d published and delivered, none dropped or buffered", s, n)
			}
		})
	}
}

func TestPublisherRefusesStringFieldsThatReadBackAsJSON(t *testing.T) {
	cases := []struct {
		name, field, value string
		set                func(*contracts.OonaMessage, string)
	}{
		{"numeric sender", FieldSenderID, "42", func(m *contracts.OonaMessage, v string) { m.SenderID = v }},
		{"boolean trace", FieldTraceID, "true", func(m *contracts.OonaMessage, v string) { m.TraceID = v }},
		{"null trace", FieldTraceID, "null", func(m *contracts.OonaMessage, v string) { m.TraceID = v }},
		{"NaN sender (Python json.loads accepts it)", FieldSenderID, "NaN", func(m *contracts.OonaMessage, v string) { m.SenderID = v }},
		{"negative infinity trace", FieldTraceID, "-Infinity", func(m *contracts.OonaMessage, v string) { m.TraceID = v }},
		{"padded number", FieldSenderID, " 7 ", func(m *contracts.OonaMessage, v string) { m.SenderID = v }},
		{"quoted string", FieldTraceID, `"abc"`, func(m *contracts.OonaMessage, v string) { m.TraceID = v }},
		{"array", FieldTraceID, "[1,2]", func(m *contracts.OonaMessage, v string) { m.TraceID = v }},
		{"object", FieldSenderID, "{}", func(m *contracts.OonaMessage, v string) { m.SenderID = v }},
		{"exponent", FieldEventID, "1e5", func(m *contracts.OonaMessage, v string) { m.EventID = v }},
		{"signed fraction with exponent", FieldTraceID, "-0.5e+3", func(m *contracts.OonaMessage, v string) { m.TraceID = v }},
		{"array with NaN", FieldTraceID, "[NaN]", func(m *contracts.OonaMessage, v string) { m.TraceID = v }},
	}
	for _, impl := range implementations {
		t.Run(impl.name, func(t *testing.T) {
			b := impl.open(t)
			for _, c := range cases {
				msg := healthMessage(t, 1)
				c.set(&msg, c.value)
				err := b.bus.Publish(msg)
				if !errors.Is(err, ErrAmbiguousField) {
					t.Errorf("%s: Publish(%s=%q) = %v, want ErrAmbiguousField", c.name, c.field, c.value, err)
				} else if !strings.Contains(err.Error(), c.field) {
					t.Errorf("%s: error %q does not name the field %s", c.name, err, c.field)
				}
			}
			if s := b.bus.Stats(); s.Published != 0 {
				t.Fatalf("refused messages were counted as published: %+v", s)
			}
			for _, ok := range []string{"kasmina-42", "true-north", "42a", "node 7", "Infinity-and-beyond", "0123", "1.", "-", "1e", "2b5f7a4e-8d7c-4f3e-9a51-0c1d2e3f4a5b"} {
				msg := healthMessage(t, 1)
				msg.SenderID, msg.TraceID = ok, ok
				if err := b.bus.Publish(msg); err != nil {
					t.Errorf("Publish with ids %q refused: %v", ok, err)
				}
			}
		})
	}
}

func TestPublisherRefusesInvalidMessagesAndPublishAfterClose(t *testing.T) {
	cases := []struct {
		name, names string
		set         func(*contracts.OonaMessage)
	}{
		{"unknown topic", "topic", func(m *contracts.OonaMessage) { m.Topic = "telemetry.nope" }},
		{"NaN in the payload", "payload.health_score", func(m *contracts.OonaMessage) { m.Payload["health_score"] = math.NaN() }},
		{"infinity nested in the payload", "payload.stats.variance", func(m *contracts.OonaMessage) {
			m.Payload["stats"] = map[string]any{"variance": math.Inf(1)}
		}},
		{"no payload", "payload", func(m *contracts.OonaMessage) { m.Payload = nil }},
		{"sender not UTF-8", FieldSenderID, func(m *contracts.OonaMessage) { m.SenderID = "s\xff" }},
		{"year 10000", "timestamp", func(m *contracts.OonaMessage) { m.Timestamp = m.Timestamp.AddDate(8000, 0, 0) }},
	}
	for _, impl := range implementations {
		t.Run(impl.name, func(t *testing.T) {
			b := impl.open(t)
			for _, c := range cases {
				bad := healthMessage(t, 1)
				c.set(&bad)
				if err := b.bus.Publish(bad); !errors.Is(err, ErrInvalidMessage) || !strings.Contains(err.Error(), c.names) {
					t.Errorf("%s: Publish = %v, want ErrInvalidMessage naming %s", c.name, err, c.names)
				}
			}
			if err := b.bus.Publish(healthMessage(t, 2)); err != nil {
				t.Fatal(err)
			}
			if err := b.bus.Close(testCtx(t)); err != nil {
				t.Fatalf("Close: %v", err)
			}
			if err := b.bus.Publish(healthMessage(t, 3)); !errors.Is(err, ErrClosed) {
				t.Fatalf("Publish after Close = %v, want ErrClosed", err)
			}
			s := b.bus.Stats()
			if s.Published != 1 || s.Delivered != 1 {
				t.Fatalf("stats after close = %+v, want the one valid message delivered", s)
			}
		})
	}
}

func TestCollectorExportsCountersByTopic(t *testing.T) {
	for _, impl := range implementations {
		t.Run(impl.name, func(t *testing.T) {
			b := impl.open(t)
			reg := prometheus.NewRegistry()
			if err := RegisterMetrics(reg, b.bus); err != nil {
				t.Fatal(err)
			}
			for i := range 3 {
				if err := b.bus.Publish(healthMessage(t, i)); err != nil {
					t.Fatal(err)
				}
			}
			if err := b.bus.Flush(context.Background()); err != nil {
				t.Fatal(err)
			}
			mfs, err := reg.Gather()
			if err != nil {
				t.Fatal(err)
			}
			got := map[string]float64{}
			for _, mf := range mfs {
				for _, m := range mf.GetMetric() {
					key := mf.GetName()
					for _, l := range m.GetLabel() {
						key += "," + l.GetName() + "=" + l.GetValue()
					}
					if m.GetCounter() != nil {
						got[key] = m.GetCounter().GetValue()
					} else {
						got[key] = m.GetGauge().GetValue()
					}
				}
			}
			for key, want := range map[string]float64{
				"kasmina_bus_messages_published_total,topic=telemetry.seed.health": 3,
				"kasmina_bus_messages_delivered_total,topic=telemetry.seed.health": 3,
				"kasmina_bus_buffer_messages":                                      0,
			} {
				if v, ok := got[key]; !ok || v != want {
					t.Errorf("%s = %v (present %v), want %v", key, v, ok, want)
				}
			}
		})
	}
}

// TestPublishPayloadWritesThePayloadsOwnJSON: on both buses, a health
// signal published as the runtime publishes it (PublishPayload) is an
// entry whose payload is the signal's own JSON (HealthSignal.AppendJSON)
// byte for byte, whose envelope is the contract's (the embedded bus's
// line, checked by readBack, and the timestamp text), with a fresh
// version 4 event id and the publish time; Publish of the same fields as a
// map writes the same values.
func TestPublishPayloadWritesThePayloadsOwnJSON(t *testing.T) {
	for _, impl := range implementations {
		t.Run(impl.name, func(t *testing.T) {
			b := impl.open(t)
			const n = 300 // more than one batch
			sigs := make([]contracts.HealthSignal, n)
			for i := range n {
				sigs[i] = healthSignal(i)
				if err := b.bus.PublishPayload(contracts.TopicTelemetrySeedHealth, "kasmina-host.test-node", "layer1/"+strconv.Itoa(i%4)+"/k", &sigs[i]); err != nil {
					t.Fatalf("PublishPayload %d: %v", i, err)
				}
			}
			if err := b.bus.Flush(testCtx(t)); err != nil {
				t.Fatal(err)
			}
			got := b.readBack(t, string(contracts.TopicTelemetrySeedHealth))
			if len(got) != n {
				t.Fatalf("read back %d entries, want %d", len(got), n)
			}
			ids := map[string]bool{}
			for i, fields := range got {
				if len(fields) != numFields {
					t.Fatalf("entry %d has fields %v, want exactly %v", i, fields, fieldNames)
				}
				if want := string(sigs[i].AppendJSON(nil)); fields[FieldPayload] != want {
					t.Fatalf("entry %d payload %s, want the signal's own JSON %s", i, fields[FieldPayload], want)
				}
				msg, err := DecodeFields(fields)
				if err != nil {
					t.Fatalf("entry %d does not decode: %v", i, err)
				}
				if id, err := uuid.Parse(msg.EventID); err != nil || id.Version() != 4 || ids[msg.EventID] {
					t.Fatalf("entry %d event_id %q is not a fresh version 4 UUID", i, msg.EventID)
				}
				ids[msg.EventID] = true
				if msg.SenderID != "kasmina-host.test-node" || msg.TraceID != "layer1/"+strconv.Itoa(i%4)+"/k" || msg.Topic != contracts.TopicTelemetrySeedHealth {
					t.Fatalf("entry %d is %+v", i, msg)
				}
				if time.Since(msg.Timestamp) > time.Minute || msg.Timestamp.Location() != time.UTC {
					t.Fatalf("entry %d timestamp %v is not the publish time in UTC", i, msg.Timestamp)
				}
				var env map[string]json.RawMessage
				if err := json.Unmarshal(msg.AppendJSON(nil), &env); err != nil {
					t.Fatal(err)
				}
				if `"`+fields[FieldTimestamp]+`"` != string(env[FieldTimestamp]) {
					t.Fatalf("entry %d timestamp %s; the contract writes %s", i, fields[FieldTimestamp], env[FieldTimestamp])
				}
				// The same fields as a map, through Publish's encoder,
				// are the same values (keys sorted instead).
				var fast, slow map[string]any
				asMap := healthMessage(t, i)
				asMap.Payload = healthPayload(&sigs[i])
				mapFields, err := EncodeFields(asMap)
				if err != nil {
					t.Fatal(err)
				}
				if json.Unmarshal([]byte(fields[FieldPayload]), &fast) != nil || json.Unmarshal([]byte(mapFields[2*5+1]), &slow) != nil || !reflect.DeepEqual(fast, slow) {
					t.Fatalf("entry %d payload %v; as a map it is %v", i, fast, slow)
				}
			}
			if s := b.bus.Stats(); s.Published != n || s.Delivered != n {
				t.Fatalf("stats = %+v", s)
			}
		})
	}
}

func TestPublishPayloadRefusesWhatTheContractRefuses(t *testing.T) {
	for _, impl := range implementations {
		t.Run(impl.name, func(t *testing.T) {
			b := impl.open(t)
			nan := healthSignal(1)
			nan.HealthScore = math.NaN()
			negative := healthSignal(1)
			negative.LayerID = -1
			for _, c := range []struct {
				name, sender, trace string
				topic               contracts.TopicName
				sig                 contracts.HealthSignal
				want                error
				names               string
			}{
				{"numeric sender", "42", "t", contracts.TopicTelemetrySeedHealth, healthSignal(1), ErrAmbiguousField, FieldSenderID},
				{"boolean trace", "s", "true", contracts.TopicTelemetrySeedHealth, healthSignal(1), ErrAmbiguousField, FieldTraceID},
				{"sender not UTF-8", "s\xff", "t", contracts.TopicTelemetrySeedHealth, healthSignal(1), ErrInvalidMessage, FieldSenderID},
				{"NaN health score", "s", "t", contracts.TopicTelemetrySeedHealth, nan, ErrInvalidMessage, "health_score"},
				{"negative layer", "s", "t", contracts.TopicTelemetrySeedHealth, negative, ErrInvalidMessage, "layer_id"},
				{"unknown topic", "s", "t", "telemetry.nope", healthSignal(1), ErrInvalidMessage, "topic"},
			} {
				err := b.bus.PublishPayload(c.topic, c.sender, c.trace, &c.sig)
				if !errors.Is(err, c.want) || !strings.Contains(err.Error(), c.names) {
					t.Errorf("%s: PublishPayload = %v, want %v naming %s", c.name, err, c.want, c.names)
				}
			}
			if s := b.bus.Stats(); s.Published != 0 {
				t.Fatalf("refused signals were counted as published: %+v", s)
			}
			if err := b.bus.Close(testCtx(t)); err != nil {
				t.Fatal(err)
			}
			sig := healthSignal(1)
			if err := b.bus.PublishPayload(contracts.TopicTelemetrySeedHealth, "s", "t", &sig); !errors.Is(err, ErrClosed) {
				t.Fatalf("PublishPayload after Close = %v, want ErrClosed", err)
			}
		})
	}
}

// TestEventIDsAreDistinctVersion4UUIDs: the pooled event ids are RFC 4122
// version 4 UUIDs in canonical form, distinct across goroutines and pool
// refills.
func TestEventIDsAreDistinctVersion4UUIDs(t *testing.T) {
	const goroutines, each = 4, 3000 // many refills of the pool
	ids := make(chan string, goroutines*each)
	var wg sync.WaitGroup
	for range goroutines {
		wg.Go(func() {
			for range each {
				ids <- eventIDs.newID()
			}
		})
	}
	wg.Wait()
	close(ids)
	seen := make(map[string]bool, goroutines*each)
	for id := range ids {
		u, err := uuid.Parse(id)
		if err != nil || u.Version() != 4 || u.Variant() != uuid.RFC4122 || u.String() != id {
			t.Fatalf("%q: %v, version %d variant %s", id, err, u.Version(), u.Variant())
		}
		if seen[id] {
			t.Fatalf("%s handed out twice", id)
		}
		seen[id] = true
	}
}
