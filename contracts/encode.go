package contracts

import (
	"encoding/json"
	"fmt"
	"math"
	"reflect"
	"slices"
	"strconv"
	"unicode/utf8"
)

// Metric is one named value of a Dict[str, float] field.
type Metric struct {
	Name  string
	Value float64
}

// Metrics is a Dict[str, float] that keeps insertion order, as Python
// dicts do: Blueprint.GetPerformanceSummary lists metrics in that order.
type Metrics []Metric

// Get returns the value named name.
func (m Metrics) Get(name string) (float64, bool) {
	for _, x := range m {
		if x.Name == name {
			return x.Value, true
		}
	}
	return 0, false
}

// Set replaces the value named name, or appends it.
func (m *Metrics) Set(name string, v float64) {
	for i := range *m {
		if (*m)[i].Name == name {
			(*m)[i].Value = v
			return
		}
	}
	*m = append(*m, Metric{Name: name, Value: v})
}

// Map returns the metrics as a plain map.
func (m Metrics) Map() map[string]float64 {
	out := make(map[string]float64, len(m))
	for _, x := range m {
		out[x.Name] = x.Value
	}
	return out
}

// MarshalJSON writes the metrics as a JSON object in order.
func (m Metrics) MarshalJSON() ([]byte, error) { return appendMetrics(nil, m), nil }

// UnmarshalJSON reads a JSON object of numbers, keeping key order.
func (m *Metrics) UnmarshalJSON(data []byte) error {
	d := newDecoder("Metrics", data)
	v, ok := d.metrics("", "", false)
	if err := d.finish(); err != nil {
		return err
	}
	if ok {
		*m = v
	}
	return nil
}

func checkMetrics(errs *fieldErrors, p, name string, m Metrics) {
	path := ""
	if len(m) > 0 {
		path = join(p, name)
	}
	for _, x := range m {
		if math.IsNaN(x.Value) || math.IsInf(x.Value, 0) {
			errs.add(join(path, x.Name), "value should be a finite number")
		}
	}
}

func checkFinite(errs *fieldErrors, p, name string, f float64) bool {
	if math.IsNaN(f) || math.IsInf(f, 0) {
		errs.add(join(p, name), "input should be a finite number")
		return false
	}
	return true
}

const hexDigits = "0123456789abcdef"

// plainASCII marks the bytes a JSON string holds as they are.
var plainASCII = func() (t [256]bool) {
	for c := 0x20; c < 0x80; c++ {
		t[c] = c != '"' && c != '\\'
	}
	return t
}()

// appendString writes s as a JSON string; invalid UTF-8 becomes U+FFFD.
func appendString(dst []byte, s string) []byte {
	dst = append(dst, '"')
	start := 0
	for i := 0; i < len(s); {
		for i < len(s) && plainASCII[s[i]] {
			i++
		}
		if i >= len(s) {
			break
		}
		c := s[i]
		if c < 0x80 {
			dst = append(dst, s[start:i]...)
			switch c {
			case '"', '\\':
				dst = append(dst, '\\', c)
			case '\n':
				dst = append(dst, '\\', 'n')
			case '\r':
				dst = append(dst, '\\', 'r')
			case '\t':
				dst = append(dst, '\\', 't')
			case '\b':
				dst = append(dst, '\\', 'b')
			case '\f':
				dst = append(dst, '\\', 'f')
			default:
				dst = append(dst, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xF])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			dst = append(dst, s[start:i]...)
			dst = append(dst, "\ufffd"...)
			i++
			start = i
			continue
		}
		i += size
	}
	dst = append(dst, s[start:]...)
	return append(dst, '"')
}

// appendFloat writes f as the reference does: shortest round-trip digits,
// always with a fraction or an exponent (5.0, 1e-7, 1e+16), null for
// non-finite values.
func appendFloat(dst []byte, f float64) []byte {
	if math.IsNaN(f) || math.IsInf(f, 0) {
		return append(dst, "null"...)
	}
	if abs := math.Abs(f); abs >= 1e-5 && abs < 1<<31 {
		if out, ok := appendShortDecimal(dst, f); ok {
			return out
		}
	}
	return appendFloatGeneral(dst, f)
}

