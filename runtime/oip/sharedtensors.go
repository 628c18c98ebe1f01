package oip

import (
	"context"
	"fmt"

	"github.com/esper/kasmina-host/runtime/failure"
	"github.com/esper/kasmina-host/runtime/oip/wiretensor"
	"github.com/esper/kasmina-host/runtime/shm"
)

// SharedTensors is what one inference holds in system shared memory: the
// regions its inputs are read from and its outputs are written to, held
// until it is answered. Both front ends use it, so that a tensor in a
// region is treated alike over HTTP and gRPC.
//
// A kernel's FP32 input is used where it lies, and its output computed
// where the client will read it, when the machine can (little-endian, the
// bytes 4-aligned) and the output's bytes are none of an input's: no copy
// is made on the host. Those are the region's own bytes, which the client
// may truncate at any time, so the model then runs under shm.Guard
// (Infer) and is told so (KernelRequest.Mapped). Anything else (another
// datatype, a layer's tensors and outputs, an output sharing bytes with an
// input) is copied.
//
// The zero value holds nothing; Release gives everything back.
type SharedTensors struct {
	leases []*shm.Lease
	bufs   []wiretensor.FP32Buffer
	// inPlace are the inputs used where they lie.
	inPlace []sharedRange
	// outs are the outputs bound for regions, by slot (a kernel's output
	// is slot 0; a layer's are its output roles).
	outs [MaxSharedOutputs]sharedOutput
}

// MaxSharedOutputs bounds the outputs of one inference that go to shared
// memory: a layer's output, grad_input and grad_default.
const MaxSharedOutputs = 3

// sharedOutput is an output bound for a region.
type sharedOutput struct {
	field string // the requested output, for errors ("outputs[1]")
	sharedRange
	view []float32 // the output's bytes, when it is computed in place
}

// sharedRange is a byte range of a held region.
type sharedRange struct {
	lease *shm.Lease
	ref   shm.Ref
}

// Release gives back the regions and the pooled buffers.
func (t *SharedTensors) Release() {
	for _, l := range t.leases {
		l.Release()
	}
	for _, b := range t.bufs {
		b.Release()
	}
	*t = SharedTensors{}
}

// HoldOutput holds the region ref names for output slot (0 for a
// kernel's output); field names the requested output in errors, for
// example "outputs[0]". A read-only region is Refused, and so is a slot
// already bound.
func (t *SharedTensors) HoldOutput(reg *shm.Registry, slot int, field string, ref shm.Ref) error {
	if t.outs[slot].lease != nil {
		return failure.Errorf(failure.BadInput, "%s: the output is requested twice in shared memory", field)
	}
	l, err := reg.Hold(field, ref)
	if err != nil {
		return err
	}
	t.leases = append(t.leases, l)
	if !l.Writable() {
		return failure.Errorf(failure.Refused, "%s.parameters.%s: region %q is read-only to the host", field, shm.ParamRegion, ref.Region)
	}
	t.outs[slot] = sharedOutput{field: field, sharedRange: sharedRange{l, ref}}
	return nil
}

// HasOutput reports whether output slot goes to a region.
func (t *SharedTensors) HasOutput(slot int) bool { return t.outs[slot].lease != nil }

// CheckOutput refuses an output of n FP32 values for slot that its region
// cannot hold.
func (t *SharedTensors) CheckOutput(slot int, n int64) error {
	o := &t.outs[slot]
	if need := 4 * n; o.lease != nil && uint64(need) > o.ref.ByteSize {
		return failure.Errorf(failure.BadInput, "%s.parameters.%s is %d bytes but the output needs %d", o.field, shm.ParamByteSize, o.ref.ByteSize, need)
	}
	return nil
}

// CheckOutputSizes refuses, before model m runs on a batch of batch
// samples (−1: unknown), an output whose region cannot hold it when m's
// shapes give its size: a kernel's output and a layer's output and
// grad_default have m.OutputShape per sample, a layer's grad_input
// m.InputShape.
func (t *SharedTensors) CheckOutputSizes(m ModelInfo, batch int) error {
	if batch < 0 {
		return nil
	}
	for slot := range t.outs {
		perSample := m.OutputShape
		if m.Layer && slot == roleGradInput {
			perSample = m.InputShape
		}
		if t.outs[slot].lease == nil || perSample == nil {
			continue
		}
		n := int64(batch)
		for _, d := range perSample {
			n *= int64(d)
		}
		if err := t.CheckOutput(slot, n); err != nil {
			return err
		}
	}
	return nil
}

