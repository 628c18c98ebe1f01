//go:build linux && cgo

package device

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
	"github.com/NVIDIA/go-nvml/pkg/nvml/mock"
	"github.com/NVIDIA/go-nvml/pkg/nvml/mock/dgxa100"
	"github.com/NVIDIA/go-nvml/pkg/nvml/mock/server"
)

// mockNode wraps go-nvml's dgxa100 mock and fills the calls it leaves nil
// (they panic): v2 memory, utilisation, temperature, power, ECC, events, MIG
// handles, probes. UUIDs are made deterministic.
func mockNode(t *testing.T, waits ...func() (nvml.EventData, nvml.Return)) *server.Server {
	t.Helper()
	srv := dgxa100.New()
	var mu sync.Mutex
	next := 0
	srv.EventSetCreateFunc = func() (nvml.EventSet, nvml.Return) {
		return &mock.EventSet{
			FreeFunc: func() nvml.Return { return nvml.SUCCESS },
			WaitFunc: func(uint32) (nvml.EventData, nvml.Return) {
				mu.Lock()
				defer mu.Unlock()
				if next < len(waits) {
					next++
					return waits[next-1]()
				}
				return nvml.EventData{}, nvml.ERROR_TIMEOUT
			},
		}, nvml.SUCCESS
	}
	for i, h := range srv.Devices {
		d := h.(*server.Device)
		d.UUID = gpuUUID(i)
		var bus [32]int8
		for j, c := range fmt.Sprintf("00000000:%02X:00.0", 7+i) {
			bus[j] = int8(c)
		}
		d.GetPciInfoFunc = func() (nvml.PciInfo, nvml.Return) { return nvml.PciInfo{BusId: bus}, nvml.SUCCESS }
		used := uint64(i+1) << 30
		d.GetMemoryInfo_v2Func = func() (nvml.Memory_v2, nvml.Return) {
			total := d.Config.MemoryMB << 20
			return nvml.Memory_v2{Total: total, Reserved: 512 << 20, Used: used, Free: total - 512<<20 - used}, nvml.SUCCESS
		}
		d.GetUtilizationRatesFunc = func() (nvml.Utilization, nvml.Return) {
			return nvml.Utilization{Gpu: uint32(10 * i), Memory: 5}, nvml.SUCCESS
		}
		d.GetTemperatureFunc = func(nvml.TemperatureSensors) (uint32, nvml.Return) { return uint32(30 + i), nvml.SUCCESS }
		d.GetPowerUsageFunc = func() (uint32, nvml.Return) { return 90500, nvml.SUCCESS }
		d.GetTotalEccErrorsFunc = func(typ nvml.MemoryErrorType, _ nvml.EccCounterType) (uint64, nvml.Return) {
			if typ == nvml.MEMORY_ERROR_TYPE_CORRECTED {
				return 7, nvml.SUCCESS
			}
			return 0, nvml.SUCCESS
		}
		d.GetSupportedEventTypesFunc = func() (uint64, nvml.Return) {
			return nvml.EventTypeXidCriticalError | nvml.EventTypeDoubleBitEccError | nvml.EventTypeSingleBitEccError, nvml.SUCCESS
		}
		d.RegisterEventsFunc = func(mask uint64, _ nvml.EventSet) nvml.Return {
			if mask&nvml.EventTypeSingleBitEccError != 0 {
				t.Errorf("GPU %d registered for single-bit ECC events", i)
			}
			return nvml.SUCCESS
		}
		d.GetRetiredPagesPendingStatusFunc = func() (nvml.EnableState, nvml.Return) { return nvml.FEATURE_DISABLED, nvml.SUCCESS }
		d.GetRemappedRowsFunc = func() (int, int, bool, bool, nvml.Return) { return 0, 0, false, false, nvml.SUCCESS }
	}
	return srv
}

func mockDev(srv *server.Server, i int) *server.Device { return srv.Devices[i].(*server.Device) }

