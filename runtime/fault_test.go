package runtime

// Fault tests: device faults while requests run, through the same path the
// daemon uses (the simulated NVML backend, the inventory's event handling,
// Host.Run reacting to health events). Each prints its counts with t.Log.

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/esper/kasmina-host/device"
)

// faultRig is a host on a simulated DGX A100 whose clock the test moves,
// with Host.Run picking up device events in the background.
type faultRig struct {
	inv   *device.Inventory
	clock *device.ManualClock
	host  *Host
	uuids []string // GPU UUIDs by CUDA ordinal
}

const faultQuiet = time.Minute

func newFaultRig(t *testing.T) *faultRig {
	t.Helper()
	clock := device.NewManualClock(time.Unix(1_800_000_000, 0))
	inv, err := device.Open(context.Background(), device.Options{Simulate: "dgxa100", LookupEnv: env(nil),
		Clock: clock, QuietPeriod: faultQuiet, ProbeInterval: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { inv.Close() })
	h, _, _ := newHost(t, inv, Config{Concurrency: 4, QueueDepth: 1024})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- h.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil && !errors.Is(err, context.Canceled) {
			t.Errorf("Host.Run: %v", err)
		}
	})
	r := &faultRig{inv: inv, clock: clock, host: h}
	for _, d := range inv.Snapshot().Devices {
		if d.Kind == device.KindGPU {
			r.uuids = append(r.uuids, d.UUID)
		}
	}
	if len(r.uuids) != 8 {
		t.Fatalf("dgxa100 simulation has %d GPUs, want 8", len(r.uuids))
	}
	return r
}

// placements returns kernel name → device it is placed on.
func (r *faultRig) placements() map[string]string {
	out := map[string]string{}
	for _, v := range r.host.Kernels() {
		out[v.Name] = v.Placement.Device
	}
	return out
}

// waitFor polls cond until it holds; Host.Run acts on device events in its
// own goroutine. The limit is a hang guard, not a timing assertion.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("gave up waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// loadGen runs clients that each call every kernel in turn and check the
// answer, counting served and failed requests, until stopped.
type loadGen struct {
	served, failed, wrong atomic.Int64
	stop                  chan struct{}
	wg                    sync.WaitGroup
	mu                    sync.Mutex
	firstErr              error
}

func startLoad(h *Host, names []string, clients int) *loadGen {
	g := &loadGen{stop: make(chan struct{})}
	for c := range clients {
		g.wg.Add(1)
		go func() {
			defer g.wg.Done()
			x := []float32{float32(c), 2, -3, 0.5}
			want := expected(x)
			for i := c; ; i++ {
				select {
				case <-g.stop:
					return
				default:
				}
				res, err := h.Infer(context.Background(), names[i%len(names)], Request{Input: x, Shape: []int{1, 4}})
				switch {
				case err != nil:
					g.failed.Add(1)
					g.mu.Lock()
					if g.firstErr == nil {
						g.firstErr = err
					}
					g.mu.Unlock()
				case !slices.Equal(res.Output, want):
					g.wrong.Add(1)
				default:
					g.served.Add(1)
				}
			}
		}()
	}
	return g
}

// waitServed blocks until n more requests have been served since the call,
// so that each phase of a test runs under load.
func (g *loadGen) waitServed(t *testing.T, n int64) {
	t.Helper()
	from := g.served.Load()
	waitFor(t, fmt.Sprintf("%d more requests served", n), func() bool { return g.served.Load() >= from+n || g.failed.Load() > 0 })
}

func (g *loadGen) finish() {
	close(g.stop)
	g.wg.Wait()
}

