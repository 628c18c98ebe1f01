package runtime

import (
	"sync"
	"sync/atomic"
)

// closedBit marks a gate closed in its state word; the bits below it count
// the requests inside.
const closedBit = int64(1) << 62

// gate admits requests to a kernel until it is closed, and tells the
// closer when the last admitted request has left. Unlike a WaitGroup
// (whose Add may not race with Wait while the count is zero), entering
// and closing may race: a request either enters before the close, and the
// closer waits for it, or is refused. Entering and leaving are one atomic
// add each, so requests on one kernel never contend for a lock.
type gate struct {
	state    atomic.Int64
	idle     chan struct{} // closed when the gate is closed and empty
	idleOnce sync.Once
}

func newGate() *gate { return &gate{idle: make(chan struct{})} }

// enter admits a request, or reports false when the gate is closed. An
// admitted request must call leave.
func (g *gate) enter() bool {
	if g.state.Add(1)&closedBit != 0 {
		g.leave()
		return false
	}
	return true
}

// leave lets a request out; the last one out of a closed gate signals.
func (g *gate) leave() {
	if g.state.Add(-1) == closedBit {
		g.idleOnce.Do(func() { close(g.idle) })
	}
}

// close refuses every later request and returns a channel closed once the
// requests already inside have left.
func (g *gate) close() <-chan struct{} {
	if g.state.Or(closedBit)&^closedBit == 0 {
		g.idleOnce.Do(func() { close(g.idle) })
	}
	return g.idle
}
