package failure

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"testing"
)

func TestClassOf(t *testing.T) {
	base := Errorf(NotFound, "no kernel %q", "k")
	cases := []struct {
		name string
		err  error
		want Class
		msg  string
	}{
		{"plain", base, NotFound, `no kernel "k"`},
		{"wrapped by fmt", fmt.Errorf("loading: %w", base), NotFound, `loading: no kernel "k"`},
		{"reclassified", Wrap(Unavailable, fmt.Errorf("resolving: %w", base)), Unavailable, `resolving: no kernel "k"`},
		{"errorf wraps", Errorf(Malformed, "artifact: %w", io.ErrUnexpectedEOF), Malformed, "artifact: unexpected EOF"},
		{"deadline", fmt.Errorf("x: %w", context.DeadlineExceeded), Timeout, "x: context deadline exceeded"},
		{"canceled", context.Canceled, Canceled, "context canceled"},
		{"unclassified", errors.New("boom"), Internal, "boom"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if got := ClassOf(c.err); got != c.want {
				t.Errorf("ClassOf = %v, want %v", got, c.want)
			}
			if got := c.err.Error(); got != c.msg {
				t.Errorf("message %q, want %q (no class prefix)", got, c.msg)
			}
		})
	}
}

func TestErrorfKeepsChain(t *testing.T) {
	err := Errorf(Malformed, "reading: %w", io.ErrUnexpectedEOF)
	if !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Fatal("the wrapped error is lost")
	}
	if !Is(fmt.Errorf("outer: %w", err), Malformed) || Is(err, NotFound) {
		t.Fatal("the class is not kept through wrapping")
	}
	if Wrap(BadInput, nil) != nil {
		t.Fatal("Wrap(nil) is not nil")
	}
	if Is(nil, Internal) {
		t.Fatal("Is(nil, Internal) is true")
	}
}

func TestPermanent(t *testing.T) {
	names := map[string]bool{}
	perm := map[Class]bool{NotFound: true, BadInput: true, Malformed: true, Refused: true, Conflict: true, TooLarge: true, Unsupported: true}
	for c := Internal; c <= Canceled; c++ {
		if c.Permanent() != perm[c] {
			t.Errorf("%v.Permanent() = %v", c, c.Permanent())
		}
		if strings.HasPrefix(c.String(), "class(") || names[c.String()] {
			t.Errorf("class %d has no name of its own: %q", c, c.String())
		}
		names[c.String()] = true
	}
}
