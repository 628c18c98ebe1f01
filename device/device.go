// Package device is the Kasmina host's view of the hardware: the GPUs and MIG
// instances NVML reports, the CPU (always present, cgroup limits honoured),
// which of them the process may use (CUDA_VISIBLE_DEVICES and
// NVIDIA_VISIBLE_DEVICES), and a health state per device kept up to date by an
// NVML event watch.
//
// Everything above this package codes against [Inventory], [Snapshot] and
// [Device]; none of it imports go-nvml. The hardware sits behind the small
// [Backend] interface, which has three implementations:
//
//   - the NVML adapter (built only with cgo on Linux: go-nvml does not compile
//     without cgo, and static linking crashes it);
//   - the [Simulator], pure Go, behind `--simulate dgxa100`,
//     `--simulate dgxa100-mig` and `--simulate FILE.json` (see SIMULATE.md),
//     which also scripts faults over time;
//   - none at all: when the NVML library cannot be found the inventory holds
//     only the CPU and says so once in the log.
//
// Indices are NVML's, which is PCI bus order (the order nvidia-smi uses). CUDA
// orders devices fastest-first unless CUDA_DEVICE_ORDER=PCI_BUS_ID, so on a
// node with mixed GPUs CUDA ordinals and NVML indices can differ; the
// [Device.CUDAOrdinal] field gives the ordinal CUDA would use under this
// process's CUDA_VISIBLE_DEVICES, assuming PCI order.
//
// A MIG instance is a device of its own (kind "mig", a MIG- UUID and its own
// memory). Its Index is its parent GPU's index and [Device.MIG] carries its
// position under that GPU, shown as "parent:mig" (for example "0:1") in
// tables and metric labels. A GPU whose MIG mode is enabled is listed too, with
// MIGEnabled set; work runs on its instances, not on the GPU itself.
package device

import (
	"fmt"
	"strconv"
	"time"
)

// Kind says what sort of device a [Device] is.
type Kind string

// The kinds of device an inventory holds.
const (
	KindGPU Kind = "gpu" // a whole GPU, as NVML enumerates it
	KindMIG Kind = "mig" // a MIG instance of a GPU
	KindCPU Kind = "cpu" // the host CPU and memory
)

// HealthState is the coarse health of a device. It is a state, not a flag that
// never comes back: unhealthy and lost devices return to healthy after a quiet
// period and a probe.
type HealthState string

// Health states, from best to worst.
const (
	// HealthHealthy: placeable.
	HealthHealthy HealthState = "healthy"
	// HealthDegraded: still placeable, but something worth knowing happened
	// (a contained ECC error, a pending row remap).
	HealthDegraded HealthState = "degraded"
	// HealthUnknown: the inventory cannot currently tell, because an NVML call
	// hung or the event watch is failing. Keep existing work, place nothing new.
	HealthUnknown HealthState = "unknown"
	// HealthUnhealthy: a fatal Xid or a double-bit ECC error. Move work off it.
	HealthUnhealthy HealthState = "unhealthy"
	// HealthLost: the GPU has fallen off the bus (ERROR_GPU_IS_LOST, Xid 79).
	HealthLost HealthState = "lost"
)

// rank orders health states by severity; a fault never lowers the rank.
func (s HealthState) rank() int {
	switch s {
	case HealthHealthy:
		return 0
	case HealthDegraded:
		return 1
	case HealthUnknown:
		return 2
	case HealthUnhealthy:
		return 3
	case HealthLost:
		return 4
	}
	return 3
}

// Health is a device's state with the reason for it and what an operator (or
// the runtime) should do about it.
type Health struct {
	State  HealthState `json:"state"`
	Reason string      `json:"reason,omitempty"`
	Action string      `json:"action,omitempty"`
	Since  time.Time   `json:"since"`
}

// Healthy reports whether work may be placed on the device: true for healthy
// and degraded devices.
func (h Health) Healthy() bool {
	return h.State == HealthHealthy || h.State == HealthDegraded
}

