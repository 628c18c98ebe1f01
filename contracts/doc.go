// Package contracts holds the Esper platform's data contracts, wire
// compatible with the Python services' Pydantic models: the enums, the
// models (Seed, Blueprint, KernelMetadata, CompiledKernel,
// TrainingSession, HealthSignal, SystemStatePacket, AdaptationDecision,
// OonaMessage, BlueprintSubmitted), ModelGraphState, ValidateSeedID and the
// seed and blueprint state machines.
//
// # JSON
//
// Every model implements json.Marshaler and json.Unmarshaler; decoding
// validates, applies defaults and generates the generated ones (UUID v4
// identifiers, the current UTC time, unix time). Each model also has a
// fast entry point, DecodeXxx(data) (Xxx, error), and an append-style
// encoder, AppendJSON(dst) []byte. Decoding is a single pass that scans,
// converts and checks at once.
//
// The models' struct types, field bits, decoders, checks, encoders and
// wrappers are generated (models_gen.go) from one spec,
// internal/modelgen/spec.go, which names each field's JSON key, kind,
// default and constraints; go generate rewrites the file and a test
// fails when it is out of date. The json struct tags are not what
// encodes or decodes: they document the wire names for readers and
// reflection-based tools, and encoding/json calls the generated
// MarshalJSON and UnmarshalJSON instead. To change a contract, change
// the spec and run go generate ./contracts/.
//
// Decoding follows the reference's lax mode where it is cheap and clear:
// an int field takes 5, 5.0, "5" and true; a float field takes numbers,
// booleans and decimal strings; a bool field takes 0/1 and the usual
// words ("yes", "off"); a datetime takes RFC 3339 (with 'T', 't' or ' '
// between date and time, "Z" or an offset, or none), a bare date, or unix
// seconds. Strings are never coerced from other types. Anything the
// reference would refuse is refused; a few rarer coercions it performs
// (unix milliseconds, "1_000", infinities) are refused too.
//
// Timestamps keep their offset: UTC is written "Z", other offsets
// "+02:00", and values that arrived without an offset stay naive
// (location Naive) and are written without one. Fractions are kept to
// the microsecond, Python's resolution.
//
// Free-form dictionaries (Dict[str, Any]) decode to map[string]any whose
// values are map[string]any, []any, string, bool, nil, int64 for integer
// literals (json.Number beyond int64) and float64 for other numbers, so
// that 5 and 5.0 survive a round trip distinctly. The two on the kernel
// path, CompiledKernel.ValidationResults and
// KernelMetadata.OptimizationFlags, are an Object instead: the decode
// checks them and keeps their JSON text, and members are decoded into
// the same types when asked for (Object.Get, Object.Map), so a kernel
// document decodes without building values nobody reads. Dict[str,
// float] fields are Metrics, which keep key order.
//
// Blueprint, TrainingSession and AdaptationDecision strip surrounding
// white space from their strings and from their dictionaries' top-level
// keys before checking lengths and patterns; KernelMetadata and the other
// models keep strings as given. Every model but OonaMessage and
// BlueprintSubmitted refuses unknown fields; those two ignore them.
//
// # Errors
//
// A model that breaks its contract yields a *ValidationError listing every
// offending field by dotted path ("metadata.input_shape.1") with a
// reason; input that is not JSON yields a *SyntaxError (wrapping
// ErrInvalidJSON) naming the byte offset.
//
// # State machines
//
// Seeds move forward one step at a time, and any live seed may be culled:
//
//	from \ to    germinated training grafting fossilized culled
//	dormant      yes        -        -        -          yes
//	germinated   -          yes      -        -          yes
//	training     -          -        yes      -          yes
//	grafting     -          -        -        yes        yes
//	fossilized   (terminal)
//	culled       (terminal)
//
// Blueprints move through the compilation pipeline; any state before
// deployment may fail; every non-archived state may be archived:
//
//	from \ to      compiling validating characterized deployed failed archived
//	proposed       yes       -          -             -        yes    yes
//	compiling      -         yes        -             -        yes    yes
//	validating     -         -          yes           -        yes    yes
//	characterized  -         -          -             yes      yes    yes
//	deployed       -         -          -             -        -      yes
//	failed         -         -          -             -        -      yes
//	archived       (terminal)
//
// A state never transitions to itself. SeedState.CanTransitionTo and
// BlueprintState.CanTransitionTo answer from these tables; Seed.Transition
// and Blueprint.Transition apply a change and stamp UpdatedAt, or return
// a *TransitionError wrapping ErrIllegalTransition.
package contracts

//go:generate go run ./internal/modelgen/cmd/modelgen -o models_gen.go
