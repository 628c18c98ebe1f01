package oona

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"
)

// Drop reasons, the values of the reason label on
// kasmina_bus_messages_dropped_total.
const (
	// DropOverflow: the buffer bound was reached and the oldest entry went.
	DropOverflow = "overflow"
	// DropShutdown: Close's deadline passed before the entry was delivered.
	DropShutdown = "shutdown"
	// DropPermanent: the sink refused the entry for good (e.g. WRONGTYPE).
	DropPermanent = "permanent_error"
)

// Sentinel errors of the publisher.
var (
	// ErrClosed is returned by Publish after Close.
	ErrClosed = errors.New("oona: publisher closed")
	// ErrFlushTimeout is returned (wrapped) by Flush and Close when the
	// context ends before the buffer drained.
	ErrFlushTimeout = errors.New("oona: buffer not drained")
)

// PublisherOptions tunes the buffered publisher. Zero fields take defaults.
type PublisherOptions struct {
	// BatchSize is the most entries written in one pipeline (default 256).
	BatchSize int
	// MaxBuffered bounds the entries held while the sink is unreachable
	// (default 10 000); beyond it the oldest is dropped.
	MaxBuffered int
	// MaxBufferedBytes bounds the encoded bytes held (default 16 MiB).
	MaxBufferedBytes int
	// MaxLen, when > 0, trims every stream except control.* with
	// XADD MAXLEN ~ MaxLen (default 100 000; negative disables).
	MaxLen int64
	// Backoff paces retries while the sink is unreachable (default
	// 100 ms doubling to 5 s, full jitter).
	Backoff Backoff
}

func (o PublisherOptions) withDefaults() PublisherOptions {
	if o.BatchSize <= 0 {
		o.BatchSize = 256
	}
	if o.MaxBuffered <= 0 {
		o.MaxBuffered = 10000
	}
	if o.MaxBufferedBytes <= 0 {
		o.MaxBufferedBytes = 16 << 20
	}
	if o.MaxLen == 0 {
		o.MaxLen = 100000
	}
	if o.Backoff.Base <= 0 {
		o.Backoff.Base = DefaultBackoff.Base
	}
	if o.Backoff.Max <= 0 {
		o.Backoff.Max = DefaultBackoff.Max
	}
	// Keep at least half the bound for the queue so overflow always has
	// an old, not-in-flight entry to drop (pipelineDepth batches can be
	// in flight).
	if most := max(1, o.MaxBuffered/(2*pipelineDepth)); o.BatchSize > most {
		o.BatchSize = most
	}
	return o
}

// entry is one encoded message waiting for the sink.
type entry struct {
	stream string            // the topic, which is the stream name
	vals   [numFields]string // field values, in the order of fieldNames
	line   string            // the message's contract JSON, embedded bus only
	size   int               // bytes of the values and the line, for the byte bound
}

// eventID is the entry's event_id, for logs.
func (e *entry) eventID() string { return e.vals[0] }

// sink is where the buffered publisher delivers: Redis or the JSON-lines
// writer of the embedded bus.
type sink interface {
	// write delivers batch in order and returns one error per entry, nil
	// where the entry was delivered.
	write(ctx context.Context, batch []entry) []error
	// permanent reports whether err means the entry can never be
	// delivered (it is then dropped instead of retried).
	permanent(err error) bool
	// probe checks the sink is reachable again after a failure.
	probe(ctx context.Context) error
	// close releases the sink.
	close() error
}

// topicCounters are the per-topic counters behind Stats.
type topicCounters struct {
	published, delivered uint64
	dropped              map[string]uint64
}

