package oona

import (
	"context"
	"sync"
)

// laneKey is what orders commands: the seed they are for.
type laneKey struct {
	layer string
	seed  int
}

// laneTask is one accepted command.
type laneTask struct {
	id string // stream entry id ("" on the embedded bus)
	fn func(ctx context.Context)
}

// lanes runs the command consumer's handlers: in arrival order for one
// seed, concurrently for different seeds, at most `workers` at once, and
// at most `max` accepted and not yet finished (submit then waits), so a
// slow load holds up only the commands for its own seed. Every goroutine it
// starts has finished when wait returns.
type lanes struct {
	ctx   context.Context
	slots chan struct{} // handlers running
	room  chan struct{} // tasks accepted and not finished

	mu     sync.Mutex
	queues map[laneKey][]laneTask // a lane runs while its key is present
	ids    map[string]int         // stream ids accepted and not finished
	wg     sync.WaitGroup
}

func newLanes(ctx context.Context, workers, max int) *lanes {
	return &lanes{
		ctx:    ctx,
		slots:  make(chan struct{}, workers),
		room:   make(chan struct{}, max),
		queues: make(map[laneKey][]laneTask),
		ids:    make(map[string]int),
	}
}

// submit queues fn behind the tasks already accepted for key. It waits
// while the lanes are full and returns false, without queueing, when the
// lanes' context ends first. fn gets the lanes' context; it is not run at
// all when that context has ended before its turn.
func (l *lanes) submit(key laneKey, id string, fn func(context.Context)) bool {
	select {
	case l.room <- struct{}{}:
	case <-l.ctx.Done():
		return false
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if id != "" {
		l.ids[id]++
	}
	q, running := l.queues[key]
	l.queues[key] = append(q, laneTask{id: id, fn: fn})
	if !running {
		l.wg.Add(1)
		go l.drain(key)
	}
	return true
}

// drain runs key's tasks one after the other until its queue is empty.
func (l *lanes) drain(key laneKey) {
	defer l.wg.Done()
	for {
		l.mu.Lock()
		q := l.queues[key]
		if len(q) == 0 {
			delete(l.queues, key)
			l.mu.Unlock()
			return
		}
		t := q[0]
		l.mu.Unlock()

		select {
		case l.slots <- struct{}{}:
			if l.ctx.Err() == nil {
				t.fn(l.ctx)
			}
			<-l.slots
		case <-l.ctx.Done():
		}

		l.mu.Lock()
		l.queues[key] = l.queues[key][1:]
		if t.id != "" {
			if l.ids[t.id]--; l.ids[t.id] <= 0 {
				delete(l.ids, t.id)
			}
		}
		l.mu.Unlock()
		<-l.room
	}
}

// busy reports whether the stream entry id is accepted and not finished:
// the janitor must not hand it out again meanwhile.
func (l *lanes) busy(id string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.ids[id] > 0
}

// wait returns when every task accepted has finished (or was dropped
// because the context ended).
func (l *lanes) wait() { l.wg.Wait() }