// appendFloatGeneral is appendFloat through strconv's shortest formatting.
func appendFloatGeneral(dst []byte, f float64) []byte {
	if math.IsNaN(f) || math.IsInf(f, 0) {
		return append(dst, "null"...)
	}
	abs := math.Abs(f)
	if abs == 0 || (abs >= 1e-5 && abs < 1e16) {
		start := len(dst)
		dst = strconv.AppendFloat(dst, f, 'f', -1, 64)
		for _, c := range dst[start:] {
			if c == '.' {
				return dst
			}
		}
		return append(dst, '.', '0')
	}
	start := len(dst)
	dst = strconv.AppendFloat(dst, f, 'e', -1, 64)
	// Go writes e-07; the reference writes e-7.
	for i := start; i < len(dst); i++ {
		if dst[i] == 'e' && i+2 < len(dst) && dst[i+2] == '0' && i+3 < len(dst) {
			dst = append(dst[:i+2], dst[i+3:]...)
			break
		}
	}
	return dst
}

// pow10 are the exact powers of ten appendShortDecimal scales by.
var pow10 = [...]float64{1, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6}

// appendShortDecimal is appendFloat's fast path for values with at most six
// decimals, such as most scores, ratios and Unix timestamps in
// microseconds: it finds the fewest decimals k for which n/10^k, with n
// the nearest integer to f*10^k, rounds back to f, and writes n with k
// decimals. That is strconv's shortest round-trip output when it is
// unique, which it is here: for 1e-5 <= |f| < 2^31 and k <= 6 the spacing
// of float64 values near f is below 10^-k, so at most one k-decimal string
// rounds to f. A k whose n ends in 0 means a shorter k was missed (f*10^k
// is rounded before Round); the caller then takes the general path, as it
// does for f needing more than six decimals. Division by an exact power
// of ten is correctly rounded, as parsing the decimal string is.
func appendShortDecimal(dst []byte, f float64) ([]byte, bool) {
	for k, p := range pow10 {
		n := math.Round(f * p)
		if n/p != f {
			continue
		}
		u := uint64(math.Abs(n))
		if k > 0 && u%10 == 0 {
			return dst, false
		}
		if f < 0 {
			dst = append(dst, '-')
		}
		var digits [24]byte
		d := strconv.AppendUint(digits[:0], u, 10)
		if k == 0 {
			dst = append(dst, d...)
			return append(dst, '.', '0'), true
		}
		if len(d) <= k { // 0.000123: leading zeros
			dst = append(dst, '0', '.')
			for i := len(d); i < k; i++ {
				dst = append(dst, '0')
			}
			return append(dst, d...), true
		}
		dst = append(dst, d[:len(d)-k]...)
		dst = append(dst, '.')
		return append(dst, d[len(d)-k:]...), true
	}
	return dst, false
}

func appendInt(dst []byte, n int) []byte { return strconv.AppendInt(dst, int64(n), 10) }

func appendBool(dst []byte, b bool) []byte {
	if b {
		return append(dst, "true"...)
	}
	return append(dst, "false"...)
}

func appendMetrics(dst []byte, m Metrics) []byte {
	dst = append(dst, '{')
	for i, x := range m {
		if i > 0 {
			dst = append(dst, ',')
		}
		dst = appendString(dst, x.Name)
		dst = append(dst, ':')
		dst = appendFloat(dst, x.Value)
	}
	return append(dst, '}')
}