// bufferedPublisher is the core both buses share: a bounded FIFO filled by
// Publish without blocking and drained by one flusher goroutine.
type bufferedPublisher struct {
	opts   PublisherOptions
	sink   sink
	logger *slog.Logger
	lines  bool // entries keep their JSON line: the embedded bus writes it

	mu            sync.Mutex
	queue         entryQueue // published, not yet taken by the flusher
	queueBytes    int
	inflight      []entry // owned by the flusher, counted here
	inflightBytes int
	closed        bool
	changed       chan struct{} // closed and replaced when the buffer shrinks
	topics        map[string]*topicCounters
	published     uint64
	delivered     uint64
	dropped       map[string]uint64
	retries       uint64
	reconnects    uint64
	highWater     int
	dropsUnlogged uint64
	lastDropLog   time.Time

	wake   chan struct{}
	cancel context.CancelFunc
	done   chan struct{}
}

func newBufferedPublisher(opts PublisherOptions, s sink, logger *slog.Logger) *bufferedPublisher {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	opts = opts.withDefaults()
	ctx, cancel := context.WithCancel(context.Background())
	p := &bufferedPublisher{
		opts:    opts,
		sink:    s,
		logger:  logger,
		changed: make(chan struct{}),
		topics:  make(map[string]*topicCounters),
		dropped: make(map[string]uint64),
		wake:    make(chan struct{}, 1),
		cancel:  cancel,
		done:    make(chan struct{}),
	}
	go p.run(ctx)
	return p
}

func (p *bufferedPublisher) topic(name string) *topicCounters {
	t := p.topics[name]
	if t == nil {
		t = &topicCounters{dropped: make(map[string]uint64)}
		p.topics[name] = t
	}
	return t
}

// enqueue adds e without blocking, dropping the oldest buffered entries
// when a bound is exceeded.
func (p *bufferedPublisher) enqueue(e entry) error {
	var dropLog []any
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return ErrClosed
	}
	p.published++
	p.topic(e.stream).published++
	var droppedNow uint64
	for p.queue.len() > 0 && (p.queue.len()+len(p.inflight)+1 > p.opts.MaxBuffered || p.queueBytes+p.inflightBytes+e.size > p.opts.MaxBufferedBytes) {
		old := p.popFront()
		p.countDrop(old.stream, DropOverflow, 1)
		droppedNow++
	}
	if p.queue.len()+len(p.inflight)+1 > p.opts.MaxBuffered || p.queueBytes+p.inflightBytes+e.size > p.opts.MaxBufferedBytes {
		// Only in-flight entries are left: the new one cannot be kept.
		p.countDrop(e.stream, DropOverflow, 1)
		droppedNow++
	} else {
		p.queue.push(e)
		p.queueBytes += e.size
		if b := p.queue.len() + len(p.inflight); b > p.highWater {
			p.highWater = b
		}
	}
	if droppedNow > 0 {
		p.dropsUnlogged += droppedNow
		if now := time.Now(); now.Sub(p.lastDropLog) >= 10*time.Second {
			dropLog = []any{
				slog.Uint64("dropped", p.dropsUnlogged),
				slog.Uint64("dropped_total", p.dropped[DropOverflow]),
				slog.Int("max_buffered", p.opts.MaxBuffered),
				slog.Int("max_buffered_bytes", p.opts.MaxBufferedBytes),
			}
			p.dropsUnlogged = 0
			p.lastDropLog = now
		}
	}
	p.mu.Unlock()
	if dropLog != nil {
		p.logger.Warn("oona: bus buffer full, dropped oldest messages", dropLog...)
	}
	select {
	case p.wake <- struct{}{}:
	default:
	}
	return nil
}

func (p *bufferedPublisher) popFront() entry {
	e := p.queue.pop()
	p.queueBytes -= e.size
	return e
}

func (p *bufferedPublisher) countDrop(stream, reason string, k uint64) {
	p.dropped[reason] += k
	p.topic(stream).dropped[reason] += k
}

// signalChanged wakes Flush waiters; call with mu held.
func (p *bufferedPublisher) signalChanged() {
	close(p.changed)
	p.changed = make(chan struct{})
}

// pipeline is a sink that takes the next batch while it is still writing
// the last, so that the server goes from one to the next without waiting
// for the flusher: send hands a batch over, recv returns the results of
// the oldest batch sent and not yet received, abort forgets every such
// batch (its entries are sent again).
type pipeline interface {
	send(ctx context.Context, batch []entry) error
	recv(ctx context.Context, batch []entry) []error
	abort()
}

