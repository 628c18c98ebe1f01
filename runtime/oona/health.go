package oona

import (
	"crypto/rand"
	"fmt"
	"sync"
	"time"

	"github.com/google/uuid"

	"github.com/esper/kasmina-host/contracts"
)

// PublishHealthSignal publishes sig on telemetry.seed.health without
// blocking, as the OonaMessage NewOonaMessage(senderID, traceID,
// TopicTelemetrySeedHealth, <sig's fields>) would be: a new event_id, the
// current time, and exactly the HealthSignal's fields as the payload. It
// is Publish's fast path for the host's most frequent message: the payload
// is encoded straight from the struct (sig.AppendJSON) instead of through a
// map, and the entry's values share one allocation. It returns
// ErrInvalidMessage (wrapped, naming the field) for a signal the contract
// refuses, ErrAmbiguousField for an id the Python reader would parse as
// JSON, and ErrClosed after Close.
func (b *RedisBus) PublishHealthSignal(senderID, traceID string, sig contracts.HealthSignal) error {
	e, err := encodeHealthSignal(eventIDs.newID(), contracts.Now(), senderID, traceID, &sig)
	if err != nil {
		return err
	}
	return b.pub.enqueue(e)
}

// PublishHealthSignal is RedisBus.PublishHealthSignal on the embedded bus:
// the JSON line written holds the same message Publish would write.
func (b *EmbeddedBus) PublishHealthSignal(senderID, traceID string, sig contracts.HealthSignal) error {
	e, err := encodeHealthSignal(eventIDs.newID(), contracts.Now(), senderID, traceID, &sig)
	if err != nil {
		return err
	}
	e.line = appendEntryLine(make([]byte, 0, e.size+64), &e)
	e.size += len(e.line)
	return b.pub.enqueue(e)
}

// encodeHealthSignal validates sig and the ids and returns the stream entry
// of a telemetry.seed.health message. The generated values (event_id,
// timestamp, payload) are substrings of one string.
func encodeHealthSignal(id uuid.UUID, ts time.Time, senderID, traceID string, sig *contracts.HealthSignal) (entry, error) {
	if err := sig.Validate(); err != nil {
		return entry{}, fmt.Errorf("%w: payload: %w", ErrInvalidMessage, err)
	}
	if err := CheckWireString(FieldSenderID, senderID); err != nil {
		return entry{}, err
	}
	if err := CheckWireString(FieldTraceID, traceID); err != nil {
		return entry{}, err
	}
	if y := ts.Year(); y < 1 || y > 9999 {
		return entry{}, fmt.Errorf("%w: timestamp year %d is outside 1..9999", ErrInvalidMessage, y)
	}
	var scratch [512]byte
	b := appendUUID(scratch[:0], id)
	tsAt := len(b)
	b = appendWireTimestamp(b, ts)
	payloadAt := len(b)
	b = sig.AppendJSON(b)
	s := string(b)
	topic := string(contracts.TopicTelemetrySeedHealth)
	e := entry{stream: topic, vals: [numFields]string{
		s[:tsAt], senderID, s[tsAt:payloadAt], traceID, topic, s[payloadAt:],
	}}
	e.size = entrySize(&e.vals)
	return e, nil
}

// appendUUID writes u in its canonical 8-4-4-4-12 lower-case form.
func appendUUID(b []byte, u uuid.UUID) []byte {
	for i, c := range u {
		if i == 4 || i == 6 || i == 8 || i == 10 {
			b = append(b, '-')
		}
		b = append(b, hexDigits[c>>4], hexDigits[c&0xF])
	}
	return b
}

// appendEntryLine writes the entry as the embedded bus's JSON line: the
// contract's JSON of the OonaMessage, fields in wire order. The payload
// value is JSON already; the timestamp is the contract's JSON string.
func appendEntryLine(b []byte, e *entry) []byte {
	b = append(b, '{')
	for k := range e.vals {
		if k > 0 {
			b = append(b, ',')
		}
		b = appendJSONString(b, fieldNames[k])
		b = append(b, ':')
		if fieldNames[k] == FieldPayload {
			b = append(b, e.vals[k]...)
		} else {
			b = appendJSONString(b, e.vals[k])
		}
	}
	return append(b, '}')
}

// idPool hands out random (version 4) UUIDs for event ids from crypto/rand
// bytes fetched 4 KiB at a time: one read per 256 ids instead of one per
// id, which was a tenth of a health signal's encoding. It is what
// uuid.EnableRandPool does, kept to this package rather than switched on
// for the whole process. Event ids are unique labels, not secrets.
type idPool struct {
	mu  sync.Mutex
	buf [4096]byte
	off int
}

// eventIDs is the pool the publishers draw event ids from.
var eventIDs = &idPool{off: 4096}

// newID returns a random version 4, variant RFC 4122 UUID.
func (p *idPool) newID() uuid.UUID {
	var u uuid.UUID
	p.mu.Lock()
	if p.off+len(u) > len(p.buf) {
		_, _ = rand.Read(p.buf[:]) // never fails (crypto/rand.Read)
		p.off = 0
	}
	copy(u[:], p.buf[p.off:])
	p.off += len(u)
	p.mu.Unlock()
	u[6] = (u[6] & 0x0f) | 0x40 // version 4
	u[8] = (u[8] & 0x3f) | 0x80 // variant 10
	return u
}

// Both buses offer the runtime's health-signal fast path (the runtime
// looks for this method on its publisher).
var (
	_ interface {
		PublishHealthSignal(senderID, traceID string, sig contracts.HealthSignal) error
	} = (*RedisBus)(nil)
	_ interface {
		PublishHealthSignal(senderID, traceID string, sig contracts.HealthSignal) error
	} = (*EmbeddedBus)(nil)
)
