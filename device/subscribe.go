package device

import (
	"sync"
	"time"
)

// Event tells a subscriber that a device's health changed.
type Event struct {
	// Device is the device as it is after the change.
	Device Device
	// Previous is the health it had before.
	Previous Health
	// At is when the change was published.
	At time.Time
}

// Subscribe returns a channel that receives every health change, in order,
// and a function that ends the subscription and closes the channel. A slow
// reader never blocks the inventory: changes queue for it.
func (inv *Inventory) Subscribe() (<-chan Event, func()) { return inv.subs.subscribe() }

// subscriptions fans health changes out to the subscribers. Once closed it
// ends every subscription and hands out only closed channels.
type subscriptions struct {
	mu     sync.Mutex
	subs   map[*subscriber]struct{}
	closed bool
}

func newSubscriptions() *subscriptions {
	return &subscriptions{subs: map[*subscriber]struct{}{}}
}

func (ss *subscriptions) subscribe() (<-chan Event, func()) {
	s := &subscriber{signal: make(chan struct{}, 1), out: make(chan Event), done: make(chan struct{}), exited: make(chan struct{})}
	ss.mu.Lock()
	if ss.closed {
		ss.mu.Unlock()
		close(s.out)
		return s.out, func() {}
	}
	ss.subs[s] = struct{}{}
	ss.mu.Unlock()
	go s.pump()
	cancel := func() {
		ss.mu.Lock()
		delete(ss.subs, s)
		ss.mu.Unlock()
		s.stop()
	}
	return s.out, cancel
}

// push queues ev for every subscriber; it never blocks on a reader.
func (ss *subscriptions) push(ev Event) {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	for s := range ss.subs {
		s.push(ev)
	}
}

// close ends every subscription and waits for their pumps to exit.
func (ss *subscriptions) close() {
	ss.mu.Lock()
	ss.closed = true
	subs := ss.subs
	ss.subs = map[*subscriber]struct{}{}
	ss.mu.Unlock()
	for s := range subs {
		s.stop()
	}
}

// subscriber queues events for one reader; its pump goroutine hands them
// over one at a time.
type subscriber struct {
	mu     sync.Mutex
	queue  []Event
	signal chan struct{}
	out    chan Event
	done   chan struct{}
	exited chan struct{}
	once   sync.Once
}

func (s *subscriber) push(ev Event) {
	s.mu.Lock()
	s.queue = append(s.queue, ev)
	s.mu.Unlock()
	select {
	case s.signal <- struct{}{}:
	default:
	}
}

func (s *subscriber) pump() {
	defer close(s.exited)
	defer close(s.out)
	for {
		s.mu.Lock()
		if len(s.queue) == 0 {
			s.mu.Unlock()
			select {
			case <-s.signal:
				continue
			case <-s.done:
				return
			}
		}
		ev := s.queue[0]
		s.queue = s.queue[1:]
		s.mu.Unlock()
		select {
		case s.out <- ev:
		case <-s.done:
			return
		}
	}
}

func (s *subscriber) stop() {
	s.once.Do(func() { close(s.done) })
	<-s.exited
}
