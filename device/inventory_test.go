package device

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"
)

const gib = uint64(1) << 30

func mustDevice(t *testing.T, s Snapshot, uuid string) Device {
	t.Helper()
	d, ok := s.ByUUID(uuid)
	if !ok {
		t.Fatalf("no device %s in snapshot", uuid)
	}
	return d
}

func refresh(t *testing.T, inv *Inventory) Snapshot {
	t.Helper()
	if err := inv.Refresh(context.Background()); err != nil {
		t.Fatalf("Refresh: %v", err)
	}
	return inv.Snapshot()
}

func TestOpenDGXA100Discovery(t *testing.T) {
	inv, _ := openSim(t, SimDGXA100, nil, nil)
	s := inv.Snapshot()
	if s.Source != "simulated:dgxa100" || s.DriverVersion != "550.54.15" || s.CUDADriverVersion != "12.4" || s.NVMLVersion != "12.550.54.15" {
		t.Errorf("source/versions = %q %q %q %q", s.Source, s.DriverVersion, s.CUDADriverVersion, s.NVMLVersion)
	}
	gpus := s.GPUs()
	if len(gpus) != 8 {
		t.Fatalf("%d GPUs, want 8", len(gpus))
	}
	var frees []uint64
	for i, d := range gpus {
		if d.Kind != KindGPU || d.Index != i || d.UUID != gpuUUID(i) || d.Name != "NVIDIA A100-SXM4-40GB" || d.ComputeCapability != "8.0" {
			t.Errorf("GPU %d = %+v", i, d)
		}
		if d.MemoryTotalBytes != 42949672960 {
			t.Errorf("GPU %d total %d, want 40 GiB", i, d.MemoryTotalBytes)
		}
		if d.MemoryUsedBytes == 0 || d.MemoryFreeBytes < 5*gib || d.MemoryUsedBytes+d.MemoryFreeBytes+d.MemoryReservedBytes != d.MemoryTotalBytes {
			t.Errorf("GPU %d used/free/reserved = %d/%d/%d", i, d.MemoryUsedBytes, d.MemoryFreeBytes, d.MemoryReservedBytes)
		}
		if !d.Healthy || d.Health.State != HealthHealthy || d.CUDAOrdinal != i || d.TemperatureC == 0 {
			t.Errorf("GPU %d health/ordinal/temp = %v/%d/%d", i, d.Health, d.CUDAOrdinal, d.TemperatureC)
		}
		frees = append(frees, d.MemoryFreeBytes)
	}
	for i := 1; i < len(frees); i++ {
		if frees[i] >= frees[i-1] {
			t.Errorf("free memory should vary across GPUs (placement tests rely on it): %v", frees)
		}
	}
	last := s.Devices[len(s.Devices)-1]
	cpu, ok := s.CPU()
	if !ok || last.Kind != KindCPU || cpu.CPUCores != 2.5 || cpu.MemoryTotalBytes != 8*gib || !cpu.Visible {
		t.Errorf("CPU (last) = %+v", last)
	}
}

func TestSimulatedUUIDsAreStableAcrossRuns(t *testing.T) {
	a, _ := openSim(t, "testdata/sim-example.json", nil, nil)
	b, _ := openSim(t, "testdata/sim-example.json", nil, nil)
	sa, sb := a.Snapshot(), b.Snapshot()
	for i := range sa.Devices {
		if sa.Devices[i].UUID != sb.Devices[i].UUID {
			t.Errorf("device %d UUID %s then %s", i, sa.Devices[i].UUID, sb.Devices[i].UUID)
		}
	}
	if sa.Source != "simulated:sim-example.json" {
		t.Errorf("source %q", sa.Source)
	}
}

