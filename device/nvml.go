//go:build linux && cgo

package device

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
)

// newNVMLBackend returns the adapter over the system's libnvidia-ml.so.1,
// which go-nvml opens at Init (so the binary starts without a driver).
func newNVMLBackend() Backend { return newNVMLAdapter(nvml.New()) }

// nvmlBackend adapts go-nvml to Backend. It refuses every call until Init
// has succeeded: after a failed nvml.Init a call such as DeviceGetCount ends
// the process with a symbol lookup error that nothing can recover.
type nvmlBackend struct {
	lib nvml.Interface

	mu       sync.Mutex
	inited   bool
	set      nvml.EventSet
	setErr   error
	warnings []string
}

var _ Backend = (*nvmlBackend)(nil)

func newNVMLAdapter(lib nvml.Interface) *nvmlBackend { return &nvmlBackend{lib: lib} }

var errNotInitialized = errors.New("NVML is not initialised")

func (b *nvmlBackend) Source() string { return "nvml" }

func (b *nvmlBackend) ready() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if !b.inited {
		return errNotInitialized
	}
	return nil
}

// Init initialises NVML and registers every GPU for critical Xid and
// double-bit ECC events.
func (b *nvmlBackend) Init() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.inited {
		return nil
	}
	switch ret := b.lib.Init(); ret {
	case nvml.SUCCESS:
	case nvml.ERROR_LIBRARY_NOT_FOUND:
		return ErrLibraryNotFound
	default:
		return initError(ret)
	}
	b.inited = true
	b.registerEventsLocked()
	return nil
}

// initError explains a failed nvml.Init with a remediation hint. It must not
// call NVML (not even ErrorString), hence the local names.
func initError(ret nvml.Return) error {
	hint := ""
	switch ret {
	case nvml.ERROR_DRIVER_NOT_LOADED:
		hint = "the NVIDIA kernel driver is not loaded: is this a GPU node? check `nvidia-smi` and `lsmod | grep nvidia`"
	case nvml.ERROR_LIB_RM_VERSION_MISMATCH:
		hint = "the NVML library and the loaded kernel driver have different versions: reboot, or reload the nvidia kernel modules"
	case nvml.ERROR_NO_PERMISSION:
		hint = "no permission to open /dev/nvidia*: run as a user who may use the GPU device nodes"
	case nvml.ERROR_GPU_IS_LOST:
		hint = "a GPU has fallen off the bus: check `dmesg` for Xid 79, then reset the GPU or reboot"
	default:
		hint = "if this is a GPU node in a container, check that the NVIDIA Container Toolkit is configured"
	}
	return fmt.Errorf("NVML init failed with %s: %s", retName(ret), hint)
}

// retName names an NVML return code without calling into NVML.
func retName(ret nvml.Return) string {
	names := map[nvml.Return]string{
		nvml.ERROR_UNINITIALIZED: "ERROR_UNINITIALIZED", nvml.ERROR_INVALID_ARGUMENT: "ERROR_INVALID_ARGUMENT",
		nvml.ERROR_NOT_SUPPORTED: "ERROR_NOT_SUPPORTED", nvml.ERROR_NO_PERMISSION: "ERROR_NO_PERMISSION",
		nvml.ERROR_NOT_FOUND: "ERROR_NOT_FOUND", nvml.ERROR_DRIVER_NOT_LOADED: "ERROR_DRIVER_NOT_LOADED",
		nvml.ERROR_TIMEOUT: "ERROR_TIMEOUT", nvml.ERROR_IRQ_ISSUE: "ERROR_IRQ_ISSUE",
		nvml.ERROR_LIBRARY_NOT_FOUND: "ERROR_LIBRARY_NOT_FOUND", nvml.ERROR_FUNCTION_NOT_FOUND: "ERROR_FUNCTION_NOT_FOUND",
		nvml.ERROR_GPU_IS_LOST: "ERROR_GPU_IS_LOST", nvml.ERROR_RESET_REQUIRED: "ERROR_RESET_REQUIRED",
		nvml.ERROR_LIB_RM_VERSION_MISMATCH: "ERROR_LIB_RM_VERSION_MISMATCH", nvml.ERROR_UNKNOWN: "ERROR_UNKNOWN",
	}
	if n, ok := names[ret]; ok {
		return n
	}
	return fmt.Sprintf("NVML return code %d", int(ret))
}