// TestFaultXidStormUnderLoad spreads 32 kernels over the 8 GPUs of a
// simulated DGX A100 and keeps 8 clients calling them while GPU 7 falls off
// the bus and then a storm of critical Xids (48, 79, 95, 119, repeated)
// hits GPUs 0–3, with an application Xid (31, ignored) on GPU 5 and a
// degrading Xid (63, still placeable) on GPU 4 mixed in. Every kernel on
// a failed GPU must move to a healthy one, nothing else may move, no
// request may fail or return a wrong answer, and the ledger must hold no
// reservation on a failed GPU. Then the GPUs recover (the lost one is
// restored, the quiet period passes, the probe succeeds): new kernels
// pinned to them are placed there again, not degraded.
func TestFaultXidStormUnderLoad(t *testing.T) {
	r := newFaultRig(t)
	h := r.host
	ctx := context.Background()
	var names []string
	for i := range 32 {
		name := fmt.Sprintf("k%02d", i)
		// Prefer GPU i%8, else any GPU: the kernels start spread out.
		if _, err := h.Load(ctx, LoadRequest{Data: linearKernel(t, name, []string{fmt.Sprintf("cuda:%d", i%8), "cuda"})}); err != nil {
			t.Fatal(err)
		}
		names = append(names, name)
	}
	before := r.placements()
	for i, n := range names {
		if want := fmt.Sprintf("cuda:%d", i%8); before[n] != want {
			t.Fatalf("%s placed on %s, want %s", n, before[n], want)
		}
	}

	load := startLoad(h, names, 8)
	load.waitServed(t, 500)

	// Phase 1: GPU 7 falls off the bus.
	if err := r.inv.Simulator().Lose(r.uuids[7]); err != nil {
		t.Fatal(err)
	}
	if err := r.inv.Refresh(ctx); err != nil {
		t.Logf("refresh after the loss: %v (expected: the lost GPU cannot be read)", err)
	}
	waitFor(t, "kernels off the lost cuda:7", func() bool {
		for _, d := range r.placements() {
			if d == "cuda:7" {
				return false
			}
		}
		return true
	})
	load.waitServed(t, 500)

	// Phase 2: an Xid storm on GPUs 0–3, noise on 4 and 5.
	storm := []struct {
		gpu int
		xid uint64
	}{{0, 48}, {1, 79}, {2, 95}, {3, 119}, {4, 63}, {5, 31}, {0, 48}, {1, 79}, {2, 95}, {3, 119},
		{0, 64}, {2, 74}, {5, 31}, {3, 61}, {4, 63}, {1, 62}}
	injected := 0
	for round := range 3 {
		for _, s := range storm {
			if err := r.inv.Simulator().InjectXid(r.uuids[s.gpu], s.xid); err != nil {
				t.Fatal(err)
			}
			injected++
		}
		if round == 0 {
			r.clock.Advance(time.Second)
		}
		if err := r.inv.Refresh(ctx); err != nil {
			t.Logf("refresh during the storm: %v", err)
		}
	}
	failedGPUs := map[string]bool{"cuda:0": true, "cuda:1": true, "cuda:2": true, "cuda:3": true, "cuda:7": true}
	waitFor(t, "kernels off the GPUs hit by critical Xids", func() bool {
		for _, d := range r.placements() {
			if failedGPUs[d] {
				return false
			}
		}
		return true
	})
	load.waitServed(t, 500)

	after := r.placements()
	moved := 0
	perDevice := map[string]int{}
	for _, n := range names {
		from, to := before[n], after[n]
		perDevice[to]++
		switch {
		case failedGPUs[from]:
			moved++
			if to == "cpu" || to == "" || failedGPUs[to] {
				t.Errorf("%s moved from %s to %q, want a healthy GPU (cuda:4..6 have room)", n, from, to)
			}
		case from != to:
			t.Errorf("%s on healthy %s moved to %s (Xid 31 is ignored, Xid 63 leaves a GPU placeable)", n, from, to)
		}
		v, _ := h.Kernel(n)
		if failedGPUs[from] && (len(v.Moves) == 0 || v.Moves[len(v.Moves)-1].To != to) {
			t.Errorf("%s: moves %+v do not record the move to %s", n, v.Moves, to)
		}
	}
	for d := range failedGPUs {
		if mib := h.ledger.ReservedMiB(d); mib != 0 {
			t.Errorf("%.0f MiB still reserved on failed %s", mib, d)
		}
	}

	// Phase 3: recovery. The lost GPU comes back, the quiet period passes
	// with no new fault, and the probe succeeds.
	if err := r.inv.Simulator().Restore(r.uuids[7]); err != nil {
		t.Fatal(err)
	}
	r.clock.Advance(faultQuiet + time.Second)
	if err := r.inv.Refresh(ctx); err != nil {
		t.Fatal(err)
	}
	healthy := 0
	for _, d := range r.inv.Snapshot().Devices {
		if d.Kind == device.KindGPU && d.Health.State == device.HealthHealthy {
			healthy++
		}
	}
	if healthy != 8 {
		t.Errorf("%d GPUs healthy after the quiet period, want all 8 back", healthy)
	}
	for _, gpu := range []int{0, 1, 2, 3, 7} {
		name := fmt.Sprintf("back-on-%d", gpu)
		v, err := h.Load(ctx, LoadRequest{Data: linearKernel(t, name, []string{fmt.Sprintf("cuda:%d", gpu)})})
		if err != nil {
			t.Fatalf("loading a kernel pinned to recovered cuda:%d: %v", gpu, err)
		}
		if v.Placement.Device != fmt.Sprintf("cuda:%d", gpu) || v.Placement.Fallback {
			t.Errorf("%s placed on %s (fallback %v: %s), want the recovered cuda:%d", name, v.Placement.Device,
				v.Placement.Fallback, v.Placement.FallbackReason, gpu)
		}
	}
	load.waitServed(t, 500)
	load.finish()

	t.Logf("Xid storm under load: %d kernels on 8 GPUs, 1 GPU lost + %d Xids injected on 6 GPUs; "+
		"%d requests served, %d failed, %d wrong; %d kernels re-placed (per device after: %v); "+
		"%d GPUs healthy after recovery, 5 kernels placed back on recovered GPUs",
		len(names), injected, load.served.Load(), load.failed.Load(), load.wrong.Load(), moved, perDevice, healthy)
	if n := load.failed.Load(); n != 0 {
		t.Errorf("%d requests failed (first: %v)", n, load.firstErr)
	}
	if n := load.wrong.Load(); n != 0 {
		t.Errorf("%d requests returned a wrong answer", n)
	}
	if moved != 20 {
		t.Errorf("%d kernels re-placed, want 20 (4 per failed GPU × 5)", moved)
	}
}