func TestNVMLAdapterReadsEveryField(t *testing.T) {
	srv := mockNode(t)
	// GPU 1 runs a driver without the v2 memory query.
	mockDev(srv, 1).GetMemoryInfo_v2Func = func() (nvml.Memory_v2, nvml.Return) { return nvml.Memory_v2{}, nvml.ERROR_FUNCTION_NOT_FOUND }
	mockDev(srv, 1).MemoryInfo = nvml.Memory{Total: 40960 << 20, Used: 912 << 20, Free: (40960 - 912) << 20}
	// GPU 2 does not report power.
	mockDev(srv, 2).GetPowerUsageFunc = func() (uint32, nvml.Return) { return 0, nvml.ERROR_NOT_SUPPORTED }
	b := newNVMLAdapter(srv)
	if err := b.Init(); err != nil {
		t.Fatal(err)
	}
	defer b.Shutdown()
	v, err := b.Versions()
	if err != nil || v.Driver != "550.54.15" || v.CUDADriver != "12.4" || v.NVML != "12.550.54.15" {
		t.Fatalf("versions %+v, %v", v, err)
	}
	if n, err := b.Count(); n != 8 || err != nil {
		t.Fatalf("count %d, %v", n, err)
	}
	devs, err := b.Query(0)
	if err != nil {
		t.Fatal(err)
	}
	d := devs[0]
	if len(devs) != 1 || d.UUID != gpuUUID(0) || d.Name != "Mock NVIDIA A100-SXM4-40GB" || d.PCIBusID != "00000000:07:00.0" ||
		d.ComputeCapability != "8.0" || d.MemoryTotalBytes != 40960<<20 || d.MemoryUsedBytes != 1<<30 || d.MemoryReservedBytes != 512<<20 ||
		d.TemperatureC != 30 || d.PowerW != 90.5 || d.ECCCorrected != 7 || d.MIGEnabled {
		t.Fatalf("GPU 0 = %+v", d)
	}
	if devs, _ := b.Query(1); devs[0].MemoryUsedBytes != 912<<20 || devs[0].MemoryReservedBytes != 0 {
		t.Errorf("v1 fallback: %+v", devs[0])
	}
	if devs, err := b.Query(2); err != nil || devs[0].PowerW != 0 {
		t.Errorf("unsupported power: %v %+v", err, devs)
	}
	if err := b.Probe(gpuUUID(5)); err != nil {
		t.Errorf("probe of a sound GPU: %v", err)
	}
	mockDev(srv, 5).GetRemappedRowsFunc = func() (int, int, bool, bool, nvml.Return) { return 0, 1, true, false, nvml.SUCCESS }
	if err := b.Probe(gpuUUID(5)); err == nil || !strings.Contains(err.Error(), "remapping pending") {
		t.Errorf("probe with a pending remap: %v", err)
	}
}

func TestNVMLAdapterLostGPU(t *testing.T) {
	srv := mockNode(t)
	mockDev(srv, 2).GetUUIDFunc = func() (string, nvml.Return) { return "", nvml.ERROR_GPU_IS_LOST }
	mockDev(srv, 3).GetTemperatureFunc = func(nvml.TemperatureSensors) (uint32, nvml.Return) { return 0, nvml.ERROR_GPU_IS_LOST }
	b := newNVMLAdapter(srv)
	if err := b.Init(); err != nil {
		t.Fatal(err)
	}
	for _, i := range []int{2, 3} {
		if _, err := b.Query(i); !errors.Is(err, ErrGPULost) {
			t.Errorf("Query(%d) = %v, want ErrGPULost", i, err)
		}
	}
}

