package placement

import (
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
)

// dgx returns eight A100-40GB GPUs with mixed free memory, plus the CPU.
func dgx() []Device {
	free := []float64{30000, 12000, 4000, 38000, 20000, 8000, 25000, 16000}
	out := make([]Device, 0, 9)
	for i, f := range free {
		out = append(out, Device{
			Name: DeviceName(i), Kind: KindGPU, Ordinal: i,
			UUID:    fmt.Sprintf("GPU-a100000%d-0000-4000-8000-00000000000%d", i, i),
			Healthy: true, FreeMiB: f, TotalMiB: 40960,
		})
	}
	return append(out, Device{Name: "cpu", Kind: KindCPU, Healthy: true, FreeMiB: 16000, TotalMiB: 24000})
}

func withDevice(devs []Device, name string, f func(*Device)) []Device {
	out := append([]Device(nil), devs...)
	for i := range out {
		if out[i].Name == name {
			f(&out[i])
		}
	}
	return out
}

func TestPlan(t *testing.T) {
	allUnhealthy := dgx()
	for i := 0; i < 8; i++ {
		allUnhealthy[i].Healthy = false
		allUnhealthy[i].HealthReason = "Xid 79: GPU has fallen off the bus"
	}
	mig := []Device{
		// The MIG-enabled GPU has no CUDA ordinal; its instances have 0
		// and 1, and a whole GPU after them 2.
		{Name: "GPU-aaaa", Kind: KindGPU, Ordinal: -1, UUID: "GPU-aaaa", Healthy: true, MIGEnabled: true, FreeMiB: 40000, TotalMiB: 40960},
		{Name: DeviceName(0), Kind: KindMIG, Ordinal: 0, UUID: "MIG-1111", Healthy: true, FreeMiB: 9000, TotalMiB: 9856},
		{Name: DeviceName(1), Kind: KindMIG, Ordinal: 1, UUID: "MIG-2222", Healthy: true, FreeMiB: 19000, TotalMiB: 19968},
		{Name: DeviceName(2), Kind: KindGPU, Ordinal: 2, UUID: "GPU-bbbb", Healthy: true, FreeMiB: 3000, TotalMiB: 40960},
		{Name: "cpu", Kind: KindCPU, Healthy: true, FreeMiB: 8000},
	}
	cpuOnly := []Device{{Name: "cpu", Kind: KindCPU, Healthy: true, FreeMiB: 8000}}

	tests := []struct {
		name       string
		opts       Options
		devs       []Device
		req        Request
		device     string
		degraded   bool
		fallback   string // substring of FallbackReason
		shortfall  Shortfall
		estSource  string
		rejections map[string]Verdict
	}{
		{name: "best fit picks the tightest GPU", devs: dgx(),
			req: Request{Requirements: []string{"cuda"}, ContractMiB: 7000}, device: "cuda:5", estSource: "contract",
			rejections: map[string]Verdict{"cuda:2": NoMemory, "cuda:3": FitsNotChosen, "cpu": LowerPreference}},
		{name: "spread picks the emptiest GPU", opts: Options{Policy: Spread}, devs: dgx(),
			req: Request{Requirements: []string{"cuda"}, ContractMiB: 7000}, device: "cuda:3"},
		{name: "exact fit is accepted", devs: dgx(),
			req: Request{Requirements: []string{"cuda:2"}, ContractMiB: 4000}, device: "cuda:2"},
		{name: "one MiB over exact fit falls back", devs: dgx(),
			req: Request{Requirements: []string{"cuda:2"}, ContractMiB: 4001}, device: "cpu", degraded: true,
			fallback: "no GPU has enough free memory", shortfall: InsufficientMemory, rejections: map[string]Verdict{"cuda:2": NoMemory}},
		{name: "headroom counts", opts: Options{HeadroomMiB: 1}, devs: dgx(),
			req: Request{Requirements: []string{"cuda:2"}, ContractMiB: 4000}, device: "cpu", degraded: true, shortfall: InsufficientMemory},
		{name: "headroom fraction of total counts", opts: Options{HeadroomFraction: 0.5}, devs: dgx(),
			req: Request{Requirements: []string{"cuda"}, ContractMiB: 10000}, device: "cuda:3",
			rejections: map[string]Verdict{"cuda:0": NoMemory}},
		{name: "floor beats shrinking contract estimate", devs: dgx(),
			req: Request{Requirements: []string{"cuda"}, ContractMiB: 10, FloorMiB: 13000}, device: "cuda:7", estSource: "weights+activations"},
		{name: "index requirement", devs: dgx(),
			req: Request{Requirements: []string{"cuda:6"}, ContractMiB: 100}, device: "cuda:6",
			rejections: map[string]Verdict{"cuda:5": NotRequested}},
		{name: "uuid prefix requirement", devs: dgx(),
			req: Request{Requirements: []string{"cuda:GPU-a1000004"}, ContractMiB: 100}, device: "cuda:4"},
		{name: "preference order wins over best fit", devs: dgx(),
			req: Request{Requirements: []string{"cuda:3", "cuda"}, ContractMiB: 100}, device: "cuda:3",
			rejections: map[string]Verdict{"cuda:2": LowerPreference}},
		{name: "later preference used when earlier has no room", devs: dgx(),
			req: Request{Requirements: []string{"cuda:2", "cuda:1"}, ContractMiB: 5000}, device: "cuda:1"},
		{name: "cpu first in preferences", devs: dgx(),
			req: Request{Requirements: []string{"cpu", "cuda"}, ContractMiB: 100}, device: "cpu"},
		{name: "empty requirements prefer GPUs", devs: dgx(),
			req: Request{ContractMiB: 100}, device: "cuda:2"},
		{name: "empty requirements fall to the CPU without degradation", devs: cpuOnly,
			req: Request{ContractMiB: 100}, device: "cpu"},
		{name: "unhealthy GPU skipped", devs: withDevice(dgx(), "cuda:5", func(d *Device) { d.Healthy = false; d.HealthReason = "lost" }),
			req: Request{Requirements: []string{"cuda"}, ContractMiB: 7000}, device: "cuda:1",
			rejections: map[string]Verdict{"cuda:5": Unhealthy}},
		{name: "all unhealthy falls back degraded", devs: allUnhealthy,
			req: Request{Requirements: []string{"cuda"}, ContractMiB: 100}, device: "cpu", degraded: true,
			fallback: "unhealthy", shortfall: AllUnhealthy},
		{name: "no GPU visible falls back degraded", devs: cpuOnly,
			req: Request{Requirements: []string{"cuda"}, ContractMiB: 100}, device: "cpu", degraded: true,
			fallback: "no GPU is visible", shortfall: NoGPUVisible},
		{name: "requirement not met falls back", devs: dgx(),
			req: Request{Requirements: []string{"cuda:9"}, ContractMiB: 100}, device: "cpu", degraded: true,
			fallback: "no GPU meets", shortfall: RequirementNotMet},
		{name: "allow falls back without degradation", devs: cpuOnly,
			req: Request{Requirements: []string{"cuda"}, ContractMiB: 100, Fallback: FallbackAllow}, device: "cpu",
			fallback: "no GPU is visible", shortfall: NoGPUVisible},
		{name: "deny refuses", devs: cpuOnly,
			req: Request{Requirements: []string{"cuda"}, ContractMiB: 100, Fallback: FallbackDeny}, device: "",
			fallback: "no GPU is visible and CPU fallback is denied", shortfall: NoGPUVisible, rejections: map[string]Verdict{"cpu": NotRequested}},
		{name: "too big for everything", devs: dgx(),
			req: Request{ContractMiB: 50000}, device: "",
			rejections: map[string]Verdict{"cuda:3": NoMemory, "cpu": NoMemory}},
		{name: "MIG parent takes nothing, instances do", devs: mig,
			req: Request{Requirements: []string{"cuda"}, ContractMiB: 5000}, device: "cuda:0",
			rejections: map[string]Verdict{"GPU-aaaa": MIGParent}},
		{name: "MIG instance by uuid", devs: mig,
			req: Request{Requirements: []string{"cuda:MIG-2222"}, ContractMiB: 5000}, device: "cuda:1"},
		{name: "MIG instance by its CUDA ordinal", devs: mig,
			req: Request{Requirements: []string{"cuda:1"}, ContractMiB: 5000}, device: "cuda:1",
			rejections: map[string]Verdict{"cuda:0": NotRequested, "cuda:2": NotRequested}},
		{name: "whole GPU after MIG instances by its CUDA ordinal", devs: mig,
			req: Request{Requirements: []string{"cuda:2"}, ContractMiB: 1000}, device: "cuda:2"},
		{name: "MIG instances too small", devs: mig,
			req: Request{Requirements: []string{"cuda"}, ContractMiB: 30000}, device: "", fallback: "no GPU has enough free memory", shortfall: InsufficientMemory},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dec, err := NewPlanner(tt.opts).Plan(tt.req, tt.devs, nil)
			if err != nil {
				t.Fatal(err)
			}
			if dec.Device != tt.device {
				t.Fatalf("device = %q, want %q\n%s", dec.Device, tt.device, dec.Reason())
			}
			if dec.Degraded != tt.degraded {
				t.Errorf("degraded = %v, want %v", dec.Degraded, tt.degraded)
			}
			if !strings.Contains(dec.FallbackReason(), tt.fallback) {
				t.Errorf("fallback reason %q does not mention %q", dec.FallbackReason(), tt.fallback)
			}
			if dec.Shortfall != tt.shortfall {
				t.Errorf("shortfall %v (%s), want %v", dec.Shortfall, dec.Shortfall.Label(), tt.shortfall)
			}
			if tt.estSource != "" && dec.EstimateSource != tt.estSource {
				t.Errorf("estimate source = %q, want %q", dec.EstimateSource, tt.estSource)
			}
			if len(dec.Candidates) != len(tt.devs) {
				t.Fatalf("%d candidates for %d devices", len(dec.Candidates), len(tt.devs))
			}
			for _, c := range dec.Candidates {
				if c.Reason() == "" || c.Reason() == "unknown" {
					t.Errorf("%s: no reason", c.Device)
				}
				if want, ok := tt.rejections[c.Device]; ok && c.Verdict != want {
					t.Errorf("%s: verdict %d (%s), want %d", c.Device, c.Verdict, c.Reason(), want)
				}
				if c.Device == dec.Device && (!c.Fits || c.Verdict != Fits) {
					t.Errorf("chosen %s not marked as fitting", c.Device)
				}
			}
			if dec.Placed() && dec.EffectiveFreeAfterMiB != dec.EffectiveFreeBeforeMiB-dec.EstimateMiB {
				t.Errorf("after %v != before %v - estimate %v", dec.EffectiveFreeAfterMiB, dec.EffectiveFreeBeforeMiB, dec.EstimateMiB)
			}
			if r := dec.Reason(); !dec.Placed() && !strings.Contains(r, "no device can take") {
				t.Errorf("refusal reason %q", r)
			}
		})
	}
}