// Input holds the region ref names and returns the n values of datatype
// dt found there (field names the tensor in errors). With inPlace (a
// kernel's input) they are the region's own bytes when the machine can
// use them as they lie; otherwise, and for other datatypes, a pooled copy
// that Release gives back.
func (t *SharedTensors) Input(reg *shm.Registry, field string, ref shm.Ref, dt wiretensor.Datatype, n int, inPlace bool) ([]float32, error) {
	l, err := reg.Hold(field, ref)
	if err != nil {
		return nil, err
	}
	t.leases = append(t.leases, l)
	if inPlace && dt == wiretensor.FP32 && ref.ByteSize == 4*uint64(n) {
		b, err := l.View(ref.Offset, ref.ByteSize, false)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", field, err)
		}
		if v, ok := wiretensor.FP32View(b); ok {
			t.inPlace = append(t.inPlace, sharedRange{l, ref})
			return v, nil
		}
	}
	buf := wiretensor.GetFP32(n)
	t.bufs = append(t.bufs, buf)
	data := buf.Data
	err = l.Read(ref.Offset, ref.ByteSize, func(b []byte) error {
		return wiretensor.Decode("shared memory", data, b, dt)
	})
	if err != nil {
		return nil, fmt.Errorf("%s: %w", field, err)
	}
	return data, nil
}

// OutputBuffer returns where the output of slot, n FP32 values, is
// computed: its region's own bytes when it goes to a region, the machine
// can use them as they lie and no input used in place shares them (the
// kernel would overwrite what it still reads); else a pooled buffer of n
// values (nil when n is 0: the backend allocates), which Release gives
// back and WriteOutput copies into the region.
func (t *SharedTensors) OutputBuffer(slot, n int) ([]float32, error) {
	o := &t.outs[slot]
	if o.lease != nil && n > 0 && 4*uint64(n) <= o.ref.ByteSize && !t.aliasesInput(o, n) {
		b, err := o.lease.View(o.ref.Offset, 4*uint64(n), true)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", o.field, err)
		}
		if v, ok := wiretensor.FP32View(b); ok {
			o.view = v
			return v, nil
		}
	}
	if n == 0 {
		return nil, nil
	}
	buf := wiretensor.GetFP32(n)
	t.bufs = append(t.bufs, buf)
	return buf.Data, nil
}

func (t *SharedTensors) aliasesInput(o *sharedOutput, n int) bool {
	for _, in := range t.inPlace {
		if o.lease.Overlaps(o.ref.Offset, 4*uint64(n), in.lease, in.ref.Offset, in.ref.ByteSize) {
			return true
		}
	}
	return false
}

// mapped reports whether the model will touch a region's own bytes.
func (t *SharedTensors) mapped() bool {
	if len(t.inPlace) > 0 {
		return true
	}
	for _, o := range t.outs {
		if o.view != nil {
			return true
		}
	}
	return false
}

// KernelInferrer is what SharedTensors.Infer needs of a backend: both
// front ends' backends have it.
type KernelInferrer interface {
	Infer(ctx context.Context, m ModelInfo, req KernelRequest) (Tensor, ExecInfo, error)
}

// Infer runs kr on model m through b, telling it whether it touches a
// region's own bytes (KernelRequest.Mapped), and then under shm.Guard, so
// that a region truncated under the model is an error naming the region
// rather than a crash.
func (t *SharedTensors) Infer(ctx context.Context, b KernelInferrer, m ModelInfo, kr KernelRequest) (Tensor, ExecInfo, error) {
	kr.Mapped = t.mapped()
	if !kr.Mapped {
		return b.Infer(ctx, m, kr)
	}
	return t.inferGuarded(ctx, b, m, kr)
}

// inferGuarded is Infer's guarded path, apart so that the unguarded one
// allocates nothing for the closure.
func (t *SharedTensors) inferGuarded(ctx context.Context, b KernelInferrer, m ModelInfo, kr KernelRequest) (out Tensor, info ExecInfo, err error) {
	err = shm.Guard(t.leases, func() error {
		var err error
		out, info, err = b.Infer(ctx, m, kr)
		return err
	})
	return out, info, err
}

// WriteOutput puts the output of slot into its region, when it has one
// and was not computed there.
func (t *SharedTensors) WriteOutput(slot int, out []float32) error {
	o := &t.outs[slot]
	if o.lease == nil {
		return nil
	}
	if err := t.CheckOutput(slot, int64(len(out))); err != nil {
		return err
	}
	if len(out) > 0 && len(out) <= len(o.view) && &out[0] == &o.view[0] {
		return nil // computed in place
	}
	err := o.lease.Write(o.ref.Offset, 4*uint64(len(out)), func(b []byte) error {
		wiretensor.PutFP32(b, out)
		return nil
	})
	if err != nil {
		return fmt.Errorf("%s: %w", o.field, err)
	}
	return nil
}