func TestXidHandling(t *testing.T) {
	cases := []struct {
		name  string
		vars  map[string]string
		xid   uint64
		state HealthState
	}{
		{"critical Xid makes the GPU unhealthy", nil, 48, HealthUnhealthy},
		{"unknown Xid is unhealthy by default", nil, 999, HealthUnhealthy},
		{"Xid 79 means lost", nil, 79, HealthLost},
		{"contained ECC Xid 94 is degraded", nil, 94, HealthDegraded},
		{"application Xid 13 is ignored", nil, 13, HealthHealthy},
		{"application Xid 109 is ignored", nil, 109, HealthHealthy},
		{"enable list overrides the default ignore list", map[string]string{EnvEnableXids: "13"}, 13, HealthUnhealthy},
		{"disable list adds Xids", map[string]string{EnvDisableXids: "48, 94"}, 48, HealthHealthy},
		{"disable all", map[string]string{EnvDisableXids: "all"}, 79, HealthHealthy},
		{"enable wins over disable", map[string]string{EnvDisableXids: "all", EnvEnableXids: "79"}, 79, HealthLost},
		{"malformed entries are skipped", map[string]string{EnvDisableXids: "68,,-48,x,48"}, 48, HealthHealthy},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			inv, _ := openSim(t, SimDGXA100, tc.vars, nil)
			if err := inv.Simulator().InjectXid(gpuUUID(3), tc.xid); err != nil {
				t.Fatal(err)
			}
			s := refresh(t, inv)
			d := mustDevice(t, s, gpuUUID(3))
			if d.Health.State != tc.state {
				t.Errorf("state %s (%s), want %s", d.Health.State, d.Health.Reason, tc.state)
			}
			if d.XidCounts[tc.xid] != 1 {
				t.Errorf("xid counts %v, want %d counted once", d.XidCounts, tc.xid)
			}
			if tc.state != HealthHealthy && (d.Health.Reason == "" || d.Health.Action == "") {
				t.Errorf("health %+v lacks a reason or action", d.Health)
			}
			for i := range 8 {
				if o := mustDevice(t, s, gpuUUID(i)); i != 3 && o.Health.State != HealthHealthy {
					t.Errorf("GPU %d changed to %s: a fault on GPU 3 must not touch it", i, o.Health.State)
				}
			}
		})
	}
}