// MIGInfo describes a MIG instance's place under its parent GPU.
type MIGInfo struct {
	// ParentUUID is the GPU- UUID of the GPU the instance belongs to.
	ParentUUID string `json:"parent_uuid"`
	// Index is the instance's position among its parent's instances
	// (NVML's MIG device index).
	Index int `json:"index"`
	// GPUInstanceID and ComputeInstanceID identify the instance to NVML;
	// events for MIG instances are matched by this pair.
	GPUInstanceID     uint32 `json:"gpu_instance_id"`
	ComputeInstanceID uint32 `json:"compute_instance_id"`
	// Profile is the MIG profile, such as "3g.20gb", when known.
	Profile string `json:"profile,omitempty"`
}

// Device is one device as the host sees it at one moment. Values that the
// device or driver does not report are zero.
type Device struct {
	Kind Kind `json:"kind"`
	// Index is the NVML index (PCI order) for a GPU, the parent GPU's index
	// for a MIG instance, and 0 for the CPU.
	Index int    `json:"index"`
	UUID  string `json:"uuid"`
	Name  string `json:"name"`
	// PCIBusID is the bus id in NVML's form, e.g. "00000000:07:00.0".
	PCIBusID string `json:"pci_bus_id,omitempty"`

	// Memory in bytes. For GPUs these come from NVML's v2 memory query when
	// the driver has it (driver-reserved memory is then counted in
	// MemoryReservedBytes, not in used); for the CPU, from /proc/meminfo
	// capped by the cgroup memory limit.
	MemoryTotalBytes    uint64 `json:"memory_total_bytes"`
	MemoryFreeBytes     uint64 `json:"memory_free_bytes"`
	MemoryUsedBytes     uint64 `json:"memory_used_bytes"`
	MemoryReservedBytes uint64 `json:"memory_reserved_bytes,omitempty"`

	// ComputeCapability is "major.minor", e.g. "8.0" for an A100.
	ComputeCapability string `json:"compute_capability,omitempty"`
	// MIGEnabled is set on a GPU whose MIG mode is on.
	MIGEnabled bool `json:"mig_enabled,omitempty"`
	// MIG is set on MIG instances only.
	MIG *MIGInfo `json:"mig,omitempty"`

	// UtilizationGPU and UtilizationMemory are percentages (0-100) over
	// NVML's last sample period.
	UtilizationGPU    uint32 `json:"utilization_gpu_percent"`
	UtilizationMemory uint32 `json:"utilization_memory_percent"`
	// TemperatureC is the GPU core temperature in degrees Celsius.
	TemperatureC uint32 `json:"temperature_c"`
	// PowerW is the board power draw in watts.
	PowerW float64 `json:"power_w"`
	// ECCCorrected and ECCUncorrected are NVML's volatile ECC error counts
	// (since the driver loaded).
	ECCCorrected   uint64 `json:"ecc_corrected"`
	ECCUncorrected uint64 `json:"ecc_uncorrected"`
	// XidCounts counts the Xid events seen per Xid since the inventory
	// opened, ignored application Xids included.
	XidCounts map[uint64]uint64 `json:"xid_counts,omitempty"`

	// CPUCores is the number of cores the process may use (kind cpu only):
	// the CPUs it may run on, capped by the cgroup CPU quota, which can make
	// it fractional.
	CPUCores float64 `json:"cpu_cores,omitempty"`

	Health Health `json:"health"`
	// Healthy mirrors Health.Healthy() for scripts that want one flag.
	Healthy bool `json:"healthy"`
	// Visible says whether CUDA_VISIBLE_DEVICES and NVIDIA_VISIBLE_DEVICES
	// let this process use the device. The CPU is always visible.
	Visible bool `json:"visible"`
	// CUDAOrdinal is the device's number in CUDA's enumeration for this
	// process (cuda:N), or -1 when it is not visible to CUDA or is the CPU.
	CUDAOrdinal int `json:"cuda_ordinal"`
}

