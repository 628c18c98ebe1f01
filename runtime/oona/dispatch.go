package oona

import (
	"container/list"
	"context"
	"errors"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"
)

// ConsumerOptions tunes the command consumer. Zero fields take defaults.
type ConsumerOptions struct {
	// Group is the consumer group (default "kasmina-<HostID>"): one group
	// per host, so every host sees every command.
	Group string
	// Consumer is the consumer name in the group (default HostID).
	Consumer string
	// DeadLetterStream receives malformed and permanently failed entries
	// (default "control.kasmina.commands.dlq").
	DeadLetterStream string
	// Block is the XREADGROUP BLOCK time (default 2 s); the client read
	// timeout is set above it.
	Block time.Duration
	// Count is the XREADGROUP COUNT (default 16).
	Count int64
	// MinIdle is the idle time after which a pending entry is reclaimed
	// with XAUTOCLAIM (default 60 s); it must exceed the slowest handler.
	MinIdle time.Duration
	// JanitorInterval is how often pending entries are reclaimed and
	// checked for too many deliveries (default 30 s).
	JanitorInterval time.Duration
	// MaxDeliveries dead-letters an entry delivered this many times
	// without success (default 5).
	MaxDeliveries int64
	// DedupSize bounds the LRU of handled event_ids (default 10 000).
	DedupSize int
	// Backoff paces reconnects (default 100 ms doubling to 5 s).
	Backoff Backoff
}

func (o ConsumerOptions) withDefaults(hostID string) ConsumerOptions {
	if o.Group == "" {
		o.Group = "kasmina-" + hostID
	}
	if o.Consumer == "" {
		o.Consumer = hostID
	}
	if o.DeadLetterStream == "" {
		o.DeadLetterStream = DeadLetterStream
	}
	if o.Block <= 0 {
		o.Block = 2 * time.Second
	}
	if o.Count <= 0 {
		o.Count = 16
	}
	if o.MinIdle <= 0 {
		o.MinIdle = 60 * time.Second
	}
	if o.JanitorInterval <= 0 {
		o.JanitorInterval = 30 * time.Second
	}
	if o.MaxDeliveries <= 0 {
		o.MaxDeliveries = 5
	}
	if o.DedupSize <= 0 {
		o.DedupSize = 10000
	}
	if o.Backoff.Base <= 0 {
		o.Backoff = DefaultBackoff
	}
	return o
}

// DeadLetterStream is the default dead-letter stream of the command consumer.
const DeadLetterStream = "control.kasmina.commands.dlq"

// Fields added to a dead-lettered entry next to its original fields.
const (
	FieldDLQReason   = "dlq_reason"
	FieldDLQSourceID = "dlq_source_id"
	FieldDLQGroup    = "dlq_group"
)

// consumerCounters back ConsumerStats.
type consumerCounters struct {
	handled, skipped, duplicates, malformed, deadLettered, retried, trimmed, epochs, epochsIgnored atomic.Uint64
}

func (c *consumerCounters) snapshot() ConsumerStats {
	return ConsumerStats{
		Handled: c.handled.Load(), Skipped: c.skipped.Load(), Duplicates: c.duplicates.Load(),
		Malformed: c.malformed.Load(), DeadLettered: c.deadLettered.Load(), Retried: c.retried.Load(),
		Trimmed: c.trimmed.Load(), Epochs: c.epochs.Load(), EpochsIgnored: c.epochsIgnored.Load(),
	}
}

// outcome is what to do with an entry after dispatch.
type outcome int

const (
	outcomeAck        outcome = iota // handled, skipped or duplicate
	outcomeDeadLetter                // move to the DLQ, then ack
	outcomeRetry                     // leave pending
)

// dispatcher decodes entries, de-duplicates and calls the handler; both
// buses' consumers use it.
type dispatcher struct {
	handler  CommandHandler
	seen     *lru
	counters *consumerCounters
	logger   *slog.Logger
}

// dispatch handles one entry and returns the outcome with, for a dead
// letter, the reason.
func (d *dispatcher) dispatch(ctx context.Context, streamID string, fields map[string]string) (outcome, string) {
	msg, payload, err := decodeFields(fields)
	if err == nil {
		var p CommandPayload
		if p, err = ParseCommand(payload); err == nil {
			return d.run(ctx, Command{StreamID: streamID, Message: msg, Payload: p})
		}
	}
	d.counters.malformed.Add(1)
	d.logger.Warn("oona: malformed command entry, dead-lettering", slog.String("stream_id", streamID), slog.String("event_id", fields[FieldEventID]), slog.Any("error", err))
	return outcomeDeadLetter, err.Error()
}

func (d *dispatcher) run(ctx context.Context, cmd Command) (outcome, string) {
	id := cmd.Message.EventID
	if d.seen.contains(id) {
		d.counters.duplicates.Add(1)
		d.logger.Debug("oona: duplicate command ignored", slog.String("event_id", id), slog.String("stream_id", cmd.StreamID))
		return outcomeAck, ""
	}
	layer, seed := cmd.Payload.Target()
	if !d.handler.ServesLayer(layer) {
		d.seen.add(id)
		d.counters.skipped.Add(1)
		d.logger.Debug("oona: command for a layer this host does not serve", slog.String("command", cmd.Payload.CommandName()), slog.String("layer_name", layer))
		return outcomeAck, ""
	}
	err := d.handler.HandleCommand(ctx, cmd)
	attrs := []any{slog.String("command", cmd.Payload.CommandName()), slog.String("layer_name", layer), slog.Int("seed_idx", seed), slog.String("event_id", id), slog.String("trace_id", cmd.Message.TraceID)}
	switch {
	case err == nil:
		d.seen.add(id)
		d.counters.handled.Add(1)
		d.logger.Info("oona: command executed", attrs...)
		return outcomeAck, ""
	case errors.Is(err, ErrPermanent):
		d.seen.add(id)
		d.logger.Error("oona: command failed permanently, dead-lettering", append(attrs, slog.Any("error", err))...)
		return outcomeDeadLetter, err.Error()
	default:
		d.counters.retried.Add(1)
		d.logger.Warn("oona: command failed, will be retried", append(attrs, slog.Any("error", err))...)
		return outcomeRetry, err.Error()
	}
}

// lru is a bounded set of recently handled event_ids.
type lru struct {
	mu    sync.Mutex
	max   int
	order *list.List
	items map[string]*list.Element
}

func newLRU(n int) *lru {
	return &lru{max: n, order: list.New(), items: make(map[string]*list.Element, n)}
}

func (l *lru) contains(k string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if e, ok := l.items[k]; ok {
		l.order.MoveToFront(e)
		return true
	}
	return false
}

func (l *lru) add(k string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if e, ok := l.items[k]; ok {
		l.order.MoveToFront(e)
		return
	}
	l.items[k] = l.order.PushFront(k)
	for l.order.Len() > l.max {
		old := l.order.Back()
		l.order.Remove(old)
		delete(l.items, old.Value.(string))
	}
}
