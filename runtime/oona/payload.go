package oona

import (
	"encoding/json"
	"fmt"
	"math"
	"slices"
	"strconv"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/esper/kasmina-host/contracts"
)

// encodePayload writes a payload map as compact JSON with sorted keys, the
// same text encoding/json produces minus HTML escaping, without reflection
// for the value types payloads are built from. Other types go through
// encoding/json. NaN and infinities are refused with the key named: the
// Python side's Pydantic models would refuse them too.
func encodePayload(p map[string]any) (string, error) {
	b, err := appendJSONObject(make([]byte, 0, 512), p, topKeys(p))
	if err != nil {
		return "", err
	}
	return string(b), nil
}

func appendJSONValue(b []byte, v any) ([]byte, error) {
	switch v := v.(type) {
	case nil:
		return append(b, "null"...), nil
	case string:
		return appendJSONString(b, v), nil
	case bool:
		return strconv.AppendBool(b, v), nil
	case float64:
		return appendFloat(b, v, 64)
	case float32:
		return appendFloat(b, float64(v), 32)
	case int:
		return strconv.AppendInt(b, int64(v), 10), nil
	case int64:
		return strconv.AppendInt(b, v, 10), nil
	case int32:
		return strconv.AppendInt(b, int64(v), 10), nil
	case uint:
		return strconv.AppendUint(b, uint64(v), 10), nil
	case uint64:
		return strconv.AppendUint(b, v, 10), nil
	case uint32:
		return strconv.AppendUint(b, uint64(v), 10), nil
	case json.Number:
		if !json.Valid([]byte(v)) || v == "" {
			return b, &pathError{err: fmt.Errorf("%q is not a JSON number", string(v))}
		}
		return append(b, v...), nil
	case map[string]any:
		return appendJSONObject(b, v, sortedKeys(v))
	case []any:
		b = append(b, '[')
		for i, e := range v {
			if i > 0 {
				b = append(b, ',')
			}
			var err error
			if b, err = appendJSONValue(b, e); err != nil {
				return b, prependPath(err, strconv.Itoa(i))
			}
		}
		return append(b, ']'), nil
	case []float64:
		b = append(b, '[')
		for i, e := range v {
			if i > 0 {
				b = append(b, ',')
			}
			var err error
			if b, err = appendFloat(b, e, 64); err != nil {
				return b, prependPath(err, strconv.Itoa(i))
			}
		}
		return append(b, ']'), nil
	case []int:
		b = append(b, '[')
		for i, e := range v {
			if i > 0 {
				b = append(b, ',')
			}
			b = strconv.AppendInt(b, int64(e), 10)
		}
		return append(b, ']'), nil
	case []string:
		b = append(b, '[')
		for i, e := range v {
			if i > 0 {
				b = append(b, ',')
			}
			b = appendJSONString(b, e)
		}
		return append(b, ']'), nil
	default:
		j, err := json.Marshal(v)
		if err != nil {
			return b, &pathError{err: err}
		}
		return append(b, j...), nil
	}
}

func appendJSONObject(b []byte, v map[string]any, keys []string) ([]byte, error) {
	b = append(b, '{')
	for i, k := range keys {
		if i > 0 {
			b = append(b, ',')
		}
		b = appendJSONString(b, k)
		b = append(b, ':')
		var err error
		if b, err = appendJSONValue(b, v[k]); err != nil {
			return b, prependPath(err, k)
		}
	}
	return append(b, '}'), nil
}

func sortedKeys(v map[string]any) []string {
	keys := make([]string, 0, len(v))
	for k := range v {
		keys = append(keys, k)
	}
	sortStrings(keys)
	return keys
}

// lastTopKeys caches the sorted key set of the last top-level payload: a
// stream of health signals repeats the same keys, and checking that a map
// has exactly the cached keys is cheaper than collecting and sorting them.
var lastTopKeys atomic.Pointer[[]string]

func topKeys(v map[string]any) []string {
	if cached := lastTopKeys.Load(); cached != nil && len(*cached) == len(v) {
		hit := true
		for _, k := range *cached {
			if _, ok := v[k]; !ok {
				hit = false
				break
			}
		}
		if hit {
			return *cached
		}
	}
	keys := sortedKeys(v)
	lastTopKeys.Store(&keys)
	return keys
}

// sortStrings is an insertion sort: payload maps are small, and it beats
// the generic sort's overhead there.
func sortStrings(a []string) {
	if len(a) > 32 {
		slices.Sort(a)
		return
	}
	for i := 1; i < len(a); i++ {
		for j := i; j > 0 && a[j] < a[j-1]; j-- {
			a[j], a[j-1] = a[j-1], a[j]
		}
	}
}

// pathError is a payload encoding error with the path of the value,
// built while the recursion unwinds so that success costs nothing.
type pathError struct {
	path []string // innermost last after reversal in Error
	err  error
}

