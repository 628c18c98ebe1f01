package device

import (
	"github.com/prometheus/client_golang/prometheus"
)

// SnapshotSource is anything that hands out the latest snapshot; an
// *Inventory is one.
type SnapshotSource interface {
	Snapshot() Snapshot
}

// Collector exports the device gauges of the latest snapshot to Prometheus,
// for visible devices only. It reads the snapshot at scrape time and never
// touches the hardware. Register it on a registry of your own:
//
//	reg.MustRegister(device.NewCollector(inv))
type Collector struct {
	src SnapshotSource

	memTotal, memFree, memUsed, memReserved *prometheus.Desc
	util, memUtil, temp, power              *prometheus.Desc
	healthy, state, ecc, xids               *prometheus.Desc
}

var _ prometheus.Collector = (*Collector)(nil)

// healthStates are the values of the state label of
// kasmina_device_health_state.
var healthStates = []HealthState{HealthHealthy, HealthDegraded, HealthUnknown, HealthUnhealthy, HealthLost}

// NewCollector returns a collector over src's snapshots.
func NewCollector(src SnapshotSource) *Collector {
	labels := []string{"uuid", "index", "name"}
	d := func(name, help string, extra ...string) *prometheus.Desc {
		return prometheus.NewDesc("kasmina_device_"+name, help, append(append([]string(nil), labels...), extra...), nil)
	}
	return &Collector{
		src:         src,
		memTotal:    d("memory_total_bytes", "Total memory of the device in bytes."),
		memFree:     d("memory_free_bytes", "Free memory of the device in bytes (NVML v2: excludes driver-reserved memory)."),
		memUsed:     d("memory_used_bytes", "Memory in use on the device in bytes."),
		memReserved: d("memory_reserved_bytes", "Memory the driver reserves on the device in bytes."),
		util:        d("utilization_ratio", "Fraction of the last sample period during which a kernel ran on the device (0-1)."),
		memUtil:     d("memory_utilization_ratio", "Fraction of the last sample period during which device memory was read or written (0-1)."),
		temp:        d("temperature_celsius", "GPU core temperature in degrees Celsius."),
		power:       d("power_watts", "Board power draw in watts."),
		healthy:     d("healthy", "1 when work may be placed on the device (healthy or degraded), else 0."),
		state:       d("health_state", "1 for the device's current health state, 0 for the others.", "state"),
		ecc:         d("ecc_errors_total", "Volatile ECC error count since the driver loaded.", "type"),
		xids:        d("xid_events_total", "Xid events seen since the host started, ignored application Xids included.", "xid"),
	}
}

// Describe implements prometheus.Collector.
func (c *Collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.memTotal, c.memFree, c.memUsed, c.memReserved, c.util, c.memUtil, c.temp, c.power, c.healthy, c.state, c.ecc, c.xids} {
		ch <- d
	}
}

// Collect implements prometheus.Collector.
func (c *Collector) Collect(ch chan<- prometheus.Metric) {
	snap := c.src.Snapshot()
	for _, d := range snap.Devices {
		if !d.Visible {
			continue
		}
		lv := []string{d.UUID, d.Label(), d.Name}
		gauge := func(desc *prometheus.Desc, v float64, extra ...string) {
			ch <- prometheus.MustNewConstMetric(desc, prometheus.GaugeValue, v, append(append([]string(nil), lv...), extra...)...)
		}
		counter := func(desc *prometheus.Desc, v float64, extra ...string) {
			ch <- prometheus.MustNewConstMetric(desc, prometheus.CounterValue, v, append(append([]string(nil), lv...), extra...)...)
		}
		gauge(c.memTotal, float64(d.MemoryTotalBytes))
		gauge(c.memFree, float64(d.MemoryFreeBytes))
		gauge(c.memUsed, float64(d.MemoryUsedBytes))
		healthy := 0.0
		if d.Health.Healthy() {
			healthy = 1
		}
		gauge(c.healthy, healthy)
		for _, s := range healthStates {
			v := 0.0
			if d.Health.State == s {
				v = 1
			}
			gauge(c.state, v, string(s))
		}
		if !d.IsAccelerator() {
			continue
		}
		gauge(c.memReserved, float64(d.MemoryReservedBytes))
		counter(c.ecc, float64(d.ECCCorrected), "corrected")
		counter(c.ecc, float64(d.ECCUncorrected), "uncorrected")
		for xid, n := range d.XidCounts {
			counter(c.xids, float64(n), formatUint(xid))
		}
		if d.Kind != KindGPU {
			continue // NVML reports these per GPU, not per MIG instance
		}
		gauge(c.util, float64(d.UtilizationGPU)/100)
		gauge(c.memUtil, float64(d.UtilizationMemory)/100)
		gauge(c.temp, float64(d.TemperatureC))
		gauge(c.power, d.PowerW)
	}
}
