package oona

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"unicode/utf8"

	"github.com/esper/kasmina-host/contracts"
)

// Stream entry field names, one per top-level OonaMessage field, in the
// order they are written.
const (
	FieldEventID   = "event_id"
	FieldSenderID  = "sender_id"
	FieldTimestamp = "timestamp"
	FieldTraceID   = "trace_id"
	FieldTopic     = "topic"
	FieldPayload   = "payload"
)

// numFields is the number of fields of a stream entry.
const numFields = 6

// fieldNames are the entry's field names in wire order; entry.vals holds
// the values in the same order.
var fieldNames = [numFields]string{FieldEventID, FieldSenderID, FieldTimestamp, FieldTraceID, FieldTopic, FieldPayload}

// Sentinel errors of the wire format.
var (
	// ErrAmbiguousField is returned (wrapped, naming the field) when a
	// string field's text parses as JSON (a sender_id of "42", a trace_id
	// of "true"): the Python reader json.loads every field and would read
	// back a number or a bool, failing validation there.
	ErrAmbiguousField = errors.New("oona: string field would read back as JSON")
	// ErrInvalidMessage is returned (wrapped) by Publish for a message
	// that fails the contract's validation or cannot be encoded.
	ErrInvalidMessage = errors.New("oona: invalid message")
	// ErrMalformed is returned (wrapped, naming the field) for a stream
	// entry that does not decode to a valid OonaMessage.
	ErrMalformed = errors.New("oona: malformed stream entry")
)

// readsBackAsJSON reports whether Python's json.loads accepts s: any JSON
// text, plus the NaN and Infinity literals Python also takes. Ids are
// checked on every Publish, so the common case (a letter or a UUID) is
// decided without running a JSON scanner.
func readsBackAsJSON(s string) bool {
	t := trimJSONSpace(s)
	if t == "" {
		return false
	}
	switch c := t[0]; {
	case c == '-' || c >= '0' && c <= '9':
		return isJSONNumber(t) || t == "-Infinity"
	case c == 't':
		return t == "true"
	case c == 'f':
		return t == "false"
	case c == 'n':
		return t == "null"
	case c == 'N':
		return t == "NaN"
	case c == 'I':
		return t == "Infinity"
	case c == '"':
		return json.Valid([]byte(t))
	case c == '[' || c == '{':
		if json.Valid([]byte(t)) {
			return true
		}
		// Python also accepts the literals inside arrays and objects;
		// replacing them is conservative (it may refuse a little more).
		if strings.Contains(t, "NaN") || strings.Contains(t, "Infinity") {
			r := strings.NewReplacer("-Infinity", "0", "Infinity", "0", "NaN", "0")
			return json.Valid([]byte(r.Replace(t)))
		}
	}
	return false
}

// trimJSONSpace strips JSON whitespace from both ends of s (strings.Trim
// builds its character set on every call).
func trimJSONSpace(s string) string {
	for len(s) > 0 && isJSONSpace(s[0]) {
		s = s[1:]
	}
	for len(s) > 0 && isJSONSpace(s[len(s)-1]) {
		s = s[:len(s)-1]
	}
	return s
}

func isJSONSpace(c byte) bool { return c == ' ' || c == '\t' || c == '\r' || c == '\n' }

// isJSONNumber reports whether s is exactly one JSON number.
func isJSONNumber(s string) bool {
	i := 0
	if i < len(s) && s[i] == '-' {
		i++
	}
	switch {
	case i < len(s) && s[i] == '0':
		i++
	case i < len(s) && s[i] >= '1' && s[i] <= '9':
		for i < len(s) && s[i] >= '0' && s[i] <= '9' {
			i++
		}
	default:
		return false
	}
	if i < len(s) && s[i] == '.' {
		i++
		start := i
		for i < len(s) && s[i] >= '0' && s[i] <= '9' {
			i++
		}
		if i == start {
			return false
		}
	}
	if i < len(s) && (s[i] == 'e' || s[i] == 'E') {
		i++
		if i < len(s) && (s[i] == '+' || s[i] == '-') {
			i++
		}
		start := i
		for i < len(s) && s[i] >= '0' && s[i] <= '9' {
			i++
		}
		if i == start {
			return false
		}
	}
	return i == len(s)
}

