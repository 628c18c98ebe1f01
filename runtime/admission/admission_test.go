package admission

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/esper/kasmina-host/runtime/failure"
)

func TestLimiterRefusesWhenQueueFull(t *testing.T) {
	l := NewLimiter(2, 1)
	ctx := context.Background()
	for i := 0; i < 2; i++ {
		if err := l.Acquire(ctx); err != nil {
			t.Fatalf("slot %d: %v", i, err)
		}
	}
	waiting := make(chan error, 1)
	go func() { waiting <- l.Acquire(ctx) }()
	for l.Queued() != 1 {
		time.Sleep(time.Millisecond)
	}
	if err := l.Acquire(ctx); !failure.Is(err, failure.QueueFull) || err.Error() != "queue full: 2 running, 1 waiting" {
		t.Fatalf("third waiter: %v, want QueueFull naming the limits", err)
	}
	l.Release()
	if err := <-waiting; err != nil {
		t.Fatalf("queued request: %v", err)
	}
	if l.Running() != 2 || l.Queued() != 0 {
		t.Fatalf("running %d queued %d", l.Running(), l.Queued())
	}
}

func TestLimiterHonoursDeadline(t *testing.T) {
	l := NewLimiter(1, 5)
	if err := l.Acquire(context.Background()); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Millisecond)
	defer cancel()
	if err := l.Acquire(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err = %v, want deadline exceeded", err)
	}
	if l.Queued() != 0 {
		t.Fatalf("a timed-out waiter stayed queued")
	}
}

func TestLimiterBoundsConcurrency(t *testing.T) {
	l := NewLimiter(3, 100)
	var mu sync.Mutex
	cur, peak := 0, 0
	var wg sync.WaitGroup
	for i := 0; i < 50; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := l.Acquire(context.Background()); err != nil {
				t.Error(err)
				return
			}
			mu.Lock()
			cur++
			peak = max(peak, cur)
			mu.Unlock()
			time.Sleep(100 * time.Microsecond)
			mu.Lock()
			cur--
			mu.Unlock()
			l.Release()
		}()
	}
	wg.Wait()
	if peak > 3 {
		t.Fatalf("peak concurrency %d > 3", peak)
	}
}

func TestBreaker(t *testing.T) {
	now := time.Unix(0, 0)
	b := NewBreaker(3, time.Second, func() time.Time { return now })
	step := func(o Outcome) {
		t.Helper()
		if err := b.Allow(); err != nil {
			t.Fatalf("refused while %s: %v", b.State(), err)
		}
		b.Done(o)
	}
	step(Failed)
	step(Failed)
	step(Succeeded) // a success resets the streak
	step(Failed)
	step(Failed)
	if b.State() != Closed {
		t.Fatalf("opened after 2 consecutive failures")
	}
	step(Failed)
	if b.State() != Open {
		t.Fatalf("state %s after 3 consecutive failures, want open", b.State())
	}
	if err := b.Allow(); !failure.Is(err, failure.Unavailable) || err.Error() != "circuit breaker open after 3 consecutive failures; next probe in 1s" {
		t.Fatalf("open breaker allowed a request: %v", err)
	}
	now = now.Add(time.Second)
	if err := b.Allow(); err != nil {
		t.Fatalf("no probe after cool-down: %v", err)
	}
	if err := b.Allow(); !failure.Is(err, failure.Unavailable) || err.Error() != "circuit breaker open: a probe request is running" {
		t.Fatalf("second concurrent probe allowed: %v", err)
	}
	b.Done(Failed) // the probe failed: open again
	if b.State() != Open {
		t.Fatalf("failed probe left state %s", b.State())
	}
	now = now.Add(time.Second)
	step(Succeeded) // probe succeeds
	if b.State() != Closed {
		t.Fatalf("successful probe left state %s", b.State())
	}
}

func TestBreakerDisabled(t *testing.T) {
	b := NewBreaker(0, time.Second, nil)
	for i := 0; i < 10; i++ {
		if err := b.Allow(); err != nil {
			t.Fatal(err)
		}
		b.Done(Failed)
	}
}

// TestHalfOpenLearnsOnlyFromRuns: a probe that never ran (its queue was
// full, its caller went away) neither closes nor reopens a half-open
// breaker; it hands the probe to the next request. Before outcomes were
// typed, a queue-full probe reported success and closed the breaker.
func TestHalfOpenLearnsOnlyFromRuns(t *testing.T) {
	now := time.Unix(0, 0)
	b := NewBreaker(1, time.Second, func() time.Time { return now })
	if err := b.Allow(); err != nil {
		t.Fatal(err)
	}
	b.Done(Failed)
	if st, why := b.Status(); st != Open || !strings.Contains(why, "open after 1 consecutive failures") {
		t.Fatalf("status %s %q, want open with the failure count", st, why)
	}
	now = now.Add(time.Second)
	for i := range 3 {
		if err := b.Allow(); err != nil {
			t.Fatalf("probe %d refused after a probe that never ran: %v", i, err)
		}
		b.Done(NotRun)
		if st, _ := b.Status(); st != HalfOpen {
			t.Fatalf("a probe that never ran left state %s, want half-open", st)
		}
	}
	if err := b.Allow(); err != nil {
		t.Fatal(err)
	}
	b.Done(Succeeded)
	if st, why := b.Status(); st != Closed || why != "" {
		t.Fatalf("a successful probe left %s %q", st, why)
	}
	// NotRun while closed changes nothing either.
	b.Done(NotRun)
	if b.State() != Closed {
		t.Fatalf("NotRun while closed: %s", b.State())
	}
	if txt, _ := Open.MarshalText(); string(txt) != "open" {
		t.Errorf("Open marshals as %q", txt)
	}
}

func BenchmarkAcquireRelease(b *testing.B) {
	l := NewLimiter(4, 64)
	br := NewBreaker(5, time.Second, nil)
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		if err := br.Allow(); err != nil {
			b.Fatal(err)
		}
		if err := l.Acquire(ctx); err != nil {
			b.Fatal(err)
		}
		l.Release()
		br.Done(Succeeded)
	}
}
