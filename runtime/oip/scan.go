package oip

import (
	"strconv"
)

// scanInferRequest is the fast path of decodeInferRequest: one pass over
// the JSON part of a request that fills the same inferRequest
// json.Unmarshal would, for the plain documents clients send. It answers
// false, and the caller takes the slow path (checkJSONDepth, then
// json.Unmarshal, whose errors are the ones clients see), on anything it
// does not handle exactly as encoding/json does: a document nested deeper
// than maxDepth, an unknown or repeated key, a key in other case, null, a
// string with an escape, a control character or a byte beyond ASCII, a
// number an integer field cannot hold, classification parameters, and
// every malformed document. The tensor data arrays are validated as JSON
// (arrays of numbers) and kept as views of b, not copies: decodeJSONData
// parses them once the shape is known.
func scanInferRequest(b []byte, maxDepth int) (inferRequest, bool) {
	s := scanner{b: b, maxDepth: maxDepth}
	var req inferRequest
	if !s.object(s.topField(&req)) {
		return inferRequest{}, false
	}
	s.ws()
	if s.i != len(s.b) {
		return inferRequest{}, false
	}
	return req, true
}

// scanner is a position in a JSON document and the nesting depth there.
type scanner struct {
	b        []byte
	i        int
	depth    int
	maxDepth int
}

func (s *scanner) ws() {
	for s.i < len(s.b) {
		switch s.b[s.i] {
		case ' ', '\t', '\n', '\r':
			s.i++
		default:
			return
		}
	}
}

// consume skips white space and then c, if c is next.
func (s *scanner) consume(c byte) bool {
	s.ws()
	if s.i < len(s.b) && s.b[s.i] == c {
		s.i++
		return true
	}
	return false
}

// open enters an object or array at c, counting its depth.
func (s *scanner) open(c byte) bool {
	if !s.consume(c) {
		return false
	}
	s.depth++
	return s.depth <= s.maxDepth
}

// object reads an object whose members field reads, given each key and
// its index among the keys field knows (-1 for none). A key read twice is
// refused, as encoding/json would let the last one win.
func (s *scanner) object(field func(key string) (int, bool)) bool {
	if !s.open('{') {
		return false
	}
	var seen uint32
	if s.consume('}') {
		s.depth--
		return true
	}
	for {
		key, ok := s.str()
		if !ok || !s.consume(':') {
			return false
		}
		k, ok := field(key)
		if !ok || k < 0 || k >= 32 || seen&(1<<k) != 0 {
			return false
		}
		seen |= 1 << k
		if s.consume('}') {
			s.depth--
			return true
		}
		if !s.consume(',') {
			return false
		}
	}
}

// array reads an array whose elements elem reads.
func (s *scanner) array(elem func() bool) bool {
	if !s.open('[') {
		return false
	}
	if s.consume(']') {
		s.depth--
		return true
	}
	for {
		if !elem() {
			return false
		}
		if s.consume(']') {
			s.depth--
			return true
		}
		if !s.consume(',') {
			return false
		}
	}
}

// str reads a string of printable ASCII without escapes.
func (s *scanner) str() (string, bool) {
	if !s.consume('"') {
		return "", false
	}
	start := s.i
	for ; s.i < len(s.b); s.i++ {
		switch c := s.b[s.i]; {
		case c == '"':
			v := string(s.b[start:s.i])
			s.i++
			return v, true
		case c < 0x20 || c >= 0x80 || c == '\\':
			return "", false
		}
	}
	return "", false
}

func (s *scanner) strPtr(p **string) bool {
	v, ok := s.str()
	if ok {
		*p = &v
	}
	return ok
}

func (s *scanner) boolPtr(p **bool) bool {
	s.ws()
	var v bool
	switch rest := s.b[s.i:]; {
	case len(rest) >= 4 && string(rest[:4]) == "true":
		v, s.i = true, s.i+4
	case len(rest) >= 5 && string(rest[:5]) == "false":
		v, s.i = false, s.i+5
	default:
		return false
	}
	*p = &v
	return true
}

// number reads a JSON number and says whether it is an integer (no
// fraction, no exponent).
func (s *scanner) number() (lit []byte, integer, ok bool) {
	s.ws()
	start, b := s.i, s.b
	i := s.i
	if i < len(b) && b[i] == '-' {
		i++
	}
	switch {
	case i < len(b) && b[i] == '0':
		i++
	case i < len(b) && b[i] >= '1' && b[i] <= '9':
		for i < len(b) && b[i] >= '0' && b[i] <= '9' {
			i++
		}
	default:
		return nil, false, false
	}
	integer = true
	if i < len(b) && b[i] == '.' {
		integer = false
		i++
		d := i
		for i < len(b) && b[i] >= '0' && b[i] <= '9' {
			i++
		}
		if i == d {
			return nil, false, false
		}
	}
	if i < len(b) && (b[i] == 'e' || b[i] == 'E') {
		integer = false
		i++
		if i < len(b) && (b[i] == '+' || b[i] == '-') {
			i++
		}
		d := i
		for i < len(b) && b[i] >= '0' && b[i] <= '9' {
			i++
		}
		if i == d {
			return nil, false, false
		}
	}
	s.i = i
	return b[start:i], integer, true
}