func TestSubscribersHearEveryChange(t *testing.T) {
	inv, clk := openSim(t, SimDGXA100, nil, nil)
	events, cancel := inv.Subscribe()
	defer cancel()
	sim := inv.Simulator()
	_ = sim.InjectXid(gpuUUID(2), 94) // degraded
	refresh(t, inv)
	_ = sim.InjectDoubleBitECC(gpuUUID(2)) // unhealthy
	refresh(t, inv)
	_ = sim.InjectXid(gpuUUID(2), 94) // no lower: stays unhealthy, no event
	refresh(t, inv)
	clk.Advance(6 * time.Minute)
	refresh(t, inv) // quiet period over, probe passes: healthy
	want := []HealthState{HealthDegraded, HealthUnhealthy, HealthHealthy}
	for i, w := range want {
		select {
		case ev := <-events:
			if ev.Device.UUID != gpuUUID(2) || ev.Device.Health.State != w {
				t.Fatalf("event %d = %s %s, want %s", i, ev.Device.UUID, ev.Device.Health.State, w)
			}
			if i > 0 && ev.Previous.State != want[i-1] {
				t.Errorf("event %d previous = %s, want %s", i, ev.Previous.State, want[i-1])
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("event %d (%s) never came", i, w)
		}
	}
	d := mustDevice(t, inv.Snapshot(), gpuUUID(2))
	if d.ECCUncorrected != 1 || !strings.Contains(d.Health.Reason, "recovered") {
		t.Errorf("after recovery: ecc %d, reason %q", d.ECCUncorrected, d.Health.Reason)
	}
	cancel()
	if _, ok := <-events; ok {
		t.Error("channel still open after cancel")
	}
}

func TestLostGPURecoversOnlyAfterQuietPeriodAndProbe(t *testing.T) {
	inv, clk := openSim(t, SimDGXA100, nil, nil)
	sim := inv.Simulator()
	if err := sim.Lose(gpuUUID(1)); err != nil {
		t.Fatal(err)
	}
	s := refresh(t, inv)
	d := mustDevice(t, s, gpuUUID(1))
	if d.Health.State != HealthLost || d.Healthy || d.MemoryTotalBytes != 40960*mib {
		t.Fatalf("lost GPU = %s healthy=%v total=%d (last reading kept)", d.Health.State, d.Healthy, d.MemoryTotalBytes)
	}
	if n := len(s.GPUs()); n != 8 {
		t.Fatalf("%d GPUs listed, the lost one must stay listed", n)
	}
	_ = sim.Restore(gpuUUID(1))
	clk.Advance(4 * time.Minute)
	if d := mustDevice(t, refresh(t, inv), gpuUUID(1)); d.Health.State != HealthLost {
		t.Fatalf("recovered before the quiet period: %s", d.Health.State)
	}
	_ = sim.SetProbeError(gpuUUID(1), errors.New("row remapping pending"))
	clk.Advance(2 * time.Minute)
	if d := mustDevice(t, refresh(t, inv), gpuUUID(1)); d.Health.State != HealthLost {
		t.Fatalf("recovered although the probe failed: %s", d.Health.State)
	}
	_ = sim.SetProbeError(gpuUUID(1), nil)
	clk.Advance(10 * time.Second)
	if d := mustDevice(t, refresh(t, inv), gpuUUID(1)); d.Health.State != HealthLost {
		t.Fatalf("probed again before ProbeInterval: %s", d.Health.State)
	}
	clk.Advance(30 * time.Second)
	if d := mustDevice(t, refresh(t, inv), gpuUUID(1)); d.Health.State != HealthHealthy {
		t.Fatalf("not recovered after quiet period and passing probe: %s (%s)", d.Health.State, d.Health.Reason)
	}
}

func TestOptionsProbeCanVetoRecovery(t *testing.T) {
	var mu sync.Mutex
	probed := 0
	inv, clk := openSim(t, SimDGXA100, nil, func(o *Options) {
		o.Probe = func(_ context.Context, d Device) error {
			mu.Lock()
			defer mu.Unlock()
			probed++
			return errors.New("test kernel failed")
		}
	})
	_ = inv.Simulator().InjectXid(gpuUUID(0), 48)
	refresh(t, inv)
	clk.Advance(10 * time.Minute)
	if d := mustDevice(t, refresh(t, inv), gpuUUID(0)); d.Health.State != HealthUnhealthy {
		t.Fatalf("state %s, the caller's probe failed", d.Health.State)
	}
	mu.Lock()
	defer mu.Unlock()
	if probed != 1 {
		t.Fatalf("probe ran %d times, want 1", probed)
	}
}

func TestMIGEventsTargetTheirInstance(t *testing.T) {
	inv, _ := openSim(t, SimDGXA100MIG, nil, nil)
	s := inv.Snapshot()
	if d := mustDevice(t, s, migUUID(0)); d.Kind != KindMIG || d.Index != 0 || d.MIG.Index != 0 || d.MIG.Profile != "3g.20gb" ||
		d.MemoryTotalBytes != 19968*mib || d.MIG.ParentUUID != gpuUUID(0) {
		t.Fatalf("MIG 0:0 = %+v %+v", d, d.MIG)
	}
	_ = inv.Simulator().InjectXid(migUUID(1), 48)
	s = refresh(t, inv)
	for uuid, want := range map[string]HealthState{migUUID(1): HealthUnhealthy, migUUID(0): HealthHealthy, gpuUUID(0): HealthHealthy} {
		if got := mustDevice(t, s, uuid).Health.State; got != want {
			t.Errorf("%s = %s, want %s", uuid, got, want)
		}
	}
	_ = inv.Simulator().InjectXid(gpuUUID(0), 95)
	s = refresh(t, inv)
	for _, uuid := range []string{gpuUUID(0), migUUID(0), migUUID(2), migUUID(3)} {
		if got := mustDevice(t, s, uuid).Health.State; got != HealthUnhealthy {
			t.Errorf("GPU-wide Xid: %s = %s, want unhealthy", uuid, got)
		}
	}
}

func TestFaultTimelineFromFile(t *testing.T) {
	inv, clk := openSim(t, "testdata/sim-example.json", nil, nil)
	s := inv.Snapshot()
	if len(s.GPUs()) != 5 { // GPU 0, GPU 1 (MIG) + 2 instances, GPU 2
		t.Fatalf("%d accelerators, want 5: %v", len(s.GPUs()), visibleLabels(s.Devices))
	}
	g0 := s.GPUs()[0].UUID
	mig := mustDevice(t, s, "GPU-0f0e0d0c-0b0a-4908-8706-050403020100")
	if !mig.MIGEnabled {
		t.Fatal("GPU 1 should have MIG enabled")
	}
	h100, _ := s.ByLabel("2")
	steps := []struct {
		at    time.Duration
		check func(Snapshot) string
	}{
		{11 * time.Second, func(s Snapshot) string {
			if d := mustDevice(t, s, g0); d.MemoryUsedBytes != 32*gib {
				return "memory_used at 10s not applied"
			}
			return ""
		}},
		{21 * time.Second, func(s Snapshot) string {
			if d := mustDevice(t, s, g0); d.Health.State != HealthHealthy || d.XidCounts[13] != 1 {
				return "Xid 13 at 20s should be counted and ignored"
			}
			return ""
		}},
		{31 * time.Second, func(s Snapshot) string {
			d, _ := s.ByLabel("1:0")
			o, _ := s.ByLabel("1:1")
			if d.Health.State != HealthUnhealthy || o.Health.State != HealthHealthy {
				return "Xid 48 at 30s should hit MIG 1:0 only"
			}
			return ""
		}},
		{41 * time.Second, func(s Snapshot) string {
			if d := mustDevice(t, s, h100.UUID); d.Health.State != HealthUnhealthy {
				return "ECC at 40s should make GPU 2 unhealthy"
			}
			return ""
		}},
		{61 * time.Second, func(s Snapshot) string {
			if d := mustDevice(t, s, g0); d.Health.State != HealthLost {
				return "GPU 0 should be lost at 60s"
			}
			return ""
		}},
		{7 * time.Minute, func(s Snapshot) string {
			if d := mustDevice(t, s, g0); d.Health.State != HealthHealthy {
				return "GPU 0, restored at 90s, should be healthy after the quiet period, got " + string(d.Health.State)
			}
			return ""
		}},
	}
	start := epoch
	for _, st := range steps {
		clk.Advance(start.Add(st.at).Sub(clk.Now()))
		if msg := st.check(refresh(t, inv)); msg != "" {
			t.Errorf("at %s: %s", st.at, msg)
		}
	}
}

func TestSetMemoryUsedShowsInNextSnapshot(t *testing.T) {
	inv, _ := openSim(t, SimDGXA100MIG, nil, nil)
	sim := inv.Simulator()
	if err := sim.SetMemoryUsed(gpuUUID(1), 39*gib); err != nil {
		t.Fatal(err)
	}
	if err := sim.SetMemoryUsed(gpuUUID(1), 41*gib); err == nil {
		t.Error("using more than the GPU has should fail")
	}
	if err := sim.SetMemoryUsed(migUUID(3), 4*gib); err != nil {
		t.Fatal(err)
	}
	s := refresh(t, inv)
	if d := mustDevice(t, s, gpuUUID(1)); d.MemoryFreeBytes != 40960*mib-512*mib-39*gib {
		t.Errorf("GPU 1 free = %d", d.MemoryFreeBytes)
	}
	if d := mustDevice(t, s, migUUID(3)); d.MemoryFreeBytes != 4864*mib-4*gib {
		t.Errorf("MIG 0:3 free = %d", d.MemoryFreeBytes)
	}
	if d := mustDevice(t, s, gpuUUID(0)); d.MemoryUsedBytes != (6656*mib)+4*gib {
		t.Errorf("MIG parent used = %d, should include its instances", d.MemoryUsedBytes)
	}
	if err := sim.Lose("GPU-nope"); !errors.Is(err, ErrUnknownDevice) {
		t.Errorf("Lose(unknown) = %v", err)
	}
}

func TestWatchdogMarksHealthUnknownWhileBackendHangs(t *testing.T) {
	inv, _ := openSim(t, SimDGXA100, nil, func(o *Options) { o.WatchdogTimeout = 20 * time.Millisecond })
	release := inv.Simulator().Hang()
	err := inv.Refresh(context.Background())
	if !errors.Is(err, ErrStalled) {
		t.Fatalf("Refresh on a hung backend = %v, want ErrStalled", err)
	}
	s := inv.Snapshot()
	for _, d := range s.GPUs() {
		if d.Health.State != HealthUnknown || d.Healthy {
			t.Fatalf("%s = %s while NVML hangs, want unknown", d.Label(), d.Health.State)
		}
	}
	if cpu, _ := s.CPU(); cpu.Health.State != HealthHealthy {
		t.Errorf("CPU = %s, a hung NVML must not touch it", cpu.Health.State)
	}
	if err := inv.Refresh(context.Background()); !errors.Is(err, ErrStalled) {
		t.Fatalf("second Refresh = %v: calls must fail fast while the first is stuck", err)
	}
	release()
	// The stuck call returns in the background; poll until it has.
	deadline := time.Now().Add(10 * time.Second)
	for inv.Refresh(context.Background()) != nil {
		if time.Now().After(deadline) {
			t.Fatal("inventory never recovered after the hang was released")
		}
		time.Sleep(5 * time.Millisecond)
	}
	if d := mustDevice(t, inv.Snapshot(), gpuUUID(0)); d.Health.State != HealthHealthy {
		t.Fatalf("after the hang: %s", d.Health.State)
	}
}

func TestRunWatchesEventsAndStopsWithContext(t *testing.T) {
	inv, _ := openSim(t, SimDGXA100, nil, func(o *Options) { o.RefreshInterval = time.Hour; o.EventWait = 50 * time.Millisecond })
	events, cancel := inv.Subscribe()
	defer cancel()
	ctx, stop := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- inv.Run(ctx) }()
	// Run's watcher may not be waiting yet; the simulator queues the event.
	if err := inv.Simulator().InjectXid(gpuUUID(4), 48); err != nil {
		t.Fatal(err)
	}
	select {
	case ev := <-events:
		if ev.Device.UUID != gpuUUID(4) || ev.Device.Health.State != HealthUnhealthy {
			t.Fatalf("event %s %s", ev.Device.UUID, ev.Device.Health.State)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Run's watcher did not deliver the Xid")
	}
	stop()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Run = %v, want nil on cancel", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return after cancel")
	}
}