// appendAnyMap writes a free-form object with its keys sorted, so output
// is deterministic.
func appendAnyMap(dst []byte, m map[string]any) []byte {
	dst = append(dst, '{')
	switch len(m) {
	case 0:
	case 1:
		for k, v := range m {
			dst = appendString(dst, k)
			dst = append(dst, ':')
			dst = appendAny(dst, v)
		}
	default:
		var buf [8]string
		keys := buf[:0]
		for k := range m {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		for i, k := range keys {
			if i > 0 {
				dst = append(dst, ',')
			}
			dst = appendString(dst, k)
			dst = append(dst, ':')
			dst = appendAny(dst, m[k])
		}
	}
	return append(dst, '}')
}

// appendAny writes a free-form value. Values of types outside the JSON
// model go through encoding/json; Validate reports those it cannot
// encode, which are written as null.
func appendAny(dst []byte, v any) []byte {
	switch x := v.(type) {
	case nil:
		return append(dst, "null"...)
	case string:
		return appendString(dst, x)
	case bool:
		return appendBool(dst, x)
	case int64:
		return strconv.AppendInt(dst, x, 10)
	case int:
		return strconv.AppendInt(dst, int64(x), 10)
	case int32:
		return strconv.AppendInt(dst, int64(x), 10)
	case uint64:
		return strconv.AppendUint(dst, x, 10)
	case uint32:
		return strconv.AppendUint(dst, uint64(x), 10)
	case float64:
		return appendFloat(dst, x)
	case float32:
		return appendFloat(dst, float64(x))
	case json.Number:
		if _, err := strconv.ParseFloat(string(x), 64); err != nil {
			return append(dst, "null"...)
		}
		return append(dst, x...)
	case map[string]any:
		return appendAnyMap(dst, x)
	case []any:
		dst = append(dst, '[')
		for i, e := range x {
			if i > 0 {
				dst = append(dst, ',')
			}
			dst = appendAny(dst, e)
		}
		return append(dst, ']')
	case []string:
		dst = append(dst, '[')
		for i, e := range x {
			if i > 0 {
				dst = append(dst, ',')
			}
			dst = appendString(dst, e)
		}
		return append(dst, ']')
	case []int:
		return appendIntList(dst, x)
	case []float64:
		dst = append(dst, '[')
		for i, e := range x {
			if i > 0 {
				dst = append(dst, ',')
			}
			dst = appendFloat(dst, e)
		}
		return append(dst, ']')
	case map[string]float64:
		m := make(map[string]any, len(x))
		for k, e := range x {
			m[k] = e
		}
		return appendAnyMap(dst, m)
	case Metrics:
		return appendMetrics(dst, x)
	}
	b, err := json.Marshal(v)
	if err != nil {
		return append(dst, "null"...)
	}
	return append(dst, b...)
}

// checkAny reports free-form values the encoder cannot write faithfully:
// non-finite floats and values encoding/json refuses.
func checkAny(errs *fieldErrors, path string, v any, depth int) {
	if depth > maxDepth {
		errs.add(path, "value nests too deep")
		return
	}
	switch x := v.(type) {
	case nil, string, bool, int64, int, int32, uint64, uint32, []string, []int:
	case float64:
		checkFinite(errs, path, "", x)
	case float32:
		checkFinite(errs, path, "", float64(x))
	case json.Number:
		if _, err := strconv.ParseFloat(string(x), 64); err != nil {
			errs.add(path, fmt.Sprintf("%q is not a JSON number", string(x)))
		}
	case map[string]any:
		for k, e := range x {
			checkAny(errs, join(path, k), e, depth+1)
		}
	case []any:
		for i, e := range x {
			checkAny(errs, join(path, strconv.Itoa(i)), e, depth+1)
		}
	case []float64:
		for i, e := range x {
			checkFinite(errs, path, strconv.Itoa(i), e)
		}
	case map[string]float64:
		for k, e := range x {
			checkFinite(errs, path, k, e)
		}
	case Metrics:
		checkMetrics(errs, path, "", x)
	default:
		if _, err := json.Marshal(v); err != nil {
			errs.add(path, "value of type "+reflect.TypeOf(v).String()+" cannot be encoded as JSON: "+err.Error())
		}
	}
}

func checkAnyMap(errs *fieldErrors, p, name string, m map[string]any) {
	if len(m) == 0 {
		return
	}
	path := join(p, name)
	for k, v := range m {
		checkAny(errs, join(path, k), v, 1)
	}
}

func appendIntList(dst []byte, x []int) []byte {
	dst = append(dst, '[')
	for i, e := range x {
		if i > 0 {
			dst = append(dst, ',')
		}
		dst = appendInt(dst, e)
	}
	return append(dst, ']')
}

func appendStringList(dst []byte, x []string) []byte {
	dst = append(dst, '[')
	for i, e := range x {
		if i > 0 {
			dst = append(dst, ',')
		}
		dst = appendString(dst, e)
	}
	return append(dst, ']')
}

func appendOptString(dst []byte, s *string) []byte {
	if s == nil {
		return append(dst, "null"...)
	}
	return appendString(dst, *s)
}
