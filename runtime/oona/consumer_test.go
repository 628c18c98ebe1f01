package oona

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/esper/kasmina-host/contracts"
	"github.com/esper/kasmina-host/runtime/failure"
)

// recordingHandler serves the layers listed and records what it executes.
// fail decides the error for each call (nil: success).
type recordingHandler struct {
	layers map[string]bool
	ids    map[int]string // layer ids it serves, by name
	fail   func(cmd Command, call int) error

	mu    sync.Mutex
	calls map[string]int // event_id → HandleCommand calls
	done  []Command
}

func newRecordingHandler(layers ...string) *recordingHandler {
	h := &recordingHandler{layers: map[string]bool{}, ids: map[int]string{}, calls: map[string]int{}}
	for _, l := range layers {
		h.layers[l] = true
	}
	return h
}

func (h *recordingHandler) ServesLayer(t Target) (string, bool) {
	if t.LayerName == "" {
		name, ok := h.ids[t.LayerID]
		return name, ok
	}
	return t.LayerName, h.layers[t.LayerName]
}

func (h *recordingHandler) HandleCommand(_ context.Context, cmd Command) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.calls[cmd.Message.EventID]++
	if h.fail != nil {
		if err := h.fail(cmd, h.calls[cmd.Message.EventID]); err != nil {
			return err
		}
	}
	h.done = append(h.done, cmd)
	return nil
}

func (h *recordingHandler) executed() []Command {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]Command(nil), h.done...)
}

func (h *recordingHandler) callsFor(id string) int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.calls[id]
}

func mustCommand(t *testing.T, p CommandPayload) contracts.OonaMessage {
	t.Helper()
	m, err := CommandMessage("tamiyo-controller", "trace-cmd", p)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// xaddFields writes raw fields to a stream, as any producer could.
func xaddFields(t *testing.T, rc *redis.Client, stream string, fields ...string) string {
	t.Helper()
	vals := make([]any, len(fields))
	for i, f := range fields {
		vals[i] = f
	}
	id, err := rc.XAdd(context.Background(), &redis.XAddArgs{Stream: stream, Values: vals}).Result()
	if err != nil {
		t.Fatal(err)
	}
	return id
}

func xaddMessage(t *testing.T, rc *redis.Client, m contracts.OonaMessage) string {
	t.Helper()
	f, err := EncodeFields(m)
	if err != nil {
		t.Fatal(err)
	}
	return xaddFields(t, rc, string(m.Topic), f...)
}

func startConsumer(t *testing.T, bus Bus, h CommandHandler) (stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- bus.ConsumeCommands(ctx, h) }()
	return func() {
		cancel()
		if err := recv(t, done, "ConsumeCommands to return after its context ended"); err != nil {
			t.Errorf("ConsumeCommands: %v", err)
		}
	}
}

func groupReady(t *testing.T, rc *redis.Client, group string) func() bool {
	return func() bool {
		groups, err := rc.XInfoGroups(context.Background(), string(contracts.TopicControlKasminaCommands)).Result()
		if err != nil {
			return false
		}
		for _, g := range groups {
			if g.Name == group {
				return true
			}
		}
		return false
	}
}

func pendingCount(t *testing.T, rc *redis.Client, group string) int64 {
	p, err := rc.XPending(context.Background(), string(contracts.TopicControlKasminaCommands), group).Result()
	if err != nil {
		t.Fatal(err)
	}
	return p.Count
}

