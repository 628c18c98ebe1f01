package contracts

import (
	"math"
	"math/rand/v2"
	"strconv"
	"strings"
	"testing"
)

// TestParseFloatLitMatchesStrconv checks the fast path against strconv on
// literals of every shape the fast path takes and some it declines.
func TestParseFloatLitMatchesStrconv(t *testing.T) {
	lits := []string{"0", "-0", "0.1", "0.3", "1.5", "-1.0", "123456789012345", "0.000000000000000000001",
		"1e5", "1.7976931348623157e308", "4.9e-324", "9007199254740993", "0.1234567890123456789",
		"1764064215.123456", "-0.802", "2.5534"}
	r := rand.New(rand.NewPCG(1, 2))
	for range 4000 {
		f := r.Float64() * math.Pow(10, float64(r.IntN(20)-10))
		lits = append(lits, strconv.FormatFloat(f, 'f', r.IntN(12), 64))
	}
	for _, s := range lits {
		want, err := strconv.ParseFloat(s, 64)
		if err != nil {
			t.Fatal(err)
		}
		got, ok := parseFloatLit([]byte(s))
		if !ok || math.Float64bits(got) != math.Float64bits(want) {
			t.Errorf("parseFloatLit(%q) = %v, %v; strconv gives %v", s, got, ok, want)
		}
	}
}

// TestNumberFieldsMatchStrconv checks the float and int decoders (whose
// one-pass short-number path takes most literals) against strconv on
// literals of every shape, followed by each byte that may end a value.
func TestNumberFieldsMatchStrconv(t *testing.T) {
	lits := []string{"0", "-0", "0.0", "-0.0", "5", "5.0", "5.5", "-5", "123456789012345", "1234567890123456",
		"0.1", "0.30000000000000004", "1.5e3", "1E-2", "9007199254740993", "-9223372036854775808",
		"9223372036854775807", "99999999999999999999", "0.000000000000000000001", "123.456", "-0.802"}
	r := rand.New(rand.NewPCG(3, 4))
	for range 20000 {
		s := strconv.FormatInt(r.Int64N(1_000_000_000_000)>>r.IntN(40), 10)
		if k := r.IntN(10); k > 0 {
			s += "." + strconv.FormatInt(1_000_000_000+r.Int64N(1_000_000_000), 10)[1:1+min(k, 9)]
		}
		if r.IntN(2) == 0 {
			s = "-" + s
		}
		lits = append(lits, s)
	}
	for _, lit := range lits {
		for _, end := range []string{"", ",", "}", "]", " "} {
			want, err := strconv.ParseFloat(lit, 64)
			if err != nil {
				t.Fatal(err)
			}
			if n, err := strconv.ParseInt(lit, 10, 64); err == nil {
				want = float64(n) // an integer literal reads as one: "-0" is 0
			}
			d := newDecoder("x", []byte(lit+end))
			got, ok := d.float("", "v")
			if !ok || math.Float64bits(got) != math.Float64bits(want) || d.pos != len(lit) {
				t.Fatalf("float(%q) = %v, %v at %d; strconv gives %v", lit+end, got, ok, d.pos, want)
			}
			d = newDecoder("x", []byte(lit+end))
			gotInt, ok := d.int("", "v")
			wantInt, wantOK := int(want), want == math.Trunc(want) && math.Abs(want) < 1<<63
			if n, err := strconv.ParseInt(lit, 10, 64); err == nil {
				wantInt, wantOK = int(n), true
			} else if !strings.ContainsAny(lit, ".eE") {
				wantOK = false // an integer literal past int64
			}
			if ok != wantOK || (ok && gotInt != wantInt) || (ok && d.pos != len(lit)) {
				t.Fatalf("int(%q) = %v, %v; want %v, %v", lit+end, gotInt, ok, wantInt, wantOK)
			}
		}
	}
}
