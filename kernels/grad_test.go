package kernels

import (
	"context"
	"errors"
	"fmt"
	"math"
	"strings"
	"sync"
	"testing"
)

// geluFirst is GELU + Linear + LayerNorm: its backward needs the input
// (GELU's) and an intermediate (layer norm's) from the tape.
func geluFirst(t testing.TB) *Kernel {
	t.Helper()
	m := mustModule(t, seq(`{"type":"gelu"}`, linearJSON(6, 5, true), `{"type":"layernorm","normalized_shape":5}`))
	k, err := Load(testKernel(t, m, []int{6}, 3, nil), LoadOptions{InputShape: []int{6}})
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func TestBackwardRejectsWrongSizes(t *testing.T) {
	k := geluFirst(t)
	ctx := context.Background()
	cases := []struct {
		name                 string
		in, gout, gin, batch int
		want                 string
	}{
		{"short input", 11, 10, 12, 2, "input has 11 values"},
		{"short grad_output", 12, 9, 12, 2, "grad_output has 9 values"},
		{"long grad_input", 12, 10, 13, 2, "grad_input has room for 13 values"},
		{"zero batch", 0, 0, 0, 0, "batch 0"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			err := k.Backward(ctx, make([]float32, c.in), c.batch, make([]float32, c.gout), make([]float32, c.gin))
			if !errors.Is(err, ErrShape) || !errStringHas(err, c.want) {
				t.Errorf("Backward: %v, want ErrShape mentioning %q", err, c.want)
			}
		})
	}
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if err := k.Backward(cctx, make([]float32, 6), 1, make([]float32, 5), make([]float32, 6)); !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled context: %v", err)
	}
}

func errStringHas(err error, s string) bool {
	return err != nil && strings.Contains(err.Error(), s)
}

func TestTapeRefusesMisuse(t *testing.T) {
	k := geluFirst(t)
	ctx := context.Background()
	var tape Tape
	if err := tape.Backward(ctx, make([]float32, 5), make([]float32, 6)); !errors.Is(err, ErrTape) {
		t.Errorf("Backward on an empty tape: %v, want ErrTape", err)
	}
	if err := k.Forward(ctx, make([]float32, 12), 2, make([]float32, 10), &tape); err != nil {
		t.Fatal(err)
	}
	if tape.Batch() != 2 || tape.Bytes() != 4*2*(6+5) || k.TapeBytes(2) != tape.Bytes() {
		t.Errorf("tape: batch %d, %d bytes; want 2 and room for the GELU input, the layer norm input and nothing else", tape.Batch(), tape.Bytes())
	}
	if err := tape.Backward(ctx, make([]float32, 5), make([]float32, 6)); !errors.Is(err, ErrShape) {
		t.Errorf("grad_output for batch 1 on a batch-2 tape: %v, want ErrShape", err)
	}
	// A Forward that fails leaves the tape empty rather than stale.
	if err := k.Forward(ctx, make([]float32, 7), 1, make([]float32, 5), &tape); !errors.Is(err, ErrShape) {
		t.Fatalf("Forward with a short input: %v", err)
	}
	if err := tape.Backward(ctx, make([]float32, 10), make([]float32, 12)); !errors.Is(err, ErrTape) {
		t.Errorf("Backward after a failed Forward: %v, want ErrTape", err)
	}
	tape.busy.Store(true) // as while another call runs
	if err := k.Forward(ctx, make([]float32, 6), 1, make([]float32, 5), &tape); !errors.Is(err, ErrTape) || !errStringHas(err, "in use") {
		t.Errorf("Forward on a tape in use: %v, want ErrTape", err)
	}
	if err := tape.Backward(ctx, make([]float32, 5), make([]float32, 6)); !errors.Is(err, ErrTape) {
		t.Errorf("Backward on a tape in use: %v, want ErrTape", err)
	}
}

