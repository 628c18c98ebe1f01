package contracts

import (
	"fmt"
	"math/rand/v2"
	"testing"
	"time"
)

func TestTimestampOffsetsSurviveTheZoneCache(t *testing.T) {
	// Alternating offsets must each keep their own, whichever one the
	// last-zone cache holds.
	cases := []struct {
		in     string
		offset int
		out    string
	}{
		{"2026-11-24T12:30:00+02:00", 7200, "2026-11-24T12:30:00+02:00"},
		{"2026-11-24T12:30:00-05:30", -19800, "2026-11-24T12:30:00-05:30"},
		{"2026-11-24T12:30:00+0200", 7200, "2026-11-24T12:30:00+02:00"},
		{"2026-11-24T12:30:00Z", 0, "2026-11-24T12:30:00Z"},
		{"2026-11-24T12:30:00+00:00", 0, "2026-11-24T12:30:00Z"},
		{"2026-11-24T12:30:00-05:30", -19800, "2026-11-24T12:30:00-05:30"},
	}
	for round := 0; round < 2; round++ {
		for _, tc := range cases {
			got, reason := parseTimestamp([]byte(tc.in))
			if reason != "" {
				t.Fatalf("%s: %s", tc.in, reason)
			}
			if _, off := got.Zone(); off != tc.offset {
				t.Errorf("%s: offset %d, want %d", tc.in, off, tc.offset)
			}
			if s := string(appendTimestampRaw(nil, got)); s != tc.out {
				t.Errorf("%s: encodes as %s, want %s", tc.in, s, tc.out)
			}
			// 12:30 local time is 12:30 UTC minus the offset.
			if want := time.Date(2026, 11, 24, 12, 30, 0, 0, time.UTC).Unix() - int64(tc.offset); got.Unix() != want {
				t.Errorf("%s: unix %d, want %d", tc.in, got.Unix(), want)
			}
		}
	}
}

func TestCheckTimeAtTheEdgesOfPythonsRange(t *testing.T) {
	east, west := time.FixedZone("", 14*3600), time.FixedZone("", -12*3600)
	cases := []struct {
		t  time.Time
		ok bool
	}{
		{time.Date(1, 1, 1, 0, 0, 0, 0, time.UTC), true},
		{time.Date(0, 12, 31, 23, 59, 59, 0, time.UTC), false},
		{time.Date(1, 1, 1, 0, 0, 0, 0, east), true},     // year 0 in UTC, year 1 locally
		{time.Date(0, 12, 31, 20, 0, 0, 0, west), false}, // year 1 in UTC, year 0 locally
		{time.Date(9999, 12, 31, 23, 59, 59, 0, time.UTC), true},
		{time.Date(10000, 1, 1, 0, 0, 0, 0, time.UTC), false},
		{time.Date(9999, 12, 31, 20, 0, 0, 0, west), true}, // year 10000 in UTC
		{time.Date(10000, 1, 1, 5, 0, 0, 0, east), false},  // year 9999 in UTC
		{time.Date(2026, 11, 24, 10, 0, 0, 0, time.UTC), true},
	}
	for _, tc := range cases {
		var errs fieldErrors
		checkTime(&errs, "", "created_at", tc.t)
		if ok := len(errs.fields) == 0; ok != tc.ok {
			t.Errorf("%v: accepted %v, want %v (%v)", tc.t, ok, tc.ok, errs.fields)
		}
	}
}

// TestRFC3339FastPathMatchesTheGeneralParser: whatever parseRFC3339
// accepts, parseTimestampAny reads to the same instant, offset and
// naivety; random timestamps near the canonical form, valid and not.
func TestRFC3339FastPathMatchesTheGeneralParser(t *testing.T) {
	r := rand.New(rand.NewPCG(5, 6))
	zones := []string{"", "Z", "z", "+00:00", "+02:00", "-05:30", "+14:00", "-23:59", "+24:00", "+02:60", "+0200", "+02", "Zx"}
	fracs := []string{"", ".5", ".123456", ".1234567891", ".", ",5", ".12a"}
	accepted := 0
	for range 200000 {
		s := fmt.Sprintf("%04d-%02d-%02dT%02d:%02d:%02d%s%s", r.IntN(10000), r.IntN(14), r.IntN(33), r.IntN(25), r.IntN(61), r.IntN(61),
			fracs[r.IntN(len(fracs))], zones[r.IntN(len(zones))])
		b := []byte(s)
		if r.IntN(8) == 0 { // a stray byte anywhere
			b[r.IntN(len(b))] = "0123456789-T:+Z. x"[r.IntN(18)]
		}
		fast, ok := parseRFC3339(b)
		if !ok {
			continue
		}
		accepted++
		slow, reason := parseTimestampAny(b)
		if reason != "" || !fast.Equal(slow) || fast.Location() != slow.Location() || IsNaive(fast) != IsNaive(slow) {
			t.Fatalf("%s: fast path %v (%v), general %v (%v) %q", b, fast, fast.Location(), slow, slow.Location(), reason)
		}
	}
	if accepted < 10000 {
		t.Fatalf("the fast path accepted only %d timestamps", accepted)
	}
}
