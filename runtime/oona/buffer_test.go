package oona

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"
)

// gatedSink is a fake sink whose writes block until the test answers them.
type gatedSink struct {
	mu        sync.Mutex
	delivered []string
	started   chan int             // batch length of each write, as it starts
	answers   chan func(int) error // per-entry outcome for that write
	down      bool
	auto      bool // answer every write with success without waiting
}

// autoOK makes every later write succeed at once.
func (s *gatedSink) autoOK() {
	s.mu.Lock()
	s.auto = true
	s.mu.Unlock()
}

func newGatedSink() *gatedSink {
	return &gatedSink{started: make(chan int, 100), answers: make(chan func(int) error, 100)}
}

func (s *gatedSink) write(ctx context.Context, batch []entry) []error {
	// auto is read before the start is announced: a test that saw the
	// start and then calls autoOK must not have this write skip the
	// answer it sends.
	s.mu.Lock()
	auto := s.auto
	s.mu.Unlock()
	select {
	case s.started <- len(batch):
	default:
	}
	var answer func(int) error = ok
	if !auto {
		select {
		case answer = <-s.answers:
		case <-ctx.Done():
			errs := make([]error, len(batch))
			for i := range errs {
				errs[i] = ctx.Err()
			}
			return errs
		}
	}
	errs := make([]error, len(batch))
	s.mu.Lock()
	defer s.mu.Unlock()
	for i, e := range batch {
		if errs[i] = answer(i); errs[i] == nil {
			s.delivered = append(s.delivered, e.eventID())
		}
	}
	return errs
}

var errPermanentFake = errors.New("fake permanent")

func (s *gatedSink) permanent(err error) bool { return errors.Is(err, errPermanentFake) }
func (s *gatedSink) probe(context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.down {
		return errors.New("down")
	}
	return nil
}
func (s *gatedSink) close() error { return nil }

func (s *gatedSink) got() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.delivered...)
}

func ok(int) error { return nil }

func testEntry(i int) entry {
	return entry{stream: "telemetry.seed.health", vals: [numFields]string{fmt.Sprint(i)}, size: 100}
}

func fastOpts(maxBuffered int) PublisherOptions {
	return PublisherOptions{MaxBuffered: maxBuffered, BatchSize: 256, Backoff: Backoff{Base: time.Millisecond, Max: 2 * time.Millisecond}}
}

func TestBufferDropsOldestBeyondBoundAndKeepsOrder(t *testing.T) {
	s := newGatedSink()
	p := newBufferedPublisher(fastOpts(10), s, nil)
	defer closeBus(t, p)
	if err := p.enqueue(testEntry(1)); err != nil {
		t.Fatal(err)
	}
	if n := recv(t, s.started, "the first write"); n != 1 { // entry 1 is now in flight
		t.Fatalf("first write carried %d entries, want 1", n)
	}
	for i := 2; i <= 25; i++ {
		if err := p.enqueue(testEntry(i)); err != nil {
			t.Fatal(err)
		}
	}
	st := p.Stats()
	// 1 in flight + 9 in the ring = the bound of 10; 2..16 were dropped.
	if st.Dropped != 15 || st.DroppedByReason[DropOverflow] != 15 || st.Buffered != 10 {
		t.Fatalf("stats = %+v, want 15 dropped (overflow), 10 buffered", st)
	}
	// The in-flight write fails transiently, then everything goes through.
	// autoOK first: the retry may start as soon as the answer is taken.
	s.autoOK()
	s.answers <- func(int) error { return errors.New("connection reset") }
	if err := p.Flush(context.Background()); err != nil {
		t.Fatal(err)
	}
	want := []string{"1", "17", "18", "19", "20", "21", "22", "23", "24", "25"}
	if got := s.got(); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("delivered %v, want %v (oldest dropped, order kept)", got, want)
	}
	st = p.Stats()
	if st.Published != 25 || st.Delivered != 10 || st.Dropped != 15 || st.Retries == 0 || st.Reconnects != 1 {
		t.Fatalf("final stats = %+v", st)
	}
	if st.Published != st.Delivered+st.Dropped+uint64(st.Buffered) {
		t.Fatalf("accounting identity broken: %+v", st)
	}
}

