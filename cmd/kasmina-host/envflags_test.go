package main

import (
	"flag"
	"io"
	"strings"
	"testing"
	"time"
)

func TestEnvFlagsReportEveryBadVariable(t *testing.T) {
	cases := []struct {
		name string
		env  map[string]string
		want []string // one line of the error per bad variable, in order
	}{
		{"none set", nil, nil},
		{"all good", map[string]string{"KH_TEST_INT": "3", "KH_TEST_DUR": "2s", "KH_TEST_BOOL": "true"}, nil},
		{"one bad", map[string]string{"KH_TEST_INT": "three"}, []string{`KH_TEST_INT="three" is not an integer`}},
		{"three bad, one good", map[string]string{"KH_TEST_INT": "x", "KH_TEST_DUR": "soon", "KH_TEST_BOOL": "yes please", "KH_TEST_FLOAT": "1.5"},
			[]string{`KH_TEST_BOOL="yes please" is not a boolean`, `KH_TEST_INT="x" is not an integer`, `KH_TEST_DUR="soon" is not a duration (e.g. 30s)`}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			for _, k := range []string{"KH_TEST_BOOL", "KH_TEST_INT", "KH_TEST_DUR", "KH_TEST_FLOAT"} {
				t.Setenv(k, tc.env[k]) // empty counts as unset
			}
			fs := flag.NewFlagSet("test", flag.ContinueOnError)
			fs.SetOutput(io.Discard)
			e := &envFlags{fs: fs}
			var (
				b bool
				i int
				d time.Duration
				f float64
			)
			e.Bool(&b, "b", "KH_TEST_BOOL", false, "")
			e.Int(&i, "i", "KH_TEST_INT", 1, "")
			e.Duration(&d, "d", "KH_TEST_DUR", time.Second, "")
			e.Float(&f, "f", "KH_TEST_FLOAT", 0, "")
			err := e.err()
			if len(tc.want) == 0 {
				if err != nil {
					t.Fatalf("err = %v, want nil", err)
				}
				return
			}
			if err == nil {
				t.Fatalf("err = nil, want %q", tc.want)
			}
			if got := strings.Split(err.Error(), "\n"); strings.Join(got, "|") != strings.Join(tc.want, "|") {
				t.Errorf("err lines = %q, want %q", got, tc.want)
			}
			if tc.env["KH_TEST_FLOAT"] == "1.5" && f != 1.5 {
				t.Errorf("a good variable next to bad ones was not applied: f = %v", f)
			}
		})
	}
}