// CheckWireString returns an error naming field when s cannot be written as
// a string field: text the Python reader would parse as JSON, or bytes
// that are not UTF-8 (redis-py decodes every reply as UTF-8).
func CheckWireString(field, s string) error {
	if !utf8.ValidString(s) {
		return fmt.Errorf("%w: %s is not valid UTF-8", ErrInvalidMessage, field)
	}
	if readsBackAsJSON(s) {
		return fmt.Errorf("%w: %s %q parses as JSON; use a non-numeric, non-literal id such as %q", ErrAmbiguousField, field, s, "host-"+s)
	}
	return nil
}

// encodeFields validates msg and returns its stream entry. The message is
// encoded once, by its contracts: the envelope by OonaMessage.AppendJSON
// (the timestamp and ids as the Python models write them), the payload by
// p.AppendJSON when p is given, otherwise by the contract's encoder of
// msg.Payload (keys sorted). The Redis entry's timestamp (without its
// quotes) and payload are cut out of that JSON, its ids and topic are the
// strings given; with keepLine the entry also keeps the whole JSON, the
// embedded bus's line. msg.Payload is replaced when p is given.
func encodeFields(msg *contracts.OonaMessage, p Payload, keepLine bool) (entry, error) {
	// The contracts' rules (a known topic, a datetime Python can hold, a
	// payload of JSON values with finite numbers), then the wire's own:
	// ids that read back as strings.
	if p != nil {
		if err := p.Validate(); err != nil {
			return entry{}, fmt.Errorf("%w: payload: %w", ErrInvalidMessage, err)
		}
		msg.Payload = noPayload
	}
	if err := msg.Validate(); err != nil {
		return entry{}, fmt.Errorf("%w: %w", ErrInvalidMessage, err)
	}
	for _, f := range [...]struct{ name, v string }{
		{FieldEventID, msg.EventID}, {FieldSenderID, msg.SenderID}, {FieldTraceID, msg.TraceID},
	} {
		if err := CheckWireString(f.name, f.v); err != nil {
			return entry{}, err
		}
	}
	buf := encodeBuffers.Get().(*[]byte)
	defer func() {
		if cap(*buf) <= 64<<10 { // a huge message does not pin its buffer
			encodeBuffers.Put(buf)
		}
	}()
	b := msg.AppendJSON((*buf)[:0])
	if p != nil {
		// The envelope ends with the empty payload and the closing brace;
		// the payload writes itself in their place.
		if !bytes.HasSuffix(b, []byte(`"payload":{}}`)) {
			return entry{}, fmt.Errorf("%w: the contract's JSON of the message does not end with its payload", ErrInvalidMessage)
		}
		at := len(b) - 3
		b = p.AppendJSON(b[:at])
		if len(b) == at || b[at] != '{' {
			return entry{}, fmt.Errorf("%w: payload %T does not write a JSON object", ErrInvalidMessage, p)
		}
		b = append(b, '}')
	}
	ts0, ts1, p0, ok := splitMessageJSON(b)
	if !ok {
		// Unreachable while the contract writes the fields in wire order.
		return entry{}, fmt.Errorf("%w: the contract's JSON of the message does not have the fields %v in order", ErrInvalidMessage, fieldNames)
	}
	var e entry
	var ts, payload string
	if keepLine {
		e.line = string(b)
		ts, payload = e.line[ts0:ts1], e.line[p0:len(b)-1]
	} else {
		// Only the timestamp and the payload, in one string.
		n := len(b)
		b = append(b, b[ts0:ts1]...)
		b = append(b, b[p0:n-1]...)
		both := string(b[n:])
		ts, payload = both[:ts1-ts0], both[ts1-ts0:]
	}
	*buf = b
	topic := string(msg.Topic)
	e.stream = topic
	e.vals = [numFields]string{msg.EventID, msg.SenderID, ts, msg.TraceID, topic, payload}
	e.size = len(e.line)
	for _, v := range e.vals {
		e.size += len(v)
	}
	return e, nil
}

// splitMessageJSON returns where the timestamp's text and the payload's
// JSON are in an OonaMessage's contract JSON, which is written as
// {"event_id":…,"sender_id":…,"timestamp":"…","trace_id":…,"topic":…,"payload":{…}}:
// the timestamp is b[ts0:ts1], the payload b[p0:len(b)-1]. A quote inside
// an encoded string is escaped, so `,"timestamp":"` and `,"payload":`
// occur first where the encoder wrote those keys, whatever the ids hold.
func splitMessageJSON(b []byte) (ts0, ts1, p0 int, ok bool) {
	const tsKey, payloadKey = `,"timestamp":"`, `,"payload":`
	i := bytes.Index(b, []byte(tsKey))
	if i < 0 {
		return 0, 0, 0, false
	}
	ts0 = i + len(tsKey)
	n := bytes.IndexByte(b[ts0:], '"')
	if n < 0 {
		return 0, 0, 0, false
	}
	ts1 = ts0 + n
	j := bytes.Index(b[ts1:], []byte(payloadKey))
	if j < 0 || len(b) == 0 || b[len(b)-1] != '}' {
		return 0, 0, 0, false
	}
	return ts0, ts1, ts1 + j + len(payloadKey), true
}