func TestConcurrentReadersDuringRefreshAndFaults(t *testing.T) {
	inv, clk := openSim(t, SimDGXA100MIG, nil, nil)
	sim := inv.Simulator()
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				s := inv.Snapshot()
				if len(s.Devices) != 13 {
					t.Errorf("snapshot has %d devices", len(s.Devices))
					return
				}
				for _, d := range s.GPUs() {
					if d.Healthy != d.Health.Healthy() {
						t.Errorf("%s: Healthy=%v but health %s: a snapshot must agree with itself", d.Label(), d.Healthy, d.Health.State)
						return
					}
					for range d.XidCounts { // read the map while refreshes publish new ones
					}
				}
				_, _ = s.ByUUID(gpuUUID(3))
			}
		})
	}
	events, cancel := inv.Subscribe()
	wg.Go(func() {
		for range events {
		}
	})
	for i := range 50 {
		u := gpuUUID(1 + i%7)
		_ = sim.InjectXid(u, uint64(13+i%2*35))
		_ = sim.SetMemoryUsed(u, uint64(i)*mib)
		clk.Advance(time.Minute)
		if err := inv.Refresh(context.Background()); err != nil {
			t.Error(err)
		}
	}
	close(stop)
	cancel()
	wg.Wait()
}

// fakeBackend fails Init with a given error and fails the test if anything
// else is called afterwards.
type fakeBackend struct {
	t       *testing.T
	initErr error
}

