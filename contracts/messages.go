package contracts

// The message models' types, decoders, checks and encoders are
// generated (models_gen.go, from the spec in internal/modelgen); their
// constructors are here.

// NewOonaMessage returns a message with a fresh UUID v4 event ID and the
// current UTC time.
func NewOonaMessage(senderID, traceID string, topic TopicName, payload map[string]any) OonaMessage {
	if payload == nil {
		payload = map[string]any{}
	}
	return OonaMessage{EventID: newUUID(), SenderID: senderID, Timestamp: Now(), TraceID: traceID,
		Topic: topic, Payload: payload}
}