func TestNVMLAdapterMIGInstances(t *testing.T) {
	srv := mockNode(t)
	d := mockDev(srv, 3)
	d.GetMigModeFunc = func() (int, int, nvml.Return) { return nvml.DEVICE_MIG_ENABLE, nvml.DEVICE_MIG_ENABLE, nvml.SUCCESS }
	d.GetMaxMigDeviceCountFunc = func() (int, nvml.Return) { return 3, nvml.SUCCESS }
	d.GetMigDeviceHandleByIndexFunc = func(n int) (nvml.Device, nvml.Return) {
		if n == 1 {
			return nil, nvml.ERROR_NOT_FOUND
		}
		return &mock.Device{
			GetUUIDFunc: func() (string, nvml.Return) { return fmt.Sprintf("MIG-3-%d", n), nvml.SUCCESS },
			GetNameFunc: func() (string, nvml.Return) { return "NVIDIA A100-SXM4-40GB MIG 1g.5gb", nvml.SUCCESS },
			GetMemoryInfo_v2Func: func() (nvml.Memory_v2, nvml.Return) {
				return nvml.Memory_v2{Total: 4864 << 20, Free: 4864 << 20}, nvml.SUCCESS
			},
			GetGpuInstanceIdFunc:     func() (int, nvml.Return) { return 7 + n, nvml.SUCCESS },
			GetComputeInstanceIdFunc: func() (int, nvml.Return) { return 0, nvml.SUCCESS },
		}, nvml.SUCCESS
	}
	b := newNVMLAdapter(srv)
	if err := b.Init(); err != nil {
		t.Fatal(err)
	}
	devs, err := b.Query(3)
	if err != nil {
		t.Fatal(err)
	}
	if len(devs) != 3 || !devs[0].MIGEnabled {
		t.Fatalf("want the GPU and 2 instances, got %d", len(devs))
	}
	m := devs[2]
	if m.Kind != KindMIG || m.UUID != "MIG-3-2" || m.Index != 3 || m.MIG.Index != 2 || m.MIG.GPUInstanceID != 9 ||
		m.MIG.Profile != "1g.5gb" || m.MIG.ParentUUID != gpuUUID(3) || m.MemoryTotalBytes != 4864<<20 {
		t.Fatalf("MIG = %+v %+v", m, m.MIG)
	}
}

func TestNVMLAdapterNeverCallsNVMLAfterFailedInit(t *testing.T) {
	for _, tc := range []struct {
		ret  nvml.Return
		want string
	}{
		{nvml.ERROR_LIBRARY_NOT_FOUND, "NVML library not found"},
		{nvml.ERROR_DRIVER_NOT_LOADED, "kernel driver is not loaded"},
		{nvml.ERROR_LIB_RM_VERSION_MISMATCH, "different versions"},
		{nvml.ERROR_NO_PERMISSION, "no permission"},
	} {
		t.Run(retName(tc.ret), func(t *testing.T) {
			srv := mockNode(t)
			srv.InitFunc = func() nvml.Return { return tc.ret }
			srv.DeviceGetCountFunc = func() (int, nvml.Return) {
				t.Error("DeviceGetCount after a failed Init: this kills a real process with exit 127")
				return 0, nvml.ERROR_UNINITIALIZED
			}
			srv.ShutdownFunc = func() nvml.Return { t.Error("Shutdown after a failed Init"); return nvml.SUCCESS }
			b := newNVMLAdapter(srv)
			err := b.Init()
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Init = %v, want %q", err, tc.want)
			}
			if tc.ret == nvml.ERROR_LIBRARY_NOT_FOUND && !errors.Is(err, ErrLibraryNotFound) {
				t.Errorf("not ErrLibraryNotFound: %v", err)
			}
			if _, err := b.Count(); !errors.Is(err, errNotInitialized) {
				t.Errorf("Count after failed Init = %v", err)
			}
			_ = b.Shutdown()
			// Through the inventory: CPU-only for a missing library, an error otherwise.
			inv, err := Open(context.Background(), Options{Backend: b, LookupEnv: env(nil), HostFS: openFS("nolimit"), Logger: testLogger(t)})
			if tc.ret == nvml.ERROR_LIBRARY_NOT_FOUND {
				if err != nil || inv.Source() != "cpu-only" {
					t.Fatalf("Open = %v, source %v", err, inv)
				}
				inv.Close()
			} else if err == nil {
				t.Fatal("Open succeeded after a failed NVML init")
			}
		})
	}
}