func (s *scanner) int64() (int64, bool) {
	lit, integer, ok := s.number()
	if !ok || !integer {
		return 0, false
	}
	v, err := strconv.ParseInt(string(lit), 10, 64)
	return v, err == nil
}

func (s *scanner) int64Ptr(p **int64) bool {
	v, ok := s.int64()
	if ok {
		*p = &v
	}
	return ok
}

// numbers reads an array of numbers, nested arrays of them allowed, and
// answers its bytes.
func (s *scanner) numbers() ([]byte, bool) {
	s.ws()
	start := s.i
	var elem func() bool
	elem = func() bool {
		s.ws()
		if s.i < len(s.b) && s.b[s.i] == '[' {
			return s.array(elem)
		}
		_, _, ok := s.number()
		return ok
	}
	if s.i >= len(s.b) || s.b[s.i] != '[' || !s.array(elem) {
		return nil, false
	}
	return s.b[start:s.i], true
}

// topField reads a member of the request object.
func (s *scanner) topField(req *inferRequest) func(string) (int, bool) {
	return func(key string) (int, bool) {
		switch key {
		case "id":
			v, ok := s.str()
			req.ID = v
			return 0, ok
		case "parameters":
			p := &req.Parameters
			return 1, s.object(func(key string) (int, bool) {
				switch key {
				case "binary_data_output":
					return 0, s.boolPtr(&p.BinaryDataOutput)
				case "keep_forward":
					return 1, s.boolPtr(&p.KeepForward)
				case "forward_id":
					return 2, s.strPtr(&p.ForwardID)
				case "retain_forward":
					return 3, s.boolPtr(&p.RetainForward)
				}
				return -1, false
			})
		case "inputs":
			req.Inputs = []requestInput{}
			return 2, s.array(func() bool {
				req.Inputs = append(req.Inputs, requestInput{})
				return s.object(s.inputField(&req.Inputs[len(req.Inputs)-1]))
			})
		case "outputs":
			req.Outputs = []requestOutput{}
			return 3, s.array(func() bool {
				req.Outputs = append(req.Outputs, requestOutput{})
				return s.object(s.outputField(&req.Outputs[len(req.Outputs)-1]))
			})
		}
		return -1, false
	}
}

func (s *scanner) inputField(in *requestInput) func(string) (int, bool) {
	return func(key string) (int, bool) {
		switch key {
		case "name":
			v, ok := s.str()
			in.Name = v
			return 0, ok
		case "datatype":
			v, ok := s.str()
			in.Datatype = v
			return 1, ok
		case "shape":
			in.Shape = []int64{}
			return 2, s.array(func() bool {
				v, ok := s.int64()
				in.Shape = append(in.Shape, v)
				return ok
			})
		case "data":
			v, ok := s.numbers()
			in.Data = v
			return 3, ok
		case "parameters":
			p := &in.Parameters
			return 4, s.object(func(key string) (int, bool) {
				if key == "binary_data_size" {
					return 0, s.int64Ptr(&p.BinaryDataSize)
				}
				return s.shmField(&p.shmParams, key, 1)
			})
		}
		return -1, false
	}
}

func (s *scanner) outputField(out *requestOutput) func(string) (int, bool) {
	return func(key string) (int, bool) {
		switch key {
		case "name":
			v, ok := s.str()
			out.Name = v
			return 0, ok
		case "parameters":
			p := &out.Parameters
			return 1, s.object(func(key string) (int, bool) {
				if key == "binary_data" {
					return 0, s.boolPtr(&p.BinaryData)
				}
				return s.shmField(&p.shmParams, key, 1)
			})
		}
		return -1, false
	}
}

// shmField reads one shared memory parameter; its index among the
// object's keys is first and the two after.
func (s *scanner) shmField(p *shmParams, key string, first int) (int, bool) {
	switch key {
	case "shared_memory_region":
		return first, s.strPtr(&p.SharedMemoryRegion)
	case "shared_memory_offset":
		return first + 1, s.int64Ptr(&p.SharedMemoryOffset)
	case "shared_memory_byte_size":
		return first + 2, s.int64Ptr(&p.SharedMemoryByteSize)
	}
	return -1, false
}
