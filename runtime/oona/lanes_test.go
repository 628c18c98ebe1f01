package oona

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/esper/kasmina-host/contracts"
	"github.com/esper/kasmina-host/runtime/failure"
)

// gatedHandler blocks the commands for one seed until release is closed
// (or their deadline passes) and records, in order, what it finished.
type gatedHandler struct {
	gate    laneKey
	release chan struct{}
	entered chan string // event ids of gated commands as they start

	mu        sync.Mutex
	finished  []string // "layer/seed:alpha" in completion order
	deadlines []time.Duration
}

func (h *gatedHandler) ServesLayer(t Target) (string, bool) { return t.LayerName, true }

func (h *gatedHandler) HandleCommand(ctx context.Context, cmd Command) error {
	t := cmd.Payload.Target()
	layer, seed := t.LayerName, t.SeedIdx
	if dl, ok := ctx.Deadline(); ok {
		h.mu.Lock()
		h.deadlines = append(h.deadlines, time.Until(dl))
		h.mu.Unlock()
	}
	if (laneKey{layer, seed}) == h.gate {
		h.entered <- cmd.Message.EventID
		select {
		case <-h.release:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	h.finished = append(h.finished, fmt.Sprintf("%s/%d:%v", layer, seed, cmd.Payload.(*SetAlpha).Alpha))
	return nil
}

func (h *gatedHandler) done() []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]string(nil), h.finished...)
}

// consumerBuses starts the command consumer of each bus kind with opts and
// returns a function publishing a command on it.
func consumerBuses(t *testing.T, opts ConsumerOptions, h CommandHandler) map[string]func(contracts.OonaMessage) {
	t.Helper()
	out := map[string]func(contracts.OonaMessage){}
	emb := NewEmbeddedBus(&syncBuffer{}, nil, Config{HostID: "lanes", Consumer: opts}, nil)
	t.Cleanup(func() { closeBus(t, emb) })
	t.Cleanup(startConsumer(t, emb, h))
	waitFor(t, "embedded subscription", func() bool {
		emb.sink.mu.Lock()
		defer emb.sink.mu.Unlock()
		return len(emb.sink.subs[string(contracts.TopicControlKasminaCommands)]) == 1
	})
	out["embedded"] = func(m contracts.OonaMessage) {
		if err := emb.Publish(m); err != nil {
			t.Fatal(err)
		}
	}
	if srv := startRedisIfInstalled(t); srv != nil {
		rc := redis.NewClient(&redis.Options{Addr: srv.addr()})
		t.Cleanup(func() { rc.Close() })
		cfg := srv.testConfig("lanes")
		cfg.Consumer = opts
		bus, err := NewRedisBus(context.Background(), cfg, nil)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { closeBus(t, bus) })
		t.Cleanup(startConsumer(t, bus, h))
		waitFor(t, "group", groupReady(t, rc, "kasmina-lanes"))
		out["redis"] = func(m contracts.OonaMessage) { xaddMessage(t, rc, m) }
	}
	return out
}

// A command that takes long holds up only the commands for its own seed:
// the others run meanwhile, and the ones for its seed run after it, in
// order.
func TestSlowCommandHoldsUpOnlyItsSeed(t *testing.T) {
	for _, kind := range []string{"embedded", "redis"} {
		t.Run(kind, func(t *testing.T) {
			h := &gatedHandler{gate: laneKey{"slow", 0}, release: make(chan struct{}), entered: make(chan string, 4)}
			publish, ok := consumerBuses(t, ConsumerOptions{CommandTimeout: time.Minute}, h)[kind]
			if !ok {
				t.Skip("redis-server is not installed: the Redis consumer is not tested here")
			}
			alpha := func(layer string, a float64) contracts.OonaMessage {
				return mustCommand(t, &SetAlpha{LayerName: layer, SeedIdx: 0, Alpha: a})
			}
			publish(alpha("slow", 0.1))
			recv(t, h.entered, "the slow command to start")
			publish(alpha("slow", 0.2)) // behind the slow one
			for i := range 3 {
				publish(alpha(fmt.Sprintf("fast%d", i), 0.5))
			}
			waitFor(t, "the other seeds' commands while the slow one runs", func() bool { return len(h.done()) == 3 })
			close(h.release)
			waitFor(t, "the slow seed's commands", func() bool { return len(h.done()) == 5 })
			got := h.done()
			if got[3] != "slow/0:0.1" || got[4] != "slow/0:0.2" {
				t.Fatalf("completion order %v: the slow seed's commands must finish last, in order", got)
			}
		})
	}
}