// noPayload is the empty payload the envelope is written with when the
// payload writes itself. It is never changed.
var noPayload = map[string]any{}

// encodeBuffers hold the encoding of one message until it is copied into
// its entry's string.
var encodeBuffers = sync.Pool{New: func() any { b := make([]byte, 0, 1024); return &b }}

// EncodeFields returns the stream entry fields of msg as name/value pairs in
// wire order, exactly what the Redis publisher XADDs.
func EncodeFields(msg contracts.OonaMessage) ([]string, error) {
	e, err := encodeFields(&msg, nil, false)
	if err != nil {
		return nil, err
	}
	return e.pairs(), nil
}

// pairs returns the entry's fields as name/value pairs in wire order.
func (e *entry) pairs() []string {
	out := make([]string, 0, 2*numFields)
	for k := range e.vals {
		out = append(out, fieldNames[k], e.vals[k])
	}
	return out
}

// fieldMap returns the entry's fields as a map, as a reader sees them.
func (e *entry) fieldMap() map[string]string {
	m := make(map[string]string, numFields)
	for k := range e.vals {
		m[fieldNames[k]] = e.vals[k]
	}
	return m
}

// DecodeFields decodes a stream entry written by the Python Oona client or
// by this package into a validated OonaMessage. It reads each field the way
// the Python reader does (JSON first, the raw string when that fails) but
// keeps string fields as strings: a sender_id of 42 written by a careless
// producer is accepted as "42" rather than refused. The timestamp may use a
// 'T' or a space between date and time. Unknown fields are ignored.
func DecodeFields(fields map[string]string) (contracts.OonaMessage, error) {
	msg, _, err := decodeFields(fields)
	return msg, err
}

// decodeFields is DecodeFields that also returns the payload's JSON text.
func decodeFields(fields map[string]string) (contracts.OonaMessage, []byte, error) {
	var msg contracts.OonaMessage
	raw, ok := fields[FieldPayload]
	if !ok {
		return msg, nil, fmt.Errorf("%w: field %s missing", ErrMalformed, FieldPayload)
	}
	payload := []byte(strings.TrimSpace(raw))
	if len(payload) == 0 || payload[0] != '{' || !json.Valid(payload) {
		return msg, nil, fmt.Errorf("%w: field %s is not a JSON object: %q", ErrMalformed, FieldPayload, truncate(raw, 64))
	}
	var env bytes.Buffer
	env.Grow(len(payload) + 256)
	env.WriteByte('{')
	for _, name := range [...]string{FieldEventID, FieldSenderID, FieldTimestamp, FieldTraceID, FieldTopic} {
		v, ok := fields[name]
		if !ok {
			continue // the contract supplies defaults or names what is missing
		}
		if !utf8.ValidString(v) {
			return msg, nil, fmt.Errorf("%w: field %s is not valid UTF-8", ErrMalformed, name)
		}
		v = unquoteJSONString(v)
		if name == FieldTimestamp && len(v) > 10 && v[10] == ' ' {
			v = v[:10] + "T" + v[11:] // str(datetime) form
		}
		q, err := json.Marshal(v)
		if err != nil {
			return msg, nil, fmt.Errorf("%w: field %s: %w", ErrMalformed, name, err)
		}
		env.WriteByte('"')
		env.WriteString(name)
		env.WriteString(`":`)
		env.Write(q)
		env.WriteByte(',')
	}
	env.WriteString(`"payload":`)
	env.Write(payload)
	env.WriteByte('}')
	msg, err := contracts.DecodeOonaMessage(env.Bytes())
	if err != nil {
		return contracts.OonaMessage{}, nil, fmt.Errorf("%w: %w", ErrMalformed, err)
	}
	return msg, payload, nil
}

// unquoteJSONString returns the string a JSON string literal denotes, or v
// unchanged when v is not one: the Python reader json.loads every field.
func unquoteJSONString(v string) string {
	t := strings.TrimSpace(v)
	if len(t) < 2 || t[0] != '"' {
		return v
	}
	var s string
	if json.Unmarshal([]byte(t), &s) != nil {
		return v
	}
	return s
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}
