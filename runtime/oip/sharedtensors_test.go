package oip_test

import (
	"context"
	"encoding/binary"
	"math"
	"os"
	"slices"
	"strings"
	"testing"

	"github.com/esper/kasmina-host/runtime/failure"
	"github.com/esper/kasmina-host/runtime/oip"
	"github.com/esper/kasmina-host/runtime/oip/oiptest"
	"github.com/esper/kasmina-host/runtime/oip/wiretensor"
	"github.com/esper/kasmina-host/runtime/shm"
)

// tensorObject is a shared memory object of size bytes, registered whole
// as region "r", and the object opened for the test to change.
func tensorObject(t *testing.T, size int) (*shm.Registry, *os.File) {
	t.Helper()
	reg, path := oiptest.SharedRegion(t, "r", size)
	file, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { file.Close() })
	return reg, file
}

func readFloats(t *testing.T, f *os.File, off int64, n int) []float32 {
	t.Helper()
	b := make([]byte, 4*n)
	if _, err := f.ReadAt(b, off); err != nil {
		t.Fatal(err)
	}
	v := make([]float32, n)
	for i := range v {
		v[i] = math.Float32frombits(binary.LittleEndian.Uint32(b[4*i:]))
	}
	return v
}

// A kernel's FP32 input is used where it lies, and its output computed
// where the client reads it, exactly when that is safe: the bytes are
// 4-aligned FP32, and the output shares none of an input's bytes.
// Whether a tensor is in place shows from outside: a write to the object
// is seen through the input, a write to the output buffer is in the object
// before WriteOutput.
func TestSharedTensorsInPlace(t *testing.T) {
	reg, file := tensorObject(t, 4096)
	if _, err := file.WriteAt(f32bytes(1, 2, 3, 4), 0); err != nil {
		t.Fatal(err)
	}
	if _, err := file.WriteAt(f32bytes(5, 6), 1026); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name    string
		in      shm.Ref
		dt      wiretensor.Datatype
		n       int
		inPlace bool
		out     shm.Ref
		wantIn  bool // the input is the region's bytes
		wantOut bool // the output is computed in the region
	}{
		{"apart", shm.Ref{Region: "r", Offset: 0, ByteSize: 16}, wiretensor.FP32, 4, true, shm.Ref{Region: "r", Offset: 2048, ByteSize: 16}, true, true},
		{"a layer's input is copied", shm.Ref{Region: "r", Offset: 0, ByteSize: 16}, wiretensor.FP32, 4, false, shm.Ref{Region: "r", Offset: 2048, ByteSize: 16}, false, true},
		{"output over the input", shm.Ref{Region: "r", Offset: 0, ByteSize: 16}, wiretensor.FP32, 4, true, shm.Ref{Region: "r", Offset: 8, ByteSize: 16}, true, false},
		{"unaligned input", shm.Ref{Region: "r", Offset: 1026, ByteSize: 8}, wiretensor.FP32, 2, true, shm.Ref{Region: "r", Offset: 2048, ByteSize: 16}, false, true},
		{"FP16 input", shm.Ref{Region: "r", Offset: 0, ByteSize: 8}, wiretensor.FP16, 4, true, shm.Ref{Region: "r", Offset: 2048, ByteSize: 16}, false, true},
		{"unaligned output", shm.Ref{Region: "r", Offset: 0, ByteSize: 16}, wiretensor.FP32, 4, true, shm.Ref{Region: "r", Offset: 2050, ByteSize: 16}, true, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			var st oip.SharedTensors
			defer st.Release()
			if err := st.HoldOutput(reg, 0, "outputs[0]", c.out); err != nil {
				t.Fatal(err)
			}
			in, err := st.Input(reg, "inputs[0]", c.in, c.dt, c.n, c.inPlace)
			if err != nil {
				t.Fatal(err)
			}
			before, raw := slices.Clone(in), make([]byte, c.in.ByteSize)
			if _, err := file.ReadAt(raw, int64(c.in.Offset)); err != nil {
				t.Fatal(err)
			}
			if _, err := file.WriteAt(make([]byte, c.in.ByteSize), int64(c.in.Offset)); err != nil {
				t.Fatal(err)
			}
			if inRegion := !slices.Equal(in, before); inRegion != c.wantIn {
				t.Errorf("input in place: %v, want %v", inRegion, c.wantIn)
			}
			if _, err := file.WriteAt(raw, int64(c.in.Offset)); err != nil {
				t.Fatal(err)
			}
			out, err := st.OutputBuffer(0, 4)
			if err != nil {
				t.Fatal(err)
			}
			copy(out, []float32{9, 8, 7, 6})
			if inRegion := slices.Equal(readFloats(t, file, int64(c.out.Offset), 4), []float32{9, 8, 7, 6}); inRegion != c.wantOut {
				t.Errorf("output in place: %v, want %v", inRegion, c.wantOut)
			}
			if err := st.WriteOutput(0, out); err != nil {
				t.Fatal(err)
			}
			if got := readFloats(t, file, int64(c.out.Offset), 4); !slices.Equal(got, []float32{9, 8, 7, 6}) {
				t.Errorf("after WriteOutput the region holds %v", got)
			}
		})
	}
}

// guardedModel is a backend whose model runs fn on the request.
type guardedModel func(oip.KernelRequest) (oip.Tensor, error)

func (g guardedModel) Infer(_ context.Context, _ oip.ModelInfo, req oip.KernelRequest) (oip.Tensor, oip.ExecInfo, error) {
	out, err := g(req)
	return out, oip.ExecInfo{}, err
}

// A model touching a region's own bytes is told so (Mapped) and runs under
// the guard: the client truncating the object while it runs is an error
// naming the region, never a crash; one working on copies is not guarded.
func TestSharedTensorsGuardTheModel(t *testing.T) {
	reg, file := tensorObject(t, 8192)
	var st oip.SharedTensors
	defer st.Release()
	in, err := st.Input(reg, "inputs[0]", shm.Ref{Region: "r", Offset: 4096, ByteSize: 4096}, wiretensor.FP32, 1024, true)
	if err != nil {
		t.Fatal(err)
	}
	var sawMapped bool
	_, _, err = st.Infer(context.Background(), guardedModel(func(req oip.KernelRequest) (oip.Tensor, error) {
		sawMapped = req.Mapped
		if err := file.Truncate(0); err != nil {
			t.Fatal(err)
		}
		var s float32
		for _, v := range req.Input.Data { // SIGBUS
			s += v
		}
		return oip.Tensor{Shape: []int{1}, Data: []float32{s}}, nil
	}), oip.ModelInfo{Name: "m"}, oip.KernelRequest{Input: oip.Tensor{Shape: []int{1, 1024}, Data: in}})
	if !sawMapped {
		t.Error("the model was not told its input is mapped")
	}
	if failure.ClassOf(err) != failure.BadInput || !strings.Contains(err.Error(), `region "r": its shared memory object "/obj" shrank while the host was using it`) {
		t.Fatalf("truncated under the model: %v", err)
	}

	var copies oip.SharedTensors
	defer copies.Release()
	_, _, err = copies.Infer(context.Background(), guardedModel(func(req oip.KernelRequest) (oip.Tensor, error) {
		if req.Mapped {
			t.Error("a request holding no region's bytes was told it is mapped")
		}
		return oip.Tensor{}, nil
	}), oip.ModelInfo{Name: "m"}, oip.KernelRequest{})
	if err != nil {
		t.Fatal(err)
	}
}
