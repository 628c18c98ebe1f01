package modelgen

import (
	"bytes"
	"strings"
	"testing"
)

func TestSpecGenerates(t *testing.T) {
	a, err := Source(Models)
	if err != nil {
		t.Fatal(err)
	}
	b, err := Source(Models)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(a, b) {
		t.Fatal("two generations of the same spec differ")
	}
	for _, m := range Models {
		for _, want := range []string{"type " + m.Name + " struct", "func Decode" + m.Name + "(",
			"func (" + m.Recv + " " + m.Name + ") AppendJSON(", "func (" + m.Recv + " *" + m.Name + ") check("} {
			if !bytes.Contains(a, []byte(want)) {
				t.Errorf("generated code lacks %q", want)
			}
		}
	}
}

func TestSourceRefusesBadSpecs(t *testing.T) {
	ok := Model{Name: "M", Recv: "m", Prefix: "mm", Fields: []Field{{Go: "A", JSON: "a", Kind: Str}}}
	tests := []struct {
		name   string
		change func(*Model)
		want   string
	}{
		{"no receiver", func(m *Model) { m.Recv = "" }, "needs Name, Recv and Prefix"},
		{"receiver the code uses", func(m *Model) { m.Recv = "d" }, "collides"},
		{"no fields", func(m *Model) { m.Fields = nil }, "has 0 fields"},
		{"too many fields", func(m *Model) {
			for i := range 32 {
				m.Fields = append(m.Fields, Field{Go: "F" + string(rune('a'+i%26)) + string(rune('a'+i/26)), JSON: "f" + string(rune('a'+i%26)) + string(rune('a'+i/26)), Kind: Int})
			}
		}, "has 33 fields"},
		{"unknown kind", func(m *Model) { m.Fields[0].Kind = 0 }, "known Kind"},
		{"duplicate key", func(m *Model) { m.Fields = append(m.Fields, Field{Go: "B", JSON: "a", Kind: Int}) }, "defined twice"},
		{"key needing escapes", func(m *Model) { m.Fields[0].JSON = `a"b` }, "plain printable ASCII"},
		{"enum without names", func(m *Model) { m.Fields[0].Kind, m.Fields[0].Type = Enum, "E" }, "Names goes with Kind Enum"},
		{"nested model not in the spec", func(m *Model) { m.Fields[0].Kind, m.Fields[0].Type = Nested, "Other" }, "does not define"},
		{"required with a default", func(m *Model) { m.Fields[0].Required, m.Fields[0].Default = true, `"x"` }, "required and has a default"},
		{"Now on a string", func(m *Model) { m.Fields[0].Default = Now }, "Now is a default for Time"},
		{"check of another kind", func(m *Model) { m.Fields[0].Checks = []Check{Range(0, 1)} }, "does not apply"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			m := ok
			m.Fields = append([]Field(nil), ok.Fields...)
			tc.change(&m)
			_, err := Source([]Model{m})
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want one containing %q", err, tc.want)
			}
		})
	}
	if _, err := Source([]Model{ok}); err != nil {
		t.Fatalf("the unchanged model: %v", err)
	}
}