func TestPlanRejectsBadRequirement(t *testing.T) {
	for _, bad := range []string{"tpu", "cuda:x", "cuda:-1", "cuda:", "rocm:0"} {
		_, err := NewPlanner(Options{}).Plan(Request{Requirements: []string{bad}}, dgx(), nil)
		if !errors.Is(err, ErrBadRequirement) || !strings.Contains(err.Error(), bad) {
			t.Errorf("%q: err = %v, want ErrBadRequirement naming it", bad, err)
		}
	}
}

func TestLedgerReservationsReduceEffectiveFree(t *testing.T) {
	l := NewLedger()
	p := NewPlanner(Options{})
	devs := []Device{{Name: "cuda:0", Kind: KindGPU, UUID: "GPU-0", Healthy: true, FreeMiB: 10000, TotalMiB: 40960}}
	req := Request{Requirements: []string{"cuda"}, ContractMiB: 4000, Fallback: FallbackDeny}
	for i, want := range []string{"cuda:0", "cuda:0", ""} {
		dec, err := l.PlaceAndReserve(p, fmt.Sprint("k", i), req, devs)
		if dec.Device != want {
			t.Fatalf("placement %d on %q, want %q (%s)", i, dec.Device, want, dec.Reason())
		}
		if want == "" && !errors.Is(err, ErrNoPlacement) {
			t.Fatalf("err = %v, want ErrNoPlacement", err)
		}
	}
	if got := l.ReservedMiB("cuda:0"); got != 8000 {
		t.Fatalf("reserved %v, want 8000", got)
	}
	if _, err := l.PlaceAndReserve(p, "k0", req, devs); !errors.Is(err, ErrAlreadyReserved) {
		t.Fatalf("double reservation: %v", err)
	}
	if !l.Release("k1") || l.Release("k1") {
		t.Fatal("release should succeed once")
	}
	if got := l.ReservedMiB("cuda:0"); got != 4000 {
		t.Fatalf("after one release reserved %v, want 4000", got)
	}
	if !l.Release("k0") || l.ReservedMiB("cuda:0") != 0 {
		t.Fatalf("after both releases reserved %v, want 0", l.ReservedMiB("cuda:0"))
	}
	if _, err := l.PlaceAndReserve(p, "k0", req, devs); err != nil {
		t.Fatalf("a released key places again: %v", err)
	}
}