// pipelineDepth is how many batches a pipeline sink holds at once. Two
// hide the flusher's work: while Redis works through one, the next is
// ready to go.
const pipelineDepth = 2

// syncPipeline runs a sink that only writes synchronously as a pipeline of
// depth one: send writes, recv hands back the results.
type syncPipeline struct {
	s    sink
	errs []error
}

func (q *syncPipeline) send(ctx context.Context, batch []entry) error {
	q.errs = q.s.write(ctx, batch)
	return nil
}

func (q *syncPipeline) recv(context.Context, []entry) []error {
	errs := q.errs
	q.errs = nil
	return errs
}

func (q *syncPipeline) abort() { q.errs = nil }

// nextBatch returns the next entries to send: those in flight after the
// first sent (left over from a failed write) or, when there are none, up
// to BatchSize entries moved from the queue to the in-flight list. The
// slice aliases p.inflight; only the flusher reads or changes it.
func (p *bufferedPublisher) nextBatch(sent int) []entry {
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.inflight) == sent && p.queue.len() > 0 {
		k := min(p.queue.len(), p.opts.BatchSize)
		for i := 0; i < k; i++ {
			e := p.popFront()
			p.inflight = append(p.inflight, e)
			p.inflightBytes += e.size
		}
	}
	end := min(len(p.inflight), sent+p.opts.BatchSize)
	return p.inflight[sent:end:end]
}

// run is the flusher goroutine. It keeps up to depth batches on the wire
// and settles them oldest first; after a failure every batch still on the
// wire is void (its entries are sent again, in order, once the sink
// answers a probe).
func (p *bufferedPublisher) run(ctx context.Context) {
	defer close(p.done)
	var pipe pipeline = &syncPipeline{s: p.sink}
	depth := 1
	if pp, ok := p.sink.(pipeline); ok {
		pipe, depth = pp, pipelineDepth
	}
	attempt := 0
	var window []int // sizes of the batches on the wire, oldest first
	sent := 0        // entries of p.inflight on the wire: the sum of window
	for {
		var failed error
		for len(window) < depth {
			batch := p.nextBatch(sent)
			if len(batch) == 0 {
				if len(window) > 0 {
					break // receive what is on the wire first
				}
				select {
				case <-p.wake:
					continue
				case <-ctx.Done():
					return
				}
			}
			if err := pipe.send(ctx, batch); err != nil {
				failed = err
				break
			}
			window = append(window, len(batch))
			sent += len(batch)
		}
		if failed == nil {
			k := window[0]
			errs := pipe.recv(ctx, p.inflight[:k:k])
			window = window[1:]
			sent -= k
			failed = p.settle(k, errs)
		}
		if failed == nil {
			attempt = 0
			continue
		}
		// Whatever else is on the wire is void: send it again later.
		pipe.abort()
		window, sent = window[:0], 0
		if ctx.Err() != nil {
			return
		}
		// Back off, then probe until the sink answers, then resend.
		p.logger.Warn("oona: bus write failed, will retry", slog.Int("buffered", p.Stats().Buffered), slog.Any("error", failed))
		for {
			p.mu.Lock()
			p.retries++
			p.mu.Unlock()
			if !sleepCtx(ctx, p.opts.Backoff.Delay(attempt)) {
				return
			}
			attempt++
			if err := p.sink.probe(ctx); err == nil {
				break
			} else if ctx.Err() != nil {
				return
			}
		}
		p.mu.Lock()
		p.reconnects++
		p.mu.Unlock()
		p.logger.Info("oona: bus reachable again, flushing buffer in order", slog.Int("buffered", p.Stats().Buffered))
	}
}