// TestFaultAllGPUsLostFallsBackToCPU loses every GPU while 8 kernels that
// accept only GPUs serve requests: under the default degraded policy they
// all fall back to the CPU, marked degraded, and no request fails.
func TestFaultAllGPUsLostFallsBackToCPU(t *testing.T) {
	r := newFaultRig(t)
	h := r.host
	ctx := context.Background()
	var names []string
	for i := range 8 {
		name := fmt.Sprintf("g%d", i)
		if _, err := h.Load(ctx, LoadRequest{Data: linearKernel(t, name, []string{fmt.Sprintf("cuda:%d", i), "cuda"})}); err != nil {
			t.Fatal(err)
		}
		names = append(names, name)
	}
	load := startLoad(h, names, 4)
	load.waitServed(t, 300)
	for _, u := range r.uuids {
		if err := r.inv.Simulator().Lose(u); err != nil {
			t.Fatal(err)
		}
	}
	_ = r.inv.Refresh(ctx) // every GPU read fails now
	waitFor(t, "every kernel on the CPU", func() bool {
		for _, d := range r.placements() {
			if d != "cpu" {
				return false
			}
		}
		return true
	})
	load.waitServed(t, 300)
	load.finish()
	degraded := 0
	for _, v := range h.Kernels() {
		if v.Degraded && v.Placement.Fallback {
			degraded++
		}
		if v.ExecutedOn != "cpu" {
			t.Errorf("%s executed on %q", v.Name, v.ExecutedOn)
		}
	}
	t.Logf("all 8 GPUs lost under load: %d requests served, %d failed, %d wrong; %d of %d kernels on the CPU, degraded",
		load.served.Load(), load.failed.Load(), load.wrong.Load(), degraded, len(names))
	if n := load.failed.Load(); n != 0 {
		t.Errorf("%d requests failed (first: %v)", n, load.firstErr)
	}
	if n := load.wrong.Load(); n != 0 {
		t.Errorf("%d wrong answers", n)
	}
	if degraded != len(names) {
		t.Errorf("%d kernels marked degraded, want %d", degraded, len(names))
	}
	for i := range r.uuids {
		if mib := h.ledger.ReservedMiB(fmt.Sprintf("cuda:%d", i)); mib != 0 {
			t.Errorf("%.0f MiB still reserved on lost cuda:%d", mib, i)
		}
	}
}
