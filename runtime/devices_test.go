package runtime

import (
	"fmt"
	"testing"

	"github.com/esper/kasmina-host/contracts"
	"github.com/esper/kasmina-host/device"
	"github.com/esper/kasmina-host/runtime/placement"
)

// A MIG node's snapshot goes through the runtime into placement under one
// naming: every device that runs work is cuda:<its CUDA ordinal>, and a
// kernel requiring cuda:N is placed on the device the inventory gives
// ordinal N, MIG instance or whole GPU.
func TestMIGSnapshotThroughTheRuntimeIntoPlacement(t *testing.T) {
	inv := openInventory(t, "dgxa100-mig", nil)
	h, _, _ := newHost(t, inv, Config{})
	migs := 0
	for _, d := range inv.Snapshot().Devices {
		if !d.Visible || d.Kind == device.KindCPU {
			continue
		}
		if d.CUDAOrdinal < 0 {
			if !d.MIGEnabled {
				t.Errorf("visible GPU %s has no CUDA ordinal", d.UUID)
			}
			continue // a MIG-enabled GPU runs work only through its instances
		}
		want := placement.DeviceName(d.CUDAOrdinal)
		md := contracts.NewKernelMetadata("k", "bp", "k")
		md.InputShape, md.OutputShape, md.ParameterCount, md.MemoryFootprintMB = []int{4}, []int{4}, 20, 1
		md.DeviceRequirements = []string{fmt.Sprintf("cuda:%d", d.CUDAOrdinal)}
		v, err := h.Plan(&md, 1, nil)
		if err != nil {
			t.Fatal(err)
		}
		if v.Device != want || v.UUID != d.UUID || v.Degraded || v.Kind != string(d.Kind) {
			t.Errorf("requiring %s: placed on %s (%s, %s, degraded %v), want %s (%s)\n%s",
				md.DeviceRequirements[0], v.Device, v.UUID, v.Kind, v.Degraded, want, d.UUID, v.Reason)
		}
		if d.Kind == device.KindMIG {
			migs++
		}
	}
	if migs == 0 {
		t.Fatal("the dgxa100-mig simulation shows no MIG instance")
	}
}