// TestTapeKeepsCopies changes the caller's input after Forward: the tape's
// backward pass must not see it.
func TestTapeKeepsCopies(t *testing.T) {
	k := geluFirst(t)
	ctx := context.Background()
	x := randomInput(3*6, 4)
	gy := randomInput(3*5, 5)
	want := make([]float32, len(x))
	if err := k.Backward(ctx, x, 3, gy, want); err != nil {
		t.Fatal(err)
	}
	var tape Tape
	if err := k.Forward(ctx, x, 3, make([]float32, 15), &tape); err != nil {
		t.Fatal(err)
	}
	for i := range x {
		x[i] = 100
	}
	for round := range 2 { // the tape serves more than one backward pass
		got := make([]float32, len(x))
		if err := tape.Backward(ctx, gy, got); err != nil {
			t.Fatal(err)
		}
		for i := range got {
			if got[i] != want[i] {
				t.Fatalf("round %d, element %d: %g from the tape, %g from the original input", round, i, got[i], want[i])
			}
		}
	}
}

// TestBackwardOfLinearLayersNeedsNoTape checks that a kernel whose backward
// reads nothing from the forward records an empty tape.
func TestBackwardOfLinearLayersNeedsNoTape(t *testing.T) {
	m := mustModule(t, seq(`{"type":"conv2d","in_channels":2,"out_channels":3,"kernel_size":3}`, `{"type":"batchnorm2d","num_features":3}`, `{"type":"adaptive_avg_pool2d","output_size":1}`, `{"type":"flatten"}`, linearJSON(3, 2, true)))
	k, err := Load(testKernel(t, m, []int{2, 5, 5}, 1, nil), LoadOptions{InputShape: []int{2, 5, 5}})
	if err != nil {
		t.Fatal(err)
	}
	var tape Tape
	if err := k.Forward(context.Background(), make([]float32, 50), 1, make([]float32, 2), &tape); err != nil {
		t.Fatal(err)
	}
	if tape.Bytes() != 0 || k.TapeBytes(64) != 0 {
		t.Errorf("tape holds %d bytes (TapeBytes(64) = %d), want none", tape.Bytes(), k.TapeBytes(64))
	}
}

func TestBackwardAllocatesNothingInSteadyState(t *testing.T) {
	ctx := context.Background()
	for _, c := range steadyStateCases(t) {
		t.Run(c.name, func(t *testing.T) {
			in := randomInput(c.batch*c.k.InputSize(), 1)
			out := make([]float32, c.batch*c.k.OutputSize())
			gy := randomInput(len(out), 2)
			gx := make([]float32, len(in))
			var tape Tape
			for name, f := range map[string]func(){
				"Backward": func() {
					if err := c.k.Backward(ctx, in, c.batch, gy, gx); err != nil {
						t.Fatal(err)
					}
				},
				"Forward+Tape.Backward": func() {
					if err := c.k.Forward(ctx, in, c.batch, out, &tape); err != nil {
						t.Fatal(err)
					}
					if err := tape.Backward(ctx, gy, gx); err != nil {
						t.Fatal(err)
					}
				},
			} {
				if allocs := testing.AllocsPerRun(100, f); allocs != 0 {
					t.Errorf("%s allocates %v times per call in steady state", name, allocs)
				}
			}
		})
	}
}

func TestBackwardIsSafeForConcurrentCallers(t *testing.T) {
	k := geluFirst(t)
	ctx := context.Background()
	batches := []int{1, 3, 8}
	want := map[int][]float32{}
	inputs, grads := map[int][]float32{}, map[int][]float32{}
	for _, b := range batches {
		inputs[b], grads[b] = randomInput(b*6, int64(b)), randomInput(b*5, int64(10+b))
		want[b] = make([]float32, b*6)
		if err := k.Backward(ctx, inputs[b], b, grads[b], want[b]); err != nil {
			t.Fatal(err)
		}
	}
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for g := range 8 {
		wg.Go(func() {
			var tape Tape
			for i := range 50 {
				b := batches[(g+i)%len(batches)]
				got := make([]float32, b*6)
				var err error
				if i%2 == 0 {
					err = k.Backward(ctx, inputs[b], b, grads[b], got)
				} else if err = k.Forward(ctx, inputs[b], b, make([]float32, b*5), &tape); err == nil {
					err = tape.Backward(ctx, grads[b], got)
				}
				if err != nil {
					errs <- err
					return
				}
				for j := range got {
					if math.Float32bits(got[j]) != math.Float32bits(want[b][j]) {
						errs <- fmt.Errorf("goroutine %d batch %d: element %d = %v, want %v", g, b, j, got[j], want[b][j])
						return
					}
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}
