package oona

import (
	"crypto/rand"
	"sync"

	"github.com/esper/kasmina-host/contracts"
)

// Payload is a message payload that writes itself: its JSON object
// (AppendJSON) and its contract's checks (Validate). contracts.HealthSignal
// is one: the runtime publishes its health signals as such.
type Payload interface {
	AppendJSON(dst []byte) []byte
	Validate() error
}

// PublishPayload queues, without blocking, a new message on topic: a fresh
// event_id, the current time, senderID and traceID, and p as the payload,
// written by p itself. It returns ErrInvalidMessage (wrapped, naming the
// field) for a payload its contract refuses, ErrAmbiguousField for an id
// the Python reader would parse as JSON, and ErrClosed after Close.
func (b *RedisBus) PublishPayload(topic contracts.TopicName, senderID, traceID string, p Payload) error {
	msg := newMessage(topic, senderID, traceID)
	return b.pub.publish(&msg, p)
}

// PublishPayload is RedisBus.PublishPayload on the embedded bus.
func (b *EmbeddedBus) PublishPayload(topic contracts.TopicName, senderID, traceID string, p Payload) error {
	msg := newMessage(topic, senderID, traceID)
	return b.pub.publish(&msg, p)
}

// newMessage is the envelope of a new message, without its payload.
func newMessage(topic contracts.TopicName, senderID, traceID string) contracts.OonaMessage {
	return contracts.OonaMessage{EventID: eventIDs.newID(), SenderID: senderID, Timestamp: contracts.Now(), TraceID: traceID, Topic: topic}
}

// publish encodes msg, its payload written by p when p is not nil, and
// queues it.
func (q *bufferedPublisher) publish(msg *contracts.OonaMessage, p Payload) error {
	e, err := encodeFields(msg, p, q.lines)
	if err != nil {
		return err
	}
	return q.enqueue(e)
}

// idPool hands out event ids: random (version 4) UUIDs in their string
// form, made idsPerFill at a time from one crypto/rand read into one
// string, so that an id costs neither a read nor an allocation of its own.
// It is what uuid.EnableRandPool does, kept to this package rather than
// switched on for the whole process. Event ids are unique labels, not
// secrets.
type idPool struct {
	mu  sync.Mutex
	ids string // idsPerFill ids of uuidLen bytes each, back to back
	off int
}

// idsPerFill is how many ids one refill makes.
const idsPerFill = 128

// uuidLen is the length of a UUID's 8-4-4-4-12 form.
const uuidLen = 36

const hexDigits = "0123456789abcdef"

// eventIDs is the pool the publishers draw event ids from.
var eventIDs = &idPool{}

// newID returns a fresh version 4, variant RFC 4122 UUID as a string.
func (p *idPool) newID() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.off == len(p.ids) {
		var random [idsPerFill * 16]byte
		_, _ = rand.Read(random[:]) // never fails (crypto/rand.Read)
		b := make([]byte, 0, idsPerFill*uuidLen)
		for i := range idsPerFill {
			u := random[16*i : 16*i+16]
			u[6] = (u[6] & 0x0f) | 0x40 // version 4
			u[8] = (u[8] & 0x3f) | 0x80 // variant 10
			for k, c := range u {
				if k == 4 || k == 6 || k == 8 || k == 10 {
					b = append(b, '-')
				}
				b = append(b, hexDigits[c>>4], hexDigits[c&0xF])
			}
		}
		p.ids, p.off = string(b), 0
	}
	id := p.ids[p.off : p.off+uuidLen]
	p.off += uuidLen
	return id
}