func (e *pathError) Error() string {
	p := "payload"
	for i := len(e.path) - 1; i >= 0; i-- {
		p += "." + e.path[i]
	}
	return p + ": " + e.err.Error()
}

func (e *pathError) Unwrap() error { return e.err }

func prependPath(err error, k string) error {
	if pe, ok := err.(*pathError); ok {
		pe.path = append(pe.path, k)
		return pe
	}
	return &pathError{path: []string{k}, err: err}
}

// appendFloat formats like encoding/json (shortest repr, exponent form
// outside [1e-6, 1e21)).
func appendFloat(b []byte, f float64, bits int) ([]byte, error) {
	if math.IsNaN(f) || math.IsInf(f, 0) {
		return b, &pathError{err: fmt.Errorf("%v is not representable in JSON", f)}
	}
	abs := math.Abs(f)
	format := byte('f')
	if abs != 0 {
		if bits == 64 && (abs < 1e-6 || abs >= 1e21) || bits == 32 && (float32(abs) < 1e-6 || float32(abs) >= 1e21) {
			format = 'e'
		}
	}
	b = strconv.AppendFloat(b, f, format, -1, bits)
	if format == 'e' {
		// clean up e-09 to e-9
		n := len(b)
		if n >= 4 && b[n-4] == 'e' && b[n-3] == '-' && b[n-2] == '0' {
			b[n-2] = b[n-1]
			b = b[:n-1]
		}
	}
	return b, nil
}

const hexDigits = "0123456789abcdef"

// appendJSONString quotes s as JSON; invalid UTF-8 becomes U+FFFD as in
// encoding/json. U+2028 and U+2029 are escaped, like encoding/json.
func appendJSONString(b []byte, s string) []byte {
	b = append(b, '"')
	start := 0
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			if c >= 0x20 && c != '"' && c != '\\' {
				i++
				continue
			}
			b = append(b, s[start:i]...)
			switch c {
			case '"', '\\':
				b = append(b, '\\', c)
			case '\n':
				b = append(b, '\\', 'n')
			case '\r':
				b = append(b, '\\', 'r')
			case '\t':
				b = append(b, '\\', 't')
			default:
				b = append(b, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xF])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			b = append(b, s[start:i]...)
			b = append(b, `\ufffd`...)
			i += size
			start = i
			continue
		}
		if r == '\u2028' || r == '\u2029' {
			b = append(b, s[start:i]...)
			b = append(b, '\\', 'u', '2', '0', '2', hexDigits[r&0xF])
			i += size
			start = i
			continue
		}
		i += size
	}
	b = append(b, s[start:]...)
	return append(b, '"')
}

// appendWireTimestamp writes t the way the contract's JSON encoding does
// (Python's datetime.isoformat() through Pydantic): microseconds when not
// zero, "Z" for UTC, "±HH:MM" offsets kept, no offset for naive values.
func appendWireTimestamp(b []byte, t time.Time) []byte {
	if contracts.IsNaive(t) {
		return t.AppendFormat(b, naiveLayout(t))
	}
	if t.Location() == time.UTC {
		return appendUTCTimestamp(b, t)
	}
	_, off := t.Zone()
	if off == 0 {
		b = t.AppendFormat(b, naiveLayout(t))
		return append(b, 'Z')
	}
	if off%60 != 0 {
		return t.AppendFormat(b, naiveLayout(t)+"-07:00:00")
	}
	return t.AppendFormat(b, naiveLayout(t)+"-07:00")
}

func naiveLayout(t time.Time) string {
	if t.Nanosecond()/1000 != 0 {
		return "2006-01-02T15:04:05.000000"
	}
	return "2006-01-02T15:04:05"
}

// appendUTCTimestamp is appendWireTimestamp for a UTC time (every message
// the host makes), digit by digit: Time.AppendFormat parses its layout on
// every call.
func appendUTCTimestamp(b []byte, t time.Time) []byte {
	y, mo, d := t.Date()
	h, mi, s := t.Clock()
	b = append(b, byte('0'+y/1000), byte('0'+y/100%10), byte('0'+y/10%10), byte('0'+y%10), '-')
	b = append2(b, int(mo), '-')
	b = append2(b, d, 'T')
	b = append2(b, h, ':')
	b = append2(b, mi, ':')
	b = append(b, byte('0'+s/10), byte('0'+s%10))
	if us := t.Nanosecond() / 1000; us != 0 {
		b = append(b, '.')
		for div := 100000; div > 0; div /= 10 {
			b = append(b, byte('0'+us/div%10))
		}
	}
	return append(b, 'Z')
}

// append2 writes v (0..99) as two digits followed by sep.
func append2(b []byte, v int, sep byte) []byte {
	return append(b, byte('0'+v/10), byte('0'+v%10), sep)
}