var _ Backend = fakeBackend{}

func (f fakeBackend) Source() string { return "nvml" }
func (f fakeBackend) Init() error    { return f.initErr }
func (f fakeBackend) after(name string) {
	f.t.Helper()
	f.t.Errorf("%s called after Init failed: NVML would kill the process", name)
}
func (f fakeBackend) Shutdown() error             { f.after("Shutdown"); return nil }
func (f fakeBackend) Versions() (Versions, error) { f.after("Versions"); return Versions{}, nil }
func (f fakeBackend) Count() (int, error)         { f.after("Count"); return 0, nil }
func (f fakeBackend) Query(int) ([]Device, error) { f.after("Query"); return nil, nil }
func (f fakeBackend) Probe(string) error          { f.after("Probe"); return nil }
func (f fakeBackend) Warnings() []string          { f.after("Warnings"); return nil }
func (f fakeBackend) WaitEvent(context.Context, time.Duration) (RawEvent, error) {
	f.after("WaitEvent")
	return RawEvent{}, ErrTimeout
}

func TestOpenWithoutNVML(t *testing.T) {
	base := func(b Backend, require bool) Options {
		return Options{Backend: b, RequireGPU: require, LookupEnv: env(nil), HostFS: openFS("cgroupv1"), NumCPU: func() int { return 4 }, Logger: testLogger(t)}
	}
	t.Run("library missing runs CPU-only", func(t *testing.T) {
		inv, err := Open(context.Background(), base(fakeBackend{t, ErrLibraryNotFound}, false))
		if err != nil {
			t.Fatal(err)
		}
		defer inv.Close()
		s := inv.Snapshot()
		if s.Source != "cpu-only" || len(s.Devices) != 1 || s.Devices[0].Kind != KindCPU || len(s.GPUs()) != 0 {
			t.Fatalf("snapshot = %+v", s)
		}
		if inv.Simulator() != nil {
			t.Error("no simulator expected")
		}
	})
	t.Run("require GPU fails", func(t *testing.T) {
		_, err := Open(context.Background(), base(fakeBackend{t, ErrLibraryNotFound}, true))
		if !errors.Is(err, ErrNoGPU) {
			t.Fatalf("err = %v, want ErrNoGPU", err)
		}
	})
	t.Run("other init errors are fatal and clear", func(t *testing.T) {
		_, err := Open(context.Background(), base(fakeBackend{t, errors.New("NVML init failed with ERROR_DRIVER_NOT_LOADED: load the driver")}, false))
		if err == nil || !strings.Contains(err.Error(), "ERROR_DRIVER_NOT_LOADED") {
			t.Fatalf("err = %v", err)
		}
	})
	t.Run("simulate and backend together", func(t *testing.T) {
		o := base(fakeBackend{t, nil}, false)
		o.Simulate = SimDGXA100
		if _, err := Open(context.Background(), o); err == nil {
			t.Fatal("want an error")
		}
	})
	t.Run("bad simulate value", func(t *testing.T) {
		_, err := Open(context.Background(), Options{Simulate: "testdata/does-not-exist.json", Logger: testLogger(t)})
		if err == nil || !strings.Contains(err.Error(), "dgxa100") {
			t.Fatalf("err = %v, want a hint naming the built-in nodes", err)
		}
	})
}

