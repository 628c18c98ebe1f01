package oona

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/esper/kasmina-host/contracts"
)

// RedisBus is the Oona bus on Redis Streams, byte-compatible with the
// Python Oona client: a buffered, batching publisher (pipelined XADD) and
// consumers for control.kasmina.commands and system.events.epoch.
type RedisBus struct {
	cfg    Config
	logger *slog.Logger
	pub    *bufferedPublisher
	cons   consumerCounters

	// consumerClient serves the blocking reads; the publisher has its own
	// connection (redisSink) so a blocked XREADGROUP never holds up a
	// flush.
	consumerClient *redis.Client
}

// NewRedisBus connects to the Redis cfg.URL names. It does not fail when
// Redis is unreachable: the publisher buffers and reconnects with backoff,
// the consumers retry. It fails on a configuration error (bad URL,
// unreadable password file).
func NewRedisBus(ctx context.Context, cfg Config, logger *slog.Logger) (*RedisBus, error) {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	opts, err := cfg.redisOptions()
	if err != nil {
		return nil, err
	}
	if cfg.HostID == "" {
		h, herr := os.Hostname()
		if herr != nil || h == "" {
			return nil, fmt.Errorf("oona: Config.HostID empty and no hostname: %w", herr)
		}
		cfg.HostID = h
	}
	cfg.Consumer = cfg.Consumer.withDefaults(cfg.HostID)
	po := cfg.Publisher.withDefaults()
	s := newRedisSink(opts, "kasmina-pub-"+cfg.HostID, po.MaxLen)
	consOpts := *opts
	consOpts.MaxRetries = -1
	noDialRetries(&consOpts)
	consOpts.ReadTimeout = cfg.Consumer.Block + 3*time.Second
	consOpts.ClientName = "kasmina-cons-" + cfg.HostID
	// A first PING, only to say in the log whether Redis is there (not
	// the flusher's probe, which closes the client when its ctx ends).
	pctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	if err := s.client.Ping(pctx).Err(); err != nil {
		logger.Warn("oona: Redis not reachable yet; buffering and retrying", slog.String("url", cfg.RedactedURL()), slog.Any("error", err))
	} else {
		logger.Info("oona: connected to Redis", slog.String("url", cfg.RedactedURL()), slog.String("group", cfg.Consumer.Group))
	}
	b := &RedisBus{
		cfg:            cfg,
		logger:         logger,
		pub:            newBufferedPublisher(po, s, logger),
		consumerClient: redis.NewClient(&consOpts),
	}
	return b, nil
}

// noDialRetries makes each of the consumer's attempts one dial. go-redis
// otherwise dials up to 5 times, 100 ms apart, inside every command, so a
// 1 s outage would show as 1-2 retries instead of the ~5 the backoff
// schedule implies.
// After PoolSize failed dials go-redis fails fast and probes on its own
// once a second until Redis answers; the pool is sized so that this
// happens only after the backoff has reached its ceiling (16 attempts,
// about 30 s), and only one connection per client is in use at a time.
func noDialRetries(o *redis.Options) {
	o.DialerRetries = 1
	o.PoolSize = 16
}

// Publish validates and encodes msg and queues it for XADD without
// blocking. It returns ErrInvalidMessage or ErrAmbiguousField (wrapped) for
// a message that must not go on the bus, and ErrClosed after Close. When
// the buffer is full the oldest message is dropped and counted. msg is
// encoded before Publish returns: the caller may change it afterwards.
func (b *RedisBus) Publish(msg contracts.OonaMessage) error {
	return b.pub.publish(&msg, nil)
}

// Flush waits until everything published so far is delivered or dropped.
func (b *RedisBus) Flush(ctx context.Context) error { return b.pub.Flush(ctx) }

// Close flushes until ctx ends, counts what is left as dropped (reason
// shutdown) and closes the connections.
func (b *RedisBus) Close(ctx context.Context) error {
	err := b.pub.Close(ctx)
	return errors.Join(err, b.consumerClient.Close())
}

// Stats returns the publisher counters.
func (b *RedisBus) Stats() Stats { return b.pub.Stats() }

// ConsumerStats returns the consumer counters.
func (b *RedisBus) ConsumerStats() ConsumerStats { return b.cons.snapshot() }

