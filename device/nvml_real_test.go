//go:build linux && cgo

package device

import (
	"context"
	"errors"
	"os"
	"testing"
)

// TestRealNVML runs against the machine's NVML when there is one and says
// plainly that it skipped otherwise.
func TestRealNVML(t *testing.T) {
	probe := newNVMLBackend()
	if err := probe.Init(); err != nil {
		if errors.Is(err, ErrLibraryNotFound) {
			t.Skip("SKIPPED: no NVML library (libnvidia-ml.so.1) on this machine, so there is no real GPU to test against")
		}
		t.Skipf("SKIPPED: NVML is installed but does not initialise here: %v", err)
	}
	_ = probe.Shutdown()
	inv, err := Open(context.Background(), Options{LookupEnv: os.LookupEnv, Logger: testLogger(t)})
	if err != nil {
		t.Fatalf("Open on real NVML: %v", err)
	}
	defer inv.Close()
	s := inv.Snapshot()
	if s.Source != "nvml" || s.DriverVersion == "" || s.CUDADriverVersion == "" {
		t.Fatalf("snapshot source %q driver %q cuda %q", s.Source, s.DriverVersion, s.CUDADriverVersion)
	}
	if len(s.Devices) < 2 {
		t.Skip("SKIPPED: NVML initialised but reports no GPU")
	}
	for _, d := range s.Devices {
		t.Logf("%-4s %-4s %-28s %s used %d / total %d free %d  %d%% %dC %.0fW ecc=%d/%d health=%s visible=%v ordinal=%d",
			d.Label(), d.Kind, d.Name, d.UUID, d.MemoryUsedBytes, d.MemoryTotalBytes, d.MemoryFreeBytes,
			d.UtilizationGPU, d.TemperatureC, d.PowerW, d.ECCCorrected, d.ECCUncorrected, d.Health.State, d.Visible, d.CUDAOrdinal)
		if d.IsAccelerator() {
			if d.UUID == "" || d.MemoryTotalBytes == 0 || d.MemoryUsedBytes+d.MemoryFreeBytes+d.MemoryReservedBytes != d.MemoryTotalBytes {
				t.Errorf("%s: inconsistent reading %+v", d.Label(), d)
			}
		}
	}
	if err := inv.Refresh(context.Background()); err != nil {
		t.Errorf("Refresh: %v", err)
	}
}