func TestLedgerMove(t *testing.T) {
	l := NewLedger()
	p := NewPlanner(Options{})
	devs := dgx()
	req := Request{Requirements: []string{"cuda"}, ContractMiB: 7000}
	dec, err := l.PlaceAndReserve(p, "k", req, devs)
	if err != nil || dec.Device != "cuda:5" {
		t.Fatalf("initial placement %q %v", dec.Device, err)
	}
	lost := withDevice(devs, "cuda:5", func(d *Device) { d.Healthy = false })
	dec, err = l.Move(p, "k", req, lost)
	if err != nil || dec.Device != "cuda:1" {
		t.Fatalf("move to %q %v", dec.Device, err)
	}
	if l.ReservedMiB("cuda:5") != 0 || l.ReservedMiB("cuda:1") != 7000 {
		t.Fatalf("after the move: %v MiB on cuda:5, %v on cuda:1", l.ReservedMiB("cuda:5"), l.ReservedMiB("cuda:1"))
	}
	// A move that finds nothing keeps the old reservation.
	req.Fallback = FallbackDeny
	req.ContractMiB = 1e6
	if _, err := l.Move(p, "k", req, lost); !errors.Is(err, ErrNoPlacement) {
		t.Fatalf("impossible move: %v", err)
	}
	if l.ReservedMiB("cuda:1") != 7000 || len(l.entries) != 1 || l.entries["k"].device != "cuda:1" {
		t.Fatalf("failed move changed the ledger: %+v, %v MiB on cuda:1", l.entries, l.ReservedMiB("cuda:1"))
	}
}

