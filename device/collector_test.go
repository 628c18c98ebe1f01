package device

import (
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

type fixedSnapshot Snapshot

func (f fixedSnapshot) Snapshot() Snapshot { return Snapshot(f) }

func TestCollectorExportsVisibleDevices(t *testing.T) {
	src := fixedSnapshot{Devices: []Device{
		{Kind: KindGPU, Index: 0, UUID: "GPU-a", Name: "A100", MemoryTotalBytes: 40 << 30, MemoryFreeBytes: 30 << 30, MemoryUsedBytes: 9 << 30,
			MemoryReservedBytes: 1 << 30, UtilizationGPU: 45, TemperatureC: 50, PowerW: 120, Health: Health{State: HealthHealthy}, Visible: true,
			XidCounts: map[uint64]uint64{13: 2}},
		{Kind: KindGPU, Index: 1, UUID: "GPU-b", Name: "A100", MemoryTotalBytes: 40 << 30, Health: Health{State: HealthLost}, Visible: true},
		{Kind: KindGPU, Index: 2, UUID: "GPU-hidden", Name: "A100", MemoryTotalBytes: 40 << 30, Visible: false},
		{Kind: KindCPU, UUID: "cpu", Name: "Test CPU", MemoryTotalBytes: 8 << 30, MemoryFreeBytes: 6 << 30, MemoryUsedBytes: 2 << 30, Health: Health{State: HealthHealthy}, Visible: true},
	}}
	c := NewCollector(src)
	want := `
# HELP kasmina_device_healthy 1 when work may be placed on the device (healthy or degraded), else 0.
# TYPE kasmina_device_healthy gauge
kasmina_device_healthy{index="0",name="A100",uuid="GPU-a"} 1
kasmina_device_healthy{index="1",name="A100",uuid="GPU-b"} 0
kasmina_device_healthy{index="cpu",name="Test CPU",uuid="cpu"} 1
# HELP kasmina_device_memory_free_bytes Free memory of the device in bytes (NVML v2: excludes driver-reserved memory).
# TYPE kasmina_device_memory_free_bytes gauge
kasmina_device_memory_free_bytes{index="0",name="A100",uuid="GPU-a"} 3.221225472e+10
kasmina_device_memory_free_bytes{index="1",name="A100",uuid="GPU-b"} 0
kasmina_device_memory_free_bytes{index="cpu",name="Test CPU",uuid="cpu"} 6.442450944e+09
# HELP kasmina_device_utilization_ratio Fraction of the last sample period during which a kernel ran on the device (0-1).
# TYPE kasmina_device_utilization_ratio gauge
kasmina_device_utilization_ratio{index="0",name="A100",uuid="GPU-a"} 0.45
kasmina_device_utilization_ratio{index="1",name="A100",uuid="GPU-b"} 0
# HELP kasmina_device_xid_events_total Xid events seen since the host started, ignored application Xids included.
# TYPE kasmina_device_xid_events_total counter
kasmina_device_xid_events_total{index="0",name="A100",uuid="GPU-a",xid="13"} 2
`
	if err := testutil.CollectAndCompare(c, strings.NewReader(want),
		"kasmina_device_healthy", "kasmina_device_memory_free_bytes", "kasmina_device_utilization_ratio", "kasmina_device_xid_events_total"); err != nil {
		t.Fatal(err)
	}
	if problems, err := testutil.CollectAndLint(c); err != nil || len(problems) > 0 {
		t.Fatalf("lint: %v %v", problems, err)
	}
	if n := testutil.CollectAndCount(c, "kasmina_device_health_state"); n != 15 {
		t.Errorf("health_state series = %d, want 5 states x 3 visible devices", n)
	}
	reg := prometheus.NewPedanticRegistry()
	if err := reg.Register(c); err != nil {
		t.Fatal(err)
	}
	if _, err := reg.Gather(); err != nil {
		t.Fatal(err)
	}
}

func TestCollectorOnSimulatedInventory(t *testing.T) {
	inv, _ := openSim(t, SimDGXA100, map[string]string{EnvCUDAVisibleDevices: "1,2"}, nil)
	if n := testutil.CollectAndCount(NewCollector(inv), "kasmina_device_memory_total_bytes"); n != 3 {
		t.Fatalf("memory_total series = %d, want 2 visible GPUs + CPU", n)
	}
}