// ConsumeCommands reads control.kasmina.commands through this host's own
// consumer group until ctx ends, passing each command to h. The group is
// created at "$" with MKSTREAM on first start (BUSYGROUP ignored), so a new
// host does not replay history and a restarted one resumes where it left.
// Pending entries of this consumer are handled first; stale pending
// entries are reclaimed with XAUTOCLAIM; entries delivered MaxDeliveries
// times, malformed ones and permanent failures go to the dead-letter
// stream and are acknowledged. Connection failures are retried with
// backoff. It returns nil when ctx ends.
func (b *RedisBus) ConsumeCommands(ctx context.Context, h CommandHandler) error {
	if h == nil {
		return errors.New("oona: ConsumeCommands: nil handler")
	}
	opts := b.cfg.Consumer
	d := newDispatcher(h, opts, &b.cons, b.logger)
	ln := newLanes(ctx, opts.Lanes, opts.MaxQueued)
	defer ln.wait()
	stream := string(contracts.TopicControlKasminaCommands)
	attempt := 0
	for ctx.Err() == nil {
		progressed, err := b.commandSession(ctx, d, ln, opts, stream)
		if ctx.Err() != nil {
			return nil
		}
		if progressed {
			attempt = 0
		}
		b.logger.Warn("oona: command consumer lost Redis, retrying", slog.Any("error", err), slog.String("group", opts.Group))
		sleepCtx(ctx, opts.Backoff.Delay(attempt))
		attempt++
	}
	return nil
}

// commandSession runs until an error; progressed reports whether the
// group was reached at all (to reset the backoff).
func (b *RedisBus) commandSession(ctx context.Context, d *dispatcher, ln *lanes, opts ConsumerOptions, stream string) (bool, error) {
	c := b.consumerClient
	if err := c.XGroupCreateMkStream(ctx, stream, opts.Group, "$").Err(); err != nil && !redis.HasErrorPrefix(err, "BUSYGROUP") {
		return false, fmt.Errorf("creating group %s on %s: %w", opts.Group, stream, err)
	}
	// This consumer's own pending history first, then new entries.
	start := "0"
	for {
		res, err := c.XReadGroup(ctx, &redis.XReadGroupArgs{Group: opts.Group, Consumer: opts.Consumer, Streams: []string{stream, start}, Count: opts.Count, Block: -1}).Result()
		if err != nil && !errors.Is(err, redis.Nil) {
			return true, fmt.Errorf("reading pending entries: %w", err)
		}
		if len(res) == 0 || len(res[0].Messages) == 0 {
			break
		}
		for _, m := range res[0].Messages {
			if err := b.processEntry(ctx, d, ln, opts, stream, m); err != nil {
				return true, err
			}
			start = m.ID
		}
	}
	lastJanitor := time.Time{}
	for ctx.Err() == nil {
		if time.Since(lastJanitor) >= opts.JanitorInterval {
			if err := b.janitor(ctx, d, ln, opts, stream); err != nil {
				return true, err
			}
			lastJanitor = time.Now()
		}
		block := min(opts.Block, opts.JanitorInterval)
		res, err := c.XReadGroup(ctx, &redis.XReadGroupArgs{Group: opts.Group, Consumer: opts.Consumer, Streams: []string{stream, ">"}, Count: opts.Count, Block: block}).Result()
		if errors.Is(err, redis.Nil) {
			continue
		}
		if err != nil {
			return true, fmt.Errorf("XREADGROUP: %w", err)
		}
		for _, s := range res {
			for _, m := range s.Messages {
				if err := b.processEntry(ctx, d, ln, opts, stream, m); err != nil {
					return true, err
				}
			}
		}
	}
	return true, ctx.Err()
}

// processEntry decodes one entry and hands it to its seed's lane, which
// runs the handler and then acknowledges, dead-letters or leaves the entry
// pending. A malformed entry is dead-lettered at once; an entry already in
// a lane (reclaimed while it waits or runs) is left alone.
func (b *RedisBus) processEntry(ctx context.Context, d *dispatcher, ln *lanes, opts ConsumerOptions, stream string, m redis.XMessage) error {
	c := b.consumerClient
	if ln.busy(m.ID) {
		return nil
	}
	if m.Values == nil {
		// Pending, but the stream entry is gone (trimmed or deleted).
		b.cons.trimmed.Add(1)
		b.logger.Warn("oona: pending command entry no longer in the stream", slog.String("stream_id", m.ID))
		return c.XAck(ctx, stream, opts.Group, m.ID).Err()
	}
	fields := stringFields(m.Values)
	cmd, err := d.decode(m.ID, fields)
	if err != nil {
		return b.settle(ctx, opts, stream, fields, m.ID, outcomeDeadLetter, err.Error())
	}
	ln.submit(d.laneOf(cmd), m.ID, func(ctx context.Context) {
		out, reason := d.run(ctx, cmd)
		// A command that ran is settled even when shutdown has begun.
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		if err := b.settle(sctx, opts, stream, fields, m.ID, out, reason); err != nil {
			b.logger.Warn("oona: command entry left pending", slog.String("stream_id", m.ID), slog.Any("error", err))
		}
	})
	return nil
}