// MustLeave names why a kernel leaves its device, typed for metric labels
// and in words for moves.
func TestMustLeave(t *testing.T) {
	p := NewPlanner(Options{HeadroomMiB: 1000})
	l := NewLedger()
	devs := dgx()
	if _, err := l.PlaceAndReserve(p, "k", Request{Requirements: []string{"cuda:2"}, ContractMiB: 2500}, devs); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name   string
		device string
		devs   []Device
		want   MoveReason
		label  string
		why    string
	}{
		{"healthy with room", "cuda:0", devs, Stay, "none", ""},
		{"the CPU stays", "cpu", devs, Stay, "none", ""},
		{"gone", "cuda:9", devs, DeviceGone, "invisible", "device no longer visible"},
		{"unhealthy", "cuda:5", withDevice(devs, "cuda:5", func(d *Device) { d.Healthy = false; d.HealthReason = "Xid 79" }),
			DeviceUnhealthy, "unhealthy", "device unhealthy: Xid 79"},
		{"reservations over free memory", "cuda:2", withDevice(devs, "cuda:2", func(d *Device) { d.FreeMiB = 3000 }),
			MemoryPressure, "memory_pressure", "device memory pressure: 3000 MiB free − 2500 reserved − 1000 headroom < 0"},
	} {
		got, why := p.MustLeave(c.device, c.devs, l)
		if got != c.want || got.Label() != c.label || why != c.why {
			t.Errorf("%s: %v %q %q, want %v %q %q", c.name, got, got.Label(), why, c.want, c.label, c.why)
		}
	}
}

