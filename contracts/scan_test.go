package contracts

import (
	"encoding/binary"
	"math/bits"
	"math/rand/v2"
	"strings"
	"testing"
)

// firstSpecialRef is the byte-at-a-time definition special8 must match.
func firstSpecialRef(w []byte) int {
	for i, c := range w {
		if !strPlain[c] {
			return i
		}
	}
	return 8
}

func firstSpecial8(w []byte) int {
	m := special8(binary.LittleEndian.Uint64(w))
	if m == 0 {
		return 8
	}
	return bits.TrailingZeros64(m) >> 3
}

func TestSpecial8FindsTheFirstSpecialByte(t *testing.T) {
	// Every byte value at every position of an otherwise plain word,
	// with a second special byte after it (borrows from the first must
	// not hide or misplace it).
	for pos := 0; pos < 8; pos++ {
		for v := 0; v < 256; v++ {
			for _, after := range []byte{'a', '"', '\\', 0x00, 0x1f, 0x80, 0xff} {
				w := []byte("abcdefgh")
				w[pos] = byte(v)
				if pos < 7 {
					w[7] = after
				}
				if got, want := firstSpecial8(w), firstSpecialRef(w); got != want {
					t.Fatalf("word %q: first special byte at %d, want %d", w, got, want)
				}
			}
		}
	}
	r := rand.New(rand.NewPCG(1, 2))
	for range 20000 {
		var w [8]byte
		for i := range w {
			w[i] = byte(r.Uint32())
			if r.IntN(3) > 0 {
				w[i] = byte(0x20 + r.IntN(0x60)) // mostly printable, as in real strings
			}
		}
		if got, want := firstSpecial8(w[:]), firstSpecialRef(w[:]); got != want {
			t.Fatalf("word %q: first special byte at %d, want %d", w, got, want)
		}
	}
}

func TestSpecial8EveryPairOfBytes(t *testing.T) {
	// Every pair of byte values at every pair of positions: a borrow
	// from one special byte must never flag a byte below it, nor hide it.
	w := []byte("abcdefgh")
	for i := 0; i < 8; i++ {
		for j := i + 1; j < 8; j++ {
			for a := 0; a < 256; a++ {
				for b := 0; b < 256; b++ {
					copy(w, "abcdefgh")
					w[i], w[j] = byte(a), byte(b)
					if got, want := firstSpecial8(w), firstSpecialRef(w); got != want {
						t.Fatalf("word %q: first special byte at %d, want %d", w, got, want)
					}
				}
			}
		}
	}
}

func TestReadStringAtEveryAlignment(t *testing.T) {
	// A string whose special byte falls at each offset relative to the
	// eight-byte words, near the end of the input and away from it.
	cases := []struct {
		name string
		body string
		want string
		ok   bool
	}{
		{"plain", "abcdefghijklmnopq", "abcdefghijklmnopq", true},
		{"escape", `abcdefghij\nklm`, "abcdefghij\nklm", true},
		{"control byte", "abcdefghij\x01klm", "", false},
		{"utf-8", "abcdefghij\u00e9klm\u4e16", "abcdefghij\u00e9klm\u4e16", true},
		{"invalid utf-8", "abcdefghij\xffklm", "", false},
	}
	for _, tc := range cases {
		for pad := 0; pad < 9; pad++ {
			for _, tail := range []string{"", "   ", ", \"next\": 1}"} {
				prefix := "[" + strings.Repeat(" ", pad)
				in := prefix + `"` + padBody(tc.body, pad) + `"` + tail
				d := newDecoder("x", []byte(in))
				d.pos = len(prefix)
				got, ok := d.readString()
				want := padBody(tc.want, pad)
				if ok != tc.ok || (ok && string(got) != want) {
					t.Fatalf("%s, pad %d, tail %q: got %q, %v; want %q, %v", tc.name, pad, tail, got, ok, want, tc.ok)
				}
				if ok && d.pos != len(prefix)+len(padBody(tc.body, pad))+2 {
					t.Fatalf("%s, pad %d: position %d after the string", tc.name, pad, d.pos)
				}
			}
		}
	}
	d := newDecoder("x", []byte(`"abcdefghijklmnop`))
	if _, ok := d.readString(); ok || d.syn == nil {
		t.Fatal("unterminated string accepted")
	}
}

// padBody shifts the body's special bytes by pad positions.
func padBody(body string, pad int) string {
	if body == "" {
		return ""
	}
	return strings.Repeat("x", pad) + body
}
