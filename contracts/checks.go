package contracts

import (
	"strconv"
	"strings"
	"unicode/utf8"
)

func fmtNum(f float64) string { return strconv.FormatFloat(f, 'g', -1, 64) }

// geF checks a float lower bound (and finiteness).
func geF(errs *fieldErrors, p, name string, v, min float64) {
	if !checkFinite(errs, p, name, v) {
		return
	}
	if !(v >= min) {
		errs.add(join(p, name), "input should be greater than or equal to "+fmtNum(min)+", got "+fmtNum(v))
	}
}

// rangeF checks min <= v <= max.
func rangeF(errs *fieldErrors, p, name string, v, min, max float64) {
	if !checkFinite(errs, p, name, v) {
		return
	}
	if !(v >= min) {
		errs.add(join(p, name), "input should be greater than or equal to "+fmtNum(min)+", got "+fmtNum(v))
	} else if !(v <= max) {
		errs.add(join(p, name), "input should be less than or equal to "+fmtNum(max)+", got "+fmtNum(v))
	}
}

// geI checks an integer lower bound.
func geI(errs *fieldErrors, p, name string, v, min int) {
	if v < min {
		errs.add(join(p, name), "input should be greater than or equal to "+strconv.Itoa(min)+", got "+strconv.Itoa(v))
	}
}

// strLen checks a string's length in characters, as Python counts it.
func strLen(errs *fieldErrors, p, name, s string, min, max int) {
	n := utf8.RuneCountInString(s)
	if n < min {
		errs.add(join(p, name), "string should have at least "+strconv.Itoa(min)+" character"+plural(min)+", got "+strconv.Itoa(n))
	} else if n > max {
		errs.add(join(p, name), "string should have at most "+strconv.Itoa(max)+" characters, got "+strconv.Itoa(n))
	}
}

func plural(n int) string {
	if n == 1 {
		return ""
	}
	return "s"
}

// strip removes leading and trailing Unicode white space, as the
// reference's str_strip_whitespace does.
func strip(s string) string { return strings.TrimSpace(s) }

// oneOf checks a pattern of the form ^(a|b|c)$.
func oneOf(errs *fieldErrors, p, name, s string, allowed ...string) {
	for _, a := range allowed {
		if s == a {
			return
		}
	}
	errs.add(join(p, name), "string should match pattern '^("+strings.Join(allowed, "|")+")$', got "+strconv.Quote(s))
}

// has reports whether bit i is set in mask.
func has(mask uint32, i int) bool { return mask&(1<<i) != 0 }