// nvmlErr maps a failed call to the package's sentinels.
func nvmlErr(op string, ret nvml.Return) error {
	switch ret {
	case nvml.ERROR_GPU_IS_LOST, nvml.ERROR_RESET_REQUIRED:
		return fmt.Errorf("%s: %s: %w", op, retName(ret), ErrGPULost)
	case nvml.ERROR_NOT_SUPPORTED, nvml.ERROR_FUNCTION_NOT_FOUND:
		return fmt.Errorf("%s: %s: %w", op, retName(ret), ErrNotSupported)
	case nvml.ERROR_TIMEOUT:
		return ErrTimeout
	}
	return fmt.Errorf("%s: %s", op, retName(ret))
}

func lost(ret nvml.Return) bool {
	return ret == nvml.ERROR_GPU_IS_LOST || ret == nvml.ERROR_RESET_REQUIRED
}

func (b *nvmlBackend) registerEventsLocked() {
	set, ret := b.lib.EventSetCreate()
	if ret != nvml.SUCCESS {
		b.setErr = nvmlErr("create NVML event set", ret)
		b.warnings = append(b.warnings, b.setErr.Error()+": health events are not watched")
		return
	}
	b.set = set
	n, ret := b.lib.DeviceGetCount()
	if ret != nvml.SUCCESS {
		return
	}
	const want = uint64(nvml.EventTypeXidCriticalError | nvml.EventTypeDoubleBitEccError)
	for i := range n {
		dev, ret := b.lib.DeviceGetHandleByIndex(i)
		if ret != nvml.SUCCESS {
			continue
		}
		supported, ret := dev.GetSupportedEventTypes()
		if ret != nvml.SUCCESS {
			b.warnings = append(b.warnings, fmt.Sprintf("GPU %d: cannot list supported events (%s): not watched for Xids", i, retName(ret)))
			continue
		}
		mask := want & supported
		if mask == 0 {
			b.warnings = append(b.warnings, fmt.Sprintf("GPU %d supports neither Xid nor ECC events: not watched", i))
			continue
		}
		// Old devices answer NOT_SUPPORTED: skip them rather than mark
		// them unhealthy (device plugin commit 8cd14472a).
		if ret := dev.RegisterEvents(mask, set); ret != nvml.SUCCESS {
			b.warnings = append(b.warnings, fmt.Sprintf("GPU %d: cannot register for health events (%s): not watched", i, retName(ret)))
		}
	}
}

// Warnings implements Backend: it lists the GPUs the health event watch
// could not cover, and why.
func (b *nvmlBackend) Warnings() []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]string(nil), b.warnings...)
}

func (b *nvmlBackend) Shutdown() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if !b.inited {
		return nil
	}
	b.inited = false
	if b.set != nil {
		_ = b.set.Free()
		b.set = nil
	}
	if ret := b.lib.Shutdown(); ret != nvml.SUCCESS {
		return nvmlErr("NVML shutdown", ret)
	}
	return nil
}

func (b *nvmlBackend) Versions() (Versions, error) {
	if err := b.ready(); err != nil {
		return Versions{}, err
	}
	var v Versions
	var ret nvml.Return
	if v.Driver, ret = b.lib.SystemGetDriverVersion(); ret != nvml.SUCCESS {
		return v, nvmlErr("driver version", ret)
	}
	if v.NVML, ret = b.lib.SystemGetNVMLVersion(); ret != nvml.SUCCESS {
		return v, nvmlErr("NVML version", ret)
	}
	cuda, ret := b.lib.SystemGetCudaDriverVersion()
	if ret != nvml.SUCCESS {
		return v, nvmlErr("CUDA driver version", ret)
	}
	v.CUDADriver = fmt.Sprintf("%d.%d", cuda/1000, cuda%1000/10)
	return v, nil
}

func (b *nvmlBackend) Count() (int, error) {
	if err := b.ready(); err != nil {
		return 0, err
	}
	n, ret := b.lib.DeviceGetCount()
	if ret != nvml.SUCCESS {
		return 0, nvmlErr("device count", ret)
	}
	return n, nil
}

// cString converts one of NVML's fixed-size C strings.
func cString(b []int8) string {
	var sb strings.Builder
	for _, c := range b {
		if c == 0 {
			break
		}
		sb.WriteByte(byte(c))
	}
	return sb.String()
}

