package contracts

import (
	"maps"
	"unsafe"
)

// Object is a free-form JSON object (a Dict[str, Any] field) whose members
// are decoded only when asked for. Decoding a model checks the object's
// syntax (and that every number fits a float64, as the reference
// requires) in its single pass and keeps the object's JSON text without
// building any values; Get and Map decode members on demand, into the
// types the package uses for free-form values: map[string]any, []any,
// string, bool, nil, int64 for integer literals (json.Number beyond
// int64) and float64 for other numbers.
//
// A key that occurs more than once resolves as Python's json module
// resolves it: the last occurrence wins. The JSON text is written back
// as it arrived (key order, spelling of numbers and escapes kept), so a
// decoded object round-trips byte for byte.
//
// An Object built in Go (ObjectFrom, Set) holds a map instead; it is
// written with its keys sorted, and Validate reports values that cannot
// be encoded as JSON. The zero value is the empty object.
type Object struct {
	raw string         // validated JSON object text from a decode; "" when empty or when m is set
	m   map[string]any // members set in Go; non-nil means it is authoritative
}

// ObjectFrom returns an Object holding a copy of m (the map, not the
// values it refers to).
func ObjectFrom(m map[string]any) Object {
	if m == nil {
		return Object{m: map[string]any{}}
	}
	return Object{m: maps.Clone(m)}
}

// Len returns the number of distinct keys.
func (o Object) Len() int {
	if o.m != nil {
		return len(o.m)
	}
	if o.raw == "" {
		return 0
	}
	keys := map[string]struct{}{}
	o.each(func(k []byte, _ int) bool {
		keys[string(k)] = struct{}{}
		return true
	})
	return len(keys)
}

// Get decodes and returns the value of key (the last one when the key is
// repeated) and whether the object has it.
func (o Object) Get(key string) (any, bool) {
	if o.m != nil {
		v, ok := o.m[key]
		return v, ok
	}
	if o.raw == "" {
		return nil, false
	}
	at := -1
	o.each(func(k []byte, pos int) bool {
		if string(k) == key {
			at = pos
		}
		return true
	})
	if at < 0 {
		return nil, false
	}
	d := newDecoder("Object", rawBytes(o.raw))
	d.pos = at
	v, _ := d.anyValue("", 1)
	return v, true
}

// Map decodes every member into a new map; changing the map does not
// change o.
func (o Object) Map() map[string]any {
	if o.m != nil {
		return maps.Clone(o.m)
	}
	if o.raw == "" {
		return map[string]any{}
	}
	d := newDecoder("Object", rawBytes(o.raw))
	v, ok := d.anyValue("", 0)
	if !ok {
		// Unreachable: raw was checked when it was decoded.
		return map[string]any{}
	}
	return v.(map[string]any)
}

// Set sets key to v. A decoded object is decoded into a map first, and
// is from then on written with its keys sorted.
func (o *Object) Set(key string, v any) {
	if o.m == nil {
		o.m = o.Map()
		o.raw = ""
	}
	o.m[key] = v
}

// AppendJSON appends the object's JSON encoding to dst: the text it was
// decoded from, or the map built in Go with its keys sorted (values that
// cannot be encoded are written as null; Validate reports them).
func (o Object) AppendJSON(dst []byte) []byte {
	if o.m != nil {
		return appendAnyMap(dst, o.m)
	}
	if o.raw == "" {
		return append(dst, '{', '}')
	}
	return append(dst, o.raw...)
}

// MarshalJSON encodes o as AppendJSON does; it fails if a value set in Go
// cannot be encoded as JSON (a non-finite float, a channel).
func (o Object) MarshalJSON() ([]byte, error) {
	errs := fieldErrors{model: "Object"}
	o.check(&errs, "", "")
	if err := errs.err(); err != nil {
		return nil, err
	}
	return o.AppendJSON(nil), nil
}

// UnmarshalJSON checks that data is one JSON object whose numbers fit a
// float64 and keeps its text; the JSON literal null leaves o unchanged,
// as encoding/json's convention asks. On error o is left unchanged.
func (o *Object) UnmarshalJSON(data []byte) error {
	d := newDecoder("Object", data)
	if d.peek() == 'n' {
		d.matchLit("null")
		return d.finish()
	}
	v, _ := d.object("", "")
	if err := d.finish(); err != nil {
		return err
	}
	*o = v
	return nil
}

// check reports values set in Go that cannot be encoded; a decoded
// object was checked while it was decoded.
func (o *Object) check(errs *fieldErrors, p, name string) {
	if o.m != nil {
		checkAnyMap(errs, p, name, o.m)
	}
}

// each calls f with every key of the decoded object (valid only during
// the call) and the offset of its value in o.raw, until f returns false.
func (o Object) each(f func(key []byte, pos int) bool) {
	d := newDecoder("Object", rawBytes(o.raw))
	if d.peek() != '{' {
		return
	}
	d.pos++
	first := true
	for {
		k, ok := d.nextKey(&first)
		if !ok {
			return
		}
		if !f(k, d.pos) || !d.skipValue(1) {
			return
		}
	}
}

// rawBytes views s as bytes for the decoder, which only reads its input.
func rawBytes(s string) []byte {
	if s == "" {
		return nil
	}
	return unsafe.Slice(unsafe.StringData(s), len(s))
}

// object decodes a free-form object field into an Object in the
// decode's single pass: it checks the syntax, records a number beyond
// the float64 range at join(p, name) as anyMap does, and keeps the text
// (copied to the decode's string arena) without building values.
func (d *decoder) object(p, name string) (Object, bool) {
	if d.peek() != '{' {
		d.typeError(join(p, name), "input should be a valid dictionary")
		return Object{}, false
	}
	start := d.pos
	if d.pos+1 < len(d.data) && d.data[d.pos+1] == '}' { // {}: the zero Object
		d.pos += 2
		return Object{}, true
	}
	n := len(d.errs.fields)
	if !d.scanFree(0) {
		return Object{}, false
	}
	if len(d.errs.fields) > n {
		for i := n; i < len(d.errs.fields); i++ {
			d.errs.fields[i].Path = join(p, name)
		}
		return Object{}, true
	}
	return Object{raw: d.text(d.data[start:d.pos])}, true
}

// scanFree consumes a free-form value, checking its syntax and, like
// anyValue, that every number that is not an integer literal is within
// the float64 range (an error recorded at the empty path; the caller
// places it).
func (d *decoder) scanFree(depth int) bool { return d.scanValue(depth, true) }