// settle applies the per-entry results of the oldest k in-flight entries:
// delivered and permanently refused entries leave the in-flight list, the
// rest stay (in order, ahead of the entries sent after them) for the
// retry. It returns the first retryable error, if any.
func (p *bufferedPublisher) settle(k int, errs []error) error {
	var firstErr error
	p.mu.Lock()
	defer p.mu.Unlock()
	keep := 0
	for i := 0; i < k; i++ {
		e := &p.inflight[i]
		var err error
		if i < len(errs) {
			err = errs[i]
		} else {
			err = errors.New("oona: sink returned no result")
		}
		switch {
		case err == nil:
			p.delivered++
			p.topic(e.stream).delivered++
			p.inflightBytes -= e.size
		case p.sink.permanent(err):
			p.countDrop(e.stream, DropPermanent, 1)
			p.inflightBytes -= e.size
			p.logger.Error("oona: bus refused message, dropped", slog.String("topic", e.stream), slog.String("event_id", e.eventID()), slog.Any("error", err))
		default:
			if firstErr == nil {
				firstErr = err
			}
			p.inflight[keep] = *e
			keep++
		}
	}
	n := copy(p.inflight[keep:], p.inflight[k:])
	clear(p.inflight[keep+n:])
	p.inflight = p.inflight[:keep+n]
	p.signalChanged()
	return firstErr
}

// buffered returns entries not yet delivered or dropped.
func (p *bufferedPublisher) buffered() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.queue.len() + len(p.inflight)
}

// Flush waits until every entry published so far has been delivered or
// dropped, or ctx ends (ErrFlushTimeout, wrapped with the count left).
func (p *bufferedPublisher) Flush(ctx context.Context) error {
	for {
		p.mu.Lock()
		left := p.queue.len() + len(p.inflight)
		ch := p.changed
		p.mu.Unlock()
		if left == 0 {
			return nil
		}
		select {
		case <-ch:
		case <-p.done:
			if b := p.buffered(); b > 0 {
				return fmt.Errorf("%w: %d messages left, flusher stopped", ErrFlushTimeout, b)
			}
			return nil
		case <-ctx.Done():
			return fmt.Errorf("%w: %d messages left: %w", ErrFlushTimeout, p.buffered(), ctx.Err())
		}
	}
}

// Close stops accepting messages, flushes until ctx ends, counts what is
// left as dropped (reason shutdown) and releases the sink.
func (p *bufferedPublisher) Close(ctx context.Context) error {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		<-p.done
		return nil
	}
	p.closed = true
	p.mu.Unlock()
	flushErr := p.Flush(ctx)
	p.cancel()
	<-p.done
	p.mu.Lock()
	var lost int
	for p.queue.len() > 0 {
		e := p.popFront()
		p.countDrop(e.stream, DropShutdown, 1)
		lost++
	}
	for _, e := range p.inflight {
		p.countDrop(e.stream, DropShutdown, 1)
		lost++
	}
	p.inflight, p.inflightBytes = nil, 0
	p.signalChanged()
	p.mu.Unlock()
	if lost > 0 {
		p.logger.Warn("oona: bus closed with undelivered messages", slog.Int("dropped", lost))
	}
	closeErr := p.sink.close()
	return errors.Join(flushErr, closeErr)
}

// Stats returns a snapshot of the counters.
func (p *bufferedPublisher) Stats() Stats {
	p.mu.Lock()
	defer p.mu.Unlock()
	s := Stats{
		Published:           p.published,
		Delivered:           p.delivered,
		Buffered:            p.queue.len() + len(p.inflight),
		BufferedBytes:       p.queueBytes + p.inflightBytes,
		BufferHighWatermark: p.highWater,
		Retries:             p.retries,
		Reconnects:          p.reconnects,
		DroppedByReason:     make(map[string]uint64, len(p.dropped)),
		Topics:              make(map[string]TopicStats, len(p.topics)),
	}
	for r, k := range p.dropped {
		s.DroppedByReason[r] = k
		s.Dropped += k
	}
	for name, t := range p.topics {
		ts := TopicStats{Published: t.published, Delivered: t.delivered, DroppedByReason: make(map[string]uint64, len(t.dropped))}
		for r, k := range t.dropped {
			ts.DroppedByReason[r] = k
		}
		s.Topics[name] = ts
	}
	return s
}
