package oona

import (
	"context"
	"math/rand/v2"
	"time"
)

// Backoff is exponential backoff with full jitter: attempt n waits a uniform
// random duration in [0, min(Max, Base·2ⁿ)]. Full jitter spreads the
// reconnects of many hosts after a shared Redis restart.
type Backoff struct {
	// Base is the first ceiling (default 100 ms).
	Base time.Duration
	// Max caps the ceiling (default 5 s).
	Max time.Duration
}

// DefaultBackoff is 100 ms doubling up to 5 s with full jitter.
var DefaultBackoff = Backoff{Base: 100 * time.Millisecond, Max: 5 * time.Second}

// Ceiling returns the upper bound of the wait before retry attempt n (0-based).
func (b Backoff) Ceiling(attempt int) time.Duration {
	base, maxD := b.Base, b.Max
	if base <= 0 {
		base = DefaultBackoff.Base
	}
	if maxD <= 0 {
		maxD = DefaultBackoff.Max
	}
	d := base
	for i := 0; i < attempt && d < maxD; i++ {
		d *= 2
	}
	return min(d, maxD)
}

// Delay returns a random wait in [0, Ceiling(attempt)].
func (b Backoff) Delay(attempt int) time.Duration {
	c := b.Ceiling(attempt)
	return time.Duration(rand.Int64N(int64(c) + 1))
}

// sleepCtx waits for d or until ctx is done; it reports whether the full
// wait elapsed.
func sleepCtx(ctx context.Context, d time.Duration) bool {
	if d <= 0 {
		return ctx.Err() == nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}