// settle acknowledges an entry, after copying it to the dead-letter
// stream for outcomeDeadLetter, or leaves it pending for outcomeRetry.
func (b *RedisBus) settle(ctx context.Context, opts ConsumerOptions, stream string, fields map[string]string, id string, out outcome, reason string) error {
	switch out {
	case outcomeRetry:
		return nil
	case outcomeDeadLetter:
		if err := b.deadLetter(ctx, opts, fields, id, reason); err != nil {
			return err
		}
	}
	if err := b.consumerClient.XAck(ctx, stream, opts.Group, id).Err(); err != nil {
		return fmt.Errorf("XACK %s: %w", id, err)
	}
	return nil
}

// deadLetter copies an entry to the dead-letter stream with the reason.
func (b *RedisBus) deadLetter(ctx context.Context, opts ConsumerOptions, fields map[string]string, id, reason string) error {
	vals := make([]any, 0, 2*len(fields)+6)
	for k, v := range fields {
		if k == FieldDLQReason || k == FieldDLQSourceID || k == FieldDLQGroup {
			continue
		}
		vals = append(vals, k, v)
	}
	vals = append(vals, FieldDLQReason, reason, FieldDLQSourceID, id, FieldDLQGroup, opts.Group)
	err := b.consumerClient.XAdd(ctx, &redis.XAddArgs{Stream: opts.DeadLetterStream, MaxLen: 10000, Approx: true, Values: vals}).Err()
	if err != nil {
		return fmt.Errorf("XADD %s: %w", opts.DeadLetterStream, err)
	}
	b.cons.deadLettered.Add(1)
	b.logger.Warn("oona: command entry dead-lettered", slog.String("stream_id", id), slog.String("dlq", opts.DeadLetterStream), slog.String("reason", reason))
	return nil
}

// janitor dead-letters entries delivered too often and reclaims stale
// pending entries (this host's own, after a handler failure or a crash).
func (b *RedisBus) janitor(ctx context.Context, d *dispatcher, ln *lanes, opts ConsumerOptions, stream string) error {
	c := b.consumerClient
	pend, err := c.XPendingExt(ctx, &redis.XPendingExtArgs{Stream: stream, Group: opts.Group, Idle: opts.MinIdle, Start: "-", End: "+", Count: 100}).Result()
	if err != nil && !errors.Is(err, redis.Nil) {
		return fmt.Errorf("XPENDING: %w", err)
	}
	for _, p := range pend {
		if p.RetryCount < opts.MaxDeliveries || ln.busy(p.ID) {
			continue
		}
		msgs, err := c.XRangeN(ctx, stream, p.ID, p.ID, 1).Result()
		if err != nil {
			return fmt.Errorf("XRANGE %s: %w", p.ID, err)
		}
		if len(msgs) == 0 {
			b.cons.trimmed.Add(1)
		} else if err := b.deadLetter(ctx, opts, stringFields(msgs[0].Values), p.ID, fmt.Sprintf("delivered %d times without success", p.RetryCount)); err != nil {
			return err
		}
		if err := c.XAck(ctx, stream, opts.Group, p.ID).Err(); err != nil {
			return fmt.Errorf("XACK %s: %w", p.ID, err)
		}
	}
	start := "0-0"
	for range 10 {
		msgs, next, deleted, err := c.XAutoClaimWithDeleted(ctx, &redis.XAutoClaimArgs{Stream: stream, Group: opts.Group, Consumer: opts.Consumer, MinIdle: opts.MinIdle, Start: start, Count: 100}).Result()
		if err != nil && !errors.Is(err, redis.Nil) {
			return fmt.Errorf("XAUTOCLAIM: %w", err)
		}
		if len(deleted) > 0 {
			b.cons.trimmed.Add(uint64(len(deleted)))
			b.logger.Warn("oona: pending command entries were trimmed before handling", slog.Int("count", len(deleted)))
		}
		for _, m := range msgs {
			if err := b.processEntry(ctx, d, ln, opts, stream, m); err != nil {
				return err
			}
		}
		if next == "0-0" || next == "" {
			break
		}
		start = next
	}
	return nil
}

// EpochEvent is one system.events.epoch message.
type EpochEvent struct {
	// Epoch is the payload's epoch.
	Epoch int64
	// EventType is the payload's event_type, when present.
	EventType string
	// Message is the whole message.
	Message contracts.OonaMessage
}