func TestBufferByteBoundDropsOldest(t *testing.T) {
	s := newGatedSink()
	opts := fastOpts(1000)
	opts.MaxBufferedBytes = 550 // five 100-byte entries
	p := newBufferedPublisher(opts, s, nil)
	defer closeBus(t, p)
	_ = p.enqueue(testEntry(1))
	recv(t, s.started, "the first write")
	for i := 2; i <= 10; i++ {
		_ = p.enqueue(testEntry(i))
	}
	if st := p.Stats(); st.Buffered != 5 || st.BufferedBytes != 500 || st.Dropped != 5 {
		t.Fatalf("stats = %+v, want 5 buffered (500 bytes), 5 dropped", st)
	}
	s.autoOK()
	s.answers <- ok
	if err := p.Flush(context.Background()); err != nil {
		t.Fatal(err)
	}
	if got := s.got(); fmt.Sprint(got) != "[1 7 8 9 10]" {
		t.Fatalf("delivered %v", got)
	}
}

func TestBufferDropsPermanentFailuresAndRetriesTheRest(t *testing.T) {
	s := newGatedSink()
	p := newBufferedPublisher(fastOpts(100), s, nil)
	defer closeBus(t, p)
	_ = p.enqueue(testEntry(1))
	recv(t, s.started, "the first write")
	_ = p.enqueue(testEntry(2))
	_ = p.enqueue(testEntry(3))
	s.answers <- ok
	recv(t, s.started, "the write of entries 2 and 3")
	s.answers <- func(i int) error {
		if i == 0 {
			return fmt.Errorf("WRONGTYPE: %w", errPermanentFake)
		}
		return errors.New("timeout")
	}
	recv(t, s.started, "the retry of entry 3")
	s.answers <- ok
	if err := p.Flush(context.Background()); err != nil {
		t.Fatal(err)
	}
	st := p.Stats()
	if st.DroppedByReason[DropPermanent] != 1 || st.Delivered != 2 || fmt.Sprint(s.got()) != "[1 3]" {
		t.Fatalf("stats = %+v delivered %v, want entry 2 dropped as permanent, 1 and 3 delivered", st, s.got())
	}
}

func TestFlushTimesOutAndCloseCountsShutdownDrops(t *testing.T) {
	s := newGatedSink()
	p := newBufferedPublisher(fastOpts(100), s, nil)
	for i := range 4 {
		_ = p.enqueue(testEntry(i))
	}
	recv(t, s.started, "the write the sink never answers")
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	if err := p.Flush(ctx); !errors.Is(err, ErrFlushTimeout) || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Flush = %v, want ErrFlushTimeout wrapping the deadline", err)
	}
	ctx2, cancel2 := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel2()
	if err := p.Close(ctx2); !errors.Is(err, ErrFlushTimeout) {
		t.Fatalf("Close = %v, want ErrFlushTimeout", err)
	}
	st := p.Stats()
	if st.DroppedByReason[DropShutdown] != 4 || st.Buffered != 0 || st.Published != 4 {
		t.Fatalf("stats after close = %+v, want 4 dropped at shutdown", st)
	}
	if err := p.enqueue(testEntry(9)); !errors.Is(err, ErrClosed) {
		t.Fatalf("enqueue after close = %v", err)
	}
}

func TestBackoffCeilingDoublesToMax(t *testing.T) {
	b := DefaultBackoff
	want := []time.Duration{100, 200, 400, 800, 1600, 3200, 5000, 5000}
	for i, w := range want {
		if got := b.Ceiling(i); got != w*time.Millisecond {
			t.Errorf("Ceiling(%d) = %v, want %v", i, got, w*time.Millisecond)
		}
		for range 50 {
			if d := b.Delay(i); d < 0 || d > w*time.Millisecond {
				t.Fatalf("Delay(%d) = %v outside [0, %v]", i, d, w*time.Millisecond)
			}
		}
	}
}
