package runtime

import (
	"bytes"
	"context"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"slices"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/esper/kasmina-host/contracts"
	"github.com/esper/kasmina-host/kernels"
	"github.com/esper/kasmina-host/runtime/admission"
)

// squareKernel writes a Linear(n→n) kernel: at batch n its product is
// large enough for the GEMM worker pool to share it.
func squareKernel(t testing.TB, id string, n int) []byte {
	t.Helper()
	rng := rand.New(rand.NewPCG(3, 4))
	w := make([]float32, n*n)
	for i := range w {
		w[i] = rng.Float32() - 0.5
	}
	mod := &kernels.Module{Type: "sequential", Layers: []*kernels.Module{{Type: "linear", InFeatures: n, OutFeatures: n}}}
	md := contracts.NewKernelMetadata(id, "bp-"+id, id)
	md.InputShape, md.OutputShape, md.ParameterCount = []int{n}, []int{n}, n*n
	md.MemoryFootprintMB = 64
	md.CompilationTarget = "esper-kernel/v1"
	var buf bytes.Buffer
	if err := kernels.WriteKernel(&buf, mod, []kernels.Tensor{kernels.F32Tensor("0.weight", []int{n, n}, w)}, &md); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// vanishingFloats maps n float32 of a file and truncates the file: every
// access to them faults, as a shared memory region its client truncated.
func vanishingFloats(t *testing.T, n int) []float32 {
	t.Helper()
	f, err := os.Create(filepath.Join(t.TempDir(), "region"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.Truncate(int64(4 * n)); err != nil {
		t.Fatal(err)
	}
	mem, err := unix.Mmap(int(f.Fd()), 0, 4*n, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = unix.Munmap(mem) })
	if err := f.Truncate(0); err != nil {
		t.Fatal(err)
	}
	return unsafe.Slice((*float32)(unsafe.Pointer(&mem[0])), n)
}

// inferRecovering runs h.Infer as a guarded caller does (package shm's
// Guard): faults are panics on this goroutine, recovered here.
func inferRecovering(h *Host, name string, req Request) (fault any, err error) {
	old := debug.SetPanicOnFault(true)
	defer func() {
		debug.SetPanicOnFault(old)
		fault = recover()
	}()
	_, err = h.Infer(context.Background(), name, req)
	return nil, err
}

// A kernel whose input vanishes while it runs (Mapped: the client
// truncated its region) raises the fault on the calling goroutine, wherever
// it happened (the product is shared with the GEMM pool), and gives back
// what the request held: with one executor slot, later requests still run,
// and the breaker did not count the client's fault against the kernel.
func TestMappedFaultReleasesTheRequest(t *testing.T) {
	const n = 256
	h, _, _ := newHost(t, openInventory(t, "dgxa100", nil), Config{Concurrency: 1, QueueDepth: 1})
	if _, err := h.Load(context.Background(), LoadRequest{Data: squareKernel(t, "wide", n)}); err != nil {
		t.Fatal(err)
	}
	x := make([]float32, n*n)
	for i := range x {
		x[i] = float32(i%7) - 3
	}
	want, err := h.Infer(context.Background(), "wide", Request{Input: x, Shape: []int{n, n}})
	if err != nil {
		t.Fatal(err)
	}
	for range 3 {
		fault, err := inferRecovering(h, "wide", Request{Input: vanishingFloats(t, n*n), Shape: []int{n, n}, Mapped: true})
		if _, ok := fault.(interface{ Addr() uintptr }); !ok || err != nil {
			t.Fatalf("a vanished input: err %v, recovered %v; want its memory fault raised here", err, fault)
		}
	}
	// The output's region vanishing is the same.
	fault, err := inferRecovering(h, "wide", Request{Input: x, Shape: []int{n, n}, Out: vanishingFloats(t, n*n), Mapped: true})
	if _, ok := fault.(interface{ Addr() uintptr }); !ok || err != nil {
		t.Fatalf("a vanished output: err %v, recovered %v; want its memory fault raised here", err, fault)
	}
	for range 3 {
		got, err := h.Infer(context.Background(), "wide", Request{Input: x, Shape: []int{n, n}})
		if err != nil {
			t.Fatalf("after the faults: %v", err)
		}
		if !slices.Equal(got.Output, want.Output) {
			t.Fatal("after the faults, the output differs")
		}
	}
	if v, _ := h.Kernel("wide"); v.Breaker != admission.Closed {
		t.Errorf("breaker %q after the client's faults, want closed", v.Breaker)
	}
}

// copyingExecutor is the CPU executor reporting that its faults would not
// reach the caller (as with OpenBLAS), recording what Run was handed.
type copyingExecutor struct {
	cpuExecutor
	in, out *[]float32
}

func (copyingExecutor) FaultsReachCaller() bool { return false }

func (e copyingExecutor) Run(ctx context.Context, k *kernels.Kernel, in []float32, batch int, out []float32) error {
	*e.in, *e.out = in, out
	return e.cpuExecutor.Run(ctx, k, in, batch, out)
}

// With an executor whose faults would end the process, a Mapped request's
// input and output never reach it: it runs on copies, and the output is
// delivered where the request asked.
func TestMappedRunsOnCopiesWhenFaultsCannotReachCaller(t *testing.T) {
	var gotIn, gotOut []float32
	defer func(old Executor) { cpu = old }(cpu)
	cpu = copyingExecutor{in: &gotIn, out: &gotOut}
	h, _, _ := newHost(t, openInventory(t, "dgxa100", nil), Config{})
	if _, err := h.Load(context.Background(), LoadRequest{Data: linearKernel(t, "k", nil)}); err != nil {
		t.Fatal(err)
	}
	x := []float32{1, 2, 3, -4}
	out := make([]float32, 3)
	res, err := h.Infer(context.Background(), "k", Request{Input: x, Shape: []int{1, 4}, Out: out, Mapped: true})
	if err != nil {
		t.Fatal(err)
	}
	if &gotIn[0] == &x[0] || &gotOut[0] == &out[0] {
		t.Fatal("the executor was handed the request's own memory")
	}
	if &res.Output[0] != &out[0] || !slices.Equal(out, expected(x)) {
		t.Fatalf("output %v (in the request's buffer: %v), want %v there", res.Output, &res.Output[0] == &out[0], expected(x))
	}
	// Unmapped requests are handed over as they are.
	if _, err := h.Infer(context.Background(), "k", Request{Input: x, Shape: []int{1, 4}, Out: out}); err != nil {
		t.Fatal(err)
	}
	if &gotIn[0] != &x[0] || &gotOut[0] != &out[0] {
		t.Fatal("an unmapped request was copied")
	}
	runtime.KeepAlive(x)
}

// A layer's request marked Mapped works on copies: a kept forward does not
// hold the request's memory (the client may reuse or truncate its region
// after the answer), and nothing is computed into its Out.
func TestMappedLayerRequestKeepsNothingOfTheRequest(t *testing.T) {
	h := newLayerHost(t, Config{})
	buildLayer(t, h, "L", map[int]seedSpec{0: {"ka", 0.7, contracts.SeedGerminated}})
	ctx := context.Background()
	x, def, g := layerInputs()
	want, err := h.Infer(ctx, "L", Request{Input: x, Shape: []int{2, 4}, Default: def, GradOutput: g})
	if err != nil {
		t.Fatal(err)
	}
	mx, mdef, out := slices.Clone(x), slices.Clone(def), make([]float32, len(want.Output))
	fwd, err := h.Infer(ctx, "L", Request{Input: mx, Shape: []int{2, 4}, Default: mdef, KeepForward: true, Out: out, Mapped: true})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(fwd.Output, want.Output) || &fwd.Output[0] == &out[0] {
		t.Fatalf("mapped forward: output %v (in the request's Out: %v), want %v in memory of its own", fwd.Output, &fwd.Output[0] == &out[0], want.Output)
	}
	clear(mx) // the client reuses its region
	clear(mdef)
	back, err := h.Infer(ctx, "L", Request{GradOutput: g, ForwardID: fwd.Blend.ForwardID})
	if err != nil || !slices.Equal(back.GradInput, want.GradInput) || !slices.Equal(back.GradDefault, want.GradDefault) {
		t.Fatalf("backward of a mapped forward after its memory changed: %v %v, want %v", err, back.GradInput, want.GradInput)
	}
}
