package kernels

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"math/bits"
	"sort"
	"strings"
	"unicode/utf8"
)

// Limits applied to every safetensors file before anything is allocated from
// its declared sizes. Our kernels are small graphs; the limits are far below
// what safetensors itself allows (100 MB header) on purpose.
const (
	// MaxHeaderBytes bounds the JSON header.
	MaxHeaderBytes = 16 << 20
	// MaxTensors bounds the number of tensors in one file.
	MaxTensors = 4096
	// MaxRank bounds the number of dimensions of one tensor.
	MaxRank = 16
)

// ErrMalformed is wrapped by every error that rejects a safetensors file or a
// module graph because its content is wrong (as opposed to I/O failures).
var ErrMalformed = errors.New("malformed kernel file")

// DType is a safetensors element type.
type DType string

// Element types the executor reads. Integer types are accepted by the reader
// and ignored by the kernel loader (num_batches_tracked).
const (
	F64  DType = "F64"
	F32  DType = "F32"
	F16  DType = "F16"
	BF16 DType = "BF16"
	I64  DType = "I64"
	I32  DType = "I32"
	I16  DType = "I16"
	I8   DType = "I8"
	U64  DType = "U64"
	U32  DType = "U32"
	U16  DType = "U16"
	U8   DType = "U8"
	Bool DType = "BOOL"
)

// Size returns the size of one element in bytes, or 0 for an unknown dtype.
func (d DType) Size() int {
	switch d {
	case F64, I64, U64:
		return 8
	case F32, I32, U32:
		return 4
	case F16, BF16, I16, U16:
		return 2
	case I8, U8, Bool:
		return 1
	}
	return 0
}

// IsFloat reports whether the dtype is one of the float types the executor
// converts to float32.
func (d DType) IsFloat() bool {
	return d == F32 || d == F16 || d == BF16 || d == F64
}

// Tensor is one named tensor of a safetensors file. Data aliases the buffer
// the file was read from; it is never copied by the reader.
type Tensor struct {
	Name  string
	DType DType
	Shape []int
	Data  []byte
}

// NumElements returns the product of the shape (1 for a scalar).
func (t Tensor) NumElements() int {
	n := 1
	for _, d := range t.Shape {
		n *= d
	}
	return n
}

// Float32s converts the tensor's elements to float32: F16 and BF16 widen
// exactly, F64 rounds to nearest. It fails for non-float dtypes.
func (t Tensor) Float32s() ([]float32, error) {
	if !t.DType.IsFloat() {
		return nil, fmt.Errorf("tensor %s: dtype %s is not a float type", quote(t.Name), t.DType)
	}
	if len(t.Data) != t.NumElements()*t.DType.Size() {
		return nil, fmt.Errorf("tensor %s: %d data bytes for %d elements of %s", quote(t.Name), len(t.Data), t.NumElements(), t.DType)
	}
	out := make([]float32, t.NumElements())
	b := t.Data
	switch t.DType {
	case F32:
		for i := range out {
			out[i] = math.Float32frombits(binary.LittleEndian.Uint32(b[4*i:]))
		}
	case F64:
		for i := range out {
			out[i] = float32(math.Float64frombits(binary.LittleEndian.Uint64(b[8*i:])))
		}
	case F16:
		for i := range out {
			out[i] = halfToFloat32(binary.LittleEndian.Uint16(b[2*i:]))
		}
	case BF16:
		for i := range out {
			out[i] = math.Float32frombits(uint32(binary.LittleEndian.Uint16(b[2*i:])) << 16)
		}
	}
	return out, nil
}

// Float64s converts the tensor's float elements to float64 exactly.
func (t Tensor) Float64s() ([]float64, error) {
	if t.DType == F64 {
		if len(t.Data) != t.NumElements()*8 {
			return nil, fmt.Errorf("tensor %s: %d data bytes for %d elements of F64", quote(t.Name), len(t.Data), t.NumElements())
		}
		out := make([]float64, t.NumElements())
		for i := range out {
			out[i] = math.Float64frombits(binary.LittleEndian.Uint64(t.Data[8*i:]))
		}
		return out, nil
	}
	f, err := t.Float32s()
	if err != nil {
		return nil, err
	}
	out := make([]float64, len(f))
	for i, v := range f {
		out[i] = float64(v)
	}
	return out, nil
}

