package contracts

import (
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
