// Package modelgen generates the per-model code of package contracts
// (struct types, field bits, the single-pass decoder, check, Validate,
// AppendJSON and the json.Marshaler and json.Unmarshaler wrappers) from
// the declarative spec in spec.go. Run it with go generate in contracts;
// a test there regenerates the file in memory and fails when the
// committed one differs.
package modelgen

// Model is one contract: a JSON object with a fixed set of fields.
type Model struct {
	Name   string // Go type name, which is also the model's name in errors
	Recv   string // receiver name in the generated methods
	Prefix string // prefix of the field-bit constants ("ck" gives ckKernelID)
	Doc    string // doc comment of the type, without the comment markers
	// ValidateDoc is the doc comment of Validate; the generic one when empty.
	ValidateDoc string
	// Strip strips surrounding white space from the model's strings and
	// its dictionaries' top-level keys on decode (the reference's
	// str_strip_whitespace); length and pattern checks then apply to the
	// stripped strings.
	Strip bool
	// IgnoreUnknown ignores fields the model does not define; otherwise
	// each is an error ("extra fields not permitted").
	IgnoreUnknown bool
	Fields        []Field
}

// Field is one member of a model, in the reference's order (which is the
// order AppendJSON writes).
type Field struct {
	Go      string // Go field name
	JSON    string // JSON key
	Kind    Kind
	Type    string // Go type of an Enum, the model of a Nested or NestedList
	Names   string // Enum only: the package variable listing the allowed values
	Comment string // trailing comment on the struct field
	// Required fields must be present; an absent one is "field required".
	Required bool
	// Default is the Go expression an absent optional field takes; empty
	// means the zero value. Now is special: every absent Now field of one
	// decode gets the same instant.
	Default string
	Checks  []Check // constraints beyond the type, checked in order
}

// Now is the Default of a timestamp that is the time of the decode.
const Now = "Now()"

// Kind is the wire type of a field and how it decodes, checks and
// encodes.
type Kind int

// The field kinds.
const (
	Str        Kind = iota + 1 // str: JSON strings only
	Int                        // int, lax: 5, 5.0, "5", true
	Float                      // float, lax: numbers, booleans, decimal strings
	Bool                       // bool, lax: 0/1 and the usual words
	Enum                       // a str enum: exactly one of Names
	OptStr                     // Optional[str]
	Time                       // datetime
	OptTime                    // Optional[datetime]
	IntList                    // List[int]; a required one must not be nil
	StrList                    // List[str]
	Metrics                    // Dict[str, float], in order
	AnyMap                     // Dict[str, Any]; a required one must not be nil
	Object                     // Dict[str, Any] kept as JSON text (contracts.Object)
	Nested                     // a nested model
	NestedList                 // List of a nested model
)

// goType returns the Go type of a field of kind k.
func (f Field) goType() string {
	switch f.Kind {
	case Str:
		return "string"
	case Int:
		return "int"
	case Float:
		return "float64"
	case Bool:
		return "bool"
	case Enum, Nested:
		return f.Type
	case OptStr:
		return "*string"
	case Time:
		return "time.Time"
	case OptTime:
		return "*time.Time"
	case IntList:
		return "[]int"
	case StrList:
		return "[]string"
	case Metrics:
		return "Metrics"
	case AnyMap:
		return "map[string]any"
	case Object:
		return "Object"
	case NestedList:
		return "[]" + f.Type
	}
	return ""
}

// checkedByDecode reports kinds whose decode already checks everything
// check would (a decoded dictionary is always encodable, a decoded
// metric finite, a nested model checks itself), so the check after a
// decode skips them.
func (k Kind) checkedByDecode() bool {
	switch k {
	case Metrics, AnyMap, Object, Nested, NestedList:
		return true
	}
	return false
}

// Check is a constraint on a field's value.
type Check struct {
	op       checkOp
	lo, hi   float64
	consts   []string
	nonEmpty bool
}

type checkOp int

const (
	opGe     checkOp = iota + 1 // v >= lo (floats also finite)
	opRange                     // lo <= v <= hi, finite
	opFinite                    // a finite float
	opLen                       // lo <= characters <= hi
	opOneOf                     // one of consts (Go constant names)
)

// Ge checks v >= min; a float must also be finite.
func Ge(min float64) Check { return Check{op: opGe, lo: min} }

// Range checks min <= v <= max for a float, which must be finite.
func Range(min, max float64) Check { return Check{op: opRange, lo: min, hi: max} }

// Finite checks that a float is neither NaN nor infinite.
func Finite() Check { return Check{op: opFinite} }

// Len checks a string's length in characters, as Python counts them.
func Len(min, max int) Check { return Check{op: opLen, lo: float64(min), hi: float64(max)} }

// OneOf checks a string against the pattern ^(a|b|...)$ of the given Go
// constants.
func OneOf(consts ...string) Check { return Check{op: opOneOf, consts: consts} }

// OneOfUnlessEmpty is OneOf, skipped for the empty string (which a Len
// check before it reports instead).
func OneOfUnlessEmpty(consts ...string) Check {
	return Check{op: opOneOf, consts: consts, nonEmpty: true}
}
