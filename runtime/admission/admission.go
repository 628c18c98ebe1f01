// Package admission decides which work the host takes on: a Limiter per
// executor device (bounded concurrency plus a bounded queue that refuses at
// once when full, rather than letting requests time out) and a Breaker per
// kernel (consecutive failures open it; after a cool-down one probe request
// is let through, and its success closes it again).
package admission

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/esper/kasmina-host/runtime/failure"
)

// Limiter runs at most Concurrency requests at a time and lets at most
// QueueDepth more wait for a slot.
type Limiter struct {
	slots   chan struct{}
	queued  atomic.Int64
	depth   int64
	running atomic.Int64
}

// NewLimiter returns a limiter; concurrency must be at least 1 and depth
// at least 0.
func NewLimiter(concurrency, depth int) *Limiter {
	if concurrency < 1 {
		concurrency = 1
	}
	if depth < 0 {
		depth = 0
	}
	return &Limiter{slots: make(chan struct{}, concurrency), depth: int64(depth)}
}

// Acquire takes a slot, waiting in the queue if every slot is busy. It
// fails at once with an error of class failure.QueueFull when the queue is
// full (the client can retry elsewhere or later), and with the context's
// error if ctx ends while waiting. On success the caller must call
// Release.
func (l *Limiter) Acquire(ctx context.Context) error {
	select {
	case l.slots <- struct{}{}:
		l.running.Add(1)
		return nil
	default:
	}
	if l.queued.Add(1) > l.depth {
		l.queued.Add(-1)
		return failure.Errorf(failure.QueueFull, "queue full: %d running, %d waiting", cap(l.slots), l.depth)
	}
	defer l.queued.Add(-1)
	select {
	case l.slots <- struct{}{}:
		l.running.Add(1)
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// AcquireWithin is Acquire with a bound on the wait when ctx has no
// deadline of its own; it allocates nothing when a slot is free. waited
// reports whether the request had to queue (callers skip timing the queue
// when it did not: reading the clock is not free on every machine).
func (l *Limiter) AcquireWithin(ctx context.Context, wait time.Duration) (waited bool, err error) {
	select {
	case l.slots <- struct{}{}:
		l.running.Add(1)
		return false, nil
	default:
	}
	if _, ok := ctx.Deadline(); !ok && wait > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, wait)
		defer cancel()
	}
	return true, l.Acquire(ctx)
}

// Release gives a slot back.
func (l *Limiter) Release() {
	l.running.Add(-1)
	<-l.slots
}

// Queued is the number of requests waiting for a slot.
func (l *Limiter) Queued() int { return int(l.queued.Load()) }

// Running is the number of requests holding a slot.
func (l *Limiter) Running() int { return int(l.running.Load()) }

// BreakerState is the state of a circuit breaker.
type BreakerState int32

// Breaker states.
const (
	Closed BreakerState = iota
	Open
	HalfOpen
)

func (s BreakerState) String() string {
	switch s {
	case Open:
		return "open"
	case HalfOpen:
		return "half-open"
	}
	return "closed"
}

// MarshalText writes the state as String does, so views show "open"
// while code compares the typed value.
func (s BreakerState) MarshalText() ([]byte, error) { return []byte(s.String()), nil }

// Outcome is what became of a request the breaker let through. Only runs
// that happened teach the breaker anything.
type Outcome uint8

// Outcomes. The zero value is NotRun, so an outcome left unset teaches
// the breaker nothing rather than something false.
const (
	// NotRun: the request never ran the kernel (its queue was full, its
	// caller went away or its deadline passed first). A half-open breaker
	// stays half-open and lets the next request probe.
	NotRun Outcome = iota
	// Succeeded: the kernel ran and returned a result.
	Succeeded
	// Failed: the kernel ran and failed.
	Failed
)

// Breaker opens after Threshold consecutive failures. While open it
// refuses requests; after Cooldown it lets one probe through (half-open);
// the probe's success closes it, its failure opens it again, and a probe
// that never ran hands the probe to the next request.
type Breaker struct {
	threshold int
	cooldown  time.Duration
	now       func() time.Time

	state    atomic.Int32 // BreakerState; read lock-free on the hot path
	mu       sync.Mutex
	failures int
	openedAt time.Time
	probing  bool
}

// NewBreaker returns a closed breaker. A threshold below 1 disables it.
// now may be nil (time.Now).
func NewBreaker(threshold int, cooldown time.Duration, now func() time.Time) *Breaker {
	if now == nil {
		now = time.Now
	}
	return &Breaker{threshold: threshold, cooldown: cooldown, now: now}
}

// Allow reports whether a request may run. A nil error means it may; the
// caller must then report the outcome with Done.
func (b *Breaker) Allow() error {
	if b.threshold < 1 || BreakerState(b.state.Load()) == Closed {
		return nil
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	switch BreakerState(b.state.Load()) {
	case Closed:
		return nil
	case Open:
		if wait := b.cooldown - b.now().Sub(b.openedAt); wait > 0 {
			return failure.Errorf(failure.Unavailable, "circuit breaker open after %d consecutive failures; next probe in %s", b.failures, wait.Round(time.Millisecond))
		}
		b.state.Store(int32(HalfOpen))
		b.probing = true
		return nil
	default: // half-open: one probe at a time
		if b.probing {
			return failure.Errorf(failure.Unavailable, "circuit breaker open: a probe request is running")
		}
		b.probing = true
		return nil
	}
}

// Done records the outcome of a request that Allow let through. Only
// failures of the kernel itself are Failed (not bad input, a full queue
// or a caller that went away: those are NotRun).
func (b *Breaker) Done(o Outcome) {
	if b.threshold < 1 {
		return
	}
	if o == Succeeded && BreakerState(b.state.Load()) == Closed {
		// Fast path: a success while closed only needs to clear a streak.
		b.mu.Lock()
		b.failures = 0
		b.mu.Unlock()
		return
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	state := BreakerState(b.state.Load())
	switch o {
	case Succeeded:
		b.failures = 0
		b.probing = false
		b.state.Store(int32(Closed))
	case Failed:
		b.failures++
		if state == HalfOpen || b.failures >= b.threshold {
			b.state.Store(int32(Open))
			b.openedAt = b.now()
			b.probing = false
		}
	default: // NotRun
		if state == HalfOpen {
			b.probing = false // the next request probes
		}
	}
}

// State returns the breaker's state.
func (b *Breaker) State() BreakerState { return BreakerState(b.state.Load()) }

// Status returns the breaker's state and, unless it is closed, a sentence
// saying why the kernel is not serving normally.
func (b *Breaker) Status() (BreakerState, string) {
	if b.threshold < 1 || b.State() == Closed {
		return Closed, ""
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	switch st := BreakerState(b.state.Load()); st {
	case Open:
		wait := max(b.cooldown-b.now().Sub(b.openedAt), 0)
		return st, fmt.Sprintf("circuit breaker open after %d consecutive failures; next probe in %s", b.failures, wait.Round(time.Millisecond))
	case HalfOpen:
		return st, fmt.Sprintf("circuit breaker half-open after %d consecutive failures: the next request probes the kernel", b.failures)
	}
	return Closed, ""
}
