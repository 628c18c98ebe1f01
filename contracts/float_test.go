package contracts

import (
	"math"
	"math/rand/v2"
	"strconv"
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