// Each command gets the consumer's deadline; a handler still running at
// the deadline is cancelled, the failure is transient (retried), and the
// commands of other seeds are not held up.
func TestCommandsHaveADeadline(t *testing.T) {
	h := &gatedHandler{gate: laneKey{"stuck", 0}, release: make(chan struct{}), entered: make(chan string, 8)}
	opts := ConsumerOptions{CommandTimeout: 200 * time.Millisecond, MaxDeliveries: 2, Backoff: Backoff{Base: time.Millisecond, Max: time.Millisecond}}
	bus := NewEmbeddedBus(&syncBuffer{}, nil, Config{HostID: "deadline", Consumer: opts}, nil)
	defer closeBus(t, bus)
	stop := startConsumer(t, bus, h)
	defer stop()
	waitFor(t, "subscription", func() bool {
		bus.sink.mu.Lock()
		defer bus.sink.mu.Unlock()
		return len(bus.sink.subs[string(contracts.TopicControlKasminaCommands)]) == 1
	})
	stuck := mustCommand(t, &SetAlpha{LayerName: "stuck", SeedIdx: 0, Alpha: 0.3})
	if err := bus.Publish(stuck); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the stuck command dead-lettered after 2 timed-out deliveries", func() bool {
		return bus.ConsumerStats().DeadLettered == 1
	})
	if s := bus.ConsumerStats(); s.Retried != 2 || s.Handled != 0 {
		t.Errorf("consumer stats %+v: want the timeouts counted as 2 retries", s)
	}
	dl := bus.DeadLetters()
	if len(dl) != 1 || !strings.Contains(dl[0].Reason, "context deadline exceeded") {
		t.Errorf("dead letters %+v: want the deadline as the reason", dl)
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, d := range h.deadlines {
		if d <= 0 || d > opts.CommandTimeout {
			t.Errorf("handler deadline %v from now, want within the %v command timeout", d, opts.CommandTimeout)
		}
	}
}

// startRedisIfInstalled starts redis-server, or returns nil (saying so
// loudly) when it is not installed and KASMINA_REQUIRE_REDIS is not 1.
func startRedisIfInstalled(t *testing.T) *redisServer {
	t.Helper()
	if _, err := exec.LookPath("redis-server"); err != nil && os.Getenv("KASMINA_REQUIRE_REDIS") != "1" {
		t.Log("*** redis-server not installed: only the embedded bus is tested here ***")
		return nil
	}
	return startRedis(t)
}

// An empty event_id identifies nothing: two commands that carry one are
// both executed (and a handled one does not make a later one a duplicate).
func TestEmptyEventIDsAreNeverDuplicates(t *testing.T) {
	h := newRecordingHandler("layer1")
	for kind, publish := range consumerBuses(t, ConsumerOptions{}, h) {
		before := len(h.executed())
		for _, a := range []float64{0.1, 0.2} {
			m := mustCommand(t, &SetAlpha{LayerName: "layer1", SeedIdx: 0, Alpha: a})
			m.EventID = ""
			publish(m)
		}
		waitFor(t, kind+": both commands with an empty event_id", func() bool { return len(h.executed()) == before+2 })
		if n := h.callsFor(""); n != before+2 {
			t.Errorf("%s: handler called %d times for empty event ids, want %d", kind, n, before+2)
		}
	}
}

// Permanent failure classes are dead-lettered at once; the others are
// retried.
func TestPermanenceFollowsTheFailureClass(t *testing.T) {
	for _, c := range []struct {
		err  error
		want outcome
	}{
		{nil, outcomeAck},
		{failure.Errorf(failure.NotFound, "no kernel"), outcomeDeadLetter},
		{failure.Errorf(failure.Malformed, "checksum"), outcomeDeadLetter},
		{failure.Errorf(failure.Refused, "not allowed"), outcomeDeadLetter},
		{failure.Errorf(failure.BadInput, "name"), outcomeDeadLetter},
		{failure.Errorf(failure.Unavailable, "urza 503"), outcomeRetry},
		{failure.Errorf(failure.Timeout, "slow"), outcomeRetry},
		{context.DeadlineExceeded, outcomeRetry},
		{errors.New("unclassified"), outcomeRetry},
	} {
		h := newRecordingHandler("l")
		h.fail = func(Command, int) error { return c.err }
		d := newDispatcher(h, ConsumerOptions{}.withDefaults("h"), &consumerCounters{}, slog.New(slog.DiscardHandler))
		if out, _ := d.run(context.Background(), Command{Message: mustCommand(t, &UnloadKernel{LayerName: "l"}), Payload: &UnloadKernel{LayerName: "l"}}); out != c.want {
			t.Errorf("%v: outcome %d, want %d", c.err, out, c.want)
		}
	}
}