func TestClosedInventory(t *testing.T) {
	inv, _ := openSim(t, SimDGXA100, nil, nil)
	events, _ := inv.Subscribe()
	if err := inv.Close(); err != nil {
		t.Fatal(err)
	}
	if err := inv.Close(); err != nil {
		t.Fatalf("second Close = %v", err)
	}
	if _, ok := <-events; ok {
		t.Error("subscription open after Close")
	}
	if err := inv.Refresh(context.Background()); !errors.Is(err, ErrClosed) {
		t.Errorf("Refresh after Close = %v", err)
	}
	if err := inv.Run(context.Background()); !errors.Is(err, ErrClosed) {
		t.Errorf("Run after Close = %v", err)
	}
	if len(inv.Snapshot().GPUs()) != 8 {
		t.Error("the last snapshot should stay readable")
	}
}

func BenchmarkSnapshot(b *testing.B) {
	inv, err := Open(context.Background(), Options{Simulate: SimDGXA100, LookupEnv: env(nil), HostFS: openFS("cgroupv2")})
	if err != nil {
		b.Fatal(err)
	}
	defer inv.Close()
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			s := inv.Snapshot()
			if len(s.Devices) != 9 {
				b.Fatal("bad snapshot")
			}
		}
	})
}

func BenchmarkRefreshDGXA100(b *testing.B) {
	inv, err := Open(context.Background(), Options{Simulate: SimDGXA100, LookupEnv: env(nil), HostFS: openFS("cgroupv2")})
	if err != nil {
		b.Fatal(err)
	}
	defer inv.Close()
	b.ReportAllocs()
	for b.Loop() {
		if err := inv.Refresh(context.Background()); err != nil {
			b.Fatal(err)
		}
	}
}

// Faults already queued when the inventory opens are handled on the devices
// it has read: a GPU-wide Xid reaches the GPU's MIG instances, and no
// snapshot without the GPUs is ever published (it logged visibility
// warnings against zero GPUs, then again against the real ones).
func TestFaultsPendingAtOpenMeetTheDevicesRead(t *testing.T) {
	var logs bytes.Buffer
	inv, _ := openSim(t, "testdata/sim-faults-at-open.json", map[string]string{"CUDA_VISIBLE_DEVICES": "7"}, func(o *Options) {
		o.Logger = slog.New(slog.NewTextHandler(&logs, nil))
	})
	var gpus []Device // all of them: CUDA_VISIBLE_DEVICES=7 hides every one
	for _, d := range inv.Snapshot().Devices {
		if d.IsAccelerator() {
			gpus = append(gpus, d)
		}
	}
	if len(gpus) != 4 {
		t.Fatalf("%d accelerators, want GPU 0, its 2 instances and GPU 1", len(gpus))
	}
	for _, d := range gpus {
		if d.Health.State != HealthUnhealthy {
			t.Errorf("%s = %s at open, want unhealthy (Xid 48 on GPU 0, double-bit ECC on GPU 1)", d.Label(), d.Health.State)
		}
	}
	text := logs.String()
	if n := strings.Count(text, "CUDA_VISIBLE_DEVICES"); n != 1 || !strings.Contains(text, "index out of range 0..1") {
		t.Errorf("visibility warning logged %d times, want once against GPUs 0..1:\n%s", n, text)
	}
	if n := strings.Count(text, `msg="device health changed"`); n != len(gpus) {
		t.Errorf("%d health changes logged, want one per accelerator (%d):\n%s", n, len(gpus), text)
	}
}
