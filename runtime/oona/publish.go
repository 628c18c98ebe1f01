package oona

import (
	"crypto/rand"
	"sync"

	"github.com/google/uuid"

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
	return contracts.OonaMessage{EventID: eventIDs.newID().String(), SenderID: senderID, Timestamp: contracts.Now(), TraceID: traceID, Topic: topic}
}

// publish encodes msg, its payload written by p when p is not nil, and
// queues it.
func (q *bufferedPublisher) publish(msg *contracts.OonaMessage, p Payload) error {
	e, err := encodeFields(msg, p)
	if err != nil {
		return err
	}
	return q.enqueue(e)
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
