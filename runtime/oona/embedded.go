package oona

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"sync/atomic"

	"github.com/esper/kasmina-host/contracts"
)

// EmbeddedBus is the in-process bus used when no Redis is configured: every
// published message is written as one JSON line (the contract's JSON of the
// OonaMessage) to an io.Writer, and handed to in-process subscribers (the
// host's own command and epoch consumers), so one machine works out of the
// box. It shares the buffered publisher with RedisBus: Publish never
// blocks, the buffer is bounded, and write errors are retried with backoff.
type EmbeddedBus struct {
	pub    *bufferedPublisher
	sink   *lineSink
	cfg    Config
	logger *slog.Logger
	cons   consumerCounters

	dlqMu sync.Mutex
	dlq   []DeadLetter
}

// NewEmbeddedBus returns an embedded bus writing JSON lines to w (nil
// discards them). closer, when not nil, is closed by Close after the last
// line (the file Open opened).
func NewEmbeddedBus(w io.Writer, closer io.Closer, cfg Config, logger *slog.Logger) *EmbeddedBus {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	if w == nil {
		w = io.Discard
	}
	s := &lineSink{w: bufio.NewWriterSize(w, 64<<10), closer: closer, subs: make(map[string][]*subscription)}
	pub := newBufferedPublisher(cfg.Publisher, s, logger)
	pub.lines = true
	return &EmbeddedBus{pub: pub, sink: s, cfg: cfg, logger: logger}
}

// Publish validates and encodes msg and queues it without blocking. It
// returns ErrInvalidMessage or ErrAmbiguousField (wrapped) for a message
// that must not go on the bus, and ErrClosed after Close. msg is encoded
// before Publish returns: the caller may change it afterwards.
func (b *EmbeddedBus) Publish(msg contracts.OonaMessage) error {
	return b.pub.publish(&msg, nil)
}

// Flush waits until everything published so far is written or dropped.
func (b *EmbeddedBus) Flush(ctx context.Context) error { return b.pub.Flush(ctx) }

// Close flushes until ctx ends, counts what is left as dropped, closes the
// subscriptions and the output file.
func (b *EmbeddedBus) Close(ctx context.Context) error {
	err := b.pub.Close(ctx)
	b.sink.closeSubs()
	return err
}

// Stats returns the publisher counters.
func (b *EmbeddedBus) Stats() Stats { return b.pub.Stats() }

// ConsumerStats returns the command consumer counters.
func (b *EmbeddedBus) ConsumerStats() ConsumerStats { return b.cons.snapshot() }

// Subscribe returns a subscription receiving every message published on
// topic from now on, decoded back from its wire fields as a Redis reader
// would see it. Up to depth messages wait for the reader (default 1024);
// beyond that the subscription loses the newest and counts them.
func (b *EmbeddedBus) Subscribe(topic contracts.TopicName, depth int) *Subscription {
	if depth <= 0 {
		depth = 1024
	}
	s := &subscription{ch: make(chan map[string]string, depth)}
	b.sink.mu.Lock()
	if b.sink.closed {
		close(s.ch)
	} else {
		b.sink.subs[string(topic)] = append(b.sink.subs[string(topic)], s)
	}
	b.sink.mu.Unlock()
	return &Subscription{sub: s, bus: b, topic: string(topic)}
}

// Subscription is an in-process subscription to one topic of an EmbeddedBus.
type Subscription struct {
	sub   *subscription
	bus   *EmbeddedBus
	topic string
}

// C delivers the stream entry fields of each message (nil after close).
func (s *Subscription) C() <-chan map[string]string { return s.sub.ch }

// Lost returns how many messages the subscription lost to a full queue.
func (s *Subscription) Lost() uint64 { return s.sub.lost.Load() }

// Unsubscribe stops deliveries and closes C.
func (s *Subscription) Unsubscribe() {
	ls := s.bus.sink
	ls.mu.Lock()
	defer ls.mu.Unlock()
	subs := ls.subs[s.topic]
	for i, x := range subs {
		if x == s.sub {
			ls.subs[s.topic] = append(subs[:i:i], subs[i+1:]...)
			close(x.ch)
			return
		}
	}
}

type subscription struct {
	ch   chan map[string]string
	lost atomic.Uint64
}

// lineSink writes entries as JSON lines and fans them out to subscribers.
type lineSink struct {
	w      *bufio.Writer
	closer io.Closer

	mu     sync.Mutex
	subs   map[string][]*subscription
	closed bool
}

