package oona

import (
	"context"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/esper/kasmina-host/contracts"
)

// benchSender is the sender_id of the benchmarks' messages, as the
// runtime writes it.
const benchSender = "kasmina-host.test-node"

// BenchmarkPublisherRedis measures health signals per second through the
// publisher (encode, buffer, pipelined XADD, acknowledged) into a local
// redis-server without persistence. health_signal is the runtime's path:
// PublishPayload of the signal (a fresh event id and timestamp, the
// payload written by HealthSignal.AppendJSON); message is Publish of
// messages built beforehand with the signal's fields as a map payload.
// OONA_BENCH_REDIS=host:port uses a server already running
// (bench/oona/run.sh runs redis-benchmark against the same one); otherwise
// the benchmark starts its own.
func BenchmarkPublisherRedis(b *testing.B) {
	addr := os.Getenv("OONA_BENCH_REDIS")
	if addr == "" {
		srv := startRedis(b, "--appendonly", "no")
		addr = srv.addr()
	}
	sigs := make([]contracts.HealthSignal, 1024)
	traces := make([]string, len(sigs))
	msgs := make([]contracts.OonaMessage, len(sigs))
	for i := range sigs {
		sigs[i] = healthSignal(i)
		traces[i] = "layer" + strconv.Itoa(i%12) + "/" + strconv.Itoa(i%4) + "/kernel-" + strconv.Itoa(i%7)
		msgs[i] = healthMessage(b, i)
	}
	for _, c := range []struct {
		name    string
		publish func(bus *RedisBus, i int) error
	}{
		{"health_signal", func(bus *RedisBus, i int) error {
			k := i % len(sigs)
			return bus.PublishPayload(contracts.TopicTelemetrySeedHealth, benchSender, traces[k], &sigs[k])
		}},
		{"message", func(bus *RedisBus, i int) error { return bus.Publish(msgs[i%len(msgs)]) }},
	} {
		b.Run(c.name, func(b *testing.B) {
			rc := redis.NewClient(&redis.Options{Addr: addr})
			defer rc.Close()
			_ = rc.Del(context.Background(), string(contracts.TopicTelemetrySeedHealth)).Err()
			cfg := Config{URL: "redis://" + addr + "/0", HostID: "bench", Publisher: PublisherOptions{
				MaxBuffered: max(b.N, 10000), MaxBufferedBytes: 1 << 30,
			}}
			bus, err := NewRedisBus(context.Background(), cfg, nil)
			if err != nil {
				b.Fatal(err)
			}
			defer closeBus(b, bus)
			b.ReportAllocs()
			b.ResetTimer()
			start := time.Now()
			for i := 0; i < b.N; i++ {
				if err := c.publish(bus, i); err != nil {
					b.Fatal(err)
				}
			}
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
			defer cancel()
			if err := bus.Flush(ctx); err != nil {
				b.Fatal(err)
			}
			elapsed := time.Since(start)
			b.StopTimer()
			if s := bus.Stats(); s.Dropped != 0 || s.Delivered != uint64(b.N) {
				b.Fatalf("benchmark lost messages: %+v", s)
			}
			b.ReportMetric(float64(b.N)/elapsed.Seconds(), "signals/s")
		})
	}
}

// BenchmarkEncodeHealthSignal is the caller's cost of publishing one
// health signal before the bus: health_signal as the runtime publishes it
// (PublishPayload), message as Publish of a message built beforehand with
// a map payload.
func BenchmarkEncodeHealthSignal(b *testing.B) {
	sig := healthSignal(7)
	msg := healthMessage(b, 7)
	b.Run("health_signal", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := encodeFields(ptr(newMessage(contracts.TopicTelemetrySeedHealth, benchSender, "layer7/3/kernel-0")), &sig, false); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("message", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := encodeFields(&msg, nil, false); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// TestWriteBenchEntry writes the wire fields of one health signal as the
// runtime publishes it, NUL-separated, to $OONA_BENCH_ENTRY_OUT, so
// bench/oona/run.sh can make redis-benchmark XADD an entry of the same
// size. Skipped otherwise.
func TestWriteBenchEntry(t *testing.T) {
	out := os.Getenv("OONA_BENCH_ENTRY_OUT")
	if out == "" {
		t.Skip("OONA_BENCH_ENTRY_OUT not set (used by bench/oona/run.sh)")
	}
	sig := healthSignal(7)
	e, err := encodeFields(ptr(newMessage(contracts.TopicTelemetrySeedHealth, benchSender, "layer7/3/kernel-0")), &sig, false)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(out, []byte(strings.Join(e.pairs(), "\x00")+"\x00"), 0o644); err != nil {
		t.Fatal(err)
	}
}

// ptr returns a pointer to a copy of v.
func ptr[T any](v T) *T { return &v }
