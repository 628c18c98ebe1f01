package shm

import (
	"fmt"

	"github.com/esper/kasmina-host/runtime/failure"
)

// The extension's tensor parameters, the same in both protocols.
const (
	ParamRegion   = "shared_memory_region"
	ParamOffset   = "shared_memory_offset"
	ParamByteSize = "shared_memory_byte_size"
)

// Ref says where a tensor's bytes are: a byte range of a registered region.
type Ref struct {
	Region   string
	Offset   uint64
	ByteSize uint64
}

// ParseRef checks a tensor's shared memory parameters, each nil when the
// request does not give it; params names them in errors (for example
// "inputs[0].parameters"). ok is false when the tensor names no region.
// As in Triton, the region and its byte size come together and the offset
// is optional; none may be negative.
func ParseRef(params string, region *string, offset, byteSize *int64) (ref Ref, ok bool, err error) {
	switch {
	case region == nil && byteSize == nil && offset == nil:
		return Ref{}, false, nil
	case region == nil:
		return Ref{}, false, failure.Errorf(failure.BadInput, "%s: %s without %s", params, paramGiven(offset, byteSize), ParamRegion)
	case byteSize == nil:
		return Ref{}, false, failure.Errorf(failure.BadInput, "%s.%s names a region but %s is missing", params, ParamRegion, ParamByteSize)
	case *region == "":
		return Ref{}, false, failure.Errorf(failure.BadInput, "%s.%s is empty", params, ParamRegion)
	case *byteSize < 0:
		return Ref{}, false, failure.Errorf(failure.BadInput, "%s.%s is negative (%d)", params, ParamByteSize, *byteSize)
	case offset != nil && *offset < 0:
		return Ref{}, false, failure.Errorf(failure.BadInput, "%s.%s is negative (%d)", params, ParamOffset, *offset)
	}
	ref = Ref{Region: *region, ByteSize: uint64(*byteSize)}
	if offset != nil {
		ref.Offset = uint64(*offset)
	}
	return ref, true, nil
}

func paramGiven(offset, byteSize *int64) string {
	if byteSize != nil {
		return ParamByteSize
	}
	return ParamOffset
}

// Hold acquires the region ref names for one request and checks that the
// range lies inside it; field names the tensor in errors (for example
// "inputs[0]"). A nil Registry stands for shared memory turned off:
// Unsupported. The caller releases the lease.
func (r *Registry) Hold(field string, ref Ref) (*Lease, error) {
	if r == nil {
		return nil, failure.Errorf(failure.Unsupported, "%s.parameters.%s: system shared memory is not enabled on this host", field, ParamRegion)
	}
	l, err := r.Acquire(ref.Region)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", field, err)
	}
	if size := l.ByteSize(); ref.ByteSize > size || ref.Offset > size-ref.ByteSize {
		l.Release()
		return nil, failure.Errorf(failure.BadInput, "%s.parameters: %s %d + %s %d run past the end of region %q (%d bytes)",
			field, ParamOffset, ref.Offset, ParamByteSize, ref.ByteSize, ref.Region, size)
	}
	return l, nil
}