func (b *nvmlBackend) Query(index int) ([]Device, error) {
	if err := b.ready(); err != nil {
		return nil, err
	}
	op := fmt.Sprintf("GPU %d", index)
	dev, ret := b.lib.DeviceGetHandleByIndex(index)
	if ret != nvml.SUCCESS {
		return nil, nvmlErr(op+": handle", ret)
	}
	d := Device{Kind: KindGPU, Index: index, CUDAOrdinal: -1}
	if d.UUID, ret = dev.GetUUID(); ret != nvml.SUCCESS {
		return nil, nvmlErr(op+": UUID", ret)
	}
	op += " (" + d.UUID + ")"
	// Optional readings: a device that does not support one leaves it zero;
	// a lost device fails the whole query.
	var lostErr error
	opt := func(what string, ret nvml.Return) bool {
		if lost(ret) && lostErr == nil {
			lostErr = nvmlErr(op+": "+what, ret)
		}
		return ret == nvml.SUCCESS
	}
	if name, ret := dev.GetName(); opt("name", ret) {
		d.Name = name
	}
	if pci, ret := dev.GetPciInfo(); opt("PCI info", ret) {
		d.PCIBusID = cString(pci.BusId[:])
		if d.PCIBusID == "" {
			d.PCIBusID = cString(pci.BusIdLegacy[:])
		}
	}
	if err := b.readMemory(dev, &d, op); err != nil {
		return nil, err
	}
	if major, minor, ret := dev.GetCudaComputeCapability(); opt("compute capability", ret) {
		d.ComputeCapability = fmt.Sprintf("%d.%d", major, minor)
	}
	if cur, _, ret := dev.GetMigMode(); opt("MIG mode", ret) {
		d.MIGEnabled = cur == nvml.DEVICE_MIG_ENABLE
	}
	if u, ret := dev.GetUtilizationRates(); opt("utilisation", ret) {
		d.UtilizationGPU, d.UtilizationMemory = u.Gpu, u.Memory
	}
	if t, ret := dev.GetTemperature(nvml.TEMPERATURE_GPU); opt("temperature", ret) {
		d.TemperatureC = t
	}
	if mw, ret := dev.GetPowerUsage(); opt("power", ret) {
		d.PowerW = float64(mw) / 1000
	}
	if n, ret := dev.GetTotalEccErrors(nvml.MEMORY_ERROR_TYPE_CORRECTED, nvml.VOLATILE_ECC); opt("ECC corrected", ret) {
		d.ECCCorrected = n
	}
	if n, ret := dev.GetTotalEccErrors(nvml.MEMORY_ERROR_TYPE_UNCORRECTED, nvml.VOLATILE_ECC); opt("ECC uncorrected", ret) {
		d.ECCUncorrected = n
	}
	if lostErr != nil {
		return nil, lostErr
	}
	out := []Device{d}
	if !d.MIGEnabled {
		return out, nil
	}
	maxMIG, ret := dev.GetMaxMigDeviceCount()
	if ret != nvml.SUCCESS {
		if lost(ret) {
			return nil, nvmlErr(op+": MIG device count", ret)
		}
		return out, nil
	}
	for j := range maxMIG {
		mdev, ret := dev.GetMigDeviceHandleByIndex(j)
		if ret != nvml.SUCCESS {
			if lost(ret) {
				return nil, nvmlErr(op+": MIG device handle", ret)
			}
			continue // NOT_FOUND: no instance in this slot
		}
		m := Device{Kind: KindMIG, Index: index, PCIBusID: d.PCIBusID, ComputeCapability: d.ComputeCapability, CUDAOrdinal: -1,
			MIG: &MIGInfo{ParentUUID: d.UUID, Index: j}}
		if m.UUID, ret = mdev.GetUUID(); ret != nvml.SUCCESS {
			continue
		}
		if name, ret := mdev.GetName(); ret == nvml.SUCCESS {
			m.Name = name
			if _, profile, ok := strings.Cut(name, "MIG "); ok {
				m.MIG.Profile = profile
			}
		}
		if err := b.readMemory(mdev, &m, op+" MIG "+m.UUID); err != nil {
			return nil, err
		}
		if gi, ret := mdev.GetGpuInstanceId(); ret == nvml.SUCCESS {
			m.MIG.GPUInstanceID = uint32(gi)
		}
		if ci, ret := mdev.GetComputeInstanceId(); ret == nvml.SUCCESS {
			m.MIG.ComputeInstanceID = uint32(ci)
		}
		out = append(out, m)
	}
	return out, nil
}