// halfToFloat32 widens an IEEE 754 binary16 value exactly.
func halfToFloat32(h uint16) float32 {
	sign := uint32(h>>15) << 31
	exp := uint32(h>>10) & 0x1f
	mant := uint32(h) & 0x3ff
	switch {
	case exp == 0x1f: // Inf or NaN
		return math.Float32frombits(sign | 0xff<<23 | mant<<13)
	case exp != 0: // normal
		return math.Float32frombits(sign | (exp+112)<<23 | mant<<13)
	case mant == 0: // signed zero
		return math.Float32frombits(sign)
	}
	// Subnormal half: value = mant × 2^-24, exact in float32.
	v := float32(mant) * (1.0 / (1 << 24))
	if sign != 0 {
		v = -v
	}
	return v
}

// File is a parsed safetensors file. Tensors are in file (offset) order.
type File struct {
	Tensors  []Tensor
	Metadata map[string]string
}

// Tensor returns the named tensor.
func (f *File) Tensor(name string) (Tensor, bool) {
	for _, t := range f.Tensors {
		if t.Name == name {
			return t, true
		}
	}
	return Tensor{}, false
}

// tensorHeader is one tensor entry of the JSON header.
type tensorHeader struct {
	DType       *string   `json:"dtype"`
	Shape       *[]int64  `json:"shape"`
	DataOffsets *[]uint64 `json:"data_offsets"`
}

// ParseSafetensors validates and parses a whole safetensors file held in
// memory. Every size and offset in the header is checked against len(data)
// before anything is allocated from it; tensor data aliases data. A PyTorch
// or TorchScript file, a pickle or a zip is refused first with a
// *ForeignFileError naming what it is.
func ParseSafetensors(data []byte) (*File, error) {
	if f := sniffForeign(data); f != 0 {
		return nil, &ForeignFileError{Format: f}
	}
	if len(data) < 8 {
		return nil, fmt.Errorf("%w: file is %d bytes, shorter than the 8-byte header length", ErrMalformed, len(data))
	}
	n := binary.LittleEndian.Uint64(data[:8])
	if n > MaxHeaderBytes {
		// The number is the file's first 8 bytes: it is not quoted.
		return nil, fmt.Errorf("%w: the header length at byte 0 exceeds the limit of %d bytes (not a safetensors file)", ErrMalformed, MaxHeaderBytes)
	}
	if n > uint64(len(data)-8) {
		return nil, fmt.Errorf("%w: header length %d at byte 0 runs past the end of the %d-byte file", ErrMalformed, n, len(data))
	}
	if n < 2 {
		return nil, fmt.Errorf("%w: header length %d is too short for a JSON object", ErrMalformed, n)
	}
	header := data[8 : 8+n]
	body := data[8+n:]
	if !utf8.Valid(header) {
		return nil, fmt.Errorf("%w: header (bytes 8..%d) is not valid UTF-8", ErrMalformed, 8+n)
	}

	f := &File{}
	dec := json.NewDecoder(bytes.NewReader(header))
	dec.UseNumber()
	if err := expectDelim(dec, '{'); err != nil {
		return nil, fmt.Errorf("%w: header: %v", ErrMalformed, err)
	}
	seen := make(map[string]bool)
	type span struct {
		begin, end uint64
		idx        int
	}
	var spans []span
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return nil, fmt.Errorf("%w: header at byte %d: %s", ErrMalformed, 8+dec.InputOffset(), jsonError(err))
		}
		key, _ := tok.(string)
		if seen[key] {
			return nil, fmt.Errorf("%w: header: duplicate key %s", ErrMalformed, quote(key))
		}
		seen[key] = true
		if key == "__metadata__" {
			md, err := decodeStringMap(dec)
			if err != nil {
				return nil, fmt.Errorf("%w: header: __metadata__: %v", ErrMalformed, err)
			}
			f.Metadata = md
			continue
		}
		if len(f.Tensors) >= MaxTensors {
			return nil, fmt.Errorf("%w: header declares more than %d tensors", ErrMalformed, MaxTensors)
		}
		t, begin, end, err := decodeTensorHeader(dec, key, uint64(len(body)))
		if err != nil {
			return nil, fmt.Errorf("%w: %v", ErrMalformed, err)
		}
		spans = append(spans, span{begin, end, len(f.Tensors)})
		f.Tensors = append(f.Tensors, t)
	}
	if err := expectDelim(dec, '}'); err != nil {
		return nil, fmt.Errorf("%w: header: %v", ErrMalformed, err)
	}
	// Only padding may follow the object.
	rest := header[dec.InputOffset():]
	if len(bytes.TrimLeft(rest, " \t\r\n")) != 0 {
		return nil, fmt.Errorf("%w: header: unexpected content after the JSON object at byte %d", ErrMalformed, 8+dec.InputOffset())
	}

	// Contiguity: sorted by begin, each tensor starts where the previous ended,
	// the first at 0 and the last at the end of the file (no trailing bytes).
	sort.Slice(spans, func(i, j int) bool {
		if spans[i].begin != spans[j].begin {
			return spans[i].begin < spans[j].begin
		}
		return spans[i].end < spans[j].end
	})
	var pos uint64
	for _, s := range spans {
		name := f.Tensors[s.idx].Name
		if s.begin < pos {
			return nil, fmt.Errorf("%w: tensor %s: data_offsets [%d, %d] overlap the previous tensor ending at %d", ErrMalformed, quote(name), s.begin, s.end, pos)
		}
		if s.begin > pos {
			return nil, fmt.Errorf("%w: tensor %s: data_offsets begin %d leaves a gap after byte %d (tensors must be contiguous)", ErrMalformed, quote(name), s.begin, pos)
		}
		pos = s.end
	}
	if pos != uint64(len(body)) {
		return nil, fmt.Errorf("%w: tensor data ends at offset %d but the buffer holds %d bytes (file offset %d)", ErrMalformed, pos, len(body), 8+n+pos)
	}
	ordered := make([]Tensor, len(spans))
	for i, s := range spans {
		t := f.Tensors[s.idx]
		t.Data = body[s.begin:s.end:s.end]
		ordered[i] = t
	}
	f.Tensors = ordered
	return f, nil
}

