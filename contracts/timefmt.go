package contracts

import (
	"math"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// Naive is the location of timestamps that carried no UTC offset on the
// wire ("2026-01-01T00:00:00", or a bare date). Python keeps such values
// naive and writes them back without an offset; so does this package.
// Their clock reading is interpreted as UTC for comparisons. Do not
// reassign it.
var Naive = time.FixedZone("naive", 0)

// IsNaive reports whether t carries no UTC offset on the wire.
func IsNaive(t time.Time) bool { return t.Location() == Naive }

// Now returns the current UTC time at microsecond precision, the
// resolution of Python's datetime, so that values round-trip exactly.
func Now() time.Time { return time.Now().UTC().Truncate(time.Microsecond) }

// UnixNow returns the current time as float seconds, like time.time().
func UnixNow() float64 { return float64(time.Now().UnixMicro()) / 1e6 }

var zones sync.Map // offset seconds → *time.Location

// zoneEntry is one offset's location; lastZone holds the most recent,
// since a service's timestamps nearly always share one offset and an
// atomic load is cheaper than a sync.Map lookup per timestamp.
type zoneEntry struct {
	offset int
	loc    *time.Location
}

var lastZone atomic.Pointer[zoneEntry]

func zoneFor(offset int) *time.Location {
	if offset == 0 {
		return time.UTC
	}
	if z := lastZone.Load(); z != nil && z.offset == offset {
		return z.loc
	}
	z, ok := zones.Load(offset)
	if !ok {
		z, _ = zones.LoadOrStore(offset, time.FixedZone("", offset))
	}
	loc := z.(*time.Location)
	lastZone.Store(&zoneEntry{offset, loc})
	return loc
}

func digits(b []byte, i, n int) (int, bool) {
	if i+n > len(b) {
		return 0, false
	}
	v := 0
	for _, c := range b[i : i+n] {
		if c < '0' || c > '9' {
			return 0, false
		}
		v = v*10 + int(c-'0')
	}
	return v, true
}

func daysIn(year, month int) int {
	switch month {
	case 2:
		if year%4 == 0 && (year%100 != 0 || year%400 == 0) {
			return 29
		}
		return 28
	case 4, 6, 9, 11:
		return 30
	}
	return 31
}

// parseTimestamp parses the datetime forms the reference accepts from a
// string: RFC 3339 with 'T', 't' or ' ' between date and time, optional
// seconds, a fraction after '.' or ',' (truncated to microseconds), an
// offset of Z, z, ±HH:MM or ±HHMM, or none (naive); a bare date (naive
// midnight); or a decimal number of unix seconds.
func parseTimestamp(b []byte) (time.Time, string) {
	if t, ok := parseRFC3339(b); ok {
		return t, ""
	}
	return parseTimestampAny(b)
}

// parseTimestampAny is parseTimestamp for every form.
func parseTimestampAny(b []byte) (time.Time, string) {
	if len(b) > 0 && (b[0] == '-' || b[0] == '+' || b[0] == '.' || len(b) < 10 || (b[4] != '-')) {
		if f, ok := unixFromString(b); ok {
			return fromUnix(f)
		}
	}
	year, ok1 := digits(b, 0, 4)
	month, ok2 := digits(b, 5, 2)
	day, ok3 := digits(b, 8, 2)
	if !ok1 || !ok2 || !ok3 || b[4] != '-' || b[7] != '-' {
		if f, ok := unixFromString(b); ok {
			return fromUnix(f)
		}
		return time.Time{}, "input should be a valid datetime, expected YYYY-MM-DD"
	}
	if year == 0 {
		return time.Time{}, "input should be a valid datetime, year 0 is out of range"
	}
	if month < 1 || month > 12 {
		return time.Time{}, "input should be a valid datetime, month value is outside expected range of 1-12"
	}
	if day < 1 || day > daysIn(year, month) {
		return time.Time{}, "input should be a valid datetime, day value is outside expected range"
	}
	if len(b) == 10 {
		return time.Unix(daysFromCivil(year, month, day)*86400, 0).In(Naive), ""
	}
	if c := b[10]; c != 'T' && c != 't' && c != ' ' {
		return time.Time{}, "input should be a valid datetime, invalid date separator"
	}
	hour, ok1 := digits(b, 11, 2)
	minute, ok2 := digits(b, 14, 2)
	if !ok1 || !ok2 || b[13] != ':' {
		return time.Time{}, "input should be a valid datetime, invalid time"
	}
	i := 16
	sec, nsec := 0, 0
	if i < len(b) && b[i] == ':' {
		var ok bool
		sec, ok = digits(b, i+1, 2)
		if !ok {
			return time.Time{}, "input should be a valid datetime, invalid second"
		}
		i += 3
		if i < len(b) && (b[i] == '.' || b[i] == ',') {
			i++
			j := i
			us := 0 // the first six digits; the rest are truncated
			for i < len(b) && b[i] >= '0' && b[i] <= '9' {
				if i-j < 6 {
					us = us*10 + int(b[i]-'0')
				}
				i++
			}
			if i == j {
				return time.Time{}, "input should be a valid datetime, invalid fraction of a second"
			}
			nsec = us * fracScale[min(i-j, 6)]
		}
	}
	if hour > 23 || minute > 59 || sec > 59 {
		return time.Time{}, "input should be a valid datetime, time out of range"
	}
	loc := Naive
	off := 0
	if i < len(b) {
		switch c := b[i]; c {
		case 'Z', 'z':
			loc = time.UTC
			i++
		case '+', '-':
			oh, ok := digits(b, i+1, 2)
			if !ok {
				return time.Time{}, "input should be a valid datetime, invalid timezone offset"
			}
			var om int
			if i+3 < len(b) && b[i+3] == ':' {
				om, ok = digits(b, i+4, 2)
				i += 6
			} else {
				om, ok = digits(b, i+3, 2)
				i += 5
			}
			if !ok || oh > 23 || om > 59 {
				return time.Time{}, "input should be a valid datetime, invalid timezone offset"
			}
			off = oh*3600 + om*60
			if c == '-' {
				off = -off
			}
			loc = zoneFor(off)
		default:
			return time.Time{}, "input should be a valid datetime, unexpected extra characters"
		}
	}
	if i != len(b) {
		return time.Time{}, "input should be a valid datetime, unexpected extra characters at the end"
	}
	unix := daysFromCivil(year, month, day)*86400 + int64(hour*3600+minute*60+sec) - int64(off)
	return time.Unix(unix, int64(nsec)).In(loc), ""
}

// fracScale[n] turns n digits of a fraction of a second into nanoseconds.
var fracScale = [...]int{0, 1e8, 1e7, 1e6, 1e5, 1e4, 1e3}

// parseRFC3339 is parseTimestamp's fast path for the form services
// write, YYYY-MM-DDTHH:MM:SS with an optional fraction after '.' and a
// "Z" or ±HH:MM offset, or none: fixed positions, no loops over the
// date and time. It declines (ok false) anything else, including values
// out of range, for parseTimestamp to read or report; what it accepts,
// parseTimestamp's general path reads the same.
func parseRFC3339(b []byte) (t time.Time, ok bool) {
	if len(b) < 19 || b[4] != '-' || b[7] != '-' || b[10] != 'T' || b[13] != ':' || b[16] != ':' {
		return time.Time{}, false
	}
	d := [...]byte{b[0] - '0', b[1] - '0', b[2] - '0', b[3] - '0', b[5] - '0', b[6] - '0', b[8] - '0', b[9] - '0',
		b[11] - '0', b[12] - '0', b[14] - '0', b[15] - '0', b[17] - '0', b[18] - '0'}
	for _, c := range d {
		if c > 9 {
			return time.Time{}, false
		}
	}
	year := int(d[0])*1000 + int(d[1])*100 + int(d[2])*10 + int(d[3])
	month, day := int(d[4])*10+int(d[5]), int(d[6])*10+int(d[7])
	hour, minute, sec := int(d[8])*10+int(d[9]), int(d[10])*10+int(d[11]), int(d[12])*10+int(d[13])
	if year == 0 || month < 1 || month > 12 || day < 1 || day > daysIn(year, month) ||
		hour > 23 || minute > 59 || sec > 59 {
		return time.Time{}, false
	}
	i, nsec := 19, 0
	if i < len(b) && b[i] == '.' {
		i++
		j, us := i, 0
		for i < len(b) && b[i]-'0' <= 9 {
			if i-j < 6 {
				us = us*10 + int(b[i]-'0')
			}
			i++
		}
		if i == j {
			return time.Time{}, false
		}
		nsec = us * fracScale[min(i-j, 6)]
	}
	loc, off := Naive, 0
	switch rest := b[i:]; {
	case len(rest) == 0:
	case len(rest) == 1 && rest[0] == 'Z':
		loc = time.UTC
	case len(rest) == 6 && (rest[0] == '+' || rest[0] == '-') && rest[3] == ':':
		h0, h1, m0, m1 := rest[1]-'0', rest[2]-'0', rest[4]-'0', rest[5]-'0'
		oh, om := int(h0)*10+int(h1), int(m0)*10+int(m1)
		if h0 > 9 || h1 > 9 || m0 > 9 || m1 > 9 || oh > 23 || om > 59 {
			return time.Time{}, false
		}
		off = oh*3600 + om*60
		if rest[0] == '-' {
			off = -off
		}
		loc = zoneFor(off)
	default:
		return time.Time{}, false
	}
	unix := daysFromCivil(year, month, day)*86400 + int64(hour*3600+minute*60+sec) - int64(off)
	return time.Unix(unix, int64(nsec)).In(loc), true
}

// daysFromCivil counts days from 1970-01-01 to a proleptic Gregorian
// date (Howard Hinnant's algorithm); cheaper than time.Date's
// normalisation for dates already checked.
func daysFromCivil(year, month, day int) int64 {
	y := int64(year)
	if month <= 2 {
		y--
	}
	era := y / 400
	if y < 0 && y%400 != 0 {
		era--
	}
	yoe := y - era*400
	mp := int64(month) + 9
	if month > 2 {
		mp = int64(month) - 3
	}
	doy := (153*mp+2)/5 + int64(day) - 1
	doe := yoe*365 + yoe/4 - yoe/100 + doy
	return era*146097 + doe - 719468
}

func unixFromString(b []byte) (float64, bool) {
	if len(b) == 0 {
		return 0, false
	}
	dot := false
	for i, c := range b {
		switch {
		case c >= '0' && c <= '9':
		case c == '.' && !dot:
			dot = true
		case (c == '-' || c == '+') && i == 0:
		default:
			return 0, false
		}
	}
	f, err := strconv.ParseFloat(bstr(b), 64)
	return f, err == nil
}

// maxUnixSeconds is the largest number the reference reads as seconds;
// above it, it reads milliseconds, a form this package refuses.
const maxUnixSeconds = 2e10

// fromUnix converts unix seconds to a UTC time at microsecond precision.
func fromUnix(f float64) (time.Time, string) {
	if math.IsNaN(f) || f < 0 || f > maxUnixSeconds {
		return time.Time{}, "input should be a valid datetime, unix timestamp out of the supported range 0..2e10 seconds"
	}
	sec := math.Floor(f)
	us := math.Round((f - sec) * 1e6)
	if us >= 1e6 {
		sec++
		us = 0
	}
	return time.Unix(int64(sec), int64(us)*1000).UTC(), ""
}

// timestamp decodes a datetime field.
func (d *decoder) timestamp(prefix, name string) (time.Time, bool) {
	c := d.data[d.pos]
	switch {
	case c == '"':
		b, ok := d.readString()
		if !ok {
			return time.Time{}, false
		}
		t, reason := parseTimestamp(b)
		if reason != "" {
			d.errs.add(join(prefix, name), reason)
			return time.Time{}, false
		}
		return t, true
	case c == '-' || (c >= '0' && c <= '9'):
		b, _, ok := d.scanNumber()
		if !ok {
			return time.Time{}, false
		}
		f, err := strconv.ParseFloat(bstr(b), 64)
		if err != nil {
			f = math.Inf(1)
		}
		t, reason := fromUnix(f)
		if reason != "" {
			d.errs.add(join(prefix, name), reason)
			return time.Time{}, false
		}
		return t, true
	}
	d.typeError(join(prefix, name), "input should be a valid datetime")
	return time.Time{}, false
}

// optTimestamp decodes an Optional[datetime] field.
func (d *decoder) optTimestamp(prefix, name string) (*time.Time, bool) {
	if d.data[d.pos] == 'n' {
		return nil, d.matchLit("null")
	}
	t, ok := d.timestamp(prefix, name)
	if !ok {
		return nil, false
	}
	return d.newTime(t), true
}

func pad(dst []byte, v, n int) []byte {
	var buf [9]byte
	for i := n - 1; i >= 0; i-- {
		buf[i] = byte('0' + v%10)
		v /= 10
	}
	return append(dst, buf[:n]...)
}

// appendTimestamp writes t as Python's datetime.isoformat() does through
// Pydantic: microseconds when non-zero, "Z" for UTC, "±HH:MM" offsets
// kept, nothing for naive values.
func appendTimestamp(dst []byte, t time.Time) []byte {
	dst = append(dst, '"')
	dst = appendTimestampRaw(dst, t)
	return append(dst, '"')
}

// appendOptTimestamp writes an Optional[datetime]: null or the time.
func appendOptTimestamp(dst []byte, t *time.Time) []byte {
	if t == nil {
		return append(dst, "null"...)
	}
	return appendTimestamp(dst, *t)
}

// civil converts days since 1970-01-01 to a proleptic Gregorian date
// (Howard Hinnant's days_from_civil inverse), cheaper than three
// separate time.Time accessors.
func civil(days int64) (year, month, day int) {
	z := days + 719468
	era := z / 146097
	if z < 0 && z%146097 != 0 {
		era--
	}
	doe := z - era*146097
	yoe := (doe - doe/1460 + doe/36524 - doe/146096) / 365
	y := yoe + era*400
	doy := doe - (365*yoe + yoe/4 - yoe/100)
	mp := (5*doy + 2) / 153
	d := doy - (153*mp+2)/5 + 1
	m := mp + 3
	if m > 12 {
		m -= 12
	}
	if m <= 2 {
		y++
	}
	return int(y), int(m), int(d)
}

func appendTimestampRaw(dst []byte, t time.Time) []byte {
	loc := t.Location()
	off := 0
	if loc != time.UTC && loc != Naive {
		_, off = t.Zone()
	}
	secs := t.Unix() + int64(off)
	days := secs / 86400
	rem := secs % 86400
	if rem < 0 {
		rem += 86400
		days--
	}
	year, month, day := civil(days)
	hour, minute, sec := int(rem/3600), int(rem%3600/60), int(rem%60)
	dst = pad(dst, year, 4)
	dst = append(dst, '-')
	dst = pad(dst, int(month), 2)
	dst = append(dst, '-')
	dst = pad(dst, day, 2)
	dst = append(dst, 'T')
	dst = pad(dst, hour, 2)
	dst = append(dst, ':')
	dst = pad(dst, minute, 2)
	dst = append(dst, ':')
	dst = pad(dst, sec, 2)
	if us := t.Nanosecond() / 1000; us != 0 {
		dst = append(dst, '.')
		dst = pad(dst, us, 6)
	}
	if loc == Naive {
		return dst
	}
	if off == 0 {
		return append(dst, 'Z')
	}
	if off < 0 {
		dst = append(dst, '-')
		off = -off
	} else {
		dst = append(dst, '+')
	}
	dst = pad(dst, off/3600, 2)
	dst = append(dst, ':')
	dst = pad(dst, off%3600/60, 2)
	if s := off % 60; s != 0 {
		dst = append(dst, ':')
		dst = pad(dst, s, 2)
	}
	return dst
}

// Unix seconds of 0001-01-01T00:00:00Z and 9999-12-31T23:59:59Z.
const (
	minYear1Unix    = -62135596800
	maxYear9999Unix = 253402300799
)

// checkTime validates a datetime built in Go: Python's datetime holds
// years 1 to 9999 only.
func checkTime(errs *fieldErrors, p, name string, t time.Time) {
	// A decoded timestamp is always in range, and the check runs on every
	// decode: an instant more than a day inside the range is in range
	// whatever its offset, which t.Unix() tells without the civil-date
	// conversion t.Year() does.
	if u := t.Unix(); u > minYear1Unix+86400 && u < maxYear9999Unix-86400 {
		return
	}
	if y := t.Year(); y < 1 || y > 9999 {
		errs.add(join(p, name), "datetime year "+strconv.Itoa(y)+" is outside 1..9999")
	}
}
