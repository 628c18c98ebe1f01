package contracts

import (
	"errors"
	"strconv"
	"strings"
)

// Sentinel errors callers branch on with errors.Is.
var (
	// ErrIllegalTransition is wrapped by every refused state change.
	ErrIllegalTransition = errors.New("illegal state transition")
	// ErrInvalidJSON is wrapped by *SyntaxError: the input is not JSON at all.
	ErrInvalidJSON = errors.New("invalid JSON")
	// ErrSeedIDShape: a seed ID is not a pair (Python's ValueError).
	ErrSeedIDShape = errors.New("seed ID must be a tuple of (layer_id, seed_idx)")
	// ErrSeedIDType: a seed ID element is not an integer (Python's TypeError).
	ErrSeedIDType = errors.New("seed ID elements must be integers")
	// ErrSeedIDNegative: a seed ID element is negative (Python's ValueError).
	ErrSeedIDNegative = errors.New("seed ID elements must be non-negative")
)

// FieldError is one offending field: its dotted path from the model's root
// (for example "metadata.input_shape.1") and a readable reason.
type FieldError struct {
	Path   string
	Reason string
}

// ValidationError lists every offending field of one model. Decoding and
// Validate return it (as *ValidationError); use errors.As to reach it.
type ValidationError struct {
	Model  string
	Fields []FieldError
}

// Error renders every field error, one per line after the summary.
func (e *ValidationError) Error() string {
	var b strings.Builder
	b.WriteString(strconv.Itoa(len(e.Fields)))
	b.WriteString(" validation error")
	if len(e.Fields) != 1 {
		b.WriteString("s")
	}
	b.WriteString(" for ")
	b.WriteString(e.Model)
	for _, f := range e.Fields {
		b.WriteString("\n  ")
		if f.Path == "" {
			b.WriteString("(root)")
		} else {
			b.WriteString(f.Path)
		}
		b.WriteString(": ")
		b.WriteString(f.Reason)
	}
	return b.String()
}

// Has reports whether a field error sits at path or below it.
func (e *ValidationError) Has(path string) bool {
	for _, f := range e.Fields {
		if f.Path == path || strings.HasPrefix(f.Path, path+".") {
			return true
		}
	}
	return false
}

// SyntaxError reports input that is not well-formed JSON, or a JSON value
// of a shape the decoder cannot continue past. It wraps ErrInvalidJSON.
type SyntaxError struct {
	Model  string
	Offset int // byte offset of the problem in the input
	Msg    string
}

// Error names the model, the byte offset and the problem.
func (e *SyntaxError) Error() string {
	return e.Model + ": invalid JSON at byte " + strconv.Itoa(e.Offset) + ": " + e.Msg
}

// Unwrap returns ErrInvalidJSON.
func (e *SyntaxError) Unwrap() error { return ErrInvalidJSON }

// fieldErrors accumulates field errors; the zero value is ready.
type fieldErrors struct {
	model  string
	fields []FieldError
}

func (f *fieldErrors) add(path, reason string) {
	f.fields = append(f.fields, FieldError{Path: path, Reason: reason})
}

func (f *fieldErrors) err() error {
	if len(f.fields) == 0 {
		return nil
	}
	return &ValidationError{Model: f.model, Fields: f.fields}
}

func join(prefix, name string) string {
	if prefix == "" {
		return name
	}
	return prefix + "." + name
}