func expectDelim(dec *json.Decoder, want json.Delim) error {
	tok, err := dec.Token()
	if err != nil {
		return fmt.Errorf("at byte %d: %s", 8+dec.InputOffset(), jsonError(err))
	}
	if d, ok := tok.(json.Delim); !ok || d != want {
		return fmt.Errorf("at byte %d: expected %q, found %s", 8+dec.InputOffset(), string(want), jsonKind(tok))
	}
	return nil
}

// decodeStringMap decodes an object whose values must all be strings.
func decodeStringMap(dec *json.Decoder) (map[string]string, error) {
	if err := expectDelim(dec, '{'); err != nil {
		return nil, err
	}
	md := make(map[string]string)
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return nil, fmt.Errorf("at byte %d: %s", 8+dec.InputOffset(), jsonError(err))
		}
		key, _ := tok.(string)
		if _, dup := md[key]; dup {
			return nil, fmt.Errorf("duplicate key %s", quote(key))
		}
		tok, err = dec.Token()
		if err != nil {
			return nil, fmt.Errorf("key %s at byte %d: %s", quote(key), 8+dec.InputOffset(), jsonError(err))
		}
		s, ok := tok.(string)
		if !ok {
			return nil, fmt.Errorf("key %s: value is %s, metadata values must be strings", quote(key), jsonKind(tok))
		}
		md[key] = s
	}
	if err := expectDelim(dec, '}'); err != nil {
		return nil, err
	}
	return md, nil
}

func jsonKind(tok json.Token) string {
	switch v := tok.(type) {
	case json.Delim:
		if v == '{' {
			return "an object"
		}
		return "an array"
	case json.Number:
		return "a number"
	case bool:
		return "a boolean"
	case nil:
		return "null"
	}
	return fmt.Sprintf("%T", tok)
}