// readMemory prefers the v2 query, which counts driver-reserved memory
// apart from used memory, and falls back to v1 on drivers without it.
func (b *nvmlBackend) readMemory(dev nvml.Device, d *Device, op string) error {
	m2, ret := dev.GetMemoryInfo_v2()
	if ret == nvml.SUCCESS {
		d.MemoryTotalBytes, d.MemoryReservedBytes, d.MemoryUsedBytes, d.MemoryFreeBytes = m2.Total, m2.Reserved, m2.Used, m2.Free
		return nil
	}
	if lost(ret) {
		return nvmlErr(op+": memory", ret)
	}
	m1, ret := dev.GetMemoryInfo()
	if ret != nvml.SUCCESS {
		if lost(ret) {
			return nvmlErr(op+": memory", ret)
		}
		return nil
	}
	d.MemoryTotalBytes, d.MemoryUsedBytes, d.MemoryFreeBytes = m1.Total, m1.Used, m1.Free
	return nil
}

func (b *nvmlBackend) WaitEvent(_ context.Context, timeout time.Duration) (RawEvent, error) {
	if err := b.ready(); err != nil {
		return RawEvent{}, err
	}
	b.mu.Lock()
	set, setErr := b.set, b.setErr
	b.mu.Unlock()
	if set == nil {
		return RawEvent{}, fmt.Errorf("no NVML event set: %w", setErr)
	}
	data, ret := set.Wait(uint32(timeout.Milliseconds()))
	switch {
	case ret == nvml.ERROR_TIMEOUT:
		return RawEvent{}, ErrTimeout
	case ret != nvml.SUCCESS:
		return RawEvent{}, nvmlErr("wait for NVML events", ret)
	}
	ev := RawEvent{GPUInstanceID: data.GpuInstanceId, ComputeInstanceID: data.ComputeInstanceId}
	if data.Device != nil {
		if uuid, ret := data.Device.GetUUID(); ret == nvml.SUCCESS {
			ev.UUID = uuid
		}
	}
	switch {
	case data.EventType&nvml.EventTypeXidCriticalError != 0:
		ev.Type, ev.Xid = RawXid, data.EventData
	case data.EventType&nvml.EventTypeDoubleBitEccError != 0:
		ev.Type = RawDoubleBitECC
	default:
		return RawEvent{}, ErrTimeout // not an event we act on
	}
	if ev.UUID == "" {
		// Which device? Unknown: treat like a lost GPU without a name so
		// every device is re-read rather than all marked unhealthy.
		return RawEvent{}, fmt.Errorf("NVML event %d without a readable device: %w", data.EventType, ErrGPULost)
	}
	return ev, nil
}

// Probe is the strongest check NVML alone offers: the device answers by
// UUID, reads its memory and temperature, and has no page retirement or row
// remapping pending (a pending remap means it still needs a reset). NVML
// cannot run a kernel; Options.Probe can add one.
func (b *nvmlBackend) Probe(uuid string) error {
	if err := b.ready(); err != nil {
		return err
	}
	dev, ret := b.lib.DeviceGetHandleByUUID(uuid)
	if ret != nvml.SUCCESS {
		if ret == nvml.ERROR_NOT_FOUND || ret == nvml.ERROR_INVALID_ARGUMENT {
			return fmt.Errorf("probe %s: %w", uuid, ErrUnknownDevice)
		}
		return nvmlErr("probe "+uuid, ret)
	}
	if _, ret := dev.GetMemoryInfo(); ret != nvml.SUCCESS {
		return nvmlErr("probe "+uuid+": memory", ret)
	}
	if _, ret := dev.GetTemperature(nvml.TEMPERATURE_GPU); ret != nvml.SUCCESS && ret != nvml.ERROR_NOT_SUPPORTED {
		return nvmlErr("probe "+uuid+": temperature", ret)
	}
	if st, ret := dev.GetRetiredPagesPendingStatus(); ret == nvml.SUCCESS && st == nvml.FEATURE_ENABLED {
		return fmt.Errorf("probe %s: page retirement pending: reset the GPU", uuid)
	} else if lost(ret) {
		return nvmlErr("probe "+uuid, ret)
	}
	if _, _, pending, failed, ret := dev.GetRemappedRows(); ret == nvml.SUCCESS {
		if failed {
			return fmt.Errorf("probe %s: row remapping failed: the GPU needs service", uuid)
		}
		if pending {
			return fmt.Errorf("probe %s: row remapping pending: reset the GPU", uuid)
		}
	} else if lost(ret) {
		return nvmlErr("probe "+uuid, ret)
	}
	return nil
}
