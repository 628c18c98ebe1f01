package device

import (
	"context"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"sort"
	"testing"
	"time"
)

// gpuUUID is the stable UUID of GPU i in the dgxa100 simulation.
func gpuUUID(i int) string { return fmt.Sprintf("GPU-a1000000-0000-4000-8000-%012d", i) }

// migUUID is the stable UUID of MIG instance j of GPU 0 in dgxa100-mig.
func migUUID(j int) string { return fmt.Sprintf("MIG-a1000000-0000-4000-8000-%012d", j) }

// simDevices reads every device of a spec straight from a simulator, plus a
// CPU device, in snapshot order.
func simDevices(t *testing.T, spec SimSpec) []Device {
	t.Helper()
	sim, err := NewSimulator("test", spec, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := sim.Init(); err != nil {
		t.Fatal(err)
	}
	n, _ := sim.Count()
	var devs []Device
	for i := range n {
		d, err := sim.Query(i)
		if err != nil {
			t.Fatal(err)
		}
		devs = append(devs, d...)
	}
	return append(devs, Device{Kind: KindCPU, UUID: CPUUUID, Name: "CPU", CUDAOrdinal: -1})
}

// env turns a map into a LookupEnv function; absent keys are unset.
func env(m map[string]string) func(string) (string, bool) {
	return func(k string) (string, bool) {
		v, ok := m[k]
		return v, ok
	}
}

// byOrdinal lists the labels of devices with a CUDA ordinal, in ordinal order.
func byOrdinal(devs []Device) []string {
	var withOrd []Device
	for _, d := range devs {
		if d.CUDAOrdinal >= 0 {
			withOrd = append(withOrd, d)
		}
	}
	sort.Slice(withOrd, func(i, j int) bool { return withOrd[i].CUDAOrdinal < withOrd[j].CUDAOrdinal })
	out := []string{}
	for _, d := range withOrd {
		out = append(out, d.Label())
	}
	return out
}

func visibleLabels(devs []Device) []string {
	out := []string{}
	for _, d := range devs {
		if d.Visible {
			out = append(out, d.Label())
		}
	}
	return out
}

// testLogger writes to the test log when -v, else nowhere.
func testLogger(t *testing.T) *slog.Logger {
	if testing.Verbose() {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

var epoch = time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)

// openSim opens an inventory on a simulated node with a manual clock and a
// fixed host filesystem, so tests move time themselves.
func openSim(t *testing.T, simulate string, vars map[string]string, mod func(*Options)) (*Inventory, *ManualClock) {
	t.Helper()
	clk := NewManualClock(epoch)
	opts := Options{
		Simulate:        simulate,
		Clock:           clk,
		LookupEnv:       env(vars),
		HostFS:          os.DirFS("testdata/cgroupv2"),
		NumCPU:          func() int { return 16 },
		Logger:          testLogger(t),
		QuietPeriod:     5 * time.Minute,
		ProbeInterval:   30 * time.Second,
		WatchdogTimeout: 5 * time.Second,
	}
	if mod != nil {
		mod(&opts)
	}
	inv, err := Open(context.Background(), opts)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() { _ = inv.Close() })
	return inv, clk
}

func openFS(dir string) fs.FS { return os.DirFS("testdata/" + dir) }
