package oona

import (
	"context"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/esper/kasmina-host/contracts"
)

// TestFaultRedisKilledMidStreamAndRestarted kills redis-server (SIGKILL;
// AOF with appendfsync always, so every acknowledged XADD survives) in the
// middle of a stream of health signals, publishes on while it is down,
// restarts it on the same port, and accounts for every signal: unique
// delivered + dropped == published, with duplicates (retried XADDs whose
// first attempt landed) counted apart. Within the buffer bound nothing is
// dropped. Run with -v to see the report.
func TestFaultRedisKilledMidStreamAndRestarted(t *testing.T) {
	cases := []struct {
		name        string
		maxBuffered int
	}{
		{"within the buffer bound", 10000},
		{"beyond the buffer bound", 150},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			srv := startRedis(t)
			cfg := srv.testConfig("fault-node")
			cfg.Publisher.MaxBuffered = c.maxBuffered
			cfg.Publisher.Backoff = Backoff{Base: 10 * time.Millisecond, Max: 200 * time.Millisecond}
			bus, err := NewRedisBus(context.Background(), cfg, nil)
			if err != nil {
				t.Fatal(err)
			}
			defer closeBus(t, bus)

			const n = 3000
			published := make(map[string]bool, n)
			var down time.Time
			var outage time.Duration
			for i := range n {
				switch i {
				case n / 3:
					srv.kill()
					down = time.Now()
				case 2 * n / 3:
					outage = time.Since(down)
					srv.restart()
				}
				msg := healthMessage(t, i)
				if err := bus.Publish(msg); err != nil {
					t.Fatalf("Publish %d: %v", i, err)
				}
				published[msg.EventID] = true
				if i%4 == 0 {
					time.Sleep(time.Millisecond) // a stream of signals, not one burst
				}
			}
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			if err := bus.Flush(ctx); err != nil {
				t.Fatalf("Flush after restart: %v (stats %+v)", err, bus.Stats())
			}
			st := bus.Stats()

			rc := redis.NewClient(&redis.Options{Addr: srv.addr()})
			defer rc.Close()
			entries, err := rc.XRange(context.Background(), string(contracts.TopicTelemetrySeedHealth), "-", "+").Result()
			if err != nil {
				t.Fatal(err)
			}
			seen := make(map[string]int, len(entries))
			for _, e := range entries {
				id, _ := e.Values[FieldEventID].(string)
				if !published[id] {
					t.Fatalf("stream holds event_id %q that was never published", id)
				}
				seen[id]++
			}
			unique := len(seen)
			duplicates := len(entries) - unique
			t.Logf("oona fault report (%s, bound %d): published=%d delivered(acked)=%d unique_in_stream=%d duplicates=%d dropped=%d (%v) buffered_now=%d buffer_high_watermark=%d retries=%d reconnects=%d outage=%v",
				c.name, c.maxBuffered, st.Published, st.Delivered, unique, duplicates, st.Dropped, st.DroppedByReason, st.Buffered, st.BufferHighWatermark, st.Retries, st.Reconnects, outage.Round(time.Millisecond))

			if st.Published != n || st.Buffered != 0 {
				t.Fatalf("published %d buffered %d, want %d and 0", st.Published, st.Buffered, n)
			}
			if uint64(unique)+st.Dropped != st.Published {
				t.Fatalf("unique delivered %d + dropped %d != published %d", unique, st.Dropped, st.Published)
			}
			if st.Delivered+st.Dropped != st.Published {
				t.Fatalf("acknowledged %d + dropped %d != published %d", st.Delivered, st.Dropped, st.Published)
			}
			if st.Reconnects == 0 {
				t.Fatalf("the publisher never saw the outage: %+v", st)
			}
			if c.maxBuffered >= n {
				if st.Dropped != 0 {
					t.Fatalf("dropped %d within the buffer bound", st.Dropped)
				}
			} else if st.DroppedByReason[DropOverflow] == 0 {
				t.Fatalf("expected overflow drops with a bound of %d during the outage", c.maxBuffered)
			}
		})
	}
}
