package oona

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/esper/kasmina-host/contracts"
)

// redisServer is a real redis-server on a free loopback port, owned by one
// test: AOF with appendfsync always in a temporary directory, so data
// survives a kill and restart on the same port.
type redisServer struct {
	t     testing.TB
	bin   string
	port  int
	dir   string
	cmd   *exec.Cmd
	exit  chan struct{}
	extra []string // later arguments override the defaults
}

// startRedis starts redis-server or skips the test loudly when it is not
// installed; with KASMINA_REQUIRE_REDIS=1 (CI) a missing binary fails.
func startRedis(t testing.TB, extraArgs ...string) *redisServer {
	t.Helper()
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		if os.Getenv("KASMINA_REQUIRE_REDIS") == "1" {
			t.Fatalf("redis-server not found and KASMINA_REQUIRE_REDIS=1: install it (apt-get install redis-server)")
		}
		t.Log("*** SKIPPING: redis-server not installed; the Redis bus is NOT tested. Install redis-server or set KASMINA_REQUIRE_REDIS=1 to make this a failure. ***")
		t.Skip("redis-server not installed")
	}
	s := &redisServer{t: t, bin: bin, port: freePort(t), dir: t.TempDir(), extra: extraArgs}
	s.start()
	t.Cleanup(s.kill)
	return s
}

func (s *redisServer) addr() string { return "127.0.0.1:" + strconv.Itoa(s.port) }

func (s *redisServer) url() string { return "redis://" + s.addr() + "/0" }

