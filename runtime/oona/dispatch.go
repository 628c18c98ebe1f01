package oona

import (
	"container/list"
	"context"
	"log/slog"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/esper/kasmina-host/runtime/failure"
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
	// with XAUTOCLAIM (default 60 s). An entry waiting or running in a
	// lane is not handed out again, however long it takes.
	MinIdle time.Duration
	// JanitorInterval is how often pending entries are reclaimed and
	// checked for too many deliveries (default 30 s).
	JanitorInterval time.Duration
	// MaxDeliveries dead-letters an entry delivered this many times
	// without success (default 5).
	MaxDeliveries int64
	// DedupSize bounds the LRU of handled event_ids (default 10 000).
	DedupSize int
	// CommandTimeout is the deadline of one command's handler (default
	// 45 s): a load that takes longer is cancelled and counts as a
	// transient failure (retried).
	CommandTimeout time.Duration
	// Lanes is how many commands for different seeds may run at once
	// (default 8); commands for the same seed run one at a time, in
	// order.
	Lanes int
	// MaxQueued bounds the commands read and not yet finished (default
	// 256); the reader waits beyond it.
	MaxQueued int
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
	if o.CommandTimeout <= 0 {
		o.CommandTimeout = DefaultCommandTimeout
	}
	if o.Lanes <= 0 {
		o.Lanes = 8
	}
	if o.MaxQueued <= 0 {
		o.MaxQueued = 256
	}
	if o.Backoff.Base <= 0 {
		o.Backoff = DefaultBackoff
	}
	return o
}

// DefaultCommandTimeout is ConsumerOptions.CommandTimeout's default.
const DefaultCommandTimeout = 45 * time.Second

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
	timeout  time.Duration
}

func newDispatcher(h CommandHandler, opts ConsumerOptions, counters *consumerCounters, logger *slog.Logger) *dispatcher {
	return &dispatcher{handler: h, seen: newLRU(opts.DedupSize), counters: counters, logger: logger, timeout: opts.CommandTimeout}
}

// decode turns an entry into a command. A malformed entry is counted and
// logged, and its error is the dead-letter reason.
func (d *dispatcher) decode(streamID string, fields map[string]string) (Command, error) {
	msg, payload, err := decodeFields(fields)
	if err == nil {
		var p CommandPayload
		if p, err = ParseCommand(payload); err == nil {
			return Command{StreamID: streamID, Message: msg, Payload: p}, nil
		}
	}
	d.counters.malformed.Add(1)
	d.logger.Warn("oona: malformed command entry, dead-lettering", slog.String("stream_id", streamID), slog.String("event_id", fields[FieldEventID]), slog.Any("error", err))
	return Command{}, err
}

// laneOf is the lane a command runs in: its seed, its layer named by
// the handler for a command that gives the layer's id.
func (d *dispatcher) laneOf(cmd Command) laneKey {
	t := cmd.Payload.Target()
	if t.LayerName != "" {
		return laneKey{t.LayerName, t.SeedIdx}
	}
	if name, ok := d.handler.ServesLayer(t); ok && name != "" {
		return laneKey{name, t.SeedIdx}
	}
	return laneKey{"#" + strconv.Itoa(t.LayerID), t.SeedIdx}
}

// run handles one command, within the command deadline, and returns the
// outcome with, for a dead letter or a retry, the reason. The handler's
// error decides: a permanent failure class (failure.Class.Permanent:
// not found, bad input, malformed, refused, conflict, too large,
// unsupported) dead-letters the command, any other leaves it for another
// delivery. An empty event_id is never taken for a duplicate.
func (d *dispatcher) run(ctx context.Context, cmd Command) (outcome, string) {
	id := cmd.Message.EventID
	if id != "" && d.seen.contains(id) {
		d.counters.duplicates.Add(1)
		d.logger.Debug("oona: duplicate command ignored", slog.String("event_id", id), slog.String("stream_id", cmd.StreamID))
		return outcomeAck, ""
	}
	t := cmd.Payload.Target()
	layer, serves := d.handler.ServesLayer(t)
	if !serves {
		d.remember(id)
		d.counters.skipped.Add(1)
		d.logger.Debug("oona: command for a layer this host does not serve", slog.String("command", cmd.Payload.CommandName()),
			slog.String("layer_name", t.LayerName), slog.Int("layer_id", t.LayerID))
		return outcomeAck, ""
	}
	seed := t.SeedIdx
	hctx, cancel := context.WithTimeout(ctx, d.timeout)
	err := d.handler.HandleCommand(hctx, cmd)
	cancel()
	attrs := []any{slog.String("command", cmd.Payload.CommandName()), slog.String("layer_name", layer), slog.Int("seed_idx", seed), slog.String("event_id", id), slog.String("trace_id", cmd.Message.TraceID)}
	switch class := failure.ClassOf(err); {
	case err == nil:
		d.remember(id)
		d.counters.handled.Add(1)
		d.logger.Info("oona: command executed", attrs...)
		return outcomeAck, ""
	case class.Permanent():
		d.remember(id)
		d.logger.Error("oona: command failed permanently, dead-lettering", append(attrs, slog.String("class", class.String()), slog.Any("error", err))...)
		return outcomeDeadLetter, err.Error()
	default:
		d.counters.retried.Add(1)
		d.logger.Warn("oona: command failed, will be retried", append(attrs, slog.String("class", class.String()), slog.Any("error", err))...)
		return outcomeRetry, err.Error()
	}
}

// remember records a handled event_id; an empty one is not recorded.
func (d *dispatcher) remember(id string) {
	if id != "" {
		d.seen.add(id)
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
