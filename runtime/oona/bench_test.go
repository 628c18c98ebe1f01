package oona

import (
	"context"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/esper/kasmina-host/contracts"
)

// BenchmarkPublisherRedis measures health signals per second through the
// publisher (Publish, encode, buffer, pipelined XADD, acknowledged) into a
// local redis-server without persistence. OONA_BENCH_REDIS=host:port uses
// a server already running (bench/oona/run.sh runs redis-benchmark against
// the same one); otherwise the benchmark starts its own.
func BenchmarkPublisherRedis(b *testing.B) {
	addr := os.Getenv("OONA_BENCH_REDIS")
	if addr == "" {
		srv := startRedis(b, "--appendonly", "no")
		addr = srv.addr()
	}
	msgs := make([]contracts.OonaMessage, 1024)
	for i := range msgs {
		msgs[i] = healthMessage(b, i)
	}
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
	defer bus.Close(context.Background())
	b.ReportAllocs()
	b.ResetTimer()
	start := time.Now()
	for i := 0; i < b.N; i++ {
		if err := bus.Publish(msgs[i%len(msgs)]); err != nil {
			b.Fatal(err)
		}
	}
	if err := bus.Flush(context.Background()); err != nil {
		b.Fatal(err)
	}
	elapsed := time.Since(start)
	b.StopTimer()
	if s := bus.Stats(); s.Dropped != 0 || s.Delivered != uint64(b.N) {
		b.Fatalf("benchmark lost messages: %+v", s)
	}
	b.ReportMetric(float64(b.N)/elapsed.Seconds(), "signals/s")
}

// TestWriteBenchEntry writes the wire fields of one health message,
// NUL-separated, to $OONA_BENCH_ENTRY_OUT, so bench/oona/run.sh can make
// redis-benchmark XADD an entry of the same size. Skipped otherwise.
func TestWriteBenchEntry(t *testing.T) {
	out := os.Getenv("OONA_BENCH_ENTRY_OUT")
	if out == "" {
		t.Skip("OONA_BENCH_ENTRY_OUT not set (used by bench/oona/run.sh)")
	}
	fields, err := EncodeFields(healthMessage(t, 7))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(out, []byte(strings.Join(fields, "\x00")+"\x00"), 0o644); err != nil {
		t.Fatal(err)
	}
}