func (s *redisServer) start() {
	s.t.Helper()
	args := []string{"--port", strconv.Itoa(s.port), "--bind", "127.0.0.1", "--dir", s.dir,
		"--save", "", "--appendonly", "yes", "--appendfsync", "always",
		"--daemonize", "no", "--protected-mode", "yes", "--loglevel", "warning"}
	s.cmd = exec.Command(s.bin, append(args, s.extra...)...)
	if err := s.cmd.Start(); err != nil {
		s.t.Fatalf("starting redis-server: %v", err)
	}
	s.exit = make(chan struct{})
	go func(c *exec.Cmd, done chan struct{}) { _ = c.Wait(); close(done) }(s.cmd, s.exit)
	deadline := time.Now().Add(10 * time.Second)
	for {
		if err := s.ping(); err == nil {
			return
		} else if time.Now().After(deadline) {
			s.t.Fatalf("redis-server on %s did not answer PING: %v", s.addr(), err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (s *redisServer) ping() error {
	c, err := net.DialTimeout("tcp", s.addr(), time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(time.Second))
	if _, err := c.Write([]byte("PING\r\n")); err != nil {
		return err
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return err
	}
	if line != "+PONG\r\n" && !strings.HasPrefix(line, "-NOAUTH") {
		return fmt.Errorf("PING answered %q", line)
	}
	return nil
}

// kill stops the server abruptly (SIGKILL): only what was fsynced survives.
func (s *redisServer) kill() {
	if s.cmd == nil || s.cmd.Process == nil {
		return
	}
	_ = s.cmd.Process.Kill()
	<-s.exit
	s.cmd = nil
}

// restart starts the server again on the same port and directory.
func (s *redisServer) restart() { s.start() }

// testConfig returns a Config for this server with fast consumer timings.
func (s *redisServer) testConfig(host string) Config {
	return Config{
		URL:    s.url(),
		HostID: host,
		Publisher: PublisherOptions{
			Backoff: Backoff{Base: 5 * time.Millisecond, Max: 100 * time.Millisecond},
		},
		Consumer: ConsumerOptions{
			Block: 100 * time.Millisecond, MinIdle: 150 * time.Millisecond, JanitorInterval: 50 * time.Millisecond,
			MaxDeliveries: 3, Backoff: Backoff{Base: 5 * time.Millisecond, Max: 100 * time.Millisecond},
		},
	}
}

// healthSignal returns the i-th HealthSignal of a test stream.
func healthSignal(i int) contracts.HealthSignal {
	h := contracts.NewHealthSignal()
	h.LayerID, h.SeedID, h.ChunkID, h.Epoch = i%12, i%4, i%7, i/100
	h.ActivationVariance = 0.0125 + float64(i%10)/1000
	h.DeadNeuronRatio = 0.03125
	h.AvgCorrelation = -0.25
	h.HealthScore = 0.875
	h.ExecutionLatency = 1.5e-4
	return h
}

// healthMessage returns a telemetry.seed.health message carrying the i-th
// HealthSignal as its payload, built as the runtime builds it.
func healthMessage(t testing.TB, i int) contracts.OonaMessage {
	t.Helper()
	h := healthSignal(i)
	return contracts.NewOonaMessage("kasmina-host.test-node", "telemetry-"+strconv.Itoa(i), contracts.TopicTelemetrySeedHealth, healthPayload(&h))
}

// healthPayload is the runtime's payload of a health signal (package
// runtime's signalPayload): exactly the contract's fields.
func healthPayload(s *contracts.HealthSignal) map[string]any {
	return map[string]any{
		"layer_id":                s.LayerID,
		"seed_id":                 s.SeedID,
		"chunk_id":                s.ChunkID,
		"epoch":                   s.Epoch,
		"activation_variance":     s.ActivationVariance,
		"dead_neuron_ratio":       s.DeadNeuronRatio,
		"avg_correlation":         s.AvgCorrelation,
		"is_ready_for_transition": s.IsReadyForTransition,
		"health_score":            s.HealthScore,
		"execution_latency":       s.ExecutionLatency,
		"error_count":             s.ErrorCount,
		"active_seeds":            s.ActiveSeeds,
		"total_seeds":             s.TotalSeeds,
		"timestamp":               s.Timestamp,
	}
}

// testWait bounds every wait in this package's tests, so that a
// regression fails with a message naming what did not happen instead of
// hanging until go test's timeout. It bounds outcomes, not speed.
const testWait = 20 * time.Second

// recv receives from ch or fails the test after testWait, naming what.
func recv[T any](t testing.TB, ch <-chan T, what string) T {
	t.Helper()
	timer := time.NewTimer(testWait)
	defer timer.Stop()
	select {
	case v := <-ch:
		return v
	case <-timer.C:
		t.Fatalf("timed out after %v waiting for %s", testWait, what)
		panic("unreachable")
	}
}

// testCtx returns a context that ends after testWait (or with the test).
func testCtx(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), testWait)
	t.Cleanup(cancel)
	return ctx
}

// closeBus closes c within testWait (flushing until then) and reports a
// Close that does not return.
func closeBus(t testing.TB, c interface{ Close(context.Context) error }) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), testWait)
	defer cancel()
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = c.Close(ctx)
	}()
	timer := time.NewTimer(testWait + 5*time.Second)
	defer timer.Stop()
	select {
	case <-done:
	case <-timer.C:
		t.Errorf("Close did not return within %v of its deadline", 5*time.Second)
	}
}

// waitFor polls cond until it holds or a generous deadline passes. It
// checks an outcome that must eventually happen, not a speed.
func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), testWait)
	defer cancel()
	for !cond() {
		if ctx.Err() != nil {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// publishOne opens a bus on cfg, publishes one health message and waits
// until it is delivered; the bus is closed when the test ends.
func publishOne(t testing.TB, cfg Config) *RedisBus {
	t.Helper()
	bus, err := NewRedisBus(context.Background(), cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { closeBus(t, bus) })
	if err := bus.Publish(healthMessage(t, 1)); err != nil {
		t.Fatal(err)
	}
	if err := bus.Flush(testCtx(t)); err != nil {
		t.Fatalf("flush: %v (stats %+v)", err, bus.Stats())
	}
	if s := bus.Stats(); s.Delivered != 1 {
		t.Fatalf("stats = %+v, want 1 delivered", s)
	}
	return bus
}

// freePort returns a loopback TCP port that was free a moment ago.
func freePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}
