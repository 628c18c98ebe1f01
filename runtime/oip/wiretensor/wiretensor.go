// Package wiretensor converts tensors between the Open Inference Protocol's
// wire form (a datatype name, a shape, little-endian bytes) and the host's
// FP32 tensors, checking every size a client declares before anything is
// allocated for it. Both front ends (oip over HTTP, oipgrpc over gRPC)
// and both carriers of tensor bytes (the request body and system shared
// memory) go through it, so a tensor is refused for the same reasons, in
// the same words, whichever way it came.
//
// Every refusal is a failure.BadInput error, or failure.Unsupported for a
// protocol datatype the host does not serve, whose message starts with the
// request field it is about (for example "inputs[0].shape").
package wiretensor

import (
	"encoding/binary"
	"math"
	"unsafe"

	"github.com/esper/kasmina-host/runtime/failure"
)

// MaxRank bounds the dimensions of one tensor.
const MaxRank = 8

// Datatype is a wire datatype the host converts to FP32.
type Datatype uint8

// The datatypes served. FP16, BF16 and FP64 are converted to FP32 on the
// way in; the host's outputs are always FP32.
const (
	FP32 Datatype = iota + 1
	FP16
	BF16
	FP64
)

var datatypeNames = map[string]Datatype{"FP32": FP32, "FP16": FP16, "BF16": BF16, "FP64": FP64}

// otherTypes are the protocol's datatypes the host does not serve: asking
// for one is Unsupported, while a name that is no datatype is BadInput.
var otherTypes = map[string]bool{
	"BOOL": true, "UINT8": true, "UINT16": true, "UINT32": true, "UINT64": true,
	"INT8": true, "INT16": true, "INT32": true, "INT64": true, "BYTES": true,
}

// ParseDatatype returns the datatype named name; field names the request
// field in the error.
func ParseDatatype(field, name string) (Datatype, error) {
	if d, ok := datatypeNames[name]; ok {
		return d, nil
	}
	if otherTypes[name] {
		return 0, failure.Errorf(failure.Unsupported, "%s: %s is not supported; send FP32 (FP16, BF16 and FP64 are converted)", field, name)
	}
	return 0, failure.Errorf(failure.BadInput, "%s: unknown datatype %q", field, name)
}

// String is the datatype's protocol name.
func (d Datatype) String() string {
	switch d {
	case FP32:
		return "FP32"
	case FP16:
		return "FP16"
	case BF16:
		return "BF16"
	case FP64:
		return "FP64"
	}
	return "invalid"
}

// Size is the bytes of one element.
func (d Datatype) Size() int {
	switch d {
	case FP16, BF16:
		return 2
	case FP32:
		return 4
	case FP64:
		return 8
	}
	return 0
}

// MaxFinite is the largest finite magnitude a value of the datatype may
// have once it is FP32: values beyond it are refused rather than turned
// into infinities.
func (d Datatype) MaxFinite() float64 {
	if d == FP16 {
		return 65504
	}
	return math.MaxFloat32
}

// Count returns the product of shape (field names it in errors), refusing
// an empty shape, more than MaxRank dimensions, a negative dimension and a
// product above maxElements, without overflowing.
func Count(field string, shape []int64, maxElements int64) (int64, error) {
	if len(shape) == 0 {
		return 0, failure.Errorf(failure.BadInput, "%s: missing (a tensor needs at least one dimension)", field)
	}
	if len(shape) > MaxRank {
		return 0, failure.Errorf(failure.BadInput, "%s: %d dimensions, more than the limit of %d", field, len(shape), MaxRank)
	}
	n := int64(1)
	for i, d := range shape {
		if d < 0 {
			return 0, failure.Errorf(failure.BadInput, "%s[%d]: negative dimension %d", field, i, d)
		}
		// n ≤ maxElements/d is n×d ≤ maxElements, without the overflow.
		if d != 0 && n > maxElements/d {
			return 0, failure.Errorf(failure.BadInput, "%s %v: more than the limit of %d elements", field, shape, maxElements)
		}
		n *= d
	}
	return n, nil
}

// ByteSize is the bytes n elements of d take on the wire. n has passed
// Count, so the product does not overflow.
func ByteSize(n int64, d Datatype) int64 { return n * int64(d.Size()) }

// littleEndian is true on the machines where an FP32 slice already has
// the wire's byte order, so a decode is one copy.
var littleEndian = binary.NativeEndian.Uint16([]byte{1, 0}) == 1