func (s *lineSink) write(_ context.Context, batch []entry) []error {
	errs := make([]error, len(batch))
	for i := range batch {
		if _, err := s.w.WriteString(batch[i].line); err != nil {
			errs[i] = err
			continue
		}
		if err := s.w.WriteByte('\n'); err != nil {
			errs[i] = err
		}
	}
	if err := s.w.Flush(); err != nil {
		for i := range errs {
			if errs[i] == nil {
				errs[i] = err
			}
		}
		return errs
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for i := range batch {
		if errs[i] != nil {
			continue
		}
		for _, sub := range s.subs[batch[i].stream] {
			select {
			case sub.ch <- batch[i].fieldMap():
			default:
				sub.lost.Add(1)
			}
		}
	}
	return errs
}

func (s *lineSink) permanent(error) bool { return false }

func (s *lineSink) probe(context.Context) error { return nil }

func (s *lineSink) close() error {
	err := s.w.Flush()
	if s.closer != nil {
		err = errors.Join(err, s.closer.Close())
	}
	return err
}

func (s *lineSink) closeSubs() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return
	}
	s.closed = true
	for _, subs := range s.subs {
		for _, sub := range subs {
			close(sub.ch)
		}
	}
	s.subs = nil
}

// DeadLetter is an entry the embedded bus's command consumer gave up on.
type DeadLetter struct {
	// Fields are the entry's wire fields.
	Fields map[string]string
	// Reason says why.
	Reason string
}

// DeadLetters returns the most recent dead letters (at most 100), oldest
// first. The embedded bus has no dead-letter stream; it logs, counts and
// keeps these.
func (b *EmbeddedBus) DeadLetters() []DeadLetter {
	b.dlqMu.Lock()
	defer b.dlqMu.Unlock()
	return append([]DeadLetter(nil), b.dlq...)
}

func (b *EmbeddedBus) deadLetter(fields map[string]string, reason string) {
	b.cons.deadLettered.Add(1)
	b.logger.Warn("oona: command dead-lettered", slog.String("event_id", fields[FieldEventID]), slog.String("reason", reason))
	b.dlqMu.Lock()
	defer b.dlqMu.Unlock()
	if len(b.dlq) >= 100 {
		b.dlq = append(b.dlq[:0], b.dlq[1:]...)
	}
	b.dlq = append(b.dlq, DeadLetter{Fields: fields, Reason: reason})
}

// ConsumeCommands passes every command published on this bus from now on
// to h, with the same decoding, de-duplication, layer filter and outcome
// rules as RedisBus: a transient error is retried with backoff up to
// MaxDeliveries deliveries, then dead-lettered. It returns nil when ctx
// ends or the bus closes.
func (b *EmbeddedBus) ConsumeCommands(ctx context.Context, h CommandHandler) error {
	if h == nil {
		return errors.New("oona: ConsumeCommands: nil handler")
	}
	opts := b.cfg.Consumer.withDefaults(b.cfg.HostID)
	d := newDispatcher(h, opts, &b.cons, b.logger)
	ln := newLanes(ctx, opts.Lanes, opts.MaxQueued)
	defer ln.wait()
	sub := b.Subscribe(contracts.TopicControlKasminaCommands, 0)
	defer sub.Unsubscribe()
	for {
		select {
		case <-ctx.Done():
			return nil
		case fields, ok := <-sub.C():
			if !ok {
				return nil
			}
			cmd, err := d.decode("", fields)
			if err != nil {
				b.deadLetter(fields, err.Error())
				continue
			}
			if !ln.submit(d.laneOf(cmd), "", func(ctx context.Context) { b.runWithRetries(ctx, d, opts, cmd, fields) }) {
				return nil
			}
		}
	}
}

// runWithRetries handles one command, retrying a transient failure with
// backoff up to MaxDeliveries deliveries before dead-lettering it.
func (b *EmbeddedBus) runWithRetries(ctx context.Context, d *dispatcher, opts ConsumerOptions, cmd Command, fields map[string]string) {
	for attempt := int64(0); ; attempt++ {
		out, reason := d.run(ctx, cmd)
		if out == outcomeDeadLetter {
			b.deadLetter(fields, reason)
		}
		if out != outcomeRetry {
			return
		}
		if attempt+1 >= opts.MaxDeliveries {
			b.deadLetter(fields, fmt.Sprintf("delivered %d times without success: %s", attempt+1, reason))
			return
		}
		if !sleepCtx(ctx, opts.Backoff.Delay(int(attempt))) {
			return
		}
	}
}

// ConsumeEpochs calls fn for every system.events.epoch message published on
// this bus from now on whose payload carries an epoch. It returns nil when
// ctx ends or the bus closes.
func (b *EmbeddedBus) ConsumeEpochs(ctx context.Context, fn EpochFunc) error {
	if fn == nil {
		return errors.New("oona: ConsumeEpochs: nil callback")
	}
	sub := b.Subscribe(contracts.TopicSystemEventsEpoch, 0)
	defer sub.Unsubscribe()
	for {
		select {
		case <-ctx.Done():
			return nil
		case fields, ok := <-sub.C():
			if !ok {
				return nil
			}
			ev, err := decodeEpoch(fields)
			if err != nil {
				b.cons.epochsIgnored.Add(1)
				b.logger.Warn("oona: epoch message ignored", slog.String("event_id", fields[FieldEventID]), slog.Any("error", err))
				continue
			}
			b.cons.epochs.Add(1)
			fn(ctx, ev)
		}
	}
}