func TestInventoryOverNVMLMockHandlesEvents(t *testing.T) {
	srv := mockNode(t)
	ev4 := func() (nvml.EventData, nvml.Return) {
		return nvml.EventData{Device: srv.Devices[4], EventType: nvml.EventTypeXidCriticalError, EventData: 79, GpuInstanceId: NoInstance, ComputeInstanceId: NoInstance}, nvml.SUCCESS
	}
	ecc5 := func() (nvml.EventData, nvml.Return) {
		return nvml.EventData{Device: srv.Devices[5], EventType: nvml.EventTypeDoubleBitEccError, GpuInstanceId: NoInstance, ComputeInstanceId: NoInstance}, nvml.SUCCESS
	}
	srv = mockNodeWith(t, srv, ev4, ecc5)
	inv, err := Open(context.Background(), Options{Backend: newNVMLAdapter(srv), LookupEnv: env(nil), HostFS: openFS("nolimit"), Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer inv.Close()
	s := inv.Snapshot()
	if s.Source != "nvml" || len(s.GPUs()) != 8 {
		t.Fatalf("source %s, %d GPUs", s.Source, len(s.GPUs()))
	}
	if d := mustDevice(t, s, gpuUUID(4)); d.Health.State != HealthLost {
		t.Errorf("GPU 4 after Xid 79: %s", d.Health.State)
	}
	if d := mustDevice(t, s, gpuUUID(5)); d.Health.State != HealthUnhealthy {
		t.Errorf("GPU 5 after a double-bit ECC event: %s", d.Health.State)
	}
	if d := mustDevice(t, s, gpuUUID(0)); d.Health.State != HealthHealthy {
		t.Errorf("GPU 0: %s", d.Health.State)
	}
}

// mockNodeWith replaces srv's event script.
func mockNodeWith(t *testing.T, srv *server.Server, waits ...func() (nvml.EventData, nvml.Return)) *server.Server {
	t.Helper()
	var mu sync.Mutex
	next := 0
	srv.EventSetCreateFunc = func() (nvml.EventSet, nvml.Return) {
		return &mock.EventSet{
			FreeFunc: func() nvml.Return { return nvml.SUCCESS },
			WaitFunc: func(uint32) (nvml.EventData, nvml.Return) {
				mu.Lock()
				defer mu.Unlock()
				if next < len(waits) {
					next++
					return waits[next-1]()
				}
				return nvml.EventData{}, nvml.ERROR_TIMEOUT
			},
		}, nvml.SUCCESS
	}
	return srv
}

func TestNVMLAdapterWaitErrors(t *testing.T) {
	srv := mockNodeWith(t, mockNode(t),
		func() (nvml.EventData, nvml.Return) { return nvml.EventData{}, nvml.ERROR_GPU_IS_LOST },
		func() (nvml.EventData, nvml.Return) { return nvml.EventData{}, nvml.ERROR_UNKNOWN },
	)
	b := newNVMLAdapter(srv)
	if err := b.Init(); err != nil {
		t.Fatal(err)
	}
	if _, err := b.WaitEvent(context.Background(), 0); !errors.Is(err, ErrGPULost) {
		t.Errorf("first wait = %v, want ErrGPULost", err)
	}
	if _, err := b.WaitEvent(context.Background(), 0); err == nil || errors.Is(err, ErrTimeout) {
		t.Errorf("second wait = %v, want an error", err)
	}
	if _, err := b.WaitEvent(context.Background(), 0); !errors.Is(err, ErrTimeout) {
		t.Errorf("third wait = %v, want ErrTimeout", err)
	}
}

func TestNVMLWatchGapsReachSnapshotWarnings(t *testing.T) {
	srv := mockNode(t)
	mockDev(srv, 3).GetSupportedEventTypesFunc = func() (uint64, nvml.Return) { return 0, nvml.ERROR_NOT_SUPPORTED }
	mockDev(srv, 6).GetSupportedEventTypesFunc = func() (uint64, nvml.Return) { return nvml.EventTypeSingleBitEccError, nvml.SUCCESS }
	inv, err := Open(context.Background(), Options{Backend: newNVMLAdapter(srv), LookupEnv: env(nil), HostFS: openFS("nolimit"), Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer inv.Close()
	want := []string{
		"GPU 3: cannot list supported events (ERROR_NOT_SUPPORTED): not watched for Xids",
		"GPU 6 supports neither Xid nor ECC events: not watched",
	}
	if got := inv.Snapshot().Warnings; strings.Join(got, "|") != strings.Join(want, "|") {
		t.Errorf("snapshot warnings = %q, want %q", got, want)
	}
}