// Decode converts the wire bytes b of datatype d into dst; field names the
// tensor in errors. len(b) must be len(dst) × d.Size(). An FP64 value
// beyond FP32's range is refused; infinities and NaN pass through.
func Decode(field string, dst []float32, b []byte, d Datatype) error {
	if d.Size() == 0 || len(b) != len(dst)*d.Size() {
		return failure.Errorf(failure.BadInput, "%s: %d bytes of %s cannot hold %d elements", field, len(b), d, len(dst))
	}
	switch d {
	case FP32:
		if littleEndian && len(dst) > 0 {
			copy(unsafe.Slice((*byte)(unsafe.Pointer(&dst[0])), len(b)), b)
			return nil
		}
		for i := range dst {
			dst[i] = math.Float32frombits(binary.LittleEndian.Uint32(b[4*i:]))
		}
	case FP16:
		for i := range dst {
			dst[i] = halfToFloat32(binary.LittleEndian.Uint16(b[2*i:]))
		}
	case BF16:
		for i := range dst {
			dst[i] = math.Float32frombits(uint32(binary.LittleEndian.Uint16(b[2*i:])) << 16)
		}
	case FP64:
		for i := range dst {
			v := math.Float64frombits(binary.LittleEndian.Uint64(b[8*i:]))
			if math.Abs(v) > math.MaxFloat32 && !math.IsInf(v, 0) {
				return failure.Errorf(failure.BadInput, "%s element %d: %g is out of range for FP32", field, i, v)
			}
			dst[i] = float32(v)
		}
	}
	return nil
}

// NarrowFP64 converts FP64 values (the gRPC fp64_contents field) into
// dst, refusing finite values beyond FP32's range. len(dst) must equal
// len(src).
func NarrowFP64(field string, dst []float32, src []float64) error {
	if len(dst) != len(src) {
		return failure.Errorf(failure.BadInput, "%s: %d values where its shape declares %d", field, len(src), len(dst))
	}
	for i, v := range src {
		if math.Abs(v) > math.MaxFloat32 && !math.IsInf(v, 0) {
			return failure.Errorf(failure.BadInput, "%s element %d: %g is out of range for FP32", field, i, v)
		}
		dst[i] = float32(v)
	}
	return nil
}

// PutFP32 writes src into dst as little-endian FP32; len(dst) must be at
// least 4 × len(src).
func PutFP32(dst []byte, src []float32) {
	if littleEndian && len(src) > 0 {
		copy(dst, unsafe.Slice((*byte)(unsafe.Pointer(&src[0])), 4*len(src)))
		return
	}
	for i, v := range src {
		binary.LittleEndian.PutUint32(dst[4*i:], math.Float32bits(v))
	}
}

// FP32View returns the FP32 elements of b without copying, when the
// machine is little-endian and b is 4-byte aligned; ok is false otherwise
// (use Decode). The view aliases b. len(b) must be a multiple of 4.
func FP32View(b []byte) (v []float32, ok bool) {
	if !littleEndian || len(b)%4 != 0 {
		return nil, false
	}
	if len(b) == 0 {
		return []float32{}, true
	}
	if uintptr(unsafe.Pointer(&b[0]))%4 != 0 {
		return nil, false
	}
	return unsafe.Slice((*float32)(unsafe.Pointer(&b[0])), len(b)/4), true
}

// FP32Bytes returns src as little-endian bytes: a view of src on
// little-endian machines, a copy elsewhere.
func FP32Bytes(src []float32) []byte {
	if len(src) == 0 {
		return []byte{}
	}
	if littleEndian {
		return unsafe.Slice((*byte)(unsafe.Pointer(&src[0])), 4*len(src))
	}
	return AppendFP32(nil, src)
}

// AppendFP32 appends src to b as little-endian FP32.
func AppendFP32(b []byte, src []float32) []byte {
	off := len(b)
	b = append(b, make([]byte, 4*len(src))...)
	PutFP32(b[off:], src)
	return b
}

// CheckShape compares a request shape (batch first) with a model's
// per-sample shape and batch limit; a nil perSample leaves the shape to
// the backend, and maxBatch 0 means no limit. A batch over the limit is
// TooLarge (the host's limits on one request's output and activations
// set it), any other mismatch BadInput. shape has passed Count.
func CheckShape(field string, shape []int64, model string, perSample []int, maxBatch int) error {
	if perSample != nil {
		match := len(shape) == len(perSample)+1
		for i := 0; match && i < len(perSample); i++ {
			match = shape[i+1] == int64(perSample[i])
		}
		if !match {
			return failure.Errorf(failure.BadInput, "%s %v does not match model %q input %v (the first dimension is the batch)", field, shape, model, append([]int{-1}, perSample...))
		}
	}
	// A tensor of no elements can declare any batch: the limit holds
	// whatever the shape says after it.
	if maxBatch > 0 && shape[0] > int64(maxBatch) {
		return failure.Errorf(failure.TooLarge, "%s: batch %d is larger than model %q's max_batch of %d (the limit on the output and activation bytes of one request, --max-output-bytes, over what one sample needs)", field, shape[0], model, maxBatch)
	}
	return nil
}

// halfToFloat32 widens an IEEE 754 binary16 value exactly.
func halfToFloat32(h uint16) float32 {
	sign := uint32(h>>15) << 31
	exp := uint32(h>>10) & 0x1f
	mant := uint32(h) & 0x3ff
	switch {
	case exp == 0x1f: // Inf or NaN, payload kept
		return math.Float32frombits(sign | 0xff<<23 | mant<<13)
	case exp != 0: // normal
		return math.Float32frombits(sign | (exp+112)<<23 | mant<<13)
	case mant == 0: // signed zero
		return math.Float32frombits(sign)
	default: // subnormal: mant × 2^-24
		v := float32(mant) * (1.0 / (1 << 24))
		if sign != 0 {
			v = -v
		}
		return v
	}
}