func TestConsumerHandlesSkipsDedupsAndDeadLetters(t *testing.T) {
	srv := startRedis(t)
	rc := redis.NewClient(&redis.Options{Addr: srv.addr()})
	defer rc.Close()
	stream := string(contracts.TopicControlKasminaCommands)
	// Sent before the host's first start: a new host must not replay it.
	xaddMessage(t, rc, mustCommand(t, &UnloadKernel{LayerName: "layer1", SeedIdx: 9}))

	bus, err := NewRedisBus(context.Background(), srv.testConfig("node-a"), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer closeBus(t, bus)
	h := newRecordingHandler("layer1")
	h.fail = func(cmd Command, call int) error {
		if p, ok := cmd.Payload.(*SetSeedState); ok && p.State == contracts.SeedFossilized {
			return failure.Errorf(failure.Refused, "seed is dormant; cannot fossilize")
		}
		return nil
	}
	stop := startConsumer(t, bus, h)
	defer stop()
	waitFor(t, "consumer group kasmina-node-a", groupReady(t, rc, "kasmina-node-a"))

	load := mustCommand(t, &LoadKernel{LayerName: "layer1", SeedIdx: 2, ArtifactID: "kernel-abc123"})
	xaddMessage(t, rc, load)
	xaddMessage(t, rc, load) // a retried XADD landing twice
	xaddMessage(t, rc, mustCommand(t, &LoadKernel{LayerName: "layer7", SeedIdx: 0, ArtifactID: "kernel-x"}))
	malformed := xaddFields(t, rc, stream, "event_id", "e-1", "payload", "{not json")
	xaddFields(t, rc, stream, FieldEventID, "e-2", FieldSenderID, "s", FieldTraceID, "t", FieldTopic, stream, FieldTimestamp, "2026-01-01T00:00:00Z",
		FieldPayload, `{"command": "explode", "layer_name": "layer1", "seed_idx": 0}`)
	fossil := mustCommand(t, &SetSeedState{LayerName: "layer1", SeedIdx: 2, State: contracts.SeedFossilized})
	xaddMessage(t, rc, fossil)
	alpha := mustCommand(t, &SetAlpha{LayerName: "layer1", SeedIdx: 2, Alpha: 0.25})
	xaddMessage(t, rc, alpha)

	waitFor(t, "all entries acknowledged", func() bool {
		s := bus.ConsumerStats()
		return s.Handled == 2 && s.Skipped == 1 && s.Duplicates == 1 && s.DeadLettered == 3 && pendingCount(t, rc, "kasmina-node-a") == 0
	})
	got := h.executed()
	if len(got) != 2 {
		t.Fatalf("executed %d commands, want load_kernel and set_alpha", len(got))
	}
	lk, ok := got[0].Payload.(*LoadKernel)
	if !ok || *lk != (LoadKernel{LayerName: "layer1", SeedIdx: 2, ArtifactID: "kernel-abc123"}) || got[0].Message.EventID != load.EventID || got[0].StreamID == "" {
		t.Fatalf("first command = %#v (%+v)", got[0].Payload, got[0].Message)
	}
	if sa, ok := got[1].Payload.(*SetAlpha); !ok || sa.Alpha != 0.25 {
		t.Fatalf("second command = %#v", got[1].Payload)
	}
	s := bus.ConsumerStats()
	if s.Malformed != 2 {
		t.Fatalf("consumer stats = %+v, want 2 malformed", s)
	}
	dlq, err := rc.XRange(context.Background(), DeadLetterStream, "-", "+").Result()
	if err != nil {
		t.Fatal(err)
	}
	if len(dlq) != 3 {
		t.Fatalf("dead-letter stream holds %d entries, want 3", len(dlq))
	}
	if dlq[0].Values[FieldDLQSourceID] != malformed || dlq[0].Values[FieldDLQReason] == "" || dlq[0].Values[FieldPayload] != "{not json" {
		t.Fatalf("first dead letter = %v", dlq[0].Values)
	}
	if dlq[2].Values[FieldEventID] != fossil.EventID {
		t.Fatalf("third dead letter is %v, want the permanently failed set_seed_state", dlq[2].Values)
	}
	if n := h.callsFor(load.EventID); n != 1 {
		t.Fatalf("duplicate load_kernel executed %d times", n)
	}
}

func TestConsumerResumesAfterRestartWithoutLosingCommands(t *testing.T) {
	srv := startRedis(t)
	rc := redis.NewClient(&redis.Options{Addr: srv.addr()})
	defer rc.Close()
	cfg := srv.testConfig("node-b")
	bus, err := NewRedisBus(context.Background(), cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	h := newRecordingHandler("layer1")
	stop := startConsumer(t, bus, h)
	waitFor(t, "group", groupReady(t, rc, "kasmina-node-b"))
	first := mustCommand(t, &LoadKernel{LayerName: "layer1", SeedIdx: 0, ArtifactID: "k1"})
	xaddMessage(t, rc, first)
	waitFor(t, "first command", func() bool { return len(h.executed()) == 1 })
	stop()
	closeBus(t, bus)

	// Sent while the host is down.
	whileDown := mustCommand(t, &UnloadKernel{LayerName: "layer1", SeedIdx: 0})
	xaddMessage(t, rc, whileDown)

	bus2, err := NewRedisBus(context.Background(), cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer closeBus(t, bus2)
	h2 := newRecordingHandler("layer1")
	stop2 := startConsumer(t, bus2, h2)
	defer stop2()
	waitFor(t, "command sent while down", func() bool { return len(h2.executed()) == 1 })
	if got := h2.executed()[0].Message.EventID; got != whileDown.EventID {
		t.Fatalf("after restart executed %s, want %s (and not the first command again)", got, whileDown.EventID)
	}
}

func TestConsumerRetriesTransientFailuresThenDeadLetters(t *testing.T) {
	srv := startRedis(t)
	rc := redis.NewClient(&redis.Options{Addr: srv.addr()})
	defer rc.Close()
	bus, err := NewRedisBus(context.Background(), srv.testConfig("node-c"), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer closeBus(t, bus)
	flaky := mustCommand(t, &LoadKernel{LayerName: "layer1", SeedIdx: 1, ArtifactID: "k-flaky"})
	broken := mustCommand(t, &LoadKernel{LayerName: "layer1", SeedIdx: 1, ArtifactID: "k-urza-down"})
	h := newRecordingHandler("layer1")
	h.fail = func(cmd Command, call int) error {
		switch cmd.Message.EventID {
		case flaky.EventID:
			if call == 1 {
				return errors.New("urza timeout")
			}
		case broken.EventID:
			return fmt.Errorf("urza unreachable (call %d)", call)
		}
		return nil
	}
	stop := startConsumer(t, bus, h)
	defer stop()
	waitFor(t, "group", groupReady(t, rc, "kasmina-node-c"))
	xaddMessage(t, rc, flaky)
	xaddMessage(t, rc, broken)
	waitFor(t, "flaky command retried and the broken one dead-lettered", func() bool {
		s := bus.ConsumerStats()
		return s.Handled == 1 && s.DeadLettered == 1 && pendingCount(t, rc, "kasmina-node-c") == 0
	})
	if n := h.callsFor(flaky.EventID); n != 2 {
		t.Fatalf("flaky command handled %d times, want 2", n)
	}
	if n := h.callsFor(broken.EventID); n < 2 || n > 3 {
		t.Fatalf("broken command handled %d times, want up to MaxDeliveries (3)", n)
	}
	dlq, _ := rc.XRange(context.Background(), DeadLetterStream, "-", "+").Result()
	if len(dlq) != 1 || dlq[0].Values[FieldEventID] != broken.EventID {
		t.Fatalf("dead letters = %v", dlq)
	}
}

func TestEmbeddedBusRunsCommandsAndEpochsInProcess(t *testing.T) {
	out := &syncBuffer{}
	cfg := Config{HostID: "solo", Consumer: ConsumerOptions{MaxDeliveries: 2, Backoff: Backoff{Base: 1, Max: 2}}}
	bus := NewEmbeddedBus(out, nil, cfg, nil)
	defer closeBus(t, bus)
	h := newRecordingHandler("layer1")
	h.fail = func(cmd Command, call int) error {
		if _, ok := cmd.Payload.(*UnloadKernel); ok {
			return errors.New("always busy")
		}
		return nil
	}
	stop := startConsumer(t, bus, h)
	defer stop()
	epochs := make(chan int64, 4)
	ectx, ecancel := context.WithCancel(context.Background())
	edone := make(chan error, 1)
	go func() {
		edone <- bus.ConsumeEpochs(ectx, func(_ context.Context, ev EpochEvent) { epochs <- ev.Epoch })
	}()
	defer func() {
		ecancel()
		if err := recv(t, edone, "ConsumeEpochs to return after its context ended"); err != nil {
			t.Errorf("ConsumeEpochs: %v", err)
		}
	}()
	// Subscriptions are registered asynchronously: wait until both exist.
	waitFor(t, "subscriptions", func() bool {
		bus.sink.mu.Lock()
		defer bus.sink.mu.Unlock()
		return len(bus.sink.subs[string(contracts.TopicControlKasminaCommands)]) == 1 && len(bus.sink.subs[string(contracts.TopicSystemEventsEpoch)]) == 1
	})
	load := mustCommand(t, &LoadKernel{LayerName: "layer1", SeedIdx: 0, ArtifactID: "k"})
	for _, m := range []contracts.OonaMessage{
		load, load,
		mustCommand(t, &LoadKernel{LayerName: "other", SeedIdx: 0, ArtifactID: "k"}),
		mustCommand(t, &UnloadKernel{LayerName: "layer1", SeedIdx: 0}),
		contracts.NewOonaMessage("tolaria-run1", "epoch-7", contracts.TopicSystemEventsEpoch, map[string]any{"event_type": "epoch_end", "epoch": 7}),
	} {
		if err := bus.Publish(m); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, "commands settled", func() bool {
		s := bus.ConsumerStats()
		return s.Handled == 1 && s.Duplicates == 1 && s.Skipped == 1 && s.DeadLettered == 1
	})
	var got int64
	select {
	case got = <-epochs:
	case <-time.After(testWait):
		t.Fatalf("no epoch callback within %v: consumer stats %+v, publisher stats %+v", testWait, bus.ConsumerStats(), bus.Stats())
	}
	if got != 7 {
		t.Fatalf("epoch callback got %d, want 7", got)
	}
	if s := bus.ConsumerStats(); s.Epochs != 1 || s.EpochsIgnored != 0 {
		t.Fatalf("consumer stats %+v, want one epoch delivered and none ignored", s)
	}
	if dl := bus.DeadLetters(); len(dl) != 1 || dl[0].Fields[FieldPayload] == "" {
		t.Fatalf("dead letters = %+v", dl)
	}
}

func TestRedisEpochConsumerCallsBackWithEpoch(t *testing.T) {
	srv := startRedis(t)
	bus, err := NewRedisBus(context.Background(), srv.testConfig("node-e"), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer closeBus(t, bus)
	rc := redis.NewClient(&redis.Options{Addr: srv.addr()})
	defer rc.Close()
	got := make(chan EpochEvent, 64)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- bus.ConsumeEpochs(ctx, func(_ context.Context, ev EpochEvent) { got <- ev }) }()
	defer func() {
		cancel()
		if err := recv(t, done, "ConsumeEpochs to return after its context ended"); err != nil {
			t.Errorf("ConsumeEpochs: %v", err)
		}
	}()
	// XREAD starts at "$": keep sending until the reader is in place.
	xaddFields(t, rc, "system.events.epoch", FieldEventID, "e-bad", FieldPayload, `{"event_type": "no epoch here"}`)
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		xaddMessage(t, rc, contracts.NewOonaMessage("tolaria-run1", "epoch-trace", contracts.TopicSystemEventsEpoch, map[string]any{"event_type": "epoch_end", "epoch": 41}))
		select {
		case ev := <-got:
			if ev.Epoch != 41 || ev.EventType != "epoch_end" || ev.Message.SenderID != "tolaria-run1" {
				t.Fatalf("epoch event = %+v", ev)
			}
			return
		case <-time.After(50 * time.Millisecond):
		}
	}
	t.Fatal("no epoch event within 20 s")
}

// A consumer that starts after epochs were announced (a host restarting)
// gets the latest one first, and only it, then the new ones.
func TestRedisEpochConsumerReadsTheLatestFirst(t *testing.T) {
	srv := startRedis(t)
	bus, err := NewRedisBus(context.Background(), srv.testConfig("node-e2"), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer closeBus(t, bus)
	rc := redis.NewClient(&redis.Options{Addr: srv.addr()})
	defer rc.Close()
	epoch := func(n int) contracts.OonaMessage {
		return contracts.NewOonaMessage("tolaria-run1", "epoch-trace", contracts.TopicSystemEventsEpoch, map[string]any{"event_type": "adaptation_applied", "epoch": n})
	}
	xaddMessage(t, rc, epoch(5))
	xaddMessage(t, rc, epoch(7))
	got := make(chan int64, 64)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- bus.ConsumeEpochs(ctx, func(_ context.Context, ev EpochEvent) { got <- ev.Epoch }) }()
	defer func() {
		cancel()
		if err := recv(t, done, "ConsumeEpochs to return after its context ended"); err != nil {
			t.Errorf("ConsumeEpochs: %v", err)
		}
	}()
	if e := recv(t, got, "the latest epoch"); e != 7 {
		t.Fatalf("first epoch %d, want the latest, 7", e)
	}
	xaddMessage(t, rc, epoch(8))
	if e := recv(t, got, "the next epoch"); e != 8 {
		t.Fatalf("next epoch %d, want 8 (5 is history)", e)
	}
}
