package runtime

import (
	"bytes"
	"context"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/esper/kasmina-host/contracts"
	"github.com/esper/kasmina-host/kernels"
)

// linearKernelBias is linearKernel's module with another bias: the same
// shapes, other outputs.
func linearKernelBias(t testing.TB, id string, b []float32) []byte {
	t.Helper()
	mod := &kernels.Module{Type: "sequential", Layers: []*kernels.Module{
		{Type: "linear", InFeatures: 4, OutFeatures: 3, Bias: true},
		{Type: "relu"},
	}}
	w := []float32{1, 1, 0, 0, 0, 0, 1, -1, -1, 0, 0, 0}
	md := contracts.NewKernelMetadata(id, "bp-"+id, id)
	md.InputShape, md.OutputShape, md.ParameterCount = []int{4}, []int{3}, 15
	md.MemoryFootprintMB = 64
	md.CompilationTarget = "esper-kernel/v1"
	var buf bytes.Buffer
	if err := kernels.WriteKernel(&buf, mod, []kernels.Tensor{
		kernels.F32Tensor("0.weight", []int{3, 4}, w), kernels.F32Tensor("0.bias", []int{3}, b),
	}, &md); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// Atomic grafts under load (run with -race): while 8 goroutines call a
// seed's kernel without pause, 100 swaps put the other artifact in its
// place. No call fails; each answers with one kernel's output, never a
// mix; once a swap has returned, calls answer with the new kernel; the
// old kernels' reservations are released, leaving one.
func TestSwapUnderInference(t *testing.T) {
	inv := openInventory(t, "dgxa100", map[string]string{"CUDA_VISIBLE_DEVICES": ""})
	h, _, _ := newHost(t, inv, Config{GraftingRamp: -1, Concurrency: 64, QueueDepth: 1024})
	ctx := context.Background()
	if _, err := h.Apply(ctx, DeclareLayer{Layer: "enc"}); err != nil {
		t.Fatal(err)
	}
	arts := [2][]byte{linearKernelBias(t, "k", []float32{0, 0.5, -1}), linearKernelBias(t, "k", []float32{10, 10.5, 9})}
	x := []float32{1, 2, 3, -4}
	outs := [2][]float32{{3, 7.5, 0}, {13, 17.5, 8}}
	load := func(i int) KernelView {
		t.Helper()
		v, err := h.Load(ctx, LoadRequest{Name: "k", Data: arts[i%2], Layer: "enc", SeedIdx: 0, Replace: true})
		if err != nil {
			t.Fatalf("swap %d: %v", i, err)
		}
		return v
	}
	v := load(0)
	dev := v.Placement.Device
	reserved := h.ledger.ReservedMiB(dev)

	var (
		stop     atomic.Bool
		calls    atomic.Int64
		failures atomic.Int64
		firstErr atomic.Value
		wg       sync.WaitGroup
	)
	for range 8 {
		wg.Go(func() {
			for !stop.Load() {
				res, err := h.Infer(ctx, "k", Request{Input: x, Shape: []int{1, 4}})
				calls.Add(1)
				if err == nil && !slices.Equal(res.Output, outs[0]) && !slices.Equal(res.Output, outs[1]) {
					err = fmt.Errorf("output %v is neither kernel's", res.Output)
				}
				if err != nil {
					failures.Add(1)
					firstErr.CompareAndSwap(nil, err)
				}
			}
		})
	}
	for i := 1; i <= 100; i++ {
		load(i)
		res, err := h.Infer(ctx, "k", Request{Input: x, Shape: []int{1, 4}})
		if err != nil || !slices.Equal(res.Output, outs[i%2]) {
			t.Fatalf("after swap %d: %v, %v; want the new kernel's %v", i, res.Output, err, outs[i%2])
		}
	}
	stop.Store(true)
	wg.Wait()
	if n := failures.Load(); n > 0 {
		t.Fatalf("%d of %d calls failed during the swaps; first: %v", n, calls.Load(), firstErr.Load())
	}
	if got := h.ledger.ReservedMiB(dev); got != reserved {
		t.Errorf("%v MiB reserved on %s after 100 swaps, want %v (one kernel's)", got, dev, reserved)
	}
	s := layerSlot(t, h, "enc", 0)
	if s.Kernel == nil || *s.Kernel != "k" || s.State != contracts.SeedGerminated || len(s.History) != 0 {
		t.Errorf("the slot after the swaps: %+v", s)
	}
	t.Logf("%d calls during 100 swaps, none failed", calls.Load())
}