// IsAccelerator reports whether the device is a GPU or a MIG instance.
func (d Device) IsAccelerator() bool { return d.Kind == KindGPU || d.Kind == KindMIG }

// RunsWork reports whether kernels can be placed on the device itself: the
// CPU, MIG instances and GPUs whose MIG mode is off. A MIG-enabled GPU runs
// work only through its instances.
func (d Device) RunsWork() bool {
	return d.Kind == KindCPU || d.Kind == KindMIG || (d.Kind == KindGPU && !d.MIGEnabled)
}

// Label is the device's index as tables and metric labels show it: "3" for a
// GPU, "0:1" for MIG instance 1 of GPU 0, "cpu" for the CPU.
func (d Device) Label() string {
	switch d.Kind {
	case KindCPU:
		return "cpu"
	case KindMIG:
		if d.MIG != nil {
			return strconv.Itoa(d.Index) + ":" + strconv.Itoa(d.MIG.Index)
		}
	}
	return strconv.Itoa(d.Index)
}

// String names the device for logs.
func (d Device) String() string {
	return fmt.Sprintf("%s %s (%s)", d.Kind, d.Label(), d.UUID)
}

// Snapshot is the inventory at one moment. It is immutable once published:
// treat its slices and maps as read-only.
type Snapshot struct {
	// Devices holds every device NVML reports, visible or not, in index
	// order with each GPU followed by its MIG instances, and the CPU last.
	Devices []Device `json:"devices"`
	// DriverVersion is the kernel driver version, e.g. "550.54.15".
	DriverVersion string `json:"driver_version,omitempty"`
	// CUDADriverVersion is the highest CUDA version the driver supports,
	// e.g. "12.4".
	CUDADriverVersion string `json:"cuda_driver_version,omitempty"`
	// NVMLVersion is the NVML library version, e.g. "12.550.54.15".
	NVMLVersion string `json:"nvml_version,omitempty"`
	// TakenAt is when the snapshot was published.
	TakenAt time.Time `json:"taken_at"`
	// Source says where the devices came from: "nvml", "simulated:dgxa100",
	// "simulated:FILE.json" or "cpu-only".
	Source string `json:"source"`
	// Warnings lists problems worth showing an operator, such as invalid
	// CUDA_VISIBLE_DEVICES entries or devices that cannot report events.
	Warnings []string `json:"warnings,omitempty"`
}

// Visible returns the devices the process may use, in index order, the CPU
// last.
func (s Snapshot) Visible() []Device {
	out := make([]Device, 0, len(s.Devices))
	for _, d := range s.Devices {
		if d.Visible {
			out = append(out, d)
		}
	}
	return out
}

// GPUs returns the visible GPUs and MIG instances, in index order. A GPU
// with MIG enabled is listed before its instances; check RunsWork before
// placing work.
func (s Snapshot) GPUs() []Device {
	out := make([]Device, 0, len(s.Devices))
	for _, d := range s.Devices {
		if d.Visible && d.IsAccelerator() {
			out = append(out, d)
		}
	}
	return out
}

// CPU returns the CPU device, which every snapshot from an [Inventory] has.
func (s Snapshot) CPU() (Device, bool) {
	for i := len(s.Devices) - 1; i >= 0; i-- {
		if s.Devices[i].Kind == KindCPU {
			return s.Devices[i], true
		}
	}
	return Device{}, false
}

// ByUUID finds a device, visible or not, by its exact UUID.
func (s Snapshot) ByUUID(uuid string) (Device, bool) {
	for _, d := range s.Devices {
		if d.UUID == uuid {
			return d, true
		}
	}
	return Device{}, false
}

// ByLabel finds a device by its [Device.Label] ("3", "0:1", "cpu").
func (s Snapshot) ByLabel(label string) (Device, bool) {
	for _, d := range s.Devices {
		if d.Label() == label {
			return d, true
		}
	}
	return Device{}, false
}
