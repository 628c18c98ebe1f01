package contracts

import "time"

// OonaMessage is the envelope of every message on the Oona bus. Unknown
// fields are ignored on decode, as the reference does.
type OonaMessage struct {
	EventID   string         `json:"event_id"`
	SenderID  string         `json:"sender_id"`
	Timestamp time.Time      `json:"timestamp"`
	TraceID   string         `json:"trace_id"`
	Topic     TopicName      `json:"topic"`
	Payload   map[string]any `json:"payload"`
}

// NewOonaMessage returns a message with a fresh UUID v4 event ID and the
// current UTC time.
func NewOonaMessage(senderID, traceID string, topic TopicName, payload map[string]any) OonaMessage {
	if payload == nil {
		payload = map[string]any{}
	}
	return OonaMessage{EventID: newUUID(), SenderID: senderID, Timestamp: Now(), TraceID: traceID,
		Topic: topic, Payload: payload}
}

const (
	omEventID = iota
	omSenderID
	omTimestamp
	omTraceID
	omTopic
	omPayload
)

// Validate checks the topic, the payload and the timestamp.
func (o OonaMessage) Validate() error {
	errs := fieldErrors{model: "OonaMessage"}
	o.check(&errs, "", 0)
	return errs.err()
}

func (o *OonaMessage) check(errs *fieldErrors, p string, bad uint32) {
	if !has(bad, omTimestamp) {
		checkTime(errs, p, "timestamp", o.Timestamp)
	}
	if !has(bad, omTopic) && !o.Topic.Valid() {
		errs.add(join(p, "topic"), enumReason(string(o.Topic), topicNames))
	}
	if !has(bad, omPayload) {
		if o.Payload == nil {
			errs.add(join(p, "payload"), "input should be a valid dictionary, got nil")
		}
		checkAnyMap(errs, p, "payload", o.Payload)
	}
}

// DecodeOonaMessage decodes and validates one OonaMessage.
func DecodeOonaMessage(data []byte) (OonaMessage, error) {
	var o OonaMessage
	d := newDecoder("OonaMessage", data)
	o.decode(&d, "")
	return o, d.finish()
}

// UnmarshalJSON decodes and validates; on error o is left unchanged.
func (o *OonaMessage) UnmarshalJSON(data []byte) error {
	v, err := DecodeOonaMessage(data)
	if err != nil {
		return err
	}
	*o = v
	return nil
}

// MarshalJSON encodes o in the reference's field order.
func (o OonaMessage) MarshalJSON() ([]byte, error) { return o.AppendJSON(nil), nil }

func (o *OonaMessage) decode(d *decoder, p string) {
	if !d.openObject(p) {
		return
	}
	var m marks
	first := true
	for {
		k, ok := d.nextKey(&first)
		if !ok {
			break
		}
		var good bool
		switch string(k) {
		case "event_id":
			o.EventID, good = d.str(p, "event_id")
			m.mark(omEventID, good)
		case "sender_id":
			o.SenderID, good = d.str(p, "sender_id")
			m.mark(omSenderID, good)
		case "timestamp":
			o.Timestamp, good = d.timestamp(p, "timestamp")
			m.mark(omTimestamp, good)
		case "trace_id":
			o.TraceID, good = d.str(p, "trace_id")
			m.mark(omTraceID, good)
		case "topic":
			var t string
			t, good = d.enum(p, "topic", topicNames)
			o.Topic = TopicName(t)
			m.mark(omTopic, good)
		case "payload":
			o.Payload, good = d.anyMap(p, "payload", false)
			m.mark(omPayload, good)
		default:
			d.skipValue(0)
		}
		if d.syn != nil {
			return
		}
	}
	if d.syn != nil {
		return
	}
	m.require(d, p, fieldName{omSenderID, "sender_id"}, fieldName{omTraceID, "trace_id"},
		fieldName{omTopic, "topic"}, fieldName{omPayload, "payload"})
	if !has(m.seen, omEventID) {
		o.EventID = newUUID()
	}
	if !has(m.seen, omTimestamp) {
		o.Timestamp = Now()
	}
	o.check(&d.errs, p, m.bad|1<<omPayload)
}

// AppendJSON appends o's JSON encoding to dst.
func (o OonaMessage) AppendJSON(dst []byte) []byte {
	dst = append(dst, `{"event_id":`...)
	dst = appendString(dst, o.EventID)
	dst = append(dst, `,"sender_id":`...)
	dst = appendString(dst, o.SenderID)
	dst = append(dst, `,"timestamp":`...)
	dst = appendTimestamp(dst, o.Timestamp)
	dst = append(dst, `,"trace_id":`...)
	dst = appendString(dst, o.TraceID)
	dst = append(dst, `,"topic":`...)
	dst = appendString(dst, string(o.Topic))
	dst = append(dst, `,"payload":`...)
	dst = appendAnyMap(dst, o.Payload)
	return append(dst, '}')
}

// BlueprintSubmitted is the payload of a blueprint submission event.
// Unknown fields are ignored on decode, as the reference does.
type BlueprintSubmitted struct {
	BlueprintID string `json:"blueprint_id"`
	SubmittedBy string `json:"submitted_by"`
}

// Validate has nothing to check beyond the types: both fields are free
// strings. It exists so every contract answers Validate.
func (b BlueprintSubmitted) Validate() error { return nil }

// DecodeBlueprintSubmitted decodes and validates one BlueprintSubmitted.
func DecodeBlueprintSubmitted(data []byte) (BlueprintSubmitted, error) {
	var b BlueprintSubmitted
	d := newDecoder("BlueprintSubmitted", data)
	b.decode(&d, "")
	return b, d.finish()
}

// UnmarshalJSON decodes and validates; on error b is left unchanged.
func (b *BlueprintSubmitted) UnmarshalJSON(data []byte) error {
	v, err := DecodeBlueprintSubmitted(data)
	if err != nil {
		return err
	}
	*b = v
	return nil
}

// MarshalJSON encodes b in the reference's field order.
func (b BlueprintSubmitted) MarshalJSON() ([]byte, error) { return b.AppendJSON(nil), nil }

func (b *BlueprintSubmitted) decode(d *decoder, p string) {
	if !d.openObject(p) {
		return
	}
	var m marks
	first := true
	for {
		k, ok := d.nextKey(&first)
		if !ok {
			break
		}
		var good bool
		switch string(k) {
		case "blueprint_id":
			b.BlueprintID, good = d.str(p, "blueprint_id")
			m.mark(0, good)
		case "submitted_by":
			b.SubmittedBy, good = d.str(p, "submitted_by")
			m.mark(1, good)
		default:
			d.skipValue(0)
		}
		if d.syn != nil {
			return
		}
	}
	if d.syn != nil {
		return
	}
	m.require(d, p, fieldName{0, "blueprint_id"}, fieldName{1, "submitted_by"})
}

// AppendJSON appends b's JSON encoding to dst.
func (b BlueprintSubmitted) AppendJSON(dst []byte) []byte {
	dst = append(dst, `{"blueprint_id":`...)
	dst = appendString(dst, b.BlueprintID)
	dst = append(dst, `,"submitted_by":`...)
	dst = appendString(dst, b.SubmittedBy)
	return append(dst, '}')
}