// EpochFunc receives epoch events.
type EpochFunc func(ctx context.Context, ev EpochEvent)

// ConsumeEpochs calls fn for the latest system.events.epoch entry there
// is when it starts (XREVRANGE COUNT 1: a host that restarts learns the
// epoch it missed), then for each new one (XREAD, no group: every reader
// sees every event), for each message whose payload carries a
// non-negative integer epoch. It resumes after the last entry seen when
// the connection comes back (a Redis that is down at the start is asked
// for the latest entry once it answers), and returns nil when ctx ends.
func (b *RedisBus) ConsumeEpochs(ctx context.Context, fn EpochFunc) error {
	if fn == nil {
		return errors.New("oona: ConsumeEpochs: nil callback")
	}
	stream := string(contracts.TopicSystemEventsEpoch)
	last := "" // not read yet: the latest entry first
	attempt := 0
	for ctx.Err() == nil {
		if last == "" {
			msgs, err := b.consumerClient.XRevRangeN(ctx, stream, "+", "-", 1).Result()
			if err != nil {
				if ctx.Err() != nil {
					return nil
				}
				b.logger.Warn("oona: epoch consumer cannot read the latest epoch, retrying", slog.Any("error", err))
				sleepCtx(ctx, b.cfg.Consumer.Backoff.Delay(attempt))
				attempt++
				continue
			}
			last = "0-0"
			if len(msgs) > 0 {
				last = msgs[0].ID
				b.deliverEpoch(ctx, fn, stringFields(msgs[0].Values), msgs[0].ID)
			}
		}
		res, err := b.consumerClient.XRead(ctx, &redis.XReadArgs{Streams: []string{stream, last}, Count: 64, Block: b.cfg.Consumer.Block}).Result()
		if errors.Is(err, redis.Nil) {
			attempt = 0
			continue
		}
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			b.logger.Warn("oona: epoch consumer lost Redis, retrying", slog.Any("error", err))
			sleepCtx(ctx, b.cfg.Consumer.Backoff.Delay(attempt))
			attempt++
			continue
		}
		attempt = 0
		for _, s := range res {
			for _, m := range s.Messages {
				last = m.ID
				b.deliverEpoch(ctx, fn, stringFields(m.Values), m.ID)
			}
		}
	}
	return nil
}

func (b *RedisBus) deliverEpoch(ctx context.Context, fn EpochFunc, fields map[string]string, id string) {
	ev, err := decodeEpoch(fields)
	if err != nil {
		b.cons.epochsIgnored.Add(1)
		b.logger.Warn("oona: epoch message ignored", slog.String("stream_id", id), slog.Any("error", err))
		return
	}
	b.cons.epochs.Add(1)
	fn(ctx, ev)
}

// decodeEpoch decodes an epoch event from its stream entry fields.
func decodeEpoch(fields map[string]string) (EpochEvent, error) {
	msg, _, err := decodeFields(fields)
	if err != nil {
		return EpochEvent{}, err
	}
	ev := EpochEvent{Message: msg}
	switch e := msg.Payload["epoch"].(type) {
	case float64:
		if e < 0 || e != float64(int64(e)) {
			return EpochEvent{}, fmt.Errorf("%w: payload.epoch %v is not a non-negative integer", ErrMalformed, e)
		}
		ev.Epoch = int64(e)
	case int64:
		if e < 0 {
			return EpochEvent{}, fmt.Errorf("%w: payload.epoch %d is negative", ErrMalformed, e)
		}
		ev.Epoch = e
	case int:
		if e < 0 {
			return EpochEvent{}, fmt.Errorf("%w: payload.epoch %d is negative", ErrMalformed, e)
		}
		ev.Epoch = int64(e)
	case interface{ Int64() (int64, error) }:
		n, err := e.Int64()
		if err != nil || n < 0 {
			return EpochEvent{}, fmt.Errorf("%w: payload.epoch %v is not a non-negative integer", ErrMalformed, e)
		}
		ev.Epoch = n
	default:
		return EpochEvent{}, fmt.Errorf("%w: payload.epoch missing or not a number", ErrMalformed)
	}
	if t, ok := msg.Payload["event_type"].(string); ok {
		ev.EventType = t
	}
	return ev, nil
}

// stringFields converts go-redis entry values (always strings on the wire).
func stringFields(v map[string]any) map[string]string {
	m := make(map[string]string, len(v))
	for k, x := range v {
		switch x := x.(type) {
		case string:
			m[k] = x
		case nil:
			m[k] = ""
		default:
			m[k] = strings.TrimSpace(fmt.Sprint(x))
		}
	}
	return m
}
