package oona

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/esper/kasmina-host/contracts"
)

// TestPythonReadsHostSignalsAndSendsCommand runs testdata/oona_compat.py
// (python3 with Pydantic v2, no redis module) against a real redis-server:
// it must validate every health signal the host published, read the way
// the Python OonaClient reads, and the host must execute the load_kernel
// command the script publishes the way OonaClient.publish writes.
func TestPythonReadsHostSignalsAndSendsCommand(t *testing.T) {
	skip := func(why string) {
		t.Helper()
		if os.Getenv("KASMINA_REQUIRE_PYDANTIC") == "1" {
			t.Fatalf("%s and KASMINA_REQUIRE_PYDANTIC=1", why)
		}
		t.Logf("*** SKIPPING: %s; the Python compatibility check did NOT run (KASMINA_REQUIRE_PYDANTIC=1 makes this a failure) ***", why)
		t.Skip(why)
	}
	py, err := exec.LookPath("python3")
	if err != nil {
		skip("python3 not found")
	}
	if out, err := exec.Command(py, "-c", "import pydantic, sys; sys.exit(0 if pydantic.VERSION.startswith('2') else 1)").CombinedOutput(); err != nil {
		skip(fmt.Sprintf("python3 (%s) lacks Pydantic v2 (%v: %s)", py, err, out))
	}
	srv := startRedis(t)
	bus, err := NewRedisBus(context.Background(), srv.testConfig("compat-node"), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer closeBus(t, bus)
	h := newRecordingHandler("layer1")
	stop := startConsumer(t, bus, h)
	defer stop()

	// A third as the runtime publishes health signals (PublishPayload: the
	// signal's own JSON), a third through Publish with a map payload
	// (integers as ints), a third with the map decoded from JSON (every
	// number a float64, which the contract's encoder writes as 3.0 where
	// the field is an int).
	const n = 200
	for i := range n {
		var err error
		switch i % 3 {
		case 0:
			sig := healthSignal(i)
			err = bus.PublishPayload(contracts.TopicTelemetrySeedHealth, "kasmina-host.test-node", "layer1/"+strconv.Itoa(i%4)+"/k", &sig)
		case 1:
			err = bus.Publish(healthMessage(t, i))
		case 2:
			msg, sig := healthMessage(t, i), healthSignal(i)
			msg.Payload = nil
			if err := json.Unmarshal(sig.AppendJSON(nil), &msg.Payload); err != nil {
				t.Fatal(err)
			}
			err = bus.Publish(msg)
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	fctx, fcancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer fcancel()
	if err := bus.Flush(fctx); err != nil {
		t.Fatal(err)
	}
	// Each run of the script gets its own deadline: starting Python and
	// importing Pydantic takes seconds on a loaded machine.
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	// The group must exist before the script's command lands ("$").
	rc := redis.NewClient(&redis.Options{Addr: srv.addr()})
	defer rc.Close()
	grouped := groupReady(t, rc, "kasmina-compat-node")
	waitFor(t, "consumer group", func() bool { return bus.ConsumerStats() == ConsumerStats{} && grouped() })

	cmd := exec.CommandContext(ctx, py, "testdata/oona_compat.py", strconv.Itoa(srv.port), strconv.Itoa(n), "layer1")
	cmd.Stderr = os.Stderr
	out, err := cmd.Output()
	var report struct {
		ValidatedXRange     int      `json:"validated_xrange"`
		ValidatedXReadGroup int      `json:"validated_xreadgroup"`
		CommandEventID      string   `json:"command_event_id"`
		Errors              []string `json:"errors"`
	}
	if jerr := json.Unmarshal(out, &report); jerr != nil {
		t.Fatalf("compat script output %q (exit %v): %v", out, err, jerr)
	}
	t.Logf("python compat: validated %d (XRANGE) and %d (XREADGROUP) of %d signals; errors %v", report.ValidatedXRange, report.ValidatedXReadGroup, n, report.Errors)
	if err != nil || len(report.Errors) > 0 {
		t.Fatalf("Python side refused what the host wrote: %v %v", err, report.Errors)
	}
	waitFor(t, "the Python command executed", func() bool { return h.callsFor(report.CommandEventID) == 1 })
	got := h.executed()[0]
	lk, ok := got.Payload.(*LoadKernel)
	if !ok || *lk != (LoadKernel{LayerName: "layer1", SeedIdx: 3, ArtifactID: "kernel-compat-1"}) || got.Message.SenderID != "Tamiyo-Controller-1" {
		t.Fatalf("executed %#v from %+v", got.Payload, got.Message)
	}

	// The check is able to fail: an entry whose sender_id reads back as a
	// number (what Publish refuses to write) must be reported.
	bad := healthMessage(t, 0)
	fields, err := EncodeFields(bad)
	if err != nil {
		t.Fatal(err)
	}
	fields[3] = "42"
	xaddFields(t, rc, string(bad.Topic), fields...)
	ctx2, cancel2 := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel2()
	out, err = exec.CommandContext(ctx2, py, "testdata/oona_compat.py", strconv.Itoa(srv.port), strconv.Itoa(n+1), "layer1").Output()
	if err == nil || !strings.Contains(string(out), "sender_id read back as 'int'") {
		t.Fatalf("compat script accepted a sender_id of 42: %v %s", err, out)
	}
}