func decodeTensorHeader(dec *json.Decoder, name string, bodyLen uint64) (Tensor, uint64, uint64, error) {
	var th tensorHeader
	var raw json.RawMessage
	if err := dec.Decode(&raw); err != nil {
		return Tensor{}, 0, 0, fmt.Errorf("tensor %s: %s", quote(name), jsonError(err))
	}
	inner := json.NewDecoder(bytes.NewReader(raw))
	inner.DisallowUnknownFields()
	if err := inner.Decode(&th); err != nil {
		return Tensor{}, 0, 0, fmt.Errorf("tensor %s: %s", quote(name), jsonError(err))
	}
	switch {
	case th.DType == nil:
		return Tensor{}, 0, 0, fmt.Errorf("tensor %s: missing field dtype", quote(name))
	case th.Shape == nil:
		return Tensor{}, 0, 0, fmt.Errorf("tensor %s: missing field shape", quote(name))
	case th.DataOffsets == nil:
		return Tensor{}, 0, 0, fmt.Errorf("tensor %s: missing field data_offsets", quote(name))
	}
	dt := DType(*th.DType)
	if dt.Size() == 0 {
		return Tensor{}, 0, 0, fmt.Errorf("tensor %s: field dtype: unsupported dtype %s (want F32, F16, BF16, F64 or an integer type)", quote(name), quote(*th.DType))
	}
	shape := *th.Shape
	if len(shape) > MaxRank {
		return Tensor{}, 0, 0, fmt.Errorf("tensor %s: field shape: rank %d exceeds %d", quote(name), len(shape), MaxRank)
	}
	count := uint64(1)
	for i, d := range shape {
		if d < 0 {
			return Tensor{}, 0, 0, fmt.Errorf("tensor %s: field shape[%d]: negative dimension %d", quote(name), i, d)
		}
		hi, lo := bits.Mul64(count, uint64(d))
		if hi != 0 || lo > math.MaxInt32*uint64(256) {
			return Tensor{}, 0, 0, fmt.Errorf("tensor %s: field shape %v: element count overflows", quote(name), shape)
		}
		count = lo
	}
	hi, nbytes := bits.Mul64(count, uint64(dt.Size()))
	if hi != 0 {
		return Tensor{}, 0, 0, fmt.Errorf("tensor %s: field shape %v: byte size overflows", quote(name), shape)
	}
	offs := *th.DataOffsets
	if len(offs) != 2 {
		return Tensor{}, 0, 0, fmt.Errorf("tensor %s: field data_offsets: want [begin, end], got %d values", quote(name), len(offs))
	}
	begin, end := offs[0], offs[1]
	if begin > end {
		return Tensor{}, 0, 0, fmt.Errorf("tensor %s: field data_offsets: begin %d is after end %d", quote(name), begin, end)
	}
	if end > bodyLen {
		return Tensor{}, 0, 0, fmt.Errorf("tensor %s: field data_offsets: end %d is outside the %d-byte data buffer", quote(name), end, bodyLen)
	}
	if end-begin != nbytes {
		return Tensor{}, 0, 0, fmt.Errorf("tensor %s: field data_offsets: [%d, %d] spans %d bytes, shape %v of %s needs %d", quote(name), begin, end, end-begin, shape, dt, nbytes)
	}
	ishape := make([]int, len(shape))
	for i, d := range shape {
		ishape[i] = int(d)
	}
	return Tensor{Name: name, DType: dt, Shape: ishape}, begin, end, nil
}

// WriteSafetensors writes tensors and metadata as one safetensors file.
// Tensors are laid out in the order given; the header is padded with spaces
// to a multiple of 8 bytes so that the data is aligned.
func WriteSafetensors(w io.Writer, tensors []Tensor, metadata map[string]string) error {
	var hdr bytes.Buffer
	hdr.WriteByte('{')
	first := true
	if len(metadata) > 0 {
		b, err := json.Marshal(metadata)
		if err != nil {
			return fmt.Errorf("encode metadata: %w", err)
		}
		hdr.WriteString(`"__metadata__":`)
		hdr.Write(b)
		first = false
	}
	names := make(map[string]bool, len(tensors))
	var off uint64
	for _, t := range tensors {
		if t.Name == "" || t.Name == "__metadata__" || names[t.Name] {
			return fmt.Errorf("tensor name %q is empty, reserved or duplicated", t.Name)
		}
		names[t.Name] = true
		if t.DType.Size() == 0 {
			return fmt.Errorf("tensor %q: unsupported dtype %q", t.Name, t.DType)
		}
		if want := t.NumElements() * t.DType.Size(); want != len(t.Data) {
			return fmt.Errorf("tensor %q: %d data bytes, shape %v of %s needs %d", t.Name, len(t.Data), t.Shape, t.DType, want)
		}
		if !first {
			hdr.WriteByte(',')
		}
		first = false
		name, _ := json.Marshal(t.Name)
		shape := t.Shape
		if shape == nil {
			shape = []int{}
		}
		sb, _ := json.Marshal(shape)
		fmt.Fprintf(&hdr, `%s:{"dtype":"%s","shape":%s,"data_offsets":[%d,%d]}`, name, t.DType, sb, off, off+uint64(len(t.Data)))
		off += uint64(len(t.Data))
	}
	hdr.WriteByte('}')
	if pad := (8 - hdr.Len()%8) % 8; pad > 0 {
		hdr.WriteString(strings.Repeat(" ", pad))
	}
	var lenBuf [8]byte
	binary.LittleEndian.PutUint64(lenBuf[:], uint64(hdr.Len()))
	if _, err := w.Write(lenBuf[:]); err != nil {
		return err
	}
	if _, err := w.Write(hdr.Bytes()); err != nil {
		return err
	}
	for _, t := range tensors {
		if _, err := w.Write(t.Data); err != nil {
			return err
		}
	}
	return nil
}

// F32Tensor builds an F32 tensor from values (copied, little-endian).
func F32Tensor(name string, shape []int, values []float32) Tensor {
	b := make([]byte, 4*len(values))
	for i, v := range values {
		binary.LittleEndian.PutUint32(b[4*i:], math.Float32bits(v))
	}
	return Tensor{Name: name, DType: F32, Shape: append([]int(nil), shape...), Data: b}
}