// Concurrent placements on one ledger never promise more than a device has.
func TestLedgerConcurrentPlacementsNeverOvercommit(t *testing.T) {
	l := NewLedger()
	p := NewPlanner(Options{HeadroomMiB: 100})
	devs := dgx()[:8]
	req := Request{Requirements: []string{"cuda"}, ContractMiB: 900, Fallback: FallbackDeny}
	var wg sync.WaitGroup
	var mu sync.Mutex
	placed := 0
	for g := 0; g < 16; g++ {
		wg.Add(1)
		go func(g int) {
			defer wg.Done()
			for i := 0; i < 40; i++ {
				if _, err := l.PlaceAndReserve(p, fmt.Sprintf("g%d-%d", g, i), req, devs); err == nil {
					mu.Lock()
					placed++
					mu.Unlock()
				}
			}
		}(g)
	}
	wg.Wait()
	capacity := 0
	for _, d := range devs {
		capacity += int((d.FreeMiB - 100) / 900)
		if r := l.ReservedMiB(d.Name); r > d.FreeMiB-100 {
			t.Errorf("%s overcommitted: %v reserved of %v free", d.Name, r, d.FreeMiB-100)
		}
	}
	if placed != capacity {
		t.Errorf("placed %d kernels, capacity is %d", placed, capacity)
	}
	t.Logf("placed %d of 640 attempts across 8 GPUs (capacity %d)", placed, capacity)
}

// BenchmarkPlan8GPU measures one placement decision over a DGX A100
// snapshot (8 GPUs and the CPU) with every candidate's numbers filled in,
// reading reservations from a ledger, reusing the decision's storage.
func BenchmarkPlan8GPU(b *testing.B) {
	p := NewPlanner(Options{HeadroomMiB: 256})
	devs := dgx()
	l := NewLedger()
	l.PlaceAndReserve(p, "other", Request{Requirements: []string{"cuda:1"}, ContractMiB: 2000}, devs)
	req := Request{Kernel: "k", Requirements: []string{"cuda"}, ContractMiB: 7000, FloorMiB: 300}
	var dec Decision
	b.ReportAllocs()
	for b.Loop() {
		l.mu.Lock()
		p.PlanInto(&dec, req, devs, lockedView{l})
		l.mu.Unlock()
		if dec.Device == "" {
			b.Fatal("no placement")
		}
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "decisions/s")
}

// BenchmarkPlaceAndReserve8GPU measures a decision plus its reservation and
// release, as a load and unload would do.
func BenchmarkPlaceAndReserve8GPU(b *testing.B) {
	p := NewPlanner(Options{HeadroomMiB: 256})
	devs := dgx()
	l := NewLedger()
	req := Request{Kernel: "k", Requirements: []string{"cuda"}, ContractMiB: 7000, FloorMiB: 300}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := l.PlaceAndReserve(p, "k", req, devs); err != nil {
			b.Fatal(err)
		}
		l.Release("k")
	}
}
